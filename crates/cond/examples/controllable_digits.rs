//! Controllable generation on real data, measured: class-conditional
//! sampling and inpainting with a score model and classifiers trained on the
//! embedded `digits` set (Song et al. 2021, section 5).
//!
//! ```text
//! scoresde train --config configs/digits-vp.toml --out runs/vp
//! scoresde train-classifier --config configs/digits-classifier.toml --out runs/clf
//! scoresde train-classifier --config configs/digits-classifier.toml --out runs/judge --seed 1
//! cargo run --release -p cond --example controllable_digits -- runs/vp runs/clf runs/judge out/
//! ```
//!
//! `clf` guides; `judge`, trained separately (another seed), scores the
//! results, so guidance cannot pass by fooling the classifier it follows.
//! Prints one JSON object with, for each guidance scale w in {0, 1, 2, 4}: the
//! fraction of samples the judge assigns to the requested class and the
//! within-class diversity (mean pairwise distance, relative to the test
//! images of that class); for inpainting of held-out test digits with half
//! the pixels hidden (random and bottom-half masks), for the paper's
//! replacement method and RePaint resampling: the mean squared error on the
//! hidden pixels (data range [0, 1]) and the judge's agreement with the true
//! label. PNG grids go to the output folder.

use std::path::PathBuf;
use std::time::Instant;

use cond::{Guided, KnownPixels, Method, NamedMask};
use score_net::ClassifierModel;
use sde_core::{AnySde, Backend, CpuBackend, NoiseRng, Sde, Shape};
use serde_json::json;
use solvers::PcConfig;
use train::{ClassifierCheckpoint, TrainingCheckpoint, Weights};

type Error = Box<dyn std::error::Error>;

/// Sampling levels (the SDE's N) for this example.
const LEVELS: usize = 500;
/// Samples per class.
const PER_CLASS: usize = 20;
/// Held-out digits to inpaint.
const INPAINT: usize = 100;

fn main() -> Result<(), Error> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [score_dir, clf_dir, judge_dir, out] = args.as_slice() else {
        return Err("usage: controllable_digits SCORE_RUN CLASSIFIER_RUN JUDGE_RUN OUT_DIR".into());
    };
    std::fs::create_dir_all(out)?;
    score_net::cpu::retain_freed_memory();
    let b = CpuBackend;
    let ck = TrainingCheckpoint::load(score_dir)?;
    let mut model = ck.model(&b, Weights::Ema)?;
    model.sde = ck.config.sde.with_num_steps(LEVELS).build()?;
    let clf = ClassifierCheckpoint::load(clf_dir)?.model(&b, Weights::Ema)?;
    let judge = ClassifierCheckpoint::load(judge_dir)?.model(&b, Weights::Ema)?;
    let splits = train::data::load(&ck.config.data)?;
    let range = ck.config.data.scale.range();
    let [c, h, w] = ck.image_shape;
    let k = clf.num_classes() as u32;

    // Class-conditional sampling.
    let labels: Vec<u32> = (0..k)
        .flat_map(|y| std::iter::repeat_n(y, PER_CLASS))
        .collect();
    let n = labels.len();
    let shape = Shape::new([n, c, h, w])?;
    let test_spread = class_spread(&splits.test, k, c * h * w, range);
    let mut guidance = Vec::new();
    for scale in [0.0, 1.0, 2.0, 4.0] {
        let start = Instant::now();
        let guided = Guided::new::<CpuBackend>(&model, &clf, labels.clone(), scale)?;
        let out_s = solvers::pc_sample(
            &b,
            &model.sde,
            &guided,
            &shape,
            &PcConfig::default(),
            &mut NoiseRng::new(7),
            &mut (),
        )?;
        let x = b.to_vec(&out_s.samples)?;
        let pred = judge_predict(&b, &judge, &x, &shape)?;
        let hit = pred.iter().zip(&labels).filter(|(p, y)| p == y).count();
        let spread = spread_by_label(&x, &labels, k, c * h * w, range);
        let png = out.join(format!("guided-w{scale}.png"));
        train::images::write_png_grid(&png, &x, [n, c, h, w], range, PER_CLASS)?;
        guidance.push(json!({
            "w": scale,
            "judge_accuracy": hit as f64 / n as f64,
            "diversity_vs_test": spread / test_spread,
            "nfe": out_s.nfe,
            "seconds": start.elapsed().as_secs_f64(),
            "png": png,
        }));
    }

    // Inpainting of held-out digits.
    let m = INPAINT.min(splits.test.len());
    let idx: Vec<usize> = (0..m).collect();
    let truth_labels = splits
        .test
        .labels_of(&idx)
        .ok_or("the test set has no labels")?;
    let transform = train::data::Transform {
        dequantize: false,
        random_flip: false,
        ..ck.config.data.transform()
    };
    let y = splits.test.batch(&idx, &transform, &mut NoiseRng::new(0));
    let shape = Shape::new([m, c, h, w])?;
    let mut inpainting = Vec::new();
    for mask_name in ["random:0.5", "bottom"] {
        let named: NamedMask = mask_name.parse()?;
        let plane = named.build(c, h, w, 11);
        let mask = b.tensor(plane.clone(), &Shape::new([1, c, h, w])?)?;
        let kp = KnownPixels::new(&b, b.tensor(y.clone(), &shape)?, mask)?;
        let mut rows = vec![y.clone(), masked_view(&y, &plane, range)];
        for (name, method) in [
            ("replacement", Method::Replacement),
            ("resample-5", Method::Resample { jumps: 5 }),
        ] {
            let start = Instant::now();
            let o = cond::inpaint(
                &b,
                &model.sde,
                &model,
                &kp,
                &PcConfig::default(),
                method,
                &mut NoiseRng::new(5),
                &mut (),
            )?;
            let x = b.to_vec(&o.samples)?;
            let mse = hidden_mse(&x, &y, &plane, range);
            let pred = judge_predict(&b, &judge, &x, &shape)?;
            let agree = pred
                .iter()
                .zip(&truth_labels)
                .filter(|(p, t)| p == t)
                .count();
            inpainting.push(json!({
                "mask": mask_name,
                "method": name,
                "hidden_mse": mse,
                "judge_agrees_with_label": agree as f64 / m as f64,
                "nfe": o.nfe,
                "seconds": start.elapsed().as_secs_f64(),
            }));
            rows.push(x);
        }
        // Columns: truth | masked | replacement | resampling, 10 digits.
        let shown = 10.min(m);
        let per = c * h * w;
        let mut grid = Vec::new();
        for i in 0..shown {
            for r in &rows {
                grid.extend_from_slice(&r[i * per..(i + 1) * per]);
            }
        }
        let png = out.join(format!("inpaint-{}.png", mask_name.replace(':', "-")));
        train::images::write_png_grid(
            &png,
            &grid,
            [shown * rows.len(), c, h, w],
            range,
            rows.len(),
        )?;
    }
    let judge_test = judge_predict(&b, &judge, &y, &shape)?
        .iter()
        .zip(&truth_labels)
        .filter(|(p, t)| p == t)
        .count() as f64
        / m as f64;
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "levels": LEVELS,
            "per_class": PER_CLASS,
            "judge_accuracy_on_clean_test_digits": judge_test,
            "guidance": guidance,
            "inpainting": inpainting,
        }))?
    );
    Ok(())
}

