//! Images: JPEG/PNG decoding to 8-bit RGB, and resizing and cropping that match
//! torchvision on PIL images bit for bit.

mod decode;
mod resize;
mod rgb_image;

pub use decode::{MAX_PIXELS, decode_bytes, decode_file};
pub use resize::{resize, resize_shorter};
pub use rgb_image::{RgbImage, center_crop, crop, flip_horizontal};
