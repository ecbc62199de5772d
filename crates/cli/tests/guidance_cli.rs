//! End to end, class-conditional sampling: `train-classifier` reports test
//! accuracy at five times, `eval-classifier` repeats it, `sample
//! --classifier --class` draws one grid row per class, and mismatched or
//! malformed inputs are one-line errors before any sampling.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};

use support::{json, one_line_error, run, tempdir};

/// A tiny run configuration on 256 digits; `net` and `loss` tables given.
fn write_config(dir: &Path, name: &str, sde: &str, net: &str, loss: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "seed = 3\n[sde]\n{sde}\n[net]\n{net}\n[loss]\n{loss}\n\
             [optim]\nlr = 2e-3\nwarmup = 5\n\
             [training]\nbatch_size = 16\nsteps = 20\nlog_every = 10\ncheckpoint_every = 0\n\
             [data]\ndataset = \"digits\"\nscale = \"minus-one-one\"\nlimit = 256\n"
        ),
    )
    .unwrap();
    p
}

const VP: &str = "kind = \"vp\"\nbeta_min = 0.1\nbeta_max = 20.0\nnum_steps = 1000";
const NET: &str =
    "base_channels = 8\nchannel_mult = [1, 2]\nnum_res_blocks = 1\nattn_resolutions = []";

