//! Winograd F(4×4, 3×3) for 3×3 stride-1 pad-1 layers with 16 to 128 channels in and
//! out (all of CIFAR's 3×3 stride-1 layers, ResNet-50's first two stages), fused per band
//! of tile rows: forward, input gradient (the forward on `dy` with the flipped kernel)
//! and, in `weights`, the weight gradient.
//!
//! `winograd` runs each 1-D transform over one tile and a channel count known only at
//! run time. At 16 channels that took 11,400 instructions per tile (2.1 per cycle), where
//! the products need about 2,000: the loops' bookkeeping outweighed the arithmetic, and
//! the direct kernel was faster. Here the channel count is a compile-time constant, so
//! every transform is straight-line AVX code (`engine::simd`), and a band of tile rows goes
//! through all three steps while its data stays in L1 and L2:
//! 1. `Bᵀ d B`: down each column of the band's six input rows once (neighbouring tiles
//!    share two of their six columns), then along each tile's six rows, into
//!    `v[tile][p][c]`;
//! 2. `m[p] = v[p] · U[p]` for the 36 positions p: 6 tiles × 16 output channels in 12
//!    AVX registers, summed over the input channels;
//! 3. `Aᵀ m A` per tile, written to the output (or added to it), with the epilogue in
//!    registers.
//!
//! ResNet-20 at batch 128, in-process against the direct kernel (16 channels) and
//! `winograd` (32 and 64) alternating: inference 1.49× the images/s, training 1.34×.

use super::conv::ConvShape;
use super::epilogue::{Residual, Store};
#[cfg(target_arch = "x86_64")]
use super::simd::V16;
use super::simd::{Reg, V8};
use super::winograd::{self, InputTaps, OutputTaps, POS, T_IN, T_OUT, Taps};
use super::{ConvAlgo, Scratch, SharedOut, Workspace, ensure_len, for_each_item};

mod weights;

pub use weights::backward_weights;

/// Tiles per band wanted (whole tile rows, so a band may hold more): a band's
/// transformed inputs and products (2 · 36 · tiles · c floats, 74 KB at 16 tiles of 16
/// channels) stay in L2 beside the transformed weights.
const BAND_TILES: usize = 16;

/// Whether a convolution is done this way: 3×3, stride 1, pad 1, 16, 32, 64 or 128
/// channels in and out. `Auto` takes it wherever it applies: on every such layer of
/// ResNet-20 and ResNet-50 it measured faster than the direct kernel and `winograd`, at
/// batch 1 too (in-process; BENCHMARKS.md, design decisions). Above 128 channels the transformed weights
/// (36·c² floats, 9 MB at 256) no longer stay in cache across a band, which `winograd`'s
/// larger blocks handle.
pub fn applies(s: &ConvShape, algo: ConvAlgo) -> bool {
    let shape = super::simd::available()
        && s.kernel == 3
        && s.stride == 1
        && s.pad == 1
        && s.c_in == s.c_out
        && matches!(s.c_in, 16 | 32 | 64 | 128);
    match algo {
        ConvAlgo::Im2col | ConvAlgo::Direct => false,
        ConvAlgo::Winograd | ConvAlgo::Auto => shape,
    }
}

/// Per-thread buffers of one band.
#[derive(Default)]
pub struct Bufs {
    /// An image row of zeros (nothing writes it): the input rows above and below the image.
    zeros: Vec<f32>,
    /// The column pass of one tile row: six rows of `4·tiles + 2` columns for the input
    /// (pad columns included), `4·tiles` for the output gradient.
    cols: Vec<f32>,
    /// `Bᵀ d B` of the band's tiles, `v[tile][p][c]` (see `Layout`).
    v: Vec<f32>,
    /// The products `m[tile][p][c]`, or in `weights` the output gradient's transform.
    m: Vec<f32>,
}

/// `conv3x3(x, w)` into `y` as `store` says, as `winograd::forward`; `u`: the weights
/// transformed by `winograd::transform_weights`, if the caller keeps them.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    u: Option<&[f32]>,
    y: &mut [f32],
    store: Store<&[f32]>,
    ws: &mut Workspace,
) {
    assert!(applies(s, ConvAlgo::Winograd), "winograd_small: unsupported shape {s:?}");
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len() && w.len() == s.weight_len());
    assert!(store.epilogue().is_none_or(|e| e.residual.covers(n * s.out_len())));
    let u = winograd::weights_or_transform(s, w, u, &mut ws.winograd_u, &mut ws.weight_transform_bufs);
    let y = &mut y[..n * s.out_len()];
    match s.c_in {
        16 => forward_c::<16>(s, n, x, u, y, store, &mut ws.threads),
        32 => forward_c::<32>(s, n, x, u, y, store, &mut ws.threads),
        64 => forward_c::<64>(s, n, x, u, y, store, &mut ws.threads),
        _ => forward_c::<128>(s, n, x, u, y, store, &mut ws.threads),
    }
}

