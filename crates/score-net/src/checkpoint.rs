//! Checkpoints as `safetensors` files, in two layers.
//!
//! The container ([`save_container`] / [`load_container`]) knows no network:
//! a format tag, the network's own metadata entries, named flat buffers laid
//! out by a list of named [`View`]s (one tensor per view, so other tools can
//! read them; the buffer `"params"` under the plain names, companions such as
//! `ema`, `adam.m`, `adam.v` under `"<buffer>/<name>"`), the storage dtype,
//! and the caller's extra entries (stored as `extra.<key>`).
//!
//! The typed layer ([`save`] / [`load`]) stores any [`Network`]: its
//! [`Network::FORMAT`] tag, its configuration as JSON, the image size and the
//! seed; loading refuses another network's file by name (or another format
//! version of the same network), rebuilds the network from the stored
//! configuration and checks every tensor's name, dtype and shape against it.
//!
//! Files are written atomically (temporary file, fsync, rename), so an
//! interrupted write never leaves a broken checkpoint under the final name.
//! Anything missing, extra, truncated or mismatched is a
//! [`NetError::Checkpoint`] naming what is wrong.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use half::f16;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use crate::error::NetError;
use crate::network::Network;
use crate::params::flat_len;
use crate::{ParamBuilder, Result, View};

/// Metadata keys the container itself writes (a network's entries may not use them).
const RESERVED: [&str; 3] = ["format", "dtype", "buffers"];

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

impl StorageDtype {
    fn safetensors(self) -> Dtype {
        match self {
            StorageDtype::F32 => Dtype::F32,
            StorageDtype::F16 => Dtype::F16,
        }
    }
}

/// A checkpoint file read back without knowing its network.
#[derive(Clone, Debug, PartialEq)]
pub struct Container {
    /// The format tag.
    pub format: String,
    /// The network's metadata entries (the container's own and the extra
    /// entries removed).
    pub meta: HashMap<String, String>,
    /// How the file stored the values.
    pub dtype: StorageDtype,
    /// Flat buffers in the layout: `"params"` first, then any companions, in
    /// the order they were written.
    pub buffers: Vec<(String, Vec<f32>)>,
    /// The caller's extra metadata.
    pub extra: HashMap<String, String>,
}

