//! Convolutions on the GPU through cuDNN: NHWC activations and OHWI weights, which is
//! cuDNN's NHWC filter layout (k × r × s × c), so the CPU engine's tensors go to the GPU
//! unchanged. f32 with cuDNN's FMA math, not TF32, so results match the CPU engine to
//! float rounding, unless TF32 is allowed (`--precision tf32`).
//!
//! Each convolution, at each batch size, gets a plan at its first call: its
//! descriptors, made once, and for each pass the algorithm chosen for it, kept. Only
//! deterministic algorithms are chosen: those that add with atomics (some backward
//! passes) would make two runs of the same seed differ in the last bits, and a resumed
//! run differ from an uninterrupted one. The choice is cuDNN's heuristics' first
//! deterministic algorithm, or with `RESNET_CUDNN_BENCHMARK=1` the fastest deterministic
//! one as cuDNN measures them on this GPU (PyTorch's `cudnn.benchmark`; the first step
//! then takes seconds longer). One workspace, grown to the largest any pass needs, serves
//! every call.
//!
//! cuDNN is reached through `cudarc`'s raw bindings (`cudnn.rs`), not its
//! safe layer, which picks the heuristics' first algorithm, deterministic or not.

use super::Gpu;
use super::cudnn::{Convolution, Filter, Handle, Tensor, cudnn_error};
use crate::engine::conv::ConvShape;
use anyhow::{Context, Result, anyhow};
use cudarc::cudnn::{result, sys};
use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr};
use std::collections::HashMap;
use std::ffi::c_void;

type Buf = CudaSlice<f32>;

/// The most workspace a pass may take: algorithms that need more are passed over.
const WORKSPACE_LIMIT: usize = 2 << 30;

/// The environment variable that asks for algorithms chosen by measurement.
pub const BENCHMARK_VAR: &str = "RESNET_CUDNN_BENCHMARK";

pub use super::cudnn::cudnn_missing;

/// One pass's chosen algorithm and the workspace it needs.
#[derive(Clone, Copy)]
struct Choice<A> {
    algo: A,
    bytes: usize,
}

/// One convolution at one batch size: its descriptors and each pass's algorithm, chosen
/// at that pass's first call.
pub(super) struct Plan {
    x: Tensor,
    y: Tensor,
    w: Filter,
    conv: Convolution,
    forward: Option<Choice<sys::cudnnConvolutionFwdAlgo_t>>,
    data: Option<Choice<sys::cudnnConvolutionBwdDataAlgo_t>>,
    filter: Option<Choice<sys::cudnnConvolutionBwdFilterAlgo_t>>,
}

/// The plans made so far, by batch, shape and the operands' type.
pub(super) type Plans = HashMap<Key, Plan>;

type Key = (usize, [usize; 7], u32);

fn key(s: &ConvShape, n: usize, dtype: sys::cudnnDataType_t) -> Key {
    (n, [s.c_in, s.c_out, s.kernel, s.stride, s.pad, s.h, s.w], dtype as u32)
}

const F32: sys::cudnnDataType_t = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;

/// A convolution's operand type on the GPU: f32, or bf16 held as its bits in a `u16`.
trait Element: DeviceRepr {
    const TYPE: sys::cudnnDataType_t;
}
impl Element for f32 {
    const TYPE: sys::cudnnDataType_t = F32;
}
impl Element for u16 {
    const TYPE: sys::cudnnDataType_t = sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16;
}

/// What cuDNN says of one algorithm for one pass (its `*AlgoPerf_t` records, which
/// differ only in the algorithm's type).
trait Perf: Copy {
    type Algo: Copy + std::fmt::Debug;
    fn algo(&self) -> Self::Algo;
    fn usable(&self) -> bool;
    fn bytes(&self) -> usize;
}

macro_rules! perf {
    ($record:ty, $algo:ty) => {
        impl Perf for $record {
            type Algo = $algo;
            fn algo(&self) -> $algo {
                self.algo
            }
            fn usable(&self) -> bool {
                self.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                    && self.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC
                    && self.memory <= WORKSPACE_LIMIT
            }
            fn bytes(&self) -> usize {
                self.memory
            }
        }
    };
}
perf!(sys::cudnnConvolutionFwdAlgoPerf_t, sys::cudnnConvolutionFwdAlgo_t);
perf!(sys::cudnnConvolutionBwdDataAlgoPerf_t, sys::cudnnConvolutionBwdDataAlgo_t);
perf!(sys::cudnnConvolutionBwdFilterAlgoPerf_t, sys::cudnnConvolutionBwdFilterAlgo_t);

