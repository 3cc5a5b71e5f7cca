//! Model weights in PyTorch's names, shapes and element order: safetensors (read and
//! written) and PyTorch's own `torch.save` files (read; `.pth`, `.pt`, `.th`, zip or
//! legacy format, through a safe pickle reader that never runs code).
//!
//! Internally conv weights are OHWI; files hold PyTorch's OIHW. Loading checks every
//! key and shape and names the first that does not fit.

mod pickle;
mod pth;
pub mod registry;

pub use pth::{TorchDType, TorchTensor, read_state_dict_bytes as read_torch_bytes};

use crate::nn::{Layout, Named};
use anyhow::{Context, Result, anyhow, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Converts between PyTorch's OIHW and the engine's OHWI for a `[o, i, k, k]` weight.
fn permute(shape: &[usize], src: &[f32], to_internal: bool) -> Vec<f32> {
    let (o, i, kh, kw) = (shape[0], shape[1], shape[2], shape[3]);
    let mut dst = vec![0f32; src.len()];
    for a in 0..o {
        for b in 0..i {
            for y in 0..kh {
                for x in 0..kw {
                    let oihw = ((a * i + b) * kh + y) * kw + x;
                    let ohwi = ((a * kh + y) * kw + x) * i + b;
                    if to_internal {
                        dst[ohwi] = src[oihw];
                    } else {
                        dst[oihw] = src[ohwi];
                    }
                }
            }
        }
    }
    dst
}

/// Values in PyTorch's element order, from the engine's.
pub fn to_torch(layout: Layout, shape: &[usize], v: &[f32]) -> Vec<f32> {
    match layout {
        Layout::Plain => v.to_vec(),
        Layout::ConvOhwi => permute(shape, v, false),
    }
}

/// Values in the engine's element order, from PyTorch's.
pub fn from_torch(layout: Layout, shape: &[usize], v: Vec<f32>) -> Vec<f32> {
    match layout {
        Layout::Plain => v,
        Layout::ConvOhwi => permute(shape, &v, true),
    }
}

/// A named tensor to write: values in PyTorch's order, stored as f32, or as i64 for
/// integer tensors (BatchNorm's `num_batches_tracked`, so PyTorch loads the file strictly).
pub struct Entry {
    pub name: String,
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
    pub integer: bool,
}

impl Entry {
    pub fn f32(name: String, shape: Vec<usize>, values: Vec<f32>) -> Self {
        Entry { name, shape, values, integer: false }
    }
}

/// Serializes tensors as safetensors with `metadata`.
pub fn serialize(tensors: &[Entry], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| match t.integer {
            true => t.values.iter().flat_map(|&x| (x as i64).to_le_bytes()).collect(),
            false => t.values.iter().flat_map(|x| x.to_le_bytes()).collect(),
        })
        .collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|(t, b)| {
            let dtype = if t.integer { Dtype::I64 } else { Dtype::F32 };
            Ok((t.name.clone(), TensorView::new(dtype, t.shape.clone(), b)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// The model's state dict in PyTorch's order, shapes and layout.
pub fn state_dict(named: &[Named]) -> Vec<Entry> {
    named
        .iter()
        .map(|t| Entry::f32(t.name.clone(), t.shape.clone(), to_torch(t.layout, &t.shape, &t.to_host())))
        .collect()
}

/// Saves the model's state dict to `path` as safetensors.
pub fn save(path: &Path, named: &[Named], metadata: HashMap<String, String>) -> Result<()> {
    crate::files::write_atomic(path, &serialize(&state_dict(named), metadata)?)
}

/// The safetensors dtypes we read, as the equivalent PyTorch dtype.
fn torch_dtype(d: Dtype) -> Option<TorchDType> {
    Some(match d {
        Dtype::F32 => TorchDType::F32,
        Dtype::F64 => TorchDType::F64,
        Dtype::F16 => TorchDType::F16,
        Dtype::BF16 => TorchDType::BF16,
        Dtype::I64 => TorchDType::I64,
        Dtype::I32 => TorchDType::I32,
        Dtype::I16 => TorchDType::I16,
        Dtype::I8 => TorchDType::I8,
        Dtype::U8 => TorchDType::U8,
        Dtype::BOOL => TorchDType::Bool,
        _ => return None,
    })
}

/// The largest weights file read: a ResNet-1202 or -152 checkpoint with its momentum
/// buffers is under 1 GiB.
const MAX_WEIGHTS_FILE: u64 = 8 << 30;

/// A weights file's format, told by its whole signature, never by one byte: a
/// safetensors header length can begin with any byte, 0x80 (a pickle's first) included.
#[derive(Debug, PartialEq, Eq)]
enum Format {
    Safetensors,
    Torch,
    Unknown,
}

impl Format {
    fn of(bytes: &[u8]) -> Format {
        // safetensors: an 8-byte little-endian header length that fits the file, then a
        // JSON object.
        let header = bytes.split_first_chunk::<8>().map(|(len, rest)| (u64::from_le_bytes(*len), rest));
        let json_after = |&(len, rest): &(u64, &[u8])| len >= 2 && rest.first() == Some(&b'{');
        if header.filter(json_after).is_some_and(|(len, rest)| len <= rest.len() as u64) {
            return Format::Safetensors;
        }
        match bytes {
            // torch.save's zip archive, or a pickle: PROTO (0x80) and protocol 2 to 5.
            [b'P', b'K', 3, 4, ..] | [0x80, 2..=5, ..] => Format::Torch,
            // A header longer than the file: safetensors cut short, said so when parsed.
            _ if header.filter(json_after).is_some() => Format::Safetensors,
            _ => Format::Unknown,
        }
    }
}

/// Named tensors in file order.
type Tensors = Vec<(String, TorchTensor)>;

/// The bytes a safetensors file declares, so that a file cut short (a copy or download
/// that stopped) is told from a corrupt one.
enum Declared {
    /// Too short for the 8-byte header length.
    Nothing,
    /// The 8-byte length and the header, where the header is cut short or unreadable.
    Header(u64),
    /// Up to the end of the last tensor's data.
    Whole(u64),
}

fn safetensors_length(bytes: &[u8]) -> Declared {
    let Some((len, rest)) = bytes.split_first_chunk::<8>() else { return Declared::Nothing };
    let header_end = 8u64.saturating_add(u64::from_le_bytes(*len));
    let Some(header) = usize::try_from(header_end - 8).ok().and_then(|n| rest.get(..n)) else {
        return Declared::Header(header_end);
    };
    let Ok(serde_json::Value::Object(entries)) = serde_json::from_slice(header) else {
        return Declared::Header(header_end);
    };
    let data_end = (entries.iter().filter(|(name, _)| *name != "__metadata__"))
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Declared::Whole(header_end.saturating_add(data_end))
}

/// The tensors of a weights file (safetensors or PyTorch), converted to f32, with the
/// file's metadata (safetensors only) and the path for error messages.
pub struct StateDict {
    pub path: PathBuf,
    pub tensors: Tensors,
    pub metadata: HashMap<String, String>,
    index: HashMap<String, usize>,
}

impl StateDict {
    /// Reads a weights file, telling the format by its content.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_limited(path, MAX_WEIGHTS_FILE, "weights file")?;
        Self::from_bytes(&bytes, path)
    }

    /// Parses the bytes of a weights file; `path` names it in messages.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        let (tensors, metadata) = match Format::of(bytes) {
            Format::Safetensors => Self::parse_safetensors(path, bytes)?,
            Format::Torch => (pth::read_state_dict_bytes(bytes, &path.display().to_string())?, HashMap::new()),
            Format::Unknown => bail!(
                "{}: not a weights file (neither safetensors, nor a PyTorch zip archive or pickle)",
                path.display()
            ),
        };
        let index = tensors.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        Ok(StateDict { path: path.to_path_buf(), tensors, metadata, index })
    }

    fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<(Tensors, HashMap<String, String>)> {
        let (path_shown, len) = (path.display(), bytes.len());
        match safetensors_length(bytes) {
            Declared::Header(header) if header > len as u64 => bail!(
                "{path_shown}: not a valid safetensors file (truncated: it ends after {len} bytes, within its {header}-byte header)"
            ),
            Declared::Whole(needed) if needed > len as u64 => {
                bail!(
                    "{path_shown}: not a valid safetensors file (truncated: it ends after {len} of its {needed} bytes)"
                )
            }
            _ => {}
        }
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
        let metadata = SafeTensors::read_metadata(bytes)
            .map(|(_, m)| m.metadata().clone().unwrap_or_default())
            .unwrap_or_default();
        let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        names.sort();
        let mut tensors = Vec::with_capacity(names.len());
        for name in names {
            let view = st.tensor(&name).map_err(|e| anyhow!("{}: tensor '{name}': {e}", path.display()))?;
            let dtype = torch_dtype(view.dtype()).ok_or_else(|| {
                anyhow!("{}: tensor '{name}' has dtype {:?}, which is not supported", path.display(), view.dtype())
            })?;
            let values = dtype.to_f32(view.data(), false);
            tensors.push((name, TorchTensor { dtype, shape: view.shape().to_vec(), values }));
        }
        Ok((tensors, metadata))
    }

    /// Tensor `key` (also found as `module.key`).
    pub fn find(&self, key: &str) -> Option<&TorchTensor> {
        let i = self.index.get(key).or_else(|| self.index.get(&format!("module.{key}")))?;
        Some(&self.tensors[*i].1)
    }

    /// Values of tensor `key` (also found as `module.key`), checked against `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<&[f32]> {
        let t = self
            .find(key)
            .ok_or_else(|| anyhow!("{}: missing key '{key}' (expected shape {shape:?})", self.path.display()))?;
        if t.shape != shape {
            bail!("{}: key '{key}': expected shape {shape:?}, found {:?}", self.path.display(), t.shape);
        }
        Ok(&t.values)
    }
}

