//! Winograd convolution F(4×4, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional
//! Neural Networks", 2015) for 3×3, stride-1, pad-1 layers, NHWC.
//!
//! Each 4×4 output tile comes from a 6×6 input tile: `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`,
//! 36 multiplies per (input, output) channel pair instead of 144. Summed over input
//! channels, the elementwise products become 36 independent GEMMs per block of tiles,
//! `M[p] = V[p] · U[p]` with `V[p]` [tiles × c_in] and `U[p]` [c_in × c_out]. Transforms
//! run over whole channel vectors (contiguous in NHWC), so they vectorize.
//!
//! In float32 this is accurate to about 1e-6 relative per layer (direct summation: 1e-7).
//! The backward-data pass of such a layer is the same convolution on the output gradient
//! with the kernel rotated by 180° and its channel roles swapped.

use super::conv::{self, ConvShape};
use super::epilogue::{Residual, Store};
use super::matmul::{Mat, matmul};
use super::panel;
use super::{ConvAlgo, SharedOut, Workspace, ensure_len, for_each_item, split_range, sum_groups};
use rayon::prelude::*;

/// Input tile side, output tile side.
pub(super) const T_IN: usize = 6;
pub(super) const T_OUT: usize = 4;
pub(super) const POS: usize = T_IN * T_IN;
/// The kernel transform (points 0, ±1, ±2, ∞): `U = G g Gᵀ`.
const G: [[f32; 3]; 6] = [
    [0.25, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Tiles per block: enough rows for efficient GEMMs, few enough to stay in cache.
const MAX_BLOCK: usize = 128;
const MIN_BLOCK: usize = 32;
/// Blocks per thread wanted, so that a faster thread can take more of them.
const BLOCKS_PER_THREAD: usize = 4;

/// Tiles per block of the weight gradient (whose GEMMs have the tiles as k), for `tiles`
/// tiles on `threads` threads: as large as allowed while every thread still gets several
/// blocks.
fn block_size(tiles: usize, threads: usize) -> usize {
    (tiles / (BLOCKS_PER_THREAD * threads.max(1))).clamp(MIN_BLOCK, MAX_BLOCK)
}

/// Tiles per block of `forward`: `ci·co/1024` (16 at 128 channels, 64 at 256), within
/// 16..=128, and no more than a thread's share. Few channels: small blocks keep a block's
/// transformed inputs and products (36·tiles·(ci+co) floats) in L2. Many: large blocks
/// read the transformed weights (36·ci·co floats, 38 MB at 512 channels) fewer times, even
/// if that leaves one block per thread. Against a fixed 128 in inference (weights
/// prepared; in-process, alternating), 32 channels at batch 128 took 3.9 ms against 4.4,
/// 128 channels at batch 16 13.3–15.7 against 16.2–19.7; 64 and 256 channels ran alike.
/// Every thread gets a block even with few tiles (inference at small batch); each tile's
/// result does not depend on the blocks.
fn forward_block(tiles: usize, threads: usize, ci: usize, co: usize) -> usize {
    (ci * co / 1024).clamp(16, MAX_BLOCK).min(tiles.div_ceil(threads.max(1))).max(4)
}

/// Whether a convolution is done this way. `Auto`: 3×3, stride 1, pad 1, at least 32
/// channels on each side (below that the transforms cost more than the multiplies they
/// save), and, unless the weights come transformed (`prepared`, in inference), a block
/// of tiles for every thread and at least 128 tiles to pay for transforming the weights
/// (`examples/conv_algos.rs` measures the algorithms).
pub fn applies(s: &ConvShape, n: usize, threads: usize, algo: ConvAlgo, prepared: bool) -> bool {
    let tiles = n * s.h.div_ceil(T_OUT) * s.w.div_ceil(T_OUT);
    let shape = s.kernel == 3 && s.stride == 1 && s.pad == 1;
    match algo {
        ConvAlgo::Im2col | ConvAlgo::Direct => false,
        ConvAlgo::Winograd => shape,
        ConvAlgo::Auto => {
            shape
                && s.c_in >= 32
                && s.c_out >= 32
                && tiles >= if prepared { 16 } else { (MIN_BLOCK * threads).max(128) }
        }
    }
}

/// The transformed weights `forward` reads, for a caller that keeps them across calls.
pub fn transform_weights(s: &ConvShape, w: &[f32]) -> Vec<f32> {
    let mut u = vec![0f32; POS * s.c_in * s.c_out];
    weight_transform(s, w, &mut u, &mut Vec::new());
    u
}

/// Eight channels' values, as the transforms compute on them: `Lanes` here, an AVX
/// register in `winograd_small`. The transforms are written once, over this trait.
pub(super) trait Lane: Copy + std::ops::Add<Output = Self> + std::ops::Sub<Output = Self> {
    /// `k·x + y`.
    fn fma(k: f32, x: Self, y: Self) -> Self;
}

/// Eight channels in an array, so that the 1-D transforms below read as the formulas they
/// are and still compile to AVX instructions. (Plain loops, not `array::from_fn`, whose
/// closures the compiler did not always inline.)
#[derive(Clone, Copy)]
pub(super) struct Lanes(pub(super) [f32; LANES]);
pub(super) const LANES: usize = 8;

impl std::ops::Add for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn add(mut self, o: Lanes) -> Lanes {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a += b;
        }
        self
    }
}

