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

use crate::dist::{Collective, Single};
use crate::engine::device::{self, DeviceVec};
use crate::engine::{ensure_len, ops, sgd};
use crate::model::ResNet;

/// Reused buffers of the training step.
#[derive(Default)]
pub struct StepScratch {
    dlogits: Vec<f32>,
    /// Gradients summed over micro-batches, all parameters in visiting order.
    grads: DeviceVec,
    /// The gradients on the host, for the all-reduce across ranks.
    host: Vec<f32>,
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
    let done = step_across(model, hw, images, labels, accumulate, cfg, transfer, scratch, &Single, false);
    (done.loss, done.correct)
}

/// What a step across ranks did, over the whole global batch.
#[derive(Clone, Copy, Debug)]
pub struct Across {
    /// Mean loss over the global batch (non-finite if any rank's was).
    pub loss: f32,
    pub correct: usize,
    /// Images in the global batch (0: every image was unreadable, and nothing changed).
    pub images: usize,
    /// Some rank asked to stop after this step.
    pub stop: bool,
    /// Seconds spent adding up the ranks' losses and gradients (0 for one process).
    pub comm_s: f64,
}

/// [`step_with`] on this rank's share of a global batch (`images`, `labels`; possibly
/// none): local gradients, weighted by the share's part of the global batch and summed
/// over the ranks, then the same SGD step on every rank. `stop`: this rank wants to stop
/// after the step (Ctrl-C), which every rank learns from the result. With one rank this
/// is exactly `step_with`.
#[allow(clippy::too_many_arguments)]
pub fn step_across(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    accumulate: usize,
    cfg: sgd::SgdConfig,
    transfer: Transfer,
    scratch: &mut StepScratch,
    comm: &dyn Collective,
    stop: bool,
) -> Across {
    let classifier_cfg = sgd::SgdConfig { lr: cfg.lr * transfer.classifier_lr_scale, ..cfg };
    let n = labels.len();
    // Synchronized BatchNorm needs every rank in every layer's forward and backward, and
    // the loss of the global batch from the start: each rank's gradients are then its part
    // of the global batch's, and only added up.
    let sync = model.sync_bn().filter(|_| comm.size() > 1 && !transfer.freeze_backbone);
    let mut global = None;
    if sync.is_some() {
        let mut counts = [n as f64, f64::from(u8::from(n == 0))];
        comm.all_reduce_sum_f64(&mut counts);
        match counts[1] > 0.0 {
            // A rank without images would miss the collective operations: this step
            // normalizes each rank's share alone.
            true => model.set_sync_bn(None),
            false => global = Some(counts[0] as usize),
        }
    }
    // On a rayon worker as a whole: forward, backward and the SGD updates (see `in_pool`).
    let done = crate::engine::in_pool(|| {
        let (loss, correct) = match (n, transfer.freeze_backbone) {
            (0, _) => {
                zero_gradients(model);
                (0.0, 0)
            }
            (_, true) => classifier_gradients(model, hw, images, labels, scratch),
            (_, false) => gradients(model, hw, images, labels, accumulate, global, scratch),
        };
        let mut done = Across { loss, correct, images: n, stop, comm_s: 0.0 };
        if comm.size() > 1 {
            let started = std::time::Instant::now();
            let failed = !loss.is_finite();
            let mut totals = [n as f64, loss as f64 * n as f64, correct as f64, f64::from(u8::from(stop)), 0.0];
            totals[4] = f64::from(u8::from(failed));
            if failed {
                totals[1] = 0.0;
            }
            comm.all_reduce_sum_f64(&mut totals);
            let images = totals[0] as usize;
            let loss = if totals[4] > 0.0 { f32::NAN } else { (totals[1] / totals[0].max(1.0)) as f32 };
            done = Across { loss, correct: totals[2] as usize, images, stop: totals[3] > 0.0, comm_s: 0.0 };
            if loss.is_finite() && images > 0 {
                let weight = if global.is_some() { 1.0 } else { n as f32 / images as f32 };
                reduce_gradients(model, transfer.freeze_backbone, weight, comm, &mut scratch.host);
            }
            done.comm_s = started.elapsed().as_secs_f64();
        }
        if !done.loss.is_finite() || done.images == 0 {
            return done;
        }
        if !transfer.freeze_backbone {
            model.for_each_backbone_param(&mut |p| {
                device::sgd_step(cfg, p.value.view_mut(), p.grad.view(), p.momentum.view_mut())
            });
        }
        model.fc.for_each_param(&mut |p| {
            device::sgd_step(classifier_cfg, p.value.view_mut(), p.grad.view(), p.momentum.view_mut())
        });
        done
    });
    if sync.is_some() && global.is_none() {
        model.set_sync_bn(sync);
    }
    done
}

