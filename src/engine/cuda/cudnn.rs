//! cuDNN's handle and descriptors, through `cudarc`'s raw bindings: its safe layer keeps
//! them private, and choosing algorithms among the deterministic ones
//! ([`conv`](super::conv)) needs them. Each owns its cuDNN object and destroys it when
//! dropped.

use crate::engine::conv::ConvShape;
use anyhow::{Result, anyhow};
use cudarc::cudnn::{result, sys};
use cudarc::driver::CudaStream;
use std::sync::Arc;

/// Why cuDNN cannot be used here, if it cannot (its library, `libcudnn.so.9`, comes with
/// PyTorch's `nvidia-cudnn` package).
pub fn cudnn_missing() -> Option<String> {
    // SAFETY: only tries to open the library by its usual names.
    let present = unsafe { sys::is_culib_present() };
    (!present).then(|| "cuDNN (libcudnn.so) is not on the library path (LD_LIBRARY_PATH)".to_string())
}

pub(super) fn cudnn_error(what: &'static str) -> impl Fn(result::CudnnError) -> anyhow::Error {
    move |e| anyhow!("cuDNN {what}: {:?}", e.0)
}

/// A cuDNN handle whose work goes to the GPU's stream. It holds the stream (and so its
/// context) until the handle is destroyed.
pub(super) struct Handle {
    pub(super) raw: sys::cudnnHandle_t,
    _stream: Arc<CudaStream>,
}

impl Handle {
    pub(super) fn new(stream: &Arc<CudaStream>) -> Result<Handle> {
        stream.context().bind_to_thread()?;
        let raw = result::create_handle().map_err(cudnn_error("could not start"))?;
        let handle = Handle { raw, _stream: stream.clone() };
        // SAFETY: the handle was just made; the stream lives as long as it.
        unsafe { result::set_stream(handle.raw, stream.cu_stream() as sys::cudaStream_t) }
            .map_err(cudnn_error("set stream"))?;
        Ok(handle)
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        // SAFETY: made by `create_handle` and destroyed only here.
        unsafe { result::destroy_handle(self.raw) }.ok();
    }
}

/// A 4-d tensor descriptor in NHWC.
pub(super) struct Tensor(pub(super) sys::cudnnTensorDescriptor_t);

/// A 4-d filter descriptor in NHWC (OHWI).
pub(super) struct Filter(pub(super) sys::cudnnFilterDescriptor_t);

/// A 2-d cross-correlation, as a CPU convolution is.
pub(super) struct Convolution(pub(super) sys::cudnnConvolutionDescriptor_t);

const NHWC: sys::cudnnTensorFormat_t = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC;
/// The convolutions' arithmetic: f32 sums, whatever the operands' type.
const F32: sys::cudnnDataType_t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;

/// Dimensions go in NCHW order whatever the layout.
fn dims(v: [usize; 4]) -> [i32; 4] {
    v.map(|d| d as i32)
}

impl Tensor {
    pub(super) fn nhwc(n: usize, c: usize, h: usize, w: usize, dtype: sys::cudnnDataType_t) -> Result<Tensor> {
        let t = Tensor(result::create_tensor_descriptor().map_err(cudnn_error("tensor descriptor"))?);
        // SAFETY: the descriptor was just made.
        unsafe { result::set_tensor4d_descriptor(t.0, NHWC, dtype, dims([n, c, h, w])) }
            .map_err(cudnn_error("tensor descriptor"))?;
        Ok(t)
    }
}

impl Filter {
    pub(super) fn ohwi(s: &ConvShape, dtype: sys::cudnnDataType_t) -> Result<Filter> {
        let f = Filter(result::create_filter_descriptor().map_err(cudnn_error("filter descriptor"))?);
        // SAFETY: the descriptor was just made.
        unsafe { result::set_filter4d_descriptor(f.0, dtype, NHWC, dims([s.c_out, s.c_in, s.kernel, s.kernel])) }
            .map_err(cudnn_error("filter descriptor"))?;
        Ok(f)
    }
}

impl Convolution {
    pub(super) fn of(s: &ConvShape, math: sys::cudnnMathType_t) -> Result<Convolution> {
        let c = Convolution(result::create_convolution_descriptor().map_err(cudnn_error("convolution descriptor"))?);
        let (p, st) = (s.pad as i32, s.stride as i32);
        let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
        // SAFETY: the descriptor was just made.
        unsafe {
            result::set_convolution2d_descriptor(c.0, p, p, st, st, 1, 1, mode, F32)
                .map_err(cudnn_error("convolution descriptor"))?;
            result::set_convolution_math_type(c.0, math).map_err(cudnn_error("math type"))?;
        }
        Ok(c)
    }
}

// SAFETY (the three drops): each descriptor was made by its `create_*` and is destroyed
// only here.
impl Drop for Tensor {
    fn drop(&mut self) {
        unsafe { result::destroy_tensor_descriptor(self.0) }.ok();
    }
}
impl Drop for Filter {
    fn drop(&mut self) {
        unsafe { result::destroy_filter_descriptor(self.0) }.ok();
    }
}
impl Drop for Convolution {
    fn drop(&mut self) {
        unsafe { result::destroy_convolution_descriptor(self.0) }.ok();
    }
}
