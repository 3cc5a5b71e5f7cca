//! Bilinear resizing that reproduces Pillow's `Image.resize(size, Image.BILINEAR)` bit for bit, and
//! torchvision's `Resize(int)` on top of it.
//!
//! Pillow (libImaging/Resample.c, `ImagingResample`; checked bit for bit against Pillow 13.0) resizes in two separable
//! passes, horizontal first. Each output pixel of a pass is a weighted sum of the source pixels under a triangle
//! filter stretched by the downscale factor (so downscaling antialiases), with the weights normalised to sum to 1,
//! rounded to 22-bit fixed point, and the sum rounded and clamped back to u8. The intermediate image is 8-bit, so
//! the rounding after the first pass is part of the result and is reproduced here.

use super::rgb_image::RgbImage;
use std::borrow::Cow;
use std::ops::Range;

/// Fixed-point fraction bits of the weights: Pillow's `PRECISION_BITS` (32 - 8 - 2).
const PRECISION_BITS: u32 = 22;
/// Added before the final shift so that it rounds to nearest.
const HALF: i32 = 1 << (PRECISION_BITS - 1);

/// PIL's `Image.resize((width, height), Image.BILINEAR)` on an RGB image, bit-exact.
///
/// An empty source gives a black image of the requested size.
pub fn resize(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    if (width, height) == (src.width, src.height) {
        return src.clone();
    }
    if src.data.is_empty() || width == 0 || height == 0 {
        return RgbImage::new(width, height);
    }
    resize_window(src, width, height, 0..width, 0..height)
}

/// `crop(&resize(src, width, height), x, y, w, h)`, bit for bit, computing only the resized pixels inside the
/// window, so that its cost follows the window and not the resized image (a 40000×1 picture whose shorter side
/// becomes 256 would be 7.8 GB whole).
pub fn resize_crop(src: &RgbImage, width: usize, height: usize, x: isize, y: isize, w: usize, h: usize) -> RgbImage {
    if src.data.is_empty() || width == 0 || height == 0 {
        // `resize` gives a black image (or an empty one unchanged), so the crop is black.
        return RgbImage::new(w, h);
    }
    // The window clipped to the resized image, in its coordinates.
    let clip = |start: isize, len: usize, size: usize| {
        let end = start.saturating_add_unsigned(len).clamp(0, size as isize);
        start.clamp(0, size as isize) as usize..end as usize
    };
    let (xs, ys) = (clip(x, w, width), clip(y, h, height));
    if xs.is_empty() || ys.is_empty() {
        return RgbImage::new(w, h);
    }
    let (dx, dy) = (xs.start as isize - x, ys.start as isize - y);
    let inside = resize_window(src, width, height, xs, ys);
    if (inside.width, inside.height) == (w, h) { inside } else { super::crop(&inside, -dx, -dy, w, h) }
}

/// torchvision's `Resize(size)` with an int size on a PIL image: the shorter side becomes `size` and the longer
/// `int(size * long / short)` (torchvision 0.29, `_compute_resized_output_size`; Python's `/` of two ints is the
/// correctly rounded float quotient, as f64 division of the exact values is), then a bilinear resize.
///
/// An empty image is returned unchanged (torchvision would divide by zero).
pub fn resize_shorter(src: &RgbImage, size: usize) -> RgbImage {
    let (width, height) = shorter_side_size(src.width, src.height, size);
    if (width, height) == (src.width, src.height) {
        return src.clone();
    }
    resize(src, width, height)
}

/// The `(width, height)` that [`resize_shorter`] resizes a `width`×`height` image to (an empty image keeps its
/// size), for [`resize_crop`] to cut a window of that resize without making all of it.
pub fn shorter_side_size(width: usize, height: usize, size: usize) -> (usize, usize) {
    let (short, long) = (width.min(height), width.max(height));
    if short == 0 {
        return (width, height);
    }
    let new_long = (size.saturating_mul(long) as f64 / short as f64) as usize;
    // As torchvision: `w <= h` makes the width the short side.
    if width <= height { (size, new_long) } else { (new_long, size) }
}

