//! The panel product's register kernel on AVX-512: a 16-column strip is one 512-bit
//! register, and its 32 registers hold 12 rows of C, two of `interleave`'s groups of 6,
//! where AVX2's kernel holds 6. Each step of k loads one row of B and broadcasts 12 values
//! of A (folded into the multiply-adds) for 12 multiply-adds: twice the work per load of
//! the AVX2 kernel's 12 multiply-adds, 2 loads and 6 broadcasts.
//!
//! Each value of C is summed over k in the same order, by the same fused multiply-adds, as
//! in the AVX2 kernel, and the epilogue is the same arithmetic: both give the same bits.

use super::{MR, Tail, ahead_row, prefetch_rows};
use crate::engine::simd::{V16, prefetch};

/// Rows of C in registers: two groups of `MR`.
const ROWS: usize = 2 * MR;

/// [`super::row_groups`] on AVX-512: one strip of C for all m rows, 12 rows at a time.
///
/// # Safety
/// As `super::row_groups`; and the calling code is compiled with AVX-512 F (an
/// `isa::run_registers` copy whose flag is set).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
pub(super) unsafe fn row_groups<const INTERLEAVED: bool>(
    c: *mut f32,
    ldc: usize,
    m: usize,
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
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
                        false => strip::<$r, false, INTERLEAVED, $ahead>(a, lda, kc, b, next_b, c, ldc, tail),
                        true => strip::<$r, true, INTERLEAVED, $ahead>(a, lda, kc, b, next_b, c, ldc, tail),
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

/// `c[r][0..16] (+)= Σ_{p<kc} A[r][p] · b[16p..][0..16]` for the `R` ≤ 12 rows r, with
/// `A[r][p]` at `a[r*lda + p]`, or when `INTERLEAVED` in groups of 6 (`a[6p + r]`, then
/// `a[6kc + 6p + r-6]`); otherwise as `super::strip`.
///
/// # Safety
/// As `super::strip`, for R rows (the second group's rows, when interleaved, 6·kc floats
/// after the first's).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn strip<const R: usize, const ACC: bool, const INTERLEAVED: bool, const AHEAD: bool>(
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    next_b: *const f32,
    c: *mut f32,
    ldc: usize,
    tail: Option<Tail>,
) {
    // SAFETY: the caller's contract bounds every access; AVX-512 F is enabled (caller).
    unsafe {
        prefetch_rows(R, c, ldc, tail);
        let second = a.add(MR * kc);
        let mut acc = [V16::zero(); R];
        for p in 0..kc {
            if AHEAD {
                prefetch(next_b.wrapping_add(p * 16));
            }
            let bv = V16::read(b.add(p * 16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = match INTERLEAVED {
                    true if r < MR => *a.add(MR * p + r),
                    true => *second.add(MR * p + r - MR),
                    false => *a.add(r * lda + p),
                };
                *acc = V16::splat(x).mul_add(bv, *acc);
            }
        }
        for (r, &sum) in acc.iter().enumerate() {
            let c = c.add(r * ldc);
            let mut v = if ACC { V16::read(c) + sum } else { sum };
            if let Some(t) = tail {
                let residual = (!t.residual.is_null()).then(|| V16::read(t.residual.add(r * ldc)));
                v = v.finish(V16::read(t.scale), V16::read(t.shift), residual, t.relu);
            }
            v.write(c);
        }
    }
}
