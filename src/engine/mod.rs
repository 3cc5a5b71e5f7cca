//! The compute engine: every floating-point kernel of the library lives here.
//!
//! [`device`] is the backend boundary. Layers (`crate::nn`), models (`crate::model`) and
//! training hold their tensors in its [`DeviceVec`]s and compute on them only through its
//! functions; the compiler holds them to that, since the floats of a `DeviceVec` are
//! private to this module. The other modules are the CPU backend's kernels, on host
//! slices with explicit shapes. The CUDA backend (`cuda`, feature `cuda`) is to supply
//! `device`'s memory and functions over GPU memory, so that nothing above this module
//! changes; so far it has its own kernels and their launches.
//!
//! Conventions:
//! - activations are channels-last (NHWC), contiguous;
//! - convolution weights are `[c_out][kh][kw][c_in]` (OHWI), so one im2col row is a
//!   contiguous `kh*kw*c_in` vector and the weight matrix is `[c_out, kh*kw*c_in]`;
//! - work is split into items (images, blocks of tiles) that the threads of the rayon
//!   pool take one at a time ([`for_each_item`]); sums over items are added in a fixed
//!   order ([`sum_groups`]), so results do not depend on which thread did what;
//! - each thread owns its scratch in a [`Workspace`], so after the first training step
//!   nothing is allocated (`tests/allocations.rs`; where the panel kernel does not apply,
//!   the `gemm` crate still allocates its packing room on every call).

pub mod alloc;
pub mod batchnorm;
pub mod bf16;
pub mod conv;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
pub mod direct;
pub mod epilogue;
pub mod flat;
pub mod isa;
pub mod matmul;
pub mod ops;
pub mod panel;
pub mod peak;
pub mod pool;
pub mod sgd;
pub(crate) mod simd;
pub mod winograd;
pub mod winograd_small;

pub use bf16::Precision;
pub use device::{DeviceVec, View, ViewMut};
pub use flat::ParamVec;

use rayon::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Scratch memory of one worker thread. Buffers only grow.
#[derive(Default)]
pub struct Scratch {
    pub col: Vec<f32>,
    pub dcol: Vec<f32>,
    /// Rows of a GEMM's A, interleaved for `panel::product_packed`.
    pub a_panel: Vec<f32>,
    /// A tile of the output gradient, packed as B for `panel::product_packed_transposed`.
    pub b_panel: Vec<f32>,
    /// Rows of A in bf16 for `bf16::product`.
    pub a_bf16: Vec<u16>,
    /// A tile of the output gradient, packed in bf16 as `b_panel`.
    pub b_bf16: Vec<u16>,
    pub winograd: winograd::Bufs,
    pub winograd_small: winograd_small::Bufs,
}

/// How 3×3 stride-1 convolutions are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConvAlgo {
    /// Per layer, what measured fastest: `winograd_small` for 16-128 channels in and
    /// out, `winograd` for more channels and enough tiles, the direct kernel for few
    /// input channels (CIFAR's stem), else im2col.
    #[default]
    Auto,
    Im2col,
    /// The direct kernel for every 3×3 stride-1 pad-1 layer with whole blocks of 16
    /// output channels (x86-64 with AVX2 only), else im2col.
    Direct,
    /// Winograd for every 3×3 stride-1 pad-1 layer (`winograd_small` where it applies,
    /// else `winograd`; tests use it on small networks).
    Winograd,
}

/// The engine's context for a network: per-thread scratch for all kernels, reused across
/// layers and steps, the shared transformed weights of the convolutions, and the settings
/// every kernel reads (algorithm, number format, gradient mode). Opaque above the engine:
/// layers and models hand it to the `device` functions and change its settings through
/// the methods below, so that another backend can keep its own state here.
pub struct Workspace {
    threads: Vec<Scratch>,
    winograd_u: Vec<f32>,
    /// Every tile's transformed inputs and products, for `winograd`'s passes by position.
    winograd_v: Vec<f32>,
    winograd_m: Vec<f32>,
    /// Room for the tasks of Winograd's weight transform (see `winograd::weight_transform`).
    weight_transform_bufs: Vec<f32>,
    /// The kernel of a stride-1 convolution's input gradient (see `conv::flip_kernel`).
    flipped_weights: Vec<f32>,
    /// The weights of a direct convolution, repacked (see `direct::forward`).
    direct_weights: Vec<f32>,
    /// The weights of a GEMM, packed for `panel::product_packed` (see `conv`).
    packed_weights: Vec<f32>,
    /// The same in bf16, for `bf16::product`.
    packed_bf16: Vec<u16>,
    /// A batch rounded to bf16 with a border of zeros (see `bf16::conv3x3`).
    padded_bf16: Vec<u16>,
    /// Partial sums of a weight gradient, one run per group of images (see `sum_groups`).
    partials: Vec<f32>,
    /// BatchNorm's room.
    bn: batchnorm::Scratch,
    algo: ConvAlgo,
    /// The number format of the convolutions' GEMMs.
    precision: Precision,
    /// Whether backward passes replace the weight gradients or add to them.
    grad_mode: GradMode,
    /// A weight gradient on its way to being added (see `conv::backward`).
    grad_sum: Vec<f32>,
}

/// How a backward pass leaves the parameters' gradients.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GradMode {
    /// Replaces them.
    #[default]
    Overwrite,
    /// Adds to them: the micro-batches of a step summed in place.
    Accumulate,
}

