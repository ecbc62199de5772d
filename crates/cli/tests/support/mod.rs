//! Helpers the CLI tests share: running the binary, checking one-line
//! errors, temporary folders and a tiny training configuration.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `scoresde` binary with two threads and a quiet Vulkan loader.
pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_scoresde"));
    c.env("RAYON_NUM_THREADS", "2");
    // libwayland (loaded by the Vulkan driver) prints a line on stderr when
    // XDG_RUNTIME_DIR is unset, which would break the one-line checks.
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    }
    c
}

/// Runs the binary with `args`.
pub fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

/// The standard error as text.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The JSON summary of a successful run.
pub fn json(o: &Output) -> serde_json::Value {
    assert!(
        o.status.success(),
        "command failed: {}",
        stderr(o).trim_end()
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Asserts a one-line error with exit code `code` that contains `needle`.
pub fn one_line_error(o: &Output, code: i32, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {e}");
    assert_eq!(e.trim_end().lines().count(), 1, "not one line: {e:?}");
    assert!(!e.contains("panicked"), "{e}");
    assert!(e.contains(needle), "{e:?} lacks {needle:?}");
}

/// A fresh temporary folder for this process.
pub fn tempdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("scoresde-cli-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&d).ok();
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A configuration that trains a tiny model on 8x8 digits in seconds.
pub fn tiny_config(dir: &Path) -> PathBuf {
    let p = dir.join("tiny.toml");
    std::fs::write(
        &p,
        r#"seed = 3
[sde]
kind = "vp"
beta_min = 0.1
beta_max = 20.0
num_steps = 1000
[net]
base_channels = 8
channel_mult = [1, 2]
num_res_blocks = 1
attn_resolutions = [4]
dropout = 0.0
[optim]
lr = 2e-3
warmup = 5
[training]
batch_size = 16
steps = 20
log_every = 10
checkpoint_every = 10
[data]
dataset = "digits"
scale = "minus-one-one"
limit = 256
"#,
    )
    .unwrap();
    p
}
