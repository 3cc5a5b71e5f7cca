//! PyTorch checkpoints (`torch.save` of a state dict), read without Python.
//!
//! Two containers exist. The zip format (torch >= 1.6) holds `<archive>/data.pkl`, one record
//! `<archive>/data/<key>` per storage and an optional `<archive>/byteorder`. The legacy format is a
//! stream: a magic-number pickle, a protocol-version pickle, a system-info pickle, the main pickle,
//! a pickle of the storage keys, then each storage as an 8-byte little-endian element count and its
//! little-endian data. In both, tensors are `_rebuild_tensor*` calls on storages named by persistent
//! ids; see `pickle.rs` for how those are read without executing anything.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::io::{Cursor, Read};

use anyhow::{Context, Result, anyhow, bail, ensure};
use zip::ZipArchive;
use zip::result::ZipError;

use super::pickle::{Pickle, TensorRef, Value, quoted, unpickle};

/// The element type of a tensor's storage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TorchDType {
    F32,
    F64,
    F16,
    BF16,
    I64,
    I32,
    I16,
    I8,
    U8,
    Bool,
}

impl TorchDType {
    /// The dtype of a legacy storage class such as `FloatStorage`.
    pub(crate) fn from_storage_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "DoubleStorage" => Self::F64,
            "HalfStorage" => Self::F16,
            "BFloat16Storage" => Self::BF16,
            "LongStorage" => Self::I64,
            "IntStorage" => Self::I32,
            "ShortStorage" => Self::I16,
            "CharStorage" => Self::I8,
            "ByteStorage" => Self::U8,
            "BoolStorage" => Self::Bool,
            _ => return None,
        })
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Self::F64 | Self::I64 => 8,
            Self::F32 | Self::I32 => 4,
            Self::F16 | Self::BF16 | Self::I16 => 2,
            Self::I8 | Self::U8 | Self::Bool => 1,
        }
    }

    /// Converts whole elements of raw storage bytes to f32 (a trailing partial element is ignored).
    pub(crate) fn to_f32(self, bytes: &[u8], big_endian: bool) -> Vec<f32> {
        match self {
            Self::F32 => convert(bytes, big_endian, f32::from_le_bytes),
            Self::F64 => convert(bytes, big_endian, |b| f64::from_le_bytes(b) as f32),
            Self::F16 => convert(bytes, big_endian, |b| f16_to_f32(u16::from_le_bytes(b))),
            // bfloat16 is the top half of an f32.
            Self::BF16 => convert(bytes, big_endian, |b| f32::from_bits(u32::from(u16::from_le_bytes(b)) << 16)),
            Self::I64 => convert(bytes, big_endian, |b| i64::from_le_bytes(b) as f32),
            Self::I32 => convert(bytes, big_endian, |b| i32::from_le_bytes(b) as f32),
            Self::I16 => convert(bytes, big_endian, |b| f32::from(i16::from_le_bytes(b))),
            Self::I8 => convert(bytes, big_endian, |b| f32::from(i8::from_le_bytes(b))),
            Self::U8 => convert(bytes, big_endian, |[b]| f32::from(b)),
            Self::Bool => convert(bytes, big_endian, |[b]| f32::from(u8::from(b != 0))),
        }
    }
}

fn convert<const N: usize>(bytes: &[u8], big_endian: bool, from_le: impl Fn([u8; N]) -> f32) -> Vec<f32> {
    let (elements, _) = bytes.as_chunks::<N>();
    elements
        .iter()
        .map(|&element| {
            let mut element = element;
            if big_endian {
                element.reverse();
            }
            from_le(element)
        })
        .collect()
}

/// IEEE half precision to f32, exactly (every f16 is an f32; NaN payloads are kept).
fn f16_to_f32(half: u16) -> f32 {
    let sign = u32::from(half & 0x8000) << 16;
    let exponent = u32::from((half >> 10) & 0x1f);
    let mantissa = u32::from(half & 0x3ff);
    let magnitude = match exponent {
        // zero and subnormals: mantissa * 2^-24, exact in f32
        0 => (mantissa as f32 * f32::from_bits(0x3380_0000)).to_bits(),
        0x1f => 0x7f80_0000 | (mantissa << 13),
        _ => ((exponent + 127 - 15) << 23) | (mantissa << 13),
    };
    f32::from_bits(sign | magnitude)
}

