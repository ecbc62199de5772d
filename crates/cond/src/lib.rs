//! `cond`: controllable generation (not yet built; see the issue tracker).
//!
//! It will hold class-conditional guidance with a time-dependent classifier,
//! inpainting and colourisation (SPEC.md section 8), as wrappers around an
//! `sde_core::ScoreModel` and hooks in the samplers.
