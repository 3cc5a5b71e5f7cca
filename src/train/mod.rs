//! Training: the paper's recipe (config and schedule), one SGD step, checkpoints
//! and the epoch loop with metrics, progress and resume.

pub mod checkpoint;
pub mod config;
pub mod run;
pub mod schedule;

pub use config::TrainConfig;
pub use run::{Outcome, train};

use crate::engine::{ops, sgd};
use crate::model::ResNet;

/// One SGD step on a batch: forward in training mode, softmax cross-entropy, backward,
/// update. Returns (mean loss, correct predictions). `dlogits` is reused scratch.
pub fn step(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    cfg: sgd::SgdConfig,
    dlogits: &mut Vec<f32>,
) -> (f32, usize) {
    let n = labels.len();
    let classes = model.config.classes;
    crate::engine::ensure_len(dlogits, n * classes);
    let logits = model.forward(true, n, hw, images);
    let (loss, correct) = ops::softmax_cross_entropy(n, classes, logits, labels, dlogits);
    if !loss.is_finite() {
        return (loss, correct);
    }
    model.backward(dlogits);
    model.for_each_param(&mut |p| sgd::step(cfg, &mut p.value, &p.grad, &mut p.momentum));
    (loss, correct)
}
