//! End-to-end tests of the `scoresde` binary: argument errors are one line
//! with exit code 2, run-time errors one line with exit code 1 and no panic
//! trace; a tiny digits run goes train -> sample (PC and ODE) -> PNG and
//! .npy -> likelihood -> encode/decode/interpolate -> resume.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;

use support::{bin, json, one_line_error, run, tempdir, tiny_config};

#[test]
fn bad_arguments_are_one_line_with_exit_code_2() {
    one_line_error(&run(&["--bogus"]), 2, "--bogus");
    one_line_error(&run(&["sample"]), 2, "--ckpt");
    one_line_error(&run(&["train", "--steps", "many"]), 2, "many");
    one_line_error(
        &run(&["sample", "--ckpt", "x", "--predictor", "magic"]),
        2,
        "magic",
    );
    one_line_error(&run(&["train", "--dataset", "cifar"]), 2, "cifar");
    // Help and version succeed.
    assert!(run(&["--help"]).status.success());
    assert!(run(&["--version"]).status.success());
}

#[test]
fn runtime_errors_are_one_line_with_exit_code_1() {
    let dir = tempdir("errors");
    let missing = dir.join("nope");
    one_line_error(
        &run(&["sample", "--ckpt", missing.to_str().unwrap()]),
        1,
        "No such file",
    );
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "seed = 1\n[training]\nstepz = 3\n").unwrap();
    one_line_error(
        &run(&["train", "--config", bad.to_str().unwrap()]),
        1,
        "stepz",
    );
    one_line_error(
        &run(&[
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-path",
            missing.to_str().unwrap(),
            "--out",
            dir.join("r").to_str().unwrap(),
        ]),
        1,
        "apt-get install dataset-fashion-mnist",
    );
    // No adapter: a one-line error naming the remedy.
    let o = bin()
        .env("WGPU_ADAPTER_NAME", "no adapter has this name")
        .args(["--device", "wgpu", "train"])
        .output()
        .unwrap();
    one_line_error(&o, 1, "mesa-vulkan-drivers");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn train_sample_likelihood_latents_and_resume() {
    let dir = tempdir("e2e");
    let cfg = tiny_config(&dir);
    let run_dir = dir.join("run");
    let rd = run_dir.to_str().unwrap();
    let t = json(&run(&[
        "train",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        rd,
    ]));
    assert_eq!(t["steps"], 20);
    assert!(t["images_per_sec"].as_f64().unwrap() > 0.0);
    assert!(run_dir.join("checkpoint.safetensors").exists());
    assert!(run_dir.join("config.toml").exists());
    let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, vec![10, 20]);

    // PC sampler: PNG grid and raw samples.
    let png = dir.join("s.png");
    let npy = dir.join("s.npy");
    let s = json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        rd,
        "--steps",
        "25",
        "-n",
        "6",
        "--zoom",
        "1",
        "--out",
        png.to_str().unwrap(),
        "--npy",
        npy.to_str().unwrap(),
    ]));
    // One corrector and one predictor evaluation per level (denoising reuses the last).
    assert!(s["nfe"].as_u64().unwrap() >= 50, "{s}");
    let (shape, pixels) = train::images::read_png(&png).unwrap();
    // 3 columns x 2 rows of 8x8 images with a border.
    assert_eq!(shape[0], 1);
    assert!(shape[2] >= 24 && shape[1] >= 16, "{shape:?}");
    assert!(pixels.iter().any(|&p| p > 0.0));
    let (nshape, x) = train::images::read_npy(&npy).unwrap();
    assert_eq!(nshape, vec![6, 1, 8, 8]);
    assert!(x.iter().all(|v| v.is_finite()));
    // Default zoom enlarges 8x8 images four times.
    let big = dir.join("big.png");
    json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        rd,
        "--steps",
        "21",
        "-n",
        "1",
        "--out",
        big.to_str().unwrap(),
    ]));
    assert_eq!(
        train::images::read_png(&big).unwrap().0[1..],
        [32 + 4, 32 + 4]
    );

    // Probability-flow ODE sampler.
    let o = json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        rd,
        "--sampler",
        "ode",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
        "-n",
        "2",
        "--out",
        dir.join("o.png").to_str().unwrap(),
    ]));
    assert!(o["nfe"].as_u64().unwrap() > 6);
    assert_eq!(o["sampler"]["sampler"], "ode", "{o}");

    // The fixed-step samplers: NFE as configured, the configuration in the summary.
    for (flags, name, nfe) in [
        (
            &["--sampler", "dpm-solver", "--steps", "4"][..],
            "dpm-solver",
            4,
        ),
        (
            &["--sampler", "ddim", "--steps", "3", "--eta", "1"][..],
            "ddim",
            3,
        ),
        (
            &["--sampler", "heun", "--steps", "2", "--grid", "log-snr"][..],
            "heun",
            4,
        ),
        (
            &[
                "--sampler",
                "reverse-sde",
                "--steps",
                "3",
                "--stochasticity",
                "0.5",
            ][..],
            "reverse-sde",
            3,
        ),
    ] {
        let mut args = vec!["sample", "--json", "--ckpt", rd, "-n", "2", "--out"];
        let out = dir.join(format!("{name}.png"));
        args.push(out.to_str().unwrap());
        args.extend_from_slice(flags);
        let v = json(&run(&args));
        assert_eq!(v["sampler"]["sampler"], name, "{v}");
        assert_eq!(v["nfe"].as_u64().unwrap(), nfe, "{v}");
        assert!(out.exists());
    }
    // A whole sampler configuration from TOML, as recorded in the summaries.
    let toml_path = dir.join("sampler.toml");
    std::fs::write(
        &toml_path,
        "sampler = \"heun\"\nsteps = 3\ngrid = \"edm:5\"\n",
    )
    .unwrap();
    let v = json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        rd,
        "-n",
        "2",
        "--sampler-config",
        toml_path.to_str().unwrap(),
        "--out",
        dir.join("h.png").to_str().unwrap(),
    ]));
    assert_eq!(v["sampler"]["grid"], "edm:5", "{v}");
    assert_eq!(v["nfe"].as_u64().unwrap(), 6, "{v}");
    // Flags of another sampler and impossible settings are refused.
    for (flags, expect) in [
        (
            &["--eta", "0.5"][..],
            "--eta applies to --sampler ddim only",
        ),
        (&["--sampler", "ode", "--grid", "edm"][..], "--grid applies"),
        (&["--sampler", "ddim", "--eta", "2"][..], "eta"),
        (&["--sampler", "heun", "--grid", "edm:0"][..], "rho"),
        (&["--sampler", "pc", "--grid", "edm"][..], "own grid"),
        (
            &["--sampler", "dpm-solver", "--steps", "18446744073709551615"][..],
            "at most",
        ),
        (&["--steps", "1000000000000"][..], "num_steps"),
    ] {
        let mut args = vec!["sample", "--ckpt", rd, "-n", "1"];
        args.extend_from_slice(flags);
        let o = run(&args);
        assert!(!o.status.success(), "{flags:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(expect), "{flags:?}: {err}");
    }

    // Bits/dim of the first test images.
    let l = json(&run(&[
        "likelihood",
        "--json",
        "--ckpt",
        rd,
        "-n",
        "8",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
    ]));
    let bpd = l["bits_per_dim"].as_f64().unwrap();
    assert!(bpd.is_finite() && bpd > 0.0 && bpd < 20.0, "{l}");
    assert_eq!(l["images"], 8);
    assert!(l["bits_per_dim_se"].as_f64().unwrap() >= 0.0);

    // Latents: encode two test images, decode them, interpolate.
    let lat = dir.join("z.npy");
    json(&run(&[
        "encode",
        "--json",
        "--ckpt",
        rd,
        "--index",
        "0,1",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
        "--out",
        lat.to_str().unwrap(),
    ]));
    assert_eq!(train::images::read_npy(&lat).unwrap().0, vec![2, 1, 8, 8]);
    json(&run(&[
        "decode",
        "--json",
        "--ckpt",
        rd,
        "--latent",
        lat.to_str().unwrap(),
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
        "--out",
        dir.join("d.png").to_str().unwrap(),
    ]));
    let i = json(&run(&[
        "interpolate",
        "--json",
        "--ckpt",
        rd,
        "--index",
        "0,1",
        "--frames",
        "4",
        "--rtol",
        "1e-3",
        "--atol",
        "1e-3",
        "--zoom",
        "1",
        "--out",
        dir.join("i.png").to_str().unwrap(),
    ]));
    assert_eq!(i["frames"], 4);
    one_line_error(
        &run(&["encode", "--ckpt", rd, "--index", "99999"]),
        1,
        "out of range",
    );

    // Resume: refusing to overwrite, then continuing to 30 steps.
    one_line_error(
        &run(&["train", "--config", cfg.to_str().unwrap(), "--out", rd]),
        1,
        "--resume",
    );
    let r = json(&run(&[
        "train",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        rd,
        "--resume",
        "--steps",
        "30",
    ]));
    assert_eq!(
        (r["steps"].as_u64(), r["steps_this_run"].as_u64()),
        (Some(30), Some(10))
    );
    let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 3, "resume appends to the log: {log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Killing training at arbitrary moments (SIGKILL, mid-checkpoint included,
/// with a checkpoint every step) never leaves an unreadable checkpoint, and
/// Ctrl-C (SIGINT) and SIGTERM stop after writing one, with exit code 3.
#[test]
fn kill_never_breaks_the_checkpoint_and_ctrl_c_saves() {
    let dir = tempdir("kill");
    let cfg = tiny_config(&dir);
    let run_dir = dir.join("run");
    let rd = run_dir.to_str().unwrap();
    let args = [
        "train",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        rd,
        "--steps",
        "100000",
        "--checkpoint-every",
        "1",
    ];
    let mut steps_seen = Vec::new();
    for delay_ms in [700u64, 950, 1200, 1450, 1700] {
        let mut a: Vec<&str> = args.to_vec();
        // Resume once a killed run has left a checkpoint (a slow start may
        // be killed before its first one).
        if !steps_seen.is_empty() {
            a.push("--resume");
        }
        let mut child = bin().args(&a).spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        if run_dir.join("checkpoint.safetensors").exists() {
            let ck = train::TrainingCheckpoint::load(&run_dir).unwrap();
            steps_seen.push(ck.state.step);
        } else {
            assert!(steps_seen.is_empty(), "the checkpoint disappeared");
        }
    }
    assert!(!steps_seen.is_empty(), "no checkpoint was ever written");
    assert!(
        steps_seen.windows(2).all(|w| w[0] <= w[1]),
        "{steps_seen:?}"
    );

    // SIGINT and SIGTERM: the run stops after a checkpoint, reports it, and
    // exits with 3 ("interrupted, checkpoint saved").
    for signal in ["-INT", "-TERM"] {
        let mut a: Vec<&str> = args.to_vec();
        a.push("--resume");
        let child = bin()
            .args(&a)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        let st = Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(3),
            "{signal}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["interrupted"], true, "{signal}: {v}");
        let ck = train::TrainingCheckpoint::load(&run_dir).unwrap();
        assert_eq!(Some(ck.state.step), v["steps"].as_u64(), "{signal}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// `--device wgpu` trains and samples end to end (llvmpipe in CI), and the
/// same checkpoint and seed sample the same images on both backends (the
/// noise streams are identical; the kernels differ by f32 rounding only).
#[test]
fn wgpu_device_trains_and_samples_like_the_cpu() {
    let dir = tempdir("wgpu");
    let cfg = tiny_config(&dir);
    let run_dir = dir.join("run");
    let rd = run_dir.to_str().unwrap();
    let t = json(&run(&[
        "--device",
        "wgpu",
        "train",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--steps",
        "4",
        "--out",
        rd,
    ]));
    assert_eq!(t["steps"], 4);
    assert!(t["device"].as_str().unwrap().starts_with("wgpu:"), "{t}");
    let sample = |device: &str| {
        let npy = dir.join(format!("{device}.npy"));
        let s = json(&run(&[
            "--device",
            device,
            "--seed",
            "11",
            "sample",
            "--json",
            "--ckpt",
            rd,
            "--steps",
            "25",
            "-n",
            "3",
            "--out",
            dir.join(format!("{device}.png")).to_str().unwrap(),
            "--npy",
            npy.to_str().unwrap(),
        ]));
        assert!(s["device"].as_str().unwrap().starts_with(device), "{s}");
        train::images::read_npy(&npy).unwrap().1
    };
    let (g, c) = (sample("wgpu"), sample("cpu"));
    assert_eq!(g.len(), 3 * 64);
    let worst = g
        .iter()
        .zip(&c)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // The sampler amplifies the backends' per-evaluation differences (~4e-7
    // relative, see score-net's gpu_unet test) through 50 score evaluations
    // whose factor grows like 1/sigma(t) near t = eps: measured 9.2e-4 on
    // llvmpipe. A wrong kernel or noise stream gives differences of order 1.
    let scale = c.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(
        worst <= 5e-3 * scale,
        "wgpu and cpu samples differ by {worst} (scale {scale})"
    );
    std::fs::remove_dir_all(&dir).ok();
}
