//! A background loader: worker threads assemble normalized (and, for training,
//! augmented) NHWC batches ahead of the engine.
//!
//! Batch `b` of an epoch is built by worker `b % workers` and received in order, and
//! every random choice comes from a stream derived from (seed, epoch, position), so
//! the batches are identical whatever the number of workers or their timing.

use super::prefetch::Prefetch;
use crate::dist::Part;
use crate::rng::Rng;
use anyhow::Result;
use std::sync::{Arc, Mutex};

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

#[derive(Default)]
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

/// Builds batch `b` of `order` (the last batch may be short), in the memory of `reuse` if
/// given, or rather a rank's part of it ([`Part::WHOLE`] for the whole batch). `augment`: `Some((seed, epoch))` for training-time augmentation,
/// each image's draws depending on its position in the epoch only, whichever rank builds it.
pub fn build_batch(
    data: &dyn Samples,
    order: &[u32],
    batch: usize,
    b: usize,
    augment: Option<(u64, u64)>,
    reuse: Option<Batch>,
    part: Part,
) -> Batch {
    let whole = &order[b * batch..((b + 1) * batch).min(order.len())];
    let share = part.of(whole.len());
    let (first, idx) = (b * batch + share.start, &whole[share]);
    let (h, w) = data.hw();
    let len = data.views() * h * w * 3;
    let Batch { mut images, mut labels, mut errors, .. } = reuse.unwrap_or_default();
    images.clear();
    images.resize(idx.len() * len, 0.0);
    labels.clear();
    errors.clear();
    for (k, &i) in idx.iter().enumerate() {
        let out = &mut images[labels.len() * len..(labels.len() + 1) * len];
        let mut rng = augment.map(|(seed, epoch)| Rng::derive(seed, epoch, (first + k) as u64));
        match data.write(i as usize, rng.as_mut(), out) {
            Ok(label) => labels.push(label),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    images.truncate(labels.len() * len);
    Batch { images, views: data.views(), hw: (h, w), labels, errors }
}

/// Batches handed back after use, for the loader's workers to fill again: a training
/// run's batches are then made in the same few buffers from its first steps to its last.
#[derive(Clone, Default)]
pub struct Spare(Arc<Mutex<Vec<Batch>>>);

/// Spare batches kept at most: the workers' queues hold `AHEAD` each, so more would wait
/// unused.
const MAX_SPARE: usize = 8;

impl Spare {
    /// Gives a used batch back.
    pub fn put(&self, batch: Batch) {
        let mut spare = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if spare.len() < MAX_SPARE {
            spare.push(batch);
        }
    }
    fn take(&self) -> Option<Batch> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }
}

/// Streams the batches `start..` of one epoch, built in background threads in the
/// batches that `spare` holds, where it holds any.
pub struct BatchLoader(Prefetch<Batch>);

impl BatchLoader {
    pub fn new(
        data: Arc<dyn Samples>,
        order: Arc<Vec<u32>>,
        batch: usize,
        start: usize,
        augment: Option<(u64, u64)>,
        workers: usize,
        spare: Spare,
    ) -> Self {
        Self::share_of(data, order, batch, start, augment, workers, spare, Part::WHOLE)
    }

    /// [`new`](BatchLoader::new) for one rank: each batch holds the rank's `part` of the
    /// global batch, possibly none.
    #[allow(clippy::too_many_arguments)]
    pub fn share_of(
        data: Arc<dyn Samples>,
        order: Arc<Vec<u32>>,
        batch: usize,
        start: usize,
        augment: Option<(u64, u64)>,
        workers: usize,
        spare: Spare,
        part: Part,
    ) -> Self {
        let end = order.len().div_ceil(batch);
        BatchLoader(Prefetch::new(start, end, workers, move |b| {
            build_batch(data.as_ref(), &order, batch, b, augment, spare.take(), part)
        }))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Sample i: 2×2 pixels of `i + a random draw`, label i % 3; sample 5 is unreadable.
    struct Fake;
    impl Samples for Fake {
        fn len(&self) -> usize {
            11
        }
        fn hw(&self) -> (usize, usize) {
            (2, 2)
        }
        fn write(&self, i: usize, rng: Option<&mut Rng>, out: &mut [f32]) -> Result<u32> {
            anyhow::ensure!(i != 5, "sample 5 is corrupt");
            let noise = rng.map_or(0.0, |r| r.uniform() as f32);
            out.iter_mut().enumerate().for_each(|(k, v)| *v = i as f32 + k as f32 / 100.0 + noise);
            Ok(i as u32 % 3)
        }
    }

    fn contents(b: &Batch) -> (Vec<f32>, Vec<u32>, Vec<String>) {
        (b.images.clone(), b.labels.clone(), b.errors.clone())
    }

    #[test]
    fn batches_built_in_used_memory_equal_fresh_ones() {
        let order = epoch_order(Fake.len(), 7, 1, true);
        let augment = Some((7, 1));
        // A used batch, longer than any of these and full of NaN, with labels and errors.
        let used = || Batch {
            images: vec![f32::NAN; 1000],
            views: 1,
            hw: (9, 9),
            labels: vec![9; 40],
            errors: vec!["old".into()],
        };
        for b in 0..3 {
            let fresh = build_batch(&Fake, &order, 4, b, augment, None, Part::WHOLE);
            let reused = build_batch(&Fake, &order, 4, b, augment, Some(used()), Part::WHOLE);
            assert_eq!(contents(&fresh), contents(&reused), "batch {b}");
            assert_eq!(reused.hw, (2, 2));
        }
        // Through the loader: batches handed back give the same epoch.
        let data: Arc<dyn Samples> = Arc::new(Fake);
        let order = Arc::new(order);
        let fresh: Vec<_> = BatchLoader::new(data.clone(), order.clone(), 4, 0, augment, 2, Spare::default())
            .map(|b| contents(&b))
            .collect();
        let spare = Spare::default();
        spare.put(used());
        let mut recycled = Vec::new();
        for b in BatchLoader::new(data, order, 4, 0, augment, 2, spare.clone()) {
            recycled.push(contents(&b));
            spare.put(b);
        }
        assert_eq!(fresh, recycled);
        assert!(fresh.iter().any(|(_, _, errors)| errors.len() == 1), "sample 5 reported");
    }
}