/// Where a band's tiles lie: tile rows are counted over the batch, `grid` tile rows ×
/// tile columns per image.
#[derive(Clone, Copy)]
struct Band {
    grid: (usize, usize),
    /// First tile row and number of tile rows.
    first: usize,
    rows: usize,
}

impl Band {
    fn tiles(&self) -> usize {
        self.rows * self.grid.1
    }

    /// Image and tile row within it of the band's tile row `r`.
    fn row(&self, r: usize) -> (usize, usize) {
        let row = self.first + r;
        (row / self.grid.0, row % self.grid.0)
    }
}

/// Where position p of a band's tile lies in `v` and `m`: at `tile·self.tile + p·self.pos`.
/// Tile-major: each tile's 36 positions are contiguous, so the transforms read and write
/// runs of memory and the products gather their 6 rows from 6 tiles. (Position-major,
/// as `winograd` lays them out, the 16-channel layer took 4% longer.)
#[derive(Clone, Copy)]
struct Layout {
    pos: usize,
    tile: usize,
}

impl Layout {
    fn new<const C: usize>() -> Layout {
        Layout { pos: C, tile: POS * C }
    }

    fn len(&self, tiles: usize) -> usize {
        tiles * self.tile
    }
}

/// `forward` for C channels: the batch's tile rows in bands, taken by the threads one at
/// a time.
fn forward_c<const C: usize>(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    u: &[f32],
    y: &mut [f32],
    store: Store<&[f32]>,
    threads: &mut [Scratch],
) {
    let grid = (s.h.div_ceil(T_OUT), s.w.div_ceil(T_OUT));
    let rows = n * grid.0;
    let per_band = BAND_TILES.div_ceil(grid.1);
    let out = SharedOut(y.as_mut_ptr());
    // Bands are disjoint sets of tile rows, and so write disjoint output pixels.
    for_each_item(threads, rows.div_ceil(per_band), |scr, index| {
        crate::simd!(registers {
            let first = index * per_band;
            let band = Band { grid, first, rows: per_band.min(rows - first) };
            let Bufs { zeros, cols, v, m } = &mut scr.winograd_small;
            let at = Layout::new::<C>();
            ensure_len(zeros, s.w * C);
            ensure_len(cols, T_IN * (T_OUT * grid.1 + 2) * C);
            ensure_len(v, at.len(band.tiles()));
            ensure_len(m, at.len(band.tiles()));
            for r in 0..band.rows {
                transform_row::<InputTaps, T_IN, C>(s, x, &band, r, zeros, cols, v);
            }
            products::<C>(band.tiles(), v, u, m);
            for t in 0..band.tiles() {
                transform_output::<C>(s, &band, t, m, out, store);
            }
        })
    });
}

/// The 6×6 transform of every tile of the band's tile row `r` into `out` (see `Layout`),
/// by the 1-D transform `T` of N values: `Bᵀ d B` of the input's 6×6 tiles (N = 6), or
/// `A dY Aᵀ` of the output gradient's 4×4 tiles (N = 4). `T` runs down every column of
/// the N image rows once into `cols` (neighbouring tiles share N - 4 columns), then along
/// each tile's six rows of `cols`. Outside the image everything is zero: rows read
/// `zeros`. `img` is the batch's input or output gradient (the same shape, as stride is 1).
/// (Raw pointers with bounds asserted once: with slices, index arithmetic and bounds
/// checks made up most of the code.)
fn transform_row<T: Taps<N, T_IN>, const N: usize, const C: usize>(
    s: &ConvShape,
    img: &[f32],
    band: &Band,
    r: usize,
    zeros: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    crate::simd!(registers wide => {
        #[cfg(target_arch = "x86_64")]
        if wide {
            return rows_in::<V16, T, N, C>(s, img, band, r, zeros, cols, out);
        }
        rows_in::<V8, T, N, C>(s, img, band, r, zeros, cols, out)
    })
}

