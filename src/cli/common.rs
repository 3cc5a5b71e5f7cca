//! What the inference commands share: the library's setup (see `resnet::classifier::setup`).

pub use resnet::classifier::setup::*;
