//! Reads the checkpoints that tools/make_pth_fixtures.py wrote with torch and compares every tensor
//! with tests/fixtures/pth/expected.safetensors, then feeds the reader broken and hostile files.

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

mod common;

use resnet::weights::{TorchDType, TorchTensor, read_torch_bytes as read_state_dict_bytes};
use safetensors::SafeTensors;
use safetensors::tensor::TensorView;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pth").join(name)
}

fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

/// `torch.load` of a file, as the crate reads it (`StateDict::read` adds format detection).
fn read_state_dict(path: &Path) -> anyhow::Result<Vec<(String, TorchTensor)>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    read_state_dict_bytes(&bytes, &path.display().to_string())
}

fn shared_data(rel: &str) -> Option<PathBuf> {
    common::shared_data(rel)
}

fn f32s(view: &TensorView) -> Vec<f32> {
    view.data().as_chunks::<4>().0.iter().map(|&b| f32::from_le_bytes(b)).collect()
}

/// Bit patterns, so that -0.0 and infinities compare exactly, and NaN equals NaN. NaN payloads are
/// not compared: torch itself widens the f16 NaN 0x7e00 to 0x7fffffff, where exact widening keeps
/// the payload (0x7fc00000).
fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| if v.is_nan() { f32::NAN.to_bits() } else { v.to_bits() }).collect()
}

fn assert_tensor_eq(got: &TorchTensor, want: &TensorView, what: &str) {
    assert_eq!(got.shape, want.shape(), "{what}: shape");
    assert_eq!(bits(&got.values), bits(&f32s(want)), "{what}: values");
}

/// Reads fixture `name` and checks keys (in order), dtypes, shapes and values against expected.safetensors.
fn check_fixture(name: &str) {
    let expected = fixture_bytes("expected.safetensors");
    let tensors = SafeTensors::deserialize(&expected).unwrap();
    let (_, metadata) = SafeTensors::read_metadata(&expected).unwrap();
    let metadata: HashMap<String, String> = metadata.metadata().clone().unwrap();
    let keys: Vec<String> = serde_json::from_str(&metadata[name]).unwrap();

    let state_dict = read_state_dict(&fixture(name)).unwrap_or_else(|e| panic!("{e}"));
    let got_keys: Vec<&str> = state_dict.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(got_keys, keys, "{name}: keys");
    for (key, tensor) in &state_dict {
        let what = format!("{name}::{key}");
        assert_eq!(format!("{:?}", tensor.dtype), metadata[&what], "{what}: dtype");
        assert_tensor_eq(tensor, &tensors.tensor(&what).unwrap(), &what);
    }
}

#[test]
fn every_dtype() {
    check_fixture("dtypes.pth");
}

#[test]
fn views_offsets_and_shared_storages() {
    check_fixture("views.pth");
}

#[test]
fn state_dict_nested_in_a_training_checkpoint() {
    check_fixture("nested.pth");
}

#[test]
fn state_dict_referred_to_twice() {
    // The second reference is a BINGET of the dict memoised before it was filled.
    check_fixture("shared_dict.pth");
}

#[test]
fn legacy_format() {
    check_fixture("legacy.pth");
}

#[test]
fn legacy_storage_views() {
    check_fixture("legacy_view.pth");
}

#[test]
fn pickle_protocol_4_and_parameters() {
    check_fixture("protocol4.pth");
}

#[test]
fn big_endian_byteorder() {
    check_fixture("big_endian.pth");
}

#[test]
fn deflated_zip_entries() {
    check_fixture("deflated.pth");
}

#[test]
fn bytes_and_path_agree() {
    let from_path = read_state_dict(&fixture("views.pth")).unwrap();
    let from_bytes = read_state_dict_bytes(&fixture_bytes("views.pth"), "views.pth").unwrap();
    assert_eq!(from_path, from_bytes);
}

