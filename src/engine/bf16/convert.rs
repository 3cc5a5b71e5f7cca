//! Rounding f32 operands to bf16 in the layouts of the module comment. With AMX a GEMM
//! costs about 0.1 cycle per value of A at 64 columns, so the rounding must cost no more:
//! on the AVX-512 paths it runs on `vcvtne2ps2bf16`, 32 values per instruction (scalar
//! rounding was a third of ResNet-50's bf16 training step). The emulated path rounds
//! one value at a time with [`super::round`], the same rounding (`vcvtne2ps2bf16` also
//! rounds to nearest even; it flushes subnormal inputs to zero, which the scalar code
//! keeps: a difference below 2⁻¹²⁶).

use super::{Path, round};

/// Whether this CPU runs the AVX-512 BF16 conversions (the path is never above what the
/// CPU has, and both AVX-512 paths require AVX-512 BF16).
fn vector() -> bool {
    super::path() >= Path::Dot
}

/// `dst[i] = round(src[i])`.
#[inline(always)]
pub(super) fn row(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len());
    #[cfg(target_arch = "x86_64")]
    if vector() {
        // SAFETY: AVX-512 BF16 is present (`vector`); lengths checked above.
        return unsafe { avx512::row(src, dst) };
    }
    for (d, &v) in dst.iter_mut().zip(src) {
        *d = round(v);
    }
}

/// One pair-row of a packed strip: `dst[2·col + h] = round(rows[h][col])` for the 16
/// columns, `rows[1]` zeros where absent.
#[inline(always)]
pub(super) fn pair_row(first: &[f32], second: Option<&[f32]>, dst: &mut [u16]) {
    assert!(first.len() >= 16 && second.is_none_or(|s| s.len() >= 16) && dst.len() >= 32);
    #[cfg(target_arch = "x86_64")]
    if vector() {
        // SAFETY: AVX-512 BF16 is present; 16 floats per row and 32 u16 checked above.
        return unsafe { avx512::pair_row(first.as_ptr(), second.map_or(std::ptr::null(), |s| s.as_ptr()), dst) };
    }
    for col in 0..16 {
        dst[2 * col] = round(first[col]);
        dst[2 * col + 1] = second.map_or(0, |s| round(s[col]));
    }
}

/// One column of a packed strip (see `bf16::pack`) from `src`, contiguous values along
/// k: pair i of `src` (zero-padded) becomes column `col` of pair-row `first_pair + i`,
/// `strip[(first_pair + i)·32 + 2·col ..][..2]`. For weights stored by output channel,
/// a column of B each: read along memory, 32 values rounded at a time and scattered as 16
/// pairs (element by element, packing the weights took a tenth of a bf16 training step).
#[inline(always)]
pub(super) fn column(src: &[f32], strip: &mut [u16], col: usize, first_pair: usize) {
    let pairs = src.len().div_ceil(2);
    assert!(col < 16 && strip.len() >= (first_pair + pairs) * 32);
    #[cfg(target_arch = "x86_64")]
    if vector() {
        // SAFETY: AVX-512 BF16 is present; bounds checked above.
        return unsafe { avx512::column(src, strip, col, first_pair) };
    }
    for (i, pair) in src.chunks(2).enumerate() {
        let at = (first_pair + i) * 32 + 2 * col;
        strip[at] = round(pair[0]);
        strip[at + 1] = pair.get(1).map_or(0, |&v| round(v));
    }
}

