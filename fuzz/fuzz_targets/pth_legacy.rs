//! torch.save's legacy stream (before torch 1.6): five pickles and the raw storages.
//! Seeded with legacy files, so its mutations stay in that format's code.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet::weights::read_torch_bytes(data, "fuzz.th");
});