/// The published ResNet-20 (a legacy file from torch 0.3, with `_rebuild_tensor` and CUDA locations)
/// against its safetensors twin.
#[test]
fn real_legacy_checkpoint_matches_its_safetensors_twin() {
    let (Some(th), Some(st)) = (
        shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.th"),
        shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors"),
    ) else {
        return;
    };
    let state_dict = read_state_dict(&th).unwrap_or_else(|e| panic!("{e}"));
    let twin_bytes = std::fs::read(st).unwrap();
    let twin = SafeTensors::deserialize(&twin_bytes).unwrap();

    let mut got_keys: Vec<&str> = state_dict.iter().map(|(key, _)| key.as_str()).collect();
    let mut want_keys: Vec<&str> = twin.names();
    got_keys.sort_unstable();
    want_keys.sort_unstable();
    assert_eq!(got_keys, want_keys);
    assert_eq!(state_dict[0].0, "module.conv1.weight", "file order");
    for (key, tensor) in &state_dict {
        assert_eq!(tensor.dtype, TorchDType::F32, "{key}");
        assert_tensor_eq(tensor, &twin.tensor(key).unwrap(), key);
    }
}

/// The message of the error reading `bytes` as `name`, checked to be one line starting with the name.
fn error(bytes: &[u8], name: &str) -> String {
    let message = match read_state_dict_bytes(bytes, name) {
        Ok(state_dict) => panic!("{name}: read {} tensors, expected an error", state_dict.len()),
        Err(e) => format!("{e:#}"),
    };
    assert!(message.starts_with(&format!("{name}: ")), "{message}");
    assert!(!message.contains('\n'), "{message}");
    // Display without `#` must say the same: the message is not hidden in a context chain.
    assert_eq!(read_state_dict_bytes(bytes, name).unwrap_err().to_string(), message);
    message
}

#[test]
fn empty_file() {
    assert_eq!(error(b"", "empty.pth"), "empty.pth: empty file, not a PyTorch checkpoint");
}

#[test]
fn random_bytes() {
    let message = error(b"\x13\x37 these are not the tensors you are looking for", "random.pth");
    assert_eq!(message, "random.pth: not a PyTorch checkpoint (neither a zip archive nor a legacy pickle)");
}

#[test]
fn plain_pickle_is_not_a_legacy_checkpoint() {
    let message = error(b"\x80\x02K\x01.", "plain.pkl");
    assert_eq!(message, "plain.pkl: not a PyTorch checkpoint (a pickle without torch's legacy magic number)");
}

#[test]
fn missing_file() {
    let path = fixture("no-such-file.pth");
    let message = format!("{:#}", resnet::weights::StateDict::read(&path).err().unwrap());
    assert!(message.starts_with(&format!("{}: No such file", path.display())), "{message}");
}

#[test]
fn truncated_zip() {
    let bytes = fixture_bytes("dtypes.pth");
    let message = error(&bytes[..bytes.len() / 2], "half.pth");
    assert!(message.starts_with("half.pth: invalid zip archive: "), "{message}");
}

#[test]
fn truncated_legacy_file() {
    let bytes = fixture_bytes("legacy.pth");
    let message = error(&bytes[..bytes.len() - 3], "cut.pth");
    assert!(message.starts_with("cut.pth: truncated: storage '"), "{message}");
    assert!(message.ends_with(" elements, the file ends first"), "{message}");
}

#[test]
fn truncated_storage_record_in_a_zip() {
    // Rebuild dtypes.pth with one storage record cut short: the zip stays valid, the data does not fit.
    let message = error(&shorten_zip_record(&fixture_bytes("views.pth"), "views/data/0", 8), "short.pth");
    assert!(message.starts_with("short.pth: tensor 'transposed': truncated: storage 'data/0' has "), "{message}");
}

#[test]
fn forbidden_global() {
    // os.system pickles as posix.system on Linux.
    let message = error(&fixture_bytes("forbidden.pth"), "evil.pth");
    assert!(message.starts_with("evil.pth: data.pkl byte "), "{message}");
    assert!(
        message.ends_with(": unsupported pickle global 'posix.system' (only plain state dicts can be read)"),
        "{message}"
    );
}

