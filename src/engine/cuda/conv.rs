//! Convolutions on the GPU through cuDNN: NHWC activations and OHWI weights, which is
//! cuDNN's NHWC filter layout (k × r × s × c), so the CPU engine's tensors go to the GPU
//! unchanged. f32 with cuDNN's FMA math, not TF32, so results match the CPU engine to
//! float rounding, unless TF32 is allowed (`--precision tf32`); or in bf16 (`--precision
//! bf16`), through copies of the operands rounded to bf16, cuDNN's bf16 result widened.
//!
//! Each convolution, at each batch size, gets a plan at its first call: its
//! descriptors, made once, and for each pass the algorithm chosen for it, kept. Only
//! deterministic algorithms are chosen: those that add with atomics (some backward
//! passes) would make two runs of the same seed differ in the last bits, and a resumed
//! run differ from an uninterrupted one. The choice is cuDNN's heuristics' first
//! deterministic algorithm, or with `RESNET_CUDNN_BENCHMARK=1` the fastest deterministic
//! one as cuDNN measures them on this GPU (PyTorch's `cudnn.benchmark`; the first step
//! then takes seconds longer, and timing noise may choose differently in another process,
//! so bit-identical reruns need the heuristics). Each algorithm runs with the math type it
//! was chosen with, never on tensor cores in f32 without TF32. One workspace, grown to
//! the largest any pass needs, serves every call.
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

