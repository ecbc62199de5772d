//! `cargo xtask <task>`: project automation. Tasks:
//! - `ci`: the checks CI runs (fmt, clippy with `-D warnings`, tests, docs);
//! - `shaders`: lists the WGSL files under `shaders/` (validation with naga and
//!   the generated kernel table arrive with the wgpu backend);
//! - `bench [--compare-torch]`: `cargo bench -p benches`; with
//!   `--compare-torch`, the UNet bench only, then the same network in PyTorch
//!   eager CPU (`benches/compare/torch_unet.py`) and a table of both.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn run(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(root())
        .status()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

fn ci() -> Result<(), String> {
    run(&["fmt", "--all", "--check"], &[])?;
    run(
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
        &[],
    )?;
    run(&["test", "--workspace"], &[])?;
    run(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )
}

fn shaders() -> Result<(), String> {
    let dir = root().join("shaders");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    files.sort();
    println!("{} WGSL file(s) in {}", files.len(), dir.display());
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}

/// `cargo xtask bench [--compare-torch]`: all criterion benches, or the UNet
/// bench side by side with the same network in PyTorch eager CPU.
fn bench(args: &[String]) -> Result<(), String> {
    match args {
        [] => run(&["bench", "-p", "benches"], &[]),
        [flag] if flag == "--compare-torch" => compare_torch(),
        _ => Err("usage: cargo xtask bench [--compare-torch]".to_string()),
    }
}

/// The UNet criterion bench against `benches/compare/torch_unet.py`: prints
/// the median times of forward and forward+backward and `torch / ours`
/// (above 1: ours is faster). `PYTHON` picks the interpreter (default
/// `python3`); PyTorch gets as many threads as rayon (`RAYON_NUM_THREADS` or
/// the core count).
fn compare_torch() -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    const MISSING: &str = "PyTorch not installed: pip install torch";
    // Criterion's directory names: group, then the function id with `/` as `_`.
    const GROUP: &str = "cpu";
    const IDS: [(&str, &str, &str); 2] = [
        ("forward", "unet_forward_28x28x1-b32-nf32", "forward_ms"),
        (
            "forward+backward",
            "unet_forward_backward_28x28x1-b32-nf32",
            "forward_backward_ms",
        ),
    ];
    // The 1-minute load average (Linux), to tell a busy machine's numbers apart.
    let load = || {
        std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|s| s.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".into())
    };
    // Check the Python side first: the Rust bench takes minutes.
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = Command::new(&python)
        .args(["-c", "import torch"])
        .output()
        .map_err(|e| format!("cannot run `{python}` ({e}). {MISSING}"))?;
    if !probe.status.success() {
        return Err(format!("`{python} -c 'import torch'` failed. {MISSING}"));
    }

    // Rust side: the criterion UNet bench; its stderr is echoed and scanned
    // for the parameter count it prints.
    let load_rust = load();
    let args = ["bench", "-p", "benches", "--bench", "unet"];
    eprintln!("$ cargo {}", args.join(" "));
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(root())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start cargo: {e}"))?;
    let mut rust_params: Option<u64> = None;
    if let Some(err) = child.stderr.take() {
        for line in BufReader::new(err).lines() {
            let line = line.map_err(|e| format!("reading the bench's stderr: {e}"))?;
            eprintln!("{line}");
            if let Some(n) = line.strip_prefix("unet parameters: ") {
                rust_params = n.trim().parse().ok();
            }
        }
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cargo bench: {e}"))?;
    if !status.success() {
        return Err(format!("`cargo {}` failed ({status})", args.join(" ")));
    }
    let rust_params = rust_params.ok_or("the UNet bench did not print \"unet parameters: N\"")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let ours = IDS
        .iter()
        .map(|(_, id, _)| {
            let path = target
                .join("criterion")
                .join(GROUP)
                .join(id)
                .join("new/estimates.json");
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let v: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            v["median"]["point_estimate"]
                .as_f64()
                .map(|ns| ns / 1e6)
                .ok_or_else(|| format!("{}: no median.point_estimate", path.display()))
        })
        .collect::<Result<Vec<f64>, String>>()?;

    // PyTorch side, with as many threads as rayon uses.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1);
    let script = root().join("benches/compare/torch_unet.py");
    let load_torch = load();
    let (threads_s, params_s) = (threads.to_string(), rust_params.to_string());
    eprintln!(
        "$ {python} {} --threads {threads_s} --expect-params {params_s}",
        script.display()
    );
    let out = Command::new(&python)
        .arg(&script)
        .args(["--threads", &threads_s, "--expect-params", &params_s])
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run `{python}`: {e}"))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = stdout
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .ok_or("the PyTorch script printed no JSON")?;
    let v: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("PyTorch script output: {e}"))?;
    let version = v["torch_version"].as_str().unwrap_or("?");

    println!();
    println!(
        "UNet 28x28x1, batch 32, {rust_params} parameters; PyTorch {version} eager CPU, \
         {threads} thread(s) on both sides"
    );
    println!(
        "{:<18} {:>12} {:>12} {:>14}",
        "bench", "ours (ms)", "torch (ms)", "torch / ours"
    );
    for ((name, _, key), ours_ms) in IDS.iter().zip(&ours) {
        let torch_ms = v[*key]
            .as_f64()
            .ok_or_else(|| format!("PyTorch script output has no {key}"))?;
        println!(
            "{name:<18} {ours_ms:>12.1} {torch_ms:>12.1} {:>14.3}",
            torch_ms / ours_ms
        );
    }
    println!("(torch / ours > 1: ours is faster)");
    println!("1-minute load average before each side: ours {load_rust}, torch {load_torch}");
    Ok(())
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("ci") => ci(),
        Some("shaders") => shaders(),
        Some("bench") => bench(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => Err("usage: cargo xtask <ci|shaders|bench [--compare-torch]>".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
