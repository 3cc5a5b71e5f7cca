//! Direct 3×3 stride-1 pad-1 convolution for layers with few input channels (CIFAR's
//! 3-channel stem; layers of 16 channels in and out now run `winograd_small`), NHWC,
//! with AVX2 register-blocked microkernels.
//!
//! At few channels im2col+GEMM spends as long copying short kernel rows as multiplying
//! (k = 27 or 144 is also short for a GEMM). Here each image is copied once into a zero-bordered buffer of
//! `(h+2)·(w+2)` pixels; in that buffer, tap (ky, kx) of output pixel `q = y·(w+2) + x` is
//! input pixel `q + ky·(w+2) + kx` for every q. The two pad columns of each row are
//! computed as well and thrown away (2/(w+2) extra work), which gives the microkernels one
//! uniform run of pixels with no edge cases:
//! - forward: 6 output pixels × 16 output channels in 12 AVX registers, summed over the
//!   9·c_in (tap, channel) pairs: two weight loads and six broadcasts per 12 FMAs;
//! - weight gradient: 6 (tap, channel) rows × 16 output channels, summed over pixels.
//!
//! The input gradient of a stride-1 convolution is the forward kernel on `dy` with the
//! flipped kernel (`conv::with_flipped_kernel`), accumulated into `dx`.

use super::conv::ConvShape;
use super::epilogue::{Residual, Store};
use super::{ConvAlgo, SharedOut, Workspace, ensure_len, for_each_item, sum_groups};

/// Output pixels per microkernel call.
const PIXELS: usize = 6;
/// Output channels per microkernel call: two AVX registers.
const CHANNELS: usize = 16;
/// (Tap, channel) rows per weight-gradient call: 12 accumulators, as in the forward.
const ROWS: usize = 6;

/// Whether a convolution is done this way. `Auto`: 3×3 stride-1 pad-1 layers with fewer
/// than 32 input channels, output channels in whole blocks of 16, and an image per
/// thread (`examples/conv_algos.rs` measures it against im2col and Winograd).
pub fn applies(s: &ConvShape, n: usize, threads: usize, algo: ConvAlgo) -> bool {
    let shape = cfg!(target_arch = "x86_64")
        && super::simd::available()
        && s.kernel == 3
        && s.stride == 1
        && s.pad == 1
        && s.c_out.is_multiple_of(CHANNELS);
    match algo {
        ConvAlgo::Im2col | ConvAlgo::Winograd => false,
        ConvAlgo::Direct => shape,
        ConvAlgo::Auto => shape && s.c_in < 32 && n >= threads,
    }
}

/// Geometry of the zero-bordered image buffer.
struct Padded {
    /// Pixels per buffer row (`w + 2`).
    row: usize,
    /// Pixels computed per image: `h` rows of `row`, pad columns included.
    run: usize,
    /// Buffer length in floats, with slack for the last microkernel's reads.
    len: usize,
}

impl Padded {
    fn new(s: &ConvShape) -> Self {
        let row = s.w + 2;
        let run = s.h * row;
        // The last call reads up to pixel run.next_multiple_of(6) - 1 + 2·row + 2.
        let pixels = run.next_multiple_of(PIXELS) + 2 * row + 2;
        Padded { row, run, len: pixels * s.c_in }
    }

    /// Offset in pixels of tap `tap` (row-major over the 3×3 kernel).
    fn tap(&self, tap: usize) -> usize {
        (tap / 3) * self.row + tap % 3
    }
}

/// Copies image `img` into `buf` with a zero border of one pixel (and zero slack after
/// the last row); only the border is cleared, the copy overwrites the rest.
fn pad_image(s: &ConvShape, p: &Padded, img: &[f32], buf: &mut Vec<f32>) {
    crate::simd!(registers {
        ensure_len(buf, p.len);
        let buf = &mut buf[..p.len];
        let (c, row) = (s.c_in, p.row * s.c_in);
        buf[..row + c].fill(0.0); // top row and the first row's left pad
        for (y, src) in img.chunks_exact(s.w * c).enumerate() {
            let dst = ((y + 1) * p.row + 1) * c;
            buf[dst..dst + s.w * c].copy_from_slice(src);
            // This row's right pad and the next row's left pad are adjacent.
            buf[dst + s.w * c..dst + s.w * c + 2 * c].fill(0.0);
        }
        buf[(s.h + 1) * row + c..].fill(0.0); // bottom row after its left pad, and the slack
    })
}

