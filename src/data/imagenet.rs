//! ImageNet-style inputs: the paper's training augmentation (shorter side resized to a
//! random size in [256, 480], random 224 crop, horizontal flip, AlexNet's PCA lighting),
//! torchvision's RandomResizedCrop as an option, and the test-time views of the
//! evaluation protocols (centre crop, 10 crops, full images at several scales).

use super::folder::ImageFolder;
use super::image::{self, RgbImage};
use super::loader::Samples;
use super::transform::Norm;
use crate::rng::Rng;
use anyhow::Result;
use std::sync::Arc;

/// AlexNet's PCA lighting constants for RGB in [0, 1] (fb.resnet.torch's values).
pub const PCA_EIGVAL: [f32; 3] = [0.2175, 0.0188, 0.0045];
pub const PCA_EIGVEC: [[f32; 3]; 3] =
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]];

/// How a training image is cropped.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum TrainCrop {
    /// The paper (§3.4): shorter side resized to a uniform random size in [min, max],
    /// then a random `size` crop.
    Scale { min: usize, max: usize },
    /// torchvision's RandomResizedCrop: 8–100% of the area, aspect ratio 3/4–4/3,
    /// resized to `size`.
    RandomResized,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainTransform {
    pub crop: TrainCrop,
    pub size: usize,
    /// Standard deviation of the PCA lighting noise (0.1 in AlexNet; 0 turns it off).
    pub lighting: f32,
}

/// A random crop window `(x, y, w, h)` as torchvision's RandomResizedCrop.get_params.
fn random_resized_window(width: usize, height: usize, rng: &mut Rng) -> (usize, usize, usize, usize) {
    let area = (width * height) as f64;
    let (lo, hi) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * (0.08 + 0.92 * rng.uniform());
        let aspect = (lo + (hi - lo) * rng.uniform()).exp();
        let w = (target * aspect).sqrt().round() as usize;
        let h = (target / aspect).sqrt().round() as usize;
        if 0 < w && w <= width && 0 < h && h <= height {
            return (rng.below(width - w + 1), rng.below(height - h + 1), w, h);
        }
    }
    // Fallback: the whole image, cut to the nearest allowed aspect ratio, centred.
    let ratio = width as f64 / height as f64;
    let (w, h) = if ratio < 3.0 / 4.0 {
        (width, ((width as f64) / (3.0 / 4.0)).round() as usize)
    } else if ratio > 4.0 / 3.0 {
        (((height as f64) * (4.0 / 3.0)).round() as usize, height)
    } else {
        (width, height)
    };
    let (w, h) = (w.min(width), h.min(height));
    ((width - w) / 2, (height - h) / 2, w, h)
}

/// The RGB offset of AlexNet's lighting noise: `eigvec · (α ⊙ eigval)`, α ~ N(0, std).
fn lighting_offset(std: f32, rng: &mut Rng) -> [f32; 3] {
    if std == 0.0 {
        return [0.0; 3];
    }
    let alpha: [f32; 3] = std::array::from_fn(|_| rng.normal() as f32 * std);
    std::array::from_fn(|i| (0..3).map(|j| PCA_EIGVEC[i][j] * alpha[j] * PCA_EIGVAL[j]).sum())
}

impl TrainTransform {
    /// The paper's recipe at the given crop size and shorter-side range.
    pub fn paper(size: usize, min: usize, max: usize) -> Self {
        TrainTransform { crop: TrainCrop::Scale { min, max }, size, lighting: 0.1 }
    }

    /// Crops, flips and draws the lighting noise for one image.
    pub fn apply(&self, img: &RgbImage, rng: &mut Rng) -> (RgbImage, [f32; 3]) {
        let s = self.size;
        let cropped = match self.crop {
            TrainCrop::Scale { min, max } => {
                let side = min + rng.below(max.saturating_sub(min) + 1);
                // Only the window is resized: a very elongated image would not fit in memory whole.
                let (w, h) = image::shorter_side_size(img.width, img.height, side);
                // When the image is smaller than the crop (min < size), the rest is zero.
                let x = rng.below(w.saturating_sub(s) + 1);
                let y = rng.below(h.saturating_sub(s) + 1);
                image::resize_crop(img, w, h, x as isize, y as isize, s, s)
            }
            TrainCrop::RandomResized => {
                let (x, y, w, h) = random_resized_window(img.width, img.height, rng);
                image::resize(&image::crop(img, x as isize, y as isize, w, h), s, s)
            }
        };
        let flipped = if rng.below(2) == 1 { image::flip_horizontal(&cropped) } else { cropped };
        (flipped, lighting_offset(self.lighting, rng))
    }
}