impl std::ops::Sub for Lanes {
    type Output = Lanes;
    #[inline(always)]
    fn sub(mut self, o: Lanes) -> Lanes {
        for (a, b) in self.0.iter_mut().zip(o.0) {
            *a -= b;
        }
        self
    }
}

impl Lane for Lanes {
    #[inline(always)]
    fn fma(k: f32, x: Lanes, mut y: Lanes) -> Lanes {
        for (a, b) in y.0.iter_mut().zip(x.0) {
            *a = k.mul_add(b, *a);
        }
        y
    }
}

/// A 1-D transform of N values per channel into M.
pub(super) trait Taps<const N: usize, const M: usize> {
    fn apply<L: Lane>(x: [L; N]) -> [L; M];
}

/// Applies the 1-D transform `T` to every channel `j < c`: reads `src[i·step + j]`,
/// writes `dst[k·ostep + j]`. Eight channels at a time; a last partial group is padded
/// with zeros and only its real channels are written. (Indexing channel by channel,
/// bounds checks kept the compiler from vectorizing: the transforms were mostly scalar.)
#[inline(always)]
fn transform_1d<T: Taps<N, M>, const N: usize, const M: usize>(
    src: &[f32],
    step: usize,
    dst: &mut [f32],
    ostep: usize,
    c: usize,
) {
    let mut j = 0;
    while j + LANES <= c {
        let mut input = [Lanes([0.0; LANES]); N];
        for (i, v) in input.iter_mut().enumerate() {
            v.0.copy_from_slice(&src[i * step + j..i * step + j + LANES]);
        }
        for (k, v) in T::apply(input).iter().enumerate() {
            dst[k * ostep + j..k * ostep + j + LANES].copy_from_slice(&v.0);
        }
        j += LANES;
    }
    if j < c {
        let width = c - j;
        let mut input = [Lanes([0.0; LANES]); N];
        for (i, v) in input.iter_mut().enumerate() {
            v.0[..width].copy_from_slice(&src[i * step + j..][..width]);
        }
        for (k, v) in T::apply(input).iter().enumerate() {
            dst[k * ostep + j..][..width].copy_from_slice(&v.0[..width]);
        }
    }
}

/// `Bᵀ z`: the input transform, with shared terms and FMAs (13 operations, not 24).
pub(super) struct InputTaps;
impl Taps<6, 6> for InputTaps {
    #[inline(always)]
    fn apply<L: Lane>([z0, z1, z2, z3, z4, z5]: [L; 6]) -> [L; 6] {
        // Rows 1-2: (z4 - 4·z2) ± (z3 - 4·z1); rows 3-4: (z4 - z2) ± 2·(z3 - z1).
        let (a, b) = (L::fma(-4.0, z2, z4), L::fma(-4.0, z1, z3));
        let (c, e) = (z4 - z2, z3 - z1);
        let d = e + e;
        [L::fma(4.0, z0, L::fma(-5.0, z2, z4)), a + b, a - b, c + d, c - d, L::fma(4.0, z1, L::fma(-5.0, z3, z5))]
    }
}

/// `Aᵀ m`: the output transform.
pub(super) struct OutputTaps;
impl Taps<6, 4> for OutputTaps {
    #[inline(always)]
    fn apply<L: Lane>([m0, m1, m2, m3, m4, m5]: [L; 6]) -> [L; 4] {
        let (a, b) = (m1 + m2, m1 - m2);
        let (p, q) = (m3 + m4, m3 - m4);
        [m0 + a + p, L::fma(2.0, q, b), L::fma(4.0, p, a), L::fma(8.0, q, b + m5)]
    }
}

