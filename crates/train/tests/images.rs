//! PNG grids, PNG reading and `.npy` writing.
#![allow(clippy::unwrap_used)]

mod common;

use common::{tmp_dir, write_png};
use train::data::DataError;
use train::images::{read_png, write_npy, write_png_grid, GRID_BORDER, GRID_PADDING};

/// Values on the 8-bit grid: image `j`, channel `c`, pixel `p`.
fn ks(n: usize, c: usize, hw: usize) -> Vec<u32> {
    (0..n * c * hw).map(|i| (i * 37 % 256) as u32).collect()
}

fn check_grid(n: usize, c: usize, h: usize, w: usize, ncols: usize, range: (f64, f64)) {
    let dir = tmp_dir(&format!("grid-{n}-{c}-{ncols}-{}", range.0));
    let k = ks(n, c, h * w);
    let (lo, hi) = range;
    let data: Vec<f32> = k
        .iter()
        .map(|&k| (lo + (hi - lo) * f64::from(k) / 255.0) as f32)
        .collect();
    let path = dir.join("grid.png");
    write_png_grid(&path, &data, [n, c, h, w], range, ncols).unwrap();
    let ([gc, gh, gw], px) = read_png(&path).unwrap();
    let p = GRID_PADDING;
    let cols = ncols.clamp(1, n);
    let rows = n.div_ceil(cols);
    assert_eq!([gc, gh, gw], [c, p + rows * (h + p), p + cols * (w + p)]);
    let at = |ch: usize, y: usize, x: usize| (px[(ch * gh + y) * gw + x] * 255.0).round() as u32;
    for j in 0..rows * cols {
        let (x0, y0) = (p + (j % cols) * (w + p), p + (j / cols) * (h + p));
        for ch in 0..c {
            for y in 0..h {
                for x in 0..w {
                    let want = if j < n {
                        k[((j * c + ch) * h + y) * w + x]
                    } else {
                        u32::from(GRID_BORDER) // empty cell
                    };
                    assert_eq!(at(ch, y0 + y, x0 + x), want, "image {j} ch {ch} ({x}, {y})");
                }
            }
        }
    }
    // The border.
    for ch in 0..c {
        for x in 0..gw {
            assert_eq!(at(ch, 0, x), u32::from(GRID_BORDER));
            assert_eq!(at(ch, gh - 1, x), u32::from(GRID_BORDER));
        }
        for y in 0..gh {
            assert_eq!(at(ch, y, 0), u32::from(GRID_BORDER));
        }
    }
    // Only the target is left behind (the temporary file was renamed).
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("grid.png")]);
}

#[test]
fn png_grid_round_trips() {
    check_grid(5, 1, 3, 4, 3, (0.0, 1.0)); // grey, one empty cell
    check_grid(4, 3, 5, 2, 2, (-1.0, 1.0)); // RGB in [-1, 1]
    check_grid(1, 1, 8, 8, 10, (0.0, 1.0)); // ncols clamped to N
    check_grid(3, 3, 2, 2, 0, (0.0, 1.0)); // ncols clamped to 1
}

#[test]
fn png_grid_clamps_and_validates() {
    let dir = tmp_dir("grid-clamp");
    let path = dir.join("sub/dir/g.png");
    write_png_grid(
        &path,
        &[-3.0, 0.5, 9.0, f32::NAN],
        [1, 1, 1, 4],
        (0.0, 1.0),
        1,
    )
    .unwrap();
    let (_, px) = read_png(&path).unwrap();
    let p = GRID_PADDING;
    let row: Vec<u32> = (0..4)
        .map(|x| (px[p * (p + 4 + p) + p + x] * 255.0).round() as u32)
        .collect();
    assert_eq!(row, vec![0, 128, 255, 0]);
    // Overwrites in place.
    write_png_grid(&path, &[1.0; 4], [1, 1, 1, 4], (0.0, 1.0), 1).unwrap();
    assert_eq!(read_png(&path).unwrap().1[p * (p + 4 + p) + p], 1.0);
    for (shape, len, range) in [
        ([1, 2, 1, 4], 8, (0.0, 1.0)), // two channels
        ([1, 1, 1, 4], 3, (0.0, 1.0)), // length mismatch
        ([0, 1, 1, 4], 0, (0.0, 1.0)), // empty
        ([1, 1, 1, 4], 4, (1.0, 1.0)), // empty range
    ] {
        let e = write_png_grid(&path, &vec![0.0; len], shape, range, 1).unwrap_err();
        assert!(matches!(e, DataError::Invalid(_)), "{shape:?}: {e:?}");
    }
}

