//! The `emoji` data set: Google's Noto emoji (Apache-2.0) from the npm package
//! `emoji-datasource-google`, cut from the sprite sheet
//! `img/google/sheets-clean/32.png`. The sheet holds 32x32 RGBA images in
//! 34-pixel cells (1 pixel of padding on each side); `emoji.json` gives each
//! emoji's cell (`sheet_x`, `sheet_y`) and whether the Google set has an image
//! for it (`has_img_google`). Only those (the base emoji, not the skin-tone
//! variations) are kept, composited on white: 3x32x32, 256 levels, unlabelled.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{data_dir, grid_value, DataError, DataResult, ImageSet};
use crate::images::decode_png;

/// Side of an emoji image in the sheet.
const SIDE: usize = 32;
/// Side of a sheet cell (the image plus 1 pixel of padding on each side).
const CELL: usize = SIDE + 2;
/// The sheet inside the package.
const SHEET: &str = "img/google/sheets-clean/32.png";

#[derive(Deserialize)]
struct Entry {
    sheet_x: usize,
    sheet_y: usize,
    #[serde(default)]
    has_img_google: bool,
}

fn hint() -> String {
    let d = data_dir().join("emoji-datasource-google");
    format!(
        "fetch it with `cargo xtask fetch-data emoji` (unpacks the npm package \
         `emoji-datasource-google` into {d}), or by hand: `npm pack emoji-datasource-google \
         && mkdir -p {d} && tar xzf emoji-datasource-google-*.tgz -C {d}`; or set the data \
         `path` to the unpacked package folder",
        d = d.display()
    )
}

/// The package folder: `dir` or `dir/package`, whichever holds `emoji.json`.
fn resolve(dir: &Path) -> DataResult<PathBuf> {
    [dir.to_path_buf(), dir.join("package")]
        .into_iter()
        .find(|d| d.join("emoji.json").is_file())
        .ok_or_else(|| DataError::NotFound {
            what: "emoji (npm package `emoji-datasource-google`, emoji.json)".into(),
            path: dir.to_path_buf(),
            hint: hint(),
        })
}

/// Loads the Google emoji from the unpacked `emoji-datasource-google` package
/// folder `dir` (or its parent): 3x32x32 RGB composited on white, 256 levels,
/// no labels, in the order of `emoji.json`.
pub fn load_emoji(dir: &Path) -> DataResult<ImageSet> {
    let dir = resolve(dir)?;
    let json_path = dir.join("emoji.json");
    let json = std::fs::read(&json_path).map_err(|e| DataError::io(&json_path, e))?;
    let entries: Vec<Entry> = serde_json::from_slice(&json)
        .map_err(|e| DataError::corrupt(&json_path, format!("JSON: {e}")))?;
    let sheet_path = dir.join(SHEET);
    let sheet_bytes = std::fs::read(&sheet_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => DataError::NotFound {
            what: "emoji sprite sheet".into(),
            path: sheet_path.clone(),
            hint: hint(),
        },
        _ => DataError::io(&sheet_path, e),
    })?;
    let sheet = decode_png(&sheet_bytes, &sheet_path)?;
    let mut images = Vec::new();
    for e in entries.iter().filter(|e| e.has_img_google) {
        let (x0, y0) = (e.sheet_x * CELL + 1, e.sheet_y * CELL + 1);
        if x0 + SIDE > sheet.width || y0 + SIDE > sheet.height {
            return Err(DataError::corrupt(
                &sheet_path,
                format!(
                    "cell ({}, {}) lies outside the {}x{} sheet",
                    e.sheet_x, e.sheet_y, sheet.width, sheet.height
                ),
            ));
        }
        for c in 0..3 {
            // Grey sheets have one colour channel: repeat it.
            let c = c.min(sheet.color_channels() - 1);
            for y in y0..y0 + SIDE {
                for x in x0..x0 + SIDE {
                    let k = (sheet.composited(x, y, c) * 255.0).round() as u32;
                    images.push(grid_value(k, 256));
                }
            }
        }
    }
    if images.is_empty() {
        return Err(DataError::corrupt(
            &json_path,
            "no entry with `has_img_google: true`",
        ));
    }
    ImageSet::new([3, SIDE, SIDE], 256, images, None, None)
}
