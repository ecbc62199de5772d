//! `solvers`: sampling and likelihood (not yet built; see the issue tracker).
//!
//! It will hold the predictors (Euler–Maruyama, reverse diffusion, ancestral),
//! the correctors (Langevin, annealed Langevin), the predictor–corrector
//! sampler, the probability-flow ODE sampler with adaptive Dormand–Prince
//! RK4(5), the exact likelihood in bits/dim and latent encode/decode, all
//! generic over `sde_core::Backend` and `sde_core::ScoreModel`.
