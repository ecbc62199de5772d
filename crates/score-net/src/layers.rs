//! Building blocks of the UNet and the noise-conditional classifier with
//! explicit forward and backward passes: convolution, linear and group-norm
//! layers bound to parameter views, the DDPM++ residual block and attention
//! block (Song et al. 2021, appendix H; Ho et al. 2020), and [`ResAttn`], a
//! residual block optionally followed by attention, the unit both networks'
//! paths are made of. Each `forward` returns its output and a cache of what
//! its `backward` needs; `backward` accumulates parameter gradients into the
//! flat gradient buffer and returns the input gradient(s).
//!
//! The blocks with a cache run one forward body for two purposes, chosen by a
//! crate-private `Keep` policy: `KeepAll` moves each activation the backward
//! pass needs into the cache (`forward`: training, vector-Jacobian
//! products), `KeepNone` drops it as soon as the forward pass is done with it
//! (the networks' `forward_inference`: sampling needs the output only). Both
//! run the same backend ops in the same order, so their outputs are
//! bit-identical.

use std::fmt::Debug;

use sde_core::{Coef, NoiseKey};

use crate::params::{Init, ParamBuilder};
use crate::{Conv2dSpec, NetBackend, Result, View};

/// The factor applied to a residual sum: `1/sqrt(2)` with skip rescaling, else 1.
fn residual_scale(skip_rescale: bool) -> f32 {
    if skip_rescale {
        std::f32::consts::FRAC_1_SQRT_2
    } else {
        1.0
    }
}

/// What a forward pass does with an activation its backward pass would need:
/// [`KeepAll`] keeps it in the cache, [`KeepNone`] drops it (the cache then
/// holds `()` in its place, so it cannot reach a backward pass).
pub(crate) trait Keep<T>: Copy {
    /// What the cache holds in the activation's place.
    type Kept: Clone + Debug;

    /// Keeps `t` (moves it into the cache) or drops it.
    fn keep(self, t: T) -> Self::Kept;

    /// [`Keep::keep`] for an activation the caller still owns (a cheap
    /// handle clone when kept, nothing when dropped).
    fn keep_ref(self, t: &T) -> Self::Kept;
}

/// Keeps every activation the backward pass needs (the cached forward).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeepAll;

/// Keeps nothing: each activation is dropped as soon as the forward pass is
/// done with it (the inference forward).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct KeepNone;

impl<T: Clone + Debug> Keep<T> for KeepAll {
    type Kept = T;

    fn keep(self, t: T) -> T {
        t
    }

    fn keep_ref(self, t: &T) -> T {
        t.clone()
    }
}

impl<T> Keep<T> for KeepNone {
    type Kept = ();

    fn keep(self, t: T) {
        drop(t);
    }

    fn keep_ref(self, _: &T) {}
}

/// A 2-D convolution with bias.
#[derive(Clone, Debug)]
pub struct Conv {
    w: View,
    b: View,
    spec: Conv2dSpec,
}

impl Conv {
    /// Declares a `k x k` convolution `cin -> cout` (DDPM++ `default_init` with `scale`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        scale: f32,
    ) -> Result<Self> {
        Ok(Conv {
            w: pb.add(
                format!("{name}.weight"),
                &[cout, cin, k, k],
                Init::VarianceScaling { scale },
            )?,
            b: pb.add(format!("{name}.bias"), &[cout], Init::Zeros)?,
            spec: Conv2dSpec {
                stride,
                padding: k / 2,
            },
        })
    }

    /// `conv(x)`.
    pub fn forward<B: NetBackend>(&self, b: &B, p: &B::Tensor, x: &B::Tensor) -> Result<B::Tensor> {
        b.conv2d(x, p, &self.w, Some(&self.b), self.spec)
    }

    /// Accumulates parameter gradients; returns `dx` when `need_dx`.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
        need_dx: bool,
    ) -> Result<Option<B::Tensor>> {
        b.conv2d_backward(x, dy, p, &self.w, Some(&self.b), self.spec, g, need_dx)
    }

    /// Backward that must return `dx`.
    pub(crate) fn backward_dx<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        self.backward(b, p, x, dy, g, true)?
            .ok_or_else(|| missing("conv2d"))
    }
}

