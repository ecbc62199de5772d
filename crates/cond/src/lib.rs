//! `cond`: controllable generation with score-based models (Song et al.
//! 2021, section 5 and appendix I) — sampling from a conditional
//! distribution with an unconditional score model, without re-training it.
//!
//! - [`guidance`]: class-conditional sampling, `score + w grad_x log p_t(y|x)`
//!   with any [`TimeClassifier`] ([`Guided`] is a `ScoreModel`, so every
//!   sampler of `solvers` runs it);
//! - [`mod@inpaint`]: inpainting by replacement (the paper) and by RePaint
//!   resampling, through one constrained predictor–corrector loop;
//! - [`colorize`]: colourisation as inpainting of the grey channel in the
//!   decoupled colour space;
//! - [`mask`]: named and image masks;
//! - [`analytic`]: the exact class posterior of a Gaussian mixture (ground
//!   truth for tests).
//!
//! The crate needs no training code: any `ScoreModel` and any
//! `TimeClassifier` plug in.

pub mod analytic;
pub mod colorize;
pub mod error;
pub mod guidance;
pub mod inpaint;
pub mod mask;

pub use analytic::ExactClassifier;
pub use error::{CondError, Result};
pub use guidance::{Guided, TimeClassifier};
pub use inpaint::{inpaint, sample_constrained, Constraint, KnownPixels, Method};
pub use mask::NamedMask;

/// Compiles and runs the README's Rust snippets as doctests (this crate sits
/// above every library crate, so all of them are in scope).
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
