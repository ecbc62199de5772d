//! End-to-end tests of `scoresde inpaint` and `scoresde colorize` on tiny
//! models trained for a few seconds (8x8 digits; 8x8 RGB PNGs): the PNG rows
//! have the documented layout, the known pixels of a completion are the
//! input's, the JSON summary reports finite errors against the data set, and
//! every bad argument is a one-line error before any sampling.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use support::{json, one_line_error, run, tempdir, tiny_config};

/// Writes an 8-bit PNG (`data` interleaved, `w * h * channels` bytes).
fn write_png(path: &Path, w: u32, h: u32, rgb: bool, data: &[u8]) {
    let f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    let mut enc = png::Encoder::new(f, w, h);
    enc.set_color(if rgb {
        png::ColorType::Rgb
    } else {
        png::ColorType::Grayscale
    });
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().unwrap();
    writer.write_image_data(data).unwrap();
    writer.finish().unwrap();
}

/// Trains the tiny model of `tiny_config` (for `channels`-channel images,
/// with extra flags) into `dir/run`.
fn train(dir: &Path, channels: usize, extra: &[&str]) -> PathBuf {
    let cfg = tiny_config(dir);
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace("[net]\n", &format!("[net]\nin_channels = {channels}\n"));
    std::fs::write(&cfg, text).unwrap();
    let run_dir = dir.join("run");
    let mut args = vec![
        "train",
        "--json",
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        run_dir.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    json(&run(&args));
    run_dir
}

/// Cell `(row, col)` of an 8x8 grid written with `--zoom 1`, channel `ch`:
/// its 64 values in `[0, 1]`.
fn cell(png: &(Vec<usize>, Vec<f32>), row: usize, col: usize, ch: usize) -> Vec<f32> {
    let (h, w) = (png.0[1], png.0[2]);
    let (x0, y0) = (2 + col * 10, 2 + row * 10);
    (0..64)
        .map(|j| png.1[(ch * h + y0 + j / 8) * w + x0 + j % 8])
        .collect()
}

fn read_png(p: &Path) -> (Vec<usize>, Vec<f32>) {
    let (s, v) = train::images::read_png(p).unwrap();
    (s.to_vec(), v)
}

fn finite(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key].as_f64().unwrap_or(f64::NAN);
    assert!(x.is_finite(), "{key} in {v}");
    x
}

