//! Evaluation with BatchNorm in inference mode: top-1/top-5 accuracy and loss over a
//! dataset. A sample with several views (10-crop, multi-scale) is scored by the average
//! of its views' softmax outputs, as the paper's testing does.

pub mod multiscale;
pub mod predict;
pub mod responses;

use crate::data::{BatchLoader, Samples, Spare};
use crate::model::ResNet;
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct EvalResult {
    /// Mean cross-entropy of the (view-averaged) predictions.
    pub loss: f64,
    pub correct: usize,
    pub correct5: usize,
    pub total: usize,
    /// (correct, total) per class.
    pub per_class: Vec<(usize, usize)>,
    /// Counts by (true class, predicted class), row-major: the confusion matrix.
    pub confusion: Vec<usize>,
    /// Samples that could not be read: "path: reason".
    pub skipped: Vec<String>,
}

impl EvalResult {
    pub fn new(classes: usize) -> Self {
        EvalResult { per_class: vec![(0, 0); classes], confusion: vec![0; classes * classes], ..Default::default() }
    }
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
    pub fn accuracy5(&self) -> f64 {
        self.correct5 as f64 / self.total.max(1) as f64
    }

    /// Scores one sample from its class probabilities.
    pub fn add(&mut self, probs: &[f32], label: u32) {
        let label = label as usize;
        let p = probs[label];
        // Classes ranked above the label; ties go to the lower index, as a stable sort would.
        let above = probs.iter().enumerate().filter(|&(i, &q)| q > p || (q == p && i < label)).count();
        self.loss += -(p.max(f32::MIN_POSITIVE) as f64).ln();
        self.correct += usize::from(above == 0);
        self.correct5 += usize::from(above < 5);
        self.total += 1;
        let e = &mut self.per_class[label];
        e.0 += usize::from(above == 0);
        e.1 += 1;
        // The predicted class: the highest probability, the lowest index among ties.
        let predicted = probs.iter().enumerate().fold(0, |best, (i, &q)| if q > probs[best] { i } else { best });
        self.confusion[label * probs.len() + predicted] += 1;
    }

    /// Turns the summed loss into the mean.
    fn finish(mut self) -> Self {
        self.loss /= self.total.max(1) as f64;
        self
    }
}

/// Softmax of each row of `logits` (`classes` wide), in f64 for a stable sum.
pub fn softmax(logits: &[f32], classes: usize) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    for (z, p) in logits.chunks_exact(classes).zip(out.chunks_exact_mut(classes)) {
        let max = z.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let sum: f64 = z.iter().map(|&v| ((v - max) as f64).exp()).sum();
        for (pv, &zv) in p.iter_mut().zip(z) {
            *pv = (((zv - max) as f64).exp() / sum) as f32;
        }
    }
    out
}

/// Averages consecutive groups of `views` probability rows into one row each.
pub fn average_views(probs: &[f32], classes: usize, views: usize) -> Vec<f32> {
    probs
        .chunks_exact(classes * views)
        .flat_map(|group| {
            (0..classes).map(move |c| group.chunks_exact(classes).map(|row| row[c]).sum::<f32>() / views as f32)
        })
        .collect()
}

/// Evaluates `data` in order. Each network call runs about `batch` images (samples
/// times views); `workers` threads prepare the batches. `progress` advances by images.
pub fn evaluate(
    model: &mut ResNet,
    data: Arc<dyn Samples>,
    batch: usize,
    workers: usize,
    progress: &crate::progress::Bar,
) -> EvalResult {
    let all = 0..data.len();
    let classes = model.classes();
    let r = on_cpu(evaluate_samples(classes, data, all, batch, workers, progress, cpu_logits(model)));
    r.finish()
}

/// [`evaluate`] with the network on the GPU.
#[cfg(feature = "cuda")]
pub fn evaluate_on_gpu(
    net: &crate::model::cuda::GpuNet,
    data: Arc<dyn Samples>,
    batch: usize,
    workers: usize,
    progress: &crate::progress::Bar,
) -> anyhow::Result<EvalResult> {
    let logits = |n: usize, hw: (usize, usize), images: &[f32]| net.forward(n, hw, images);
    evaluate_by(net.classes(), data, batch, workers, progress, logits)
}

