//! Labels files (the 1000-class index JSON, or one name per line) and the folder-name lookup.
#![no_main]
use libfuzzer_sys::fuzz_target;
use resnet::data::ClassList;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(list) = ClassList::parse(text) else { return };
    for folder in ["n01440764", "tench", "great_white_shark", ""] {
        let _ = list.index_of(folder);
    }
    for i in 0..list.len().min(4) {
        assert!(!list.name(i).chars().any(char::is_control));
    }
});