/// `A q`: the transpose of the output transform, for the output gradient.
pub(super) struct GradientTaps;
impl Taps<4, 6> for GradientTaps {
    #[inline(always)]
    fn apply<L: Lane>([q0, q1, q2, q3]: [L; 4]) -> [L; 6] {
        let (a, b) = (q0 + q2, q1 + q3);
        let (p, r) = (L::fma(4.0, q2, q0), L::fma(8.0, q3, q1 + q1));
        [q0, a + b, a - b, p + r, p - r, q3]
    }
}

/// `Bᵀ z` for the six values `z[i·step]` of each channel, into `out[i·ostep]`.
#[inline(always)]
fn input_1d(z: &[f32], step: usize, out: &mut [f32], ostep: usize, c: usize) {
    transform_1d::<InputTaps, 6, 6>(z, step, out, ostep, c);
}

/// `Aᵀ m` for six values per channel into four.
#[inline(always)]
fn output_1d(m: &[f32], step: usize, out: &mut [f32], ostep: usize, c: usize) {
    transform_1d::<OutputTaps, 6, 4>(m, step, out, ostep, c);
}

/// `A q` for four values per channel into six.
#[inline(always)]
fn gradient_1d(q: &[f32], step: usize, out: &mut [f32], ostep: usize, c: usize) {
    transform_1d::<GradientTaps, 4, 6>(q, step, out, ostep, c);
}

/// `G g Gᵀ` of every (input, output) channel pair from OHWI weights: each position's
/// `U[p]` (`c_in × c_out`) contiguous, packed in 16-column strips for
/// `panel::product_packed` where it applies, else row-major. (Read in place, a strip's
/// rows lay `c_out` floats apart, 1-2 KB from 256 channels on, so that its 256-512 rows
/// fell into 2-4 sets of the L1 cache and were read from L3 by every group of 6 tiles: the
/// GEMMs of ResNet-50's 256- and 512-channel layers ran at 55 GFLOP/s.) Vectorized over
/// output channels, parallel over input channels.
pub(super) fn weight_transform(s: &ConvShape, w: &[f32], u: &mut [f32], bufs: &mut Vec<f32>) {
    let (ci_n, co) = (s.c_in, s.c_out);
    let out = SharedOut(u[..POS * ci_n * co].as_mut_ptr());
    // Each task transforms a run of input channels in its own part of `bufs`, which the
    // caller keeps from call to call: a training step transforms every layer's weights
    // twice, and buffers allocated per input channel had taken 3% of a ResNet-20 step.
    let tasks = (4 * rayon::current_num_threads()).clamp(1, ci_n.max(1));
    ensure_len(bufs, tasks * 27 * co);
    bufs[..tasks * 27 * co].par_chunks_mut(27 * co).enumerate().for_each(|(task, buf)| {
        crate::simd!({
            let (g, gg) = buf.split_at_mut(9 * co);
            for ci in split_range(ci_n, tasks, task) {
                transform_input_channel(s, w, ci, g, gg, out);
            }
        })
    });
}

/// [`weight_transform`] of input channel `ci`, with `g` (9·c_out floats) and `gg`
/// (18·c_out) to work in.
fn transform_input_channel(s: &ConvShape, w: &[f32], ci: usize, g: &mut [f32], gg: &mut [f32], out: SharedOut) {
    crate::simd!({
        let (ci_n, co) = (s.c_in, s.c_out);
        // g[tap][co] for this input channel, then G g (6×3) per output channel.
        for (tap, g) in g.chunks_exact_mut(co).enumerate() {
            g.iter_mut().enumerate().for_each(|(o, v)| *v = w[(o * 9 + tap) * ci_n + ci]);
        }
        gg.fill(0.0);
        for (i, row) in G.iter().enumerate() {
            for kx in 0..3 {
                let dst = &mut gg[(i * 3 + kx) * co..(i * 3 + kx + 1) * co];
                for (ky, &f) in row.iter().enumerate() {
                    if f != 0.0 {
                        let src = &g[(ky * 3 + kx) * co..(ky * 3 + kx + 1) * co];
                        dst.iter_mut().zip(src).for_each(|(d, v)| *d += f * v);
                    }
                }
            }
        }
        let strip = if panel::applies(co) { panel::STRIP } else { co };
        for i in 0..T_IN {
            for (j, row) in G.iter().enumerate() {
                // Row ci of U[p], strip by strip (one strip when row-major).
                let p = i * T_IN + j;
                for k in 0..co / strip {
                    let at = p * ci_n * co + (k * ci_n + ci) * strip;
                    // SAFETY: these `strip` floats inside u's POS·c_in·c_out belong to row
                    // ci, written only by the task of input channel ci.
                    let dst = unsafe { std::slice::from_raw_parts_mut(out.base().add(at), strip) };
                    dst.fill(0.0);
                    for (kx, &f) in row.iter().enumerate() {
                        if f != 0.0 {
                            let src = &gg[(i * 3 + kx) * co + k * strip..][..strip];
                            dst.iter_mut().zip(src).for_each(|(d, v)| *d += f * v);
                        }
                    }
                }
            }
        }
    })
}

