//! The AVX-512 BF16 and the emulated bf16 product kernels (see the module comment of
//! `bf16` for the layouts).

use super::{Block, RoundedRows, STRIP};

/// Rows of C the AVX-512 BF16 kernel holds in registers: 12 rows × 2 strips are 24 of the
/// 32 registers, with 2 for B and one for A's broadcast pair.
pub(super) const DOT_ROWS: usize = 12;

/// C's block by widening every bf16 to f32: the reference path, on any CPU. Each pair of
/// products is added to the f32 sum one after the other, as `vdpbf16ps` does.
pub(super) fn emulated_product(mut block: Block, a: RoundedRows, b: &[u16]) {
    let RoundedRows { a, kp } = a;
    let strips = b.len() / (STRIP * kp);
    crate::simd!({
        let mut acc = [0f32; STRIP];
        for r in 0..block.m {
            let row = &a[r * kp..][..kp];
            for j in 0..strips {
                let strip = &b[j * STRIP * kp..][..STRIP * kp];
                acc.fill(0.0);
                for (pair, bq) in row.chunks_exact(2).zip(strip.chunks_exact(2 * STRIP)) {
                    let (a0, a1) = (super::widen(pair[0]), super::widen(pair[1]));
                    for col in 0..STRIP {
                        acc[col] += super::widen(bq[2 * col + 1]) * a1;
                        acc[col] += super::widen(bq[2 * col]) * a0;
                    }
                }
                block.store(&acc, STRIP, r, 1, j, 1);
            }
        }
    })
}

/// C's block on `vdpbf16ps`: 12 rows × 2 strips of C in registers, one pair of k per
/// instruction and lane. Requires the AVX-512 BF16 path (`Path::Dot` or better).
pub(super) fn dot_product(block: Block, a: RoundedRows, b: &[u16]) {
    #[cfg(target_arch = "x86_64")]
    {
        let rows = block.m.next_multiple_of(DOT_ROWS);
        assert!(super::path() >= super::Path::Dot && a.a.len() >= rows * a.kp);
        // SAFETY: the CPU has AVX-512 BF16 (the path is never above `Path::detected`);
        // the sizes are checked above and by `product`.
        unsafe { dot_avx512(block, a, b) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (block, a, b);
        unreachable!("AVX-512 BF16 is x86-64's")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
unsafe fn dot_avx512(mut block: Block, a: RoundedRows, b: &[u16]) {
    use std::arch::x86_64::*;
    let RoundedRows { a, kp } = a;
    let strips = b.len() / (STRIP * kp);
    let mut values = [0f32; DOT_ROWS * 2 * STRIP];
    for r0 in (0..block.m).step_by(DOT_ROWS) {
        let rows = &a[r0 * kp..][..DOT_ROWS * kp];
        for j in (0..strips).step_by(2) {
            let pair = (strips - j).min(2);
            let b0 = b[j * STRIP * kp..].as_ptr();
            // A single last strip reads its own B twice and stores half.
            let b1 = b[(j + pair - 1) * STRIP * kp..].as_ptr();
            let mut acc = [[_mm512_setzero_ps(); 2]; DOT_ROWS];
            // SAFETY: pair-row q of each strip is 32 u16 at 32q < 16·kp; A's 12 rows hold
            // kp u16 each, read as kp/2 pairs.
            unsafe {
                for q in 0..kp / 2 {
                    let v0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b0.add(32 * q).cast()));
                    let v1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b1.add(32 * q).cast()));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        let x = rows.as_ptr().add(r * kp + 2 * q).cast::<i32>().read_unaligned();
                        let x: __m512bh = std::mem::transmute(_mm512_set1_epi32(x));
                        acc[0] = _mm512_dpbf16_ps(acc[0], x, v0);
                        acc[1] = _mm512_dpbf16_ps(acc[1], x, v1);
                    }
                }
                for (r, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(values.as_mut_ptr().add(r * 2 * STRIP), acc[0]);
                    _mm512_storeu_ps(values.as_mut_ptr().add(r * 2 * STRIP + STRIP), acc[1]);
                }
            }
            if r0 < block.m {
                block.store(&values, 2 * STRIP, r0, DOT_ROWS, j, pair);
            }
        }
    }
}