/// Forward and backward of the whole network on the batch, in `accumulate` micro-batches
/// whose gradients are summed, each weighted by its share: the gradients of the batch's
/// mean loss. With `global`, the batch is this rank's part of a global batch of that many
/// images, taken whole: the gradients are its part of the global batch's mean loss.
/// Returns (mean loss, correct); a non-finite loss returns at once.
#[allow(clippy::too_many_arguments)]
fn gradients(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    accumulate: usize,
    global: Option<usize>,
    scratch: &mut StepScratch,
) -> (f32, usize) {
    let n = labels.len();
    let parts = if global.is_some() { 1 } else { accumulate.clamp(1, n.max(1)) };
    let classes = model.classes();
    let image_len = hw.0 * hw.1 * 3;
    let (mut loss, mut correct) = (0f32, 0);
    for k in 0..parts {
        let range = crate::engine::split_range(n, parts, k);
        let m = range.len();
        ensure_len(&mut scratch.dlogits, m * classes);
        let logits = model.forward(true, m, hw, &images[range.start * image_len..range.end * image_len]);
        let labels = &labels[range.clone()];
        let batch = global.unwrap_or(m);
        let (l, ok) = ops::softmax_cross_entropy_of(m, batch, classes, logits, labels, &mut scratch.dlogits);
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
    (loss, correct)
}

/// The classifier's gradients alone: the backbone runs as in inference (BatchNorm on its
/// running statistics, nothing kept for a backward pass), so the whole batch goes at once.
fn classifier_gradients(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    scratch: &mut StepScratch,
) -> (f32, usize) {
    let (n, classes) = (labels.len(), model.classes());
    ensure_len(&mut scratch.dlogits, n * classes);
    let logits = model.forward(false, n, hw, images);
    let (loss, correct) = ops::softmax_cross_entropy(n, classes, logits, labels, &mut scratch.dlogits);
    if loss.is_finite() {
        model.backward_classifier(n, &scratch.dlogits);
    }
    (loss, correct)
}

/// Zero gradients, for a rank whose share of a batch is empty.
fn zero_gradients(model: &mut ResNet) {
    model.for_each_param(&mut |p| {
        let zeros = vec![0f32; p.grad.len()];
        p.grad.copy_from_host(&zeros);
    });
}

/// Every rank's gradients times its `weight` (its share of the global batch), summed over
/// the ranks in one all-reduce of all of them (the classifier's alone when `classifier`).
fn reduce_gradients(model: &mut ResNet, classifier: bool, weight: f32, comm: &dyn Collective, host: &mut Vec<f32>) {
    host.clear();
    // Into the reused buffer, without a vector per parameter and step.
    let mut gather = |p: &mut crate::nn::Param| {
        let start = host.len();
        host.resize(start + p.grad.len(), 0.0);
        p.grad.view().copy_to_host(&mut host[start..]);
        host[start..].iter_mut().for_each(|g| *g *= weight);
    };
    match classifier {
        true => model.fc.for_each_param(&mut gather),
        false => model.for_each_param(&mut gather),
    }
    comm.all_reduce_sum(host);
    let mut off = 0;
    let mut scatter = |p: &mut crate::nn::Param| {
        let len = p.grad.len();
        p.grad.copy_from_host(&host[off..off + len]);
        off += len;
    };
    match classifier {
        true => model.fc.for_each_param(&mut scatter),
        false => model.for_each_param(&mut scatter),
    }
}
