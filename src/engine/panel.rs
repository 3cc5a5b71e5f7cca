//! Matrix products `C[m×n] (+)= A[m×k] · B[k×n]` on our own 6×16 AVX2 kernel, for `n` a
//! multiple of 16, in two forms:
//!
//! - [`product`]: B read in place, rows `ldb` apart. For Winograd's per-position GEMMs,
//!   which are small (m ≤ 128 tiles, k and n 32–512 channels) and called 36 times per
//!   block, so that the `gemm` crate's packing and blocking cost more than they save. A
//!   16-column strip of B (k rows of 64 bytes) stays in L1 across A's row groups up to
//!   k = 512.
//! - [`product_packed`]: B packed by [`pack`] into contiguous 16-column strips. For the
//!   convolutions' GEMMs with the weights as B: packed once per call in training, and
//!   once for all calls in inference. The `gemm` crate repacked them for every tile of
//!   rows (6% of ResNet-50's inference at batch 16, 12% at batch 1).
//!
//! The kernel keeps 6 rows × 16 columns of C in 12 registers, as the direct convolution's.

use super::matmul::Mat;

/// Columns per strip of packed B.
pub const STRIP: usize = 16;
/// Rows of A per row panel in `product_packed`, a multiple of the kernel's 6 rows: a
/// panel's block of A (up to 96·1024 floats) stays in L2 while every strip of B passes
/// over it. ResNet-50's 1×1 and stride-2 layers at batch 16 took 181 ms in all with
/// 96-row panels, 179–183 with 48 or 64, 209 with 256.
pub const MC: usize = 96;
/// Rows of B per k-block in `product_packed`. Measured on ResNet-50's 1×1 and stride-2
/// layers at batch 16 with A's tiles of 96 rows (`conv`): 1024 and 4096 ran alike, 256
/// was 6% slower, because C (a tile's rows × up to 2048 channels) is then read and
/// written once per block.
const KC: usize = 1024;

/// Whether `product` and `product_packed` handle `n` columns on this build.
pub fn applies(n: usize) -> bool {
    cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) && n.is_multiple_of(STRIP)
}

/// `c[i*n + j] = Σ_p a[i*k + p] · b[p*ldb + j]` for i < m, j < n. Requires `applies(n)`.
pub fn product(c: &mut [f32], m: usize, n: usize, k: usize, a: &[f32], b: &[f32], ldb: usize) {
    assert!(applies(n) && c.len() >= m * n && a.len() >= m * k);
    assert!(k == 0 || b.len() >= (k - 1) * ldb + n, "panel product: B out of bounds");
    for j in (0..n).step_by(STRIP) {
        // SAFETY: A's m rows of k floats, C's m rows of n floats and B's k rows of 16
        // columns from j are in bounds (asserts above).
        unsafe { row_groups(c.as_mut_ptr().add(j), n, m, a.as_ptr(), k, k, b.as_ptr().add(j), ldb, false) };
    }
}

/// Packs B (k × n, any strides) into `out` in strips of 16 columns: strip j holds
/// `B[p][16j..16j+16]` for p in 0..k, contiguous. Requires `applies(n)`.
pub fn pack(b: Mat, k: usize, n: usize, out: &mut [f32]) {
    assert!(applies(n) && out.len() >= k * n);
    assert!(k == 0 || (k - 1) * b.rs + (n - 1) * b.cs < b.data.len(), "panel pack: B out of bounds");
    for (j, strip) in out[..k * n].chunks_exact_mut(STRIP * k).enumerate() {
        for (p, row) in strip.chunks_exact_mut(STRIP).enumerate() {
            for (col, v) in row.iter_mut().enumerate() {
                *v = b.data[p * b.rs + (j * STRIP + col) * b.cs];
            }
        }
    }
}

/// `C (+)= A · B` on the columns of strips `strips` of B packed by [`pack`] (k rows): A's
/// m rows of k floats lie `lda` apart, and `c[i*ldc + col]` receives column
/// `16·strips.start + col`; `accumulate` adds to C. Requires `applies(16)`.
#[allow(clippy::too_many_arguments)]
pub fn product_packed(
    c: &mut [f32],
    ldc: usize,
    m: usize,
    strips: std::ops::Range<usize>,
    k: usize,
    a: &[f32],
    lda: usize,
    packed: &[f32],
    accumulate: bool,
) {
    let width = strips.len() * STRIP;
    assert!(applies(STRIP) && lda >= k && ldc >= width);
    assert!(m == 0 || (c.len() >= (m - 1) * ldc + width && a.len() >= (m - 1) * lda + k));
    assert!(packed.len() >= strips.end * STRIP * k, "panel product: packed B out of bounds");
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            for (col, j) in strips.clone().enumerate() {
                // SAFETY: rows i0..i0+mc of A from column k0 (kc floats each) and of C
                // from column 16·col (16 floats each), and the kc rows of strip j from
                // row k0 are in bounds (asserts above).
                unsafe {
                    let b = packed.as_ptr().add((j * k + k0) * STRIP);
                    let a = a.as_ptr().add(i0 * lda + k0);
                    let c = c.as_mut_ptr().add(i0 * ldc + col * STRIP);
                    row_groups(c, ldc, mc, a, lda, kc, b, STRIP, accumulate || k0 > 0);
                }
            }
        }
    }
}