/// Columns `xs` and rows `ys` of `resize(src, width, height)`, for a non-empty source and a non-empty window
/// inside the output. Each output pixel of a pass depends only on its own weights, so evaluating the window's
/// columns and rows alone gives exactly the pixels of the whole resize.
fn resize_window(src: &RgbImage, width: usize, height: usize, xs: Range<usize>, ys: Range<usize>) -> RgbImage {
    // Like Pillow, skip the pass along an axis whose size does not change (it would be the identity anyway).
    let vertical = (height != src.height).then(|| Weights::bilinear(src.height, height, ys.clone()));
    let rows = vertical.as_ref().map_or(ys.clone(), Weights::span);
    // The source rows that the vertical pass reads, resampled horizontally if the width changes.
    let band: Cow<[u8]> = if width != src.width {
        Cow::Owned(resample_horizontal(src, rows.clone(), &Weights::bilinear(src.width, width, xs.clone())))
    } else if xs.len() == width {
        Cow::Borrowed(&src.data[rows.start * width * 3..rows.end * width * 3])
    } else {
        Cow::Owned(super::crop(src, xs.start as isize, rows.start as isize, xs.len(), rows.len()).data)
    };
    match vertical {
        Some(vertical) => resample_vertical(&band, xs.len(), rows.start, &vertical),
        None => RgbImage { width: xs.len(), height: ys.len(), data: band.into_owned() },
    }
}

/// For each output pixel of a range along one axis, the source pixels it reads and their fixed-point weights.
struct Weights {
    /// First source index of each output pixel of the range.
    starts: Vec<usize>,
    /// `stride` weights per output pixel; only the first `len` of them are used.
    weights: Vec<i32>,
    lens: Vec<usize>,
    stride: usize,
}

impl Weights {
    /// Pillow's `precompute_coeffs` for the bilinear filter over the whole source, then `normalize_coeffs_8bpc`,
    /// for the output pixels `outs` of `out_size` (indexed from 0 here). The float expressions are evaluated in
    /// Pillow's order, in f64, since a different rounding of a weight changes the fixed-point value.
    fn bilinear(in_size: usize, out_size: usize, outs: Range<usize>) -> Weights {
        // Pillow takes the size from a float box; sizes below 2^24 convert exactly.
        let scale = in_size as f32 as f64 / out_size as f64;
        // Downscaling widens the triangle (support 1) by the scale factor: that is the antialiasing.
        let filter_scale = scale.max(1.0);
        let support = filter_scale;
        // Pillow multiplies by the reciprocal rather than dividing; the two can round differently.
        let inv_filter_scale = 1.0 / filter_scale;
        let stride = support.ceil() as usize * 2 + 1;
        let mut w = Weights {
            starts: Vec::with_capacity(outs.len()),
            weights: vec![0; outs.len() * stride],
            lens: Vec::with_capacity(outs.len()),
            stride,
        };
        let mut taps = vec![0.0; stride];
        for (out, fixed) in outs.zip(w.weights.chunks_exact_mut(stride)) {
            let center = (out as f64 + 0.5) * scale;
            // C's `(int)` truncates toward zero; negative values are clamped to 0 either way.
            let start = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(in_size as i64).max(start as i64) as usize;
            let taps = &mut taps[..end - start];
            for (i, tap) in taps.iter_mut().enumerate() {
                *tap = triangle(((start + i) as f64 - center + 0.5) * inv_filter_scale);
            }
            let sum: f64 = taps.iter().sum();
            for (fixed, tap) in fixed.iter_mut().zip(taps.iter()) {
                let weight = if sum != 0.0 { tap / sum } else { *tap };
                // Pillow rounds half away from zero; the triangle never goes negative, so only `+ 0.5` applies.
                *fixed = (0.5 + weight * f64::from(1 << PRECISION_BITS)) as i32;
            }
            w.starts.push(start);
            w.lens.push(end - start);
        }
        w
    }

    /// The source indices read by any output pixel.
    fn span(&self) -> Range<usize> {
        let first = self.starts.first().copied().unwrap_or(0);
        let last = self.starts.iter().zip(&self.lens).map(|(s, l)| s + l).max().unwrap_or(first);
        first..last
    }

    /// Output pixel `out`'s first source index and weights.
    fn taps(&self, out: usize) -> (usize, &[i32]) {
        (self.starts[out], &self.weights[out * self.stride..][..self.lens[out]])
    }
}

/// Pillow's `bilinear_filter`: the triangle of half-width 1.
fn triangle(x: f64) -> f64 {
    (1.0 - x.abs()).max(0.0)
}

/// Rounds a fixed-point sum (which already includes `HALF`) to u8, as Pillow's `clip8`.
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resamples rows `rows` of `src` to `weights`' output width; returns those rows, packed.
fn resample_horizontal(src: &RgbImage, rows: Range<usize>, weights: &Weights) -> Vec<u8> {
    let row_len = weights.starts.len() * 3;
    let mut out = vec![0; rows.len() * row_len];
    for (y, out_row) in rows.zip(out.chunks_exact_mut(row_len)) {
        let row = src.row(y);
        for (x, out_pixel) in out_row.chunks_exact_mut(3).enumerate() {
            let (start, taps) = weights.taps(x);
            let mut sum = [HALF; 3];
            for (pixel, &k) in row[start * 3..].chunks_exact(3).zip(taps) {
                for c in 0..3 {
                    sum[c] += i32::from(pixel[c]) * k;
                }
            }
            out_pixel.copy_from_slice(&sum.map(clip8));
        }
    }
    out
}

