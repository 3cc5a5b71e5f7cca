//! Normalization and the paper's CIFAR augmentation (4-pixel zero pad after mean
//! subtraction, random 32×32 crop, random horizontal flip). Output is NHWC f32.

use super::cifar::{Dataset, IMAGE_BYTES, SIDE};
use crate::rng::Rng;
use anyhow::{Result, bail};

/// Input normalization, applied to pixels scaled to [0, 1].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    /// Subtract the per-pixel mean image (HWC, 3072 values), as the paper.
    PixelMean(Vec<f32>),
    /// Per-channel `(x - mean) / std`.
    Channel { mean: [f32; 3], std: [f32; 3] },
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

impl Norm {
    /// `pixel-mean` needs the training set to compute the mean image.
    pub fn from_name(name: &str, train: Option<&Dataset>) -> Result<Norm> {
        match name {
            "pixel-mean" => match train {
                Some(d) => Ok(Norm::PixelMean(pixel_mean(d))),
                None => {
                    bail!("--norm pixel-mean needs the training images to compute the mean image")
                }
            },
            "imagenet" => Ok(Norm::Channel { mean: IMAGENET_MEAN, std: IMAGENET_STD }),
            "cifar" => Ok(Norm::Channel { mean: CIFAR_MEAN, std: CIFAR_STD }),
            _ => bail!("unknown --norm '{name}' (expected pixel-mean, imagenet or cifar)"),
        }
    }
    pub fn label(&self) -> &'static str {
        match self {
            Norm::PixelMean(_) => "pixel-mean",
            Norm::Channel { mean, .. } if *mean == IMAGENET_MEAN => "imagenet",
            Norm::Channel { .. } => "cifar",
        }
    }

    /// Writes one planar u8 image as normalized HWC f32.
    fn apply(&self, img: &[u8], out: &mut [f32]) {
        let plane = SIDE * SIDE;
        for p in 0..plane {
            for c in 0..3 {
                let v = img[c * plane + p] as f32 / 255.0;
                out[p * 3 + c] = match self {
                    Norm::PixelMean(m) => v - m[p * 3 + c],
                    Norm::Channel { mean, std } => (v - mean[c]) / std[c],
                };
            }
        }
    }
}

/// The mean image over a dataset, HWC in [0, 1].
pub fn pixel_mean(d: &Dataset) -> Vec<f32> {
    let mut sum = vec![0f64; IMAGE_BYTES];
    for i in 0..d.len() {
        for (p, &v) in d.image(i).iter().enumerate() {
            sum[p] += v as f64;
        }
    }
    let plane = SIDE * SIDE;
    let mut hwc = vec![0f32; IMAGE_BYTES];
    for c in 0..3 {
        for p in 0..plane {
            hwc[p * 3 + c] = (sum[c * plane + p] / d.len().max(1) as f64 / 255.0) as f32;
        }
    }
    hwc
}

/// Normalizes image `i` into `out` (HWC); with `rng`, applies the paper's augmentation.
pub fn prepare(d: &Dataset, i: usize, norm: &Norm, rng: Option<&mut Rng>, tmp: &mut [f32], out: &mut [f32]) {
    let Some(rng) = rng else {
        norm.apply(d.image(i), out);
        return;
    };
    norm.apply(d.image(i), tmp);
    const PAD: usize = 4;
    let dy = rng.below(2 * PAD + 1) as isize - PAD as isize;
    let dx = rng.below(2 * PAD + 1) as isize - PAD as isize;
    let flip = rng.below(2) == 1;
    for y in 0..SIDE {
        let sy = y as isize + dy;
        for x in 0..SIDE {
            let dst = &mut out[(y * SIDE + x) * 3..][..3];
            let xs = if flip { SIDE - 1 - x } else { x };
            let sx = xs as isize + dx;
            if sy < 0 || sx < 0 || sy >= SIDE as isize || sx >= SIDE as isize {
                dst.fill(0.0);
            } else {
                dst.copy_from_slice(&tmp[(sy as usize * SIDE + sx as usize) * 3..][..3]);
            }
        }
    }
}
