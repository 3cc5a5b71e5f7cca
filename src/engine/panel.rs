//! Matrix products `C[m×n] (+)= A[m×k] · B[k×n]` on our own 6×16 AVX2 kernel, for `n` a
//! multiple of 16, with B packed by [`pack`] into contiguous 16-column strips. For the
//! convolutions' GEMMs with the weights as B (packed once per call in training, once for
//! all calls in inference; the `gemm` crate repacked them for every tile of rows: 6% of
//! ResNet-50's inference at batch 16, 12% at batch 1), and for Winograd's per-position
//! GEMMs, whose transformed weights are written in this layout.
//!
//! Strips must be contiguous: read in place with rows `n` floats apart, a strip's rows fall
//! into a few sets of the L1 cache once `n` is a power of two of 256 or more (see
//! `winograd::weight_transform`).
//!
//! The kernel keeps 6 rows × 16 columns of C in 12 registers, as the direct convolution's.
//! In inference it applies the layer's epilogue ([`Finish`]) to them before they are
//! stored, so that C is written once and never read back.

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

/// Whether `product_packed` handles `n` columns on this build.
pub fn applies(n: usize) -> bool {
    cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")) && n.is_multiple_of(STRIP)
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

/// How the product reaches C.
#[derive(Clone, Copy, Default)]
pub struct Store<'a> {
    /// Add to C instead of overwriting it.
    pub accumulate: bool,
    /// Applied to each value before it is stored.
    pub finish: Option<Finish<'a>>,
}

/// The inference epilogue of a convolution, applied in registers as the kernel finishes
/// each value: `c = relu(c·scale[col] + shift[col] + residual[row][col])`, BatchNorm's
/// affine transform, the residual addition and the ReLU. (A separate pass over each
/// finished tile cost 3% of ResNet-50's inference.)
#[derive(Clone, Copy)]
pub struct Finish<'a> {
    /// One per column of C.
    pub scale: &'a [f32],
    pub shift: &'a [f32],
    /// Laid out as C: the same first element and row stride.
    pub residual: Option<&'a [f32]>,
    pub relu: bool,
}

/// `C (+)= A · B` on the columns of strips `strips` of B packed by [`pack`] (k rows): A's
/// m rows of k floats lie `lda` apart, and `c[i*ldc + col]` receives column
/// `16·strips.start + col`, as `store` says. Requires `applies(16)` and k ≥ 1.
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
    store: Store,
) {
    let width = strips.len() * STRIP;
    assert!(applies(STRIP) && k > 0 && lda >= k && ldc >= width);
    assert!(m == 0 || (c.len() >= (m - 1) * ldc + width && a.len() >= (m - 1) * lda + k));
    assert!(packed.len() >= strips.end * STRIP * k, "panel product: packed B out of bounds");
    if let Some(f) = store.finish {
        assert!(f.scale.len() >= width && f.shift.len() >= width, "panel product: epilogue too short");
        assert!(
            m == 0 || f.residual.is_none_or(|r| r.len() >= (m - 1) * ldc + width),
            "panel product: residual too short"
        );
    }
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let last = k0 + kc == k;
            for (col, j) in strips.clone().enumerate() {
                // SAFETY: rows i0..i0+mc of A from column k0 (kc floats each), of C and of
                // the residual from column 16·col (16 floats each), columns 16·col.. of the
                // epilogue, and the kc rows of strip j from row k0 are in bounds (asserts
                // above).
                unsafe {
                    let b = packed.as_ptr().add((j * k + k0) * STRIP);
                    let a = a.as_ptr().add(i0 * lda + k0);
                    let offset = i0 * ldc + col * STRIP;
                    let tail = store.finish.filter(|_| last).map(|f| Tail {
                        scale: f.scale.as_ptr().add(col * STRIP),
                        shift: f.shift.as_ptr().add(col * STRIP),
                        residual: f.residual.map_or(std::ptr::null(), |r| r.as_ptr().add(offset)),
                        relu: f.relu,
                    });
                    let c = c.as_mut_ptr().add(offset);
                    let accumulate = store.accumulate || k0 > 0;
                    row_groups(c, ldc, mc, a, lda, kc, b, accumulate, tail);
                }
            }
        }
    }
}