/// The judge's class for each image, at the smallest sampling time.
fn judge_predict(
    b: &CpuBackend,
    judge: &ClassifierModel<CpuBackend, AnySde>,
    x: &[f32],
    shape: &Shape,
) -> Result<Vec<u32>, Error> {
    let t = vec![judge.sde.default_sampling_eps(); shape.batch()];
    Ok(judge.predict(b, &b.tensor(x.to_vec(), shape)?, &t)?)
}

/// Mean pairwise distance between images of the same label, in [0, 1] units.
fn spread_by_label(x: &[f32], labels: &[u32], k: u32, per: usize, range: (f64, f64)) -> f64 {
    let scale = 1.0 / (range.1 - range.0);
    let (mut sum, mut count) = (0.0, 0usize);
    for y in 0..k {
        let members: Vec<&[f32]> = labels
            .iter()
            .enumerate()
            .filter(|(_, &l)| l == y)
            .map(|(i, _)| &x[i * per..(i + 1) * per])
            .collect();
        for i in 0..members.len() {
            for j in i + 1..members.len() {
                let d: f64 = members[i]
                    .iter()
                    .zip(members[j])
                    .map(|(a, b)| ((a - b) as f64 * scale).powi(2))
                    .sum();
                sum += d.sqrt();
                count += 1;
            }
        }
    }
    sum / count.max(1) as f64
}

/// [`spread_by_label`] of the labelled test set.
fn class_spread(set: &train::ImageSet, k: u32, per: usize, range: (f64, f64)) -> f64 {
    let idx: Vec<usize> = (0..set.len()).collect();
    let labels = set.labels_of(&idx).unwrap_or_default();
    let t = train::data::Transform {
        scale: if range.0 < 0.0 {
            train::data::Scale::MinusOneOne
        } else {
            train::data::Scale::ZeroOne
        },
        dequantize: false,
        random_flip: false,
    };
    let x = set.batch(&idx, &t, &mut NoiseRng::new(0));
    spread_by_label(&x, &labels, k, per, range)
}

/// The images with unknown pixels shown mid-grey.
fn masked_view(y: &[f32], mask: &[f32], range: (f64, f64)) -> Vec<f32> {
    let mid = ((range.0 + range.1) / 2.0) as f32;
    y.iter()
        .enumerate()
        .map(|(i, &v)| if mask[i % mask.len()] == 1.0 { v } else { mid })
        .collect()
}

/// Mean squared error on the hidden pixels, in [0, 1] units.
fn hidden_mse(x: &[f32], y: &[f32], mask: &[f32], range: (f64, f64)) -> f64 {
    let scale = 1.0 / (range.1 - range.0);
    let (mut sum, mut n) = (0.0, 0usize);
    for (i, (a, b)) in x.iter().zip(y).enumerate() {
        if mask[i % mask.len()] == 0.0 {
            sum += ((a - b) as f64 * scale).powi(2);
            n += 1;
        }
    }
    sum / n.max(1) as f64
}