#[test]
fn argument_errors_need_no_model() {
    let ck = ["--ckpt", "no-such-run", "--index", "0"];
    let with = |extra: &[&str]| {
        let mut a = vec!["inpaint"];
        a.extend_from_slice(&ck);
        a.extend_from_slice(extra);
        run(&a)
    };
    one_line_error(&with(&["--mask", "diagonal"]), 2, "diagonal");
    one_line_error(&with(&["--mask", "random:1.5"]), 2, "[0, 1]");
    one_line_error(&with(&["--mask", "left", "--jumps", "0"]), 2, "--jumps");
    one_line_error(
        &with(&["--mask", "left", "--samples-per-image", "0"]),
        2,
        "--samples-per-image",
    );
    one_line_error(&with(&["--mask", "left", "--method", "magic"]), 2, "magic");
    one_line_error(
        &run(&["inpaint", "--ckpt", "x", "--index", "0"]),
        2,
        "--mask",
    );
    // Checked before the checkpoint is read.
    one_line_error(
        &with(&["--mask", "left", "--jumps", "4"]),
        1,
        "--method resample",
    );
    one_line_error(
        &run(&["inpaint", "--ckpt", "x", "--mask", "left"]),
        1,
        "exactly one",
    );
    one_line_error(&with(&["--mask", "absent.png"]), 1, "absent.png");
    let dir = tempdir("cond-args");
    let file = dir.join("file.txt");
    std::fs::write(&file, "x").unwrap();
    let inside = file.join("out.png");
    one_line_error(
        &with(&["--mask", "left", "--out", inside.to_str().unwrap()]),
        1,
        "not a folder",
    );
    one_line_error(
        &run(&[
            "colorize",
            "--ckpt",
            "x",
            "--index",
            "0",
            "--out",
            dir.to_str().unwrap(),
        ]),
        1,
        "is a folder",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn inpaint_digits_both_methods_and_model_checked_errors() {
    let dir = tempdir("inpaint");
    let run_dir = train(&dir, 1, &[]);
    let rd = run_dir.to_str().unwrap();
    let base = ["--json", "--ckpt", rd, "--steps", "25", "--zoom", "1"];
    let inpaint = |extra: &[&str]| {
        let mut a = vec!["inpaint"];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        run(&a)
    };

    // The paper's replacement with a named mask, two test images.
    let out = dir.join("left.png");
    let npy = dir.join("left.npy");
    let r = json(&inpaint(&[
        "--index",
        "0,1",
        "--mask",
        "left",
        "--out",
        out.to_str().unwrap(),
        "--npy",
        npy.to_str().unwrap(),
    ]));
    assert_eq!(r["command"], "inpaint");
    assert_eq!(r["method"], "replacement");
    assert_eq!(r["mask"], "left");
    assert_eq!(r["hidden_fraction"], 0.5);
    let nfe = r["nfe"].as_u64().unwrap();
    assert!(nfe >= 50, "{r}");
    let (hidden, all) = (finite(&r, "mse_hidden"), finite(&r, "mse_all"));
    assert!(hidden > 0.0 && all < hidden, "{r}");
    // Known pixels are the data perturbed to t = eps (m(eps) y, denoised).
    assert!(finite(&r, "known_max_error") < 1e-3, "{r}");
    // Two rows of input | masked | result.
    let png = read_png(&out);
    assert_eq!(png.0, vec![1, 2 + 2 * 10, 2 + 3 * 10]);
    assert_eq!(train::images::read_npy(&npy).unwrap().0, vec![2, 1, 8, 8]);
    for row in 0..2 {
        let (input, masked, result) = (
            cell(&png, row, 0, 0),
            cell(&png, row, 1, 0),
            cell(&png, row, 2, 0),
        );
        for j in 0..64 {
            if j % 8 >= 4 {
                assert_eq!(masked[j], input[j]);
                assert!((result[j] - input[j]).abs() <= 1.5 / 255.0, "pixel {j}");
            } else {
                // Hidden pixels of the masked input are a checkerboard.
                let c = if (j / 8 + j % 8) % 2 == 0 { 0.35 } else { 0.65 };
                assert!((masked[j] - c).abs() < 0.01);
            }
        }
    }

    // RePaint resampling with a PNG mask (top half known), two completions each.
    let mask = dir.join("mask.png");
    let bytes: Vec<u8> = (0..64).map(|j| if j < 32 { 255 } else { 0 }).collect();
    write_png(&mask, 8, 8, false, &bytes);
    let out2 = dir.join("resample.png");
    let s = json(&inpaint(&[
        "--index",
        "2",
        "--split",
        "train",
        "--mask",
        mask.to_str().unwrap(),
        "--method",
        "resample",
        "--jumps",
        "2",
        "--samples-per-image",
        "2",
        "--out",
        out2.to_str().unwrap(),
    ]));
    assert_eq!(
        (s["method"].as_str(), s["jumps"].as_u64()),
        (Some("resample"), Some(2))
    );
    // Every level but the last runs twice.
    assert!(s["nfe"].as_u64().unwrap() > nfe, "{s}");
    finite(&s, "mse_hidden");
    assert!(finite(&s, "known_max_error") < 1e-3);
    assert_eq!(read_png(&out2).0, vec![1, 2 + 10, 2 + 4 * 10]);

    // A PNG input: no truth, so no errors against it.
    let img = dir.join("img.png");
    write_png(
        &img,
        8,
        8,
        false,
        &(0..64).map(|j| (j * 4) as u8).collect::<Vec<_>>(),
    );
    let p = json(&inpaint(&[
        "--image",
        img.to_str().unwrap(),
        "--mask",
        "random:0.3",
        "--out",
        dir.join("img-out.png").to_str().unwrap(),
    ]));
    assert!(p.get("mse_hidden").is_none(), "{p}");
    assert_eq!(p["mask"], "random:0.3");

    // Errors that need the model, all before sampling (no output appears).
    let bad = dir.join("never.png");
    let b = bad.to_str().unwrap();
    one_line_error(
        &inpaint(&["--index", "99999", "--mask", "left", "--out", b]),
        1,
        "out of range",
    );
    let big = dir.join("big.png");
    write_png(&big, 16, 16, false, &[255; 256]);
    one_line_error(
        &inpaint(&["--index", "0", "--mask", big.to_str().unwrap(), "--out", b]),
        1,
        "16x16 pixels",
    );
    one_line_error(
        &inpaint(&["--index", "0", "--mask", "left", "--snr=-1", "--out", b]),
        1,
        "snr",
    );
    assert!(!bad.exists());
    // The run's own files are never overwritten.
    for own in ["checkpoint.safetensors", "config.toml"] {
        let target = run_dir.join(own);
        let before = std::fs::read(&target).unwrap();
        let t = target.to_str().unwrap();
        one_line_error(
            &inpaint(&["--index", "0", "--mask", "left", "--out", t]),
            1,
            "overwrite",
        );
        assert_eq!(std::fs::read(&target).unwrap(), before);
    }
    // colorize needs an RGB model.
    one_line_error(
        &run(&["colorize", "--ckpt", rd, "--index", "0", "--out", b]),
        1,
        "RGB model",
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn colorize_and_inpaint_an_rgb_model() {
    let dir = tempdir("colorize");
    // 20 RGB 8x8 images: a coloured background with a square of another colour.
    let data = dir.join("pngs");
    std::fs::create_dir_all(&data).unwrap();
    let colours = [
        [220u8, 40, 40],
        [40, 200, 60],
        [50, 60, 230],
        [230, 210, 40],
    ];
    for i in 0..20 {
        let (bg, fg) = (colours[i % 4], colours[(i / 4 + 1 + i) % 4]);
        let mut px = Vec::with_capacity(192);
        for j in 0..64 {
            let inside = (2..6).contains(&(j / 8)) && (2..6).contains(&(j % 8));
            px.extend_from_slice(if inside { &fg } else { &bg });
        }
        write_png(&data.join(format!("{i:02}.png")), 8, 8, true, &px);
    }
    let run_dir = train(
        &dir,
        3,
        &["--dataset", "png", "--data-path", data.to_str().unwrap()],
    );
    let rd = run_dir.to_str().unwrap();
    let base = ["--json", "--ckpt", rd, "--steps", "25", "--zoom", "1"];
    let with = |cmd: &str, extra: &[&str]| {
        let mut a = vec![cmd];
        a.extend_from_slice(&base);
        a.extend_from_slice(extra);
        run(&a)
    };

    // Data-set inputs: grey | result | original, errors against the originals.
    let out = dir.join("c.png");
    let c = json(&with(
        "colorize",
        &["--index", "0,1", "--out", out.to_str().unwrap()],
    ));
    assert_eq!(c["command"], "colorize");
    assert!(c["nfe"].as_u64().unwrap() >= 50, "{c}");
    finite(&c, "mse_color");
    finite(&c, "mse_grey_input");
    // The grey level of every result is the input's.
    assert!(finite(&c, "grey_max_error") < 1e-3, "{c}");
    assert_eq!(read_png(&out).0, vec![3, 2 + 2 * 10, 2 + 3 * 10]);

    // PNG inputs: an RGB one (its original is known) and a grey one; resampling.
    let rgb = data.join("03.png");
    let grey = dir.join("grey.png");
    write_png(&grey, 8, 8, false, &[128; 64]);
    let out2 = dir.join("c2.png");
    let p = json(&with(
        "colorize",
        &[
            "--image",
            rgb.to_str().unwrap(),
            grey.to_str().unwrap(),
            "--method",
            "resample",
            "--jumps",
            "2",
            "--samples-per-image",
            "2",
            "--out",
            out2.to_str().unwrap(),
        ],
    ));
    finite(&p, "mse_color");
    assert_eq!(read_png(&out2).0, vec![3, 2 + 2 * 10, 2 + 4 * 10]);

    // Inpainting works on colour models too.
    let i = json(&with(
        "inpaint",
        &[
            "--index",
            "0",
            "--mask",
            "center",
            "--out",
            dir.join("i.png").to_str().unwrap(),
        ],
    ));
    finite(&i, "mse_hidden");
    assert_eq!(i["hidden_fraction"], 0.25);
    std::fs::remove_dir_all(&dir).ok();
}
