//! Criterion benchmarks for score-sde; see `benches/*.rs`. Run with
//! `cargo bench -p benches`. Names are prefixed by the backend.
