//! The ranks' gradients added up in buckets while the backward pass runs, as PyTorch's
//! DDP does: parameters in the order the backward pass finishes them (the classifier
//! first, the stem last), each bucket's all-reduce started as soon as it is full, so the
//! communication of the last layers overlaps the backward pass of the first. Every value
//! is still summed over the ranks in rank order, so the buckets change when the sums are
//! made, never what they are.

use crate::dist::{Collective, Pending};
use crate::engine::device::View;
use crate::nn::{Param, ParamGroup};

/// The first bucket is small, so that communication starts early (DDP's choice too).
const FIRST_BUCKET_VALUES: usize = (1 << 20) / 4;

/// One step's gradients on their way through the all-reduce.
pub struct Reducer<'a> {
    comm: &'a dyn Collective,
    /// This rank's share of the global batch: its gradients' weight in the sum.
    weight: f32,
    /// Values per bucket after the first (usize::MAX: one bucket, after the backward pass).
    bucket_values: usize,
    filling: Vec<f32>,
    started: Vec<Pending>,
    /// Bucket buffers kept from step to step.
    spare: &'a mut Vec<Vec<f32>>,
}

impl<'a> Reducer<'a> {
    /// `bucket_mb`: megabytes of gradients per all-reduce (0: one, after the backward pass).
    pub fn new(comm: &'a dyn Collective, weight: f32, bucket_mb: usize, spare: &'a mut Vec<Vec<f32>>) -> Self {
        let bucket_values = match bucket_mb {
            0 => usize::MAX,
            mb => (mb << 20) / 4,
        };
        let filling = spare.pop().unwrap_or_default();
        Reducer { comm, weight, bucket_values, filling, started: Vec::new(), spare }
    }

    /// Adds a finished gradient to the buckets (weighted by the rank's share).
    pub fn stage(&mut self, grad: View) {
        let start = self.filling.len();
        self.filling.resize(start + grad.len(), 0.0);
        grad.copy_to_host(&mut self.filling[start..]);
        if self.weight != 1.0 {
            self.filling[start..].iter_mut().for_each(|g| *g *= self.weight);
        }
        self.start_if_full();
    }

    /// Zeros in place of a gradient: a rank whose loss failed, or that had no images, still
    /// takes part in every all-reduce.
    pub fn stage_zeros(&mut self, len: usize) {
        self.filling.resize(self.filling.len() + len, 0.0);
        self.start_if_full();
    }

    /// Zeros for every parameter of `groups`.
    pub fn stage_all_zeros(&mut self, groups: impl FnOnce(&mut dyn FnMut(&mut dyn ParamGroup))) {
        groups(&mut |g| g.for_each_param(&mut |p| self.stage_zeros(p.grad.len())));
    }

    fn start_if_full(&mut self) {
        let first = self.started.is_empty() && self.bucket_values != usize::MAX;
        let cap = if first { FIRST_BUCKET_VALUES.min(self.bucket_values) } else { self.bucket_values };
        if self.filling.len() >= cap {
            self.start();
        }
    }

    fn start(&mut self) {
        if self.filling.is_empty() {
            return;
        }
        let next = self.spare.pop().unwrap_or_default();
        let full = std::mem::replace(&mut self.filling, next);
        self.started.push(self.comm.start_all_reduce_sum(full));
    }

    /// Waits for every bucket and writes the sums into the gradients of `groups`, visited in
    /// the order they were staged.
    pub fn finish(mut self, groups: impl FnOnce(&mut dyn FnMut(&mut dyn ParamGroup))) {
        self.start();
        let sums: Vec<Vec<f32>> = self.started.drain(..).map(Pending::wait).collect();
        let (mut bucket, mut at) = (0, 0);
        let mut scatter = |p: &mut Param| {
            let len = p.grad.len();
            if at == sums[bucket].len() {
                (bucket, at) = (bucket + 1, 0);
            }
            p.grad.copy_from_host(&sums[bucket][at..at + len]);
            at += len;
        };
        groups(&mut |g| g.for_each_param(&mut scatter));
        for mut used in sums {
            used.clear();
            self.spare.push(used);
        }
        let mut last = std::mem::take(&mut self.filling);
        last.clear();
        self.spare.push(last);
    }
}