/// [`evaluate`] with the logits of each batch from `logits(n, hw, images)`: a network
/// elsewhere than the CPU engine (a GPU's).
pub fn evaluate_by(
    classes: usize,
    data: Arc<dyn Samples>,
    batch: usize,
    workers: usize,
    progress: &crate::progress::Bar,
    logits: impl FnMut(usize, (usize, usize), &[f32]) -> anyhow::Result<Vec<f32>>,
) -> anyhow::Result<EvalResult> {
    let all = 0..data.len();
    Ok(evaluate_samples(classes, data, all, batch, workers, progress, logits)?.finish())
}

/// The logits of a batch from the CPU engine, which cannot fail.
fn cpu_logits(
    model: &mut ResNet,
) -> impl FnMut(usize, (usize, usize), &[f32]) -> Result<Vec<f32>, std::convert::Infallible> + '_ {
    |n, hw, images| Ok(model.forward(false, n, hw, images).to_vec())
}

fn on_cpu(r: Result<EvalResult, std::convert::Infallible>) -> EvalResult {
    match r {
        Ok(r) => r,
        Err(never) => match never {},
    }
}

/// [`evaluate`] shared by the ranks of a job: each scores its contiguous part of `data`,
/// and every rank gets the sums of all (the unreadable samples listed are its own). The
/// ranks' models must agree, BatchNorm statistics included.
pub fn evaluate_across(
    model: &mut ResNet,
    data: Arc<dyn Samples>,
    batch: usize,
    workers: usize,
    progress: &crate::progress::Bar,
    comm: &dyn crate::dist::Collective,
) -> EvalResult {
    let part = crate::engine::split_range(data.len(), comm.size(), comm.rank());
    let classes = model.classes();
    let mut r = on_cpu(evaluate_samples(classes, data, part, batch, workers, progress, cpu_logits(model)));
    if comm.size() > 1 {
        let mut sums = vec![r.loss, r.correct as f64, r.correct5 as f64, r.total as f64];
        sums.extend(r.per_class.iter().flat_map(|&(c, t)| [c as f64, t as f64]));
        sums.extend(r.confusion.iter().map(|&c| c as f64));
        comm.all_reduce_sum_f64(&mut sums);
        let classes = r.per_class.len();
        (r.loss, r.correct, r.correct5, r.total) = (sums[0], sums[1] as usize, sums[2] as usize, sums[3] as usize);
        for (k, e) in r.per_class.iter_mut().enumerate() {
            *e = (sums[4 + 2 * k] as usize, sums[5 + 2 * k] as usize);
        }
        for (c, &v) in r.confusion.iter_mut().zip(&sums[4 + 2 * classes..]) {
            *c = v as usize;
        }
    }
    r.finish()
}

/// The summed scores of the samples `part` of `data`, in order, `logits(n, hw, images)`
/// giving a batch's logits.
fn evaluate_samples<E>(
    classes: usize,
    data: Arc<dyn Samples>,
    part: std::ops::Range<usize>,
    batch: usize,
    workers: usize,
    progress: &crate::progress::Bar,
    mut logits: impl FnMut(usize, (usize, usize), &[f32]) -> Result<Vec<f32>, E>,
) -> Result<EvalResult, E> {
    let views = data.views();
    let per_batch = (batch / views).max(1);
    let order = Arc::new((part.start as u32..part.end as u32).collect::<Vec<_>>());
    let mut r = EvalResult::new(classes);
    let spare = Spare::default();
    for b in BatchLoader::new(data, order, per_batch, 0, None, workers, spare.clone()) {
        r.skipped.extend(b.errors.iter().cloned());
        progress.inc((b.len() + b.errors.len()) as u64);
        if !b.is_empty() {
            let logits = logits(b.len() * views, b.hw, &b.images)?;
            let probs = average_views(&softmax(&logits, classes), classes, views);
            for (p, &label) in probs.chunks_exact(classes).zip(&b.labels) {
                r.add(p, label);
            }
        }
        spare.put(b);
    }
    progress.finish_and_clear();
    Ok(r)
}
