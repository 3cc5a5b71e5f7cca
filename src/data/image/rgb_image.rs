//! The decoded image type and the pixel-exact geometric transforms: crop, torchvision's CenterCrop, and the
//! horizontal flip.

/// 8-bit RGB, row-major, 3 bytes per pixel (HWC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub data: Vec<u8>,
}

impl RgbImage {
    /// An all-black (zero) image.
    pub fn new(width: usize, height: usize) -> RgbImage {
        RgbImage { width, height, data: vec![0; width * height * 3] }
    }

    /// The bytes of row `y`.
    pub fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.width * 3..(y + 1) * self.width * 3]
    }
}

/// The `width`×`height` window with top-left corner (`x`, `y`); the parts outside the image are black, as with
/// PIL's `Image.crop` (which torchvision's `crop` calls).
pub fn crop(src: &RgbImage, x: isize, y: isize, width: usize, height: usize) -> RgbImage {
    let mut out = RgbImage::new(width, height);
    // The window clipped to the source, in source coordinates.
    let clip = |start: isize, len: usize, size: usize| {
        let end = start.saturating_add_unsigned(len).clamp(0, size as isize);
        start.clamp(0, size as isize) as usize..end as usize
    };
    let (xs, ys) = (clip(x, width, src.width), clip(y, height, src.height));
    if xs.is_empty() || ys.is_empty() {
        return out;
    }
    let dx = (xs.start as isize).abs_diff(x);
    for sy in ys {
        let dy = (sy as isize).abs_diff(y);
        let from = &src.row(sy)[xs.start * 3..xs.end * 3];
        out.data[(dy * width + dx) * 3..][..from.len()].copy_from_slice(from);
    }
    out
}

/// torchvision's `CenterCrop((height, width))` on a PIL image, including its black padding when the crop is
/// larger than the image.
pub fn center_crop(src: &RgbImage, width: usize, height: usize) -> RgbImage {
    crop(src, center_offset(src.width, width), center_offset(src.height, height), width, height)
}

/// Where torchvision's center crop starts along one axis (torchvision 0.29, `functional.center_crop`). A crop
/// larger than the image first pads `(crop - size) // 2` on the left/top, so the window starts that far before
/// the image; otherwise it starts at `int(round((size - crop) / 2.0))`, and Python's `round` takes an exact half
/// to the even neighbour (an odd margin of 5 starts at 2, of 3 at 2).
pub fn center_offset(size: usize, crop: usize) -> isize {
    if crop > size { -(((crop - size) / 2) as isize) } else { ((size - crop) as f64 / 2.0).round_ties_even() as isize }
}

/// Mirror left-right (PIL's `FLIP_LEFT_RIGHT`, torchvision's `hflip`).
pub fn flip_horizontal(src: &RgbImage) -> RgbImage {
    let mut data = Vec::with_capacity(src.data.len());
    for y in 0..src.height {
        data.extend(src.row(y).chunks_exact(3).rev().flatten());
    }
    RgbImage { width: src.width, height: src.height, data }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(width: usize, height: usize) -> RgbImage {
        RgbImage { width, height, data: (0..width * height * 3).map(|i| (i % 251) as u8 + 1).collect() }
    }

    #[test]
    fn center_offsets_round_half_to_even() {
        assert_eq!([1, 3, 5, 7].map(|m| center_offset(10 + m, 10)), [0, 2, 2, 4]);
        assert_eq!(center_offset(10, 10), 0);
        // Padding: 3 extra columns put 1 on the left and 2 on the right.
        assert_eq!(center_offset(10, 13), -1);
    }

    #[test]
    fn crop_fills_outside_with_black() {
        let img = ramp(4, 3);
        let out = crop(&img, -1, 1, 3, 3);
        assert_eq!(out.row(0)[..3], [0, 0, 0]);
        assert_eq!(out.row(0)[3..], img.row(1)[..6]);
        assert_eq!(out.row(2), [0; 9]);
        assert_eq!(crop(&img, 9, 9, 2, 2), RgbImage::new(2, 2));
        assert_eq!(crop(&img, isize::MIN, isize::MAX, 1, 1), RgbImage::new(1, 1));
        assert_eq!(crop(&img, 0, 0, 4, 3), img);
    }

    #[test]
    fn flip_twice_is_identity() {
        let img = ramp(5, 2);
        let flipped = flip_horizontal(&img);
        assert_eq!(flipped.row(0)[..3], img.row(0)[12..]);
        assert_eq!(flip_horizontal(&flipped), img);
    }
}
