//! JPEG and PNG decoding to 8-bit RGB, matching what torchvision's loader sees:
//! `ImageOps.exif_transpose(Image.open(path)).convert("RGB")`.
//!
//! - Grayscale is replicated; alpha is dropped, not composited (as `convert("RGB")`); palettes are expanded.
//! - 16-bit samples keep their high byte, which is exactly what Pillow does for RGB, RGBA and LA. For 16-bit
//!   grayscale Pillow clips instead (every value above 255 turns white), which we do not copy.
//! - CMYK and Adobe (inverted) CMYK JPEGs become RGB through zune-jpeg's conversion, close to Pillow's.
//! - The EXIF orientation is applied, so photos come out upright.
//! - Pillow refuses truncated files and images over 178,956,970 pixels, and so do we.

use super::rgb_image::RgbImage;
use anyhow::{Result, anyhow};
use image::codecs::jpeg::JpegDecoder;
use image::codecs::png::PngDecoder;
use image::error::ImageError;
use image::metadata::Orientation;
use image::{DynamicImage, ImageDecoder};
use std::error::Error;
use std::fmt;
use std::io::{Cursor, ErrorKind};
use std::path::Path;

/// The largest image accepted, in pixels: Pillow's `DecompressionBombError` threshold (2 ×
/// `Image.MAX_IMAGE_PIXELS`). Checked from the header, before any pixel memory is allocated.
pub const MAX_PIXELS: u64 = 178_956_970;

/// The largest image file read. A JPEG or PNG of `MAX_PIXELS` RGB pixels, stored with no
/// compression at all, is 537 MB.
pub const MAX_FILE_BYTES: u64 = 600 << 20;

/// Decodes a JPEG or PNG file; see [`decode_bytes`].
pub fn decode_file(path: &Path) -> Result<RgbImage> {
    let bytes = crate::files::read_limited(path, MAX_FILE_BYTES, "image file")?;
    decode_bytes(&bytes, &path.display().to_string())
}

/// Decodes a JPEG or PNG (recognised by content, not by name) to upright 8-bit RGB. `name` only labels the
/// errors, which are one line: `NAME: REASON`.
pub fn decode_bytes(bytes: &[u8], name: &str) -> Result<RgbImage> {
    decode(bytes).map_err(|reason| anyhow!("{name}: {}", reason.lines().collect::<Vec<_>>().join(" ")))
}

#[derive(Clone, Copy, PartialEq)]
enum Format {
    Jpeg,
    Png,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Format::Jpeg => "JPEG",
            Format::Png => "PNG",
        })
    }
}

fn decode(bytes: &[u8]) -> Result<RgbImage, String> {
    let format = sniff(bytes)?;
    match format {
        Format::Jpeg => {
            let decoder = JpegDecoder::new(Cursor::new(bytes)).map_err(|e| describe(e, format))?;
            // Checked before decoding: a truncated JPEG would otherwise decode "successfully", gray at the bottom.
            if jpeg_is_truncated(bytes) {
                return Err("truncated JPEG: no end-of-image marker after the image data".into());
            }
            read(decoder, format)
        }
        Format::Png => read(PngDecoder::new(Cursor::new(bytes)).map_err(|e| describe(e, format))?, format),
    }
}

/// The format from the file's first bytes, or why it is neither.
fn sniff(bytes: &[u8]) -> Result<Format, String> {
    const OTHERS: [(&[u8], &str); 5] =
        [(b"GIF8", "GIF"), (b"RIFF", "RIFF/WebP"), (b"BM", "BMP"), (b"II*\0", "TIFF"), (b"MM\0*", "TIFF")];
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok(Format::Jpeg);
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok(Format::Png);
    }
    if bytes.is_empty() {
        return Err("empty file".into());
    }
    let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let looks_like = match OTHERS.iter().find(|(magic, _)| bytes.starts_with(magic)) {
        Some((_, kind)) => format!("looks like {kind}, "),
        None => String::new(),
    };
    Err(format!("not a JPEG or PNG image ({looks_like}starts with bytes {})", head.join(" ")))
}