/// [`transform_row`] on registers of `R`.
#[inline(always)]
fn rows_in<R: Reg, T: Taps<N, T_IN>, const N: usize, const C: usize>(
    s: &ConvShape,
    img: &[f32],
    band: &Band,
    r: usize,
    zeros: &[f32],
    cols: &mut [f32],
    out: &mut [f32],
) {
    // A tile's first row and column lie `pad` before its output pixels.
    let (at, pad) = (Layout::new::<C>(), (N - T_OUT) / 2);
    let (image, ty) = band.row(r);
    let xi = &img[image * s.in_len()..][..s.in_len()];
    assert!(zeros.len() >= s.w * C);
    let lines: [*const f32; N] = std::array::from_fn(|i| match (ty * T_OUT + i).checked_sub(pad) {
        Some(y) if y < s.h => xi[y * s.w * C..][..s.w * C].as_ptr(),
        _ => zeros.as_ptr(),
    });
    // Column px of `cols` holds image column px - pad.
    let (tw, width) = (band.grid.1, T_OUT * band.grid.1 + 2 * pad);
    assert!(cols.len() >= T_IN * width * C && out.len() >= at.len(band.tiles()) && r < band.rows);
    // SAFETY: lines hold w pixels of C floats; cols holds 6 rows of `width` pixels; out
    // holds the band's tiles (r·tw + tx < tiles) `at.tile` floats apart, 36 positions each.
    unsafe {
        let cols = cols.as_mut_ptr();
        for px in 0..width {
            let (col, dst) = (px.wrapping_sub(pad), cols.add(px * C));
            for g in (0..C).step_by(R::WIDTH) {
                let z = match col < s.w {
                    true => R::read_each(lines, col * C + g),
                    false => [R::zero(); N],
                };
                for (i, t) in T::apply(z).into_iter().enumerate() {
                    t.write(dst.add(i * width * C + g));
                }
            }
        }
        for tx in 0..tw {
            let out = out.as_mut_ptr().add((r * tw + tx) * at.tile);
            for i in 0..T_IN {
                let src = cols.add((i * width + T_OUT * tx) * C);
                for g in (0..C).step_by(R::WIDTH) {
                    for (j, t) in T::apply(R::read_n::<N>(src.add(g), C)).into_iter().enumerate() {
                        t.write(out.add((i * T_IN + j) * at.pos + g));
                    }
                }
            }
        }
    }
}

/// `m[p] = v[p] · U[p]` for every position p, 6 tiles at a time. `u` holds each
/// position's `C × C` matrix in strips of 16 columns (`winograd::weight_transform`).
fn products<const C: usize>(tiles: usize, v: &[f32], u: &[f32], m: &mut [f32]) {
    crate::simd!(registers wide => {
        let at = Layout::new::<C>();
        let len = (tiles - 1) * at.tile + C;
        for p in 0..POS {
            let (vp, mp) = (&v[p * at.pos..][..len], &mut m[p * at.pos..][..len]);
            for strip in 0..C / 16 {
                let us = &u[p * C * C + strip * C * 16..][..C * 16];
                let mut t = 0;
                while t < tiles {
                    let (a, c, ld) = (&vp[t * at.tile..], &mut mp[t * at.tile + strip * 16..], at.tile);
                    #[cfg(target_arch = "x86_64")]
                    if wide {
                        t += wide_product::<C>(tiles - t, a, ld, us, c);
                        continue;
                    }
                    t += match tiles - t {
                        1 => product::<1, C>(a, ld, us, c),
                        2 => product::<2, C>(a, ld, us, c),
                        3 => product::<3, C>(a, ld, us, c),
                        4 => product::<4, C>(a, ld, us, c),
                        5 => product::<5, C>(a, ld, us, c),
                        _ => product::<6, C>(a, ld, us, c),
                    };
                }
            }
        }
    })
}

/// `Aᵀ m A` of the band's tile `t` into its output pixels (clipped at the image's edges):
/// stored as `store` says.
fn transform_output<const C: usize>(
    s: &ConvShape,
    band: &Band,
    t: usize,
    m: &[f32],
    out: SharedOut,
    store: Store<&[f32]>,
) {
    crate::simd!(registers wide => {
        #[cfg(target_arch = "x86_64")]
        if wide {
            return tile_out::<V16, C>(s, band, t, m, out, store);
        }
        tile_out::<V8, C>(s, band, t, m, out, store)
    })
}

