//! Data: CIFAR binary readers, normalization and augmentation, the background loader
//! and the dataset downloader.

pub mod cifar;
pub mod download;
pub mod loader;
pub mod transform;

pub use cifar::{Dataset, DatasetKind};
pub use loader::{Batch, BatchLoader};
pub use transform::Norm;
