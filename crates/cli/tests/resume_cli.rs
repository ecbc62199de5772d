//! `train --resume` trains the run that is there: its data set (not the
//! default or a flag's), its own target when `--steps` is not given, and it
//! refuses what would change how the run trains (`--dataset`, `--lr`,
//! `--batch-size`, `--seed`, a different `--config`) or move it backwards;
//! `--steps 0` is an error too. Logging and checkpoint intervals may change.
#![allow(clippy::unwrap_used)]

mod support;

use support::{json, one_line_error, run, stderr, tempdir, tiny_config};

#[test]
fn resume_trains_the_run_that_is_there_and_refuses_changes() {
    let dir = tempdir("resume");
    let cfg = tiny_config(&dir);
    let rd = dir.join("run");
    let rd = rd.to_str().unwrap();
    let c = cfg.to_str().unwrap();
    // A new run of 0 steps is an error, and leaves nothing behind.
    one_line_error(
        &run(&["train", "--config", c, "--out", rd, "--steps", "0"]),
        1,
        "training.steps",
    );
    assert!(!dir.join("run").exists());
    json(&run(&[
        "train", "--json", "--config", c, "--out", rd, "--steps", "10",
    ]));

    // Without --config the run's own data (256 of the digits, as its
    // configuration limits them) and its own target (10, reached) apply.
    one_line_error(
        &run(&["train", "--out", rd, "--resume"]),
        1,
        "already reached its target of 10 steps",
    );
    let o = run(&[
        "train",
        "--json",
        "--out",
        rd,
        "--resume",
        "--steps",
        "14",
        "--log-every",
        "2",
    ]);
    let v = json(&o);
    assert_eq!(
        (v["steps"].as_u64(), v["steps_this_run"].as_u64()),
        (Some(14), Some(4))
    );
    let err = stderr(&o);
    assert!(err.contains("256 train"), "trained on other data: {err}");
    assert!(err.contains("logging every 2 steps"), "{err}");
    let log = std::fs::read_to_string(dir.join("run").join("log.jsonl")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"step\":12")), "{log}");

    // Backwards, and changes to how the run trains, are refused.
    for (args, needle) in [
        (&["--steps", "12"][..], "already at step 14"),
        (
            &["--steps", "20", "--dataset", "mnist"][..],
            "--dataset mnist",
        ),
        (&["--steps", "20", "--lr", "0.1"][..], "--lr 0.1"),
        (
            &["--steps", "20", "--batch-size", "3"][..],
            "--batch-size 3",
        ),
        (&["--steps", "20", "--seed", "99"][..], "--seed 99"),
    ] {
        let mut a = vec!["train", "--out", rd, "--resume"];
        a.extend_from_slice(args);
        one_line_error(&run(&a), 1, needle);
    }
    // A --config that differs from the stored one names what differs.
    let other = dir.join("other.toml");
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("base_channels = 8", "base_channels = 12");
    std::fs::write(&other, text).unwrap();
    one_line_error(
        &run(&[
            "train",
            "--out",
            rd,
            "--resume",
            "--steps",
            "20",
            "--config",
            other.to_str().unwrap(),
        ]),
        1,
        "net",
    );
    // The same --config as the run's is fine.
    let v = json(&run(&[
        "train", "--json", "--out", rd, "--resume", "--steps", "16", "--config", c,
    ]));
    assert_eq!(v["steps"].as_u64(), Some(16));
    std::fs::remove_dir_all(&dir).ok();
}

/// `log.jsonl` continues exactly from the checkpoint's step: lines a killed
/// run wrote after its last checkpoint are dropped on resume (no step twice),
/// and a new run in a folder with a stale log (no checkpoint) starts it afresh.
#[test]
fn the_log_continues_from_the_checkpoint() {
    let dir = tempdir("resume-log");
    let cfg = tiny_config(&dir);
    let c = cfg.to_str().unwrap();
    let run_dir = dir.join("run");
    let rd = run_dir.to_str().unwrap();
    let log_path = run_dir.join("log.jsonl");
    let steps = |text: &str| -> Vec<u64> {
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["step"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    };
    json(&run(&[
        "train",
        "--json",
        "--config",
        c,
        "--out",
        rd,
        "--steps",
        "10",
        "--log-every",
        "5",
    ]));
    assert_eq!(
        steps(&std::fs::read_to_string(&log_path).unwrap()),
        vec![5, 10]
    );
    // What a run killed between its checkpoint (step 10) and the next one leaves.
    let mut text = std::fs::read_to_string(&log_path).unwrap();
    text.push_str(
        "{\"step\":15,\"loss\":9.0,\"grad_norm\":1.0,\"lr\":0.002,\"images_per_sec\":1.0}\n",
    );
    text.push_str("{\"step\":20,\"lo");
    std::fs::write(&log_path, text).unwrap();
    // ... and the 0-byte temporary file of a checkpoint write it was killed in.
    let stale = run_dir.join("checkpoint.safetensors.tmp");
    std::fs::write(&stale, b"").unwrap();
    let o = run(&["train", "--json", "--out", rd, "--resume", "--steps", "20"]);
    json(&o);
    let err = support::stderr(&o);
    assert!(
        err.contains("checkpoint.safetensors.tmp, left by an interrupted write"),
        "{err}"
    );
    let after = std::fs::read_to_string(&log_path).unwrap();
    assert_eq!(steps(&after), vec![5, 10, 15, 20], "{after}");
    assert!(!after.contains("9.0"), "the stale line survived: {after}");
    assert!(
        !stale.exists(),
        "the stale temporary checkpoint is still there"
    );

    // A stale log without a checkpoint: a new run starts the log afresh.
    let fresh = dir.join("fresh");
    std::fs::create_dir_all(&fresh).unwrap();
    std::fs::write(fresh.join("log.jsonl"), "{\"step\":99,\"loss\":1.0}\n").unwrap();
    json(&run(&[
        "train",
        "--json",
        "--config",
        c,
        "--out",
        fresh.to_str().unwrap(),
        "--steps",
        "5",
        "--log-every",
        "5",
    ]));
    assert_eq!(
        steps(&std::fs::read_to_string(fresh.join("log.jsonl")).unwrap()),
        vec![5]
    );
    std::fs::remove_dir_all(&dir).ok();
}