fn missing(op: &'static str) -> crate::NetError {
    crate::NetError::Shape {
        op,
        reason: "backend returned no input gradient although it was requested".into(),
    }
}

/// An affine layer on the last dimension.
#[derive(Clone, Debug)]
pub struct Linear {
    w: View,
    b: View,
}

impl Linear {
    /// Declares `cin -> cout`.
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        scale: f32,
    ) -> Result<Self> {
        Ok(Linear {
            w: pb.add(
                format!("{name}.weight"),
                &[cout, cin],
                Init::VarianceScaling { scale },
            )?,
            b: pb.add(format!("{name}.bias"), &[cout], Init::Zeros)?,
        })
    }

    /// `x W^T + b`.
    pub fn forward<B: NetBackend>(&self, b: &B, p: &B::Tensor, x: &B::Tensor) -> Result<B::Tensor> {
        b.linear(x, p, &self.w, Some(&self.b))
    }

    /// Accumulates parameter gradients; returns `dx`.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        b.linear_backward(x, dy, p, &self.w, Some(&self.b), g, true)?
            .ok_or_else(|| missing("linear"))
    }
}

/// Group normalisation with learned scale and shift.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    gamma: View,
    beta: View,
    groups: usize,
}

/// GroupNorm epsilon used by DDPM++.
pub const GN_EPS: f32 = 1e-6;

impl GroupNorm {
    /// Declares a group norm over `c` channels with DDPM++'s group count `min(c / 4, 32)`.
    pub fn new(pb: &mut ParamBuilder, name: &str, c: usize) -> Result<Self> {
        Ok(GroupNorm {
            gamma: pb.add(format!("{name}.weight"), &[c], Init::Ones)?,
            beta: pb.add(format!("{name}.bias"), &[c], Init::Zeros)?,
            groups: group_count(c),
        })
    }

    /// `GN(x)`.
    pub fn forward<B: NetBackend>(&self, b: &B, p: &B::Tensor, x: &B::Tensor) -> Result<B::Tensor> {
        b.group_norm(x, p, &self.gamma, &self.beta, self.groups, GN_EPS)
    }

    /// Accumulates parameter gradients; returns `dx`.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        b.group_norm_backward(x, dy, p, &self.gamma, &self.beta, self.groups, GN_EPS, g)
    }

    /// `silu(GN(x))` (fused where the backend can).
    pub fn forward_silu<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
    ) -> Result<B::Tensor> {
        b.group_norm_silu(x, p, &self.gamma, &self.beta, self.groups, GN_EPS)
    }

    /// Backward of [`GroupNorm::forward_silu`] from its input `x`:
    /// accumulates parameter gradients, returns `dx`.
    pub fn backward_silu<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        b.group_norm_silu_backward(x, dy, p, &self.gamma, &self.beta, self.groups, GN_EPS, g)
    }
}

/// DDPM++'s group count: `min(c / 4, 32)`, at least 1, and a divisor of `c`.
pub fn group_count(c: usize) -> usize {
    let mut g = (c / 4).clamp(1, 32);
    while c % g != 0 {
        g -= 1;
    }
    g
}

/// The residual block of DDPM++ (`ResnetBlockDDPMpp`):
/// `h = conv1(silu(GN1(x))) + Dense(silu(temb))`, `h = conv2(dropout(silu(GN2(h))))`,
/// `out = (skip(x) + h) / sqrt(2)` (or without the rescale), `skip` a 1x1 conv when
/// the channel count changes. `conv2` starts at (almost) zero.
#[derive(Clone, Debug)]
pub struct ResBlock {
    gn1: GroupNorm,
    conv1: Conv,
    temb: Linear,
    gn2: GroupNorm,
    conv2: Conv,
    skip: Option<Conv>,
    dropout: f32,
    skip_rescale: bool,
}

