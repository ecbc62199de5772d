//! The UNet score network of the DDPM++ / NCSN++ family (Song et al. 2021,
//! appendix H; Ho et al. 2020): an input convolution, `num_res_blocks`
//! residual blocks per resolution level (with self-attention at chosen
//! resolutions), down-sampling between levels, a middle block
//! (ResBlock–Attention–ResBlock), an up path whose residual blocks take the
//! matching down-path activations as skip connections, and an output
//! GroupNorm–SiLU–convolution. Time enters through an embedding (sinusoidal on
//! `999 t`, or Gaussian Fourier features on `ln sigma`) and a two-layer MLP
//! ([`crate::time_embed`]), projected into every residual block.
//!
//! [`crate::UnetScore`] turns the network into a score model for an SDE.

use sde_core::{NoiseKey, Shape};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::layers::{
    AttnBlock, AttnCache, Conv, GroupNorm, Keep, KeepAll, KeepNone, ResAttn, ResAttnCache,
    ResBlock, ResBlockCache,
};
use crate::network::Network;
use crate::params::ParamBuilder;
use crate::time_embed::{TimeEmbed, TimeEmbedCache};
use crate::{NetBackend, Result};

/// The format tag of UNet checkpoints (see [`crate::checkpoint`]).
pub const FORMAT: &str = "score-sde-rs/unet/1";

/// How time is embedded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Embedding {
    /// Sinusoidal positional embedding (DDPM++); VP / sub-VP feed `999 t`, VE feeds `sigma(t)`.
    #[default]
    Positional,
    /// Gaussian Fourier features (NCSN++) of `ln sigma(t)` (VE) or `999 t` (VP / sub-VP).
    Fourier,
}

/// How resolution changes between levels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resample {
    /// Down: 3x3 convolution with stride 2. Up: nearest 2x then a 3x3 convolution.
    #[default]
    Conv,
    /// Down: 2x2 average pooling. Up: nearest 2x. No parameters.
    Pool,
}

/// UNet hyper-parameters. The defaults are the reference configuration of the
/// benchmarks (28x28 grey images): base 32 channels, multipliers (1, 2, 2), two
/// residual blocks per level, attention at 7x7.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnetConfig {
    /// Image channels (1 grey, 3 RGB).
    pub in_channels: usize,
    /// Channels of the first level (`nf`).
    pub base_channels: usize,
    /// Channel multiplier per level; the number of levels is its length.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level on the down path (the up path has one more).
    pub num_res_blocks: usize,
    /// Spatial sizes (height) at which self-attention follows each residual block.
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside residual blocks (reference: 0.1).
    pub dropout: f32,
    /// Divide residual sums by sqrt(2) (DDPM++: true).
    pub skip_rescale: bool,
    /// Time embedding.
    pub embedding: Embedding,
    /// Standard deviation of the Fourier frequencies (NCSN++: 16).
    pub fourier_scale: f32,
    /// Down/up-sampling layers.
    pub resample: Resample,
    /// What the network sees as time; `None` (configurations written before
    /// it was recorded) means the paper's choice for the SDE
    /// ([`Conditioning::paper_default`](crate::Conditioning::paper_default)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_input: Option<crate::TimeInput>,
    /// How the output becomes the score; `None` as for `time_input`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<crate::OutputScale>,
}

impl Default for UnetConfig {
    fn default() -> Self {
        UnetConfig {
            in_channels: 1,
            base_channels: 32,
            channel_mult: vec![1, 2, 2],
            num_res_blocks: 2,
            attn_resolutions: vec![7],
            dropout: 0.1,
            skip_rescale: true,
            embedding: Embedding::Positional,
            fourier_scale: 16.0,
            resample: Resample::Conv,
            time_input: None,
            output: None,
        }
    }
}

