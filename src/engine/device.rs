//! The backend boundary: the engine's memory, and every operation that layers, models and
//! training ask of the engine.
//!
//! Above this module (`crate::nn`, `crate::model`, `crate::train`), tensors live in
//! [`DeviceVec`]s and are handed to the functions below as [`View`]s and [`ViewMut`]s.
//! Their floats can be reached only inside `crate::engine`, or copied to and from the host
//! through the named transfers (`from_host`, `copy_from_host`, `to_host`, `copy_to_host`),
//! so the compiler checks that nothing above computes on them:
//!
//! ```compile_fail,E0624
//! let v = resnet::engine::DeviceVec::<f32>::zeros(4);
//! let floats: &[f32] = v.view().host(); // private to the engine
//! ```
//!
//! The rest of the state the layers keep is opaque too: a convolution's [`Prepared`]
//! weights, BatchNorm's [`BnSaved`] statistics, and the `Workspace` every function takes
//! (scratch, algorithm, number format, gradient mode). Results reach their output as one
//! `epilogue::Store` says: overwritten, added to, or finished by an [`Epilogue`].
//!
//! On this CPU backend device memory is host memory and each function calls the CPU
//! kernels of the sibling modules. A CUDA backend would make `DeviceVec` hold device
//! memory as well (cudarc's `CudaSlice`, views as its `CudaView`/`CudaViewMut`) and
//! dispatch each function below to cuDNN/cuBLAS or its own kernels; the layers, models and
//! training would stay as they are. The kernels' own signatures (host slices) are the CPU
//! backend's, and `tests/kernels.rs` tests them directly.

use super::batchnorm::{self as bn, BnParams};
use super::conv::{self, ConvShape};
// The input gradient's destination and a convolution's prepared weights, as layers hold them.
pub use super::conv::{InputGrad, Prepared};
use super::epilogue::{self, Store};
use super::ops::{self, ShortcutA};
use super::pool::{self, PoolShape};
use super::{GradMode, Workspace, ensure_len};
use std::ops::{Bound, RangeBounds};

/// A growable buffer in the engine's memory. Grows only ([`DeviceVec::ensure_len`]), so
/// buffers reused from step to step allocate once.
#[derive(Debug, Default, PartialEq)]
pub struct DeviceVec<T = f32>(Vec<T>);

impl<T: Clone> Clone for DeviceVec<T> {
    fn clone(&self) -> Self {
        DeviceVec(self.0.clone())
    }
    /// Reuses this buffer's memory (the derived one would allocate anew).
    fn clone_from(&mut self, source: &Self) {
        self.0.clone_from(&source.0);
    }
}

/// A borrowed range of a [`DeviceVec`].
#[derive(Clone, Copy, Debug)]
pub struct View<'a, T = f32>(&'a [T]);

/// A mutably borrowed range of a [`DeviceVec`].
#[derive(Debug)]
pub struct ViewMut<'a, T = f32>(&'a mut [T]);

fn bounds(r: impl RangeBounds<usize>) -> (Bound<usize>, Bound<usize>) {
    (r.start_bound().cloned(), r.end_bound().cloned())
}

impl<T: Copy + Default> DeviceVec<T> {
    pub fn zeros(len: usize) -> Self {
        DeviceVec(vec![T::default(); len])
    }
    pub fn filled(len: usize, v: T) -> Self {
        DeviceVec(vec![v; len])
    }
    /// Moves (on a GPU: copies) host values to the device.
    pub fn from_host(values: Vec<T>) -> Self {
        DeviceVec(values)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// Grows to at least `len` elements (never shrinks, so steady state allocates nothing).
    pub fn ensure_len(&mut self, len: usize) {
        ensure_len(&mut self.0, len);
    }
    pub fn view(&self) -> View<'_, T> {
        View(&self.0)
    }
    pub fn view_mut(&mut self) -> ViewMut<'_, T> {
        ViewMut(&mut self.0)
    }
    pub fn slice(&self, r: impl RangeBounds<usize>) -> View<'_, T> {
        View(&self.0[bounds(r)])
    }
    pub fn slice_mut(&mut self, r: impl RangeBounds<usize>) -> ViewMut<'_, T> {
        ViewMut(&mut self.0[bounds(r)])
    }
    /// The whole buffer, copied to the host.
    pub fn to_host(&self) -> Vec<T> {
        self.0.clone()
    }
    /// Replaces the contents with `values` (growing to fit; elements past them are kept).
    pub fn copy_from_host(&mut self, values: &[T]) {
        self.ensure_len(values.len());
        self.0[..values.len()].copy_from_slice(values);
    }
}