/// `u` (the weights already transformed, kept by the caller), else `w` transformed into
/// `scratch`, with `bufs` to work in.
pub(super) fn weights_or_transform<'a>(
    s: &ConvShape,
    w: &[f32],
    u: Option<&'a [f32]>,
    scratch: &'a mut Vec<f32>,
    bufs: &mut Vec<f32>,
) -> &'a [f32] {
    let len = POS * s.c_in * s.c_out;
    match u {
        Some(u) => &u[..len],
        None => {
            ensure_len(scratch, len);
            weight_transform(s, w, scratch, bufs);
            &scratch[..len]
        }
    }
}

/// Floats from one position's matrix to the next in `Bufs::v` and `Bufs::m` (`tiles`
/// rows of `c` channels each), skewed by one cache line: unskewed, the 36 positions of a
/// tile lay a multiple of 4 KB apart (e.g. 128 tiles · 32 channels · 4 bytes = 16 KB), all in
/// one set of the 8-way L1 cache, and the transforms that write and read them went at L2
/// speed.
fn stride(tiles: usize, c: usize) -> usize {
    tiles * c + SKEW
}
const SKEW: usize = 16;

/// Per-thread buffers: a block's transformed inputs and products, and one tile's scratch.
#[derive(Default)]
pub struct Bufs {
    v: Vec<f32>,
    m: Vec<f32>,
    tile: Vec<f32>,
    tmp: Vec<f32>,
}

impl Bufs {
    /// Room for blocks of up to `tiles` tiles of a `ci` → `co` convolution.
    fn reserve(&mut self, tiles: usize, ci: usize, co: usize) {
        ensure_len(&mut self.tile, POS * ci.max(co));
        ensure_len(&mut self.tmp, POS * ci.max(co));
        ensure_len(&mut self.v, POS * stride(tiles, ci));
        ensure_len(&mut self.m, POS * stride(tiles, co));
    }
}

/// How `forward` should order its work for `n` images of shape `s`: by position where
/// every tile's transformed inputs and products fit `BY_POSITION_FLOATS`, else in blocks.
pub fn way_for(s: &ConvShape, n: usize) -> Way {
    let tiles = n * s.h.div_ceil(T_OUT) * s.w.div_ceil(T_OUT);
    match panel::applies(s.c_out) && tiles * POS * (s.c_in + s.c_out) <= BY_POSITION_FLOATS {
        true => Way::ByPosition,
        false => Way::InBlocks,
    }
}

/// How [`forward`] orders its work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Way {
    /// Block of tiles by block, each block through the input transforms, the 36 products
    /// and the output transforms on one thread.
    InBlocks,
    /// Three passes over all the tiles: the input transforms, tile by tile; the 36
    /// products, position by position; the output transforms, tile by tile. In blocks,
    /// each thread reads all of the transformed weights (36·c_in·c_out floats, 38 MB at 512
    /// channels) for each of its blocks: at batch 16, for 32 tiles of a 512-channel layer,
    /// 64 of a 256-channel one. By position, each thread reads its positions' weights only,
    /// once. Against blocks, in one process, alternating: median pair ratios 1.00–1.09 for
    /// ResNet-50's inference at batch 16 (median times 2–4% lower), 1.01–1.03 at batch 1,
    /// 1.03 for its training step; ResNet-18 at batch 16 0.99–1.06 (BENCHMARKS.md).
    /// Requires `panel::applies(c_out)`.
    ByPosition,
}

