//! Parameters in flat buffers. A model's values, gradients and momenta each live in one
//! allocation, laid out in the order its backward pass finishes them, and each parameter's
//! tensors are windows into them ([`ParamVec`]). So a range of the gradient buffer is a
//! run of whole layers (a bucket of the all-reduce across processes), micro-batches add up
//! in place, and the SGD step is one call over the model (one kernel on a GPU, as
//! PyTorch's fused SGD).
//!
//! Soundness. The windows of an allocation never overlap (they are handed out one after
//! the other by [`FlatParams::push`]), are not `Clone`, and keep their allocation alive,
//! so none dangles and each range has one owner. The whole buffers are reached only
//! through [`FlatParams`]' `&mut self` methods, and its owner (the model) calls them only
//! after [`FlatParams::holds`] has found every window in its place inside the model, under
//! the same `&mut` borrow, so no window can be in use meanwhile. Every slice, whole or
//! windowed, is made from the allocation's raw pointer, so making one never invalidates
//! another.

use super::device::{DeviceVec, View, ViewMut};
use super::sgd::{self, SgdConfig};
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Arc;

/// A fixed-size allocation of floats, reached through its raw pointer only.
struct Alloc {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: the floats are plain data; who may touch which of them is settled by the
// ownership of the windows and of `FlatParams` (see the module's comment).
unsafe impl Send for Alloc {}
unsafe impl Sync for Alloc {}

impl Alloc {
    fn zeros(len: usize) -> Arc<Alloc> {
        let floats = Box::into_raw(vec![0f32; len].into_boxed_slice());
        let ptr = NonNull::new(floats.cast::<f32>()).expect("Box::into_raw is never null");
        Arc::new(Alloc { ptr, len })
    }

    /// # Safety
    /// `range` lies inside the allocation and nothing else reaches it while the slice lives.
    unsafe fn slice(&self, range: Range<usize>) -> &[f32] {
        debug_assert!(range.start <= range.end && range.end <= self.len);
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().add(range.start), range.len()) }
    }

    /// # Safety
    /// As [`Alloc::slice`], and nothing else reads it either.
    #[allow(clippy::mut_from_ref)]
    unsafe fn slice_mut(&self, range: Range<usize>) -> &mut [f32] {
        debug_assert!(range.start <= range.end && range.end <= self.len);
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(range.start), range.len()) }
    }
}

impl Drop for Alloc {
    fn drop(&mut self) {
        // SAFETY: made by `Box::into_raw` of a slice of `len` floats in `zeros`.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr.as_ptr(), self.len))) }
    }
}

/// A parameter's values, gradient or momentum: a buffer of its own (a layer made on its
/// own), or its window into a model's flat buffer.
pub struct ParamVec(Storage);

enum Storage {
    Own(DeviceVec),
    Window { alloc: Arc<Alloc>, at: usize, len: usize },
}

impl ParamVec {
    pub fn from_host(values: Vec<f32>) -> Self {
        ParamVec(Storage::Own(DeviceVec::from_host(values)))
    }
    pub fn zeros(len: usize) -> Self {
        ParamVec(Storage::Own(DeviceVec::zeros(len)))
    }
    pub fn len(&self) -> usize {
        match &self.0 {
            Storage::Own(v) => v.len(),
            Storage::Window { len, .. } => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn view(&self) -> View<'_> {
        match &self.0 {
            Storage::Own(v) => v.view(),
            // SAFETY: this window is the only owner of its range, borrowed here.
            Storage::Window { alloc, at, len } => View::new(unsafe { alloc.slice(*at..at + len) }),
        }
    }
    pub fn view_mut(&mut self) -> ViewMut<'_> {
        match &mut self.0 {
            Storage::Own(v) => v.view_mut(),
            // SAFETY: as `view`, borrowed mutably.
            Storage::Window { alloc, at, len } => ViewMut::new(unsafe { alloc.slice_mut(*at..*at + *len) }),
        }
    }
    /// The values, copied to the host.
    pub fn to_host(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        self.view().copy_to_host(&mut out);
        out
    }
    /// Replaces the values with `values`, of the same length.
    pub fn copy_from_host(&mut self, values: &[f32]) {
        assert_eq!(values.len(), self.len(), "a parameter keeps its size");
        self.view_mut().host().copy_from_slice(values);
    }
}

/// The flat buffers of a model's parameters: values, gradients and momenta, with one
/// window each per parameter, in the order they were pushed.
pub struct FlatParams {
    value: Arc<Alloc>,
    grad: Arc<Alloc>,
    momentum: Arc<Alloc>,
    /// Floats handed out to windows so far.
    filled: usize,
}

impl FlatParams {
    /// Room for `len` floats of parameters.
    pub fn new(len: usize) -> Self {
        FlatParams { value: Alloc::zeros(len), grad: Alloc::zeros(len), momentum: Alloc::zeros(len), filled: 0 }
    }