/// A tensor of a state dict, converted to f32.
#[derive(Clone, Debug, PartialEq)]
pub struct TorchTensor {
    /// The dtype the checkpoint stores.
    pub dtype: TorchDType,
    pub shape: Vec<usize>,
    /// Contiguous, row-major (C order) in `shape`.
    pub values: Vec<f32>,
}

/// The state dict in a .pth/.pt/.th file held in memory, in file order; `name` prefixes
/// the error messages.
///
/// That is the top-level dict if it holds tensors, else the first of its entries "state_dict",
/// "model_state_dict", "model", "net" and "module" that does. Non-tensor entries are skipped. Every
/// error is one line that starts with the path.
pub fn read_state_dict_bytes(bytes: &[u8], name: &str) -> Result<Vec<(String, TorchTensor)>> {
    // `{:#}` joins the context chain with ": ". Foreign messages (zip, io) are flattened too, so the
    // promise of one line holds whatever they say.
    read(bytes).map_err(|e| anyhow!("{name}: {}", format!("{e:#}").replace(['\n', '\r'], " ")))
}

fn read(bytes: &[u8]) -> Result<Vec<(String, TorchTensor)>> {
    match bytes {
        [] => bail!("empty file, not a PyTorch checkpoint"),
        [b'P', b'K', 3, 4, ..] => read_zip(bytes),
        // Pickles start with PROTO; the legacy format's first pickle is torch's magic number.
        [0x80, ..] => read_legacy(bytes),
        _ => bail!("not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)"),
    }
}

fn read_zip(bytes: &[u8]) -> Result<Vec<(String, TorchTensor)>> {
    let mut archive = ZipArchive::new(Cursor::new(bytes)).context("invalid zip archive")?;
    // Every record is "<archive>/<name>"; like torch's reader, take <archive> from the first entry.
    let first = archive.name_for_index(0).context("empty zip archive")?.context("invalid zip archive")?;
    let (prefix, _) = first.split_once('/').context("zip archive without torch's folder layout")?;
    let prefix = prefix.to_owned();

    let pickle = read_entry(&mut archive, &format!("{prefix}/data.pkl"), MAX_PICKLE_BYTES)?
        .context("not a PyTorch checkpoint (a zip archive without data.pkl)")?;
    let big_endian = match read_entry(&mut archive, &format!("{prefix}/byteorder"), 16)?.as_deref() {
        None | Some(b"little") => false,
        Some(b"big") => true,
        Some(other) => bail!("unknown byteorder {}", quoted(&String::from_utf8_lossy(other))),
    };
    let (pickle, _) = unpickle(&pickle, 0, "data.pkl")?;
    let entries = find_state_dict(&pickle)?;

    // Read each storage the state dict uses once, and no more of it than its pickle declares.
    let mut records = HashMap::new();
    for tensor in tensors(entries) {
        let storage = &tensor.storage;
        if records.contains_key(&storage.key) {
            continue;
        }
        let name = format!("{prefix}/data/{}", storage.key);
        let declared = storage.numel.saturating_mul(storage.dtype.size() as u64);
        let data = read_entry(&mut archive, &name, declared)?
            .with_context(|| format!("missing storage record {}", quoted(&format!("data/{}", storage.key))))?;
        records.insert(storage.key.clone(), Cow::Owned(data));
    }
    materialize(entries, &Records { data: records, label: "data/", big_endian })
}

/// The largest `data.pkl` read. A state dict's pickle holds names, shapes and strides, not
/// values: a ResNet-152's is under 100 KB.
const MAX_PICKLE_BYTES: u64 = 64 << 20;

/// How much larger than its compressed size an entry may expand. torch.save stores entries
/// uncompressed; an archive recompressed by another tool shrinks weights by a few percent,
/// while a zip bomb expands a thousandfold.
const MAX_EXPANSION: u64 = 64;

