//! The ranks' gradients added up in buckets while the backward pass runs, as PyTorch's
//! DDP does: parameters in the order the backward pass finishes them (the classifier
//! first, the stem last), each bucket's all-reduce started as soon as it is full, so the
//! communication of the last layers overlaps the backward pass of the first. Every value
//! is still summed over the ranks in rank order, so the buckets change when the sums are
//! made, never what they are. The gradients are staged in the order of the model's flat
//! buffers, so the sums go back as one contiguous range.

use crate::dist::{Collective, Pending};
use crate::engine::device::{View, ViewMut};

/// The first bucket is small, so that communication starts early (DDP's choice too).
const FIRST_BUCKET_VALUES: usize = (1 << 20) / 4;

/// One step's gradients on their way through the all-reduce.
pub struct Reducer<'a> {
    comm: &'a dyn Collective,
    /// Values per bucket after the first (usize::MAX: one bucket, after the backward pass).
    bucket_values: usize,
    filling: Vec<f32>,
    started: Vec<Pending>,
    /// Bucket buffers kept from step to step.
    spare: &'a mut Vec<Vec<f32>>,
}

impl<'a> Reducer<'a> {
    /// `bucket_mb`: megabytes of gradients per all-reduce (0: one, after the backward pass).
    pub fn new(comm: &'a dyn Collective, bucket_mb: usize, spare: &'a mut Vec<Vec<f32>>) -> Self {
        let bucket_values = match bucket_mb {
            0 => usize::MAX,
            mb => (mb << 20) / 4,
        };
        Self::with_bucket_values(comm, bucket_values, spare)
    }

    fn with_bucket_values(comm: &'a dyn Collective, bucket_values: usize, spare: &'a mut Vec<Vec<f32>>) -> Self {
        let filling = spare.pop().unwrap_or_default();
        Reducer { comm, bucket_values, filling, started: Vec::new(), spare }
    }

    /// Adds finished gradients, the next ones of the flat order, to the buckets.
    pub fn stage(&mut self, grad: View) {
        let start = self.filling.len();
        self.filling.resize(start + grad.len(), 0.0);
        grad.copy_to_host(&mut self.filling[start..]);
        self.start_if_full();
    }

    /// Zeros in place of a gradient: a rank whose loss failed, or that had no images, still
    /// takes part in every all-reduce.
    pub fn stage_zeros(&mut self, len: usize) {
        self.filling.resize(self.filling.len() + len, 0.0);
        self.start_if_full();
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

    /// Waits for every bucket and writes the sums into `grads`, the range of the flat
    /// gradients that was staged.
    pub fn finish(mut self, mut grads: ViewMut) {
        self.start();
        let mut at = 0;
        for pending in std::mem::take(&mut self.started) {
            let mut sum = pending.wait();
            grads.reborrow().slice_mut(at..at + sum.len()).copy_from_host(&sum);
            at += sum.len();
            sum.clear();
            self.spare.push(sum);
        }
        assert_eq!(at, grads.len(), "the gradients staged are those of the range");
        let mut last = std::mem::take(&mut self.filling);
        last.clear();
        self.spare.push(last);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ModelConfig, ResNet};
    use std::sync::Mutex;

    /// Two ranks whose second holds the values plus 1, each all-reduce's length recorded.
    struct TwoRanks(Mutex<Vec<usize>>);

    impl Collective for TwoRanks {
        fn rank(&self) -> usize {
            0
        }
        fn size(&self) -> usize {
            2
        }
        fn all_reduce_sum(&self, buf: &mut [f32]) {
            self.0.lock().unwrap().push(buf.len());
            buf.iter_mut().for_each(|v| *v = 2.0 * *v + 1.0);
        }
        fn all_reduce_sum_f64(&self, _: &mut [f64]) {}
        fn broadcast(&self, _: &mut [f32], _: usize) {}
        fn abort(&self, _: i32) -> ! {
            unreachable!()
        }
        fn describe(&self) -> String {
            "two ranks".into()
        }
    }

    /// Every parameter's gradient set to values that name it: (parameter index) + k/1e4.
    fn numbered(net: &mut ResNet) -> Vec<Vec<f32>> {
        let mut values = Vec::new();
        net.for_each_param(&mut |p| {
            let i = values.len() as f32;
            let v: Vec<f32> = (0..p.grad.len()).map(|k| i + k as f32 / 1e4).collect();
            p.grad.copy_from_host(&v);
            values.push(v);
        });
        values
    }

    #[test]
    fn every_gradient_comes_back_summed_to_its_own_parameter() {
        let mut net = ResNet::new(ModelConfig::from_name("resnet8", None, 10).unwrap(), 0);
        let total: usize = {
            let mut n = 0;
            net.for_each_param(&mut |p| n += p.grad.len());
            n
        };
        // One bucket, buckets of about a layer, and buckets smaller than most parameters.
        for bucket_values in [usize::MAX, 2000, 100] {
            let values = numbered(&mut net);
            let comm = TwoRanks(Mutex::new(Vec::new()));
            let mut spare = Vec::new();
            let mut reducer = Reducer::with_bucket_values(&comm, bucket_values, &mut spare);
            // Staged in the order the backward pass finishes them.
            net.for_each_group_backward(&mut |g| g.for_each_param(&mut |p| reducer.stage(p.grad.view())));
            reducer.finish(net.grads_mut(0..total));
            let mut i = 0;
            net.for_each_param(&mut |p| {
                let want: Vec<f32> = values[i].iter().map(|v| 2.0 * v + 1.0).collect();
                assert_eq!(p.grad.to_host(), want, "parameter {i}, buckets of {bucket_values}");
                i += 1;
            });
            let sizes = comm.0.into_inner().unwrap();
            assert_eq!(sizes.iter().sum::<usize>(), total);
            match bucket_values {
                usize::MAX => assert_eq!(sizes, [total]),
                _ => assert!(sizes.len() > 3 && sizes[..sizes.len() - 1].iter().all(|&s| s >= bucket_values)),
            }
            // The buffers are kept for the next step.
            assert_eq!(spare.len(), sizes.len() + 1);
        }
    }

    #[test]
    fn zeros_take_the_place_of_a_failed_ranks_gradients() {
        let mut net = ResNet::new(ModelConfig::from_name("resnet8", None, 10).unwrap(), 0);
        numbered(&mut net);
        let comm = TwoRanks(Mutex::new(Vec::new()));
        let mut spare = Vec::new();
        let mut reducer = Reducer::with_bucket_values(&comm, 300, &mut spare);
        reducer.stage_zeros(net.flat_len());
        reducer.finish(net.grads_mut(0..net.flat_len()));
        net.for_each_param(&mut |p| assert!(p.grad.to_host().iter().all(|&g| g == 1.0)));
    }
}
