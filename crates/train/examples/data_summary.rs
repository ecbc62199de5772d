//! Loads each data set that is available here, prints its size and load time,
//! and writes a grid of the first training images to `<out>/<name>.png`.
//!
//! `cargo run --release -p train --example data_summary -- [out-dir] [name...]`

use std::path::PathBuf;
use std::time::Instant;

use train::data::{load, DataConfig, DatasetName, Scale, Transform};
use train::images::write_png_grid;

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().unwrap_or_else(|| "target/data-summary".into()));
    let names: Vec<String> = args.collect();
    for name in DatasetName::ALL {
        if !names.is_empty() && !names.iter().any(|n| n == name.as_str()) {
            continue;
        }
        let cfg = DataConfig {
            dataset: name,
            ..DataConfig::default()
        };
        let start = Instant::now();
        match load(&cfg) {
            Ok(s) => {
                let secs = start.elapsed().as_secs_f64();
                let [c, h, w] = s.train.image_shape();
                println!(
                    "{name}: train {} + test {} images of {c}x{h}x{w}, {} levels, classes {:?}, loaded in {secs:.2} s",
                    s.train.len(),
                    s.test.len(),
                    s.train.levels(),
                    s.train.num_classes(),
                );
                let n = s.train.len().min(64);
                let idx: Vec<usize> = (0..n).collect();
                let batch =
                    s.train
                        .batch(&idx, &Transform::default(), &mut sde_core::NoiseRng::new(0));
                let path = out.join(format!("{name}.png"));
                if let Err(e) =
                    write_png_grid(&path, &batch, [n, c, h, w], Scale::ZeroOne.range(), 8)
                {
                    eprintln!("{name}: {e}");
                }
            }
            Err(e) => println!("{name}: not loaded: {e}"),
        }
    }
}