/// One 16-column strip of C (`ldc` apart) for all m rows, in groups of up to 6 rows;
/// adds to C when `accumulate`, then applies `tail`.
///
/// # Safety
/// `a` holds m rows of `kc` floats `lda` apart, `b` kc rows of 16 floats, `c`
/// (and the tail's residual, if any) m rows of 16 floats `ldc` apart, the tail's scale and
/// shift 16 floats.
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
    accumulate: bool,
    tail: Option<Tail>,
) {
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(6);
        // SAFETY: rows i..i+rows lie inside the caller's m rows.
        unsafe {
            let (a, c) = (a.add(i * lda), c.add(i * ldc));
            let tail = tail.map(|t| t.rows_from(i * ldc));
            match (rows, accumulate) {
                (6, false) => kernel::strip::<6, false>(a, lda, kc, b, c, ldc, tail),
                (6, true) => kernel::strip::<6, true>(a, lda, kc, b, c, ldc, tail),
                (5, false) => kernel::strip::<5, false>(a, lda, kc, b, c, ldc, tail),
                (5, true) => kernel::strip::<5, true>(a, lda, kc, b, c, ldc, tail),
                (4, false) => kernel::strip::<4, false>(a, lda, kc, b, c, ldc, tail),
                (4, true) => kernel::strip::<4, true>(a, lda, kc, b, c, ldc, tail),
                (3, false) => kernel::strip::<3, false>(a, lda, kc, b, c, ldc, tail),
                (3, true) => kernel::strip::<3, true>(a, lda, kc, b, c, ldc, tail),
                (2, false) => kernel::strip::<2, false>(a, lda, kc, b, c, ldc, tail),
                (2, true) => kernel::strip::<2, true>(a, lda, kc, b, c, ldc, tail),
                (_, false) => kernel::strip::<1, false>(a, lda, kc, b, c, ldc, tail),
                (_, true) => kernel::strip::<1, true>(a, lda, kc, b, c, ldc, tail),
            }
        }
        i += rows;
    }
}

/// A [`Finish`] at one 16-column strip: pointers to its 16 scales and shifts, and to the
/// residual's rows at the strip's first row (`ldc` apart, as C's), or null.
#[derive(Clone, Copy)]
struct Tail {
    scale: *const f32,
    shift: *const f32,
    residual: *const f32,
    relu: bool,
}

impl Tail {
    /// The same tail `offset` floats further down C.
    ///
    /// # Safety
    /// The residual, if any, extends that far.
    unsafe fn rows_from(self, offset: usize) -> Tail {
        // SAFETY: as the caller promises.
        let residual = if self.residual.is_null() { self.residual } else { unsafe { self.residual.add(offset) } };
        Tail { residual, ..self }
    }
}

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod kernel {
    use super::Tail;
    use std::arch::x86_64::*;

    /// `c[r][0..16] (+)= Σ_{p<kc} a[r*lda + p] · b[16p..][0..16]` for the `R` ≤ 6 rows r;
    /// `ACC` adds to C instead of overwriting it; `tail` is applied before the store.
    ///
    /// # Safety
    /// `a` holds R rows of kc floats `lda` apart, `b` kc rows of 16 floats, `c`
    /// (and the tail's residual, if any) R rows of 16 floats `ldc` apart, the tail's scale
    /// and shift 16 floats.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    pub unsafe fn strip<const R: usize, const ACC: bool>(
        a: *const f32,
        lda: usize,
        kc: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
        tail: Option<Tail>,
    ) {
        // SAFETY: the caller's contract above bounds every access.
        unsafe {
            // C's lines (and the residual's) are needed only at the end: asking for them
            // now overlaps their trip to memory, where C is a layer's output beyond the
            // caches, with the products. ResNet-50 inference at batch 16 ran 6% faster
            // (in-process, alternating); where C is in cache it made no difference. Rows
            // of 16 floats may straddle two lines.
            for r in 0..R {
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc) as *const i8);
                _mm_prefetch::<_MM_HINT_T0>(c.add(r * ldc + 15) as *const i8);
                if let Some(t) = tail.filter(|t| !t.residual.is_null()) {
                    _mm_prefetch::<_MM_HINT_T0>(t.residual.add(r * ldc) as *const i8);
                    _mm_prefetch::<_MM_HINT_T0>(t.residual.add(r * ldc + 15) as *const i8);
                }
            }
            let mut acc = [[_mm256_setzero_ps(); 2]; R];
            for p in 0..kc {
                let b0 = _mm256_loadu_ps(b.add(p * 16));
                let b1 = _mm256_loadu_ps(b.add(p * 16 + 8));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let x = _mm256_broadcast_ss(&*a.add(r * lda + p));
                    acc[0] = _mm256_fmadd_ps(x, b0, acc[0]);
                    acc[1] = _mm256_fmadd_ps(x, b1, acc[1]);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let c = c.add(r * ldc);
                for (h, &v) in acc.iter().enumerate() {
                    let mut v = if ACC { _mm256_add_ps(_mm256_loadu_ps(c.add(8 * h)), v) } else { v };
                    if let Some(t) = tail {
                        v = _mm256_fmadd_ps(
                            v,
                            _mm256_loadu_ps(t.scale.add(8 * h)),
                            _mm256_loadu_ps(t.shift.add(8 * h)),
                        );
                        if !t.residual.is_null() {
                            v = _mm256_add_ps(v, _mm256_loadu_ps(t.residual.add(r * ldc + 8 * h)));
                        }
                        if t.relu {
                            v = _mm256_max_ps(v, _mm256_setzero_ps());
                        }
                    }
                    _mm256_storeu_ps(c.add(8 * h), v);
                }
            }
        }
    }
}

/// Without AVX2 `applies` is false and this is never called.
#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod kernel {
    use super::Tail;

    #[allow(clippy::too_many_arguments)]
    pub unsafe fn strip<const R: usize, const ACC: bool>(
        _: *const f32,
        _: usize,
        _: usize,
        _: *const f32,
        _: *mut f32,
        _: usize,
        _: Option<Tail>,
    ) {
        unreachable!("the panel product needs AVX2 and FMA")
    }
}
