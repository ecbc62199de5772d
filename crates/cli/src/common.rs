//! Shared plumbing of the commands: backend selection, progress bars,
//! Ctrl-C handling, a score-model wrapper that ticks progress and honours
//! interruption, and loading a checkpoint's data set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use score_net::gpu::WgpuBackend;
use sde_core::CpuBackend;

/// Which backend runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Device {
    /// The best available: a real GPU (discrete, integrated or virtual)
    /// through wgpu when there is one, otherwise the CPU (a software
    /// adapter such as llvmpipe is far slower than the CPU backend).
    Auto,
    /// The CPU backend (gemm, all cores).
    Cpu,
    /// The wgpu backend.
    Wgpu,
}

/// Options every command sees.
#[derive(Clone, Debug)]
pub struct Ctx {
    /// Print a JSON summary on stdout instead of the human one.
    pub json: bool,
    /// No progress bars.
    pub quiet: bool,
    /// The seed given on the command line.
    pub seed: Option<u64>,
    /// The device asked for.
    pub device: Device,
}

/// The backend `--device` resolved to.
pub enum Chosen {
    /// The CPU backend.
    Cpu(CpuBackend),
    /// The wgpu backend.
    Wgpu(WgpuBackend),
}

/// The process's wgpu backend (one device, opened on first use).
pub fn wgpu_backend() -> Result<WgpuBackend> {
    static B: OnceLock<std::result::Result<WgpuBackend, String>> = OnceLock::new();
    B.get_or_init(|| WgpuBackend::new().map_err(|e| e.to_string().replace('\n', " ")))
        .clone()
        .map_err(|e| anyhow::anyhow!("--device wgpu: {e}"))
}

/// Whether `b` runs on a real GPU (not a software rasteriser such as llvmpipe).
pub fn is_real_gpu(b: &WgpuBackend) -> bool {
    use score_net::gpu::wgpu::DeviceType;
    matches!(
        b.context().info().device_type,
        DeviceType::DiscreteGpu | DeviceType::IntegratedGpu | DeviceType::VirtualGpu
    )
}

impl Ctx {
    /// The backend for `--device`: `cpu`, `wgpu` (an error when no adapter
    /// exists), or `auto` (wgpu on a real GPU, else the CPU).
    pub fn backend(&self) -> Result<Chosen> {
        Ok(match self.device {
            Device::Cpu => Chosen::Cpu(CpuBackend),
            Device::Wgpu => Chosen::Wgpu(wgpu_backend()?),
            Device::Auto => match wgpu_backend() {
                Ok(b) if is_real_gpu(&b) => Chosen::Wgpu(b),
                _ => Chosen::Cpu(CpuBackend),
            },
        })
    }

    /// A progress bar of `len` steps (hidden with `--quiet` or `--json`).
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(Some(len), self.target());
        pb.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_prefix(what.to_string());
        pb
    }

    /// A spinner counting events of unknown total (score evaluations).
    pub fn spinner(&self, what: &str) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(None, self.target());
        pb.set_style(
            ProgressStyle::with_template("{prefix:>10} {spinner} {pos} {msg} {elapsed_precise}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_prefix(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(200));
        pb
    }

    fn target(&self) -> ProgressDrawTarget {
        if self.quiet || self.json {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        }
    }

    /// Prints a line for humans (stderr, so stdout stays machine-readable).
    pub fn note(&self, msg: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", msg.as_ref());
        }
    }
}

/// The process-wide interruption flag, set by Ctrl-C (SIGINT), SIGTERM or
/// SIGHUP (the handler is installed on first use; a second signal aborts).
pub fn interrupted() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let f = flag.clone();
        // If a handler cannot be installed, Ctrl-C simply kills the process
        // (checkpoints are atomic, so nothing on disk breaks).
        let _ = ctrlc::set_handler(move || {
            if f.swap(true, Ordering::SeqCst) {
                std::process::exit(130);
            }
            eprintln!("\ninterrupted: finishing the current step (Ctrl-C again to abort)");
        });
        flag
    })
    .clone()
}

/// Splits a batch of `n` items into chunks of at most `size`.
pub fn chunks(n: usize, size: usize) -> impl Iterator<Item = std::ops::Range<usize>> {
    let size = size.max(1);
    (0..n.div_ceil(size)).map(move |k| k * size..((k + 1) * size).min(n))
}

/// Loads a run's data set, with the data path optionally replaced.
pub fn load_data<T: train::Task>(
    cfg: &train::RunConfig<T>,
    data_path: Option<PathBuf>,
) -> Result<train::data::DataSplits> {
    let mut dc = cfg.data.clone();
    if data_path.is_some() {
        dc.path = data_path;
    }
    train::data::load(&dc).with_context(|| format!("loading the {:?} data set", dc.dataset))
}

/// Parses a kebab-case name into a serde enum (the names of the config files).
pub fn serde_enum<T: serde::de::DeserializeOwned>(s: &str) -> std::result::Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| e.to_string().replace('\n', " "))
}

/// Evaluates `$body` with `$b` bound to the backend `--device` chose (the
/// body is compiled once per backend type).
macro_rules! with_backend {
    ($ctx:expr, $b:ident => $body:expr) => {
        match $ctx.backend()? {
            $crate::common::Chosen::Cpu($b) => $body,
            $crate::common::Chosen::Wgpu($b) => $body,
        }
    };
}
pub(crate) use with_backend;

/// Checks that `path` can be written as an output file, before any work:
/// not a folder, below a folder that takes a file (the missing folders are
/// created when writing), and not the run's checkpoint, configuration or log
/// (`ckpt` is the run directory or the checkpoint file).
pub fn check_output(path: &Path, ckpt: &Path, flag: &str) -> Result<()> {
    let shown = path.display();
    let name = path
        .file_name()
        .ok_or_else(|| anyhow!("{flag} {shown} is not a file name"))?;
    if path.is_dir() {
        bail!("{flag} {shown} is a folder; give a file name");
    }
    let parent = or_dot(path.parent().unwrap_or(Path::new("")));
    let existing = parent
        .ancestors()
        .map(or_dot)
        .find(|a| a.exists())
        .unwrap_or(Path::new("."));
    if !existing.is_dir() {
        bail!("{flag} {shown}: {} is not a folder", existing.display());
    }
    let run_dir = if ckpt.is_dir() {
        ckpt
    } else {
        or_dot(ckpt.parent().unwrap_or(Path::new("")))
    };
    if let (Ok(dir), Ok(run)) = (parent.canonicalize(), run_dir.canonicalize()) {
        let own = [
            train::trainer::CHECKPOINT_FILE,
            train::trainer::CONFIG_FILE,
            "log.jsonl",
        ];
        let is_ckpt = ckpt.canonicalize().is_ok_and(|c| c == dir.join(name));
        if is_ckpt || (dir == run && own.iter().any(|f| name == *f)) {
            bail!("{flag} {shown} would overwrite the run's own file; choose another name");
        }
    }
    let probe = existing.join(format!(".scoresde-probe-{}", std::process::id()));
    std::fs::File::create(&probe)
        .with_context(|| format!("{flag} {shown}: cannot write in {}", existing.display()))?;
    std::fs::remove_file(&probe).ok();
    Ok(())
}

/// An empty relative path (the parent of `a.png`) as `.`.
fn or_dot(p: &Path) -> &Path {
    if p.as_os_str().is_empty() {
        Path::new(".")
    } else {
        p
    }
}
