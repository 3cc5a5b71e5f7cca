//! Training: the paper's recipes (config and schedule), one SGD step, the data of a
//! run, checkpoints, typed metrics records and the epoch loop with progress and resume.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod recipe;
pub mod record;
mod reduce;
pub mod run;
pub mod run_dir;
pub mod schedule;
pub mod tensorboard;

pub use config::{ImageTraining, TrainConfig};
pub use record::{EpochRecord, History, Record, Sink, StepRecord};
pub use run::{Outcome, RunOptions, train};

use crate::dist::{Collective, Single};
use crate::engine::{GradMode, ensure_len, ops, sgd};
use crate::model::ResNet;
use reduce::Reducer;

/// Reused buffers of the training step.
#[derive(Default)]
pub struct StepScratch {
    dlogits: Vec<f32>,
    /// The buckets of the all-reduce across ranks.
    buckets: Vec<Vec<f32>>,
}

/// The processes a step is shared with, and how their gradients travel.
#[derive(Clone, Copy)]
pub struct Ranks<'a> {
    pub comm: &'a dyn Collective,
    /// Megabytes of gradients per all-reduce, started during the backward pass (0: one
    /// all-reduce after it). Overlap needs a `comm` that runs them in the background.
    pub bucket_mb: usize,
}

impl Ranks<'_> {
    /// One process.
    pub const SINGLE: Ranks<'static> = Ranks { comm: &Single, bucket_mb: 0 };
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
/// multi-GPU training) whose gradients add up in place, each micro-batch's loss divided
/// by the whole batch's size, so the update is that of the whole batch's mean loss. The
/// update is one SGD call over the model's flat buffers. Returns (mean loss,
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
    let done = step_across(model, hw, images, labels, accumulate, cfg, transfer, scratch, Ranks::SINGLE, false);
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
/// none): local gradients of the share's part of the global batch's mean loss, summed
/// over the ranks (in buckets during the backward pass, see `reduce`), then the same SGD
/// step on every rank. `stop`: this rank wants to stop after the step (Ctrl-C), which
/// every rank learns from the result. With one rank this is exactly `step_with`.
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
    ranks: Ranks,
    stop: bool,
) -> Across {
    let comm = ranks.comm;
    let classifier_cfg = sgd::SgdConfig { lr: cfg.lr * transfer.classifier_lr_scale, ..cfg };
    let n = labels.len();
    // The global batch first: each rank's loss gradient is divided by its size, so that
    // the ranks' gradients need only be added up.
    let (mut global, mut any_empty) = (n, n == 0);
    if comm.size() > 1 {
        let mut counts = [n as f64, f64::from(u8::from(n == 0))];
        comm.all_reduce_sum_f64(&mut counts);
        (global, any_empty) = (counts[0] as usize, counts[1] > 0.0);
    }
    // Synchronized BatchNorm needs every rank in every layer's forward and backward. A
    // rank without images would miss the collective operations: such a step normalizes
    // each rank's share alone.
    let sync = model.sync_bn().filter(|_| comm.size() > 1 && !transfer.freeze_backbone);
    let synced = sync.is_some() && !any_empty;
    if sync.is_some() && !synced {
        model.set_sync_bn(None);
    }
    let StepScratch { dlogits, buckets } = scratch;
    // On a rayon worker as a whole: forward, backward and the SGD updates (see `in_pool`).
    let done = crate::engine::in_pool(|| {
        let mut reducer = (comm.size() > 1).then(|| Reducer::new(comm, ranks.bucket_mb, buckets));
        let frozen = transfer.freeze_backbone;
        // The parameters whose gradients this step makes: a prefix of the flat order.
        let trained = if frozen { model.classifier_len() } else { model.flat_len() };
        let (loss, correct) = match (n, frozen) {
            (0, _) => (0.0, 0),
            (_, true) => classifier_gradients(model, hw, images, labels, global, dlogits),
            (_, false) => gradients(model, hw, images, labels, accumulate, global, synced, dlogits, reducer.as_mut()),
        };
        let staged = n > 0 && (loss.is_finite() || synced);
        let mut done = Across { loss, correct, images: n, stop, comm_s: 0.0 };
        if let Some(mut reducer) = reducer {
            let started = std::time::Instant::now();
            match (staged, frozen) {
                (true, true) => reducer.stage(model.grads(0..trained)),
                (true, false) => {}
                (false, _) => reducer.stage_zeros(trained),
            }
            let failed = !loss.is_finite();
            let mut totals = [if failed { 0.0 } else { loss as f64 * n as f64 }, correct as f64, 0.0, 0.0];
            totals[2] = f64::from(u8::from(stop));
            totals[3] = f64::from(u8::from(failed));
            comm.all_reduce_sum_f64(&mut totals);
            let loss = if totals[3] > 0.0 { f32::NAN } else { (totals[0] / global.max(1) as f64) as f32 };
            reducer.finish(model.grads_mut(0..trained));
            let comm_s = started.elapsed().as_secs_f64();
            done = Across { loss, correct: totals[1] as usize, images: global, stop: totals[2] > 0.0, comm_s };
        }
        if !done.loss.is_finite() || done.images == 0 {
            return done;
        }
        model.sgd_step((!frozen).then_some(cfg), classifier_cfg);
        done
    });
    if sync.is_some() && !synced {
        model.set_sync_bn(sync);
    }
    done
}