/// The entry `name`, or None when the archive has no such entry. It must hold at most
/// `limit` bytes; the sizes its header declares are checked before anything is allocated,
/// and the reading stops at `limit` whatever the header said.
fn read_entry(archive: &mut ZipArchive<Cursor<&[u8]>>, name: &str, limit: u64) -> Result<Option<Vec<u8>>> {
    let entry = match archive.by_name(name) {
        Ok(entry) => entry,
        Err(ZipError::FileNotFound) => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", quoted(name))),
    };
    let (size, packed) = (entry.size(), entry.compressed_size());
    ensure!(size <= limit, "{} holds {size} bytes, more than the {limit} expected", quoted(name));
    ensure!(
        size <= packed.saturating_mul(MAX_EXPANSION).saturating_add(1 << 20),
        "{} expands from {packed} to {size} bytes: refused as a likely zip bomb",
        quoted(name)
    );
    let mut data = Vec::new();
    data.try_reserve_exact(size as usize)
        .with_context(|| format!("cannot allocate {size} bytes for {}", quoted(name)))?;
    entry.take(size).read_to_end(&mut data).with_context(|| format!("cannot read {}", quoted(name)))?;
    Ok(Some(data))
}

/// torch's legacy magic number 0x1950a86a20f9469cfc6c, as LONG1's little-endian bytes.
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

fn read_legacy(bytes: &[u8]) -> Result<Vec<(String, TorchTensor)>> {
    let magic = unpickle(bytes, 0, "magic number").ok();
    let magic = magic.filter(|(p, _)| matches!(&p.root, Value::BigInt(n) if **n == LEGACY_MAGIC));
    let Some((_, pos)) = magic else {
        bail!("not a PyTorch checkpoint (a pickle without torch's legacy magic number)");
    };
    let (version, pos) = unpickle(bytes, pos, "protocol version")?;
    match version.root {
        Value::Int(LEGACY_PROTOCOL_VERSION) => {}
        ref other => {
            bail!("unsupported legacy protocol version ({}, expected {LEGACY_PROTOCOL_VERSION})", other.a_kind())
        }
    }
    // The system info records the writer's byte order, but storages are always written little-endian.
    let (_system_info, pos) = unpickle(bytes, pos, "system info")?;
    let (pickle, pos) = unpickle(bytes, pos, "main pickle")?;
    let entries = find_state_dict(&pickle)?;
    let (keys, mut pos) = unpickle(bytes, pos, "storage keys")?;
    let keys = keys.seq(&keys.root).context("storage keys are not a list")?;

    // A record's element size comes from the storage type its persistent ids name.
    let mut declared = HashMap::new();
    for storage in pickle.storages() {
        declared.entry(storage.key.as_str()).or_insert(storage);
    }
    let mut records = HashMap::new();
    for key in keys {
        let key = key.as_str().with_context(|| format!("storage key is {}, not a str", key.a_kind()))?;
        let storage = declared.get(key).with_context(|| format!("storage {} is never referenced", quoted(key)))?;
        let count = bytes.get(pos..).and_then(|rest| rest.first_chunk::<8>()).map(|&n| u64::from_le_bytes(n));
        let count = count.with_context(|| format!("truncated: no size for storage {}", quoted(key)))?;
        ensure!(
            count == storage.numel,
            "storage {} has {count} elements in the file but {} in the pickle",
            quoted(key),
            storage.numel
        );
        pos += 8;
        let len = usize::try_from(count).ok().and_then(|n| n.checked_mul(storage.dtype.size()));
        let data = len.and_then(|len| bytes.get(pos..)?.get(..len)).with_context(|| {
            format!("truncated: storage {} needs {count} elements, the file ends first", quoted(key))
        })?;
        pos += data.len();
        records.insert(key.to_owned(), Cow::Borrowed(data));
    }
    materialize(entries, &Records { data: records, label: "", big_endian: false })
}

/// Where a state dict may sit in a training checkpoint, in order of preference.
const STATE_DICT_KEYS: [&str; 5] = ["state_dict", "model_state_dict", "model", "net", "module"];

