//! The `png` data set: a folder of PNG files in one of two layouts.
//!
//! - **Unlabelled**: `*.png` files directly inside the folder (extension in
//!   any case), sorted by file name. When the folder holds any such file,
//!   its sub-folders are ignored.
//! - **Labelled by sub-folder**: otherwise, every sub-folder that holds
//!   `*.png` files directly is a class. Classes are the sub-folder names
//!   sorted by name (byte order); label `k` is the `k`-th name and
//!   `num_classes` is the number of class folders (one is allowed). Images
//!   are ordered by class, then by file name within a class. Sub-folders
//!   without PNGs are skipped; deeper folders are not searched.
//!
//! Grey images (with or without alpha) give one channel and colour images
//! three; in a set mixing both (across all classes), grey images are
//! repeated into three channels. Alpha is composited on white. Values are
//! quantised to 8 bits (256 levels): 16-bit files are reduced to the nearest
//! `k / 255`. All images must have the same height and width
//! ([`DataError::MixedSizes`] otherwise, naming the first image and the one
//! that differs). A folder with neither layout is [`DataError::NotFound`].
//! [`png_class_names`] gives the class names of a labelled folder.

use std::path::{Path, PathBuf};

use super::{grid_value, require_dir, DataError, DataResult, ImageSet};
use crate::images::decode_png;

const HINT: &str = "set the data `path` to an existing folder of .png files \
                    (or of class sub-folders holding .png files)";

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

/// The sub-folders directly in `dir`, sorted by name (byte order).
fn list_subdirs(dir: &Path) -> DataResult<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))? {
        let path = entry.map_err(|e| DataError::io(dir, e))?.path();
        if path.is_dir() {
            dirs.push(path);
        }
    }
    dirs.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    Ok(dirs)
}

/// One class of a labelled folder: its name and its PNG files, sorted.
struct Class {
    name: String,
    files: Vec<PathBuf>,
}

/// How a folder's images are laid out (see the module documentation).
enum Layout {
    /// PNG files directly in the folder, sorted by name.
    Flat(Vec<PathBuf>),
    /// Class sub-folders (at least one), sorted by name, each non-empty.
    Classes(Vec<Class>),
}

/// Finds the layout of `dir`; [`DataError::NotFound`] when it is not a
/// folder or holds no PNGs in either layout.
fn layout(dir: &Path) -> DataResult<Layout> {
    require_dir(dir, "PNG folder", HINT)?;
    let files = list_pngs(dir)?;
    if !files.is_empty() {
        return Ok(Layout::Flat(files));
    }
    let mut classes = Vec::new();
    for sub in list_subdirs(dir)? {
        let files = list_pngs(&sub)?;
        if files.is_empty() {
            continue;
        }
        let name = sub
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        classes.push(Class { name, files });
    }
    if classes.is_empty() {
        return Err(DataError::NotFound {
            what: "PNG files (*.png)".into(),
            path: dir.to_path_buf(),
            hint: "put .png images, all of one size, in the folder (unlabelled), \
                   or in one sub-folder per class (labelled by sub-folder name)"
                .into(),
        });
    }
    Ok(Layout::Classes(classes))
}

/// The class names of the PNG folder `dir`, in label order (sub-folder
/// names sorted by name), or `None` when `dir` holds `*.png` files directly
/// (unlabelled). Reads no image; errors as [`load_png_folder`] does for a
/// missing or empty folder. Names that are not valid UTF-8 are converted
/// lossily.
pub fn png_class_names(dir: &Path) -> DataResult<Option<Vec<String>>> {
    Ok(match layout(dir)? {
        Layout::Flat(_) => None,
        Layout::Classes(classes) => Some(classes.into_iter().map(|c| c.name).collect()),
    })
}

/// Loads the PNG folder `dir` (see the module documentation): `[C, H, W]` of
/// the files, 256 levels; unlabelled for PNGs directly in `dir`, else
/// labelled by class sub-folder.
pub fn load_png_folder(dir: &Path) -> DataResult<ImageSet> {
    let (files, labels, num_classes) = match layout(dir)? {
        Layout::Flat(files) => (files, None, None),
        Layout::Classes(classes) => {
            let num_classes = classes.len();
            let mut files = Vec::new();
            let mut labels = Vec::new();
            for (k, class) in classes.into_iter().enumerate() {
                let label = u32::try_from(k).map_err(|_| {
                    DataError::Invalid(format!(
                        "{} has too many class folders ({num_classes})",
                        dir.display()
                    ))
                })?;
                labels.resize(labels.len() + class.files.len(), label);
                files.extend(class.files);
            }
            (files, Some(labels), Some(num_classes))
        }
    };
    let (shape, images) = decode_all(&files)?;
    ImageSet::new(shape, 256, images, labels, num_classes)
}

/// Decodes `files` (in order) into one NCHW buffer on the 256-level grid,
/// with the shape `[C, H, W]` shared by all of them.
fn decode_all(files: &[PathBuf]) -> DataResult<([usize; 3], Vec<f32>)> {
    let mut decoded = Vec::with_capacity(files.len());
    let mut first: Option<(&PathBuf, [usize; 2])> = None;
    for path in files {
        let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
        let raw = decode_png(&bytes, path)?;
        let this = [raw.height, raw.width];
        match first {
            None => first = Some((path, this)),
            Some((first_path, size)) if this != size => {
                return Err(DataError::MixedSizes {
                    first: first_path.clone(),
                    first_size: size,
                    other: path.clone(),
                    other_size: this,
                });
            }
            Some(_) => {}
        }
        let values: Vec<f32> = raw
            .planar()
            .iter()
            .map(|&v| grid_value((f64::from(v) * 255.0).round() as u32, 256))
            .collect();
        decoded.push((raw.color_channels(), values));
    }
    let channels = decoded.iter().map(|d| d.0).max().unwrap_or(1);
    let [h, w] = first.map_or([0, 0], |f| f.1);
    let mut images = Vec::with_capacity(files.len() * channels * h * w);
    for (c, values) in decoded {
        for _ in 0..channels / c.max(1) {
            images.extend_from_slice(&values);
        }
    }
    Ok(([channels, h, w], images))
}
