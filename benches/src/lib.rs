//! Criterion benchmarks for score-sde; see `benches/*.rs`. Run with
//! `cargo bench -p benches`. Names are prefixed by the backend.

/// Applies the allocator tuning the `scoresde` CLI uses
/// ([`score_net::cpu::retain_freed_memory`]) unless the environment variable
/// `BENCH_DEFAULT_MALLOC` is set (to measure with malloc's defaults).
/// Returns whether the tuning is in effect.
pub fn tune_allocator() -> bool {
    let applied =
        std::env::var_os("BENCH_DEFAULT_MALLOC").is_none() && score_net::cpu::retain_freed_memory();
    eprintln!("allocator tuning (retain_freed_memory): {applied}");
    applied
}