/// Forward and backward of the whole network on the batch, in `accumulate` micro-batches
/// whose gradients add up in place, each micro-batch's loss gradient divided by `global`:
/// the gradients of this batch's part of the mean loss of a global batch of that many
/// images (this batch, on one process). With `synced` (synchronized BatchNorm) the batch
/// is taken whole. With `reducer`, each part of the network goes into the all-reduce as
/// the last micro-batch's backward pass finishes it. Returns (mean loss over this batch,
/// correct); a non-finite loss returns at once, before anything is staged, except when
/// `synced`, where the backward pass runs for the other ranks' sake.
#[allow(clippy::too_many_arguments)]
fn gradients(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    accumulate: usize,
    global: usize,
    synced: bool,
    dlogits: &mut Vec<f32>,
    mut reducer: Option<&mut Reducer>,
) -> (f32, usize) {
    let n = labels.len();
    let parts = if synced { 1 } else { accumulate.clamp(1, n.max(1)) };
    let classes = model.classes();
    let image_len = hw.0 * hw.1 * 3;
    let (mut loss, mut correct) = (0f32, 0);
    for k in 0..parts {
        let range = crate::engine::split_range(n, parts, k);
        let m = range.len();
        ensure_len(dlogits, m * classes);
        let logits = model.forward(true, m, hw, &images[range.start * image_len..range.end * image_len]);
        let (l, ok) = ops::softmax_cross_entropy_of(m, global, classes, logits, &labels[range], dlogits);
        // With synchronized BatchNorm every rank must make the backward pass's collective
        // operations; the step is dropped after it, as every rank learns.
        if !l.is_finite() && !synced {
            return (l, correct);
        }
        let share = m as f32 / n as f32;
        (loss, correct) = (loss + share * l, correct + ok);
        let mode = if k == 0 { GradMode::Overwrite } else { GradMode::Accumulate };
        // Into the all-reduce only once the micro-batches are summed: in the last one.
        let mut reducer = reducer.as_deref_mut().filter(|_| k + 1 == parts);
        model.backward_with(dlogits, mode, &mut |group| {
            if let Some(r) = reducer.as_deref_mut() {
                group.for_each_param(&mut |p| r.stage(p.grad.view()));
            }
        });
    }
    (loss, correct)
}

/// The classifier's gradients alone, of this batch's part of the mean loss of a global
/// batch of `global` images: the backbone runs as in inference (BatchNorm on its running
/// statistics, nothing kept for a backward pass), so the whole batch goes at once.
fn classifier_gradients(
    model: &mut ResNet,
    hw: (usize, usize),
    images: &[f32],
    labels: &[u32],
    global: usize,
    dlogits: &mut Vec<f32>,
) -> (f32, usize) {
    let (n, classes) = (labels.len(), model.classes());
    ensure_len(dlogits, n * classes);
    let logits = model.forward(false, n, hw, images);
    let (loss, correct) = ops::softmax_cross_entropy_of(n, global, classes, logits, labels, dlogits);
    if loss.is_finite() {
        model.backward_classifier(n, dlogits);
    }
    (loss, correct)
}