impl Workspace {
    pub fn algo(&self) -> ConvAlgo {
        self.algo
    }
    pub fn set_algo(&mut self, algo: ConvAlgo) {
        self.algo = algo;
    }
    pub fn precision(&self) -> Precision {
        self.precision
    }
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }
    pub fn grad_mode(&self) -> GradMode {
        self.grad_mode
    }
    pub fn set_grad_mode(&mut self, mode: GradMode) {
        self.grad_mode = mode;
    }

    pub fn new() -> Self {
        let n = rayon::current_num_threads().max(1);
        Workspace {
            threads: (0..n).map(|_| Scratch::default()).collect(),
            winograd_u: Vec::new(),
            winograd_v: Vec::new(),
            winograd_m: Vec::new(),
            weight_transform_bufs: Vec::new(),
            flipped_weights: Vec::new(),
            direct_weights: Vec::new(),
            packed_weights: Vec::new(),
            packed_bf16: Vec::new(),
            padded_bf16: Vec::new(),
            partials: Vec::new(),
            bn: batchnorm::Scratch::default(),
            algo: ConvAlgo::Auto,
            precision: Precision::F32,
            grad_mode: GradMode::Overwrite,
            grad_sum: Vec::new(),
        }
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// An output buffer shared by worker threads as a raw pointer, for kernels whose threads
/// write disjoint parts of it that are not contiguous slices (tiles, channel blocks).
/// Whoever creates one must guarantee that no element is written by two threads.
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: sharing the pointer is sound under the creator's guarantee above; the pointee
// outlives the parallel section that uses it (the wrapper is built from a `&mut` borrow).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method, so closures capture the whole (Sync) wrapper, not the raw pointer field.
    pub(crate) fn base(&self) -> *mut f32 {
        self.0
    }
}

/// Grows `v` to at least `len` elements (never shrinks, so steady state allocates nothing).
pub fn ensure_len<T: Copy + Default>(v: &mut Vec<T>, len: usize) {
    if v.len() < len {
        v.resize(len, T::default());
    }
}

/// Runs `f` on a worker thread of rayon's pool (at once if this thread is one), so that
/// the parallel sections inside it start from within the pool. From any other thread, each
/// section would be handed to the pool while the caller sleeps until a worker wakes it,
/// and a wake-up costs 50–80 µs on a virtual machine; a ResNet-50 inference has about a
/// hundred sections. Run this way (median ratios of alternating in-process runs),
/// ResNet-50 inference ran 3–4% faster at batch 1 and 1–5% at batch 16, its training
/// step at batch 16 5%, ResNet-20's training step at batch 128 4%. The entry points of
/// the engine's users (a network's forward and backward, a training step) go through here.
pub fn in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| f())
}

/// Runs `f(scratch, item)` for every item of `0..items` on the worker threads, each with
/// its own scratch. Items are handed out one at a time as workers become free. On a
/// shared machine one core is often slowed down by another tenant; with a fixed split
/// the other worker would then wait for it. For kernels whose result does not depend on
/// which worker computes which item.
pub fn for_each_item(threads: &mut [Scratch], items: usize, f: impl Fn(&mut Scratch, usize) + Sync) {
    let next = AtomicUsize::new(0);
    let workers = threads.len().min(items).max(1);
    threads[..workers].par_iter_mut().for_each(|scr| {
        loop {
            let item = next.fetch_add(1, Ordering::Relaxed);
            if item >= items {
                break;
            }
            f(scr, item);
        }
    });
}

/// Floats of partial sums a reduction may use (8 MB): small weight gradients get a group
/// per image, large ones fewer groups.
const PARTIALS_BUDGET: usize = 1 << 21;

/// A sum over `items` (images, blocks of tiles) of `len` floats each, balanced like
/// [`for_each_item`] and still deterministic: the items are split into a fixed number of
/// contiguous groups, `f(scratch, group's items, partial)` adds a group's terms to its
/// own zeroed partial, and the partials are added in group order. Returns the sum.
pub fn sum_groups<'a>(
    threads: &mut [Scratch],
    partials: &'a mut Vec<f32>,
    len: usize,
    items: usize,
    f: impl Fn(&mut Scratch, std::ops::Range<usize>, &mut [f32]) + Sync,
) -> &'a [f32] {
    let groups = (PARTIALS_BUDGET / len.max(1)).max(threads.len()).min(items).max(1);
    ensure_len(partials, groups * len);
    let base = SharedOut(partials.as_mut_ptr());
    for_each_item(threads, groups, |scr, g| {
        // SAFETY: each group is handed out once, and its run of `len` floats lies inside
        // `partials` (groups · len long) apart from every other group's.
        let part = unsafe { std::slice::from_raw_parts_mut(base.base().add(g * len), len) };
        part.fill(0.0);
        f(scr, split_range(items, groups, g), part);
    });
    let (sum, rest) = partials[..groups * len].split_at_mut(len);
    // Every element adds its groups in the same order, whoever does it.
    sum.par_chunks_mut(1 << 12).enumerate().for_each(|(i, chunk)| {
        crate::simd!({
            for part in rest.chunks_exact(len) {
                let part = &part[i << 12..(i << 12) + chunk.len()];
                chunk.iter_mut().zip(part).for_each(|(s, p)| *s += p);
            }
        })
    });
    sum
}

/// Splits `n` items into `parts` contiguous ranges of near-equal size.
pub fn split_range(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let base = n / parts;
    let rem = n % parts;
    let start = i * base + i.min(rem);
    let len = base + usize::from(i < rem);
    start..start + len
}