/// The normalization recorded in a weights file we wrote, if any, checked as a value
/// (a per-pixel mean must be a square RGB image, deviations positive).
pub fn metadata_norm(file: &StateDict) -> Result<Option<crate::data::Norm>> {
    let Some(raw) = file.metadata.get("norm") else { return Ok(None) };
    let what = || format!("{}: corrupt 'norm' metadata", file.path.display());
    let norm: crate::data::Norm = serde_json::from_str(raw).with_context(what)?;
    norm.validate().with_context(what)?;
    Ok(Some(norm))
}

/// How a model expects to see an image: the shorter side resized to `resize`, then a
/// centre crop of `crop`. Recorded with the weights, so eval and predict need no flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct View {
    pub resize: usize,
    pub crop: usize,
}

impl View {
    /// The largest side a recorded view may have, as the command-line flags.
    pub const MAX_SIDE: usize = 4096;
}

/// The view recorded in a weights file we wrote, if any.
pub fn metadata_view(file: &StateDict) -> Result<Option<View>> {
    let Some(raw) = file.metadata.get("view") else { return Ok(None) };
    let what = || format!("{}: corrupt 'view' metadata", file.path.display());
    let view: View = serde_json::from_str(raw).with_context(what)?;
    let sides = 1..=View::MAX_SIDE;
    if !sides.contains(&view.resize) || !sides.contains(&view.crop) || view.crop > view.resize {
        bail!(
            "{}: resize {} and crop {} are not sides with 0 < crop <= resize <= {}",
            what(),
            view.resize,
            view.crop,
            View::MAX_SIDE
        );
    }
    Ok(Some(view))
}