impl Container {
    /// The flat buffer named `name`.
    pub fn buffer(&self, name: &str) -> Option<&[f32]> {
        self.buffers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// The contents of a checkpoint of the network `N`.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpoint<N: Network> {
    /// The network configuration.
    pub config: N::Config,
    /// The image height the network was built for.
    pub image_size: usize,
    /// The seed of the initialisation and of any fixed random features.
    pub seed: u64,
    /// How the file stored the values.
    pub dtype: StorageDtype,
    /// Flat buffers in the parameter layout: `"params"` always, plus any
    /// companions (`"ema"`, `"adam.m"`, ...), in the order they were written.
    pub buffers: Vec<(String, Vec<f32>)>,
    /// The caller's extra metadata.
    pub extra: HashMap<String, String>,
}

impl<N: Network> Checkpoint<N> {
    /// The flat buffer named `name`.
    pub fn buffer(&self, name: &str) -> Option<&[f32]> {
        self.buffers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// Rebuilds the network the checkpoint was written from, with its layout.
    pub fn build_net(&self) -> Result<(N, Vec<(String, View)>)> {
        build_with_layout::<N>(&self.config, self.image_size, self.seed)
    }
}

/// Builds `N` and returns it with its named parameter views.
pub fn build_with_layout<N: Network>(
    cfg: &N::Config,
    image_size: usize,
    seed: u64,
) -> Result<(N, Vec<(String, View)>)> {
    let mut pb = ParamBuilder::new();
    let net = N::build(cfg, image_size, &mut pb, seed)?;
    Ok((net, pb.layout()))
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

/// Writes a container: `buffers` (each laid out by `layout`; the first must
/// be named `"params"`), the format tag, the network's `meta` entries and the
/// caller's `extra` entries, atomically.
pub fn save_container(
    path: &Path,
    format: &str,
    meta: &HashMap<String, String>,
    layout: &[(String, View)],
    buffers: &[(&str, &[f32])],
    dtype: StorageDtype,
    extra: &HashMap<String, String>,
) -> Result<()> {
    if buffers.first().map(|(n, _)| *n) != Some("params") {
        return Err(bad(path, "the first buffer must be \"params\""));
    }
    if let Some(k) = meta
        .keys()
        .find(|k| RESERVED.contains(&k.as_str()) || k.starts_with("extra."))
    {
        return Err(bad(path, format!("metadata key {k:?} is reserved")));
    }
    let total = flat_len(layout.iter().map(|(_, v)| v));
    let mut bytes: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, data) in buffers {
        if name.contains('/') || name.contains(',') || name.is_empty() {
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
    let mut views = Vec::with_capacity(bytes.len());
    for (n, shape, raw) in &bytes {
        let v = TensorView::new(dtype.safetensors(), shape.clone(), raw)
            .map_err(|e| bad(path, e.to_string()))?;
        views.push((n.clone(), v));
    }
    let mut all: HashMap<String, String> = extra
        .iter()
        .map(|(k, v)| (format!("extra.{k}"), v.clone()))
        .collect();
    all.extend(meta.iter().map(|(k, v)| (k.clone(), v.clone())));
    all.insert("format".into(), format.into());
    all.insert("dtype".into(), format!("{dtype:?}"));
    let buffer_names: Vec<&str> = buffers.iter().map(|(n, _)| *n).collect();
    all.insert("buffers".into(), buffer_names.join(","));
    let out = safetensors::serialize(views, Some(all)).map_err(|e| bad(path, e.to_string()))?;
    write_atomic(path, &finish_file(out))
}

/// The metadata key of the tensor data's checksum.
const CHECKSUM_KEY: &str = "checksum";

/// FNV-1a (64 bit) of `bytes`, as the checksum's text `fnv1a64:<hex>`.
fn checksum(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

/// The header length and the data section of a safetensors file, if the
/// file is long enough to hold what its first 8 bytes announce.
fn split_file(file: &[u8]) -> Option<(usize, &[u8])> {
    let len = usize::try_from(u64::from_le_bytes(file.get(..8)?.try_into().ok()?)).ok()?;
    let data = file.get(8usize.checked_add(len)?..)?;
    Some((len, data))
}

/// The same safetensors file with the checksum of its tensor data in the
/// header's metadata and the header's keys in sorted order, so that equal
/// contents give equal bytes (the metadata map comes out of a `HashMap` in a
/// per-process random order). The header is re-serialised compactly and
/// padded with spaces to a multiple of 8 bytes, as the format does; a file
/// that does not parse is returned as is.
fn finish_file(file: Vec<u8>) -> Vec<u8> {
    let Some((len, data)) = split_file(&file) else {
        return file;
    };
    let Ok(mut header) = serde_json::from_slice::<serde_json::Value>(&file[8..8 + len]) else {
        return file;
    };
    if let Some(meta) = header
        .get_mut("__metadata__")
        .and_then(serde_json::Value::as_object_mut)
    {
        meta.insert(CHECKSUM_KEY.into(), checksum(data).into());
    }
    // serde_json's map is ordered by key.
    let Ok(mut json) = serde_json::to_vec(&header) else {
        return file;
    };
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let mut out = Vec::with_capacity(8 + json.len() + data.len());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(data);
    out
}

/// Checks the tensor data of `raw` against the checksum in its metadata
/// (removed from `meta`); files written before checksums were stored have
/// none and are not checked.
fn verify_checksum(path: &Path, raw: &[u8], meta: &mut HashMap<String, String>) -> Result<()> {
    let Some(want) = meta.remove(CHECKSUM_KEY) else {
        return Ok(());
    };
    let (_, data) = split_file(raw).ok_or_else(|| bad(path, "truncated file"))?;
    let got = checksum(data);
    if got != want {
        return Err(bad(
            path,
            format!(
                "the tensor data are corrupt: checksum {got}, the file records {want} \
                 (restore the file or use another checkpoint)"
            ),
        ));
    }
    Ok(())
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

/// Reads the file and its header metadata.
/// Reads the file and parses its header (the tensors are checked by
/// [`load_container`]).
fn read_file(path: &Path) -> Result<(Vec<u8>, HashMap<String, String>)> {
    let raw = std::fs::read(path).map_err(|source| NetError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let (_, meta) = SafeTensors::read_metadata(&raw)
        .map_err(|e| bad(path, format!("not a valid safetensors file ({e})")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    Ok((raw, meta))
}

/// The format tag of the checkpoint at `path` (to tell which network it
/// holds), from the file's header.
pub fn peek_format(path: &Path) -> Result<String> {
    let (_, meta) = read_file(path)?;
    meta.get("format").cloned().ok_or_else(|| {
        bad(
            path,
            "metadata has no \"format\": not a checkpoint of this project",
        )
    })
}

/// Reads and validates a container. `layout_for` receives the format tag and
/// the network's metadata entries and returns the parameter layout the
/// buffers must follow (or an error, e.g. for a format it does not read).
pub fn load_container(
    path: &Path,
    layout_for: impl FnOnce(&str, &HashMap<String, String>) -> Result<Vec<(String, View)>>,
) -> Result<Container> {
    let (raw, mut meta) = read_file(path)?;
    verify_checksum(path, &raw, &mut meta)?;
    let st = SafeTensors::deserialize(&raw)
        .map_err(|e| bad(path, format!("not a valid safetensors file ({e})")))?;
    let mut take = |k: &str| {
        meta.remove(k).ok_or_else(|| {
            bad(
                path,
                format!("metadata has no {k:?}: not a checkpoint of this project"),
            )
        })
    };
    let format = take("format")?;
    let dtype = match take("dtype")?.as_str() {
        "F32" => StorageDtype::F32,
        "F16" => StorageDtype::F16,
        other => return Err(bad(path, format!("unknown dtype {other:?}"))),
    };
    let names: Vec<String> = take("buffers")?.split(',').map(str::to_string).collect();
    let extra: HashMap<String, String> = meta
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("extra.").map(|k| (k.to_string(), v.clone())))
        .collect();
    meta.retain(|k, _| !k.starts_with("extra."));
    let layout = layout_for(&format, &meta)?;
    let total = flat_len(layout.iter().map(|(_, v)| v));
    let expected_dtype = dtype.safetensors();
    let mut buffers = Vec::with_capacity(names.len());
    for bname in &names {
        // Every tensor is checked before the buffer is allocated, so a header
        // describing a huge network cannot make us allocate more than the
        // file holds.
        let mut tensors = Vec::with_capacity(layout.len());
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
            tensors.push((view, t));
        }
        let mut flat = vec![0.0f32; total];
        for (view, t) in tensors {
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
    Ok(Container {
        format,
        meta,
        dtype,
        buffers,
        extra,
    })
}

/// Splits `"<family>/<version>"` at the last `/`.
fn family_and_version(tag: &str) -> (&str, &str) {
    tag.rsplit_once('/').unwrap_or((tag, ""))
}

/// Why a file with format `found` cannot be read as `N`.
fn format_mismatch<N: Network>(found: &str) -> String {
    let (want_family, want_version) = family_and_version(N::FORMAT);
    let (family, version) = family_and_version(found);
    if family == want_family {
        format!(
            "format {found:?} is version {version} of the {}; this build reads version {want_version}",
            N::DESCRIPTION
        )
    } else {
        let what = KNOWN_FORMATS
            .iter()
            .find(|(tag, _)| *tag == found)
            .map(|(_, d)| format!(" is a {d} checkpoint,"))
            .unwrap_or_else(|| ":".into());
        format!(
            "format {found:?}{what} not a {} checkpoint (expected {:?})",
            N::DESCRIPTION,
            N::FORMAT
        )
    }
}

/// The networks of this crate, for naming what a refused file holds.
const KNOWN_FORMATS: [(&str, &str); 2] = [
    (crate::unet::FORMAT, "score UNet"),
    (
        crate::classifier_model::FORMAT,
        "noise-conditional classifier",
    ),
];

/// Writes `buffers` (each laid out like the network's parameters; the first
/// must be named `"params"`) with the network's description and `extra`
/// metadata to `path`, atomically.
pub fn save<N: Network>(
    path: &Path,
    net: &N,
    layout: &[(String, View)],
    buffers: &[(&str, &[f32])],
    dtype: StorageDtype,
    extra: &HashMap<String, String>,
) -> Result<()> {
    let config = serde_json::to_string(net.config()).map_err(|e| bad(path, e.to_string()))?;
    let meta = HashMap::from([
        ("config".to_string(), config),
        ("image_size".to_string(), net.image_size().to_string()),
        ("seed".to_string(), net.seed().to_string()),
    ]);
    save_container(path, N::FORMAT, &meta, layout, buffers, dtype, extra)
}

/// Reads and validates a checkpoint of the network `N`.
pub fn load<N: Network>(path: &Path) -> Result<Checkpoint<N>> {
    let mut desc = None;
    let container = load_container(path, |format, meta| {
        if format != N::FORMAT {
            return Err(bad(path, format_mismatch::<N>(format)));
        }
        let get = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(path, format!("metadata has no {k:?}")))
        };
        let config: N::Config =
            serde_json::from_str(get("config")?).map_err(|e| bad(path, format!("config: {e}")))?;
        let image_size: usize = get("image_size")?
            .parse()
            .map_err(|_| bad(path, "image_size is not a number"))?;
        let seed: u64 = get("seed")?
            .parse()
            .map_err(|_| bad(path, "seed is not a number"))?;
        let (_, layout) = build_with_layout::<N>(&config, image_size, seed)
            .map_err(|e| bad(path, format!("stored configuration is invalid: {e}")))?;
        desc = Some((config, image_size, seed));
        Ok(layout)
    })?;
    let (config, image_size, seed) =
        desc.ok_or_else(|| bad(path, "internal: no network description"))?;
    Ok(Checkpoint {
        config,
        image_size,
        seed,
        dtype: container.dtype,
        buffers: container.buffers,
        extra: container.extra,
    })
}

/// The `"params"` buffer of `ck`, after checking that the file was written
/// for exactly `net` (configuration, image size and seed).
pub fn matching_params<'a, N: Network>(
    path: &Path,
    ck: &'a Checkpoint<N>,
    net: &N,
) -> Result<&'a [f32]> {
    if &ck.config != net.config() {
        return Err(bad(
            path,
            format!(
                "network configuration differs: file {:?}, model {:?}",
                ck.config,
                net.config()
            ),
        ));
    }
    if ck.image_size != net.image_size() || ck.seed != net.seed() {
        return Err(bad(
            path,
            format!(
                "file is for image size {} / seed {}, model for {} / {}",
                ck.image_size,
                ck.seed,
                net.image_size(),
                net.seed()
            ),
        ));
    }
    ck.buffer("params")
        .ok_or_else(|| bad(path, "no \"params\" buffer"))
}

/// Writes the parameters of `net` held in `store` (one `"params"` buffer) to
/// `path`, atomically.
pub fn save_params<B: crate::NetBackend, N: Network>(
    b: &B,
    path: &Path,
    net: &N,
    store: &crate::ParamStore<B>,
    dtype: StorageDtype,
    extra: &HashMap<String, String>,
) -> Result<()> {
    let params = b.to_vec(store.params())?;
    save(
        path,
        net,
        &store.layout(),
        &[("params", &params)],
        dtype,
        extra,
    )
}

/// Rebuilds the network of `ck` with a parameter store on `b` holding the
/// checkpoint's buffer `buffer` (`"params"`, or a companion such as `"ema"`).
pub fn restore<B: crate::NetBackend, N: Network>(
    b: &B,
    ck: &Checkpoint<N>,
    buffer: &str,
) -> Result<(N, crate::ParamStore<B>)> {
    let mut pb = ParamBuilder::new();
    let net = N::build(&ck.config, ck.image_size, &mut pb, ck.seed)?;
    let mut store = pb.build(b, ck.seed)?;
    let values = ck.buffer(buffer).ok_or_else(|| NetError::Checkpoint {
        path: String::new(),
        reason: format!("no {buffer:?} buffer"),
    })?;
    store.set_params_from_host(b, values)?;
    Ok((net, store))
}
