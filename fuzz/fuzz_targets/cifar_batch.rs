//! CIFAR-10 and CIFAR-100 binary batches.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resnet::data::cifar::{DatasetKind, parse_batch};

fuzz_target!(|data: &[u8]| {
    for kind in [DatasetKind::Cifar10, DatasetKind::Cifar100] {
        if let Ok(d) = parse_batch(data, kind, None) {
            assert_eq!(d.images.len(), d.len() * resnet::data::cifar::IMAGE_BYTES);
        }
    }
});
