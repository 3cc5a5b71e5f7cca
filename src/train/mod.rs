//! Training: the paper's recipes (config and schedule), one SGD step, the data of a
//! run, checkpoints, typed metrics records and the epoch loop with progress and resume.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod recipe;
pub mod record;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod tensorboard;

pub use config::{ImageTraining, TrainConfig};
pub use record::{EpochRecord, History, Record, Sink, StepRecord};
pub use run::{Outcome, RunOptions, train};

use crate::engine::device::{self, DeviceVec};
use crate::engine::{ensure_len, ops, sgd};
use crate::model::ResNet;

/// Reused buffers of the training step.
#[derive(Default)]
pub struct StepScratch {
    dlogits: Vec<f32>,
    /// Gradients summed over micro-batches, all parameters in visiting order.
    grads: DeviceVec,
}

/// How a step treats the classifier apart from the rest (transfer learning).
#[derive(Clone, Copy, Debug)]
pub struct Transfer {
    /// Train the classifier alone, the backbone's BatchNorm in inference mode.
    pub freeze_backbone: bool,
    /// The classifier's learning rate relative to the rest's.
    pub classifier_lr_scale: f32,
}

impl Default for Transfer {
    fn default() -> Self {
        Transfer { freeze_backbone: false, classifier_lr_scale: 1.0 }
    }
}

/// One SGD step on a batch of `labels.len()` images of size `hw`: forward in training
/// mode, softmax cross-entropy, backward, update. With `accumulate` > 1 the batch runs
/// as that many micro-batches (BatchNorm statistics per micro-batch, as the paper's
/// multi-GPU training) whose gradients are summed, each weighted by its share of the
/// batch, so the update is that of the whole batch's mean loss. Returns (mean loss,
/// correct predictions); a non-finite loss returns at once without updating.
pub fn step(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    accumulate: usize,
    cfg: sgd::SgdConfig,
    scratch: &mut StepScratch,
) -> (f32, usize) {
    step_with(model, hw, images, labels, accumulate, cfg, Transfer::default(), scratch)
}

/// [`step`] with the classifier treated apart: its own learning rate, or trained alone.
#[allow(clippy::too_many_arguments)]
pub fn step_with(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    accumulate: usize,
    cfg: sgd::SgdConfig,
    transfer: Transfer,
    scratch: &mut StepScratch,
) -> (f32, usize) {
    let classifier_cfg = sgd::SgdConfig { lr: cfg.lr * transfer.classifier_lr_scale, ..cfg };
    if transfer.freeze_backbone {
        return classifier_step(model, hw, images, labels, classifier_cfg, scratch);
    }
    // On a rayon worker as a whole: forward, backward and the SGD updates (see `in_pool`).
    crate::engine::in_pool(|| {
        let n = labels.len();
        let parts = accumulate.clamp(1, n.max(1));
        let classes = model.classes();
        let image_len = hw.0 * hw.1 * 3;
        let (mut loss, mut correct) = (0f32, 0);
        for k in 0..parts {
            let range = crate::engine::split_range(n, parts, k);
            let m = range.len();
            ensure_len(&mut scratch.dlogits, m * classes);
            let logits = model.forward(true, m, hw, &images[range.start * image_len..range.end * image_len]);
            let (l, ok) = ops::softmax_cross_entropy(m, classes, logits, &labels[range.clone()], &mut scratch.dlogits);
            if !l.is_finite() {
                return (l, correct);
            }
            model.backward(&scratch.dlogits);
            let share = m as f32 / n as f32;
            (loss, correct) = (loss + share * l, correct + ok);
            if parts > 1 {
                let mut off = 0;
                let grads = &mut scratch.grads;
                model.for_each_param(&mut |p| {
                    let len = p.grad.len();
                    grads.ensure_len(off + len);
                    let sum = grads.slice_mut(off..off + len);
                    match k {
                        0 => device::scaled_copy(sum, share, p.grad.view()),
                        _ => device::add_scaled(sum, share, p.grad.view()),
                    }
                    off += len;
                });
            }
        }
        if parts > 1 {
            let mut off = 0;
            let grads = &scratch.grads;
            model.for_each_param(&mut |p| {
                let len = p.grad.len();
                device::copy(p.grad.view_mut(), grads.slice(off..off + len));
                off += len;
            });
        }
        model.for_each_backbone_param(&mut |p| {
            device::sgd_step(cfg, p.value.view_mut(), p.grad.view(), p.momentum.view_mut())
        });
        model.fc.for_each_param(&mut |p| {
            device::sgd_step(classifier_cfg, p.value.view_mut(), p.grad.view(), p.momentum.view_mut())
        });
        (loss, correct)
    })
}

/// A step of the classifier alone: the backbone runs as in inference (BatchNorm on its
/// running statistics, nothing kept for a backward pass), so the whole batch goes at once.
fn classifier_step(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    cfg: sgd::SgdConfig,
    scratch: &mut StepScratch,
) -> (f32, usize) {
    let (n, classes) = (labels.len(), model.classes());
    ensure_len(&mut scratch.dlogits, n * classes);
    let logits = model.forward(false, n, hw, images);
    let (loss, correct) = ops::softmax_cross_entropy(n, classes, logits, labels, &mut scratch.dlogits);
    if !loss.is_finite() {
        return (loss, correct);
    }
    model.backward_classifier(n, &scratch.dlogits);
    model.fc.for_each_param(&mut |p| device::sgd_step(cfg, p.value.view_mut(), p.grad.view(), p.momentum.view_mut()));
    (loss, correct)
}