fn find_state_dict(pickle: &Pickle) -> Result<&[(Value, Value)]> {
    let Some(top) = pickle.dict(&pickle.root) else {
        bail!("no state dict: the file holds {}, not a dict", pickle.root.a_kind());
    };
    let holds_tensors = |entries: &&[(Value, Value)]| entries.iter().any(|(_, v)| matches!(v, Value::Tensor(_)));
    if holds_tensors(&top) {
        return Ok(top);
    }
    let nested = STATE_DICT_KEYS.iter().find_map(|&wanted| {
        let (_, value) = top.iter().find(|(key, _)| key.as_str() == Some(wanted))?;
        pickle.dict(value).filter(holds_tensors)
    });
    nested.with_context(|| {
        const SHOWN: usize = 20;
        let wanted: Vec<String> = STATE_DICT_KEYS.iter().map(|key| quoted(key)).collect();
        let mut keys: Vec<String> = top.iter().take(SHOWN).map(|(key, _)| describe_key(key)).collect();
        if top.len() > SHOWN {
            keys.push(format!("... ({} in all)", top.len()));
        }
        format!(
            "no state dict: the top-level dict holds no tensors, nor does its entry {}; its keys are: {}",
            wanted.join(" or "),
            keys.join(", ")
        )
    })
}

fn describe_key(key: &Value) -> String {
    match key {
        Value::Str(s) => quoted(s),
        Value::Int(i) => i.to_string(),
        other => format!("<{}>", other.kind()),
    }
}

/// The tensors among a dict's values.
fn tensors(entries: &[(Value, Value)]) -> impl Iterator<Item = &TensorRef> {
    entries.iter().filter_map(|(_, value)| match value {
        Value::Tensor(tensor) => Some(&**tensor),
        _ => None,
    })
}

/// The raw storage records, by key.
struct Records<'a> {
    data: HashMap<String, Cow<'a, [u8]>>,
    /// Prefixed to keys in messages, to name records as the file does ("data/3").
    label: &'static str,
    big_endian: bool,
}

/// Views can repeat storage elements (`expand`, `as_strided`), so a tiny file may describe huge
/// tensors. What is allocated is therefore capped in proportion to the storage data read: at most
/// this many values per storage byte, plus `MIN_VALUES` (256 MiB of f32, a ResNet-50 and more,
/// which the compact view-based golden files of tests/imagenet_golden.rs need). Real state dicts
/// need at most one value per byte.
const VALUES_PER_STORAGE_BYTE: usize = 16;
const MIN_VALUES: usize = 1 << 26;

fn materialize(entries: &[(Value, Value)], records: &Records) -> Result<Vec<(String, TorchTensor)>> {
    let stored: usize = records.data.values().map(|data| data.len()).sum();
    let limit = stored.saturating_mul(VALUES_PER_STORAGE_BYTE).saturating_add(MIN_VALUES);
    let mut budget = limit;
    let mut seen = HashSet::new();
    let mut state_dict = Vec::new();
    for (key, value) in entries {
        let Value::Tensor(tensor) = value else { continue };
        let key = key.as_str().with_context(|| format!("a tensor is stored under {} key", key.a_kind()))?;
        ensure!(seen.insert(key), "key {} appears twice", quoted(key));
        let what = || format!("tensor {}", quoted(key));
        let numel = tensor.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d));
        let numel = numel.context("size overflows").with_context(what)?;
        budget = budget.checked_sub(numel).with_context(|| {
            format!(
                "{}: views repeat storage elements too often (over {limit} values from {stored} bytes of storage)",
                what()
            )
        })?;
        state_dict.push((key.to_owned(), records.tensor(tensor, numel).with_context(what)?));
    }
    Ok(state_dict)
}

