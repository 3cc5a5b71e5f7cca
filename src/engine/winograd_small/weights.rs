//! The weight gradient of a `winograd_small` layer, in the transformed domain:
//! `dU[p] = Σ_tiles (A dY Aᵀ)[p]ᵀ · (Bᵀ d B)[p]`, then `dw = Gᵀ dU G`. Per band of tile
//! rows as the forward pass: both transforms of the band, then its 36 outer-product sums.

use super::{Band, Bufs, Layout, V8, transform_row};
use crate::engine::conv::ConvShape;
use crate::engine::winograd::{self, GradientTaps, InputTaps, POS, T_IN, T_OUT};
use crate::engine::{ConvAlgo, Scratch, Workspace, ensure_len, split_range, sum_groups};

/// Tiles per band: the sums over a band's tiles run in registers, and each band reads
/// and writes dU (36·c² floats) once.
const BAND_TILES: usize = 32;
/// Bands are taken in fixed groups, each with its own partial dU (36·c² floats), added
/// in order (`sum_groups`): at most 16, and at most 2 MB of partials beyond 4 groups.
/// Zeroing and adding 14 partials of 64 channels (8 MB) took a quarter of the time.
fn groups(bands: usize, c: usize) -> usize {
    ((1 << 19) / (POS * c * c)).clamp(4, 16).min(bands)
}

/// `dw = Σ dyᵀ·col(x)` (overwritten) for a layer `winograd_small` applies to.
pub fn backward_weights(s: &ConvShape, n: usize, x: &[f32], dy: &[f32], dw: &mut [f32], ws: &mut Workspace) {
    assert!(super::applies(s, ConvAlgo::Winograd), "winograd_small: unsupported shape {s:?}");
    assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len() && dw.len() == s.weight_len());
    let (threads, partials) = (&mut ws.threads, &mut ws.partials);
    let du = match s.c_in {
        16 => transformed::<16>(s, n, x, dy, threads, partials),
        32 => transformed::<32>(s, n, x, dy, threads, partials),
        64 => transformed::<64>(s, n, x, dy, threads, partials),
        _ => transformed::<128>(s, n, x, dy, threads, partials),
    };
    winograd::weights_from_transformed(s, du, dw);
}

/// `dU[p][c_out][c_in]`, summed over the batch's tiles.
fn transformed<'a, const C: usize>(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    dy: &[f32],
    threads: &mut [Scratch],
    partials: &'a mut Vec<f32>,
) -> &'a [f32] {
    let grid = (s.h.div_ceil(T_OUT), s.w.div_ceil(T_OUT));
    let rows = n * grid.0;
    let per_band = BAND_TILES.div_ceil(grid.1);
    let bands = rows.div_ceil(per_band);
    let groups = groups(bands, C);
    sum_groups(threads, partials, POS * C * C, groups, |scr, range, du| {
        crate::simd!(registers {
            let Bufs { zeros, cols, v, m } = &mut scr.winograd_small;
            let at = Layout::new::<C>();
            ensure_len(zeros, s.w * C);
            ensure_len(cols, T_IN * (T_OUT * grid.1 + 2) * C);
            ensure_len(v, at.len(per_band * grid.1));
            ensure_len(m, at.len(per_band * grid.1));
            for index in range.flat_map(|group| split_range(bands, groups, group)) {
                let first = index * per_band;
                let band = Band { grid, first, rows: per_band.min(rows - first) };
                for r in 0..band.rows {
                    transform_row::<InputTaps, T_IN, C>(s, x, &band, r, zeros, cols, v);
                    transform_row::<GradientTaps, T_OUT, C>(s, dy, &band, r, zeros, cols, m);
                }
                outer_products::<C>(band.tiles(), m, v, du);
            }
        })
    })
}

