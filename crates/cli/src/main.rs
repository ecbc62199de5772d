//! `scoresde`: the command-line front end. For now it reports its version and
//! the SDEs it knows; training, sampling and likelihood commands arrive with
//! the `train` and `solvers` crates.

use sde_core::{Sde, SdeConfig, SdeKind};

fn main() {
    let arg = std::env::args().nth(1);
    match arg.as_deref() {
        None | Some("info") => {
            println!("scoresde {}", env!("CARGO_PKG_VERSION"));
            println!("backends: cpu");
            for kind in [SdeKind::Ve, SdeKind::Vp, SdeKind::SubVp] {
                let cfg = SdeConfig::default_for(kind);
                match cfg.build() {
                    Ok(sde) => println!(
                        "sde {kind}: N = {}, prior std = {}",
                        sde.num_steps(),
                        sde.prior_std()
                    ),
                    Err(e) => println!("sde {kind}: {e}"),
                }
            }
        }
        Some("--version" | "-V") => println!("scoresde {}", env!("CARGO_PKG_VERSION")),
        Some(other) => {
            eprintln!("error: unknown command `{other}` (available: info)");
            std::process::exit(2);
        }
    }
}