/// One 16-column strip of C (`ldc` apart) for all m rows, in groups of up to 6 rows;
/// adds to C when `accumulate`.
///
/// # Safety
/// `a` holds m rows of `kc` floats `lda` apart, `b` kc rows of 16 floats `ldb` apart, `c`
/// m rows of 16 floats `ldc` apart.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn row_groups(
    c: *mut f32,
    ldc: usize,
    m: usize,
    a: *const f32,
    lda: usize,
    kc: usize,
    b: *const f32,
    ldb: usize,
    accumulate: bool,
) {
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(6);
        // SAFETY: rows i..i+rows lie inside the caller's m rows.
        unsafe {
            let (a, c) = (a.add(i * lda), c.add(i * ldc));
            match (rows, accumulate) {
                (6, false) => kernel::strip::<6, false>(a, lda, kc, b, ldb, c, ldc),
                (6, true) => kernel::strip::<6, true>(a, lda, kc, b, ldb, c, ldc),
                (5, false) => kernel::strip::<5, false>(a, lda, kc, b, ldb, c, ldc),
                (5, true) => kernel::strip::<5, true>(a, lda, kc, b, ldb, c, ldc),
                (4, false) => kernel::strip::<4, false>(a, lda, kc, b, ldb, c, ldc),
                (4, true) => kernel::strip::<4, true>(a, lda, kc, b, ldb, c, ldc),
                (3, false) => kernel::strip::<3, false>(a, lda, kc, b, ldb, c, ldc),
                (3, true) => kernel::strip::<3, true>(a, lda, kc, b, ldb, c, ldc),
                (2, false) => kernel::strip::<2, false>(a, lda, kc, b, ldb, c, ldc),
                (2, true) => kernel::strip::<2, true>(a, lda, kc, b, ldb, c, ldc),
                (_, false) => kernel::strip::<1, false>(a, lda, kc, b, ldb, c, ldc),
                (_, true) => kernel::strip::<1, true>(a, lda, kc, b, ldb, c, ldc),
            }
        }
        i += rows;
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod kernel {
    use std::arch::x86_64::*;

    /// `c[r][0..16] (+)= Σ_{p<kc} a[r*lda + p] · b[p*ldb..][0..16]` for the `R` ≤ 6 rows r;
    /// `ACC` adds to C instead of overwriting it.
    ///
    /// # Safety
    /// `a` holds R rows of kc floats `lda` apart, `b` kc rows of 16 floats `ldb` apart, `c`
    /// R rows of 16 floats `ldc` apart.
    #[inline(always)]
    pub unsafe fn strip<const R: usize, const ACC: bool>(
        a: *const f32,
        lda: usize,
        kc: usize,
        b: *const f32,
        ldb: usize,
        c: *mut f32,
        ldc: usize,
    ) {
        // SAFETY: the caller's contract above bounds every access.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for p in 0..kc {
                let b0 = _mm256_loadu_ps(b.add(p * ldb));
                let b1 = _mm256_loadu_ps(b.add(p * ldb + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let (c0, c1) = (c.add(r * ldc), c.add(r * ldc + 8));
                if ACC {
                    _mm256_storeu_ps(c0, _mm256_add_ps(_mm256_loadu_ps(c0), acc[0]));
                    _mm256_storeu_ps(c1, _mm256_add_ps(_mm256_loadu_ps(c1), acc[1]));
                } else {
                    _mm256_storeu_ps(c0, acc[0]);
                    _mm256_storeu_ps(c1, acc[1]);
                }
            }
        }
    }
}

/// Without AVX2 `applies` is false and this is never called.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod kernel {
    pub unsafe fn strip<const R: usize, const ACC: bool>(
        _: *const f32,
        _: usize,
        _: usize,
        _: *const f32,
        _: usize,
        _: *mut f32,
        _: usize,
    ) {
        unreachable!("the panel product needs AVX2 and FMA")
    }
}
