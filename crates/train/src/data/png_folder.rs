//! The `png` data set: every `*.png` file directly inside a folder, sorted by
//! file name, unlabelled. Grey images (with or without alpha) give one
//! channel and colour images three; in a folder mixing both, grey images are
//! repeated into three channels. Alpha is composited on white. Values are
//! quantised to 8 bits (256 levels): 16-bit files are reduced to the nearest
//! `k / 255`. All images must have the same height and width
//! ([`DataError::MixedSizes`] otherwise).

use std::path::{Path, PathBuf};

use super::{grid_value, require_dir, DataError, DataResult, ImageSet};
use crate::images::decode_png;

const HINT: &str = "set the data `path` to an existing folder of .png files";

/// The `*.png` files (extension in any case) directly in `dir`, sorted by name.
fn list_pngs(dir: &Path) -> DataResult<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        let is_png = path
            .extension()
            .is_some_and(|x| x.eq_ignore_ascii_case("png"));
        if is_png && path.is_file() {
            files.push(path);
        }
    }
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(files)
}

/// Loads every PNG in `dir` (see the module documentation): `[C, H, W]` of
/// the files, 256 levels, no labels.
pub fn load_png_folder(dir: &Path) -> DataResult<ImageSet> {
    require_dir(dir, "PNG folder", HINT)?;
    let files = list_pngs(dir)?;
    let Some(first) = files.first() else {
        return Err(DataError::NotFound {
            what: "PNG files (*.png)".into(),
            path: dir.to_path_buf(),
            hint: "put .png images, all of one size, in the folder".into(),
        });
    };
    let mut decoded = Vec::with_capacity(files.len());
    let mut size = [0, 0];
    for path in &files {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let raw = decode_png(&bytes, path)?;
        let this = [raw.height, raw.width];
        if decoded.is_empty() {
            size = this;
        } else if this != size {
            return Err(DataError::MixedSizes {
                first: first.clone(),
                first_size: size,
                other: path.clone(),
                other_size: this,
            });
        }
        let values: Vec<f32> = raw
            .planar()
            .iter()
            .map(|&v| grid_value((f64::from(v) * 255.0).round() as u32, 256))
            .collect();
        decoded.push((raw.color_channels(), values));
    }
    let channels = decoded.iter().map(|d| d.0).max().unwrap_or(1);
    let [h, w] = size;
    let mut images = Vec::with_capacity(files.len() * channels * h * w);
    for (c, values) in decoded {
        for _ in 0..channels / c {
            images.extend_from_slice(&values);
        }
    }
    ImageSet::new([channels, h, w], 256, images, None, None)
}