/// The first usable algorithm in the list `ask` fills, best first: with `timed`, as cuDNN
/// times them on the GPU, else as its heuristics expect them. Timing that fails (it needs
/// memory for every algorithm it tries) falls back on the heuristics. No pass lacks a
/// deterministic algorithm, so none usable is an error.
fn choose<P: Perf>(
    pass: &'static str,
    timed: bool,
    ask: impl Fn(bool, &mut [P], &mut i32) -> sys::cudnnStatus_t,
) -> Result<Choice<P::Algo>> {
    // SAFETY: the records are plain C structs, for cuDNN to fill.
    let mut records = [unsafe { std::mem::zeroed::<P>() }; 16];
    let mut count = 0;
    let first = |records: &[P], count: i32| {
        let listed = &records[..(count.max(0) as usize).min(records.len())];
        listed.iter().find(|p| p.usable()).map(|p| Choice { algo: p.algo(), bytes: p.bytes() })
    };
    if timed
        && ask(true, &mut records, &mut count) == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
        && let Some(choice) = first(&records, count)
    {
        return Ok(choice);
    }
    ask(false, &mut records, &mut count).result().map_err(cudnn_error(pass))?;
    first(&records, count).ok_or_else(|| {
        anyhow!("cuDNN offers no deterministic {pass} algorithm within {WORKSPACE_LIMIT} bytes of workspace")
    })
}

impl Gpu {
    /// The cuDNN handle, made at first use.
    fn cudnn(&self) -> Result<&Handle> {
        if let Some(h) = self.cudnn.get() {
            return Ok(h);
        }
        if let Some(why) = cudnn_missing() {
            anyhow::bail!("{why}");
        }
        let handle = Handle::new(&self.stream).context("could not start cuDNN")?;
        Ok(self.cudnn.get_or_init(|| handle))
    }