impl<'a, T: Copy> View<'a, T> {
    pub(in crate::engine) fn new(values: &'a [T]) -> Self {
        View(values)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn slice(self, r: impl RangeBounds<usize>) -> View<'a, T> {
        View(&self.0[bounds(r)])
    }
    /// Copies the view to the start of `out` (at least as long).
    pub fn copy_to_host(self, out: &mut [T]) {
        out[..self.0.len()].copy_from_slice(self.0);
    }
    pub(in crate::engine) fn host(self) -> &'a [T] {
        self.0
    }
}

impl<'a, T: Copy> ViewMut<'a, T> {
    pub(in crate::engine) fn new(values: &'a mut [T]) -> Self {
        ViewMut(values)
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    /// A shorter-lived mutable view of the same range, so that one view serves several calls.
    pub fn reborrow(&mut self) -> ViewMut<'_, T> {
        ViewMut(&mut *self.0)
    }
    pub fn slice_mut(self, r: impl RangeBounds<usize>) -> ViewMut<'a, T> {
        ViewMut(&mut self.0[bounds(r)])
    }
    pub fn view(&self) -> View<'_, T> {
        View(&*self.0)
    }
    /// Replaces the contents with `values`, of the same length.
    pub fn copy_from_host(self, values: &[T]) {
        self.0.copy_from_slice(values);
    }
    pub(in crate::engine) fn host(self) -> &'a mut [T] {
        self.0
    }
}

/// What a BatchNorm training forward keeps for its backward: per channel the batch mean,
/// 1/std and the folded scale and shift, and the rows they cover. Engine memory, opaque
/// above the engine.
pub struct BnSaved(bn::Saved);

impl BnSaved {
    pub fn new(channels: usize) -> Self {
        BnSaved(bn::Saved::new(channels))
    }
}

/// The BatchNorm affine parameters as the BatchNorm operations take them.
#[derive(Clone, Copy)]
pub struct BnWeights<'a> {
    pub gamma: View<'a>,
    pub beta: View<'a>,
    pub eps: f32,
    /// The processes the training statistics are gathered over ([`bn::SyncStats`]).
    pub sync: Option<&'a dyn bn::SyncStats>,
}

impl<'a> BnWeights<'a> {
    fn host(self) -> BnParams<'a> {
        BnParams { gamma: self.gamma.host(), beta: self.beta.host(), eps: self.eps, sync: self.sync }
    }
}

/// An inference epilogue on the engine's memory (see [`epilogue::Epilogue`]).
pub type Epilogue<'a> = epilogue::Epilogue<View<'a>>;

/// The residual an [`Epilogue`] adds (see [`epilogue::Residual`]).
pub type Residual<'a> = epilogue::Residual<View<'a>>;

fn input_grad(dx: InputGrad<ViewMut<'_>>) -> InputGrad<&mut [f32]> {
    match dx {
        InputGrad::Skip => InputGrad::Skip,
        InputGrad::Set(v) => InputGrad::Set(v.host()),
        InputGrad::Add(v) => InputGrad::Add(v.host()),
    }
}

// Convolution.

/// `y = conv(x, w)`, as [`conv::forward`].
pub fn conv_forward(s: &ConvShape, n: usize, x: View, w: View, y: ViewMut, ws: &mut Workspace) {
    conv::forward(s, n, x.host(), w.host(), y.host(), ws);
}

/// `y = epilogue(conv(x, w))` on weights prepared once, as [`conv::forward_with`].
#[allow(clippy::too_many_arguments)]
pub fn conv_forward_fused(
    s: &ConvShape,
    n: usize,
    x: View,
    w: View,
    y: ViewMut,
    epi: Epilogue,
    prepared: &mut Prepared,
    ws: &mut Workspace,
) {
    conv::forward_with(s, n, x.host(), w.host(), y.host(), Store::Finish(epi.map(View::host)), Some(prepared), ws);
}

/// The weight gradient into `dw`, and the input gradient as `dx` says ([`conv::backward`]).
#[allow(clippy::too_many_arguments)]
pub fn conv_backward(
    s: &ConvShape,
    n: usize,
    x: View,
    w: View,
    dy: View,
    dw: ViewMut,
    dx: InputGrad<ViewMut>,
    ws: &mut Workspace,
) {
    conv::backward(s, n, x.host(), w.host(), dy.host(), dw.host(), input_grad(dx), ws);
}

// BatchNorm.

/// Training forward over `rows` NHWC pixels ([`bn::forward_train`]).
#[allow(clippy::too_many_arguments)]
pub fn bn_forward_train(
    p: BnWeights,
    x: View,
    rows: usize,
    momentum: f32,
    running_mean: ViewMut,
    running_var: ViewMut,
    saved: &mut BnSaved,
    residual: Option<View>,
    relu: bool,
    y: ViewMut,
    ws: &mut Workspace,
) {
    let (mean, var) = (running_mean.host(), running_var.host());
    let residual = residual.map(View::host);
    bn::forward_train(
        &p.host(),
        x.host(),
        rows,
        momentum,
        mean,
        var,
        &mut saved.0,
        residual,
        relu,
        y.host(),
        &mut ws.bn,
    );
}

