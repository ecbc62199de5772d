//! Allocator tuning for the CPU backend's allocation pattern.
//!
//! A training step allocates and frees the same few hundred activation and
//! gradient buffers (up to several MiB each) every step. With glibc's default
//! settings many of them are `mmap`ed on allocation and `munmap`ed (or the
//! heap trimmed) on free, so every step faults each page in again and the
//! kernel zeroes it: about 9% of a training step of the reference UNet on a
//! 2-core machine (BENCHMARKS.md). [`retain_freed_memory`] tells malloc to keep
//! such memory for reuse instead.

/// Largest allocation served from the heap rather than by its own `mmap`
/// (glibc's maximum, 32 MiB on 64-bit targets).
pub const MMAP_THRESHOLD: usize = 32 << 20;

/// Free memory at the top of a heap that malloc keeps rather than returns
/// to the operating system.
pub const TRIM_THRESHOLD: usize = 1 << 30;

/// On glibc (Linux), sets malloc's `M_MMAP_THRESHOLD` to [`MMAP_THRESHOLD`]
/// and `M_TRIM_THRESHOLD` to [`TRIM_THRESHOLD`], so buffers freed between
/// training or sampling steps are reused rather than handed back to the
/// operating system and faulted in (and zeroed) again. Returns whether both
/// settings were applied; on other platforms it does nothing and returns
/// `false`.
///
/// The setting is process-wide and affects every allocation of the
/// program, so the library never calls it on its own: programs that run the
/// CPU backend call it once at start-up (the `scoresde` CLI and the benches
/// do). The cost is that up to about [`TRIM_THRESHOLD`] of freed memory per
/// malloc arena stays mapped. The same settings are available without code
/// as the environment variables `MALLOC_MMAP_THRESHOLD_` and
/// `MALLOC_TRIM_THRESHOLD_`.
///
/// ```
/// // First thing in main():
/// let applied = score_net::cpu::retain_freed_memory();
/// assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
/// ```
pub fn retain_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // Both values fit a C int (asserted at compile time below).
        const _: () = assert!(MMAP_THRESHOLD <= i32::MAX as usize);
        const _: () = assert!(TRIM_THRESHOLD <= i32::MAX as usize);
        // SAFETY: mallopt only changes malloc's tuning parameters (under
        // malloc's own lock); it takes plain integers and touches no memory
        // of ours. It returns 1 on success, 0 for a rejected value.
        let (mmap, trim) = unsafe {
            (
                libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD as libc::c_int),
                libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD as libc::c_int),
            )
        };
        mmap == 1 && trim == 1
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}
