//! Resize, crop and flip against the Pillow 13 / torchvision 0.29 outputs recorded in tests/fixtures/images/ops.txt.
//! Each case starts from identical pixels on both sides (the synthetic picture, or a PNG, whose decoding is
//! exact), so any difference is the transform's.

mod common;

use common::images::{fixture, fnv1a64, manifest, synth};
use resnet::data::image::{RgbImage, center_crop, crop, decode_file, flip_horizontal, resize, resize_shorter};
use std::collections::HashMap;

fn source(spec: &str) -> RgbImage {
    match spec.split_once(':') {
        Some(("synth", size)) => {
            let (w, h) = size.split_once('x').expect("WxH");
            synth(w.parse().unwrap(), h.parse().unwrap())
        }
        Some(("file", name)) => decode_file(&fixture(name)).unwrap(),
        _ => panic!("bad source {spec}"),
    }
}

fn apply(img: &RgbImage, op: &str, a: &[usize]) -> RgbImage {
    match op {
        "resize" => resize(img, a[0], a[1]),
        "resize_shorter" => resize_shorter(img, a[0]),
        "center_crop" => center_crop(img, a[0], a[1]),
        "eval" => center_crop(&resize_shorter(img, a[0]), a[1], a[1]),
        "crop" => crop(img, a[0] as isize, a[1] as isize, a[2], a[3]),
        "flip" => flip_horizontal(img),
        _ => panic!("unknown op {op}"),
    }
}

#[test]
fn matches_pillow_and_torchvision() {
    let mut sources = HashMap::new();
    let mut failures = Vec::new();
    let cases = manifest("ops.txt");
    for case in &cases {
        let eq = case.iter().position(|t| t == "=").expect("=");
        let (spec, op) = (&case[0], &case[1]);
        // Crop offsets can be negative; parse them through isize.
        let args: Vec<usize> = case[2..eq].iter().map(|a| a.parse::<isize>().unwrap() as usize).collect();
        let (width, height): (usize, usize) = (case[eq + 1].parse().unwrap(), case[eq + 2].parse().unwrap());
        let hash = u64::from_str_radix(&case[eq + 3], 16).unwrap();

        let img = sources.entry(spec.clone()).or_insert_with(|| source(spec));
        let out = apply(img, op, &args);
        let got = (out.width, out.height, fnv1a64(&out.data));
        if got != (width, height, hash) {
            failures.push(format!("{}: got {}x{} {:016x}", case[..eq].join(" "), got.0, got.1, got.2));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    println!("{} resize/crop/flip cases bit-exact", cases.len());
}
