//! Data: CIFAR binary readers, ImageNet-style image folders and class lists,
//! normalization and augmentation, the background loader and the dataset downloader.

pub mod cifar;
pub mod download;
pub mod folder;
pub mod image;
pub mod imagenet;
pub mod labels;
pub mod loader;
pub mod prefetch;
pub mod transform;

pub use cifar::{Dataset, DatasetKind};
pub use labels::ClassList;
pub use loader::{Batch, BatchLoader, Samples, Spare};
pub use transform::{CifarSamples, Norm};
