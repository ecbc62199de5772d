//! `cond`: controllable generation (not yet built; see the issue tracker).
//!
//! It will hold class-conditional guidance with a time-dependent classifier,
//! inpainting and colourisation (SPEC.md section 8), as wrappers around an
//! `sde_core::ScoreModel` and hooks in the samplers.

/// Compiles and runs the README's Rust snippets as doctests (this crate sits
/// above every library crate, so all of them are in scope).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
