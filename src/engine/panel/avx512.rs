//! The panel product's register kernel on AVX-512: a 16-column strip is one 512-bit
//! register, and its 32 registers hold 12 rows of C, two of `interleave`'s groups of 6,
//! by two strips, where AVX2's kernel holds 6 rows of one strip. Each step of k loads two
//! rows of B and broadcasts 12 values of A (folded into the multiply-adds) for 24
//! multiply-adds: four times the work per load of the AVX2 kernel's 12 multiply-adds, 2
//! loads and 6 broadcasts.
//!
//! Each value of C is summed over k in the same order, by the same fused multiply-adds, as
//! in the AVX2 kernel, and the epilogue is the same arithmetic: both give the same bits.

use super::{MR, Tail, ahead_row, prefetch_rows};
use crate::engine::simd::{V16, prefetch};

/// Rows of C in registers: two groups of `MR`.
const ROWS: usize = 2 * MR;

/// [`super::row_groups`] on AVX-512: `S` (1 or 2) strips of C for all m rows, 12 rows at a
/// time. With two strips, strip 1's B lies `b_apart` floats after strip 0's, and its
/// columns of C (and of the tail) 16 floats after strip 0's.
///
/// Two strips at once hold 24 sums in registers: each step of k loads 2 rows of B and
/// broadcasts 12 values of A for 24 multiply-adds, where one strip takes 13 loads for 12
/// (the cores load twice per cycle and multiply-add twice, so one strip was bound by its
/// loads), and each block of A is read once per two strips.
///
/// # Safety
/// As `super::row_groups`, for each strip; and the calling code is compiled with AVX-512 F
/// (an `isa::run_registers` copy whose flag is set).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn row_groups<const INTERLEAVED: bool, const S: usize>(
    c: *mut f32,
    ldc: usize,
    m: usize,
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    b_apart: usize,
    next_b: *const f32,
    accumulate: bool,
    tail: Option<Tail>,
) {
    let ahead_row = ahead_row(m, ROWS, next_b);
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(ROWS);
        // SAFETY: rows i..i+rows lie inside the caller's m rows; i is a multiple of 6, so
        // an interleaved block starts at a group, i·kc floats on.
        unsafe {
            let a = if INTERLEAVED { a.add(i * kc) } else { a.add(i * lda) };
            let c = c.add(i * ldc);
            let tail = tail.map(|t| t.rows_from(i * ldc));
            macro_rules! call {
                ($r:literal, $ahead:literal) => {
                    match accumulate {
                        false => {
                            strips::<$r, S, false, INTERLEAVED, $ahead>(a, lda, kc, b, b_apart, next_b, c, ldc, tail)
                        }
                        true => {
                            strips::<$r, S, true, INTERLEAVED, $ahead>(a, lda, kc, b, b_apart, next_b, c, ldc, tail)
                        }
                    }
                };
            }
            match rows {
                12 if i == ahead_row => call!(12, true),
                12 => call!(12, false),
                11 => call!(11, false),
                10 => call!(10, false),
                9 => call!(9, false),
                8 => call!(8, false),
                7 => call!(7, false),
                6 => call!(6, false),
                5 => call!(5, false),
                4 => call!(4, false),
                3 => call!(3, false),
                2 => call!(2, false),
                _ => call!(1, false),
            }
        }
        i += rows;
    }
}

/// `c[r][16s..16s+16] (+)= Σ_{p<kc} A[r][p] · b_s[16p..][0..16]` for the `R` ≤ 12 rows r and
/// the `S` strips s (`b_s = b + s·b_apart`), with `A[r][p]` at `a[r*lda + p]`, or when
/// `INTERLEAVED` in groups of 6 (`a[6p + r]`, then `a[6kc + 6p + r-6]`); otherwise as
/// `super::strip`.
///
/// # Safety
/// As `super::strip`, for R rows and each of the S strips (the second group's rows, when
/// interleaved, 6·kc floats after the first's).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strips<const R: usize, const S: usize, const ACC: bool, const INTERLEAVED: bool, const AHEAD: bool>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    b_apart: usize,
    next_b: *const f32,
    c: *mut f32,
    ldc: usize,
    tail: Option<Tail>,
) {
    // SAFETY: the caller's contract bounds every access; AVX-512 F is enabled (caller).
    unsafe {
        for s in 0..S {
            prefetch_rows(R, c.add(16 * s), ldc, tail.map(|t| t.columns_from(16 * s)));
        }
        let second = a.add(MR * kc);
        let mut acc = [[V16::zero(); S]; R];
        for p in 0..kc {
            if AHEAD {
                // The next call's strips: with pairs, two (where the next is a single
                // strip, the second is a hint at some other line, which costs nothing).
                for s in 0..S {
                    prefetch(next_b.wrapping_add(s * b_apart + p * 16));
                }
            }
            let bv: [V16; S] = std::array::from_fn(|s| V16::read(b.add(s * b_apart + p * 16)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = V16::splat(match INTERLEAVED {
                    true if r < MR => *a.add(MR * p + r),
                    true => *second.add(MR * p + r - MR),
                    false => *a.add(r * lda + p),
                });
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = x.mul_add(bv, *acc);
                }
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            for (s, &sum) in acc.iter().enumerate() {
                let c = c.add(r * ldc + 16 * s);
                let mut v = if ACC { V16::read(c) + sum } else { sum };
                if let Some(t) = tail.map(|t| t.columns_from(16 * s)) {
                    let residual = (!t.residual.is_null()).then(|| V16::read(t.residual.add(r * ldc)));
                    v = v.finish(V16::read(t.scale), V16::read(t.shift), residual, t.relu);
                }
                v.write(c);
            }
        }
    }
}
