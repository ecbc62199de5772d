//! Image files: reading PNGs into `[0, 1]` values (alpha composited on
//! white), writing batches as a PNG grid, and writing arrays as NumPy `.npy`
//! files. Every write is atomic: a temporary file in the target folder is
//! written, synced and renamed over the target.

use std::fs::File;
use std::io::{BufWriter, Cursor, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::data::{DataError, DataResult};

/// Pixels of border around and between the tiles of [`write_png_grid`].
pub const GRID_PADDING: usize = 2;

/// The 8-bit value of the border of [`write_png_grid`] (mid grey, visible on
/// both black and white backgrounds).
pub const GRID_BORDER: u8 = 128;

/// A decoded PNG before compositing: interleaved samples, `channels` per
/// pixel (1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), each in `0..=max`.
#[derive(Clone, Debug)]
pub(crate) struct RawPng {
    pub width: usize,
    pub height: usize,
    pub channels: usize,
    pub max: u32,
    pub samples: Vec<u16>,
}

impl RawPng {
    /// Colour channels after compositing (1 for grey, 3 for RGB).
    pub fn color_channels(&self) -> usize {
        if self.channels <= 2 {
            1
        } else {
            3
        }
    }

    /// The value of colour channel `c` at `(x, y)` in `[0, 1]`, composited
    /// on white: `v a + (1 - a)`.
    pub fn composited(&self, x: usize, y: usize, c: usize) -> f64 {
        let max = f64::from(self.max);
        let px = &self.samples[(y * self.width + x) * self.channels..][..self.channels];
        let v = f64::from(px[c]) / max;
        match self.channels {
            2 | 4 => {
                let a = f64::from(px[self.channels - 1]) / max;
                v * a + (1.0 - a)
            }
            _ => v,
        }
    }

    /// The composited image, planar (`[C, H, W]`), values in `[0, 1]`.
    pub fn planar(&self) -> Vec<f32> {
        let cc = self.color_channels();
        let mut out = Vec::with_capacity(cc * self.height * self.width);
        for c in 0..cc {
            for y in 0..self.height {
                for x in 0..self.width {
                    out.push(self.composited(x, y, c) as f32);
                }
            }
        }
        out
    }
}

/// Decodes a PNG (any colour type and bit depth; palettes, low bit depths and
/// `tRNS` are expanded to 8-bit grey/RGB with alpha). `path` names it in errors.
pub(crate) fn decode_png(bytes: &[u8], path: &Path) -> DataResult<RawPng> {
    let corrupt = |e: png::DecodingError| DataError::corrupt(path, format!("PNG: {e}"));
    let mut decoder =
        png::Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: 1 << 30 });
    decoder.set_transformations(png::Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(corrupt)?;
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| DataError::corrupt(path, "PNG too large"))?;
    let mut buf = vec![0u8; size];
    let info = reader.next_frame(&mut buf).map_err(corrupt)?;
    let channels = match info.color_type {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => {
            return Err(DataError::corrupt(path, "PNG palette was not expanded"))
        }
    };
    let (width, height) = (info.width as usize, info.height as usize);
    let row = width * channels;
    let mut samples = Vec::with_capacity(row * height);
    let max = match info.bit_depth {
        png::BitDepth::Eight => {
            for line in buf.chunks_exact(info.line_size).take(height) {
                samples.extend(line[..row].iter().map(|&b| u16::from(b)));
            }
            255
        }
        png::BitDepth::Sixteen => {
            for line in buf.chunks_exact(info.line_size).take(height) {
                samples.extend(
                    line[..2 * row]
                        .chunks_exact(2)
                        .map(|p| u16::from_be_bytes([p[0], p[1]])),
                );
            }
            65535
        }
        d => {
            return Err(DataError::corrupt(
                path,
                format!("PNG bit depth {d:?} was not expanded to 8"),
            ))
        }
    };
    if samples.len() != row * height || width == 0 || height == 0 {
        return Err(DataError::corrupt(path, "PNG frame is incomplete"));
    }
    Ok(RawPng {
        width,
        height,
        channels,
        max,
        samples,
    })
}

/// Reads a PNG file into `([C, H, W], values)`: `C = 1` for grey (with or
/// without alpha) and `C = 3` for colour (RGB, RGBA, palette), planar, each
/// value the sample divided by its maximum (255, or 65535 for 16-bit files),
/// alpha composited on white. Errors: [`DataError::Io`] when the file cannot
/// be read, [`DataError::Corrupt`] when it is not a valid PNG.
pub fn read_png(path: &Path) -> DataResult<([usize; 3], Vec<f32>)> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    let raw = decode_png(&bytes, path)?;
    Ok(([raw.color_channels(), raw.height, raw.width], raw.planar()))
}

