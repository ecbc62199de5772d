//! The `digits` data set: the UCI ML hand-written digits (Alpaydin and Kaynak,
//! 1998; CC BY 4.0) as redistributed by scikit-learn in
//! `sklearn/datasets/data/digits.csv.gz`, embedded in this crate (see
//! `crates/train/data/DIGITS-LICENSE.md`). Each CSV row holds 64 pixel
//! counts in `0..=16` (an 8x8 image, row-major) followed by the label.

use std::io::Read;
use std::path::Path;

use super::{grid_value, DataError, DataResult, ImageSet};

/// The embedded `digits.csv.gz` (1797 rows).
const DIGITS_CSV_GZ: &[u8] = include_bytes!("../../data/digits.csv.gz");

/// Quantisation levels of `digits` (pixel counts `0..=16`).
pub const DIGITS_LEVELS: u32 = 17;

/// The full embedded `digits` set: 1797 images, 1x8x8, 17 levels, 10 classes.
pub fn load_digits() -> DataResult<ImageSet> {
    parse_digits_csv(DIGITS_CSV_GZ, Path::new("<embedded digits.csv.gz>"))
}

/// Parses a `digits.csv` in scikit-learn's layout (gzip-compressed or not):
/// per line 64 values in `0..=16` then a label in `0..=9`. `path` names the
/// source in errors.
pub fn parse_digits_csv(bytes: &[u8], path: &Path) -> DataResult<ImageSet> {
    let text = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut s = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut s)
            .map_err(|e| DataError::corrupt(path, format!("gzip: {e}")))?;
        s
    } else {
        String::from_utf8(bytes.to_vec()).map_err(|_| DataError::corrupt(path, "not UTF-8 text"))?
    };
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let bad =
            |reason: String| DataError::corrupt(path, format!("line {}: {reason}", line_no + 1));
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != 65 {
            return Err(bad(format!("{} fields, expected 65", fields.len())));
        }
        for (j, f) in fields.iter().enumerate() {
            let v: f64 = f
                .trim()
                .parse()
                .map_err(|_| bad(format!("field {} `{f}` is not a number", j + 1)))?;
            let max = if j < 64 { 16.0 } else { 9.0 };
            if !(v.fract() == 0.0 && (0.0..=max).contains(&v)) {
                return Err(bad(format!(
                    "field {} = {v} is not an integer in 0..={max}",
                    j + 1
                )));
            }
            if j < 64 {
                images.push(grid_value(v as u32, DIGITS_LEVELS));
            } else {
                labels.push(v as u32);
            }
        }
    }
    if labels.is_empty() {
        return Err(DataError::corrupt(path, "no rows"));
    }
    ImageSet::new([1, 8, 8], DIGITS_LEVELS, images, Some(labels), Some(10))
}