/// Most floats of transformed inputs and products (32 MB) that [`way_for`] lets a layer
/// keep for all its tiles at once, to run by position: ResNet-50's third and last stages
/// up to batch 16. Larger batches run in blocks of tiles.
const BY_POSITION_FLOATS: usize = 1 << 23;

/// `conv3x3(x, w)` into `y` as `store` says, its work ordered `way` (see [`way_for`]); an
/// epilogue is applied to each tile as it is written. `u`: the weights already
/// transformed by `transform_weights`, if the caller keeps them.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    way: Way,
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    u: Option<&[f32]>,
    y: &mut [f32],
    store: Store<&[f32]>,
    ws: &mut Workspace,
) {
    assert!(s.kernel == 3 && s.stride == 1 && s.pad == 1);
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len() && w.len() == s.weight_len());
    assert!(way == Way::InBlocks || panel::applies(s.c_out), "winograd by position: c_out must come in 16s");
    let u = weights_or_transform(s, w, u, &mut ws.winograd_u, &mut ws.weight_transform_bufs);
    let grid = (s.h.div_ceil(T_OUT), s.w.div_ceil(T_OUT));
    let tiles = n * grid.0 * grid.1;
    // Tiles are disjoint rectangles of the output, each written by the one block or pass
    // item holding it.
    let out = SharedOut(y[..n * s.out_len()].as_mut_ptr());
    let layer = Layer { s, x, u, grid, tiles, out, store };
    match way {
        Way::InBlocks => in_blocks(&layer, &mut ws.threads),
        Way::ByPosition => by_position(&layer, &mut ws.threads, (&mut ws.winograd_v, &mut ws.winograd_m)),
    }
}

/// What both orders of `forward`'s work share: the layer, its input and transformed
/// weights, its tiles, and where and how the output transforms write.
struct Layer<'a> {
    s: &'a ConvShape,
    x: &'a [f32],
    u: &'a [f32],
    grid: (usize, usize),
    tiles: usize,
    out: SharedOut,
    store: Store<&'a [f32]>,
}

/// [`Way::InBlocks`].
fn in_blocks(layer: &Layer, threads: &mut [super::Scratch]) {
    let Layer { s, x, u, grid, tiles, out, store } = *layer;
    let (ci, co) = (s.c_in, s.c_out);
    let block = forward_block(tiles, threads.len(), ci, co);
    let blocks = tiles.div_ceil(block);
    for_each_item(threads, blocks, |scr, index| {
        crate::simd!({
            let b = &mut scr.winograd;
            b.reserve(block.min(tiles), ci, co);
            let first = index * block;
            let count = block.min(tiles - first);
            let (vs, ms) = (stride(count, ci), stride(count, co));
            for k in 0..count {
                transform_input(s, x, first + k, grid, (&mut b.tile, &mut b.tmp), &mut b.v, vs, k);
            }
            for p in 0..POS {
                let (v, m) = (&b.v[p * vs..][..count * ci], &mut b.m[p * ms..][..count * co]);
                if panel::applies(co) {
                    let (strips, up) = (0..co / panel::STRIP, &u[p * ci * co..]);
                    panel::product_packed(m, co, count, strips, ci, v, ci, up, Store::Overwrite, &mut scr.a_panel);
                } else {
                    let up = Mat::rows(&u[p * ci * co..(p + 1) * ci * co], co);
                    matmul(m, co, count, co, ci, Mat::rows(v, ci), up, false);
                }
            }
            for k in 0..count {
                let (m, scratch) = (&b.m[..], (&mut b.tile[..], &mut b.tmp[..]));
                transform_output(s, scratch, m, ms, k, first + k, grid, out, store);
            }
        })
    });
}

