//! The UNet's cached forward (`Unet::forward`, what training and VJPs run)
//! against its inference forward (`Unet::forward_inference`, what sampling
//! runs) on the CPU backend: time and memory per forward pass, both in one
//! process, interleaved.
//!
//! ```text
//! cargo run -p benches --profile test --example unet_inference -- [REPS] [BATCH]
//! cargo run -p benches --profile test --example unet_inference -- --hwm MODE NET [BATCH]
//! ```
//!
//! For each network (`digits`: configs/digits-vp.toml, 8x8x1; `reference`:
//! the 28x28x1 network of the UNet bench) at batch `BATCH` (default 64) it
//! runs `REPS` (default 10) rounds of one cached and one inference forward
//! after a warm-up round, and prints per mode the median and minimum time,
//! the peak of live heap bytes during the forward above the bytes live
//! before it (a counting global allocator, so the peak covers every
//! intermediate tensor and the cache but not the inputs and parameters),
//! and the number and bytes of allocations per forward.
//!
//! `--hwm MODE NET` (`MODE` `cached` or `inference`) runs only that forward,
//! three times, and prints the process's resident high-water mark
//! (`VmHWM` of `/proc/self/status`, Linux) before and after: one process per
//! mode, since the mark never goes down.
//!
//! The allocator is tuned as the CLI tunes it (`benches::tune_allocator`);
//! `BENCH_DEFAULT_MALLOC=1` measures with malloc's defaults.
#![allow(missing_docs, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use score_net::{ParamBuilder, Unet, UnetConfig};
use sde_core::{Backend, CpuBackend, CpuTensor, NoiseKey, Shape};

/// The system allocator, counting live bytes, their peak, and allocations.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
static COUNT: AtomicUsize = AtomicUsize::new(0);
static TOTAL: AtomicUsize = AtomicUsize::new(0);

fn grew(size: usize) {
    let live = LIVE.fetch_add(size, Relaxed) + size;
    PEAK.fetch_max(live, Relaxed);
    COUNT.fetch_add(1, Relaxed);
    TOTAL.fetch_add(size, Relaxed);
}

// SAFETY: every call is forwarded to `System` with the caller's arguments;
// the counters are plain atomics and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: forwarded as received.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Relaxed);
        // SAFETY: forwarded as received.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_sub(layout.size(), Relaxed);
        grew(new_size);
        // SAFETY: forwarded as received.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// One forward pass's measurements.
#[derive(Clone, Copy)]
struct Sample {
    ms: f64,
    peak: usize,
    count: usize,
    bytes: usize,
}

struct Net {
    name: &'static str,
    net: Unet,
    params: CpuTensor,
    x: CpuTensor,
    t: Vec<f64>,
}

impl Net {
    fn new(name: &'static str, batch: usize) -> Net {
        let (cfg, size) = match name {
            // configs/digits-vp.toml's [net].
            "digits" => (
                UnetConfig {
                    base_channels: 16,
                    channel_mult: vec![1, 2],
                    num_res_blocks: 1,
                    attn_resolutions: vec![4],
                    dropout: 0.0,
                    ..UnetConfig::default()
                },
                8,
            ),
            "reference" => (UnetConfig::default(), 28),
            other => panic!("unknown network {other:?} (digits or reference)"),
        };
        let b = CpuBackend;
        let mut pb = ParamBuilder::new();
        let net = Unet::new(&cfg, size, &mut pb, 0).unwrap();
        let store = pb.build(&b, 0).unwrap();
        let shape = Shape::new([batch, cfg.in_channels, size, size]).unwrap();
        Net {
            name,
            net,
            params: store.params().clone(),
            x: b.gaussian(&shape, NoiseKey::new(1, 0)).unwrap(),
            t: (0..batch).map(|i| 10.0 + 15.0 * i as f64).collect(),
        }
    }

    /// Runs one forward pass (`inference` or cached) and drops its result.
    fn run(&self, inference: bool) -> Sample {
        let b = CpuBackend;
        let base = LIVE.load(Relaxed);
        PEAK.store(base, Relaxed);
        let (c0, t0) = (COUNT.load(Relaxed), TOTAL.load(Relaxed));
        let start = Instant::now();
        let y = if inference {
            self.net
                .forward_inference(&b, &self.params, &self.x, &self.t)
                .unwrap()
        } else {
            self.net
                .forward(&b, &self.params, &self.x, &self.t, None)
                .unwrap()
                .0
        };
        let ms = start.elapsed().as_secs_f64() * 1e3;
        std::hint::black_box(&y);
        Sample {
            ms,
            peak: PEAK.load(Relaxed) - base,
            count: COUNT.load(Relaxed) - c0,
            bytes: TOTAL.load(Relaxed) - t0,
        }
    }
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1u64 << 20) as f64
}

fn vm_hwm() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l["VmHWM:".len()..].trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

fn report(mode: &str, samples: &[Sample]) {
    let mut ms: Vec<f64> = samples.iter().map(|s| s.ms).collect();
    ms.sort_by(f64::total_cmp);
    let median = ms[ms.len() / 2];
    let s = samples[0];
    println!(
        "  {mode:<10} median {median:8.2} ms  min {:8.2} ms  peak live {:8.2} MiB  {:5} allocations, {:8.2} MiB",
        ms[0],
        mib(s.peak),
        s.count,
        mib(s.bytes)
    );
}

fn main() {
    let tuned = benches::tune_allocator();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--hwm") {
        let mode = args.get(1).expect("--hwm MODE NET [BATCH]");
        let inference = match mode.as_str() {
            "inference" => true,
            "cached" => false,
            other => panic!("mode {other:?}: cached or inference"),
        };
        let name = args.get(2).expect("--hwm MODE NET [BATCH]");
        let batch = args.get(3).map_or(64, |s| s.parse().unwrap());
        let net = Net::new(
            if name == "digits" {
                "digits"
            } else {
                "reference"
            },
            batch,
        );
        let before = vm_hwm();
        for _ in 0..3 {
            net.run(inference);
        }
        println!(
            "{} batch {batch} {mode}: VmHWM {before} before, {} after three forwards",
            net.name,
            vm_hwm()
        );
        return;
    }
    let reps: usize = args.first().map_or(10, |s| s.parse().unwrap());
    let batch: usize = args.get(1).map_or(64, |s| s.parse().unwrap());
    println!(
        "CPU backend, {} rayon threads, allocator tuned: {tuned}",
        rayon_threads()
    );
    for name in ["digits", "reference"] {
        let net = Net::new(name, batch);
        // Warm-up: thread pool, allocator arenas, caches.
        net.run(false);
        net.run(true);
        let (mut cached, mut inference) = (Vec::new(), Vec::new());
        for _ in 0..reps {
            cached.push(net.run(false));
            inference.push(net.run(true));
        }
        println!("{name} UNet, batch {batch}, {reps} rounds:");
        report("cached", &cached);
        report("inference", &inference);
    }
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .or_else(|| std::thread::available_parallelism().ok().map(|n| n.get()))
        .unwrap_or(1)
}
