//! resnet-rs: the networks of "Deep Residual Learning for Image Recognition"
//! (He, Zhang, Ren, Sun, 2015) with their own CPU compute engine.
//!
//! Layout: `engine` (kernels) → `nn` (layers) → `model` (networks) → `train`/`eval`,
//! with `data` feeding them and `cli` as the command-line front end.

pub mod bench;
pub mod data;
pub mod engine;
pub mod eval;
pub mod experiment;
pub mod files;
pub mod model;
pub mod nn;
pub mod plot;
pub mod progress;
pub mod rng;
pub mod text;
pub mod train;
pub mod weights;