/// [`Way::ByPosition`]: `room` holds every tile's transformed inputs and products, each
/// tile's together (`[tile][position][channel]`), so that a tile's pass reads and writes
/// one run.
fn by_position(layer: &Layer, threads: &mut [super::Scratch], (v, m): (&mut Vec<f32>, &mut Vec<f32>)) {
    let Layer { s, x, u, grid, tiles, out, store } = *layer;
    if tiles == 0 {
        return;
    }
    let (ci, co) = (s.c_in, s.c_out);
    // Floats from one tile's run to the next: skewed, as `stride`, so that the rows of a
    // position's product do not all fall into the same sets of the L1 cache.
    let (tv, tm) = (POS * ci + SKEW, POS * co + SKEW);
    ensure_len(v, tiles * tv);
    ensure_len(m, tiles * tm);
    let (vp, mp) = (SharedOut(v.as_mut_ptr()), SharedOut(m.as_mut_ptr()));
    for_each_item(threads, tiles, |scr, tile| {
        crate::simd!({
            let b = &mut scr.winograd;
            b.reserve(1, ci, co);
            // SAFETY: tile `tile`'s run of v, written by this item alone.
            let v = unsafe { std::slice::from_raw_parts_mut(vp.base().add(tile * tv), POS * ci) };
            transform_input(s, x, tile, grid, (&mut b.tile, &mut b.tmp), v, ci, 0);
        })
    });
    for_each_item(threads, POS, |scr, p| {
        crate::simd!({
            // Position p's rows are every tile's p-th run of c_in floats (c_out for the
            // products).
            // SAFETY: rows `tv` (`tm`) apart from `p·c` on lie inside v (m); this item alone
            // writes position p's columns of m, and v is only read in this pass.
            let (v, m) = unsafe {
                (
                    std::slice::from_raw_parts(vp.base().add(p * ci), (tiles - 1) * tv + ci),
                    std::slice::from_raw_parts_mut(mp.base().add(p * co), (tiles - 1) * tm + co),
                )
            };
            let (strips, up) = (0..co / panel::STRIP, &u[p * ci * co..]);
            panel::product_packed(m, tm, tiles, strips, ci, v, tv, up, Store::Overwrite, &mut scr.a_panel);
        })
    });
    for_each_item(threads, tiles, |scr, tile| {
        crate::simd!({
            let b = &mut scr.winograd;
            b.reserve(1, ci, co);
            // SAFETY: m is only read in this pass.
            let m = unsafe { std::slice::from_raw_parts(mp.base().add(tile * tm), POS * co) };
            let scratch = (&mut b.tile[..], &mut b.tmp[..]);
            transform_output(s, scratch, m, co, 0, tile, grid, out, store);
        })
    });
}

/// Copies the `side`×`side` pixels of an HWC image from (y0, x0) on into `dst`, zero where
/// they fall outside the image. Each row's pixels inside the image are one contiguous run,
/// copied at once.
fn gather(img: &[f32], (h, w): (usize, usize), c: usize, (y0, x0): (isize, isize), side: usize, dst: &mut [f32]) {
    // Columns q in lo..hi of the tile fall inside the image.
    let lo = (-x0).clamp(0, side as isize) as usize;
    let hi = (w as isize - x0).clamp(lo as isize, side as isize) as usize;
    for (r, row) in dst[..side * side * c].chunks_exact_mut(side * c).enumerate() {
        let y = y0 + r as isize;
        if y < 0 || y >= h as isize || lo == hi {
            row.fill(0.0);
            continue;
        }
        let at = (y as usize * w + (x0 + lo as isize) as usize) * c;
        row[..lo * c].fill(0.0);
        row[lo * c..hi * c].copy_from_slice(&img[at..at + (hi - lo) * c]);
        row[hi * c..].fill(0.0);
    }
}

/// Image, tile row and tile column of tile `tile`.
fn tile_position(tile: usize, (th, tw): (usize, usize)) -> (usize, usize, usize) {
    (tile / (th * tw), tile / tw % th, tile % tw)
}

