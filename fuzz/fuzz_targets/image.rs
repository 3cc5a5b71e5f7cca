//! JPEG and PNG decoding (with EXIF orientation), as every image folder is read.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(img) = resnet::data::image::decode_bytes(data, "fuzz.jpg") {
        assert_eq!(img.data.len(), img.width * img.height * 3);
    }
});
