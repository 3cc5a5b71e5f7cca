//! The compute engine: every floating-point kernel of the library lives here.
//!
//! Layers (`crate::nn`) and models (`crate::model`) only orchestrate; they call the
//! functions of this module on plain `f32` slices with explicit shapes. That is the
//! backend boundary: a CUDA backend supplies the same functions over device buffers
//! without touching models or training.
//!
//! Conventions:
//! - activations are channels-last (NHWC), contiguous;
//! - convolution weights are `[c_out][kh][kw][c_in]` (OHWI), so one im2col row is a
//!   contiguous `kh*kw*c_in` vector and the weight matrix is `[c_out, kh*kw*c_in]`;
//! - work is split over the batch across the rayon pool; each thread owns its scratch
//!   in a [`Workspace`], so a training step allocates nothing after the first.

pub mod batchnorm;
pub mod conv;
pub mod direct;
pub mod matmul;
pub mod ops;
pub mod pool;
pub mod sgd;
pub mod winograd;

/// Scratch memory of one worker thread. Buffers only grow.
#[derive(Default)]
pub struct Scratch {
    pub col: Vec<f32>,
    pub dcol: Vec<f32>,
    pub dw: Vec<f32>,
    pub winograd: winograd::Bufs,
}

/// How 3×3 stride-1 convolutions are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvAlgo {
    /// Per layer, what measured fastest: Winograd for enough channels and tiles, the
    /// direct kernel for few channels, else im2col.
    #[default]
    Auto,
    Im2col,
    /// The direct kernel for every 3×3 stride-1 pad-1 layer with whole blocks of 16
    /// output channels (x86-64 with AVX2 only), else im2col.
    Direct,
    /// Winograd for every 3×3 stride-1 pad-1 layer (tests use it on small networks).
    Winograd,
}

/// Per-thread scratch for all kernels, reused across layers and steps, the shared
/// transformed weights of the convolutions, and the convolution algorithm.
pub struct Workspace {
    pub threads: Vec<Scratch>,
    pub winograd_u: Vec<f32>,
    /// The kernel of a stride-1 convolution's input gradient (see `conv::flip_kernel`).
    pub flipped_weights: Vec<f32>,
    /// The weights of a direct convolution, repacked (see `direct::forward`).
    pub direct_weights: Vec<f32>,
    pub algo: ConvAlgo,
}

impl Workspace {
    pub fn new() -> Self {
        let n = rayon::current_num_threads().max(1);
        Workspace {
            threads: (0..n).map(|_| Scratch::default()).collect(),
            winograd_u: Vec::new(),
            flipped_weights: Vec::new(),
            direct_weights: Vec::new(),
            algo: ConvAlgo::Auto,
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
pub fn ensure_len(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

/// Splits `n` items into `parts` contiguous ranges of near-equal size.
pub fn split_range(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let base = n / parts;
    let rem = n % parts;
    let start = i * base + i.min(rem);
    let len = base + usize::from(i < rem);
    start..start + len
}