/// [`transform_output`] on registers of `R`.
#[inline(always)]
fn tile_out<R: Reg, const C: usize>(
    s: &ConvShape,
    band: &Band,
    t: usize,
    m: &[f32],
    out: SharedOut,
    store: Store<&[f32]>,
) {
    let (img, ty) = band.row(t / band.grid.1);
    let (oy0, ox0) = (ty * T_OUT, t % band.grid.1 * T_OUT);
    let (height, width) = (T_OUT.min(s.h - oy0), T_OUT.min(s.w - ox0));
    let (first, at) = ((img * s.h + oy0) * s.w + ox0, Layout::new::<C>());
    assert!(m.len() >= at.len(band.tiles()) && t < band.tiles());
    let epi = store.epilogue();
    assert!(epi.is_none_or(|e| e.scale.len() >= C && e.shift.len() >= C));
    // SAFETY: m holds the band's tiles, 36 positions each (`Layout`); the tile's output
    // rows (r < height) hold `width` pixels inside image img, written by this band only;
    // the residual, if any, is as long as the output (asserted by `forward`).
    unsafe {
        for g in (0..C).step_by(R::WIDTH) {
            // Aᵀ down each of the six columns, then A along each of the four rows.
            let m = m.as_ptr().add(t * at.tile + g);
            let column = |j: usize| OutputTaps::apply(R::read_n::<T_IN>(m.add(j * at.pos), T_IN * at.pos));
            let c = [column(0), column(1), column(2), column(3), column(4), column(5)];
            let affine = epi.map(|e| (R::read(e.scale.as_ptr().add(g)), R::read(e.shift.as_ptr().add(g))));
            #[allow(clippy::needless_range_loop)] // r picks row r of all six columns
            for r in 0..height {
                let row = OutputTaps::apply([c[0][r], c[1][r], c[2][r], c[3][r], c[4][r], c[5][r]]);
                let offset = (first + r * s.w) * C + g;
                for (q, &o) in row.iter().enumerate().take(width) {
                    let dst = out.base().add(offset + q * C);
                    let value = match (store, affine) {
                        (Store::Accumulate, _) => R::read(dst) + o,
                        (Store::Finish(e), Some((scale, shift))) => {
                            let residual = match e.residual {
                                Residual::None => None,
                                Residual::Separate(res) => Some(R::read(res.as_ptr().add(offset + q * C))),
                                Residual::InOutput => Some(R::read(dst)),
                            };
                            o.finish(scale, shift, residual, e.relu)
                        }
                        _ => o,
                    };
                    value.write(dst);
                }
            }
        }
    }
}

/// [`product`] on AVX-512 for up to 12 rows (`wide` copies only): one register per row,
/// each sum in the same order as `product`'s. Returns the rows done.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn wide_product<const K: usize>(rows: usize, a: &[f32], ld: usize, b: &[f32], c: &mut [f32]) -> usize {
    #[inline(always)]
    fn rows_of<const R: usize, const K: usize>(a: &[f32], ld: usize, b: &[f32], c: &mut [f32]) -> usize {
        assert!(a.len() >= (R - 1) * ld + K && b.len() >= K * 16 && c.len() >= (R - 1) * ld + 16);
        // SAFETY: the assert bounds every read and write below.
        unsafe {
            let mut acc = [V16::zero(); R];
            for k in 0..K {
                let bk = V16::read(b.as_ptr().add(k * 16));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = V16::splat(*a.get_unchecked(r * ld + k)).mul_add(bk, *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                acc.write(c.as_mut_ptr().add(r * ld));
            }
        }
        R
    }
    match rows {
        1 => rows_of::<1, K>(a, ld, b, c),
        2 => rows_of::<2, K>(a, ld, b, c),
        3 => rows_of::<3, K>(a, ld, b, c),
        4 => rows_of::<4, K>(a, ld, b, c),
        5 => rows_of::<5, K>(a, ld, b, c),
        6 => rows_of::<6, K>(a, ld, b, c),
        7 => rows_of::<7, K>(a, ld, b, c),
        8 => rows_of::<8, K>(a, ld, b, c),
        9 => rows_of::<9, K>(a, ld, b, c),
        10 => rows_of::<10, K>(a, ld, b, c),
        11 => rows_of::<11, K>(a, ld, b, c),
        _ => rows_of::<12, K>(a, ld, b, c),
    }
}

/// `c[r][0..16] = Σ_k a[r·ld + k] · b[k][0..16]` for R rows of A and of C `ld` floats
/// apart: R × 16 sums in 2R AVX registers. Returns R.
#[inline(always)]
fn product<const R: usize, const K: usize>(a: &[f32], ld: usize, b: &[f32], c: &mut [f32]) -> usize {
    assert!(a.len() >= (R - 1) * ld + K && b.len() >= K * 16 && c.len() >= (R - 1) * ld + 16);
    // SAFETY: the assert bounds every read and write below.
    unsafe {
        let mut acc = [[V8::zero(); 2]; R];
        for k in 0..K {
            let (b0, b1) = (V8::read(b.as_ptr().add(k * 16)), V8::read(b.as_ptr().add(k * 16 + 8)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let v = V8::splat(*a.get_unchecked(r * ld + k));
                acc[0] = v.mul_add(b0, acc[0]);
                acc[1] = v.mul_add(b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            acc[0].write(c.as_mut_ptr().add(r * ld));
            acc[1].write(c.as_mut_ptr().add(r * ld + 8));
        }
    }
    R
}
