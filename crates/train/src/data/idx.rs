//! The `fashion-mnist` data set (Xiao, Rasul and Vollgraf, 2017; MIT) from the
//! Debian package `dataset-fashion-mnist`, and a reader for the IDX format it
//! (like MNIST) is stored in.
//!
//! IDX: a big-endian magic `0x00 0x00 T D` (`T = 0x08` for unsigned bytes, the
//! only element type used by these sets; `D` the number of dimensions), `D`
//! big-endian `u32` sizes, then the elements in row-major order. Files may be
//! gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{grid_value, require_dir, DataError, DataResult, ImageSet};

/// Where the Debian package `dataset-fashion-mnist` installs the files.
pub(crate) const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

const FASHION_HINT: &str = "install it with `sudo apt-get install dataset-fashion-mnist` \
     (Debian/Ubuntu), or set the data `path` to a folder holding \
     train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, \
     t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz";

/// A parsed IDX file of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// The sizes of the dimensions.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Parses an IDX file of unsigned bytes (gzip-compressed or not); `path`
/// names the source in errors, which are [`DataError::Corrupt`] for a wrong
/// magic number, an unsupported element type, or a length that does not match
/// the dimensions.
pub fn parse_idx(bytes: &[u8], path: &Path) -> DataResult<IdxArray> {
    let raw;
    let bytes = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| DataError::corrupt(path, format!("gzip: {e}")))?;
        raw = out;
        &raw[..]
    } else {
        bytes
    };
    if bytes.len() < 4 {
        return Err(DataError::corrupt(path, "shorter than an IDX header"));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(DataError::corrupt(
            path,
            format!(
                "bad IDX magic {:02x}{:02x}{:02x}{:02x}",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(DataError::corrupt(
            path,
            format!(
                "IDX element type 0x{:02x}, only 0x08 (u8) is supported",
                bytes[2]
            ),
        ));
    }
    let ndim = usize::from(bytes[3]);
    let header = 4 + 4 * ndim;
    if ndim == 0 || bytes.len() < header {
        return Err(DataError::corrupt(path, "truncated IDX header"));
    }
    let dims: Vec<usize> = bytes[4..header]
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .collect();
    let count = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::corrupt(path, "IDX dimensions overflow"))?;
    let body = &bytes[header..];
    if body.len() != count {
        return Err(DataError::corrupt(
            path,
            format!(
                "IDX dimensions {dims:?} need {count} bytes of data, found {}",
                body.len()
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: body.to_vec(),
    })
}

/// Finds `name.gz` or `name` in `dir`.
fn find(dir: &Path, name: &str) -> DataResult<PathBuf> {
    let gz = dir.join(format!("{name}.gz"));
    let plain = dir.join(name);
    if gz.is_file() {
        Ok(gz)
    } else if plain.is_file() {
        Ok(plain)
    } else {
        Err(DataError::NotFound {
            what: format!("Fashion-MNIST file {name}.gz"),
            path: gz,
            hint: FASHION_HINT.into(),
        })
    }
}

fn read_idx(path: &Path) -> DataResult<IdxArray> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    parse_idx(&bytes, path)
}

/// Loads one split (`prefix` is `train` or `t10k`) of an MNIST-style IDX set.
fn load_split(dir: &Path, prefix: &str, num_classes: u32) -> DataResult<ImageSet> {
    let images_path = find(dir, &format!("{prefix}-images-idx3-ubyte"))?;
    let labels_path = find(dir, &format!("{prefix}-labels-idx1-ubyte"))?;
    let images = read_idx(&images_path)?;
    let labels = read_idx(&labels_path)?;
    let [n, h, w] = images.dims[..] else {
        return Err(DataError::corrupt(
            &images_path,
            format!("expected 3 dimensions (N, H, W), found {:?}", images.dims),
        ));
    };
    if labels.dims != [n] {
        return Err(DataError::corrupt(
            &labels_path,
            format!(
                "expected dimensions [{n}] (one label per image), found {:?}",
                labels.dims
            ),
        ));
    }
    if let Some(&bad) = labels.data.iter().find(|&&l| u32::from(l) >= num_classes) {
        return Err(DataError::corrupt(
            &labels_path,
            format!("label {bad} is not below {num_classes}"),
        ));
    }
    if n == 0 || h == 0 || w == 0 {
        return Err(DataError::corrupt(&images_path, "no images"));
    }
    let lut: Vec<f32> = (0..=255u32).map(|k| grid_value(k, 256)).collect();
    let pixels = images.data.iter().map(|&b| lut[usize::from(b)]).collect();
    ImageSet::new(
        [1, h, w],
        256,
        pixels,
        Some(labels.data.iter().map(|&l| u32::from(l)).collect()),
        Some(num_classes as usize),
    )
}

/// Loads Fashion-MNIST (`train`, `test`) from a folder holding
/// `{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`: 1x28x28, 256 levels,
/// 10 classes.
pub fn load_fashion_mnist(dir: &Path) -> DataResult<(ImageSet, ImageSet)> {
    require_dir(dir, "Fashion-MNIST", FASHION_HINT)?;
    let train = load_split(dir, "train", 10)?;
    let test = load_split(dir, "t10k", 10)?;
    if train.image_shape() != test.image_shape() {
        return Err(DataError::corrupt(
            dir,
            format!(
                "train images are {:?} but test images are {:?}",
                train.image_shape(),
                test.image_shape()
            ),
        ));
    }
    Ok((train, test))
}