#[test]
fn read_png_formats_and_errors() {
    let dir = tmp_dir("read-png");
    // 16-bit grey: sample / 65535.
    let p16 = dir.join("g16.png");
    let s: [u16; 3] = [0, 1000, 65535];
    let bytes: Vec<u8> = s.iter().flat_map(|v| v.to_be_bytes()).collect();
    write_png(
        &p16,
        3,
        1,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &bytes,
    );
    let (shape, v) = read_png(&p16).unwrap();
    assert_eq!(shape, [1, 1, 3]);
    assert_eq!(v, vec![0.0, (1000.0f64 / 65535.0) as f32, 1.0]);
    // Palette with transparency: expanded to RGB, composited on white.
    let pal = dir.join("pal.png");
    {
        let file = std::fs::File::create(&pal).unwrap();
        let mut enc = png::Encoder::new(std::io::BufWriter::new(file), 2, 1);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![10, 20, 30, 200, 100, 0]);
        enc.set_trns(vec![255, 0]);
        let mut w = enc.write_header().unwrap();
        w.write_image_data(&[0, 1]).unwrap();
        w.finish().unwrap();
    }
    let (shape, v) = read_png(&pal).unwrap();
    assert_eq!(shape, [3, 1, 2]);
    let want: Vec<f32> = [10u8, 255, 20, 255, 30, 255]
        .iter()
        .map(|&k| f32::from(k) / 255.0)
        .collect();
    assert_eq!(v, want);
    // Garbage and missing files.
    let bad = dir.join("bad.png");
    std::fs::write(&bad, b"not a png at all").unwrap();
    assert!(matches!(read_png(&bad), Err(DataError::Corrupt { .. })));
    let mut truncated = std::fs::read(&p16).unwrap();
    truncated.truncate(truncated.len() - 20);
    std::fs::write(&bad, truncated).unwrap();
    assert!(matches!(read_png(&bad), Err(DataError::Corrupt { .. })));
    assert!(matches!(
        read_png(&dir.join("missing.png")),
        Err(DataError::Io { .. })
    ));
}

/// Parses a `.npy` v1.0 file: (header dict, data).
fn parse_npy(bytes: &[u8]) -> (String, Vec<f32>) {
    assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
    let hlen = usize::from(u16::from_le_bytes([bytes[8], bytes[9]]));
    assert_eq!((10 + hlen) % 64, 0, "data aligned to 64 bytes");
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.ends_with('\n'));
    let data = bytes[10 + hlen..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    (header.trim_end().to_string(), data)
}

#[test]
fn npy_header_and_data() {
    let dir = tmp_dir("npy");
    for (shape, dims) in [
        (vec![2usize, 3, 4], "(2, 3, 4)"),
        (vec![5], "(5,)"),
        (vec![], "()"),
        (vec![0, 3], "(0, 3)"),
    ] {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.25).collect();
        let path = dir.join("a.npy");
        write_npy(&path, &data, &shape).unwrap();
        let (header, back) = parse_npy(&std::fs::read(&path).unwrap());
        assert_eq!(
            header,
            format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {dims}, }}")
        );
        assert_eq!(back, data);
    }
    let e = write_npy(&dir.join("b.npy"), &[1.0; 5], &[2, 3]).unwrap_err();
    assert!(matches!(e, DataError::Invalid(_)));
    assert!(!dir.join("b.npy").exists());
}