/// Test-time views of one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalViews {
    /// Shorter side to `resize`, the centre `crop`×`crop` (torchvision's eval transform).
    Center { resize: usize, crop: usize },
    /// Shorter side to `resize`; the 4 corner and the centre crops, and their mirror images.
    TenCrop { resize: usize, crop: usize },
}

impl EvalViews {
    pub fn count(&self) -> usize {
        match self {
            EvalViews::Center { .. } => 1,
            EvalViews::TenCrop { .. } => 10,
        }
    }
    pub fn crop(&self) -> usize {
        match *self {
            EvalViews::Center { crop, .. } | EvalViews::TenCrop { crop, .. } => crop,
        }
    }
    /// The views, in torchvision's TenCrop order (tl, tr, bl, br, centre, then flipped). Each crop is resized
    /// alone rather than cut from the whole resized image, which for a very elongated image (a 40000×1 strip
    /// becomes 10240000×256) would not fit in memory; the pixels are the same.
    pub fn apply(&self, img: &RgbImage) -> Vec<RgbImage> {
        let (EvalViews::Center { resize, crop } | EvalViews::TenCrop { resize, crop }) = *self;
        let (w, h) = image::shorter_side_size(img.width, img.height, resize);
        let view = |x: isize, y: isize| image::resize_crop(img, w, h, x, y, crop, crop);
        let centre = (image::center_offset(w, crop), image::center_offset(h, crop));
        match *self {
            EvalViews::Center { .. } => vec![view(centre.0, centre.1)],
            EvalViews::TenCrop { .. } => {
                let (right, bottom) = (w as isize - crop as isize, h as isize - crop as isize);
                let windows = [(0, 0), (right, 0), (0, bottom), (right, bottom), centre];
                let mut views: Vec<RgbImage> = windows.iter().map(|&(x, y)| view(x, y)).collect();
                // The mirror image's crop at x is the mirror of the original's at `right - x`: the corners swap
                // sides, and the centre shifts by one when the margin is odd (each image rounds its half to even).
                views.extend(windows.iter().map(|&(x, y)| image::flip_horizontal(&view(right - x, y))));
                views
            }
        }
    }
}

/// How a folder's images become samples.
#[derive(Clone, Copy, Debug)]
pub enum FolderTransform {
    Train(TrainTransform),
    Eval(EvalViews),
}

/// Image-folder samples for the loader: decoded, transformed and normalized in the
/// loader's threads. A corrupt file is an error naming it (the loader skips it).
pub struct FolderSamples {
    pub folder: Arc<ImageFolder>,
    pub transform: FolderTransform,
    pub norm: Arc<Norm>,
}

impl Samples for FolderSamples {
    fn len(&self) -> usize {
        self.folder.len()
    }
    fn hw(&self) -> (usize, usize) {
        let s = match self.transform {
            FolderTransform::Train(t) => t.size,
            FolderTransform::Eval(v) => v.crop(),
        };
        (s, s)
    }
    fn views(&self) -> usize {
        match self.transform {
            FolderTransform::Train(_) => 1,
            FolderTransform::Eval(v) => v.count(),
        }
    }
    fn write(&self, i: usize, rng: Option<&mut Rng>, out: &mut [f32]) -> Result<u32> {
        let (path, label) = &self.folder.samples[i];
        let img = image::decode_file(path)?;
        let hw = self.hw();
        let len = hw.0 * hw.1 * 3;
        match (self.transform, rng) {
            (FolderTransform::Train(t), Some(rng)) => {
                let (view, offset) = t.apply(&img, rng);
                self.norm.normalize_hwc(&view.data, hw, offset, out);
            }
            (FolderTransform::Train(t), None) => {
                // Training samples read without augmentation: the centre view.
                let view = EvalViews::Center { resize: t.size * 8 / 7, crop: t.size }.apply(&img);
                self.norm.normalize_hwc(&view[0].data, hw, [0.0; 3], out);
            }
            (FolderTransform::Eval(v), _) => {
                for (k, view) in v.apply(&img).iter().enumerate() {
                    self.norm.normalize_hwc(&view.data, hw, [0.0; 3], &mut out[k * len..(k + 1) * len]);
                }
            }
        }
        Ok(*label)
    }
}

