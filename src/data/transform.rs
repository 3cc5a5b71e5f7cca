//! Input normalization, and the paper's CIFAR augmentation (4-pixel zero pad after mean
//! subtraction, random 32×32 crop, random horizontal flip). Output is NHWC f32.

use super::cifar::{Dataset, SIDE};
use super::loader::Samples;
use crate::rng::Rng;
use anyhow::{Result, bail};
use std::sync::Arc;

/// Input normalization, applied to pixels scaled to [0, 1].
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Norm {
    /// Subtract the per-pixel mean image (HWC, square), as the paper. Images of another
    /// size (multi-scale testing) subtract its per-channel average instead.
    PixelMean(Vec<f32>),
    /// Per-channel `(x - mean) / std`.
    Channel { mean: [f32; 3], std: [f32; 3] },
}

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];
pub const CIFAR_MEAN: [f32; 3] = [0.4914, 0.4822, 0.4465];
pub const CIFAR_STD: [f32; 3] = [0.2470, 0.2435, 0.2616];

impl Norm {
    /// `pixel-mean` needs the mean image, computed by the caller from training images.
    pub fn from_name(name: &str, mean_image: Option<Vec<f32>>) -> Result<Norm> {
        match name {
            "pixel-mean" => match mean_image {
                Some(m) => Ok(Norm::PixelMean(m)),
                None => {
                    bail!("--norm pixel-mean needs the training images to compute the mean image")
                }
            },
            "imagenet" => Ok(Norm::Channel { mean: IMAGENET_MEAN, std: IMAGENET_STD }),
            "cifar" => Ok(Norm::Channel { mean: CIFAR_MEAN, std: CIFAR_STD }),
            _ => bail!("unknown --norm '{name}' (expected pixel-mean, imagenet or cifar)"),
        }
    }
    /// Checks a normalization read from a file: a per-pixel mean is a square RGB image of
    /// finite values, per-channel statistics are finite with positive deviations.
    pub fn validate(&self) -> Result<()> {
        match self {
            Norm::PixelMean(m) => {
                let side = (m.len() / 3).isqrt();
                if m.is_empty() || side * side * 3 != m.len() {
                    bail!("per-pixel mean of {} values is not a square RGB image", m.len());
                }
                if !m.iter().all(|v| v.is_finite()) {
                    bail!("per-pixel mean holds a value that is not finite");
                }
            }
            Norm::Channel { mean, std } => {
                if !mean.iter().all(|v| v.is_finite()) || !std.iter().all(|v| v.is_finite() && *v > 0.0) {
                    bail!("per-channel normalization {mean:?} / {std:?} is not finite with positive deviations");
                }
            }
        }
        Ok(())
    }

    pub fn label(&self) -> &'static str {
        match self {
            Norm::PixelMean(_) => "pixel-mean",
            Norm::Channel { mean, .. } if *mean == IMAGENET_MEAN => "imagenet",
            Norm::Channel { .. } => "cifar",
        }
    }

    /// Per-channel `(v - sub[c]) / div[c]`, used whenever the per-pixel mean does not apply.
    /// A division, not a multiply by the inverse, so results match torchvision's Normalize
    /// bit for bit.
    fn channel_affine(&self) -> ([f32; 3], [f32; 3]) {
        match self {
            Norm::Channel { mean, std } => (*mean, *std),
            Norm::PixelMean(m) => {
                let mut avg = [0f64; 3];
                for (i, v) in m.iter().enumerate() {
                    avg[i % 3] += *v as f64;
                }
                let pixels = (m.len() / 3).max(1) as f64;
                ([(avg[0] / pixels) as f32, (avg[1] / pixels) as f32, (avg[2] / pixels) as f32], [1.0; 3])
            }
        }
    }

    /// Normalizes an HWC u8 image of `hw` pixels into `out`, adding `offset` (PCA lighting
    /// noise, in [0, 1] units) to every pixel first.
    pub fn normalize_hwc(&self, rgb: &[u8], hw: (usize, usize), offset: [f32; 3], out: &mut [f32]) {
        let len = hw.0 * hw.1 * 3;
        let (rgb, out) = (&rgb[..len], &mut out[..len]);
        match self {
            Norm::PixelMean(m) if m.len() == len => {
                for ((o, &v), (mv, c)) in out.iter_mut().zip(rgb).zip(m.iter().zip((0..3).cycle())) {
                    *o = v as f32 / 255.0 + offset[c] - mv;
                }
            }
            _ => {
                let (sub, div) = self.channel_affine();
                for (px, o) in rgb.chunks_exact(3).zip(out.chunks_exact_mut(3)) {
                    for c in 0..3 {
                        o[c] = (px[c] as f32 / 255.0 + offset[c] - sub[c]) / div[c];
                    }
                }
            }
        }
    }
}

/// The mean image over a CIFAR dataset, HWC in [0, 1].
pub fn pixel_mean(d: &Dataset) -> Vec<f32> {
    let plane = SIDE * SIDE;
    let mut sum = vec![0f64; 3 * plane];
    for i in 0..d.len() {
        for (p, &v) in d.image(i).iter().enumerate() {
            sum[p] += v as f64;
        }
    }
    let mut hwc = vec![0f32; 3 * plane];
    for c in 0..3 {
        for p in 0..plane {
            hwc[p * 3 + c] = (sum[c * plane + p] / d.len().max(1) as f64 / 255.0) as f32;
        }
    }
    hwc
}

/// CIFAR records as loader samples: normalized, and augmented as the paper for training.
pub struct CifarSamples {
    pub data: Arc<Dataset>,
    pub norm: Arc<Norm>,
}

impl Samples for CifarSamples {
    fn len(&self) -> usize {
        self.data.len()
    }
    fn hw(&self) -> (usize, usize) {
        (SIDE, SIDE)
    }
    fn write(&self, i: usize, rng: Option<&mut Rng>, out: &mut [f32]) -> Result<u32> {
        prepare(&self.data, i, &self.norm, rng, out);
        Ok(self.data.labels[i] as u32)
    }
}

/// Normalizes CIFAR image `i` into `out` (HWC); with `rng`, applies the paper's
/// augmentation: pad 4 with zeros (after normalization), random 32×32 crop, random flip.
pub fn prepare(d: &Dataset, i: usize, norm: &Norm, rng: Option<&mut Rng>, out: &mut [f32]) {
    let plane = SIDE * SIDE;
    let img = d.image(i);
    // Planar bytes to HWC, then normalize in place.
    let mut hwc = [0u8; 3 * SIDE * SIDE];
    for p in 0..plane {
        for c in 0..3 {
            hwc[p * 3 + c] = img[c * plane + p];
        }
    }
    let Some(rng) = rng else {
        norm.normalize_hwc(&hwc, (SIDE, SIDE), [0.0; 3], out);
        return;
    };
    let mut clean = [0f32; 3 * SIDE * SIDE];
    norm.normalize_hwc(&hwc, (SIDE, SIDE), [0.0; 3], &mut clean);
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
                dst.copy_from_slice(&clean[(sy as usize * SIDE + sx as usize) * 3..][..3]);
            }
        }
    }
}
