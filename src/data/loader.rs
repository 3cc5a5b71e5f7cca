//! A background loader: worker threads assemble normalized (and, for training,
//! augmented) NHWC batches into bounded queues while the engine computes.
//!
//! Batch `b` of an epoch is built by worker `b % workers` and received in order, and
//! every random choice comes from a stream derived from (seed, epoch, position), so
//! the batches are identical whatever the number of workers or their timing.

use super::cifar::{Dataset, IMAGE_BYTES, SIDE};
use super::transform::{Norm, prepare};
use crate::rng::Rng;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

pub struct Batch {
    /// NHWC images, `n * h * w * 3` values.
    pub images: Vec<f32>,
    /// Height and width of every image.
    pub hw: (usize, usize),
    pub labels: Vec<u32>,
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

/// Builds batch `b` of `order` (the last batch may be short).
pub fn build_batch(
    data: &Dataset,
    norm: &Norm,
    order: &[u32],
    batch: usize,
    b: usize,
    augment: Option<(u64, u64)>,
) -> Batch {
    let idx = &order[b * batch..((b + 1) * batch).min(order.len())];
    let mut images = vec![0f32; idx.len() * IMAGE_BYTES];
    let mut tmp = vec![0f32; IMAGE_BYTES];
    for (k, &i) in idx.iter().enumerate() {
        let out = &mut images[k * IMAGE_BYTES..(k + 1) * IMAGE_BYTES];
        let mut rng = augment.map(|(seed, epoch)| Rng::derive(seed, epoch, (b * batch + k) as u64));
        prepare(data, i as usize, norm, rng.as_mut(), &mut tmp, out);
    }
    Batch { images, hw: (SIDE, SIDE), labels: idx.iter().map(|&i| data.labels[i as usize] as u32).collect() }
}

/// Streams the batches `start..` of one epoch from background threads.
pub struct BatchLoader {
    receivers: Vec<Receiver<Batch>>,
    workers: Vec<JoinHandle<()>>,
    start: usize,
    next: usize,
    end: usize,
}

impl BatchLoader {
    /// `augment`: `Some((seed, epoch))` for training-time augmentation.
    pub fn new(
        data: Arc<Dataset>,
        norm: Arc<Norm>,
        order: Arc<Vec<u32>>,
        batch: usize,
        start: usize,
        augment: Option<(u64, u64)>,
        workers: usize,
    ) -> Self {
        let end = order.len().div_ceil(batch);
        let workers = workers.max(1);
        let mut receivers = Vec::new();
        let mut handles = Vec::new();
        for w in 0..workers {
            let (tx, rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(2);
            let (data, norm, order) = (data.clone(), norm.clone(), order.clone());
            handles.push(std::thread::spawn(move || {
                let mut b = start + w;
                while b < end {
                    if tx.send(build_batch(&data, &norm, &order, batch, b, augment)).is_err() {
                        return; // the consumer stopped early
                    }
                    b += workers;
                }
            }));
            receivers.push(rx);
        }
        BatchLoader { receivers, workers: handles, start, next: start, end }
    }

    /// Index (within the epoch) of the batch the next call returns.
    pub fn position(&self) -> usize {
        self.next
    }
}

impl Iterator for BatchLoader {
    type Item = Batch;
    fn next(&mut self) -> Option<Batch> {
        if self.next >= self.end {
            return None;
        }
        let w = (self.next - self.start) % self.receivers.len();
        self.next += 1;
        self.receivers[w].recv().ok()
    }
}

impl Drop for BatchLoader {
    fn drop(&mut self) {
        self.receivers.clear(); // unblocks workers waiting to send
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