fn read(mut decoder: impl ImageDecoder, format: Format) -> Result<RgbImage, String> {
    let (width, height) = decoder.dimensions();
    let pixels = u64::from(width) * u64::from(height);
    if pixels > MAX_PIXELS {
        return Err(format!("image too large: {width}x{height} is {pixels} pixels, more than {MAX_PIXELS}"));
    }
    // Unreadable EXIF should not make the picture unreadable: treat it as upright.
    let orientation = decoder.orientation().unwrap_or(Orientation::NoTransforms);
    let image = DynamicImage::from_decoder(decoder).map_err(|e| describe(e, format))?;
    let (width, height) = (image.width(), image.height());
    let data = to_rgb8(image)?;
    let mut upright = DynamicImage::from(image::RgbImage::from_raw(width, height, data).ok_or("bad buffer size")?);
    upright.apply_orientation(orientation);
    let (width, height) = (upright.width() as usize, upright.height() as usize);
    Ok(RgbImage { width, height, data: upright.into_rgb8().into_raw() })
}

/// Pillow's `convert("RGB")`, except that 16-bit grayscale is scaled (high byte) rather than clipped.
fn to_rgb8(image: DynamicImage) -> Result<Vec<u8>, String> {
    let high_byte = |v: u16| (v >> 8) as u8;
    Ok(match image {
        DynamicImage::ImageRgb8(buf) => buf.into_raw(),
        DynamicImage::ImageRgba8(buf) => expand(&buf, 4, |v| v),
        DynamicImage::ImageLuma8(buf) => expand(&buf, 1, |v| v),
        DynamicImage::ImageLumaA8(buf) => expand(&buf, 2, |v| v),
        DynamicImage::ImageRgb16(buf) => expand(&buf, 3, high_byte),
        DynamicImage::ImageRgba16(buf) => expand(&buf, 4, high_byte),
        DynamicImage::ImageLuma16(buf) => expand(&buf, 1, high_byte),
        DynamicImage::ImageLumaA16(buf) => expand(&buf, 2, high_byte),
        other => return Err(format!("unsupported pixel format {:?}", other.color())),
    })
}

/// RGB bytes from interleaved samples with `channels` per pixel: gray (+ alpha) is replicated, alpha dropped.
fn expand<T: Copy>(samples: &[T], channels: usize, to_u8: impl Fn(T) -> u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() / channels * 3);
    for pixel in samples.chunks_exact(channels) {
        if channels < 3 {
            out.extend([to_u8(pixel[0]); 3]);
        } else {
            out.extend(pixel[..3].iter().map(|&v| to_u8(v)));
        }
    }
    out
}

/// Whether the JPEG ends before its end-of-image marker. zune-jpeg, in the lenient mode that `image` runs it in,
/// fills whatever is missing with gray and reports success; Pillow refuses such a file ("image file is
/// truncated"), even one that lacks only the final marker, so we refuse it too. Only the data after the first
/// scan header is searched, because the headers can hold a whole thumbnail JPEG with its own end marker; if the
/// headers cannot be walked, the decoder's own verdict stands.
fn jpeg_is_truncated(bytes: &[u8]) -> bool {
    match first_scan(bytes) {
        Some(scan) => !bytes[scan..].windows(2).any(|w| w == [0xFF, 0xD9]),
        None => false,
    }
}

/// Offset of the first start-of-scan marker, found by hopping over the header segments that follow SOI.
fn first_scan(bytes: &[u8]) -> Option<usize> {
    let mut pos = 2;
    loop {
        if *bytes.get(pos)? != 0xFF {
            return None;
        }
        match *bytes.get(pos + 1)? {
            0xFF => pos += 1, // fill byte before a marker
            0xDA => return Some(pos),
            0x01 | 0xD0..=0xD8 => pos += 2, // markers without a length field
            _ => pos += 2 + usize::from(u16::from_be_bytes([*bytes.get(pos + 2)?, *bytes.get(pos + 3)?])),
        }
    }
}

/// The reason part of a decoding error message.
fn describe(err: ImageError, format: Format) -> String {
    match err {
        ImageError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => format!("truncated {format}: {e}"),
        ImageError::Decoding(e) => match e.source() {
            Some(reason) => format!("corrupt {format}: {reason}"),
            None => format!("corrupt {format}"),
        },
        ImageError::Unsupported(e) => format!("unsupported {format}: {e}"),
        other => format!("cannot decode {format}: {other}"),
    }
}
