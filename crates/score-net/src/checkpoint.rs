//! Checkpoints of the UNet as `safetensors` files: one tensor per named
//! parameter (so other tools can read them), optional companion buffers with
//! the same layout under a prefix (`ema/...`, `adam.m/...`, `adam.v/...`), and
//! metadata holding the format tag, the `UnetConfig` (JSON), the image size,
//! the seed of the fixed Fourier frequencies, the storage dtype and any extra
//! entries of the caller (the trainer stores the SDE, step, RNG state there).
//!
//! Files are written atomically (temporary file, fsync, rename), so an
//! interrupted write never leaves a broken checkpoint under the final name.
//! Loading rebuilds the network from the stored configuration and checks
//! every tensor's name, dtype and shape; anything missing, extra, truncated or
//! mismatched is a [`NetError::Checkpoint`] naming what is wrong.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use half::f16;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::params::flat_len;
use crate::unet::{Unet, UnetConfig};
use crate::{ParamBuilder, Result, View};

/// The format tag stored in every checkpoint.
pub const FORMAT: &str = "score-sde-rs/unet/1";

/// How parameters are stored on disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StorageDtype {
    /// 32-bit floats (bit-exact round trip).
    #[default]
    F32,
    /// 16-bit floats (half the size; values rounded to f16).
    F16,
}

/// The contents of a checkpoint file.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint {
    /// The network configuration.
    pub config: UnetConfig,
    /// The image height the network was built for.
    pub image_size: usize,
    /// The seed of the network's fixed Fourier frequencies.
    pub seed: u64,
    /// How the file stored the values.
    pub dtype: StorageDtype,
    /// Flat buffers in the parameter layout: `"params"` always, plus any
    /// companions (`"ema"`, `"adam.m"`, ...), in file order of their names.
    pub buffers: Vec<(String, Vec<f32>)>,
    /// The caller's extra metadata.
    pub extra: HashMap<String, String>,
}

