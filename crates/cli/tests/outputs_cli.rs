//! Outputs never replace a run's own files, and bad output locations are
//! refused before any sampling or solving (issue 15, items 6 and 7).
#![allow(clippy::unwrap_used)]

mod support;

use support::{json, one_line_error, run, tempdir, tiny_config};

#[test]
fn outputs_never_replace_the_runs_files_and_are_checked_first() {
    let dir = tempdir("outputs");
    let cfg = tiny_config(&dir);
    let run_dir = dir.join("run");
    let rd = run_dir.to_str().unwrap();
    json(&run(&[
        "train",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        rd,
        "--steps",
        "2",
    ]));
    let ck = run_dir.join("checkpoint.safetensors");
    let before = std::fs::read(&ck).unwrap();
    let own = |f: &str| run_dir.join(f).to_str().unwrap().to_string();
    let (ckf, conf, log) = (
        own("checkpoint.safetensors"),
        own("config.toml"),
        own("log.jsonl"),
    );
    for args in [
        vec!["sample", "--ckpt", rd, "-n", "1", "--out", ckf.as_str()],
        vec![
            "sample",
            "--ckpt",
            ckf.as_str(),
            "-n",
            "1",
            "--out",
            ckf.as_str(),
        ],
        vec!["sample", "--ckpt", rd, "-n", "1", "--npy", conf.as_str()],
        vec![
            "encode",
            "--ckpt",
            rd,
            "--index",
            "0",
            "--out",
            log.as_str(),
        ],
        vec![
            "interpolate",
            "--ckpt",
            rd,
            "--index",
            "0,1",
            "--out",
            conf.as_str(),
        ],
    ] {
        one_line_error(&run(&args), 1, "would overwrite the run's own file");
    }
    // A folder, or a path below a file, is refused before the work.
    let dirpath = dir.to_str().unwrap();
    one_line_error(
        &run(&["sample", "--ckpt", rd, "-n", "1", "--out", dirpath]),
        1,
        "is a folder",
    );
    let below = format!("{}/x.png", cfg.to_str().unwrap());
    one_line_error(
        &run(&[
            "decode",
            "--ckpt",
            rd,
            "--latent",
            "z.npy",
            "--out",
            below.as_str(),
        ]),
        1,
        "is not a folder",
    );
    assert_eq!(
        std::fs::read(&ck).unwrap(),
        before,
        "the checkpoint changed"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The demo checks its sampling and evaluation settings before training.
#[test]
fn demo_checks_its_settings_before_training() {
    let dir = tempdir("demo-args");
    let out = dir.join("demo");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (&["--eval-images", "0"][..], "--eval-images"),
        (&["--sample-steps", "0"][..], "--sample-steps 0"),
        (&["--sample-steps", "10"][..], "N must exceed beta_max"),
        (&["--steps", "0"][..], "training.steps"),
    ] {
        let mut a = vec!["demo", "--out", o];
        a.extend_from_slice(args);
        let r = run(&a);
        assert_eq!(r.status.code(), Some(1), "{args:?}");
        let e = String::from_utf8_lossy(&r.stderr);
        assert!(e.contains(needle), "{args:?}: {e}");
        assert!(!out.join("run").exists(), "{args:?} trained first");
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A run that diverges before its first checkpoint says so, instead of
/// claiming that a last good checkpoint is kept (issue 15, item 10).
#[test]
fn a_diverged_run_says_whether_a_checkpoint_exists() {
    let dir = tempdir("diverged");
    let cfg = tiny_config(&dir);
    let rd = dir.join("run");
    let o = run(&[
        "train",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        rd.to_str().unwrap(),
        "--steps",
        "5",
        "--lr",
        "1e30",
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("no checkpoint had been written yet"), "{err}");
    assert!(
        !err.contains("last good checkpoint") && !err.contains("panicked"),
        "{err}"
    );
    assert!(!rd.join("checkpoint.safetensors").exists());
    std::fs::remove_dir_all(&dir).ok();
}

/// Two identical runs write byte-identical checkpoints (issue 15, item 13).
#[test]
fn identical_runs_write_identical_checkpoints() {
    let dir = tempdir("identical");
    let cfg = tiny_config(&dir);
    let bytes = |name: &str| {
        let rd = dir.join(name);
        json(&run(&[
            "train",
            "--json",
            "--config",
            cfg.to_str().unwrap(),
            "--out",
            rd.to_str().unwrap(),
            "--steps",
            "3",
        ]));
        std::fs::read(rd.join("checkpoint.safetensors")).unwrap()
    };
    assert!(bytes("a") == bytes("b"), "the checkpoints differ");
    std::fs::remove_dir_all(&dir).ok();
}