/// The mean image (HWC in [0, 1]) of up to `limit` training images, evenly spaced, as
/// the centre view `view` sees them: the paper's per-pixel mean at the crop size.
pub fn pixel_mean(folder: &ImageFolder, view: EvalViews, limit: usize) -> Vec<f32> {
    use rayon::prelude::*;
    let count = folder.len().min(limit.max(1));
    let progress = crate::progress::bar("pixel mean", count, true);
    let step = folder.len() as f64 / count as f64;
    let crop = view.crop();
    let sum = (0..count)
        .into_par_iter()
        .inspect(|_| progress.inc(1))
        .filter_map(|k| image::decode_file(&folder.samples[(k as f64 * step) as usize].0).ok())
        .map(|img| {
            let v = view.apply(&img).swap_remove(0);
            (v.data.iter().map(|&b| b as f64).collect::<Vec<f64>>(), 1usize)
        })
        .reduce(
            || (vec![0f64; crop * crop * 3], 0),
            |(mut a, n), (b, m)| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                (a, n + m)
            },
        );
    progress.finish_and_clear();
    let n = sum.1.max(1) as f64;
    sum.0.iter().map(|v| (v / n / 255.0) as f32).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(width: usize, height: usize, rng: &mut Rng) -> RgbImage {
        RgbImage { width, height, data: (0..width * height * 3).map(|_| rng.below(256) as u8).collect() }
    }

    /// The views cut from the whole resized image, as they were computed before the crops were resized alone.
    fn views_of_the_whole(img: &RgbImage, views: EvalViews) -> Vec<RgbImage> {
        let (EvalViews::Center { resize, crop } | EvalViews::TenCrop { resize, crop }) = views;
        let scaled = image::resize_shorter(img, resize);
        let five = |im: &RgbImage| {
            let (w, h, c) = (im.width as isize, im.height as isize, crop as isize);
            vec![
                image::crop(im, 0, 0, crop, crop),
                image::crop(im, w - c, 0, crop, crop),
                image::crop(im, 0, h - c, crop, crop),
                image::crop(im, w - c, h - c, crop, crop),
                image::center_crop(im, crop, crop),
            ]
        };
        match views {
            EvalViews::Center { .. } => vec![image::center_crop(&scaled, crop, crop)],
            EvalViews::TenCrop { .. } => [five(&scaled), five(&image::flip_horizontal(&scaled))].concat(),
        }
    }

    #[test]
    fn views_equal_crops_of_the_whole_resized_image() {
        let mut rng = Rng::new(3);
        // Odd and even margins on both axes, crops larger than the image (odd and even padding), strips.
        for (w, h) in [(31, 24), (24, 31), (30, 23), (9, 9), (1, 17), (40, 1), (5, 6), (0, 4)] {
            let img = noise(w, h, &mut rng);
            for (resize, crop) in [(16, 12), (17, 12), (16, 13), (12, 16), (11, 14), (8, 8)] {
                for views in [EvalViews::Center { resize, crop }, EvalViews::TenCrop { resize, crop }] {
                    assert_eq!(views.apply(&img), views_of_the_whole(&img, views), "{w}x{h} {views:?}");
                }
            }
        }
    }

    #[test]
    fn scale_crops_draw_the_same_windows() {
        let t = TrainTransform { crop: TrainCrop::Scale { min: 9, max: 20 }, size: 12, lighting: 0.1 };
        let mut rng = Rng::new(5);
        for (w, h) in [(31, 24), (7, 40), (12, 12), (3, 2)] {
            let img = noise(w, h, &mut rng);
            for seed in 0..20 {
                let (mut a, mut b) = (Rng::new(seed), Rng::new(seed));
                // The former computation: the whole resized image, then the crop, with the same draws.
                let side = 9 + b.below(12);
                let scaled = image::resize_shorter(&img, side);
                let x = b.below(scaled.width.saturating_sub(12) + 1);
                let y = b.below(scaled.height.saturating_sub(12) + 1);
                let cropped = image::crop(&scaled, x as isize, y as isize, 12, 12);
                let want = if b.below(2) == 1 { image::flip_horizontal(&cropped) } else { cropped };
                let (got, offset) = t.apply(&img, &mut a);
                assert_eq!(got, want, "{w}x{h} seed {seed}");
                assert_eq!(offset, lighting_offset(0.1, &mut b), "the draws after the crop are the same");
            }
        }
    }
}
