//! Checkpoints: bit-exact round trips, f16 storage, companion buffers, and
//! typed errors for missing, truncated, corrupt and mismatched files.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;

use score_net::checkpoint::{self, StorageDtype};
use score_net::{NetError, ParamBuilder, Unet, UnetConfig, UnetScore};
use sde_core::{Backend, CpuBackend, ScoreModel, VpSde};

fn cfg() -> UnetConfig {
    UnetConfig {
        base_channels: 8,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![4],
        ..UnetConfig::default()
    }
}

fn model() -> UnetScore<CpuBackend, VpSde> {
    let b = CpuBackend;
    let mut m = UnetScore::new(&b, &cfg(), 8, VpSde::new(0.1, 20.0, 1000).unwrap(), 5).unwrap();
    let n = m.store.params().data().len();
    m.store.set_params(&b, common::randn(&[n], 3, 0.5)).unwrap();
    m
}

/// A path in a directory of this test's own (tests run in parallel).
fn tmp(name: &str) -> std::path::PathBuf {
    let test = std::thread::current()
        .name()
        .unwrap_or("main")
        .replace("::", "-");
    let dir = std::env::temp_dir().join(format!("score-net-ckpt-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

#[test]
fn f32_round_trip_is_bit_exact_and_keeps_metadata() {
    let b = CpuBackend;
    let m = model();
    let path = tmp("rt.safetensors");
    let extra = HashMap::from([("step".to_string(), "1234".to_string())]);
    m.save(&b, &path, StorageDtype::F32, &extra).unwrap();
    assert!(
        !path.with_extension("safetensors.tmp").exists(),
        "temporary file left behind"
    );
    let ck = checkpoint::load::<Unet>(&path).unwrap();
    assert_eq!(ck.config, cfg());
    assert_eq!(
        (ck.image_size, ck.seed, ck.dtype),
        (8, 5, StorageDtype::F32)
    );
    assert_eq!(ck.extra.get("step").map(String::as_str), Some("1234"));
    assert_eq!(
        ck.buffer("params").unwrap(),
        m.store.params().data(),
        "not bit-exact"
    );
    let back = UnetScore::from_checkpoint(&b, &ck, VpSde::new(0.1, 20.0, 1000).unwrap()).unwrap();
    let x = common::randn(&[2, 1, 8, 8], 9, 1.0);
    let t = [0.3, 0.7];
    assert_eq!(
        m.score(&b, &x, &t).unwrap().data(),
        back.score(&b, &x, &t).unwrap().data()
    );
    let mut fresh = UnetScore::new(&b, &cfg(), 8, VpSde::new(0.1, 20.0, 1000).unwrap(), 5).unwrap();
    fresh.load_params(&b, &path).unwrap();
    assert_eq!(fresh.store.params().data(), m.store.params().data());
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

#[test]
fn f16_storage_and_companion_buffers() {
    let b = CpuBackend;
    let m = model();
    let p = m.store.params().data().to_vec();
    let ema: Vec<f32> = p.iter().map(|v| v * 0.5).collect();
    let layout = m.store.layout();
    let (p32, p16) = (tmp("full.safetensors"), tmp("half.safetensors"));
    let bufs: [(&str, &[f32]); 2] = [("params", &p), ("ema", &ema)];
    checkpoint::save(
        &p32,
        &m.net,
        &layout,
        &bufs,
        StorageDtype::F32,
        &HashMap::new(),
    )
    .unwrap();
    checkpoint::save(
        &p16,
        &m.net,
        &layout,
        &bufs,
        StorageDtype::F16,
        &HashMap::new(),
    )
    .unwrap();
    let full = checkpoint::load::<Unet>(&p32).unwrap();
    assert_eq!(full.buffer("ema").unwrap(), ema.as_slice());
    let half = checkpoint::load::<Unet>(&p16).unwrap();
    assert_eq!(half.dtype, StorageDtype::F16);
    for (a, b) in half.buffer("params").unwrap().iter().zip(&p) {
        assert!((a - b).abs() <= 1e-3 * b.abs().max(6e-5), "{a} vs {b}");
    }
    let (s32, s16) = (
        std::fs::metadata(&p32).unwrap().len(),
        std::fs::metadata(&p16).unwrap().len(),
    );
    assert!(s16 * 10 < s32 * 6, "f16 file {s16} bytes vs f32 {s32}");
    let _ = b.name();
    let _ = std::fs::remove_dir_all(p32.parent().unwrap());
}

#[test]
fn bad_files_are_typed_errors() {
    let b = CpuBackend;
    let m = model();
    let path = tmp("good.safetensors");
    m.save(&b, &path, StorageDtype::F32, &HashMap::new())
        .unwrap();
    let bytes = std::fs::read(&path).unwrap();
    // Missing file.
    assert!(matches!(
        checkpoint::load::<Unet>(&tmp("nope.safetensors")),
        Err(NetError::Io { .. })
    ));
    // Truncated at several points, and garbage.
    for cut in [4, 100, bytes.len() / 2, bytes.len() - 1] {
        let p = tmp("cut.safetensors");
        std::fs::write(&p, &bytes[..cut]).unwrap();
        assert!(
            matches!(
                checkpoint::load::<Unet>(&p),
                Err(NetError::Checkpoint { .. })
            ),
            "cut at {cut}"
        );
    }
    let p = tmp("garbage.safetensors");
    std::fs::write(&p, b"definitely not a checkpoint").unwrap();
    assert!(matches!(
        checkpoint::load::<Unet>(&p),
        Err(NetError::Checkpoint { .. })
    ));
    // A model with another configuration refuses the file, naming the reason.
    let other_cfg = UnetConfig {
        base_channels: 12,
        ..cfg()
    };
    let mut other =
        UnetScore::new(&b, &other_cfg, 8, VpSde::new(0.1, 20.0, 1000).unwrap(), 5).unwrap();
    match other.load_params(&b, &path) {
        Err(NetError::Checkpoint { reason, .. }) => {
            assert!(reason.contains("configuration"), "{reason}")
        }
        r => panic!("expected a configuration mismatch, got {r:?}"),
    }
    let mut other_size =
        UnetScore::new(&b, &cfg(), 16, VpSde::new(0.1, 20.0, 1000).unwrap(), 5).unwrap();
    assert!(matches!(
        other_size.load_params(&b, &path),
        Err(NetError::Checkpoint { .. })
    ));
    // A file whose tensors do not match its stored configuration (written for
    // another network but labelled with this one's config).
    let mut pb = ParamBuilder::new();
    let small = Unet::new(
        &UnetConfig {
            base_channels: 4,
            ..cfg()
        },
        8,
        &mut pb,
        5,
    )
    .unwrap();
    let layout = pb.layout();
    let total: usize = layout.iter().map(|(_, v)| v.numel()).sum();
    let p = tmp("mismatch.safetensors");
    checkpoint::save(
        &p,
        &small,
        &layout,
        &[("params", &vec![0.0; total])],
        StorageDtype::F32,
        &HashMap::new(),
    )
    .unwrap();
    // Relabel: patch the header's config to the 8-channel one (same length,
    // so the byte offsets stay valid).
    let mut raw = std::fs::read(&p).unwrap();
    let (from, to) = (br#"\"base_channels\":4"#, br#"\"base_channels\":8"#);
    let at = raw
        .windows(from.len())
        .position(|w| w == from)
        .expect("config in header");
    raw[at..at + to.len()].copy_from_slice(to);
    std::fs::write(&p, &raw).unwrap();
    match checkpoint::load::<Unet>(&p) {
        Err(NetError::Checkpoint { reason, .. }) => assert!(
            reason.contains("shape") || reason.contains("missing"),
            "{reason}"
        ),
        r => panic!("expected a shape mismatch, got {r:?}"),
    }
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}

/// The tiny network of `tests/data/unet-v1-f16.safetensors`.
fn v1_config() -> UnetConfig {
    UnetConfig {
        base_channels: 4,
        channel_mult: vec![1, 2],
        num_res_blocks: 1,
        attn_resolutions: vec![2],
        ..UnetConfig::default()
    }
}

/// `tests/data/unet-v1-f16.safetensors` was written by the checkpoint code
/// before the container refactor (commit bfc00db): the v1 UNet format, f16
/// storage, params + an `ema` buffer (`0.5 p + 0.25`), one extra entry. It
/// must keep loading, value for value.
#[test]
fn files_written_before_the_container_refactor_still_load() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/unet-v1-f16.safetensors");
    assert_eq!(
        checkpoint::peek_format(&path).unwrap(),
        score_net::unet::FORMAT
    );
    let ck = checkpoint::load::<Unet>(&path).unwrap();
    assert_eq!(ck.config, v1_config());
    assert_eq!(
        (ck.image_size, ck.seed, ck.dtype),
        (4, 11, StorageDtype::F16)
    );
    assert_eq!(
        ck.extra.get("note").map(String::as_str),
        Some("written by bfc00db")
    );
    let mut pb = ParamBuilder::new();
    Unet::new(&v1_config(), 4, &mut pb, 11).unwrap();
    let p = pb.build(&CpuBackend, 11).unwrap().params().data().to_vec();
    let f16 = |v: f32| half::f16::from_f32(v).to_f32();
    let want: Vec<f32> = p.iter().map(|&v| f16(v)).collect();
    assert_eq!(ck.buffer("params").unwrap(), want.as_slice());
    let want_ema: Vec<f32> = p.iter().map(|&v| f16(v * 0.5 + 0.25)).collect();
    assert_eq!(ck.buffer("ema").unwrap(), want_ema.as_slice());
    // And the model built from it scores like a model holding those values.
    let b = CpuBackend;
    let sde = VpSde::new(0.1, 20.0, 1000).unwrap();
    let back = UnetScore::from_checkpoint(&b, &ck, sde.clone()).unwrap();
    let mut same = UnetScore::new(&b, &v1_config(), 4, sde, 11).unwrap();
    same.store.set_params_from_host(&b, &want).unwrap();
    let x = common::randn(&[2, 1, 4, 4], 2, 1.0);
    assert_eq!(
        back.score(&b, &x, &[0.2, 0.9]).unwrap().data(),
        same.score(&b, &x, &[0.2, 0.9]).unwrap().data()
    );
}

/// A file of another network, or of another version of the UNet format, is
/// refused with a message naming what it is.
#[test]
fn other_formats_are_refused_by_name() {
    let m = model();
    let layout = m.store.layout();
    let p = m.store.params().data().to_vec();
    let meta = HashMap::from([
        ("config".to_string(), serde_json::to_string(&cfg()).unwrap()),
        ("image_size".to_string(), "8".to_string()),
        ("seed".to_string(), "5".to_string()),
    ]);
    for (format, expect) in [
        ("score-sde-rs/unet/2", "version 2 of the score UNet"),
        ("score-sde-rs/classifier/1", "not a score UNet checkpoint"),
    ] {
        let path = tmp(&format!("{}.safetensors", format.replace('/', "_")));
        checkpoint::save_container(
            &path,
            format,
            &meta,
            &layout,
            &[("params", &p)],
            StorageDtype::F32,
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(checkpoint::peek_format(&path).unwrap(), format);
        match checkpoint::load::<Unet>(&path) {
            Err(NetError::Checkpoint { reason, .. }) => {
                assert!(reason.contains(expect), "{format}: {reason}")
            }
            r => panic!("{format}: expected a format error, got {r:?}"),
        }
        // The container itself reads any format, with the network's entries.
        let c = checkpoint::load_container(&path, |f, meta| {
            assert_eq!(
                (f, meta.get("seed").map(String::as_str)),
                (format, Some("5"))
            );
            Ok(layout.clone())
        })
        .unwrap();
        assert_eq!(
            (c.format.as_str(), c.buffer("params")),
            (format, Some(p.as_slice()))
        );
        assert!(!c.meta.contains_key("format") && !c.meta.contains_key("buffers"));
    }
    // The container's own keys cannot be overwritten by a network's entries.
    let reserved = HashMap::from([("dtype".to_string(), "F64".to_string())]);
    assert!(checkpoint::save_container(
        &tmp("reserved.safetensors"),
        "x/y/1",
        &reserved,
        &layout,
        &[("params", &p)],
        StorageDtype::F32,
        &HashMap::new(),
    )
    .is_err());
    let _ = std::fs::remove_dir_all(tmp("x").parent().unwrap());
}

/// Equal contents give equal bytes: the header's metadata is written in
/// sorted key order (its map's iteration order is random per map), with many
/// extra keys so that two random orders would almost surely differ; and the
/// file still loads.
#[test]
fn equal_checkpoints_are_byte_identical() {
    let b = CpuBackend;
    let m = model();
    let extra: HashMap<String, String> = (0..24)
        .map(|i| (format!("key{i}"), format!("value {i}")))
        .collect();
    let (p1, p2) = (tmp("a.safetensors"), tmp("b.safetensors"));
    m.save(&b, &p1, StorageDtype::F32, &extra).unwrap();
    // A map built in another order holds the same contents.
    let again: HashMap<String, String> = (0..24)
        .rev()
        .map(|i| (format!("key{i}"), format!("value {i}")))
        .collect();
    m.save(&b, &p2, StorageDtype::F32, &again).unwrap();
    assert_eq!(std::fs::read(&p1).unwrap(), std::fs::read(&p2).unwrap());
    let ck = checkpoint::load::<Unet>(&p2).unwrap();
    assert_eq!(ck.extra.get("key7").map(String::as_str), Some("value 7"));
    let _ = std::fs::remove_dir_all(p1.parent().unwrap());
}

/// Corrupt tensor data are an error naming the file (the data's checksum is
/// stored in the header), not a silently different model; the intact file
/// loads.
#[test]
fn corrupt_tensor_data_are_detected() {
    let b = CpuBackend;
    let m = model();
    let path = tmp("c.safetensors");
    m.save(&b, &path, StorageDtype::F32, &HashMap::new())
        .unwrap();
    let good = std::fs::read(&path).unwrap();
    checkpoint::load::<Unet>(&path).unwrap();
    // Flip 400 bytes at the end of the file (tensor data).
    let mut bad = good.clone();
    let n = bad.len();
    for byte in &mut bad[n - 400..] {
        *byte ^= 0x5a;
    }
    std::fs::write(&path, &bad).unwrap();
    let err = checkpoint::load::<Unet>(&path).unwrap_err().to_string();
    assert!(
        err.contains("corrupt") && err.contains("c.safetensors"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(path.parent().unwrap());
}
