//! torch.save's zip archive: the zip container, data.pkl through the pickle reader, and the
//! storage records. Any input may fail to read; none may panic, abort or run out of memory.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = resnet::weights::read_torch_bytes(data, "fuzz.pth");
});
