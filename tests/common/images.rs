//! Image-test helpers: the fixture paths, and the synthetic picture and hash that
//! tools/make_image_fixtures.py uses for the resize references.

use resnet::data::image::RgbImage;
use std::path::{Path, PathBuf};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images").join(name)
}

/// The non-comment lines of a fixture manifest, split on whitespace.
pub fn manifest(name: &str) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(fixture(name)).expect("manifest; run tools/make_image_fixtures.py");
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .collect()
}

/// `synth` of tools/make_image_fixtures.py, bit for bit: ramps, a hard-edged checkerboard and hashed noise.
pub fn synth(width: usize, height: usize) -> RgbImage {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            for c in 0..3 {
                let (xu, yu, cu) = (x as u32, y as u32, c as u32);
                let mut k = xu.wrapping_mul(73856093) ^ yu.wrapping_mul(19349663) ^ cu.wrapping_mul(83492791);
                k = (k ^ (k >> 13)).wrapping_mul(0x5BD1E995);
                k ^= k >> 15;
                let noise = (k & 63) as i64 - 32;
                let (x, y) = (x as i64, y as i64);
                let (w, h) = (width as i64, height as i64);
                let ramp = match c {
                    0 => x * 255 / (w - 1).max(1),
                    1 => y * 255 / (h - 1).max(1),
                    _ => (x + y) * 255 / (w + h - 2).max(1),
                };
                let block = if ((x / 7) + (y / 5)) % 2 == 0 { 60 } else { -60 };
                data.push((ramp + block + noise).clamp(0, 255) as u8);
            }
        }
    }
    RgbImage { width, height, data }
}

/// 64-bit FNV-1a, the hash the reference outputs are recorded by.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF29CE484222325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x100000001B3))
}

/// A synthetic image folder: `classes` classes whose images differ by colour and the
/// position of a bright bar, with noise, as PNGs of `w`×`h` pixels.
pub fn synthetic_folder(dir: &Path, classes: usize, per_class: usize, w: u32, h: u32, seed: u64) {
    let mut rng = resnet::rng::Rng::new(seed);
    for c in 0..classes {
        let class_dir = dir.join(format!("class{c}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..per_class {
            let img = image::RgbImage::from_fn(w, h, |x, y| {
                let bar = (x as usize * classes / w as usize) == c;
                let mut px = [rng.below(60) as u8 + 40; 3];
                px[c % 3] = px[c % 3].saturating_add(90);
                if bar {
                    px = [220, 220, 220];
                }
                let _ = y;
                image::Rgb(px)
            });
            img.save(class_dir.join(format!("{i:03}.png"))).unwrap();
        }
    }
}