/// Resamples the packed rows `band` (of `width` pixels, the first being source row `first_row`) vertically to
/// `weights`' output height.
fn resample_vertical(band: &[u8], width: usize, first_row: usize, weights: &Weights) -> RgbImage {
    let height = weights.starts.len();
    let row_len = width * 3;
    let mut out = RgbImage::new(width, height);
    // Whole rows at a time: the inner loop runs over contiguous bytes, which the compiler vectorises.
    let mut sums = vec![0i32; row_len];
    for (y, out_row) in out.data.chunks_exact_mut(row_len).enumerate() {
        let (start, taps) = weights.taps(y);
        sums.fill(HALF);
        for (i, &k) in taps.iter().enumerate() {
            let row = &band[(start - first_row + i) * row_len..][..row_len];
            for (sum, &v) in sums.iter_mut().zip(row) {
                *sum += i32::from(v) * k;
            }
        }
        for (o, &sum) in out_row.iter_mut().zip(&sums) {
            *o = clip8(sum);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (from, to) in [(500, 256), (375, 224), (7, 3), (3, 7), (1, 5), (5, 1)] {
            let w = Weights::bilinear(from, to, 0..to);
            for out in 0..to {
                let (start, taps) = w.taps(out);
                assert!(start + taps.len() <= from);
                let total: i32 = taps.iter().sum();
                assert!((total - (1 << PRECISION_BITS)).abs() <= taps.len() as i32, "{from}->{to} pixel {out}");
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let src = RgbImage { width: 13, height: 7, data: [10, 200, 255].repeat(13 * 7) };
        for (w, h) in [(5, 3), (40, 21), (13, 2), (1, 7), (1, 1)] {
            let out = resize(&src, w, h);
            assert_eq!(out.data, [10, 200, 255].repeat(w * h), "{w}x{h}");
        }
    }

    #[test]
    fn resize_crop_is_the_crop_of_the_resize() {
        let mut rng = crate::rng::Rng::new(7);
        for case in 0..2000 {
            // Sizes from 0 (empty) up, 1×N strips included; outputs up to 4× larger or smaller.
            let (sw, sh) = (rng.below(13), rng.below(13));
            let src =
                RgbImage { width: sw, height: sh, data: (0..sw * sh * 3).map(|_| rng.below(256) as u8).collect() };
            let (width, height) = (rng.below(4 * sw + 2), rng.below(4 * sh + 2));
            // Windows anywhere from wholly left/above to wholly right/below, sometimes larger than the image.
            let (w, h) = (rng.below(width + 6), rng.below(height + 6));
            let x = rng.below(width + w + 7) as isize - w as isize - 3;
            let y = rng.below(height + h + 7) as isize - h as isize - 3;
            let want = super::super::crop(&resize(&src, width, height), x, y, w, h);
            let got = resize_crop(&src, width, height, x, y, w, h);
            assert_eq!(got, want, "case {case}: {sw}x{sh} -> {width}x{height}, window {w}x{h} at ({x}, {y})");
        }
    }

    #[test]
    fn resize_crop_of_an_elongated_image_stays_small() {
        // Whole, this resize would be 43520000×256 (33 GB); the window costs only its own pixels.
        let src = RgbImage { width: 170_000, height: 1, data: (0..170_000 * 3).map(|i| (i % 251) as u8).collect() };
        let (width, height) = shorter_side_size(src.width, src.height, 256);
        assert_eq!((width, height), (43_520_000, 256));
        let out = resize_crop(&src, width, height, 21_759_888, 16, 224, 224);
        assert_eq!((out.width, out.height), (224, 224));
        // Every row of a 1-pixel-high source resized is that row resampled.
        assert_eq!(out.row(0), out.row(223));
    }

    #[test]
    fn degenerate_sizes() {
        let src = RgbImage { width: 2, height: 2, data: vec![9; 12] };
        assert_eq!(resize(&src, 0, 5), RgbImage::new(0, 5));
        assert_eq!(resize(&RgbImage::new(0, 3), 4, 4), RgbImage::new(4, 4));
        assert_eq!(resize_shorter(&RgbImage::new(0, 3), 8), RgbImage::new(0, 3));
        assert_eq!(resize_shorter(&src, 3).width, 3);
    }
}