impl Checkpoint {
    /// The flat buffer named `name`.
    pub fn buffer(&self, name: &str) -> Option<&[f32]> {
        self.buffers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Rebuilds the network the checkpoint was written from.
    pub fn build_net(&self) -> Result<(Unet, Vec<(String, View)>)> {
        let mut pb = ParamBuilder::new();
        let net = Unet::new(&self.config, self.image_size, &mut pb, self.seed)?;
        let layout = layout_of(&pb);
        Ok((net, layout))
    }
}

fn layout_of(pb: &ParamBuilder) -> Vec<(String, View)> {
    pb.views()
        .map(|(n, v)| (n.to_string(), v.clone()))
        .collect()
}

fn tensor_name(buffer: &str, param: &str) -> String {
    if buffer == "params" {
        param.to_string()
    } else {
        format!("{buffer}/{param}")
    }
}

fn bad(path: &Path, reason: impl Into<String>) -> NetError {
    NetError::Checkpoint {
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

/// Writes `buffers` (each laid out like the network's parameters; the first
/// must be named `"params"`) with `extra` metadata to `path`, atomically.
pub fn save(
    path: &Path,
    net: &Unet,
    layout: &[(String, View)],
    buffers: &[(&str, &[f32])],
    dtype: StorageDtype,
    extra: &HashMap<String, String>,
) -> Result<()> {
    if buffers.first().map(|(n, _)| *n) != Some("params") {
        return Err(bad(path, "the first buffer must be \"params\""));
    }
    let total = flat_len(layout.iter().map(|(_, v)| v));
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, data) in buffers {
        if name.contains('/') || name.is_empty() {
            return Err(bad(path, format!("invalid buffer name {name:?}")));
        }
        if data.len() != total {
            return Err(bad(
                path,
                format!(
                    "buffer {name} has {} values, the layout {total}",
                    data.len()
                ),
            ));
        }
        for (pname, view) in layout {
            let vals = &data[view.range()];
            let raw: Vec<u8> = match dtype {
                StorageDtype::F32 => vals.iter().flat_map(|v| v.to_le_bytes()).collect(),
                StorageDtype::F16 => vals
                    .iter()
                    .flat_map(|v| f16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            bytes.push((tensor_name(name, pname), view.shape.clone(), raw));
        }
    }
    let st_dtype = match dtype {
        StorageDtype::F32 => Dtype::F32,
        StorageDtype::F16 => Dtype::F16,
    };
    let mut views = Vec::with_capacity(bytes.len());
    for (n, shape, raw) in &bytes {
        let v =
            TensorView::new(st_dtype, shape.clone(), raw).map_err(|e| bad(path, e.to_string()))?;
        views.push((n.clone(), v));
    }
    let config = serde_json::to_string(net.config()).map_err(|e| bad(path, e.to_string()))?;
    let mut meta: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| (format!("extra.{k}"), v.clone()))
        .collect();
    meta.insert("format".into(), FORMAT.into());
    meta.insert("config".into(), config);
    meta.insert("image_size".into(), net.image_size().to_string());
    meta.insert("seed".into(), net.seed().to_string());
    meta.insert("dtype".into(), format!("{dtype:?}"));
    let buffer_names: Vec<&str> = buffers.iter().map(|(n, _)| *n).collect();
    meta.insert("buffers".into(), buffer_names.join(","));
    let out = safetensors::serialize(views, Some(meta)).map_err(|e| bad(path, e.to_string()))?;
    write_atomic(path, &out)
}

/// Writes `bytes` to a temporary file beside `path`, syncs it, and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| NetError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)
}

/// Reads and validates a checkpoint.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let raw = std::fs::read(path).map_err(|source| NetError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let st = SafeTensors::deserialize(&raw)
        .map_err(|e| bad(path, format!("not a valid safetensors file ({e})")))?;
    let (_, meta) = SafeTensors::read_metadata(&raw).map_err(|e| bad(path, e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |k: &str| {
        meta.get(k)
            .ok_or_else(|| bad(path, format!("metadata has no {k:?}")))
    };
    let format = get("format")?;
    if format != FORMAT {
        return Err(bad(path, format!("format {format:?}, expected {FORMAT:?}")));
    }
    let config: UnetConfig =
        serde_json::from_str(get("config")?).map_err(|e| bad(path, format!("config: {e}")))?;
    let image_size: usize = get("image_size")?
        .parse()
        .map_err(|_| bad(path, "image_size is not a number"))?;
    let seed: u64 = get("seed")?
        .parse()
        .map_err(|_| bad(path, "seed is not a number"))?;
    let dtype = match get("dtype")?.as_str() {
        "F32" => StorageDtype::F32,
        "F16" => StorageDtype::F16,
        other => return Err(bad(path, format!("unknown dtype {other:?}"))),
    };
    let names: Vec<String> = get("buffers")?.split(',').map(str::to_string).collect();
    let mut pb = ParamBuilder::new();
    Unet::new(&config, image_size, &mut pb, seed)
        .map_err(|e| bad(path, format!("stored configuration is invalid: {e}")))?;
    let layout = layout_of(&pb);
    let total = flat_len(layout.iter().map(|(_, v)| v));
    let expected_dtype = match dtype {
        StorageDtype::F32 => Dtype::F32,
        StorageDtype::F16 => Dtype::F16,
    };
    let mut buffers = Vec::with_capacity(names.len());
    for bname in &names {
        let mut flat = vec![0.0f32; total];
        for (pname, view) in &layout {
            let tname = tensor_name(bname, pname);
            let t = st
                .tensor(&tname)
                .map_err(|_| bad(path, format!("tensor {tname:?} is missing")))?;
            if t.dtype() != expected_dtype {
                return Err(bad(
                    path,
                    format!(
                        "tensor {tname:?} has dtype {:?}, expected {expected_dtype:?}",
                        t.dtype()
                    ),
                ));
            }
            if t.shape() != view.shape.as_slice() {
                return Err(bad(
                    path,
                    format!(
                        "tensor {tname:?} has shape {:?}, the model needs {:?}",
                        t.shape(),
                        view.shape
                    ),
                ));
            }
            let dst = &mut flat[view.range()];
            match dtype {
                StorageDtype::F32 => {
                    for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(4)) {
                        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    }
                }
                StorageDtype::F16 => {
                    for (d, c) in dst.iter_mut().zip(t.data().chunks_exact(2)) {
                        *d = f16::from_le_bytes([c[0], c[1]]).to_f32();
                    }
                }
            }
        }
        buffers.push((bname.clone(), flat));
    }
    let expected = names.len() * layout.len();
    if st.len() != expected {
        return Err(bad(
            path,
            format!(
                "{} tensors, expected {expected}: the file holds tensors the model does not have",
                st.len()
            ),
        ));
    }
    if buffers.first().map(|(n, _)| n.as_str()) != Some("params") {
        return Err(bad(path, "no \"params\" buffer"));
    }
    let extra = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("extra.").map(|k| (k.to_string(), v.clone())))
        .collect();
    Ok(Checkpoint {
        config,
        image_size,
        seed,
        dtype,
        buffers,
        extra,
    })
}
