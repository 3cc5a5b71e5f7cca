//! Convolutions on the GPU through cuDNN: NHWC activations and OHWI weights, which is
//! cuDNN's NHWC filter layout (k × r × s × c), so the CPU engine's tensors go to the GPU
//! unchanged. f32 with cuDNN's FMA math, not TF32, so results match the CPU engine to
//! float rounding, unless TF32 is allowed (`--precision tf32`). Each pass's algorithm is cuDNN's heuristics' first choice, once per
//! shape and batch, and kept. That choice may be one that adds with atomics (backward
//! passes), so two runs can differ in the last bits: choosing among the deterministic
//! algorithms needs cuDNN's descriptors below `cudarc`'s safe layer, still to be done.

use super::Gpu;
use crate::engine::conv::ConvShape;
use anyhow::{Context, Result};
use cudarc::cudnn::{
    ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, FilterDescriptor, TensorDescriptor, sys,
};
use cudarc::driver::CudaSlice;
use std::collections::HashMap;
use std::sync::Arc;

type Buf = CudaSlice<f32>;

/// Why cuDNN cannot be used here, if it cannot (its library, `libcudnn.so.9`, comes with
/// PyTorch's `nvidia-cudnn` package).
pub fn cudnn_missing() -> Option<String> {
    // SAFETY: only tries to open the library by its usual names.
    let present = unsafe { cudarc::cudnn::sys::is_culib_present() };
    (!present).then(|| "cuDNN (libcudnn.so) is not on the library path (LD_LIBRARY_PATH)".to_string())
}

/// The algorithms picked so far, by batch and shape.
#[derive(Default)]
pub(super) struct Algorithms {
    forward: HashMap<Key, sys::cudnnConvolutionFwdAlgo_t>,
    data: HashMap<Key, sys::cudnnConvolutionBwdDataAlgo_t>,
    filter: HashMap<Key, sys::cudnnConvolutionBwdFilterAlgo_t>,
}

type Key = (usize, [usize; 7]);

fn key(s: &ConvShape, n: usize) -> Key {
    (n, [s.c_in, s.c_out, s.kernel, s.stride, s.pad, s.h, s.w])
}

/// The algorithm kept for `key`, else `pick()`'s, kept.
fn cached<A: Copy>(map: &mut HashMap<Key, A>, key: Key, pick: impl FnOnce() -> Result<A>) -> Result<A> {
    if let Some(&a) = map.get(&key) {
        return Ok(a);
    }
    let a = pick()?;
    map.insert(key, a);
    Ok(a)
}

/// One convolution's descriptors: input, weights, output and the convolution itself.
struct Descriptors {
    x: TensorDescriptor<f32>,
    w: FilterDescriptor<f32>,
    y: TensorDescriptor<f32>,
    conv: ConvDescriptor<f32>,
}

fn dims(v: [usize; 4]) -> [i32; 4] {
    v.map(|d| d as i32)
}

impl Gpu {
    /// The cuDNN handle on this GPU's stream, made at first use.
    fn cudnn(&self) -> Result<&Arc<Cudnn>> {
        if let Some(h) = self.cudnn.get() {
            return Ok(h);
        }
        if let Some(why) = cudnn_missing() {
            anyhow::bail!("{why}");
        }
        let handle = Cudnn::new(self.stream.clone()).context("could not start cuDNN")?;
        Ok(self.cudnn.get_or_init(|| handle))
    }

