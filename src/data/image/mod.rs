//! Images: JPEG/PNG decoding to 8-bit RGB, and resizing and cropping that match
//! torchvision on PIL images bit for bit.

mod decode;
mod resize;
mod rgb_image;

pub use decode::{MAX_PIXELS, decode_bytes, decode_file};
pub use resize::{resize, resize_crop, resize_shorter, shorter_side_size};
pub use rgb_image::{RgbImage, center_crop, center_offset, crop, flip_horizontal};