#[test]
fn no_state_dict_lists_the_top_level_keys() {
    let message = error(&fixture_bytes("no_state_dict.pth"), "meta.pth");
    assert!(message.starts_with("meta.pth: no state dict: the top-level dict holds no tensors"), "{message}");
    assert!(message.ends_with("its keys are: 'epoch', 'arch'"), "{message}");
}

#[test]
fn expanded_views_are_refused_rather_than_allocated() {
    // 2^40 values from one 4-byte element: torch keeps it a view, a Vec<f32> would need 4 TiB.
    let message = error(&fixture_bytes("expanded.pth"), "expanded.pth");
    assert!(message.starts_with("expanded.pth: tensor 'huge': views repeat storage elements too often"), "{message}");
}

/// A copy of the zip archive `bytes` with each entry's data passed through `edit(name, data)`.
fn rewrite_zip(bytes: &[u8], mut edit: impl FnMut(&str, Vec<u8>) -> Vec<u8>) -> Vec<u8> {
    use std::io::{Cursor, Read, Write};
    let mut archive = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
    let mut out = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        out.start_file(&name, options).unwrap();
        out.write_all(&edit(&name, data)).unwrap();
    }
    out.finish().unwrap().into_inner()
}

/// A copy of the zip archive `bytes` where entry `name` keeps only its first `keep` bytes.
fn shorten_zip_record(bytes: &[u8], name: &str, keep: usize) -> Vec<u8> {
    rewrite_zip(bytes, |entry, mut data| {
        if entry == name {
            data.truncate(keep);
        }
        data
    })
}

/// dtypes.pth with its data.pkl replaced by `{'t': _rebuild_tensor_v2(storage, offset, size, stride, False,
/// OrderedDict())}`, where the storage is record 0 (108 floats) declared as `numel` floats.
fn tensor_checkpoint(numel: i64, offset: i64, size: &[i64], stride: &[i64]) -> Vec<u8> {
    fn int(pickle: &mut Vec<u8>, v: i64) {
        pickle.extend([0x8a, 8]); // LONG1 of 8 bytes, so that any i64 fits
        pickle.extend(v.to_le_bytes());
    }
    fn tuple(pickle: &mut Vec<u8>, items: &[i64]) {
        pickle.push(b'(');
        items.iter().for_each(|&v| int(pickle, v));
        pickle.push(b't');
    }
    let mut pickle = b"\x80\x02}X\x01\x00\x00\x00tctorch._utils\n_rebuild_tensor_v2\n(".to_vec();
    pickle.extend(b"(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000X\x03\x00\x00\x00cpu");
    int(&mut pickle, numel);
    pickle.extend(b"tQ");
    int(&mut pickle, offset);
    tuple(&mut pickle, size);
    tuple(&mut pickle, stride);
    pickle.extend(b"\x89ccollections\nOrderedDict\n)RtRs.");
    rewrite_zip(
        &fixture_bytes("dtypes.pth"),
        |name, data| if name.ends_with("/data.pkl") { pickle.clone() } else { data },
    )
}

#[test]
fn hostile_tensor_geometry_is_refused() {
    let cases: [(Vec<u8>, &str); 7] = [
        (tensor_checkpoint(108, 0, &[108], &[1]), ""),
        (tensor_checkpoint(108, 0, &[1 << 40, 1 << 40], &[1, 1]), "tensor 't': size overflows"),
        (tensor_checkpoint(108, 0, &[4], &[i64::MAX]), "tensor 't': strides overflow"),
        (
            tensor_checkpoint(108, 100, &[10], &[1]),
            "tensor 't': reaches element 109 of storage 'data/0', which has 108",
        ),
        (tensor_checkpoint(108, 0, &[2], &[-1]), "tensor stride: negative value -1"),
        (tensor_checkpoint(1000, 0, &[1000], &[1]), "truncated: storage 'data/0' has 432 bytes, tensor needs 4000"),
        (tensor_checkpoint(108, 0, &[2, 3], &[1]), "tensor has 2 sizes but 1 strides"),
    ];
    for (bytes, expected) in cases {
        if expected.is_empty() {
            // The well-formed control case.
            let state_dict = read_state_dict_bytes(&bytes, "ok.pth").unwrap();
            assert_eq!(state_dict[0].1.values.len(), 108);
        } else {
            let message = error(&bytes, "bad.pth");
            assert!(message.ends_with(expected), "{message}");
        }
    }
}