#[test]
fn classifier_training_evaluation_and_guided_sampling() {
    let dir = tempdir("guidance");
    let score_cfg = write_config(&dir, "score.toml", VP, NET, "eps = 1e-5");
    let clf_cfg = write_config(
        &dir,
        "clf.toml",
        VP,
        &format!("{NET}\nnum_classes = 10"),
        "eps = 1e-5",
    );
    let (score, clf) = (dir.join("score"), dir.join("clf"));
    let (sd, cd) = (score.to_str().unwrap(), clf.to_str().unwrap());
    json(&run(&[
        "train",
        "--json",
        "--config",
        score_cfg.to_str().unwrap(),
        "--out",
        sd,
    ]));
    let t = json(&run(&[
        "train-classifier",
        "--json",
        "--config",
        clf_cfg.to_str().unwrap(),
        "--out",
        cd,
    ]));
    assert_eq!(t["command"], "train-classifier");
    assert_eq!(t["steps"], 20);
    let acc = t["test_accuracy"].as_array().unwrap();
    let times: Vec<f64> = acc.iter().map(|a| a["t"].as_f64().unwrap()).collect();
    assert_eq!(times, vec![0.0, 0.25, 0.5, 0.75, 1.0]);
    assert!(acc
        .iter()
        .all(|a| (0.0..=1.0).contains(&a["accuracy"].as_f64().unwrap())));
    let e = json(&run(&["eval-classifier", "--json", "--ckpt", cd]));
    assert_eq!(e["test_accuracy"], t["test_accuracy"]);

    // Three classes, two samples each: one row per class.
    let png = dir.join("guided.png");
    let s = json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        sd,
        "--classifier",
        cd,
        "--class",
        "0..2",
        "-n",
        "2",
        "--steps",
        "30",
        "--guidance",
        "2",
        "--zoom",
        "1",
        "--out",
        png.to_str().unwrap(),
    ]));
    assert_eq!(
        (s["n"].as_u64(), s["guidance"].as_f64()),
        (Some(6), Some(2.0))
    );
    assert_eq!(s["classes"], serde_json::json!([0, 1, 2]));
    let ([c, h, w], _) = train::images::read_png(&png).unwrap();
    // A grid of 3 rows x 2 columns of 8x8 images with a border of p pixels:
    // h = 3 * 8 + 4 p, w = 2 * 8 + 3 p.
    assert_eq!(c, 1);
    let p = (w - 16) / 3;
    assert_eq!((h, w), (24 + 4 * p, 16 + 3 * p), "{h}x{w}");

    // The ODE sampler takes the same guidance.
    let s = json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        sd,
        "--classifier",
        cd,
        "--class",
        "4",
        "-n",
        "2",
        "--sampler",
        "ode",
        "--out",
        png.to_str().unwrap(),
    ]));
    assert_eq!(s["n"].as_u64(), Some(2));

    // The sample-quality metric: Fréchet distances of generated images to the
    // training images, in pixels and in the classifier's feature space; real
    // test images score far better than untrained-model samples.
    let npy = dir.join("q.npy");
    json(&run(&[
        "sample",
        "--json",
        "--ckpt",
        sd,
        "--sampler",
        "dpm-solver",
        "--steps",
        "5",
        "-n",
        "40",
        "--out",
        dir.join("q.png").to_str().unwrap(),
        "--npy",
        npy.to_str().unwrap(),
    ]));
    let f = json(&run(&[
        "frechet",
        "--json",
        "--ckpt",
        sd,
        "--npy",
        npy.to_str().unwrap(),
        "--classifier",
        cd,
    ]));
    let (fp, ff) = (
        f["frechet_pixels"].as_f64().unwrap(),
        f["frechet_features"].as_f64().unwrap(),
    );
    assert!(
        fp.is_finite() && fp > 0.0 && ff.is_finite() && ff > 0.0,
        "{f}"
    );
    assert_eq!(f["samples"], 40, "{f}");
    let r = json(&run(&[
        "frechet",
        "--json",
        "--ckpt",
        sd,
        "--real",
        "test",
        "--classifier",
        cd,
    ]));
    assert_eq!(r["scored"], "the test split", "{r}");
    let (rp, rf) = (
        r["frechet_pixels"].as_f64().unwrap(),
        r["frechet_features"].as_f64().unwrap(),
    );
    assert!(rp < 0.5 * fp && rf < 0.5 * ff, "real {r} vs samples {f}");
    one_line_error(
        &run(&["frechet", "--ckpt", sd, "--npy", png.to_str().unwrap()]),
        1,
        "reading",
    );

    // Errors, before sampling.
    let base = ["sample", "--ckpt", sd, "--classifier", cd, "--steps", "30"];
    let with = |extra: &[&str]| {
        let mut a: Vec<&str> = base.to_vec();
        a.extend_from_slice(extra);
        run(&a)
    };
    one_line_error(&with(&["--class", "12"]), 1, "classes 0..9");
    one_line_error(&with(&["--class", "x"]), 1, "expected a class");
    one_line_error(&with(&["--class", "3..1"]), 1, "empty");
    one_line_error(&with(&["--class", "0..4000000000"]), 1, "at most");
    one_line_error(
        &with(&["--class", "0..9", "-n", "18446744073709551615"]),
        1,
        "at most",
    );
    one_line_error(&with(&["--class", "1", "--guidance=-1"]), 1, "--guidance");
    one_line_error(
        &run(&["sample", "--ckpt", sd, "--classifier", cd]),
        2,
        "--class",
    );
    // A score run is not a classifier, and a classifier of another SDE is refused.
    one_line_error(
        &run(&["sample", "--ckpt", sd, "--classifier", sd, "--class", "1"]),
        1,
        "not a noise-conditional classifier",
    );
    let ve = "kind = \"ve\"\nsigma_min = 0.01\nsigma_max = 10.0\nnum_steps = 1000";
    let ve_cfg = write_config(
        &dir,
        "ve.toml",
        ve,
        &format!("{NET}\nnum_classes = 10"),
        "eps = 1e-5",
    );
    let ve_dir = dir.join("clf-ve");
    json(&run(&[
        "train-classifier",
        "--json",
        "--steps",
        "2",
        "--config",
        ve_cfg.to_str().unwrap(),
        "--out",
        ve_dir.to_str().unwrap(),
    ]));
    one_line_error(
        &run(&[
            "sample",
            "--ckpt",
            sd,
            "--classifier",
            ve_dir.to_str().unwrap(),
            "--class",
            "1",
        ]),
        1,
        "another SDE",
    );
    std::fs::remove_dir_all(&dir).ok();
}
