//! The score network's conditioning (time input and output scale) as
//! configuration fields: unset, it is the paper's choice for the SDE family
//! (so configurations and checkpoints written before the fields existed mean
//! what they meant); set, it is used whatever the SDE.
#![allow(clippy::unwrap_used)]

use score_net::{Conditioning, Embedding, OutputScale, TimeInput, UnetConfig, UnetScore};
use sde_core::{AnySde, Backend, CpuBackend, NoiseRng, ScoreModel, SdeConfig, SdeKind, Shape};

fn cfg(embedding: Embedding) -> UnetConfig {
    UnetConfig {
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![],
        dropout: 0.0,
        embedding,
        ..UnetConfig::default()
    }
}

fn score(cfg: &UnetConfig, sde: &AnySde) -> Vec<f32> {
    let b = CpuBackend;
    let model = UnetScore::new(&b, cfg, 8, sde.clone(), 7).unwrap();
    let x = b
        .gaussian(
            &Shape::new([3, 1, 8, 8]).unwrap(),
            NoiseRng::new(2).next_key(),
        )
        .unwrap();
    b.to_vec(&model.score(&b, &x, &[0.2, 0.5, 0.9]).unwrap())
        .unwrap()
}

#[test]
fn unset_conditioning_is_the_papers_and_explicit_fields_are_used() {
    for (kind, embedding, time_input, output) in [
        (
            SdeKind::Vp,
            Embedding::Positional,
            TimeInput::DdpmSteps,
            OutputScale::Noise,
        ),
        (
            SdeKind::SubVp,
            Embedding::Fourier,
            TimeInput::DdpmSteps,
            OutputScale::Noise,
        ),
        (
            SdeKind::Cosine,
            Embedding::Positional,
            TimeInput::DdpmSteps,
            OutputScale::Noise,
        ),
        (
            SdeKind::Ve,
            Embedding::Positional,
            TimeInput::NoiseStd,
            OutputScale::ScaledScore,
        ),
        (
            SdeKind::Ve,
            Embedding::Fourier,
            TimeInput::LogNoiseStd,
            OutputScale::ScaledScore,
        ),
    ] {
        let sde = SdeConfig::default_for(kind).build().unwrap();
        let unset = cfg(embedding);
        assert_eq!(
            unset.conditioning(kind),
            Conditioning { time_input, output }
        );
        let recorded = unset.with_conditioning_for(kind);
        assert_eq!(
            (recorded.time_input, recorded.output),
            (Some(time_input), Some(output))
        );
        let a = score(&unset, &sde);
        assert_eq!(a, score(&recorded, &sde), "{kind} {embedding:?}");
        // The other output scale negates the score.
        let flipped = UnetConfig {
            output: Some(match output {
                OutputScale::Noise => OutputScale::ScaledScore,
                OutputScale::ScaledScore => OutputScale::Noise,
            }),
            ..recorded.clone()
        };
        let b = score(&flipped, &sde);
        assert!(a.iter().zip(&b).all(|(x, y)| *x == -*y), "{kind}");
        // Another time input changes the output (the network is conditioned on it).
        let other = UnetConfig {
            time_input: Some(match time_input {
                TimeInput::DdpmSteps => TimeInput::NoiseStd,
                _ => TimeInput::DdpmSteps,
            }),
            ..recorded
        };
        assert_ne!(a, score(&other, &sde), "{kind}");
    }
}

#[test]
fn conditioning_fields_read_from_toml_and_are_omitted_when_unset() {
    let c: UnetConfig = toml::from_str(
        "base_channels = 8\ntime_input = \"log-noise-std\"\noutput = \"scaled-score\"\n",
    )
    .unwrap();
    assert_eq!(c.time_input, Some(TimeInput::LogNoiseStd));
    assert_eq!(c.output, Some(OutputScale::ScaledScore));
    let text = toml::to_string(&UnetConfig::default()).unwrap();
    assert!(
        !text.contains("time_input") && !text.contains("output"),
        "{text}"
    );
    assert!(toml::from_str::<UnetConfig>("time_input = \"seconds\"\n").is_err());
}