/// `conv(x, w)` into `y` as `store` says.
pub fn forward(s: &ConvShape, n: usize, x: &[f32], w: &[f32], y: &mut [f32], store: Store<&[f32]>, ws: &mut Workspace) {
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len() && w.len() == s.weight_len());
    debug_assert!(applies(s, n, 1, ConvAlgo::Direct));
    let covered = store.epilogue().is_none_or(|e| e.residual.covers(n * s.out_len()));
    assert!(covered, "direct conv: residual too short");
    let p = Padded::new(s);
    // Weights as [block of 16 outputs][tap][c_in][16], so each microkernel step loads
    // one contiguous 16-float row.
    let wt = &mut ws.direct_weights;
    ensure_len(wt, s.weight_len());
    let (ci, co) = (s.c_in, s.c_out);
    for o in 0..co {
        for j in 0..9 * ci {
            wt[((o / CHANNELS) * 9 * ci + j) * CHANNELS + o % CHANNELS] = w[o * 9 * ci + j];
        }
    }
    let wt = &ws.direct_weights[..s.weight_len()];
    // Each image's output is written by the worker that takes the image.
    let out = SharedOut(y[..n * s.out_len()].as_mut_ptr());
    for_each_item(&mut ws.threads, n, |scr, img| {
        crate::simd!(registers {
            pad_image(s, &p, &x[img * s.in_len()..(img + 1) * s.in_len()], &mut scr.col);
            let xp = &scr.col[..p.len];
            let first_pixel = img * s.out_pixels();
            for block in 0..co / CHANNELS {
                let wb = &wt[block * 9 * ci * CHANNELS..(block + 1) * 9 * ci * CHANNELS];
                let c0 = block * CHANNELS;
                let store = store.for_block(first_pixel, co, c0..c0 + CHANNELS);
                for q0 in (0..p.run).step_by(PIXELS) {
                    // Each pixel's 16 outputs (and residual), or None for a pad column. One
                    // division per call: the six pixels' positions follow by counting.
                    let mut tile = TileOut { dst: Default::default(), residual: [None; PIXELS], store };
                    let (mut oy, mut ox) = (q0 / p.row, q0 % p.row);
                    for i in 0..PIXELS {
                        if oy < s.h && ox < s.w {
                            let at = (oy * s.w + ox) * co;
                            // SAFETY: this pixel's channels lie in image `img` (oy < h,
                            // ox < w), which only the worker that took it writes.
                            let dst = unsafe { out.base().add(first_pixel * co + at + c0) };
                            tile.dst[i] = Some(dst);
                            tile.residual[i] = match store.epilogue().map(|f| f.residual) {
                                Some(Residual::Separate(r)) => r[at..].first_chunk::<CHANNELS>().map(|r| r.as_ptr()),
                                // Read from the output just before the result replaces it.
                                Some(Residual::InOutput) => Some(dst.cast_const()),
                                _ => None,
                            };
                        }
                        ox += 1;
                        if ox == p.row {
                            (oy, ox) = (oy + 1, 0);
                        }
                    }
                    // The kernel is inlined: with the channel count a constant, its
                    // broadcast and weight offsets become immediates.
                    match ci {
                        16 => kernels::forward_6x16(xp, q0, 16, &p, wb, tile),
                        3 => kernels::forward_6x16(xp, q0, 3, &p, wb, tile),
                        _ => kernels::forward_6x16(xp, q0, ci, &p, wb, tile),
                    }
                }
            }
        })
    });
}

