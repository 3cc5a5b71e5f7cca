//! Model weights as safetensors, in PyTorch's names, shapes and element order.
//!
//! Internally conv weights are OHWI; files hold PyTorch's OIHW. Loading checks every
//! key and shape and names the first that does not fit.

use crate::nn::{Layout, Named};
use anyhow::{Context, Result, anyhow, bail};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

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

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Serializes named tensors (`(name, shape, values in PyTorch order)`) with metadata.
pub fn serialize(tensors: &[(String, Vec<usize>, Vec<f32>)], metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let bytes: Vec<Vec<u8>> = tensors.iter().map(|(_, _, v)| f32_bytes(v)).collect();
    let views = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), b)| Ok((name.clone(), TensorView::new(Dtype::F32, shape.clone(), b)?)))
        .collect::<Result<Vec<_>>>()?;
    Ok(safetensors::serialize(views, Some(metadata))?)
}

/// The model's state dict as `(name, torch shape, torch-order values)`.
pub fn state_dict(named: &[Named]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    named.iter().map(|t| (t.name.clone(), t.shape.clone(), to_torch(t.layout, &t.shape, t.value()))).collect()
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

/// Reads a whole file, naming it in the error.
pub fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("{}: cannot read", path.display()))
}

/// A parsed safetensors file and the name it was read from.
pub struct TensorFile<'a> {
    pub path: &'a Path,
    pub st: SafeTensors<'a>,
    pub metadata: HashMap<String, String>,
}

impl<'a> TensorFile<'a> {
    pub fn parse(path: &'a Path, bytes: &'a [u8]) -> Result<Self> {
        let st = SafeTensors::deserialize(bytes)
            .map_err(|e| anyhow!("{}: not a valid safetensors file ({e})", path.display()))?;
        let metadata = SafeTensors::read_metadata(bytes)
            .map(|(_, m)| m.metadata().clone().unwrap_or_default())
            .unwrap_or_default();
        Ok(TensorFile { path, st, metadata })
    }

    /// Values of tensor `key` (also found as `module.key`), checked against `shape`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let view = self
            .st
            .tensor(key)
            .or_else(|_| self.st.tensor(&format!("module.{key}")))
            .map_err(|_| anyhow!("{}: missing key '{key}' (expected shape {shape:?})", self.path.display()))?;
        if view.shape() != shape {
            bail!("{}: key '{key}': expected shape {shape:?}, found {:?}", self.path.display(), view.shape());
        }
        if view.dtype() != Dtype::F32 {
            bail!("{}: key '{key}': expected dtype F32, found {:?}", self.path.display(), view.dtype());
        }
        Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    }
}

/// Loads a state dict into the model. Every model key must be present with the right
/// shape; keys the model does not have are an error unless `ignore_prefix` matches them
/// (checkpoints carry optimizer state) or they are BatchNorm's `num_batches_tracked`.
pub fn load_into(file: &TensorFile, named: &mut [Named], ignore_prefix: Option<&str>) -> Result<()> {
    let expected: HashMap<&str, &[usize]> = named.iter().map(|t| (t.name.as_str(), t.shape.as_slice())).collect();
    let mut names: Vec<&str> = file.st.names();
    names.sort();
    for name in names {
        let bare = name.strip_prefix("module.").unwrap_or(name);
        if expected.contains_key(bare) || bare.ends_with("num_batches_tracked") {
            continue;
        }
        if ignore_prefix.is_some_and(|p| name.starts_with(p)) {
            continue;
        }
        let shape = file.st.tensor(name).map(|v| v.shape().to_vec()).unwrap_or_default();
        bail!("{}: unexpected key '{name}' (shape {shape:?}), not a tensor of this model", file.path.display());
    }
    for t in named.iter_mut() {
        let values = file.get(&t.name, &t.shape)?;
        *t.value_mut() = from_torch(t.layout, &t.shape, values);
    }
    Ok(())
}
