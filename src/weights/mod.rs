//! Model weights in PyTorch's names, shapes and element order: safetensors (read and
//! written) and PyTorch's own `torch.save` files (read; `.pth`, `.pt`, `.th`, zip or
//! legacy format, through a safe pickle reader that never runs code).
//!
//! Internally conv weights are OHWI; files hold PyTorch's OIHW. Loading checks every
//! key and shape and names the first that does not fit.

mod pickle;
mod pth;

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

/// Writes `bytes` to `path` atomically: a temporary file in the same directory,
/// flushed to disk, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).with_context(|| format!("{}: cannot create", tmp.display()))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).with_context(|| format!("{}: write failed", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot rename into place", path.display()))?;
    Ok(())
}

/// Saves the model's state dict to `path` as safetensors.
pub fn save(path: &Path, named: &[Named], metadata: HashMap<String, String>) -> Result<()> {
    write_atomic(path, &serialize(&state_dict(named), metadata)?)
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

/// Named tensors in file order.
type Tensors = Vec<(String, TorchTensor)>;

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
        let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))?;
        // A zip archive, or a pickle (protocol 2+ starts with 0x80): torch.save's formats.
        let (tensors, metadata) = if bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80) {
            (pth::read_state_dict_bytes(&bytes, &path.display().to_string())?, HashMap::new())
        } else {
            Self::parse_safetensors(path, &bytes)?
        };
        let index = tensors.iter().enumerate().map(|(i, (k, _))| (k.clone(), i)).collect();
        Ok(StateDict { path: path.to_path_buf(), tensors, metadata, index })
    }

    fn parse_safetensors(path: &Path, bytes: &[u8]) -> Result<(Tensors, HashMap<String, String>)> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file ({e}), nor a PyTorch checkpoint", path.display()))?;
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

/// Loads a state dict into the model. Every model key must be present with the right
/// shape; keys the model does not have are an error unless `ignore_prefix` matches them
/// (checkpoints carry optimizer state) or they are BatchNorm's `num_batches_tracked`.
pub fn load_into(file: &StateDict, named: &mut [Named], ignore_prefix: Option<&str>) -> Result<()> {
    let expected: HashMap<&str, &[usize]> = named.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    let mut names: Vec<&(String, TorchTensor)> = file.tensors.iter().collect();
    names.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in names {
        let bare = name.strip_prefix("module.").unwrap_or(name);
        if expected.contains_key(bare) || bare.ends_with("num_batches_tracked") {
            continue;
        }
        if ignore_prefix.is_some_and(|p| name.starts_with(p)) {
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