/// Writes `write` to `path` atomically: into a temporary file next to it,
/// synced, then renamed over `path`. Creates the parent folder if needed.
pub(crate) fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> DataResult<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&dir).map_err(|e| DataError::io(&dir, e))?;
    let name = path
        .file_name()
        .ok_or_else(|| DataError::Invalid(format!("{} is not a file path", path.display())))?;
    let tmp = dir.join(format!(
        ".{}.tmp.{}.{}",
        name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        DataError::io(path, e)
    })
}

/// Writes a batch of images (`data` NCHW with `shape = [N, C, H, W]`, `C`
/// 1 or 3) as one 8-bit grey or RGB PNG: a grid of `ncols` columns (clamped to
/// `1..=N`), image `j` at row `j / ncols`, column `j % ncols`, with its top-left
/// pixel at `(GRID_PADDING + col (W + GRID_PADDING), GRID_PADDING + row (H +
/// GRID_PADDING))`; the border and empty cells are [`GRID_BORDER`]. Values map
/// from `range = (low, high)` to `0..=255` as `round(255 (v - low) / (high -
/// low))`, clamped (NaN becomes 0). Written atomically.
pub fn write_png_grid(
    path: &Path,
    data: &[f32],
    shape: [usize; 4],
    range: (f64, f64),
    ncols: usize,
) -> DataResult<()> {
    let [n, c, h, w] = shape;
    if n == 0 || h == 0 || w == 0 || !(c == 1 || c == 3) {
        return Err(DataError::Invalid(format!(
            "write_png_grid needs N, H, W > 0 and 1 or 3 channels, got shape {shape:?}"
        )));
    }
    if data.len() != n * c * h * w {
        return Err(DataError::Invalid(format!(
            "write_png_grid: {} values for shape {shape:?}",
            data.len()
        )));
    }
    let (low, high) = range;
    if !(low.is_finite() && high.is_finite() && low < high) {
        return Err(DataError::Invalid(format!(
            "write_png_grid: bad range ({low}, {high})"
        )));
    }
    let ncols = ncols.clamp(1, n);
    let nrows = n.div_ceil(ncols);
    let p = GRID_PADDING;
    let (gw, gh) = (p + ncols * (w + p), p + nrows * (h + p));
    let (gw32, gh32) = match (u32::try_from(gw), u32::try_from(gh)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => {
            return Err(DataError::Invalid(format!(
                "write_png_grid: a {gw}x{gh} grid is too large"
            )))
        }
    };
    let mut pixels = vec![GRID_BORDER; gw * gh * c];
    let scale = 255.0 / (high - low);
    for j in 0..n {
        let (x0, y0) = (p + (j % ncols) * (w + p), p + (j / ncols) * (h + p));
        let img = &data[j * c * h * w..(j + 1) * c * h * w];
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let v = (f64::from(img[(ch * h + y) * w + x]) - low) * scale;
                    let v = if v.is_nan() {
                        0.0
                    } else {
                        v.round().clamp(0.0, 255.0)
                    };
                    pixels[((y0 + y) * gw + x0 + x) * c + ch] = v as u8;
                }
            }
        }
    }
    write_atomic(path, |out| {
        let mut enc = png::Encoder::new(out, gw32, gh32);
        enc.set_color(if c == 1 {
            png::ColorType::Grayscale
        } else {
            png::ColorType::Rgb
        });
        enc.set_depth(png::BitDepth::Eight);
        let mut writer = enc.write_header().map_err(std::io::Error::other)?;
        writer
            .write_image_data(&pixels)
            .map_err(std::io::Error::other)?;
        writer.finish().map_err(std::io::Error::other)
    })
}

/// The `.npy` (format version 1.0) header for a little-endian `f32`
/// C-order array of `shape`, padded so the data starts at a multiple of 64.
fn npy_header(shape: &[usize]) -> DataResult<Vec<u8>> {
    let dims = match shape {
        [] => "()".to_string(),
        [d] => format!("({d},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}");
    let unpadded = 10 + dict.len() + 1;
    dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    dict.push('\n');
    let len = u16::try_from(dict.len())
        .map_err(|_| DataError::Invalid(format!("npy header for shape {shape:?} is too long")))?;
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    Ok(out)
}

/// Writes `data` as a NumPy `.npy` file (version 1.0, dtype `<f4`, C order)
/// of `shape` (whose product must be `data.len()`). Written atomically.
pub fn write_npy(path: &Path, data: &[f32], shape: &[usize]) -> DataResult<()> {
    let count = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| DataError::Invalid(format!("npy shape {shape:?} overflows")))?;
    if count != data.len() {
        return Err(DataError::Invalid(format!(
            "write_npy: {} values for shape {shape:?}",
            data.len()
        )));
    }
    let header = npy_header(shape)?;
    write_atomic(path, |out| {
        out.write_all(&header)?;
        for v in data {
            out.write_all(&v.to_le_bytes())?;
        }
        Ok(())
    })
}