/// Where one microkernel call's six output pixels go, 16 channels each. The kernel adds
/// or stores its sums there and applies the epilogue in registers. (Writing the sums to
/// a tile on the stack, then copying them out and applying the epilogue in a second loop,
/// made ResNet-20's inference 2–4% slower: in-process A/B, median ratios 1.036, 0.994,
/// 1.040.) Whoever builds one guarantees that each pointer reaches 16 floats, and that
/// no other thread touches a pixel's outputs.
struct TileOut<'a> {
    /// Each pixel's 16 outputs; None for a pad column, whose sums are dropped.
    dst: [Option<*mut f32>; PIXELS],
    /// Each pixel's 16 residual values, where the epilogue has one (its outputs' own for
    /// a residual in the output).
    residual: [Option<*const f32>; PIXELS],
    /// How the sums are stored; an epilogue cut to these 16 channels (its residual is
    /// read through `residual`).
    store: Store<&'a [f32]>,
}

/// `dw = Σ dyᵀ·col(x)` (overwritten), OHWI like the weights.
pub fn backward_weights(s: &ConvShape, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], ws: &mut Workspace) {
    assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len() && dw.len() == s.weight_len());
    let p = Padded::new(s);
    let (ci, co) = (s.c_in, s.c_out);
    let rows = 9 * ci;
    // Partial sums as [tap·c_in + c][c_out].
    let sum = sum_groups(&mut ws.threads, &mut ws.partials, rows * co, n, |scr, images, part| {
        crate::simd!(registers {
            for img in images {
                pad_image(s, &p, &x[img * s.in_len()..(img + 1) * s.in_len()], &mut scr.col);
                let xp = &scr.col[..p.len];
                let dyi = &dy[img * s.out_len()..(img + 1) * s.out_len()];
                for block in 0..co / CHANNELS {
                    let dyb = &dyi[block * CHANNELS..];
                    let part = Part { sums: &mut *part, co, block };
                    // (Four rows of one tap per call, sharing a base pointer, ran about 8%
                    // slower on the 16-channel layer than six at any offsets.) With the
                    // channel count a constant, the rows' offsets need no division.
                    match ci {
                        16 => weight_rows(xp, 16, s, &p, dyb, part),
                        c => weight_rows(xp, c, s, &p, dyb, part),
                    }
                }
            }
        })
    });
    // Transpose [tap·c_in + c][o] to OHWI [o][tap·c_in + c].
    for (j, row) in sum.chunks_exact(co).enumerate() {
        for (o, v) in row.iter().enumerate() {
            dw[o * rows + j] = *v;
        }
    }
}

/// Weight-gradient partial sums, [tap·c_in + c][c_out], and the block of 16
/// output channels being summed.
struct Part<'a> {
    sums: &'a mut [f32],
    co: usize,
    block: usize,
}

/// Adds one image's weight gradient for one block of output channels to `part`, `ROWS`
/// (tap, channel) rows per microkernel call; a short last group repeats its first row
/// and drops those sums.
#[inline(always)]
fn weight_rows(xp: &[f32], ci: usize, s: &ConvShape, p: &Padded, dy: &[f32], part: Part) {
    let rows = 9 * ci;
    let mut tile = [0f32; PIXELS * CHANNELS];
    for j0 in (0..rows).step_by(ROWS) {
        let offs: [usize; ROWS] = std::array::from_fn(|i| {
            let j = if j0 + i < rows { j0 + i } else { j0 };
            p.tap(j / ci) * ci + j % ci
        });
        kernels::weights(xp, &offs, ci, s, p, dy, part.co, &mut tile);
        for (i, acc) in tile.chunks_exact(CHANNELS).take(ROWS.min(rows - j0)).enumerate() {
            let dst = &mut part.sums[(j0 + i) * part.co + part.block * CHANNELS..][..CHANNELS];
            dst.iter_mut().zip(acc).for_each(|(d, a)| *d += a);
        }
    }
}

/// The register kernels, on `simd::V8`: an AVX register where the build has AVX2. `applies`
/// keeps other builds on im2col + the `gemm` crate, so the portable form is never timed.
mod kernels {
    use super::{CHANNELS, PIXELS, Padded, ROWS, Store, TileOut};
    use crate::engine::conv::ConvShape;
    use crate::engine::simd::V8;

