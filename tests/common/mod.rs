//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod cli;
pub mod images;

use resnet::engine::conv::ConvShape;
use resnet::model::ResNet;
use resnet::nn::Slot;
use resnet::rng::Rng;
use std::path::{Path, PathBuf};

/// ‖a − b‖ / ‖b‖ in f64.
pub fn rel_err(a: &[f32], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - y).powi(2)).sum();
    let den: f64 = b.iter().map(|y| y * y).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn rel_err32(a: &[f32], b: &[f32]) -> f64 {
    rel_err(a, &b.iter().map(|&v| v as f64).collect::<Vec<_>>())
}

pub fn random(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// A fresh empty directory under the target dir for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `count` random CIFAR-10 records (label byte + 3072 pixels) whose label can
/// be learned from the image (a bright square whose position depends on the class).
pub fn write_cifar_file(path: &Path, count: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut bytes = Vec::with_capacity(count * 3073);
    for _ in 0..count {
        let label = rng.below(10) as u8;
        bytes.push(label);
        let (cy, cx) = (4 + (label as usize / 5) * 16, 2 + (label as usize % 5) * 6);
        for c in 0..3 {
            for y in 0..32 {
                for x in 0..32 {
                    let inside = y >= cy && y < cy + 8 && x >= cx && x < cx + 5;
                    let noise = rng.below(60) as u8;
                    bytes.push(if inside { 180 + noise } else { noise + 20 * c as u8 });
                }
            }
        }
    }
    std::fs::write(path, bytes).unwrap();
}

/// A directory in the official CIFAR-10 layout (smaller batches than the official 10000
/// would fail validation, so this writes the full record counts only when asked).
pub fn write_cifar_dir(dir: &Path, per_file: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=5 {
        write_cifar_file(&dir.join(format!("data_batch_{i}.bin")), per_file, i as u64);
    }
    write_cifar_file(&dir.join("test_batch.bin"), per_file, 99);
}

pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data").join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("SKIP: {} not found (the shared data folder is not beside the checkout)", p.display());
        None
    }
}

/// Naive convolution (NHWC, OHWI): returns (y, dx, dw) for upstream gradient `dy`.
pub fn conv_ref(s: &ConvShape, n: usize, x: &[f32], w: &[f32], dy: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow, k) = (s.out_h(), s.out_w(), s.kernel);
    let mut y = vec![0f64; n * s.out_len()];
    let mut dx = vec![0f64; n * s.in_len()];
    let mut dw = vec![0f64; s.weight_len()];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for co in 0..s.c_out {
                    let yi = ((b * oh + oy) * ow + ox) * s.c_out + co;
                    for ky in 0..k {
                        for kx in 0..k {
                            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            for ci in 0..s.c_in {
                                let xi = ((b * s.h + iy as usize) * s.w + ix as usize) * s.c_in + ci;
                                let wi = ((co * k + ky) * k + kx) * s.c_in + ci;
                                y[yi] += x[xi] as f64 * w[wi] as f64;
                                dx[xi] += dy[yi] as f64 * w[wi] as f64;
                                dw[wi] += dy[yi] as f64 * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (y, dx, dw)
}

/// Each parameter's name and gradient.
pub type Grads = Vec<(String, Vec<f32>)>;

/// A training forward of `images` (32×32, 10 classes) through `model`, softmax
/// cross-entropy against `labels`, and the backward pass: the logits, the loss and every
/// parameter's gradient.
pub fn forward_backward(model: &mut ResNet, images: &[f32], labels: &[u32]) -> (Vec<f32>, f32, Grads) {
    let n = labels.len();
    let logits = model.forward(true, n, (32, 32), images).to_vec();
    let mut dlogits = vec![0f32; n * 10];
    let (loss, _) = resnet::engine::ops::softmax_cross_entropy(n, 10, &logits, labels, &mut dlogits);
    model.backward(&dlogits);
    let grads = model
        .named()
        .iter()
        .filter_map(|t| match &t.slot {
            Slot::Param(p) => Some((t.name.clone(), p.grad.to_host())),
            _ => None,
        })
        .collect();
    (logits, loss, grads)
}