/// The 6×6 input tile of `tile` (zero outside the image), transformed: `Bᵀ d B` →
/// `v[p·vs + k·c_in..]` for each position p. `scratch`: a tile's room (`Bufs::tile`,
/// `Bufs::tmp`).
#[allow(clippy::too_many_arguments)]
fn transform_input(
    s: &ConvShape,
    x: &[f32],
    tile: usize,
    grid: (usize, usize),
    (gathered, tmp): (&mut [f32], &mut [f32]),
    v: &mut [f32],
    vs: usize,
    k: usize,
) {
    crate::simd!({
        let c = s.c_in;
        let (img, ty, tx) = tile_position(tile, grid);
        let xi = &x[img * s.in_len()..(img + 1) * s.in_len()];
        let (iy0, ix0) = ((ty * T_OUT) as isize - 1, (tx * T_OUT) as isize - 1);
        let inside = iy0 >= 0 && ix0 >= 0 && iy0 as usize + T_IN <= s.h && ix0 as usize + T_IN <= s.w;
        // Interior tiles are read in place; edge tiles are gathered with zeros first.
        let (src, base, row_step): (&[f32], usize, usize) = if inside {
            (xi, (iy0 as usize * s.w + ix0 as usize) * c, s.w * c)
        } else {
            gather(xi, (s.h, s.w), c, (iy0, ix0), T_IN, gathered);
            (gathered, 0, T_IN * c)
        };
        // Bᵀ down each column, then along each row straight into v.
        for q in 0..T_IN {
            input_1d(&src[base + q * c..], row_step, &mut tmp[q * c..], T_IN * c, c);
        }
        for r in 0..T_IN {
            input_1d(&tmp[r * T_IN * c..], c, &mut v[r * T_IN * vs + k * c..], vs, c);
        }
    })
}

/// Products `m[p·ms + k·c_out..]` of tile `tile` → its 4×4 output pixels (clipped at the
/// edges). `scratch`: a tile's room (`Bufs::tile`, `Bufs::tmp`).
#[allow(clippy::too_many_arguments)]
fn transform_output(
    s: &ConvShape,
    (row_buf, tmp): (&mut [f32], &mut [f32]),
    m: &[f32],
    ms: usize,
    k: usize,
    tile: usize,
    grid: (usize, usize),
    out: SharedOut,
    store: Store<&[f32]>,
) {
    crate::simd!({
        let c = s.c_out;
        let (img, ty, tx) = tile_position(tile, grid);
        // Aᵀ down each column of the 6×6 products, then along each of the 4 rows.
        for q in 0..T_IN {
            output_1d(&m[q * ms + k * c..], T_IN * ms, &mut tmp[q * c..], T_IN * c, c);
        }
        let (oy0, ox0) = (ty * T_OUT, tx * T_OUT);
        let full_row = ox0 + T_OUT <= s.w;
        // A residual in the output must be read before the products overwrite it.
        let (accumulate, epi) = (store.accumulates(), store.epilogue());
        let in_output = epi.is_some_and(|e| matches!(e.residual, Residual::InOutput));
        for r in 0..T_OUT.min(s.h - oy0) {
            let at = ((img * s.h + oy0 + r) * s.w + ox0) * c;
            let width = T_OUT.min(s.w - ox0);
            let pixel = (img * s.h + oy0 + r) * s.w + ox0;
            // SAFETY: these pixels lie in this tile, which only this block writes.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.base().add(at), width * c) };
            if full_row && !accumulate && !in_output {
                output_1d(&tmp[r * T_IN * c..], c, dst, c, c);
            } else {
                let row = &mut row_buf[..T_OUT * c];
                output_1d(&tmp[r * T_IN * c..], c, row, c, c);
                match epi {
                    _ if accumulate => dst.iter_mut().zip(row.iter()).for_each(|(d, v)| *d += v),
                    Some(epi) if in_output => {
                        for (q, (px, values)) in dst.chunks_exact_mut(c).zip(row.chunks_exact(c)).enumerate() {
                            epi.apply_over(values, px, pixel + q, c, 0..c);
                        }
                    }
                    _ => dst.copy_from_slice(&row[..width * c]),
                }
            }
            if let Some(epi) = epi.filter(|_| !in_output) {
                for (q, px) in dst.chunks_exact_mut(c).enumerate() {
                    epi.apply(px, pixel + q, c, 0..c);
                }
            }
        }
    })
}

/// The 4×4 output-gradient tile of `tile` (zero outside the image), transformed:
/// `A dY Aᵀ` → `m[p][k][·]`.
fn transform_gradient(
    s: &ConvShape,
    dy: &[f32],
    tile: usize,
    grid: (usize, usize),
    b: &mut Bufs,
    count: usize,
    k: usize,
) {
    crate::simd!({
        let c = s.c_out;
        let (img, ty, tx) = tile_position(tile, grid);
        let (oy0, ox0) = (ty * T_OUT, tx * T_OUT);
        let dyi = &dy[img * s.out_len()..(img + 1) * s.out_len()];
        let (src, base, row_step): (&[f32], usize, usize) = if oy0 + T_OUT <= s.h && ox0 + T_OUT <= s.w {
            (dyi, (oy0 * s.w + ox0) * c, s.w * c)
        } else {
            gather(dyi, (s.h, s.w), c, (oy0 as isize, ox0 as isize), T_OUT, &mut b.tile);
            (&b.tile, 0, T_OUT * c)
        };
        for q in 0..T_OUT {
            gradient_1d(&src[base + q * c..], row_step, &mut b.tmp[q * c..], T_OUT * c, c);
        }
        let ms = stride(count, c);
        for r in 0..T_IN {
            gradient_1d(&b.tmp[r * T_OUT * c..], c, &mut b.m[r * T_IN * ms + k * c..], ms, c);
        }
    })
}

