//! A small matrix product for Winograd's per-position GEMMs, `C[m×n] = A[m×k] · B[k×n]`
//! with A and C row-major and contiguous and B's rows `ldb` apart, for `n` a multiple of
//! 16 (AVX2 + FMA only).
//!
//! These products are small (m ≤ 128 tiles, k and n 32–512 channels) and each is called
//! 36 times per block, so the `gemm` crate's packing and blocking cost more than they
//! save. Here B's 16-column strips are read in place (a strip of k rows, 64 bytes each,
//! stays in L1 across A's row groups up to k = 512) and 6 rows × 16 columns of C are kept in 12 registers, as in
//! the direct convolution's kernel.

/// Whether `product` handles these dimensions on this build.
pub fn applies(n: usize) -> bool {
    cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) && n.is_multiple_of(16)
}

/// `c[i*n + j] = Σ_p a[i*k + p] · b[p*ldb + j]` for i < m, j < n. Requires `applies(n)`.
pub fn product(c: &mut [f32], m: usize, n: usize, k: usize, a: &[f32], b: &[f32], ldb: usize) {
    assert!(applies(n) && c.len() >= m * n && a.len() >= m * k);
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "panel product: B out of bounds");
    for j in (0..n).step_by(16) {
        let mut i = 0;
        while i < m {
            let rows = (m - i).min(6);
            // SAFETY: rows i..i+rows of A (k floats each) and C (n floats each) are in
            // bounds (asserts above), and so are B's k rows of 16 columns from j.
            unsafe {
                let (ap, bp, cp) = (a.as_ptr().add(i * k), b.as_ptr().add(j), c.as_mut_ptr().add(i * n + j));
                match rows {
                    6 => kernel::strip::<6>(ap, k, bp, ldb, cp, n),
                    5 => kernel::strip::<5>(ap, k, bp, ldb, cp, n),
                    4 => kernel::strip::<4>(ap, k, bp, ldb, cp, n),
                    3 => kernel::strip::<3>(ap, k, bp, ldb, cp, n),
                    2 => kernel::strip::<2>(ap, k, bp, ldb, cp, n),
                    _ => kernel::strip::<1>(ap, k, bp, ldb, cp, n),
                }
            }
            i += rows;
        }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod kernel {
    use std::arch::x86_64::*;

    /// `c[r][0..16] = Σ_p a[r*k + p] · b[p*ldb..][0..16]` for the `R` ≤ 6 rows r.
    ///
    /// # Safety
    /// `a` holds R rows of k floats, `b` k rows of 16 floats `ldb` apart, `c` R rows of
    /// 16 floats `ldc` apart.
    #[inline(always)]
    pub unsafe fn strip<const R: usize>(a: *const f32, k: usize, b: *const f32, ldb: usize, c: *mut f32, ldc: usize) {
        // SAFETY: the caller's contract above bounds every access.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for p in 0..k {
                let b0 = _mm256_loadu_ps(b.add(p * ldb));
                let b1 = _mm256_loadu_ps(b.add(p * ldb + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * k + p));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                _mm256_storeu_ps(c.add(r * ldc), acc[0]);
                _mm256_storeu_ps(c.add(r * ldc + 8), acc[1]);
            }
        }
    }
}

/// Without AVX2 `applies` is false and this is never called.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod kernel {
    pub unsafe fn strip<const R: usize>(_: *const f32, _: usize, _: *const f32, _: usize, _: *mut f32, _: usize) {
        unreachable!("the panel product needs AVX2 and FMA")
    }
}