/// The three passes of a convolution.
#[derive(Clone, Copy, Debug)]
enum Pass {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx = convᵀ(dy, w)`.
    Data,
    /// `dw = Σ dyᵀ·col(x)`.
    Filter,
}

impl Pass {
    /// The lengths of the pass's two operands and its result: (x, w) into y, (dy, w) into
    /// dx, (x, dy) into dw.
    fn lengths(self, s: &ConvShape, n: usize) -> (usize, usize, usize) {
        let (x, w, y) = (n * s.in_len(), s.weight_len(), n * s.out_len());
        match self {
            Pass::Forward => (x, w, y),
            Pass::Data => (y, w, x),
            Pass::Filter => (x, y, w),
        }
    }
}

/// A pass's algorithm, of cuDNN's type for that pass.
#[derive(Clone, Copy)]
enum Algo {
    Forward(sys::cudnnConvolutionFwdAlgo_t),
    Data(sys::cudnnConvolutionBwdDataAlgo_t),
    Filter(sys::cudnnConvolutionBwdFilterAlgo_t),
}

/// One pass's chosen algorithm, the workspace it needs and the math type to run it with.
#[derive(Clone, Copy)]
struct Choice<A> {
    algo: A,
    bytes: usize,
    math: sys::cudnnMathType_t,
}

impl<A> Choice<A> {
    /// The same choice, its algorithm wrapped by `f`.
    fn with<B>(self, f: impl FnOnce(A) -> B) -> Choice<B> {
        Choice { algo: f(self.algo), bytes: self.bytes, math: self.math }
    }
}

/// One convolution at one batch size: its descriptors and each pass's algorithm
/// (indexed by [`Pass`]), chosen at that pass's first call.
pub(super) struct Plan {
    x: Tensor,
    y: Tensor,
    w: Filter,
    conv: Convolution,
    /// Whether the convolution must not use tensor cores (f32 without TF32).
    fma: bool,
    chosen: [Option<Choice<Algo>>; 3],
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

/// What cuDNN says of one algorithm for one pass: a `*AlgoPerf_t` record's fields as
/// plain integers. cudarc's record types hold Rust enums, and a newer cuDNN may write a
/// status or math type those lack, a value no Rust enum may hold; so the records are read
/// field by field from the bytes cuDNN wrote.
#[derive(Clone, Copy)]
struct Record {
    algo: u32,
    status: u32,
    memory: usize,
    determinism: u32,
    math: u32,
}

/// A pass's `*AlgoPerf_t` record type (they differ only in the algorithm's type).
trait Perf: Sized {
    type Algo: Copy;
    /// The algorithm numbered `n`, if it is one of this pass's.
    fn algo(n: u32) -> Option<Self::Algo>;
    /// The fields of the record at `p`.
    ///
    /// # Safety
    /// `p` points to the bytes of a record cuDNN wrote.
    unsafe fn read(p: *const Self) -> Record;
}

macro_rules! perf {
    ($record:ty, $algo:ty, $count:expr) => {
        impl Perf for $record {
            type Algo = $algo;
            fn algo(n: u32) -> Option<$algo> {
                // SAFETY: the algorithm enum is `repr(u32)`, numbered 0 to its count.
                (n < $count as u32).then(|| unsafe { std::mem::transmute::<u32, $algo>(n) })
            }
            unsafe fn read(p: *const Self) -> Record {
                let bytes = p.cast::<u8>();
                // SAFETY: each offset is that of a field of the record at `p`, of the type read.
                let at = |offset: usize| unsafe { bytes.add(offset).cast::<u32>().read_unaligned() };
                Record {
                    algo: at(std::mem::offset_of!($record, algo)),
                    status: at(std::mem::offset_of!($record, status)),
                    memory: unsafe {
                        bytes.add(std::mem::offset_of!($record, memory)).cast::<usize>().read_unaligned()
                    },
                    determinism: at(std::mem::offset_of!($record, determinism)),
                    math: at(std::mem::offset_of!($record, mathType)),
                }
            }
        }
    };
}
perf!(
    sys::cudnnConvolutionFwdAlgoPerf_t,
    sys::cudnnConvolutionFwdAlgo_t,
    sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT
);
perf!(
    sys::cudnnConvolutionBwdDataAlgoPerf_t,
    sys::cudnnConvolutionBwdDataAlgo_t,
    sys::cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT
);
perf!(
    sys::cudnnConvolutionBwdFilterAlgoPerf_t,
    sys::cudnnConvolutionBwdFilterAlgo_t,
    sys::cudnnConvolutionBwdFilterAlgo_t::CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT
);

/// cuDNN's math type numbered `n`.
fn math_type(n: u32) -> Option<sys::cudnnMathType_t> {
    use sys::cudnnMathType_t::*;
    [CUDNN_DEFAULT_MATH, CUDNN_TENSOR_OP_MATH, CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION, CUDNN_FMA_MATH]
        .into_iter()
        .find(|&m| m as u32 == n)
}

/// The first usable algorithm in the list `ask` fills, best first: with `timed`, as cuDNN
/// times them on the GPU, else as its heuristics expect them. Usable: it ran (or would
/// run), it is deterministic, its workspace is within [`WORKSPACE_LIMIT`], and, where
/// `fma` forbids tensor cores, its math type does not use them. Each comes with the math
/// type its workspace and time were measured with (FMA where `fma`), which the launch
/// sets. Timing that fails (it needs memory for every algorithm it tries) falls back on
/// the heuristics. No pass lacks a deterministic algorithm, so none usable is an error.
fn choose<P: Perf>(
    pass: &'static str,
    (timed, fma): (bool, bool),
    ask: impl Fn(bool, *mut P, i32, &mut i32) -> sys::cudnnStatus_t,
) -> Result<Choice<P::Algo>> {
    const LISTED: usize = 16;
    // Room for the records, as plain words (aligned for a record's `usize`).
    let mut room = vec![0u64; LISTED * std::mem::size_of::<P>().div_ceil(8)];
    let records = room.as_mut_ptr().cast::<P>();
    let first = |count: i32| {
        (0..(count.max(0) as usize).min(LISTED)).find_map(|i| {
            // SAFETY: cuDNN wrote `count` records from `records`.
            let r = unsafe { P::read(records.add(i)) };
            let tensor_ops = [1, 2].contains(&r.math);
            let usable = r.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS as u32
                && r.determinism == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC as u32
                && r.memory <= WORKSPACE_LIMIT
                && !(fma && tensor_ops);
            let math = if fma { Some(sys::cudnnMathType_t::CUDNN_FMA_MATH) } else { math_type(r.math) };
            let (algo, math) = (P::algo(r.algo)?, math?);
            usable.then_some(Choice { algo, bytes: r.memory, math })
        })
    };
    let mut count = 0;
    if timed
        && ask(true, records, LISTED as i32, &mut count) == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
        && let Some(choice) = first(count)
    {
        return Ok(choice);
    }
    ask(false, records, LISTED as i32, &mut count).result().map_err(cudnn_error(pass))?;
    first(count).ok_or_else(|| {
        anyhow!("cuDNN offers no deterministic {pass} algorithm within {WORKSPACE_LIMIT} bytes of workspace")
    })
}

impl Plan {
    /// The algorithm of `pass`, chosen at its first call (see [`choose`]) and kept.
    fn choice(&mut self, h: &Handle, pass: Pass, timed: bool) -> Result<Choice<Algo>> {
        if let Some(c) = self.chosen[pass as usize] {
            return Ok(c);
        }
        let (x, y, w, conv, fma) = (self.x.0, self.y.0, self.w.0, self.conv.0, self.fma);
        // A pass's timing and heuristics take the same arguments: `ask` picks one of the pair
        // and passes the pass's descriptors, in its order, then the records' room.
        macro_rules! ask {
            ($find:path, $heuristics:path, $($descriptor:expr),+) => {
                |timed: bool, r, len, count: &mut i32| {
                    let ask = if timed { $find } else { $heuristics };
                    // SAFETY: live handle and descriptors; `r` has room for `len` records.
                    unsafe { ask(h.raw, $($descriptor),+, len, count, r) }
                }
            };
        }
        use sys::*;
        let c = match pass {
            Pass::Forward => choose(
                "forward",
                (timed, fma),
                ask!(cudnnFindConvolutionForwardAlgorithm, cudnnGetConvolutionForwardAlgorithm_v7, x, w, conv, y),
            )?
            .with(Algo::Forward),
            Pass::Data => choose(
                "backward-data",
                (timed, fma),
                ask!(
                    cudnnFindConvolutionBackwardDataAlgorithm,
                    cudnnGetConvolutionBackwardDataAlgorithm_v7,
                    w,
                    y,
                    conv,
                    x
                ),
            )?
            .with(Algo::Data),
            Pass::Filter => choose(
                "backward-filter",
                (timed, fma),
                ask!(
                    cudnnFindConvolutionBackwardFilterAlgorithm,
                    cudnnGetConvolutionBackwardFilterAlgorithm_v7,
                    x,
                    y,
                    conv,
                    w
                ),
            )?
            .with(Algo::Filter),
        };
        self.chosen[pass as usize] = Some(c);
        Ok(c)
    }

    /// Runs the pass `choice` is for: `out = op(a, b) + beta·out` on device addresses
    /// (see [`Gpu::pass_in`] for what a, b and out are).
    ///
    /// # Safety
    /// The addresses hold the descriptors' type and shapes; `room` holds `choice.bytes`.
    unsafe fn launch(
        &self,
        h: &Handle,
        choice: Choice<Algo>,
        (a, b, out): (*const c_void, *const c_void, *mut c_void),
        room: *mut c_void,
        beta: f32,
    ) -> Result<()> {
        let one = 1.0f32;
        // cuDNN's scaling factors are f32 for f32 and bf16 data alike.
        let (alpha, beta) = ((&one as *const f32).cast(), (&beta as *const f32).cast());
        let (x, y, w, conv, bytes) = (self.x.0, self.y.0, self.w.0, self.conv.0, choice.bytes);
        // SAFETY: the caller's promise; the descriptors are live.
        unsafe {
            // The math type the algorithm was chosen with: the passes share the descriptor.
            result::set_convolution_math_type(conv, choice.math).map_err(cudnn_error("math type"))?;
            match choice.algo {
                Algo::Forward(algo) => {
                    result::convolution_forward(h.raw, alpha, x, a, w, b, conv, algo, room, bytes, beta, y, out)
                }
                Algo::Data(algo) => {
                    result::convolution_backward_data(h.raw, alpha, w, b, y, a, conv, algo, room, bytes, beta, x, out)
                }
                Algo::Filter(algo) => {
                    result::convolution_backward_filter(h.raw, alpha, x, a, y, b, conv, algo, room, bytes, beta, w, out)
                }
            }
        }
        .map_err(cudnn_error("convolution"))
    }
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
                    fma: math == sys::cudnnMathType_t::CUDNN_FMA_MATH,
                    chosen: [None; 3],
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

    /// `pass` in `T` on (a, b) into `out`: (x, w) into y, (dy, w) into dx or (x, dy) into
    /// dw, overwriting `out`, or added to it with `accumulate`.
    #[allow(clippy::too_many_arguments)]
    fn pass_in<T: Element>(
        &self,
        pass: Pass,
        s: &ConvShape,
        n: usize,
        a: &CudaSlice<T>,
        b: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
        accumulate: bool,
    ) -> Result<()> {
        let (a_len, b_len, out_len) = pass.lengths(s, n);
        assert!(a.len() >= a_len && b.len() >= b_len && out.len() >= out_len, "{pass:?}: buffers too short");
        let timed = self.cudnn_benchmark.load(std::sync::atomic::Ordering::Relaxed);
        self.with_plan::<T, _>(s, n, |h, plan| {
            let choice = plan.choice(h, pass, timed)?;
            let mut room = self.workspace(choice.bytes)?;
            let (room, _room) = room.as_mut().map(|r| r.device_ptr_mut(&self.stream)).unzip();
            let (a, _a) = a.device_ptr(&self.stream);
            let (b, _b) = b.device_ptr(&self.stream);
            let (out, _out) = out.device_ptr_mut(&self.stream);
            let room = room.map_or(std::ptr::null_mut(), |r| r as *mut c_void);
            let beta = if accumulate { 1.0 } else { 0.0 };
            // SAFETY: the buffers hold the descriptors' type and are at least as long as
            // they say (asserted); the workspace holds `choice.bytes`.
            unsafe { plan.launch(h, choice, (a as *const c_void, b as *const c_void, out as *mut c_void), room, beta) }
        })
    }

    /// `conv::forward`: `y = conv(x, w)` for `n` images, overwriting `y`. In bf16 (see
    /// [`Gpu::set_precision`]) the operands are rounded to bf16 first, and cuDNN's output,
    /// bf16 too, is widened into `y`.
    pub fn conv_forward(&self, s: &ConvShape, n: usize, x: &Buf, w: &Buf, y: &mut Buf) -> Result<()> {
        self.pass(Pass::Forward, s, n, x, w, y, false)
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
        self.pass(Pass::Data, s, n, dy, w, dx, accumulate)
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
        self.pass(Pass::Filter, s, n, x, dy, dw, accumulate)
    }

    /// [`Gpu::pass_in`] on f32 buffers: in f32, or in bf16 through rounded copies of the
    /// operands, the bf16 result widened into `out` (or added to it).
    #[allow(clippy::too_many_arguments)]
    fn pass(
        &self,
        pass: Pass,
        s: &ConvShape,
        n: usize,
        a: &Buf,
        b: &Buf,
        out: &mut Buf,
        accumulate: bool,
    ) -> Result<()> {
        if !self.bf16() {
            return self.pass_in(pass, s, n, a, b, out, accumulate);
        }
        let (a_len, b_len, out_len) = pass.lengths(s, n);
        let (a, b) = (self.to_bf16(a, a_len)?, self.to_bf16(b, b_len)?);
        // SAFETY: cuDNN writes every value (beta 0) before it is read.
        let mut result = unsafe { self.stream.alloc::<u16>(out_len) }?;
        self.pass_in(pass, s, n, &a, &b, &mut result, false)?;
        self.from_bf16(&result, out, accumulate)
    }
}