/// What [`ResBlock::backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct ResBlockCache<T> {
    x: T,
    s1: T,
    silu_temb: T,
    h1: T,
    d2: T,
    key: Option<NoiseKey>,
}

impl ResBlock {
    /// Declares a block `cin -> cout` with a time embedding of `temb_dim`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        temb_dim: usize,
        dropout: f32,
        skip_rescale: bool,
    ) -> Result<Self> {
        Ok(ResBlock {
            gn1: GroupNorm::new(pb, &format!("{name}.gn1"), cin)?,
            conv1: Conv::new(pb, &format!("{name}.conv1"), cin, cout, 3, 1, 1.0)?,
            temb: Linear::new(pb, &format!("{name}.temb"), temb_dim, cout, 1.0)?,
            gn2: GroupNorm::new(pb, &format!("{name}.gn2"), cout)?,
            conv2: Conv::new(pb, &format!("{name}.conv2"), cout, cout, 3, 1, 1e-10)?,
            skip: if cin != cout {
                Some(Conv::new(
                    pb,
                    &format!("{name}.skip"),
                    cin,
                    cout,
                    1,
                    1,
                    1.0,
                )?)
            } else {
                None
            },
            dropout,
            skip_rescale,
        })
    }

    /// Forward pass; `key` enables dropout (training), `None` disables it.
    pub fn forward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        temb: &B::Tensor,
        key: Option<NoiseKey>,
    ) -> Result<(B::Tensor, ResBlockCache<B::Tensor>)> {
        self.forward_with(b, p, x, temb, key, KeepAll)
    }

    /// [`ResBlock::forward`] with the cache policy `keep`: each activation
    /// is handed to `keep` right after its last use in the forward pass.
    pub(crate) fn forward_with<B: NetBackend, K: Keep<B::Tensor>>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        temb: &B::Tensor,
        key: Option<NoiseKey>,
        keep: K,
    ) -> Result<(B::Tensor, ResBlockCache<K::Kept>)> {
        let s1 = self.gn1.forward_silu(b, p, x)?;
        let c1 = self.conv1.forward(b, p, &s1)?;
        let s1 = keep.keep(s1);
        let silu_temb = b.silu(temb)?;
        let tproj = self.temb.forward(b, p, &silu_temb)?;
        let silu_temb = keep.keep(silu_temb);
        let h1 = b.add_channel_bias(&c1, &tproj)?;
        drop((c1, tproj));
        let s2 = self.gn2.forward_silu(b, p, &h1)?;
        let h1 = keep.keep(h1);
        let key = key.filter(|_| self.dropout > 0.0);
        let d2 = match key {
            Some(k) => b.dropout(&s2, self.dropout, k)?,
            None => s2,
        };
        let h2 = self.conv2.forward(b, p, &d2)?;
        let d2 = keep.keep(d2);
        let skip = match &self.skip {
            Some(c) => c.forward(b, p, x)?,
            None => x.clone(),
        };
        let r = residual_scale(self.skip_rescale);
        let out = b.lincomb(&[(Coef::Scalar(r), &skip), (Coef::Scalar(r), &h2)])?;
        Ok((
            out,
            ResBlockCache {
                x: keep.keep_ref(x),
                s1,
                silu_temb,
                h1,
                d2,
                key,
            },
        ))
    }

    /// Backward pass: returns `(dx, dtemb)`.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        c: &ResBlockCache<B::Tensor>,
        temb: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor)> {
        let r = residual_scale(self.skip_rescale);
        let dy = b.scale(dy, Coef::Scalar(r))?;
        // Residual branch.
        let dd2 = self.conv2.backward_dx(b, p, &c.d2, &dy, g)?;
        let ds2 = match c.key {
            Some(k) => b.dropout_backward(&dd2, self.dropout, k)?,
            None => dd2,
        };
        let dh1 = self.gn2.backward_silu(b, p, &c.h1, &ds2, g)?;
        let dtproj = b.sum_spatial(&dh1)?;
        let dsilu_t = self.temb.backward(b, p, &c.silu_temb, &dtproj, g)?;
        let dtemb = b.silu_backward(temb, &dsilu_t)?;
        let ds1 = self.conv1.backward_dx(b, p, &c.s1, &dh1, g)?;
        let dx_branch = self.gn1.backward_silu(b, p, &c.x, &ds1, g)?;
        // Skip path.
        let dx_skip = match &self.skip {
            Some(conv) => conv.backward_dx(b, p, &c.x, &dy, g)?,
            None => dy,
        };
        Ok((b.add(&dx_branch, &dx_skip)?, dtemb))
    }
}