impl Records<'_> {
    /// How the file names a storage record, for messages.
    fn record_name(&self, key: &str) -> String {
        quoted(&format!("{}{key}", self.label))
    }

    fn tensor(&self, tensor: &TensorRef, numel: usize) -> Result<TorchTensor> {
        let TensorRef { storage, offset, shape, .. } = tensor;
        let dtype = storage.dtype;
        if numel == 0 {
            return Ok(TorchTensor { dtype, shape: shape.clone(), values: Vec::new() });
        }
        // A size-1 dimension's stride is never applied: zeroing it keeps the arithmetic below in range.
        let stride: Vec<usize> = shape.iter().zip(&tensor.stride).map(|(&n, &s)| if n == 1 { 0 } else { s }).collect();
        let last =
            shape.iter().zip(&stride).try_fold(*offset, |end, (&n, &s)| end.checked_add((n - 1).checked_mul(s)?));
        let last = last.context("strides overflow")?;
        let name = self.record_name(&storage.key);
        ensure!((last as u64) < storage.len, "reaches element {last} of storage {name}, which has {}", storage.len);

        let record = self.data.get(&storage.key).with_context(|| format!("missing storage record {name}"))?;
        let start = usize::try_from(storage.start).ok().context("storage view too large")?;
        let byte = |element: usize| start.checked_add(element)?.checked_mul(dtype.size());
        let (first_byte, end_byte) = byte(*offset).zip(byte(last + 1)).context("storage offset overflows")?;
        let Some(bytes) = record.get(first_byte..end_byte) else {
            bail!("truncated: storage {name} has {} bytes, tensor needs {end_byte}", record.len());
        };

        // `bytes` is the span the tensor touches; a view is gathered element by element first, rather
        // than decoding a span that may be far longer than the view.
        let mut values = if numel.checked_mul(dtype.size()) == Some(bytes.len()) && is_row_major(shape, &stride) {
            dtype.to_f32(bytes, self.big_endian)
        } else {
            let gathered = gather(bytes, dtype.size(), shape, &stride, numel).context("strides leave the storage")?;
            dtype.to_f32(&gathered, self.big_endian)
        };
        if tensor.negated {
            values.iter_mut().for_each(|v| *v = -*v);
        }
        Ok(TorchTensor { dtype, shape: shape.clone(), values })
    }
}

fn is_row_major(shape: &[usize], stride: &[usize]) -> bool {
    let mut expected = 1;
    for (&n, &s) in shape.iter().zip(stride).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected *= n;
    }
    true
}

/// The bytes of the tensor's `size`-byte elements in row-major order, from `span` (which starts at the
/// tensor's offset).
fn gather(span: &[u8], size: usize, shape: &[usize], stride: &[usize], numel: usize) -> Option<Vec<u8>> {
    let mut bytes = Vec::with_capacity(numel.checked_mul(size)?);
    let mut index = vec![0; shape.len()];
    let mut pos = 0;
    for _ in 0..numel {
        bytes.extend_from_slice(span.get(pos * size..)?.get(..size)?);
        // Advance the multi-index like an odometer, last dimension fastest.
        for ((i, &n), &s) in index.iter_mut().zip(shape).zip(stride).rev() {
            *i += 1;
            pos += s;
            if *i < n {
                break;
            }
            pos -= s * n;
            *i = 0;
        }
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_conversion_is_exact() {
        assert_eq!(f16_to_f32(0x0000).to_bits(), 0.0f32.to_bits());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc100), -2.5);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x03ff), 1023.0 * 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x0400), 2f32.powi(-14));
        assert_eq!(f16_to_f32(0x7c00), f32::INFINITY);
        assert_eq!(f16_to_f32(0xfc00), f32::NEG_INFINITY);
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    #[test]
    fn gather_walks_strides() {
        // The transpose of [[0, 1, 2], [3, 4, 5]].
        let span = [0, 1, 2, 3, 4, 5];
        assert_eq!(gather(&span, 1, &[3, 2], &[1, 3], 6), Some(vec![0, 3, 1, 4, 2, 5]));
        let span = [0, 10, 1, 11, 2, 12, 3, 13, 4, 14, 5, 15];
        assert_eq!(gather(&span, 2, &[3, 2], &[1, 3], 6), Some(vec![0, 10, 3, 13, 1, 11, 4, 14, 2, 12, 5, 15]));
        assert!(is_row_major(&[2, 1, 3], &[3, 0, 1]));
        assert!(!is_row_major(&[3, 2], &[1, 3]));
    }
}