impl UnetConfig {
    /// Checks the configuration.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &'static str, value: String, reason: &str| {
            Err(NetError::Config {
                field,
                value,
                reason: reason.to_string(),
            })
        };
        if self.in_channels == 0 {
            return bad("in_channels", "0".into(), "must be > 0");
        }
        if self.base_channels < 4 || self.base_channels % 4 != 0 {
            return bad(
                "base_channels",
                self.base_channels.to_string(),
                "must be a positive multiple of 4",
            );
        }
        if self.channel_mult.is_empty() || self.channel_mult.contains(&0) {
            return bad(
                "channel_mult",
                format!("{:?}", self.channel_mult),
                "needs at least one level, all > 0",
            );
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad("dropout", self.dropout.to_string(), "must lie in [0, 1)");
        }
        Ok(())
    }

    /// The conditioning for an SDE of family `kind`: the recorded fields,
    /// else the paper's default for the family.
    pub fn conditioning(&self, kind: sde_core::SdeKind) -> crate::Conditioning {
        let d = crate::Conditioning::paper_default(kind, self.embedding);
        crate::Conditioning {
            time_input: self.time_input.unwrap_or(d.time_input),
            output: self.output.unwrap_or(d.output),
        }
    }

    /// The same configuration with its conditioning recorded for `kind`
    /// (fields already set are kept).
    pub fn with_conditioning_for(&self, kind: sde_core::SdeKind) -> Self {
        let c = self.conditioning(kind);
        UnetConfig {
            time_input: Some(c.time_input),
            output: Some(c.output),
            ..self.clone()
        }
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Checks that an image `[N, C, H, W]` fits: `C = in_channels` and `H`, `W`
    /// divisible by `2^(levels - 1)`.
    pub fn check_input(&self, shape: &Shape) -> Result<()> {
        let d = shape.dims();
        let f = 1usize << (self.levels() - 1);
        if d.len() != 4 || d[1] != self.in_channels || d[2] % f != 0 || d[3] % f != 0 {
            return Err(NetError::Shape {
                op: "unet",
                reason: format!(
                    "input {shape} must be [N, {}, H, W] with H and W divisible by {f}",
                    self.in_channels
                ),
            });
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum DownItem {
    Res(Box<ResAttn>),
    Down(Option<Conv>),
}

#[derive(Clone, Debug)]
enum UpItem {
    Res(Box<ResAttn>),
    Up(Option<Conv>),
}

#[derive(Clone, Debug)]
enum ItemCache<T> {
    /// Block cache, skip index, skip channels (the last two on the up path only).
    Res(Box<ResAttnCache<T>>, usize, usize),
    Resample(T),
}

/// Everything the backward pass needs from a forward pass.
#[derive(Clone, Debug)]
pub struct UnetCache<T> {
    tcache: TimeEmbedCache<T>,
    temb: T,
    x: T,
    down: Vec<ItemCache<T>>,
    mid: Box<(ResBlockCache<T>, AttnCache<T>, ResBlockCache<T>)>,
    up: Vec<ItemCache<T>>,
    n_skips: usize,
    out_in: T,
    out_s: T,
}

/// The UNet: layer structure plus parameter views (the parameters themselves
/// live in a [`crate::ParamStore`]).
#[derive(Clone, Debug)]
pub struct Unet {
    cfg: UnetConfig,
    temb: TimeEmbed,
    conv_in: Conv,
    down: Vec<DownItem>,
    mid: (ResBlock, AttnBlock, ResBlock),
    up: Vec<UpItem>,
    gn_out: GroupNorm,
    conv_out: Conv,
    image_size: usize,
    seed: u64,
}

impl Unet {
    /// Builds the layer structure and declares its parameters in `pb`;
    /// `image_size` (height) decides where attention goes.
    pub fn new(
        cfg: &UnetConfig,
        image_size: usize,
        pb: &mut ParamBuilder,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        let nf = cfg.base_channels;
        let (drop, sr) = (cfg.dropout, cfg.skip_rescale);
        let temb = TimeEmbed::new(pb, cfg.embedding, nf, cfg.fourier_scale, seed)?;
        let temb_dim = temb.dim();
        let conv_in = Conv::new(pb, "conv_in", cfg.in_channels, nf, 3, 1, 1.0)?;
        let attn_at = |res: usize| cfg.attn_resolutions.contains(&res);
        let mut down = Vec::new();
        let mut chans = vec![nf];
        let mut c = nf;
        let mut res = image_size;
        for (lvl, mult) in cfg.channel_mult.iter().enumerate() {
            let cout = nf * mult;
            for r in 0..cfg.num_res_blocks {
                let name = format!("down.{lvl}.{r}");
                let unit = ResAttn::new(pb, &name, c, cout, attn_at(res), temb_dim, drop, sr)?;
                down.push(DownItem::Res(Box::new(unit)));
                c = cout;
                chans.push(c);
            }
            if lvl + 1 < cfg.levels() {
                let conv = match cfg.resample {
                    Resample::Conv => Some(Conv::new(
                        pb,
                        &format!("down.{lvl}.resample"),
                        c,
                        c,
                        3,
                        2,
                        1.0,
                    )?),
                    Resample::Pool => None,
                };
                down.push(DownItem::Down(conv));
                chans.push(c);
                res /= 2;
            }
        }
        let mid = (
            ResBlock::new(pb, "mid.0", c, c, temb_dim, drop, sr)?,
            AttnBlock::new(pb, "mid.attn", c, sr)?,
            ResBlock::new(pb, "mid.1", c, c, temb_dim, drop, sr)?,
        );
        let mut up = Vec::new();
        for (lvl, mult) in cfg.channel_mult.iter().enumerate().rev() {
            let cout = nf * mult;
            for r in 0..=cfg.num_res_blocks {
                let skip_c = chans.pop().ok_or_else(|| NetError::Config {
                    field: "channel_mult",
                    value: format!("{:?}", cfg.channel_mult),
                    reason: "internal: skip stack exhausted".into(),
                })?;
                let name = format!("up.{lvl}.{r}");
                let unit = ResAttn::new(
                    pb,
                    &name,
                    c + skip_c,
                    cout,
                    attn_at(res),
                    temb_dim,
                    drop,
                    sr,
                )?;
                up.push(UpItem::Res(Box::new(unit)));
                c = cout;
            }
            if lvl > 0 {
                let conv = match cfg.resample {
                    Resample::Conv => Some(Conv::new(
                        pb,
                        &format!("up.{lvl}.resample"),
                        c,
                        c,
                        3,
                        1,
                        1.0,
                    )?),
                    Resample::Pool => None,
                };
                up.push(UpItem::Up(conv));
                res *= 2;
            }
        }
        let gn_out = GroupNorm::new(pb, "out.gn", c)?;
        let conv_out = Conv::new(pb, "out.conv", c, cfg.in_channels, 3, 1, 1e-10)?;
        Ok(Unet {
            cfg: cfg.clone(),
            temb,
            conv_in,
            down,
            mid,
            up,
            gn_out,
            conv_out,
            image_size,
            seed,
        })
    }

    /// The image height the network was built for (it decides where attention goes).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// The seed of the fixed Fourier frequencies (and of the initialisation).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The configuration.
    pub fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    /// Forward pass on `x [N, C, H, W]` with the per-sample network time input
    /// (see [`crate::UnetScore`]); `dropout_key` enables dropout (training).
    /// Returns the output and the cache for [`Unet::backward`].
    pub fn forward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        dropout_key: Option<NoiseKey>,
    ) -> Result<(B::Tensor, UnetCache<B::Tensor>)> {
        self.forward_with(b, p, x, time_input, dropout_key, KeepAll)
    }

    /// The output of [`Unet::forward`] without dropout, bit for bit, with no
    /// cache: every activation is dropped as soon as the forward pass is done
    /// with it (only the skip connections the up path still needs stay
    /// alive), so memory peaks at a fraction of the cached forward's. For
    /// sampling and anything else that needs no gradient.
    pub fn forward_inference<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
    ) -> Result<B::Tensor> {
        Ok(self.forward_with(b, p, x, time_input, None, KeepNone)?.0)
    }

    /// The forward pass with the cache policy `keep` (see [`crate::layers`]).
    fn forward_with<B: NetBackend, K: Keep<B::Tensor>>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        dropout_key: Option<NoiseKey>,
        keep: K,
    ) -> Result<(B::Tensor, UnetCache<K::Kept>)> {
        let shape = b.shape(x).clone();
        self.cfg.check_input(&shape)?;
        if time_input.len() != shape.batch() {
            return Err(NetError::Shape {
                op: "unet",
                reason: format!(
                    "{} time inputs for a batch of {}",
                    time_input.len(),
                    shape.batch()
                ),
            });
        }
        let (temb, tcache) = self.temb.forward(b, p, time_input)?;
        let tcache = tcache.map(|t| keep.keep(t));
        // Each block gets its own dropout stream.
        let mut block = 0u64;
        let mut next_key = || {
            block += 1;
            dropout_key
                .map(|k| NoiseKey::new(k.seed, k.stream.wrapping_mul(1024).wrapping_add(block)))
        };
        let mut h = self.conv_in.forward(b, p, x)?;
        // The skip connections: the input of the first item and each down-path
        // item's output (handles shared with `h`, not copies).
        let mut hs = vec![h.clone()];
        let mut down = Vec::with_capacity(self.down.len());
        for item in &self.down {
            match item {
                DownItem::Res(unit) => {
                    let (y, uc) = unit.forward_with(b, p, &h, &temb, next_key(), keep)?;
                    down.push(ItemCache::Res(Box::new(uc), 0, 0));
                    h = y;
                }
                DownItem::Down(conv) => {
                    let y = match conv {
                        Some(c) => c.forward(b, p, &h)?,
                        None => b.avg_pool2x(&h)?,
                    };
                    let x_in = std::mem::replace(&mut h, y);
                    down.push(ItemCache::Resample(keep.keep(x_in)));
                }
            }
            hs.push(h.clone());
        }
        let n_skips = hs.len();
        let (y, m0) = self.mid.0.forward_with(b, p, &h, &temb, next_key(), keep)?;
        let (y, ma) = self.mid.1.forward_with(b, p, &y, keep)?;
        let (y, m1) = self.mid.2.forward_with(b, p, &y, &temb, next_key(), keep)?;
        h = y;
        let mut up = Vec::with_capacity(self.up.len());
        for item in &self.up {
            match item {
                UpItem::Res(unit) => {
                    let idx = hs.len() - 1;
                    let skip = hs.pop().ok_or_else(|| NetError::Shape {
                        op: "unet",
                        reason: "internal: skip stack exhausted".into(),
                    })?;
                    let skip_c = b.shape(&skip).dims()[1];
                    let cat = b.concat_channels(&h, &skip)?;
                    // Neither is needed again (the concatenation is a copy).
                    drop((h, skip));
                    let (y, uc) = unit.forward_with(b, p, &cat, &temb, next_key(), keep)?;
                    up.push(ItemCache::Res(Box::new(uc), idx, skip_c));
                    h = y;
                }
                UpItem::Up(conv) => {
                    let u = b.upsample_nearest2x(&h)?;
                    drop(h);
                    let y = match conv {
                        Some(c) => c.forward(b, p, &u)?,
                        None => u.clone(),
                    };
                    up.push(ItemCache::Resample(keep.keep(u)));
                    h = y;
                }
            }
        }
        let out_s = self.gn_out.forward_silu(b, p, &h)?;
        let out_in = keep.keep(h);
        let out = self.conv_out.forward(b, p, &out_s)?;
        Ok((
            out,
            UnetCache {
                tcache,
                temb: keep.keep(temb),
                x: keep.keep_ref(x),
                down,
                mid: Box::new((m0, ma, m1)),
                up,
                n_skips,
                out_in,
                out_s: keep.keep(out_s),
            },
        ))
    }

    /// Backward pass: accumulates parameter gradients into `g` and returns
    /// the gradient with respect to the input image.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        c: &UnetCache<B::Tensor>,
        dy: &B::Tensor,
        g: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        let ds = self.conv_out.backward_dx(b, p, &c.out_s, dy, g)?;
        let mut dh = self.gn_out.backward_silu(b, p, &c.out_in, &ds, g)?;
        let mut dtemb = b.zeros(b.shape(&c.temb))?;
        let mut dskips: Vec<Option<B::Tensor>> = vec![None; c.n_skips];
        for (item, cache) in self.up.iter().zip(&c.up).rev() {
            match (item, cache) {
                (UpItem::Res(unit), ItemCache::Res(uc, idx, skip_c)) => {
                    let (dcat, dt) = unit.backward(b, p, uc, &c.temb, &dh, g)?;
                    dtemb = b.add(&dtemb, &dt)?;
                    let ch = b.shape(&dcat).dims()[1] - skip_c;
                    let (dprev, dskip) = b.split_channels(&dcat, ch)?;
                    dskips[*idx] = Some(dskip);
                    dh = dprev;
                }
                (UpItem::Up(conv), ItemCache::Resample(u)) => {
                    let du = match conv {
                        Some(cv) => cv.backward_dx(b, p, u, &dh, g)?,
                        None => dh,
                    };
                    dh = b.upsample_nearest2x_backward(&du)?;
                }
                _ => return Err(mismatch()),
            }
        }
        let (m0, ma, m1) = &*c.mid;
        let (d, dt) = self.mid.2.backward(b, p, m1, &c.temb, &dh, g)?;
        dtemb = b.add(&dtemb, &dt)?;
        let d = self.mid.1.backward(b, p, ma, &d, g)?;
        let (d, dt) = self.mid.0.backward(b, p, m0, &c.temb, &d, g)?;
        dtemb = b.add(&dtemb, &dt)?;
        dh = d;
        // Down path: the output of item j is skip j + 1.
        for (j, (item, cache)) in self.down.iter().zip(&c.down).enumerate().rev() {
            if let Some(ds) = dskips[j + 1].take() {
                dh = b.add(&dh, &ds)?;
            }
            match (item, cache) {
                (DownItem::Res(unit), ItemCache::Res(uc, _, _)) => {
                    let (dx, dt) = unit.backward(b, p, uc, &c.temb, &dh, g)?;
                    dtemb = b.add(&dtemb, &dt)?;
                    dh = dx;
                }
                (DownItem::Down(conv), ItemCache::Resample(x_in)) => {
                    dh = match conv {
                        Some(cv) => cv.backward_dx(b, p, x_in, &dh, g)?,
                        None => b.avg_pool2x_backward(&dh)?,
                    };
                }
                _ => return Err(mismatch()),
            }
        }
        if let Some(ds) = dskips[0].take() {
            dh = b.add(&dh, &ds)?;
        }
        let dx = self.conv_in.backward_dx(b, p, &c.x, &dh, g)?;
        // Time-embedding MLP (parameter gradients only).
        self.temb.backward(b, p, &c.tcache, &dtemb, g)?;
        Ok(dx)
    }
}