/// Rows `first..first+m` of A given by its transpose (`A[r][p]` at `at[p·ldat + r]`),
/// rounded, into `out` as rows `kp` apart (k ≤ kp; the caller zeros past k).
pub(super) fn transposed(at: &[f32], ldat: usize, first: usize, m: usize, k: usize, kp: usize, out: &mut [u16]) {
    assert!(k <= kp && out.len() >= m * kp && (k == 0 || at.len() >= (k - 1) * ldat + first + m));
    #[cfg(target_arch = "x86_64")]
    if vector() {
        // SAFETY: AVX-512 BF16 is present; bounds checked above.
        return unsafe { avx512::transposed(at, ldat, first, m, k, kp, out) };
    }
    crate::simd!({
        // Blocks of 16 steps of k: each row's 16 values are written together, and the 16
        // steps' reads are 16 short runs along memory.
        const STEPS: usize = 16;
        for p0 in (0..k).step_by(STEPS) {
            let steps = STEPS.min(k - p0);
            for (r, row) in out[..m * kp].chunks_exact_mut(kp).enumerate() {
                for (p, d) in row[p0..p0 + steps].iter_mut().enumerate() {
                    *d = round(at[(p0 + p) * ldat + first + r]);
                }
            }
        }
    })
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    /// The index that interleaves the two halves of a 32-lane u16 vector: lane 2c takes
    /// c, lane 2c+1 takes 16+c.
    #[inline(always)]
    unsafe fn interleave_index() -> __m512i {
        let idx: [u16; 32] = std::array::from_fn(|i| (i / 2 + 16 * (i % 2)) as u16);
        // SAFETY: 64 bytes read from a 64-byte array.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    }

    /// 16 floats (fewer, zero-filled, where `n` < 16) from `p`.
    #[inline(always)]
    unsafe fn load(p: *const f32, n: usize) -> __m512 {
        // SAFETY: the caller's n floats at p.
        unsafe {
            match n {
                16.. => _mm512_loadu_ps(p),
                _ => _mm512_maskz_loadu_ps(((1u32 << n) - 1) as u16, p),
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn row(src: &[f32], dst: &mut [u16]) {
        let n = src.len();
        let mut i = 0;
        // SAFETY: every access is inside the first n values of both slices (masks at the end).
        unsafe {
            while i < n {
                let count = (n - i).min(16);
                let v: __m256i = std::mem::transmute(_mm512_cvtneps_pbh(load(src.as_ptr().add(i), count)));
                _mm256_mask_storeu_epi16(dst.as_mut_ptr().add(i).cast(), ((1u32 << count) - 1) as u16, v);
                i += 16;
            }
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn pair_row(first: *const f32, second: *const f32, dst: &mut [u16]) {
        // SAFETY: 16 floats at each non-null pointer, 32 u16 in dst (caller).
        unsafe {
            let hi = if second.is_null() { _mm512_setzero_ps() } else { _mm512_loadu_ps(second) };
            let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, _mm512_loadu_ps(first)));
            let pairs = _mm512_permutexvar_epi16(interleave_index(), both);
            _mm512_storeu_si512(dst.as_mut_ptr().cast(), pairs);
        }
    }

    /// As `super::column`: 32 values (16 pairs) per step, scattered 64 bytes apart.
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn column(src: &[f32], strip: &mut [u16], col: usize, first_pair: usize) {
        // SAFETY: loads are masked to src's length; the scatter writes pairs
        // first_pair + i < first_pair + ceil(len/2) of column col, inside `strip`.
        unsafe {
            let offsets = _mm512_mullo_epi32(
                _mm512_set1_epi32(16),
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            );
            let words = strip.as_mut_ptr().cast::<i32>().add(first_pair * 16 + col);
            let n = src.len();
            for p in (0..n).step_by(32) {
                let (lo, hi) = ((n - p).min(16), (n - p).saturating_sub(16).min(16));
                let low = load(src.as_ptr().add(p), lo);
                let high = if hi > 0 { load(src.as_ptr().add(p + 16), hi) } else { _mm512_setzero_ps() };
                let pairs: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(high, low));
                let count = (n - p).min(32).div_ceil(2);
                let mask = ((1u32 << count) - 1) as u16;
                _mm512_mask_i32scatter_epi32::<4>(words.add(p / 2 * 16).cast(), mask, offsets, pairs);
            }
        }
    }

    /// As `super::transposed`: per pair of steps (p, p+1), 16 rows at a time, the two
    /// steps' values are rounded and interleaved into 16 32-bit pairs, and scattered to
    /// the 16 rows (`kp` u16 apart).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub(super) unsafe fn transposed(
        at: &[f32],
        ldat: usize,
        first: usize,
        m: usize,
        k: usize,
        kp: usize,
        out: &mut [u16],
    ) {
        // SAFETY: reads stay in steps p < k, rows first..first+m of `at`; the scatter
        // writes pair p/2 of rows r..r+16 < m (masked), inside out's m rows of kp.
        unsafe {
            let index = interleave_index();
            let offsets = _mm512_mullo_epi32(
                _mm512_set1_epi32((kp / 2) as i32),
                _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            );
            let words = out.as_mut_ptr().cast::<i32>();
            for r in (0..m).step_by(16) {
                let count = (m - r).min(16);
                let mask = ((1u32 << count) - 1) as u16;
                for p in (0..k).step_by(2) {
                    let lo = load(at.as_ptr().add(p * ldat + first + r), count);
                    let hi = if p + 1 < k {
                        load(at.as_ptr().add((p + 1) * ldat + first + r), count)
                    } else {
                        _mm512_setzero_ps()
                    };
                    let both: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let pairs = _mm512_permutexvar_epi16(index, both);
                    let base = words.add(r * kp / 2 + p / 2);
                    _mm512_mask_i32scatter_epi32::<4>(base.cast(), mask, offsets, pairs);
                }
            }
        }
    }
}