/// DDPM++'s self-attention block over pixels (`AttnBlockpp`):
/// `h = GN(x)`, `q, k, v = NIN(h)`, `out = x + NIN(attention(q, k, v))`
/// (divided by `sqrt(2)` with skip rescaling); the output projection starts at zero.
#[derive(Clone, Debug)]
pub struct AttnBlock {
    gn: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    skip_rescale: bool,
}

/// What [`AttnBlock::backward`] needs.
#[derive(Clone, Debug)]
pub struct AttnCache<T> {
    x: T,
    tokens: T,
    q: T,
    k: T,
    v: T,
    a: T,
    h: usize,
    w: usize,
}

impl AttnBlock {
    /// Declares an attention block over `c` channels.
    pub fn new(pb: &mut ParamBuilder, name: &str, c: usize, skip_rescale: bool) -> Result<Self> {
        Ok(AttnBlock {
            gn: GroupNorm::new(pb, &format!("{name}.gn"), c)?,
            q: Linear::new(pb, &format!("{name}.q"), c, c, 1.0)?,
            k: Linear::new(pb, &format!("{name}.k"), c, c, 1.0)?,
            v: Linear::new(pb, &format!("{name}.v"), c, c, 1.0)?,
            out: Linear::new(pb, &format!("{name}.out"), c, c, 1e-10)?,
            skip_rescale,
        })
    }

    /// Forward pass.
    pub fn forward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
    ) -> Result<(B::Tensor, AttnCache<B::Tensor>)> {
        self.forward_with(b, p, x, KeepAll)
    }

    /// [`AttnBlock::forward`] with the cache policy `keep`.
    pub(crate) fn forward_with<B: NetBackend, K: Keep<B::Tensor>>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        keep: K,
    ) -> Result<(B::Tensor, AttnCache<K::Kept>)> {
        let dims = b.shape(x).dims().to_vec();
        let (h, w) = (dims[2], dims[3]);
        let n = self.gn.forward(b, p, x)?;
        let tokens = b.image_to_tokens(&n)?;
        drop(n);
        let q = self.q.forward(b, p, &tokens)?;
        let k = self.k.forward(b, p, &tokens)?;
        let v = self.v.forward(b, p, &tokens)?;
        let tokens = keep.keep(tokens);
        let a = b.attention(&q, &k, &v)?;
        let (q, k, v) = (keep.keep(q), keep.keep(k), keep.keep(v));
        let o = self.out.forward(b, p, &a)?;
        let a = keep.keep(a);
        let o = b.tokens_to_image(&o, h, w)?;
        let r = residual_scale(self.skip_rescale);
        let y = b.lincomb(&[(Coef::Scalar(r), x), (Coef::Scalar(r), &o)])?;
        Ok((
            y,
            AttnCache {
                x: keep.keep_ref(x),
                tokens,
                q,
                k,
                v,
                a,
                h,
                w,
            },
        ))
    }

    /// Backward pass: returns `dx`.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        c: &AttnCache<B::Tensor>,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        let r = residual_scale(self.skip_rescale);
        let dy = b.scale(dy, Coef::Scalar(r))?;
        let do_tok = b.image_to_tokens(&dy)?;
        let da = self.out.backward(b, p, &c.a, &do_tok, g)?;
        let (dq, dk, dv) = b.attention_backward(&c.q, &c.k, &c.v, &da)?;
        let dt_q = self.q.backward(b, p, &c.tokens, &dq, g)?;
        let dt_k = self.k.backward(b, p, &c.tokens, &dk, g)?;
        let dt_v = self.v.backward(b, p, &c.tokens, &dv, g)?;
        let dtok = b.lincomb(&[
            (Coef::Scalar(1.0), &dt_q),
            (Coef::Scalar(1.0), &dt_k),
            (Coef::Scalar(1.0), &dt_v),
        ])?;
        let dn = b.tokens_to_image(&dtok, c.h, c.w)?;
        let dx_branch = self.gn.backward(b, p, &c.x, &dn, g)?;
        Ok(b.add(&dy, &dx_branch)?)
    }
}

