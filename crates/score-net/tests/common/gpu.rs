//! Shared helpers for the wgpu-versus-CPU tests: the one shared adapter
//! (tests REQUIRE one and fail loudly without it, never skip), uploads, and a
//! tolerance comparison that names the worst element.

use std::sync::OnceLock;

use score_net::gpu::{WgpuBackend, WgpuTensor};
use sde_core::{Backend, CpuTensor};

/// One backend (and one device) shared by every test of a binary.
pub fn gpu() -> WgpuBackend {
    static B: OnceLock<WgpuBackend> = OnceLock::new();
    B.get_or_init(|| match WgpuBackend::new() {
        Ok(b) => {
            eprintln!("wgpu adapter: {}", b.context().describe());
            b
        }
        Err(e) => panic!(
            "the wgpu backend tests need an adapter and found none: {e}\n\
             (install mesa-vulkan-drivers and libvulkan1, then run with WGPU_BACKEND=vulkan)"
        ),
    })
    .clone()
}

/// `x` uploaded to the GPU.
pub fn up(x: &CpuTensor) -> WgpuTensor {
    gpu().tensor(x.data().to_vec(), x.shape()).unwrap()
}

/// `x` read back from the GPU.
pub fn down(x: &WgpuTensor) -> Vec<f32> {
    gpu().to_vec(x).unwrap()
}

/// Asserts `got` (GPU) has `want`'s (CPU) shape and, element by element,
/// `|got - want| <= rel * scale + abs`, where `scale` is `max_j |want_j|`
/// (f32 sums in a different order differ by a few ulps of the largest
/// partial sums, not of each element). Names the worst element on failure.
pub fn assert_close(name: &str, got: &WgpuTensor, want: &CpuTensor, rel: f32, abs: f32) {
    assert_eq!(got.shape(), want.shape(), "{name}: shape");
    assert_close_slices(name, &down(got), want.data(), rel, abs);
}

/// [`assert_close`] on plain slices.
pub fn assert_close_slices(name: &str, got: &[f32], want: &[f32], rel: f32, abs: f32) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let tol = rel * scale + abs;
    let mut worst = (0.0f32, 0usize);
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(err.is_finite(), "{name}: element {i} is {g} (want {w})");
        if err > worst.0 {
            worst = (err, i);
        }
    }
    assert!(
        worst.0 <= tol,
        "{name}: element {} is {} but the CPU gives {} (error {:.3e} > tolerance {:.3e} = {rel:e} * {scale:.3e} + {abs:e})",
        worst.1,
        got[worst.1],
        want[worst.1],
        worst.0,
        tol
    );
}
