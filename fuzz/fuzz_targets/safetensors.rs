//! Weights files as every command reads them: the format told by its signature, safetensors
//! parsed, and the metadata that eval, predict and --resume use (run state, normalization,
//! class names).
#![no_main]
use libfuzzer_sys::fuzz_target;
use resnet::train::checkpoint::Checkpoint;
use resnet::weights::StateDict;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = StateDict::from_bytes(data, Path::new("fuzz.safetensors")) else { return };
    let _ = resnet::weights::metadata_class_names(&file);
    let _ = Checkpoint::from_file(file);
});