    fn descriptors(&self, s: &ConvShape, n: usize) -> Result<Descriptors> {
        let h = self.cudnn()?;
        let nhwc = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
        // Dimensions go in NCHW order whatever the layout.
        let x = h.create_4d_tensor(nhwc, dims([n, s.c_in, s.h, s.w]))?;
        let y = h.create_4d_tensor(nhwc, dims([n, s.c_out, s.out_h(), s.out_w()]))?;
        let w = h.create_4d_filter(nhwc, dims([s.c_out, s.c_in, s.kernel, s.kernel]))?;
        let (p, st) = (s.pad as i32, s.stride as i32);
        let mut conv =
            h.create_conv2d([p, p], [st, st], [1, 1], sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION)?;
        // Default math lets cuDNN use TF32 tensor cores for f32 data; FMA math forbids them.
        let math = match self.tf32() {
            true => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
            false => sys::cudnnMathType_t::CUDNN_FMA_MATH,
        };
        conv.set_math_type(math)?;
        Ok(Descriptors { x, w, y, conv })
    }

    fn algorithms(&self) -> std::sync::MutexGuard<'_, Algorithms> {
        self.algorithms.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Room of `bytes` for cuDNN (None for none).
    fn workspace(&self, bytes: usize) -> Result<Option<CudaSlice<u8>>> {
        Ok(if bytes == 0 { None } else { Some(self.zeros::<u8>(bytes)?) })
    }

    /// `conv::forward`: `y = conv(x, w)` for `n` images, overwriting `y`.
    pub fn conv_forward(&self, s: &ConvShape, n: usize, x: &Buf, w: &Buf, y: &mut Buf) -> Result<()> {
        assert!(x.len() >= n * s.in_len() && w.len() >= s.weight_len() && y.len() >= n * s.out_len());
        let d = self.descriptors(s, n)?;
        let op = ConvForward { conv: &d.conv, x: &d.x, w: &d.w, y: &d.y };
        let algo = cached(&mut self.algorithms().forward, key(s, n), || Ok(op.pick_algorithm()?))?;
        let mut room = self.workspace(op.get_workspace_size(algo)?)?;
        // SAFETY: the buffers are f32 and at least as long as the descriptors say (asserted).
        unsafe { op.launch(algo, room.as_mut(), (1.0, 0.0), x, w, y) }?;
        Ok(())
    }

    /// The input gradient of `conv::backward`: `dx = convᵀ(dy, w)`, overwriting `dx`, or
    /// added to it with `accumulate` (a block's first unit, whose input also feeds the shortcut).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_backward_data(
        &self,
        s: &ConvShape,
        n: usize,
        dy: &Buf,
        w: &Buf,
        dx: &mut Buf,
        accumulate: bool,
    ) -> Result<()> {
        assert!(dx.len() >= n * s.in_len() && w.len() >= s.weight_len() && dy.len() >= n * s.out_len());
        let d = self.descriptors(s, n)?;
        let op = ConvBackwardData { conv: &d.conv, dx: &d.x, w: &d.w, dy: &d.y };
        let algo = cached(&mut self.algorithms().data, key(s, n), || Ok(op.pick_algorithm()?))?;
        let mut room = self.workspace(op.get_workspace_size(algo)?)?;
        // SAFETY: as in `conv_forward`.
        let beta = if accumulate { 1.0 } else { 0.0 };
        unsafe { op.launch(algo, room.as_mut(), (1.0, beta), dx, w, dy) }?;
        Ok(())
    }

    /// The weight gradient of `conv::backward`: `dw = Σ dyᵀ·col(x)`, overwriting `dw`.
    pub fn conv_backward_weights(&self, s: &ConvShape, n: usize, x: &Buf, dy: &Buf, dw: &mut Buf) -> Result<()> {
        assert!(x.len() >= n * s.in_len() && dw.len() >= s.weight_len() && dy.len() >= n * s.out_len());
        let d = self.descriptors(s, n)?;
        let op = ConvBackwardFilter { conv: &d.conv, x: &d.x, dw: &d.w, dy: &d.y };
        let algo = cached(&mut self.algorithms().filter, key(s, n), || Ok(op.pick_algorithm()?))?;
        let mut room = self.workspace(op.get_workspace_size(algo)?)?;
        // SAFETY: as in `conv_forward`.
        unsafe { op.launch(algo, room.as_mut(), (1.0, 0.0), x, dw, dy) }?;
        Ok(())
    }
}