/// Reads `bytes`, which may be anything: an error is fine, a panic is not. Returns whether it read.
fn must_not_panic(bytes: &[u8], what: &str) -> bool {
    let outcome = catch_unwind(AssertUnwindSafe(|| read_state_dict_bytes(bytes, "fuzz.pth")));
    match outcome {
        Ok(Ok(_)) => true,
        Ok(Err(e)) => {
            let message = format!("{e:#}");
            assert!(message.starts_with("fuzz.pth: ") && !message.contains('\n'), "{what}: {message}");
            false
        }
        Err(_) => panic!("{what}: the reader panicked"),
    }
}

/// A small deterministic generator (xorshift64), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// One or two random byte changes.
fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut mutated = bytes.to_vec();
    let at = rng.below(bytes.len());
    mutated[at] ^= 1 << rng.below(8);
    if rng.below(2) == 0 {
        let again = rng.below(bytes.len());
        mutated[again] = rng.below(256) as u8;
    }
    mutated
}

#[test]
fn truncations_and_flipped_bytes_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let fixtures = [
        "dtypes.pth",
        "views.pth",
        "nested.pth",
        "protocol4.pth",
        "big_endian.pth",
        "deflated.pth",
        "legacy.pth",
        "legacy_view.pth",
    ];
    for name in fixtures {
        let bytes = fixture_bytes(name);
        for len in 0..bytes.len() {
            must_not_panic(&bytes[..len], &format!("{name} cut to {len} bytes"));
        }
        for i in 0..1000 {
            must_not_panic(&mutate(&bytes, &mut rng), &format!("{name}, mutation {i}"));
        }
    }
}

/// Changes to a zip checkpoint mostly stop at the zip's checksums; these reach the pickle reader.
#[test]
fn corrupt_pickles_inside_valid_zips_never_panic() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    for name in ["views.pth", "nested.pth", "protocol4.pth"] {
        let bytes = fixture_bytes(name);
        let with_pickle = |pickle: &[u8]| {
            rewrite_zip(&bytes, |entry, data| if entry.ends_with("/data.pkl") { pickle.to_vec() } else { data })
        };
        let mut pickle = Vec::new();
        rewrite_zip(&bytes, |entry, data| {
            if entry.ends_with("/data.pkl") {
                pickle = data.clone();
            }
            data
        });
        for len in 0..pickle.len() {
            must_not_panic(&with_pickle(&pickle[..len]), &format!("{name} with data.pkl cut to {len} bytes"));
        }
        for i in 0..500 {
            must_not_panic(&with_pickle(&mutate(&pickle, &mut rng)), &format!("{name}, data.pkl mutation {i}"));
        }
    }
}

#[test]
fn truncations_of_the_real_legacy_checkpoint_never_panic() {
    let Some(th) = shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.th") else { return };
    let bytes = std::fs::read(th).unwrap();
    // Cuts through the pickles (where the structure is; they end at byte 14063), then through the storages.
    let pickles_end = 14_100;
    let cuts = (0..pickles_end).step_by(5).chain((pickles_end..bytes.len()).step_by(bytes.len() / 50));
    for len in cuts {
        let read = must_not_panic(&bytes[..len], &format!("resnet20 cut to {len} bytes"));
        assert!(!read, "cut to {len} bytes, yet read");
    }
}
