//! A noise-conditional (time-dependent) classifier `p_t(y | x(t))` for
//! class-conditional sampling (Song et al. 2021, section 5 and appendix I):
//! the conditional score is `s(x, t) + grad_x log p_t(y | x(t))`, so the input
//! gradient of the log-probability matters as much as the parameter gradients
//! that train it (cross-entropy on perturbed data at random times).
//!
//! The paper's CIFAR-10 classifier (appendix I) is a time-conditioned Wide
//! ResNet; this one reuses the score network's encoder (see [`crate::unet`])
//! so both share their layers and time embedding: an input convolution,
//! `num_res_blocks` residual blocks per level (self-attention at chosen
//! resolutions) with the time embedding projected into each
//! ([`crate::time_embed`]), down-sampling between levels, then
//! GroupNorm–SiLU, global average pooling over the pixels and a linear head
//! to `num_classes` logits.
//!
//! The log-softmax helpers ([`log_softmax`], [`cross_entropy_grad`],
//! [`Classifier::log_prob_and_input_grad`]) work on the host in `f64` with
//! log-sum-exp: the logits are tiny (`[N, K]`) and must not overflow.

use sde_core::{Coef, NoiseKey, Sde, Shape};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::layers::{Conv, GroupNorm, Keep, KeepAll, KeepNone, Linear, ResAttn, ResAttnCache};
use crate::params::ParamBuilder;
use crate::time_embed::{TimeEmbed, TimeEmbedCache, TimeInput};
use crate::unet::{Embedding, Resample, UnetConfig};
use crate::{NetBackend, Result};

/// Classifier hyper-parameters: the encoder fields mean what they mean in
/// [`UnetConfig`] (same defaults), plus the number of classes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// Image channels (1 grey, 3 RGB).
    pub in_channels: usize,
    /// Channels of the first level (`nf`).
    pub base_channels: usize,
    /// Channel multiplier per level; the number of levels is its length.
    pub channel_mult: Vec<usize>,
    /// Residual blocks per level.
    pub num_res_blocks: usize,
    /// Spatial sizes (height) at which self-attention follows each residual block.
    pub attn_resolutions: Vec<usize>,
    /// Dropout probability inside residual blocks.
    pub dropout: f32,
    /// Divide residual sums by sqrt(2).
    pub skip_rescale: bool,
    /// Time embedding.
    pub embedding: Embedding,
    /// Standard deviation of the Fourier frequencies.
    pub fourier_scale: f32,
    /// Down-sampling layers.
    pub resample: Resample,
    /// Number of classes `K` (at least 2).
    pub num_classes: usize,
    /// What the network sees as time; `None` means the paper's choice for
    /// the SDE (as [`UnetConfig::time_input`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time_input: Option<TimeInput>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        let u = UnetConfig::default();
        ClassifierConfig {
            in_channels: u.in_channels,
            base_channels: u.base_channels,
            channel_mult: u.channel_mult,
            num_res_blocks: u.num_res_blocks,
            attn_resolutions: u.attn_resolutions,
            dropout: u.dropout,
            skip_rescale: u.skip_rescale,
            embedding: u.embedding,
            fourier_scale: u.fourier_scale,
            resample: u.resample,
            num_classes: 10,
            time_input: None,
        }
    }
}

impl ClassifierConfig {
    /// The encoder fields as a [`UnetConfig`] (the UNet whose down path this
    /// classifier shares).
    pub fn backbone(&self) -> UnetConfig {
        UnetConfig {
            in_channels: self.in_channels,
            base_channels: self.base_channels,
            channel_mult: self.channel_mult.clone(),
            num_res_blocks: self.num_res_blocks,
            attn_resolutions: self.attn_resolutions.clone(),
            dropout: self.dropout,
            skip_rescale: self.skip_rescale,
            embedding: self.embedding,
            fourier_scale: self.fourier_scale,
            resample: self.resample,
            time_input: self.time_input,
            output: None,
        }
    }