/// `du[p] += Σ_tiles m[tile][p]ᵀ · v[tile][p]` for every position p: blocks of 6 output
/// channels × 16 input channels in 12 AVX registers, summed over the band's tiles.
fn outer_products<const C: usize>(tiles: usize, m: &[f32], v: &[f32], du: &mut [f32]) {
    crate::simd!(registers wide => {
        let at = Layout::new::<C>();
        assert!(tiles > 0 && m.len() >= at.len(tiles) && v.len() >= at.len(tiles) && du.len() >= POS * C * C);
        for p in 0..POS {
            // AVX-512 holds 12 rows of 16 in its 32 registers.
            let rows = if wide { 12 } else { 6 };
            for co in (0..C).step_by(rows) {
                for ci in (0..C).step_by(16) {
                    // SAFETY: rows co..co+R < C of du[p] and columns ci..ci+16 ≤ C, and the
                    // tiles' positions p, lie inside the slices (asserted above).
                    unsafe {
                        let (m, v) = (m.as_ptr().add(p * at.pos + co), v.as_ptr().add(p * at.pos + ci));
                        let du = du.as_mut_ptr().add((p * C + co) * C + ci);
                        #[cfg(target_arch = "x86_64")]
                        if wide {
                            wide_block::<C>(C - co, tiles, at.tile, m, v, du);
                            continue;
                        }
                        match C - co {
                            1 => block::<1, C>(tiles, at.tile, m, v, du),
                            2 => block::<2, C>(tiles, at.tile, m, v, du),
                            3 => block::<3, C>(tiles, at.tile, m, v, du),
                            4 => block::<4, C>(tiles, at.tile, m, v, du),
                            5 => block::<5, C>(tiles, at.tile, m, v, du),
                            _ => block::<6, C>(tiles, at.tile, m, v, du),
                        }
                    }
                }
            }
        }
    })
}

/// [`block`] on AVX-512 for up to 12 rows (`wide` copies only), each sum in `block`'s
/// order. SAFETY: as `block`'s, for min(rows, 12) rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wide_block<const C: usize>(rows: usize, tiles: usize, ld: usize, m: *const f32, v: *const f32, du: *mut f32) {
    #[inline(always)]
    unsafe fn rows_of<const R: usize, const C: usize>(
        tiles: usize,
        ld: usize,
        m: *const f32,
        v: *const f32,
        du: *mut f32,
    ) {
        use crate::engine::simd::V16;
        // SAFETY: the caller's.
        unsafe {
            let mut acc: [V16; R] = std::array::from_fn(|r| V16::read(du.add(r * C)));
            for t in 0..tiles {
                let vt = V16::read(v.add(t * ld));
                for (r, acc) in acc.iter_mut().enumerate() {
                    *acc = V16::splat(*m.add(t * ld + r)).mul_add(vt, *acc);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                acc.write(du.add(r * C));
            }
        }
    }
    // SAFETY: the caller's.
    unsafe {
        match rows {
            1 => rows_of::<1, C>(tiles, ld, m, v, du),
            2 => rows_of::<2, C>(tiles, ld, m, v, du),
            3 => rows_of::<3, C>(tiles, ld, m, v, du),
            4 => rows_of::<4, C>(tiles, ld, m, v, du),
            5 => rows_of::<5, C>(tiles, ld, m, v, du),
            6 => rows_of::<6, C>(tiles, ld, m, v, du),
            7 => rows_of::<7, C>(tiles, ld, m, v, du),
            8 => rows_of::<8, C>(tiles, ld, m, v, du),
            9 => rows_of::<9, C>(tiles, ld, m, v, du),
            10 => rows_of::<10, C>(tiles, ld, m, v, du),
            11 => rows_of::<11, C>(tiles, ld, m, v, du),
            _ => rows_of::<12, C>(tiles, ld, m, v, du),
        }
    }
}

/// `du[r][0..16] += Σ_t m[t·ld + r] · v[t·ld..][0..16]` for R rows of du (C floats apart).
/// SAFETY: `tiles` tiles `ld` floats apart are readable from m (R floats) and v (16), and
/// R rows of 16 floats writable in du.
#[inline(always)]
unsafe fn block<const R: usize, const C: usize>(tiles: usize, ld: usize, m: *const f32, v: *const f32, du: *mut f32) {
    // SAFETY: the caller's.
    unsafe {
        let mut acc = [[V8::zero(); 2]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            *acc = [V8::read(du.add(r * C)), V8::read(du.add(r * C + 8))];
        }
        for t in 0..tiles {
            let (b0, b1) = (V8::read(v.add(t * ld)), V8::read(v.add(t * ld + 8)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = V8::splat(*m.add(t * ld + r));
                acc[0] = a.mul_add(b0, acc[0]);
                acc[1] = a.mul_add(b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            acc[0].write(du.add(r * C));
            acc[1].write(du.add(r * C + 8));
        }
    }
}
