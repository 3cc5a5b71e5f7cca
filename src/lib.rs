//! resnet-rs: the networks of "Deep Residual Learning for Image Recognition"
//! (He, Zhang, Ren, Sun, 2015) with their own CPU compute engine.
//!
//! Layout: `engine` (kernels) → `nn` (layers) → `model` (networks) → `train`/`eval`,
//! with `data` feeding them, `classifier` as the library's front door, `experiment`
//! and `plot` for the paper's figures, and the `resnet` command (feature `cli`).

pub mod bench;
pub mod classifier;
pub mod data;
pub mod dist;
pub mod engine;
pub mod eval;
#[cfg(feature = "experiments")]
pub mod experiment;
#[cfg(feature = "onnx")]
pub mod export;
pub mod files;
pub mod model;
pub mod nn;
#[cfg(feature = "experiments")]
pub mod plot;
pub mod progress;
pub mod rng;
pub mod text;
pub mod train;
pub mod weights;

pub use classifier::Classifier;