    /// Checks the configuration: the encoder as [`UnetConfig::validate`]
    /// does, and at least two classes.
    pub fn validate(&self) -> Result<()> {
        self.backbone().validate()?;
        if self.num_classes < 2 || u32::try_from(self.num_classes).is_err() {
            return Err(NetError::Config {
                field: "num_classes",
                value: self.num_classes.to_string(),
                reason: "must lie in [2, 2^32)".into(),
            });
        }
        Ok(())
    }

    /// Number of resolution levels.
    pub fn levels(&self) -> usize {
        self.channel_mult.len()
    }

    /// Checks that an image `[N, C, H, W]` fits: `C = in_channels` and `H`, `W`
    /// divisible by `2^(levels - 1)`.
    pub fn check_input(&self, shape: &Shape) -> Result<()> {
        let d = shape.dims();
        let f = 1usize << self.levels().saturating_sub(1).min(63);
        if d.len() != 4 || d[1] != self.in_channels || d[2] % f != 0 || d[3] % f != 0 {
            return Err(NetError::Shape {
                op: "classifier",
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
enum DownCache<T> {
    Res(Box<ResAttnCache<T>>),
    /// The resampling layer's input.
    Resample(T),
}

/// Everything [`Classifier::backward`] needs from a forward pass.
#[derive(Clone, Debug)]
pub struct ClassifierCache<T> {
    tcache: TimeEmbedCache<T>,
    temb: T,
    x: T,
    down: Vec<DownCache<T>>,
    /// Input of the output GroupNorm–SiLU.
    out_in: T,
    /// The pooled features `[N, C]` (the head's input).
    pooled: T,
    /// Shape of the pooled image `[N, C, H, W]`.
    pool_shape: Shape,
}

impl<T> ClassifierCache<T> {
    /// The pooled features `[N, C]` the head classifies (the feature space of
    /// the sample-quality metric `scoresde frechet --classifier`).
    pub fn pooled(&self) -> &T {
        &self.pooled
    }
}

/// The noise-conditional classifier: layer structure plus parameter views
/// (the parameters live in a [`crate::ParamStore`]). Parameter names:
/// `temb.{0,1}`, `conv_in`, `down.{level}.{block}` (with `.attn` where
/// attention is), `down.{level}.resample`, `out.gn`, `head`.
#[derive(Clone, Debug)]
pub struct Classifier {
    cfg: ClassifierConfig,
    temb: TimeEmbed,
    conv_in: Conv,
    down: Vec<DownItem>,
    gn_out: GroupNorm,
    head: Linear,
    image_size: usize,
    seed: u64,
}

impl Classifier {
    /// Builds the layer structure and declares its parameters in `pb`;
    /// `image_size` (height) decides where attention goes and must be a
    /// positive multiple of `2^(levels - 1)`.
    pub fn new(
        cfg: &ClassifierConfig,
        image_size: usize,
        pb: &mut ParamBuilder,
        seed: u64,
    ) -> Result<Self> {
        cfg.validate()?;
        let f = 1usize << (cfg.levels() - 1).min(63);
        if image_size == 0 || image_size % f != 0 {
            return Err(NetError::Config {
                field: "image_size",
                value: image_size.to_string(),
                reason: format!("must be a positive multiple of {f} (2^(levels - 1))"),
            });
        }
        let nf = cfg.base_channels;
        let (drop, sr) = (cfg.dropout, cfg.skip_rescale);
        let temb = TimeEmbed::new(pb, cfg.embedding, nf, cfg.fourier_scale, seed)?;
        let temb_dim = temb.dim();
        let conv_in = Conv::new(pb, "conv_in", cfg.in_channels, nf, 3, 1, 1.0)?;
        let mut down = Vec::new();
        let mut c = nf;
        let mut res = image_size;
        for (lvl, mult) in cfg.channel_mult.iter().enumerate() {
            let cout = nf * mult;
            for r in 0..cfg.num_res_blocks {
                let name = format!("down.{lvl}.{r}");
                let attn = cfg.attn_resolutions.contains(&res);
                let unit = ResAttn::new(pb, &name, c, cout, attn, temb_dim, drop, sr)?;
                down.push(DownItem::Res(Box::new(unit)));
                c = cout;
            }
            if lvl + 1 < cfg.levels() {
                let conv = match cfg.resample {
                    Resample::Conv => {
                        let name = format!("down.{lvl}.resample");
                        Some(Conv::new(pb, &name, c, c, 3, 2, 1.0)?)
                    }
                    Resample::Pool => None,
                };
                down.push(DownItem::Down(conv));
                res /= 2;
            }
        }
        let gn_out = GroupNorm::new(pb, "out.gn", c)?;
        let head = Linear::new(pb, "head", c, cfg.num_classes, 1.0)?;
        Ok(Classifier {
            cfg: cfg.clone(),
            temb,
            conv_in,
            down,
            gn_out,
            head,
            image_size,
            seed,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ClassifierConfig {
        &self.cfg
    }

    /// The image height the network was built for (it decides where attention goes).
    pub fn image_size(&self) -> usize {
        self.image_size
    }

    /// The seed of the fixed Fourier frequencies (and of the initialisation).
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The number of classes `K`.
    pub fn num_classes(&self) -> usize {
        self.cfg.num_classes
    }

    /// The network's time input for SDE times `t`: the configured
    /// [`TimeInput`], else the paper's for the SDE's family.
    pub fn time_input<S: Sde + ?Sized>(&self, sde: &S, t: &[f64]) -> Vec<f64> {
        self.cfg
            .backbone()
            .conditioning(sde.kind())
            .time_input
            .of(sde, t)
    }

    /// Checks `x` and one time input per sample; returns the batch size.
    fn check_batch(&self, shape: &Shape, time_input: &[f64]) -> Result<usize> {
        self.cfg.check_input(shape)?;
        if time_input.len() != shape.batch() {
            return Err(NetError::Shape {
                op: "classifier",
                reason: format!(
                    "{} time inputs for a batch of {}",
                    time_input.len(),
                    shape.batch()
                ),
            });
        }
        Ok(shape.batch())
    }

    /// Forward pass on `x [N, C, H, W]` with the per-sample network time
    /// input ([`Classifier::time_input`]); `dropout_key` enables dropout
    /// (training). Returns the logits `[N, K]` and the cache for
    /// [`Classifier::backward`].
    pub fn forward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        dropout_key: Option<NoiseKey>,
    ) -> Result<(B::Tensor, ClassifierCache<B::Tensor>)> {
        self.forward_with(b, p, x, time_input, dropout_key, KeepAll)
    }

    /// The logits of [`Classifier::forward`] without dropout, bit for bit,
    /// with no cache: each activation is dropped as soon as the forward pass
    /// is done with it. For predictions and evaluation (no gradient).
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
    ) -> Result<(B::Tensor, ClassifierCache<K::Kept>)> {
        self.check_batch(b.shape(x), time_input)?;
        let (temb, tcache) = self.temb.forward(b, p, time_input)?;
        let tcache = tcache.map(|t| keep.keep(t));
        // Each block gets its own dropout stream (as in the UNet).
        let mut block = 0u64;
        let mut next_key = || {
            block += 1;
            dropout_key
                .map(|k| NoiseKey::new(k.seed, k.stream.wrapping_mul(1024).wrapping_add(block)))
        };
        let mut h = self.conv_in.forward(b, p, x)?;
        let mut down = Vec::with_capacity(self.down.len());
        for item in &self.down {
            match item {
                DownItem::Res(unit) => {
                    let (y, uc) = unit.forward_with(b, p, &h, &temb, next_key(), keep)?;
                    down.push(DownCache::Res(Box::new(uc)));
                    h = y;
                }
                DownItem::Down(conv) => {
                    let y = match conv {
                        Some(c) => c.forward(b, p, &h)?,
                        None => b.avg_pool2x(&h)?,
                    };
                    let x_in = std::mem::replace(&mut h, y);
                    down.push(DownCache::Resample(keep.keep(x_in)));
                }
            }
        }
        let out_s = self.gn_out.forward_silu(b, p, &h)?;
        let out_in = keep.keep(h);
        let pool_shape = b.shape(&out_s).clone();
        let sum = b.sum_spatial(&out_s)?;
        drop(out_s);
        let pooled = b.scale(&sum, Coef::Scalar(inv_pixels(&pool_shape)))?;
        let logits = self.head.forward(b, p, &pooled)?;
        Ok((
            logits,
            ClassifierCache {
                tcache,
                temb: keep.keep(temb),
                x: keep.keep_ref(x),
                down,
                out_in,
                pooled: keep.keep(pooled),
                pool_shape,
            },
        ))
    }

    /// Backward pass from `dlogits [N, K]` (the gradient of a loss with
    /// respect to the logits): accumulates parameter gradients into `grads`
    /// and returns the gradient with respect to the input image.
    pub fn backward<B: NetBackend>(
        &self,
        b: &B,
        p: &B::Tensor,
        c: &ClassifierCache<B::Tensor>,
        dlogits: &B::Tensor,
        grads: &mut B::Tensor,
    ) -> Result<B::Tensor> {
        let n = c.pool_shape.batch();
        let got = b.shape(dlogits).dims();
        if got != [n, self.cfg.num_classes] {
            return Err(NetError::Shape {
                op: "classifier backward",
                reason: format!(
                    "dlogits {} must be [{n}, {}]",
                    b.shape(dlogits),
                    self.cfg.num_classes
                ),
            });
        }
        if c.down.len() != self.down.len() {
            return Err(mismatch());
        }
        let g = grads;
        let dpooled = self.head.backward(b, p, &c.pooled, dlogits, g)?;
        // Average pooling's backward spreads dpooled / (H W) over the pixels.
        let dmean = b.scale(&dpooled, Coef::Scalar(inv_pixels(&c.pool_shape)))?;
        let ds = b.add_channel_bias(&b.zeros(&c.pool_shape)?, &dmean)?;
        let mut dh = self.gn_out.backward_silu(b, p, &c.out_in, &ds, g)?;
        let mut dtemb = b.zeros(b.shape(&c.temb))?;
        for (item, cache) in self.down.iter().zip(&c.down).rev() {
            match (item, cache) {
                (DownItem::Res(unit), DownCache::Res(uc)) => {
                    let (dx, dt) = unit.backward(b, p, uc, &c.temb, &dh, g)?;
                    dtemb = b.add(&dtemb, &dt)?;
                    dh = dx;
                }
                (DownItem::Down(conv), DownCache::Resample(x_in)) => {
                    dh = match conv {
                        Some(cv) => cv.backward_dx(b, p, x_in, &dh, g)?,
                        None => b.avg_pool2x_backward(&dh)?,
                    };
                }
                _ => return Err(mismatch()),
            }
        }
        let dx = self.conv_in.backward_dx(b, p, &c.x, &dh, g)?;
        self.temb.backward(b, p, &c.tcache, &dtemb, g)?;
        Ok(dx)
    }

    /// `log p(y_n | x_n)` for each sample and its input gradient
    /// `grad_x log p(y_n | x_n)` (the guidance term of Song et al. 2021,
    /// section 5), without dropout. Runs the forward pass, takes
    /// `dlogits = onehot(y) - softmax(logits)` on the host and the backward
    /// pass into a scratch gradient buffer (the parameter gradients are
    /// discarded).
    pub fn log_prob_and_input_grad<B: NetBackend>(
        &self,
        b: &B,
        params: &B::Tensor,
        x: &B::Tensor,
        time_input: &[f64],
        labels: &[u32],
    ) -> Result<(Vec<f64>, B::Tensor)> {
        let n = self.check_batch(b.shape(x), time_input)?;
        let k = self.cfg.num_classes;
        check_labels(labels, n, k)?;
        let (logits, cache) = self.forward(b, params, x, time_input, None)?;
        let lsm = log_softmax(&b.to_vec(&logits)?, k)?;
        let mut dl = vec![0.0f32; n * k];
        let mut logp = Vec::with_capacity(n);
        for (&y, (row, drow)) in labels
            .iter()
            .zip(lsm.chunks_exact(k).zip(dl.chunks_exact_mut(k)))
        {
            for (j, (&l, d)) in row.iter().zip(drow.iter_mut()).enumerate() {
                let onehot = if j == y as usize { 1.0 } else { 0.0 };
                *d = (onehot - l.exp()) as f32;
            }
            logp.push(row[y as usize]);
        }
        let dlogits = b.tensor(dl, &Shape::new([n, k])?)?;
        let mut scratch = b.zeros(b.shape(params))?;
        let dx = self.backward(b, params, &cache, &dlogits, &mut scratch)?;
        Ok((logp, dx))
    }
}

/// `1 / (H W)` for an image shape `[N, C, H, W]`.
fn inv_pixels(shape: &Shape) -> f32 {
    let d = shape.dims();
    let hw = d.get(2).copied().unwrap_or(1) * d.get(3).copied().unwrap_or(1);
    (1.0 / hw.max(1) as f64) as f32
}

fn mismatch() -> NetError {
    NetError::Shape {
        op: "classifier backward",
        reason: "cache does not match the network".into(),
    }
}

/// Checks one label per sample, each in `0..k`.
fn check_labels(labels: &[u32], n: usize, k: usize) -> Result<()> {
    if labels.len() != n {
        return Err(NetError::Shape {
            op: "classifier labels",
            reason: format!("{} labels for a batch of {n}", labels.len()),
        });
    }
    match labels.iter().position(|&y| y as usize >= k) {
        Some(index) => Err(NetError::Label {
            index,
            label: labels[index],
            num_classes: k,
        }),
        None => Ok(()),
    }
}

/// Row-wise log-softmax of `logits [N, k]` (row-major) in `f64` with
/// log-sum-exp (`x_j - max - ln sum_i exp(x_i - max)`), so huge logits
/// neither overflow nor lose the winning class. Errors on `k = 0`, a length
/// that is not a multiple of `k`, or a non-finite logit.
pub fn log_softmax(logits: &[f32], k: usize) -> Result<Vec<f64>> {
    if k == 0 || logits.len() % k != 0 {
        return Err(NetError::Shape {
            op: "log_softmax",
            reason: format!("{} logits do not form rows of {k}", logits.len()),
        });
    }
    if let Some(index) = logits.iter().position(|v| !v.is_finite()) {
        return Err(sde_core::Error::NonFinite {
            what: "logits".into(),
            index,
            value: f64::from(logits[index]),
        }
        .into());
    }
    let mut out = Vec::with_capacity(logits.len());
    for row in logits.chunks_exact(k) {
        let m = row
            .iter()
            .fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v)));
        let sum: f64 = row.iter().map(|&v| (f64::from(v) - m).exp()).sum();
        let lse = m + sum.ln();
        out.extend(row.iter().map(|&v| f64::from(v) - lse));
    }
    Ok(out)
}

/// Cross-entropy of `logits [N, k]` against `labels` (one per row): the
/// per-sample losses `-log p(y_n | x_n)` and the gradient of their batch
/// mean with respect to the logits, `(softmax - onehot(y)) / N`, as `f32`
/// ready to upload as `dlogits` for [`Classifier::backward`].
pub fn cross_entropy_grad(
    logits: &[f32],
    labels: &[u32],
    k: usize,
) -> Result<(Vec<f64>, Vec<f32>)> {
    let lsm = log_softmax(logits, k)?;
    let n = lsm.len() / k;
    check_labels(labels, n, k)?;
    let mut loss = Vec::with_capacity(n);
    let mut grad = vec![0.0f32; lsm.len()];
    let inv_n = 1.0 / n.max(1) as f64;
    for (&y, (row, grow)) in labels
        .iter()
        .zip(lsm.chunks_exact(k).zip(grad.chunks_exact_mut(k)))
    {
        for (j, (&l, g)) in row.iter().zip(grow.iter_mut()).enumerate() {
            let onehot = if j == y as usize { 1.0 } else { 0.0 };
            *g = ((l.exp() - onehot) * inv_n) as f32;
        }
        loss.push(-row[y as usize]);
    }
    Ok((loss, grad))
}
