//! The schedules beyond the paper's from the command line: a tiny cosine and
//! a tiny rectified-flow model train from a configuration, record their
//! network conditioning in `config.toml`, sample with a fast sampler and the
//! PC sampler, and give finite bits/dim.
#![allow(clippy::unwrap_used)]

mod support;

use support::{json, run, tempdir};

fn config(dir: &std::path::Path, sde: &str) -> std::path::PathBuf {
    let p = dir.join("schedule.toml");
    std::fs::write(
        &p,
        format!(
            r#"seed = 5
[sde]
{sde}
[net]
base_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = []
dropout = 0.0
[optim]
lr = 2e-3
warmup = 5
[training]
batch_size = 16
steps = 10
log_every = 5
checkpoint_every = 10
[data]
dataset = "digits"
"#
        ),
    )
    .unwrap();
    p
}

#[test]
fn cosine_and_rectified_flow_models_train_sample_and_evaluate() {
    for (name, sde) in [
        (
            "cosine",
            "kind = \"cosine\"\nlogsnr_min = -10.0\nlogsnr_max = 8.77\nnum_steps = 100",
        ),
        (
            "rectified-flow",
            "kind = \"rectified-flow\"\nmean_at_t_max = 1e-3\nnum_steps = 100",
        ),
    ] {
        let dir = tempdir(name);
        let cfg = config(&dir, sde);
        let rd = dir.join("run");
        let rd = rd.to_str().unwrap();
        let t = json(&run(&[
            "train",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            rd,
        ]));
        assert_eq!(t["steps"], 10, "{t}");
        // The run records the conditioning chosen from its SDE.
        let stored = std::fs::read_to_string(dir.join("run").join("config.toml")).unwrap();
        assert!(
            stored.contains(&format!("kind = \"{name}\""))
                && stored.contains("time_input = \"ddpm-steps\"")
                && stored.contains("output = \"noise\""),
            "{stored}"
        );
        for flags in [
            &["--sampler", "dpm-solver", "--steps", "10"][..],
            &["--sampler", "pc", "--predictor", "euler-maruyama"][..],
        ] {
            let out = dir.join("s.png");
            let mut args = vec!["sample", "--json", "--ckpt", rd, "-n", "4", "--out"];
            args.push(out.to_str().unwrap());
            args.extend_from_slice(flags);
            let v = json(&run(&args));
            assert!(v["nfe"].as_u64().unwrap() >= 10, "{name} {flags:?}: {v}");
        }
        let l = json(&run(&[
            "likelihood",
            "--json",
            "--ckpt",
            rd,
            "-n",
            "4",
            "--rtol",
            "1e-3",
            "--atol",
            "1e-3",
        ]));
        let bpd = l["bits_per_dim"].as_f64().unwrap();
        assert!(bpd.is_finite() && bpd > 0.0, "{name}: {l}");
    }
}