fn mismatch() -> NetError {
    NetError::Shape {
        op: "unet backward",
        reason: "cache does not match the network".into(),
    }
}

impl Network for Unet {
    type Config = UnetConfig;
    type Cache<T: Clone + std::fmt::Debug> = UnetCache<T>;
    const FORMAT: &'static str = FORMAT;
    const DESCRIPTION: &'static str = "score UNet";

    fn build(
        cfg: &UnetConfig,
        image_size: usize,
        pb: &mut ParamBuilder,
        seed: u64,
    ) -> Result<Self> {
        Unet::new(cfg, image_size, pb, seed)
    }

    fn config(&self) -> &UnetConfig {
        &self.cfg
    }

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn seed(&self) -> u64 {
        self.seed
    }

    fn forward<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        dropout_key: Option<NoiseKey>,
    ) -> Result<(B::Tensor, UnetCache<B::Tensor>)> {
        Unet::forward(self, b, params, x, time_input, dropout_key)
    }

    fn forward_inference<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
    ) -> Result<B::Tensor> {
        Unet::forward_inference(self, b, params, x, time_input)
    }

    fn backward<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        cache: &UnetCache<B::Tensor>,
        dy: &B::Tensor,
        grads: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        Unet::backward(self, b, params, cache, dy, grads)
    }
}