/// Inference forward from the running statistics ([`bn::forward_eval`]).
#[allow(clippy::too_many_arguments)]
pub fn bn_forward_eval(
    p: BnWeights,
    x: View,
    rows: usize,
    running_mean: View,
    running_var: View,
    residual: Option<View>,
    relu: bool,
    y: ViewMut,
    ws: &mut Workspace,
) {
    let (mean, var, residual) = (running_mean.host(), running_var.host(), residual.map(View::host));
    bn::forward_eval(&p.host(), x.host(), rows, mean, var, residual, relu, y.host(), &mut ws.bn);
}

/// The inference transform `x·scale + shift` ([`bn::eval_affine`]).
pub fn bn_eval_affine(p: BnWeights, running_mean: View, running_var: View, scale: ViewMut, shift: ViewMut) {
    bn::eval_affine(&p.host(), running_mean.host(), running_var.host(), scale.host(), shift.host());
}

/// Backward in place on `g`, writing dγ and dβ ([`bn::backward`]).
#[allow(clippy::too_many_arguments)]
pub fn bn_backward(
    p: BnWeights,
    x: View,
    rows: usize,
    saved: &BnSaved,
    relu: bool,
    g: ViewMut,
    dgamma: ViewMut,
    dbeta: ViewMut,
    ws: &mut Workspace,
) {
    bn::backward(&p.host(), x.host(), rows, &saved.0, relu, g.host(), dgamma.host(), dbeta.host(), &mut ws.bn);
}

// Elementwise, shortcut, pooling, classifier.

/// `g *= (out > 0)`, also copied to `copy` if given ([`ops::relu_backward`]).
pub fn relu_backward(g: ViewMut, out: View, copy: Option<ViewMut>) {
    ops::relu_backward(g.host(), out.host(), copy.map(ViewMut::host));
}

/// `y = a·x`.
pub fn scaled_copy(y: ViewMut, a: f32, x: View) {
    y.host().iter_mut().zip(x.host()).for_each(|(y, x)| *y = a * x);
}

/// `y += a·x`.
pub fn add_scaled(y: ViewMut, a: f32, x: View) {
    ops::axpy(a, x.host(), y.host());
}

/// `y = x`, over the shorter of the two.
pub fn copy(y: ViewMut, x: View) {
    let (y, x) = (y.host(), x.host());
    let len = y.len().min(x.len());
    y[..len].copy_from_slice(&x[..len]);
}

pub fn shortcut_a_forward(s: &ShortcutA, n: usize, x: View, y: ViewMut) {
    s.forward(n, x.host(), y.host());
}

pub fn shortcut_a_backward(s: &ShortcutA, n: usize, g: View, dx: ViewMut) {
    s.backward(n, g.host(), dx.host());
}

/// Max pooling that keeps the argmax for the backward ([`pool::maxpool_forward`]).
pub fn maxpool_forward(s: &PoolShape, n: usize, x: View, y: ViewMut, argmax: ViewMut<u32>) {
    pool::maxpool_forward(s, n, x.host(), y.host(), argmax.host());
}

pub fn maxpool_eval(s: &PoolShape, n: usize, x: View, y: ViewMut) {
    pool::maxpool_eval(s, n, x.host(), y.host());
}

pub fn maxpool_backward(s: &PoolShape, n: usize, g: View, argmax: View<u32>, dx: ViewMut) {
    pool::maxpool_backward(s, n, g.host(), argmax.host(), dx.host());
}

pub fn avgpool_forward(n: usize, pixels: usize, c: usize, x: View, y: ViewMut) {
    pool::avgpool_forward(n, pixels, c, x.host(), y.host());
}

pub fn avgpool_backward(n: usize, pixels: usize, c: usize, g: View, dx: ViewMut) {
    pool::avgpool_backward(n, pixels, c, g.host(), dx.host());
}

/// `y = x·wᵀ + b` for `n` rows of `i` inputs, `o` outputs ([`ops::linear_forward`]).
pub fn linear_forward(n: usize, i: usize, o: usize, x: View, w: View, b: View, y: ViewMut) {
    ops::linear_forward(n, i, o, x.host(), w.host(), b.host(), y.host());
}

/// Gradients of the weights and bias (written or added to, as `mode` says) and of the
/// input ([`ops::linear_backward`]).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    n: usize,
    i: usize,
    o: usize,
    x: View,
    w: View,
    g: View,
    dw: ViewMut,
    db: ViewMut,
    dx: ViewMut,
    mode: GradMode,
) {
    let add = mode == GradMode::Accumulate;
    ops::linear_backward(n, i, o, x.host(), w.host(), g.host(), dw.host(), db.host(), dx.host(), add);
}
