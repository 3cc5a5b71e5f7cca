//! A background loader: worker threads assemble normalized (and, for training,
//! augmented) NHWC batches ahead of the engine.
//!
//! Batch `b` of an epoch is built by worker `b % workers` and received in order, and
//! every random choice comes from a stream derived from (seed, epoch, position), so
//! the batches are identical whatever the number of workers or their timing.

use super::prefetch::Prefetch;
use crate::rng::Rng;
use anyhow::Result;
use std::sync::Arc;

/// A collection the loader draws from: sample `i` is written as `views()` normalized
/// HWC f32 images of `hw()` pixels (one, or e.g. the ten crops of 10-crop testing), and
/// its label returned.
pub trait Samples: Send + Sync {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Height and width of every image.
    fn hw(&self) -> (usize, usize);
    /// Images per sample.
    fn views(&self) -> usize {
        1
    }
    /// Writes sample `i` to `out` (`views * h * w * 3` values); `rng` is given for
    /// training-time augmentation. An unreadable sample (corrupt file) is an error naming it.
    fn write(&self, i: usize, rng: Option<&mut Rng>, out: &mut [f32]) -> Result<u32>;
}

pub struct Batch {
    /// NHWC images, `len() * views * h * w * 3` values (a sample's views are consecutive).
    pub images: Vec<f32>,
    pub views: usize,
    /// Height and width of every image.
    pub hw: (usize, usize),
    pub labels: Vec<u32>,
    /// Samples that could not be read (path and reason); the batch is that much shorter.
    pub errors: Vec<String>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
}

/// The sample order of one epoch: a seeded shuffle for training, in order otherwise.
pub fn epoch_order(len: usize, seed: u64, epoch: u64, shuffle: bool) -> Vec<u32> {
    let mut order: Vec<u32> = (0..len as u32).collect();
    if shuffle {
        Rng::derive(seed, 0x5348_5546, epoch).shuffle(&mut order);
    }
    order
}

/// Builds batch `b` of `order` (the last batch may be short). `augment`:
/// `Some((seed, epoch))` for training-time augmentation.
pub fn build_batch(data: &dyn Samples, order: &[u32], batch: usize, b: usize, augment: Option<(u64, u64)>) -> Batch {
    let idx = &order[b * batch..((b + 1) * batch).min(order.len())];
    let (h, w) = data.hw();
    let len = data.views() * h * w * 3;
    let mut images = vec![0f32; idx.len() * len];
    let mut labels = Vec::with_capacity(idx.len());
    let mut errors = Vec::new();
    for (k, &i) in idx.iter().enumerate() {
        let out = &mut images[labels.len() * len..(labels.len() + 1) * len];
        let mut rng = augment.map(|(seed, epoch)| Rng::derive(seed, epoch, (b * batch + k) as u64));
        match data.write(i as usize, rng.as_mut(), out) {
            Ok(label) => labels.push(label),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    images.truncate(labels.len() * len);
    Batch { images, views: data.views(), hw: (h, w), labels, errors }
}

/// Streams the batches `start..` of one epoch, built in background threads.
pub struct BatchLoader(Prefetch<Batch>);

impl BatchLoader {
    pub fn new(
        data: Arc<dyn Samples>,
        order: Arc<Vec<u32>>,
        batch: usize,
        start: usize,
        augment: Option<(u64, u64)>,
        workers: usize,
    ) -> Self {
        let end = order.len().div_ceil(batch);
        BatchLoader(Prefetch::new(start, end, workers, move |b| build_batch(data.as_ref(), &order, batch, b, augment)))
    }

    /// Index (within the epoch) of the batch the next call returns.
    pub fn position(&self) -> usize {
        self.0.position()
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        self.0.next()
    }
}