/// `dw = Σ dyᵀ·col(x)` (overwritten) for a 3×3 stride-1 layer:
/// `dU[p] = Σ_tiles (A dY Aᵀ)[p]ᵀ · (Bᵀ d B)[p]`, then `dw = Gᵀ dU G`.
pub fn backward_weights(s: &ConvShape, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], ws: &mut Workspace) {
    assert!(s.kernel == 3 && s.stride == 1 && s.pad == 1);
    assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len() && dw.len() == s.weight_len());
    let (ci, co) = (s.c_in, s.c_out);
    let grid = (s.h.div_ceil(T_OUT), s.w.div_ceil(T_OUT));
    let tiles = n * grid.0 * grid.1;
    let block = block_size(tiles, ws.threads.len());
    let blocks = tiles.div_ceil(block);
    let du = sum_groups(&mut ws.threads, &mut ws.partials, POS * co * ci, blocks, |scr, indices, du| {
        crate::simd!({
            let b = &mut scr.winograd;
            b.reserve(block.min(tiles), ci, co);
            for index in indices {
                let first = index * block;
                let count = block.min(tiles - first);
                let (vs, ms) = (stride(count, ci), stride(count, co));
                for k in 0..count {
                    transform_input(s, x, first + k, grid, (&mut b.tile, &mut b.tmp), &mut b.v, vs, k);
                    transform_gradient(s, dy, first + k, grid, b, count, k);
                }
                // The weight gradient in the transformed domain, `du[p][c_out][c_in]`:
                for p in 0..POS {
                    // dU[p] (c_out × c_in) += Ŷ[p]ᵀ (c_out × tiles) · V[p] (tiles × c_in)
                    let yt = Mat::transposed(&b.m[p * ms..][..count * co], co);
                    let v = Mat::rows(&b.v[p * vs..][..count * ci], ci);
                    matmul(&mut du[p * co * ci..(p + 1) * co * ci], ci, co, ci, count, yt, v, true);
                }
            }
        })
    });
    weights_from_transformed(s, du, dw);
}

/// `dw = Gᵀ dU G` (overwritten) from the weight gradient in the transformed domain,
/// `du[p][c_out][c_in]`: `dw[co][ky][kx][ci] = Σ G[i][ky] dU[i,j] G[j][kx]`.
pub(super) fn weights_from_transformed(s: &ConvShape, du: &[f32], dw: &mut [f32]) {
    let (ci, co) = (s.c_in, s.c_out);
    dw[..s.weight_len()].par_chunks_mut(9 * ci).enumerate().for_each(|(o, dwo)| {
        crate::simd!({
            dwo.fill(0.0);
            for i in 0..T_IN {
                for j in 0..T_IN {
                    let src = &du[((i * T_IN + j) * co + o) * ci..][..ci];
                    for ky in 0..3 {
                        for kx in 0..3 {
                            let f = G[i][ky] * G[j][kx];
                            if f != 0.0 {
                                let dst = &mut dwo[(ky * 3 + kx) * ci..(ky * 3 + kx + 1) * ci];
                                dst.iter_mut().zip(src).for_each(|(d, v)| *d += f * v);
                            }
                        }
                    }
                }
            }
        })
    });
}

/// `dx (+)= conv3x3ᵀ(dy, w)`: the input gradient, as a forward pass on `dy` with the
/// kernel rotated by 180° and input/output channels swapped; `add` adds it to `dx`.
pub fn backward_data(s: &ConvShape, n: usize, dy: &[f32], w: &[f32], dx: &mut [f32], add: bool, ws: &mut Workspace) {
    conv::with_flipped_kernel(s, w, ws, |t, flipped, ws| {
        forward(way_for(t, n), t, n, dy, flipped, None, dx, Store::adding(add), ws)
    });
}