/// A residual block, optionally followed by self-attention: the unit the
/// UNet's down and up paths and the classifier's down path are made of. The
/// attention block's parameters are named `{name}.attn.*`.
#[derive(Clone, Debug)]
pub struct ResAttn {
    res: ResBlock,
    attn: Option<AttnBlock>,
}

/// What [`ResAttn::backward`] needs from the forward pass.
#[derive(Clone, Debug)]
pub struct ResAttnCache<T> {
    res: ResBlockCache<T>,
    attn: Option<AttnCache<T>>,
}

impl ResAttn {
    /// Declares a residual block `cin -> cout` named `name` (see
    /// [`ResBlock::new`]), followed by an attention block when `with_attn`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        pb: &mut ParamBuilder,
        name: &str,
        cin: usize,
        cout: usize,
        with_attn: bool,
        temb_dim: usize,
        dropout: f32,
        skip_rescale: bool,
    ) -> Result<Self> {
        let res = ResBlock::new(pb, name, cin, cout, temb_dim, dropout, skip_rescale)?;
        let attn = if with_attn {
            Some(AttnBlock::new(
                pb,
                &format!("{name}.attn"),
                cout,
                skip_rescale,
            )?)
        } else {
            None
        };
        Ok(ResAttn { res, attn })
    }

    /// Forward pass; `key` enables dropout in the residual block.
    pub fn forward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        temb: &B::Tensor,
        key: Option<NoiseKey>,
    ) -> Result<(B::Tensor, ResAttnCache<B::Tensor>)> {
        self.forward_with(b, p, x, temb, key, KeepAll)
    }

    /// [`ResAttn::forward`] with the cache policy `keep`.
    pub(crate) fn forward_with<B: NetBackend, K: Keep<B::Tensor>>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        temb: &B::Tensor,
        key: Option<NoiseKey>,
        keep: K,
    ) -> Result<(B::Tensor, ResAttnCache<K::Kept>)> {
        let (y, res) = self.res.forward_with(b, p, x, temb, key, keep)?;
        let (y, attn) = match &self.attn {
            Some(a) => {
                let (y, ac) = a.forward_with(b, p, &y, keep)?;
                (y, Some(ac))
            }
            None => (y, None),
        };
        Ok((y, ResAttnCache { res, attn }))
    }

    /// Backward pass: returns `(dx, dtemb)`. A cache from a unit with a
    /// different attention setting is a [`crate::NetError::Shape`] error.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        c: &ResAttnCache<B::Tensor>,
        temb: &B::Tensor,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<(B::Tensor, B::Tensor)> {
        match (&self.attn, &c.attn) {
            (Some(a), Some(ac)) => {
                let d = a.backward(b, p, ac, dy, g)?;
                self.res.backward(b, p, &c.res, temb, &d, g)
            }
            (None, None) => self.res.backward(b, p, &c.res, temb, dy, g),
            _ => Err(crate::NetError::Shape {
                op: "res-attn backward",
                reason: "cache does not match the unit (attention present in one only)".into(),
            }),
        }
    }
}
