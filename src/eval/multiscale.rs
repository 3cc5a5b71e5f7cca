//! The paper's best-result protocol (§3.4, Tables 4–5): the network applied fully
//! convolutionally to whole images whose shorter side is each of {224, 256, 384, 480,
//! 640}, and to their mirror images, with the scores averaged.
//!
//! Fully convolutional form: the fc layer applied at every position of the last feature
//! map and the class scores averaged over positions equals the fc layer applied to the
//! globally average-pooled map (the fc layer is linear), so running the network on the
//! whole image is exactly that computation. The softmax outputs are then averaged over
//! scales and flips.

use super::{EvalResult, average_views, softmax};
use crate::data::Norm;
use crate::data::folder::ImageFolder;
use crate::data::image::{self, RgbImage};
use crate::data::prefetch::Prefetch;
use crate::model::ResNet;
use anyhow::{Context, Result, bail};
use std::sync::Arc;

/// Shorter sides of the paper's multi-scale testing.
pub const PAPER_SCALES: [usize; 5] = [224, 256, 384, 480, 640];

/// The largest scaled image that multi-scale testing runs the network on, in pixels. A 4:3 photo at shorter side
/// 640 has 0.55 M and a 10:1 panorama 4.1 M; this admits 19.5:1 at 640. Memory grows with the pixels: at the
/// limit, evaluating ResNet-18 or -50 on the image and its mirror peaks near 6 GB (measured), and a 40000×1
/// strip, 25600000×640 at shorter side 640, would need thousands of times that; such images are refused.
pub const MAX_SCALED_PIXELS: usize = 8_000_000;

/// One scale of one image: the image and its mirror, normalized, `2 * h * w * 3` values.
pub struct ScaleViews {
    pub hw: (usize, usize),
    pub images: Vec<f32>,
}

/// The views of every scale for one decoded image; an error when a scale would make the image larger than
/// [`MAX_SCALED_PIXELS`] (the caller names the file).
pub fn scale_views(img: &RgbImage, scales: &[usize], norm: &Norm) -> Result<Vec<ScaleViews>> {
    for &s in scales {
        let (w, h) = image::shorter_side_size(img.width, img.height, s);
        if w.saturating_mul(h) > MAX_SCALED_PIXELS {
            bail!(
                "{}x{} is too elongated for multi-scale testing: shorter side {s} would make it {w}x{h}, more than {MAX_SCALED_PIXELS} pixels",
                img.width,
                img.height
            );
        }
    }
    Ok(scales
        .iter()
        .map(|&s| {
            let scaled = image::resize_shorter(img, s);
            let hw = (scaled.height, scaled.width);
            let len = hw.0 * hw.1 * 3;
            let mut images = vec![0f32; 2 * len];
            norm.normalize_hwc(&scaled.data, hw, [0.0; 3], &mut images[..len]);
            norm.normalize_hwc(&image::flip_horizontal(&scaled).data, hw, [0.0; 3], &mut images[len..]);
            ScaleViews { hw, images }
        })
        .collect())
}

/// Class probabilities of one image: the mean softmax over every scale and flip.
pub fn classify(model: &mut ResNet, views: &[ScaleViews]) -> Vec<f32> {
    let classes = model.classes();
    let mut sum = vec![0f32; classes];
    for v in views {
        let probs = softmax(model.forward(false, 2, v.hw, &v.images), classes);
        for (s, p) in sum.iter_mut().zip(average_views(&probs, classes, 2)) {
            *s += p;
        }
    }
    sum.iter_mut().for_each(|s| *s /= views.len().max(1) as f32);
    sum
}

/// Evaluates every image of `folder` with the multi-scale protocol; `workers` threads
/// decode and resize ahead of the network.
pub fn evaluate(
    model: &mut ResNet,
    folder: Arc<ImageFolder>,
    norm: Arc<Norm>,
    scales: Vec<usize>,
    workers: usize,
    progress: &crate::progress::Bar,
) -> EvalResult {
    let mut r = EvalResult::new(model.classes());
    let source = folder.clone();
    let prepared = Prefetch::new(0, folder.len(), workers, move |i| -> Result<Vec<ScaleViews>> {
        let path = &source.samples[i].0;
        // Reported as "PATH: REASON", as a file that does not decode is.
        scale_views(&image::decode_file(path)?, &scales, &norm).with_context(|| path.display().to_string())
    });
    for (i, views) in prepared.enumerate() {
        match views {
            Ok(views) => r.add(&classify(model, &views), folder.samples[i].1),
            Err(e) => r.skipped.push(format!("{e:#}")),
        }
        progress.inc(1);
    }
    progress.finish_and_clear();
    r.finish()
}