    fn plans(&self) -> std::sync::MutexGuard<'_, Plans> {
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the plan of `s` at batch `n` in `T`, made if this is its first call.
    fn with_plan<T: Element, R>(
        &self,
        s: &ConvShape,
        n: usize,
        f: impl FnOnce(&Handle, &mut Plan) -> Result<R>,
    ) -> Result<R> {
        let handle = self.cudnn()?;
        let mut plans = self.plans();
        let plan = match plans.entry(key(s, n, T::TYPE)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                // Default math lets cuDNN use tensor cores: TF32 for f32 data, bf16's own
                // for bf16; FMA math forbids them.
                let math = match T::TYPE != F32 || self.tf32() {
                    true => sys::cudnnMathType_t::CUDNN_DEFAULT_MATH,
                    false => sys::cudnnMathType_t::CUDNN_FMA_MATH,
                };
                e.insert(Plan {
                    x: Tensor::nhwc(n, s.c_in, s.h, s.w, T::TYPE)?,
                    y: Tensor::nhwc(n, s.c_out, s.out_h(), s.out_w(), T::TYPE)?,
                    w: Filter::ohwi(s, T::TYPE)?,
                    conv: Convolution::of(s, math)?,
                    forward: None,
                    data: None,
                    filter: None,
                })
            }
        };
        f(handle, plan)
    }

    /// The workspace, grown to at least `bytes` (none until a pass needs one).
    fn workspace(&self, bytes: usize) -> Result<std::sync::MutexGuard<'_, Option<CudaSlice<u8>>>> {
        let mut room = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        if bytes > room.as_ref().map_or(0, |r| r.len()) {
            *room = None; // freed before the larger one is taken
            // SAFETY: a workspace is cuDNN's scratch, written before it is read.
            *room = Some(unsafe { self.stream.alloc::<u8>(bytes) }?);
        }
        Ok(room)
    }

    /// `y = conv(x, w)` in `T`, overwriting `y`.
    fn forward_in<T: Element>(
        &self,
        s: &ConvShape,
        n: usize,
        x: &CudaSlice<T>,
        w: &CudaSlice<T>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        assert!(x.len() >= n * s.in_len() && w.len() >= s.weight_len() && y.len() >= n * s.out_len());
        let benchmark = self.cudnn_benchmark.load(std::sync::atomic::Ordering::Relaxed);
        self.with_plan::<T, _>(s, n, |h, p| {
            let choice = match p.forward {
                Some(c) => c,
                None => *p.forward.insert(choose("forward", benchmark, |timed, r, count| {
                    let ask = if timed {
                        sys::cudnnFindConvolutionForwardAlgorithm
                    } else {
                        sys::cudnnGetConvolutionForwardAlgorithm_v7
                    };
                    // SAFETY: live handle and descriptors; `r` holds `r.len()` records.
                    unsafe { ask(h.raw, p.x.0, p.w.0, p.conv.0, p.y.0, r.len() as i32, count, r.as_mut_ptr()) }
                })?),
            };
            let mut room = self.workspace(choice.bytes)?;
            let (room_ptr, _room) = room.as_mut().map(|r| r.device_ptr_mut(&self.stream)).unzip();
            let (xp, _x) = x.device_ptr(&self.stream);
            let (wp, _w) = w.device_ptr(&self.stream);
            let (yp, _y) = y.device_ptr_mut(&self.stream);
            let (alpha, beta) = (1.0f32, 0.0f32);
            // SAFETY: the buffers hold the descriptors' type and are at least as long as
            // they say (asserted); the workspace holds `choice.bytes`.
            unsafe {
                result::convolution_forward(
                    h.raw,
                    (&alpha as *const f32).cast(),
                    p.x.0,
                    xp as *const c_void,
                    p.w.0,
                    wp as *const c_void,
                    p.conv.0,
                    choice.algo,
                    room_ptr.map_or(std::ptr::null_mut(), |r| r as *mut c_void),
                    choice.bytes,
                    (&beta as *const f32).cast(),
                    p.y.0,
                    yp as *mut c_void,
                )
            }
            .map_err(cudnn_error("forward convolution"))
        })
    }

    /// `dx = convᵀ(dy, w)` in `T`, overwriting `dx`, or added to it with `accumulate`.
    fn data_in<T: Element>(
        &self,
        s: &ConvShape,
        n: usize,
        dy: &CudaSlice<T>,
        w: &CudaSlice<T>,
        dx: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<()> {
        assert!(dx.len() >= n * s.in_len() && w.len() >= s.weight_len() && dy.len() >= n * s.out_len());
        let benchmark = self.cudnn_benchmark.load(std::sync::atomic::Ordering::Relaxed);
        self.with_plan::<T, _>(s, n, |h, p| {
            let choice = match p.data {
                Some(c) => c,
                None => *p.data.insert(choose("backward-data", benchmark, |timed, r, count| {
                    let ask = if timed {
                        sys::cudnnFindConvolutionBackwardDataAlgorithm
                    } else {
                        sys::cudnnGetConvolutionBackwardDataAlgorithm_v7
                    };
                    // SAFETY: as in `conv_forward`.
                    unsafe { ask(h.raw, p.w.0, p.y.0, p.conv.0, p.x.0, r.len() as i32, count, r.as_mut_ptr()) }
                })?),
            };
            let mut room = self.workspace(choice.bytes)?;
            let (room_ptr, _room) = room.as_mut().map(|r| r.device_ptr_mut(&self.stream)).unzip();
            let (dyp, _dy) = dy.device_ptr(&self.stream);
            let (wp, _w) = w.device_ptr(&self.stream);
            let (dxp, _dx) = dx.device_ptr_mut(&self.stream);
            let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
            // SAFETY: as in `conv_forward`.
            unsafe {
                result::convolution_backward_data(
                    h.raw,
                    (&alpha as *const f32).cast(),
                    p.w.0,
                    wp as *const c_void,
                    p.y.0,
                    dyp as *const c_void,
                    p.conv.0,
                    choice.algo,
                    room_ptr.map_or(std::ptr::null_mut(), |r| r as *mut c_void),
                    choice.bytes,
                    (&beta as *const f32).cast(),
                    p.x.0,
                    dxp as *mut c_void,
                )
            }
            .map_err(cudnn_error("backward-data convolution"))
        })
    }

    /// `dw = Σ dyᵀ·col(x)` in `T`, overwriting `dw`, or added to it with `accumulate`.
    fn filter_in<T: Element>(
        &self,
        s: &ConvShape,
        n: usize,
        x: &CudaSlice<T>,
        dy: &CudaSlice<T>,
        dw: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<()> {
        assert!(x.len() >= n * s.in_len() && dw.len() >= s.weight_len() && dy.len() >= n * s.out_len());
        let benchmark = self.cudnn_benchmark.load(std::sync::atomic::Ordering::Relaxed);
        self.with_plan::<T, _>(s, n, |h, p| {
            let choice = match p.filter {
                Some(c) => c,
                None => *p.filter.insert(choose("backward-filter", benchmark, |timed, r, count| {
                    let ask = if timed {
                        sys::cudnnFindConvolutionBackwardFilterAlgorithm
                    } else {
                        sys::cudnnGetConvolutionBackwardFilterAlgorithm_v7
                    };
                    // SAFETY: as in `conv_forward`.
                    unsafe { ask(h.raw, p.x.0, p.y.0, p.conv.0, p.w.0, r.len() as i32, count, r.as_mut_ptr()) }
                })?),
            };
            let mut room = self.workspace(choice.bytes)?;
            let (room_ptr, _room) = room.as_mut().map(|r| r.device_ptr_mut(&self.stream)).unzip();
            let (xp, _x) = x.device_ptr(&self.stream);
            let (dyp, _dy) = dy.device_ptr(&self.stream);
            let (dwp, _dw) = dw.device_ptr_mut(&self.stream);
            let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
            // SAFETY: as in `conv_forward`.
            unsafe {
                result::convolution_backward_filter(
                    h.raw,
                    (&alpha as *const f32).cast(),
                    p.x.0,
                    xp as *const c_void,
                    p.y.0,
                    dyp as *const c_void,
                    p.conv.0,
                    choice.algo,
                    room_ptr.map_or(std::ptr::null_mut(), |r| r as *mut c_void),
                    choice.bytes,
                    (&beta as *const f32).cast(),
                    p.w.0,
                    dwp as *mut c_void,
                )
            }
            .map_err(cudnn_error("backward-filter convolution"))
        })
    }

    /// `conv::forward`: `y = conv(x, w)` for `n` images, overwriting `y`. In bf16 (see
    /// [`Gpu::set_precision`]) the operands are rounded to bf16 first, and cuDNN's output,
    /// bf16 too, is widened into `y`.
    pub fn conv_forward(&self, s: &ConvShape, n: usize, x: &Buf, w: &Buf, y: &mut Buf) -> Result<()> {
        if !self.bf16() {
            return self.forward_in(s, n, x, w, y);
        }
        let (x, w) = (self.to_bf16(x, n * s.in_len())?, self.to_bf16(w, s.weight_len())?);
        // SAFETY: cuDNN writes every value (beta 0) before it is read.
        let mut out = unsafe { self.stream.alloc::<u16>(n * s.out_len()) }?;
        self.forward_in(s, n, &x, &w, &mut out)?;
        self.from_bf16(&out, y, false)
    }

    /// The input gradient of `conv::backward`: `dx = convᵀ(dy, w)`, overwriting `dx`, or
    /// added to it with `accumulate` (a block's first unit, whose input also feeds the
    /// shortcut). In bf16 as [`Gpu::conv_forward`], the sum with `dx` in f32.
    pub fn conv_backward_data(
        &self,
        s: &ConvShape,
        n: usize,
        dy: &Buf,
        w: &Buf,
        dx: &mut Buf,
        accumulate: bool,
    ) -> Result<()> {
        if !self.bf16() {
            return self.data_in(s, n, dy, w, dx, accumulate);
        }
        let (dy, w) = (self.to_bf16(dy, n * s.out_len())?, self.to_bf16(w, s.weight_len())?);
        // SAFETY: as in `conv_forward`.
        let mut out = unsafe { self.stream.alloc::<u16>(n * s.in_len()) }?;
        self.data_in(s, n, &dy, &w, &mut out, false)?;
        self.from_bf16(&out, dx, accumulate)
    }

    /// The weight gradient of `conv::backward`: `dw = Σ dyᵀ·col(x)`, overwriting `dw`, or
    /// added to it with `accumulate` (micro-batches after the first). In bf16 as
    /// [`Gpu::conv_forward`], the sum with `dw` in f32.
    pub fn conv_backward_weights(
        &self,
        s: &ConvShape,
        n: usize,
        x: &Buf,
        dy: &Buf,
        dw: &mut Buf,
        accumulate: bool,
    ) -> Result<()> {
        if !self.bf16() {
            return self.filter_in(s, n, x, dy, dw, accumulate);
        }
        let (x, dy) = (self.to_bf16(x, n * s.in_len())?, self.to_bf16(dy, n * s.out_len())?);
        // SAFETY: as in `conv_forward`.
        let mut out = unsafe { self.stream.alloc::<u16>(s.weight_len()) }?;
        self.filter_in(s, n, &x, &dy, &mut out, false)?;
        self.from_bf16(&out, dw, accumulate)
    }
}