/// The class names recorded in a weights file we wrote, if any.
pub fn metadata_class_names(file: &StateDict) -> Result<Option<Vec<String>>> {
    let Some(raw) = file.metadata.get("class_names") else { return Ok(None) };
    let names: Vec<String> = serde_json::from_str(raw)
        .with_context(|| format!("{}: corrupt 'class_names' metadata", file.path.display()))?;
    Ok(Some(names))
}

/// Loads a state dict to start training from (fine-tuning): every tensor as `load_into`,
/// except that a classifier (`classifier.weight`, `.bias`) of another class count is left
/// as initialized. Returns the file's class count when it differed.
pub fn load_for_fine_tuning(file: &StateDict, named: &mut [Named], classifier: &str) -> Result<Option<usize>> {
    let optimizer = crate::train::checkpoint::OPTIMIZER_PREFIX;
    let weight = format!("{classifier}.weight");
    let ours = named.iter().find(|t| t.name == weight).map(|t| t.shape.clone());
    let theirs = file.find(&weight).map(|t| t.shape.clone());
    let other_classes = match (ours, theirs) {
        (Some(o), Some(t)) if o.len() == 2 && t.len() == 2 && t[1] == o[1] && t[0] != o[0] => t[0],
        _ => return load_into(file, named, Some(optimizer)).map(|_| None),
    };
    let prefix = format!("{classifier}.");
    let module_prefix = format!("module.{prefix}");
    let backbone = named.iter_mut().filter(|t| !t.name.starts_with(&prefix)).collect();
    load_selected(file, backbone, &[optimizer, &prefix, &module_prefix])?;
    Ok(Some(other_classes))
}

/// Loads a state dict into the model. Every model key must be present with the right
/// shape; keys the model does not have are an error unless `ignore_prefix` matches them
/// (checkpoints carry optimizer state) or they are BatchNorm's `num_batches_tracked`.
pub fn load_into(file: &StateDict, named: &mut [Named], ignore_prefix: Option<&str>) -> Result<()> {
    load_selected(file, named.iter_mut().collect(), ignore_prefix.as_slice())
}

/// [`load_into`] for the tensors `named`, ignoring file keys that start with any of `ignore`.
fn load_selected(file: &StateDict, mut named: Vec<&mut Named>, ignore: &[&str]) -> Result<()> {
    let expected: HashMap<&str, &[usize]> = named.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    let mut names: Vec<&(String, TorchTensor)> = file.tensors.iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in names {
        let bare = name.strip_prefix("module.").unwrap_or(name);
        if expected.contains_key(bare) || bare.ends_with("num_batches_tracked") {
            continue;
        }
        if ignore.iter().any(|p| name.starts_with(p)) {
            continue;
        }
        bail!("{}: unexpected key '{name}' (shape {:?}), not a tensor of this model", file.path.display(), t.shape);
    }
    for t in named.iter_mut() {
        let values = file.get(&t.name, &t.shape)?.to_vec();
        t.set_from_host(from_torch(t.layout, &t.shape, values));
    }
    Ok(())
}