    /// `Σ_(tap, c) xp[q0 + i + tap offset][c] · w[tap][c][·]` for the six pixels
    /// `q0..q0+6` of the padded image `xp` and one block of 16 output channels, written to
    /// `out`.
    #[inline(always)]
    pub fn forward_6x16(xp: &[f32], q0: usize, ci: usize, p: &Padded, w: &[f32], out: TileOut) {
        assert!((q0 + PIXELS - 1 + p.tap(8) + 1) * ci <= xp.len() && w.len() >= 9 * ci * CHANNELS);
        if let Some(f) = out.store.epilogue() {
            assert!(f.scale.len() >= CHANNELS && f.shift.len() >= CHANNELS);
        }
        let mut acc = [V8::zero(); 2 * PIXELS];
        for tap in 0..9 {
            // SAFETY: the assert above bounds every read: pixels q0..q0+6 plus the tap
            // offset lie in the buffer, and tap·c_in + c < 9·c_in rows of 16 weights.
            unsafe {
                let x = xp.as_ptr().add((q0 + p.tap(tap)) * ci);
                let wr = w.as_ptr().add(tap * ci * CHANNELS);
                for c in 0..ci {
                    let w0 = V8::read(wr.add(c * CHANNELS));
                    let w1 = V8::read(wr.add(c * CHANNELS + 8));
                    for i in 0..PIXELS {
                        let v = V8::splat(*x.add(i * ci + c));
                        acc[2 * i] = v.mul_add(w0, acc[2 * i]);
                        acc[2 * i + 1] = v.mul_add(w1, acc[2 * i + 1]);
                    }
                }
            }
        }
        for i in 0..PIXELS {
            let Some(dst) = out.dst[i] else { continue };
            for h in 0..2 {
                // SAFETY: 8 floats at 8·h lie inside each pixel's 16 (dst and residual, as
                // `TileOut` promises; the epilogue's scale and shift, asserted above). The
                // residual, which may be dst itself, is read before the store.
                unsafe {
                    let mut v = acc[2 * i + h];
                    match out.store {
                        Store::Overwrite => {}
                        Store::Accumulate => v = V8::read(dst.add(8 * h)) + v,
                        Store::Finish(f) => {
                            let (scale, shift) =
                                (V8::read(f.scale.as_ptr().add(8 * h)), V8::read(f.shift.as_ptr().add(8 * h)));
                            let residual = out.residual[i].map(|r| V8::read(r.add(8 * h)));
                            v = v.finish(scale, shift, residual, f.relu);
                        }
                    }
                    v.write(dst.add(8 * h));
                }
            }
        }
    }

    /// `tile[i][·] = Σ_pixels xp[pixel's input + offs[i]] · dy[pixel][·]` over the valid
    /// output pixels of one image, for `ROWS` (tap, channel) rows and 16 output channels.
    /// `dy` starts at the block's first channel; its pixels are `co` floats apart.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    pub fn weights(
        xp: &[f32],
        offs: &[usize; ROWS],
        ci: usize,
        s: &ConvShape,
        p: &Padded,
        dy: &[f32],
        co: usize,
        tile: &mut [f32; PIXELS * CHANNELS],
    ) {
        let max_off = offs.iter().max().copied().unwrap_or(0);
        assert!(ROWS <= PIXELS && (p.run - 1) * ci + max_off < xp.len() && (s.h * s.w - 1) * co + CHANNELS <= dy.len());
        let mut acc = [V8::zero(); 2 * PIXELS];
        for oy in 0..s.h {
            // SAFETY: pixels (oy, 0..w) lie below `run` in xp, so with every offset the
            // reads stay inside it; they lie inside dy with 16 channels (assert above).
            unsafe {
                let mut x = xp.as_ptr().add(oy * p.row * ci);
                let mut d = dy.as_ptr().add(oy * s.w * co);
                for _ in 0..s.w {
                    let (d0, d1) = (V8::read(d), V8::read(d.add(8)));
                    for (i, off) in offs.iter().enumerate() {
                        let v = V8::splat(*x.add(*off));
                        acc[2 * i] = v.mul_add(d0, acc[2 * i]);
                        acc[2 * i + 1] = v.mul_add(d1, acc[2 * i + 1]);
                    }
                    x = x.add(ci);
                    d = d.add(co);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            // SAFETY: 8 floats at 8·i < 96 lie inside the tile.
            unsafe { a.write(tile.as_mut_ptr().add(8 * i)) };
        }
    }
}