    /// Floats of parameters handed out so far.
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Moves a parameter's tensors (of one length) into the next range of the buffers, and
    /// leaves each a window onto its range. Returns where it starts.
    pub fn push(&mut self, [value, grad, momentum]: [&mut ParamVec; 3]) -> usize {
        let (at, len) = (self.filled, value.len());
        assert!(grad.len() == len && momentum.len() == len, "a parameter's tensors have one length");
        assert!(at + len <= self.value.len, "pushed past the room asked for");
        for (tensor, alloc) in [(value, &self.value), (grad, &self.grad), (momentum, &self.momentum)] {
            // SAFETY: `at..at + len` was handed to no window yet.
            unsafe { alloc.slice_mut(at..at + len) }.copy_from_slice(tensor.view().host());
            tensor.0 = Storage::Window { alloc: alloc.clone(), at, len };
        }
        self.filled += len;
        at
    }

    /// Whether the tensors are this model's windows starting at `at`.
    pub fn holds(&self, at: usize, [value, grad, momentum]: [&ParamVec; 3]) -> bool {
        let place = |t: &ParamVec, alloc: &Arc<Alloc>| match &t.0 {
            Storage::Window { alloc: a, at: start, .. } => Arc::ptr_eq(a, alloc) && *start == at,
            Storage::Own(_) => false,
        };
        place(value, &self.value) && place(grad, &self.grad) && place(momentum, &self.momentum)
    }

    /// The gradients in `range`. The caller holds every window (see the module's comment).
    pub fn grads(&mut self, range: Range<usize>) -> View<'_> {
        assert!(range.end <= self.filled);
        // SAFETY: `&mut self`, and the caller holds every window.
        View::new(unsafe { self.grad.slice(range) })
    }

    /// The gradients in `range`, to write. The caller holds every window.
    pub fn grads_mut(&mut self, range: Range<usize>) -> ViewMut<'_> {
        assert!(range.end <= self.filled);
        // SAFETY: as `grads`.
        ViewMut::new(unsafe { self.grad.slice_mut(range) })
    }

    /// One SGD step on the parameters in `range`. The caller holds every window.
    pub fn sgd_step(&mut self, cfg: SgdConfig, range: Range<usize>) {
        assert!(range.end <= self.filled);
        // SAFETY: as `grads`; the three allocations are distinct.
        let (value, grad, momentum) = unsafe {
            (self.value.slice_mut(range.clone()), self.grad.slice(range.clone()), self.momentum.slice_mut(range))
        };
        sgd::step(cfg, value, grad, momentum);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn param(values: &[f32]) -> [ParamVec; 3] {
        let n = values.len();
        let grad: Vec<f32> = values.iter().map(|v| v * 10.0).collect();
        [ParamVec::from_host(values.to_vec()), ParamVec::from_host(grad), ParamVec::zeros(n)]
    }

    #[test]
    fn windows_keep_their_values_and_see_the_flat_buffers() {
        let (mut a, mut b) = (param(&[1.0, 2.0, 3.0]), param(&[4.0, 5.0]));
        let mut flat = FlatParams::new(5);
        let [av, ag, am] = &mut a;
        assert_eq!(flat.push([av, ag, am]), 0);
        let [bv, bg, bm] = &mut b;
        assert_eq!(flat.push([bv, bg, bm]), 3);
        assert_eq!(a[0].to_host(), [1.0, 2.0, 3.0]);
        assert_eq!(b[1].to_host(), [40.0, 50.0]);
        assert_eq!(flat.grads(0..5).host(), [10.0, 20.0, 30.0, 40.0, 50.0]);
        // Written through a window, read through the buffer, and the other way round.
        b[1].copy_from_host(&[-1.0, -2.0]);
        assert_eq!(flat.grads(2..5).host(), [30.0, -1.0, -2.0]);
        flat.grads_mut(0..1).host()[0] = 7.0;
        assert_eq!(a[1].to_host(), [7.0, 20.0, 30.0]);
        assert!(flat.holds(0, [&a[0], &a[1], &a[2]]) && flat.holds(3, [&b[0], &b[1], &b[2]]));
        assert!(!flat.holds(3, [&a[0], &a[1], &a[2]]));
        // The windows outlive the buffers' owner.
        drop(flat);
        assert_eq!(a[0].to_host(), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn one_step_over_the_buffers_is_the_step_of_each_parameter() {
        let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
        let values: Vec<Vec<f32>> = vec![(0..37).map(|i| i as f32 / 7.0).collect(), vec![0.5; 3]];
        let mut each: Vec<[ParamVec; 3]> = values.iter().map(|v| param(v)).collect();
        let mut flat_params: Vec<[ParamVec; 3]> = values.iter().map(|v| param(v)).collect();
        let mut flat = FlatParams::new(40);
        for [v, g, m] in &mut flat_params {
            flat.push([v, g, m]);
        }
        assert!(!flat.holds(0, [&each[0][0], &each[0][1], &each[0][2]]));
        for _ in 0..2 {
            for [v, g, m] in &mut each {
                sgd::step(cfg, v.view_mut().host(), g.view().host(), m.view_mut().host());
            }
            flat.sgd_step(cfg, 0..40);
        }
        for (one, other) in each.iter().zip(&flat_params) {
            assert_eq!(one[0].to_host(), other[0].to_host());
            assert_eq!(one[2].to_host(), other[2].to_host());
        }
    }

    #[test]
    #[should_panic(expected = "keeps its size")]
    fn a_window_keeps_its_size() {
        let mut p = param(&[1.0, 2.0]);
        let mut flat = FlatParams::new(2);
        let [v, g, m] = &mut p;
        flat.push([v, g, m]);
        p[0].copy_from_host(&[1.0]);
    }
}
