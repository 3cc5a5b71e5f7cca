//! Matrix products `C[m×n] (+)= A[m×k] · B[k×n]` on our own 6×16 AVX2 kernel, for `n` a
//! multiple of 16, with B packed by [`pack`] into contiguous 16-column strips. For the
//! convolutions' GEMMs with the weights as B (packed once per call in training, once for
//! all calls in inference; the `gemm` crate repacked them for every tile of rows: 6% of
//! ResNet-50's inference at batch 16, 12% at batch 1), for their weight gradients, with a
//! tile of the output gradient as B ([`product_packed_transposed`]), and for Winograd's
//! per-position GEMMs, whose transformed weights are written in this layout.
//!
//! Strips must be contiguous: read in place with rows `n` floats apart, a strip's rows fall
//! into a few sets of the L1 cache once `n` is a power of two of 256 or more (see
//! `winograd::weight_transform`).
//!
//! The kernel keeps 6 rows × 16 columns of C in 12 registers, as the direct convolution's.
//! In inference it applies the layer's epilogue (`epilogue::Epilogue`, cut to the block by
//! `for_block`) to them before they are
//! stored, so that C is written once and never read back.
//!
//! Where a block of A meets enough strips of B, its rows are first interleaved in groups of
//! 6 (`interleave`), so that the kernel reads one stream of 24 bytes per step of k
//! instead of 6 rows `lda` apart (at 1024 channels, 4 KB apart: the same sets of the L1
//! cache). ResNet-50 at batch 16 ran 4% faster in inference (median of 20 alternating
//! in-process pairs; 2–10% in shorter runs) and 3% in training; ResNet-20 ran level, so its
//! few-strip GEMMs read A in place.

#[cfg(target_arch = "x86_64")]
mod avx512;

use super::epilogue::{Residual, Store};
use super::matmul::Mat;
use super::simd::{V8, prefetch};

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
/// Rows of C the kernel holds in registers, and so rows of A per interleaved group.
const MR: usize = 6;
/// How many groups of rows ahead `interleave` asks for A's lines. Interleaving is where a
/// 1×1 layer first touches its input, which at batch 16 comes from memory, and the
/// hardware prefetchers lose time ramping up on each short row. Asking 3 groups ahead,
/// ResNet-50's inference at batch 16 ran 1.8–3.3% faster (median ratios of 30–40
/// alternating in-process pairs; 1 group ahead 1.3%, 6–8 groups 0–2.4%); its stage-1 1×1
/// layers ran 15–20% faster. Batch 1 and training ran level.
const PREFETCH_GROUPS: usize = 3;

/// Whether `product_packed` handles `n` columns on this build.
pub fn applies(n: usize) -> bool {
    cfg!(target_arch = "x86_64") && super::simd::available() && n.is_multiple_of(STRIP)
}

/// Packs B (k × n, any strides) into `out` in strips of 16 columns: strip j holds
/// `B[p][16j..16j+16]` for p in 0..k, contiguous. Requires `applies(n)`.
///
/// Rows of B (unit column stride: a tile of the output gradient) are copied 16 floats at
/// a time. Otherwise (the weights, whose columns are contiguous) a block of 64 steps of
/// each column is read at a time, so that reads run along memory and the 16 columns' writes
/// stay in the L1 cache: element by element along the rows of B, each read fell on a new
/// line, and packing took 6% of ResNet-50's training step (perf, AVX-512).
pub fn pack(b: Mat, k: usize, n: usize, out: &mut [f32]) {
    assert!(applies(n) && out.len() >= k * n);
    assert!(k == 0 || (k - 1) * b.rs + (n - 1) * b.cs < b.data.len(), "panel pack: B out of bounds");
    const BLOCK: usize = 64;
    crate::simd!({
        for (j, strip) in out[..k * n].chunks_exact_mut(STRIP * k).enumerate() {
            let first = j * STRIP * b.cs;
            if b.cs == 1 {
                for (p, row) in strip.chunks_exact_mut(STRIP).enumerate() {
                    row.copy_from_slice(&b.data[first + p * b.rs..][..STRIP]);
                }
                continue;
            }
            for p0 in (0..k).step_by(BLOCK) {
                let steps = BLOCK.min(k - p0);
                let rows = &mut strip[p0 * STRIP..][..steps * STRIP];
                for col in 0..STRIP {
                    let column = first + col * b.cs + p0 * b.rs;
                    for (p, row) in rows.chunks_exact_mut(STRIP).enumerate() {
                        row[col] = b.data[column + p * b.rs];
                    }
                }
            }
        }
    })
}

/// `C (+)= A · B` on the columns of strips `strips` of B packed by [`pack`] (k rows): A's
/// m rows of k floats lie `lda` apart, and `c[i*ldc + col]` receives column
/// `16·strips.start + col`, as `store` says (an epilogue cut to this block of C by
/// `Epilogue::for_block`). `a_panel` is the calling thread's room for
/// interleaved rows of A (it grows to at most `MC`·`KC` floats, or `MC`·k for a residual
/// in C). Requires `applies(16)` and k ≥ 1.
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
    store: Store<&[f32]>,
    a_panel: &mut Vec<f32>,
) {
    crate::simd!(registers wide => {
        let width = strips.len() * STRIP;
        assert!(applies(STRIP) && k > 0 && lda >= k && ldc >= width);
        assert!(m == 0 || (c.len() >= (m - 1) * ldc + width && a.len() >= (m - 1) * lda + k));
        assert!(packed.len() >= strips.end * STRIP * k, "panel product: packed B out of bounds");
        if let Some(f) = store.epilogue() {
            assert!(f.scale.len() >= width && f.shift.len() >= width, "panel product: epilogue too short");
            assert!(m == 0 || f.residual.covers((m - 1) * ldc + width), "panel product: residual too short");
        }
        // Interleaving copies the block once for all strips: with 2 strips, or with 4 on short
        // rows, the copy costs what it saves (ResNet-20's stride-2 layers, ResNet-50's 64→64).
        // A residual in C must be read before a first k-block's sums overwrite it, so then
        // the product runs as one k-block (4096 ran as fast as 1024, see `KC`).
        let k_block = match store.epilogue().map(|f| f.residual) {
            Some(Residual::InOutput) => k,
            _ => KC,
        };
        let interleaved = strips.len() >= 8 || (strips.len() >= 4 && k.min(k_block) >= 256);
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            for k0 in (0..k).step_by(k_block) {
                let kc = k_block.min(k - k0);
                let last = k0 + kc == k;
                let block = &a[i0 * lda + k0..];
                if interleaved {
                    super::ensure_len(a_panel, mc.next_multiple_of(MR) * kc);
                    interleave(block, lda, mc, kc, a_panel);
                }
                // Two strips at a time where the registers hold them (AVX-512).
                let mut j = strips.start;
                while j < strips.end {
                    let pair = wide && j + 1 < strips.end;
                    let col = j - strips.start;
                    // SAFETY: rows i0..i0+mc of A from column k0 (kc floats each), or their
                    // interleaved copy (mc rows rounded up to groups of 6, kc columns), rows
                    // i0..i0+mc of C and of the residual from column 16·col (16 floats each, 32
                    // for a pair), columns 16·col.. of the epilogue, and the kc rows of strip j
                    // (and j + 1) from row k0 are in bounds (asserts above).
                    unsafe {
                        let b = packed.as_ptr().add((j * k + k0) * STRIP);
                        let offset = i0 * ldc + col * STRIP;
                        let c = c.as_mut_ptr().add(offset);
                        let tail = store.epilogue().filter(|_| last).map(|f| Tail {
                            scale: f.scale.as_ptr().add(col * STRIP),
                            shift: f.shift.as_ptr().add(col * STRIP),
                            residual: match f.residual {
                                Residual::None => std::ptr::null(),
                                Residual::Separate(r) => r.as_ptr().add(offset),
                                // Each value is read before its result is stored (`strip`).
                                Residual::InOutput => c,
                            },
                            relu: f.relu,
                        });
                        let accumulate = store.accumulates() || k0 > 0;
                        // The rows of B the next strip (or the next block's first) starts with.
                        let after = j + 1 + usize::from(pair);
                        let next_b = match (after < strips.end, k0 + kc < k) {
                            (true, _) => packed.as_ptr().add((after * k + k0) * STRIP),
                            (false, true) => packed.as_ptr().add((strips.start * k + k0 + kc) * STRIP),
                            (false, false) => std::ptr::null(),
                        };
                        let (a, lda) = if interleaved { (a_panel.as_ptr(), 0) } else { (block.as_ptr(), lda) };
                        let product = Product { c, ldc, m: mc, a, lda, kc, b, b_apart: k * STRIP, next_b, accumulate, tail };
                        match interleaved {
                            true => widest::<true>(wide, pair, product),
                            false => widest::<false>(wide, pair, product),
                        }
                    }
                    j += 1 + usize::from(pair);
                }
            }
        }
    })
}

/// `C (+)= A · B` as [`product_packed`], with A given by its transpose: `A[r][p]` at
/// `at[p*ldat + r]`, k rows of m floats `ldat` apart. For the weight gradients
/// `dwᵀ = colᵀ · dy`, whose A is the column matrix as im2col leaves it. Each block of A
/// is first copied into `a_panel` in groups of 6 rows, as `product_packed` interleaves
/// them. Read in place, each step of k is `ldat` floats further on, and at ResNet-50's
/// 1024 or 2048 channels every step of a block falls into the same few sets of the L1
/// cache (ResNet-50 trained 8–12% slower).
#[allow(clippy::too_many_arguments)]
pub fn product_packed_transposed(
    c: &mut [f32],
    ldc: usize,
    m: usize,
    strips: std::ops::Range<usize>,
    k: usize,
    at: &[f32],
    ldat: usize,
    packed: &[f32],
    accumulate: bool,
    a_panel: &mut Vec<f32>,
) {
    crate::simd!(registers wide => {
        let width = strips.len() * STRIP;
        assert!(applies(STRIP) && k > 0 && ldat >= m && ldc >= width);
        assert!(m == 0 || (c.len() >= (m - 1) * ldc + width && at.len() >= (k - 1) * ldat + m));
        assert!(packed.len() >= strips.end * STRIP * k, "panel product: packed B out of bounds");
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                super::ensure_len(a_panel, mc.next_multiple_of(MR) * kc);
                group_columns(&at[k0 * ldat + i0..], ldat, mc, kc, a_panel);
                let mut j = strips.start;
                while j < strips.end {
                    let pair = wide && j + 1 < strips.end;
                    let col = j - strips.start;
                    // SAFETY: the grouped copy of A's rows i0..i0+mc (rounded up to groups of
                    // 6, kc steps), rows i0..i0+mc of C from column 16·col (16 floats each, 32
                    // for a pair) and the kc rows of strip j (and j + 1) from row k0 are in
                    // bounds (asserts above).
                    unsafe {
                        let b = packed.as_ptr().add((j * k + k0) * STRIP);
                        let c = c.as_mut_ptr().add(i0 * ldc + col * STRIP);
                        let accumulate = accumulate || k0 > 0;
                        let (a, next_b) = (a_panel.as_ptr(), std::ptr::null());
                        let product =
                            Product { c, ldc, m: mc, a, lda: 0, kc, b, b_apart: k * STRIP, next_b, accumulate, tail: None };
                        widest::<true>(wide, pair, product);
                    }
                    j += 1 + usize::from(pair);
                }
            }
        }
    })
}

/// Copies m rows of kc steps of A, given by its transpose (step p of row r at
/// `at[p*ldat + r]`), into `out` as [`interleave`] does: row r of group g, step p at
/// `out[g·6·kc + 6p + r]`. A last, short group's missing rows are left as they were.
#[inline(always)]
fn group_columns(at: &[f32], ldat: usize, m: usize, kc: usize, out: &mut [f32]) {
    for p in 0..kc {
        let step = &at[p * ldat..][..m];
        for (g, rows) in step.chunks(MR).enumerate() {
            out[g * MR * kc + MR * p..][..rows.len()].copy_from_slice(rows);
        }
    }
}

/// Copies m rows of kc floats of A (`lda` apart) into `out` in groups of 6 rows, each
/// group step by step: row r of group g, step p at `out[g·6·kc + 6p + r]`. The rows of a
/// last, short group keep their places; the rest of it is left as it was. Asks for the
/// lines of the rows `PREFETCH_GROUPS` groups further on as it goes (past the block's
/// end, those of the rows after it: the next block's, likely).
#[inline(always)]
fn interleave(a: &[f32], lda: usize, m: usize, kc: usize, out: &mut [f32]) {
    for (g, group) in out[..m.next_multiple_of(MR) * kc].chunks_exact_mut(MR * kc).enumerate() {
        let count = (m - g * MR).min(MR);
        // A short group's missing rows repeat its last one, and are not copied.
        let rows: [&[f32]; MR] = std::array::from_fn(|r| &a[(g * MR + r.min(count - 1)) * lda..][..kc]);
        match count {
            MR => interleave6(rows, group, PREFETCH_GROUPS * MR * lda),
            _ => interleave_rows(&rows[..count], 0, group),
        }
    }
}

/// The operands of one call of the register kernels: m rows of C from `c` (`ldc` apart)
/// at one strip, or two (`pair`), of B from `b` (the second `b_apart` floats on), A's rows
/// at `a` (`lda` apart, or interleaved), kc steps; `next_b` and `tail` as `row_groups`.
#[derive(Clone, Copy)]
struct Product {
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
}

/// [`row_groups`] on the widest registers of the calling copy: AVX-512's where `wide`,
/// for two strips at once where `pair` (only then).
///
/// # Safety
/// As `row_groups`, for each strip; `wide` only in `simd!`'s AVX-512 copy.
#[inline(always)]
unsafe fn widest<const INTERLEAVED: bool>(wide: bool, pair: bool, p: Product) {
    let Product { c, ldc, m, a, lda, kc, b, b_apart, next_b, accumulate, tail } = p;
    // SAFETY: the caller's.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        if wide {
            return match pair {
                true => {
                    avx512::row_groups::<INTERLEAVED, 2>(c, ldc, m, a, lda, kc, b, b_apart, next_b, accumulate, tail)
                }
                false => {
                    avx512::row_groups::<INTERLEAVED, 1>(c, ldc, m, a, lda, kc, b, b_apart, next_b, accumulate, tail)
                }
            };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (wide, b_apart);
        debug_assert!(!pair, "pairs of strips only on AVX-512");
        row_groups::<INTERLEAVED>(c, ldc, m, a, lda, kc, b, next_b, accumulate, tail)
    }
}

/// One 16-column strip of C (`ldc` apart) for all m rows, in groups of up to 6 rows;
/// adds to C when `accumulate`, then applies `tail`. A's rows lie `lda` apart, or, when
/// `INTERLEAVED`, as [`interleave`] leaves them.
///
/// One group asks for the kc rows of B at `next_b` (those the product needs next, or null)
/// as it goes, one line per step: the
/// second group, so that the first has brought this strip's own rows in, or the first if
/// there is only one full group. B is a layer's weights, read from memory by the first
/// group of each strip where the caches cannot hold a network's weights, and at batch 1
/// few groups share that trip: ResNet-50 inference at batch 1 ran 1.8–2.2% faster
/// (median ratios of 60–80 alternating in-process pairs), ResNet-18's 1.5–2.0%, ResNet-50's
/// training step at batch 16 2.4% (8 pairs); inference at batch 16 ran level.
///
/// # Safety
/// `a` holds m rows of `kc` floats as that says, `b` kc rows of 16 floats, `c` (and the
/// tail's residual, if any) m rows of 16 floats `ldc` apart, the tail's scale and shift 16
/// floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn row_groups<const INTERLEAVED: bool>(
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
    let ahead_row = ahead_row(m, MR, next_b);
    let mut i = 0;
    while i < m {
        let rows = (m - i).min(MR);
        // SAFETY: rows i..i+rows lie inside the caller's m rows; an interleaved group of
        // 6 rows starts 6·kc floats after the last.
        unsafe {
            let a = if INTERLEAVED { a.add(i * kc) } else { a.add(i * lda) };
            let c = c.add(i * ldc);
            let tail = tail.map(|t| t.rows_from(i * ldc));
            match (rows, accumulate) {
                (6, false) if i == ahead_row => {
                    strip::<6, false, INTERLEAVED, true>(a, lda, kc, b, next_b, c, ldc, tail)
                }
                (6, true) if i == ahead_row => strip::<6, true, INTERLEAVED, true>(a, lda, kc, b, next_b, c, ldc, tail),
                (6, false) => strip::<6, false, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (6, true) => strip::<6, true, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (5, false) => strip::<5, false, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (5, true) => strip::<5, true, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (4, false) => strip::<4, false, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (4, true) => strip::<4, true, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (3, false) => strip::<3, false, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (3, true) => strip::<3, true, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (2, false) => strip::<2, false, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (2, true) => strip::<2, true, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (_, false) => strip::<1, false, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
                (_, true) => strip::<1, true, INTERLEAVED, false>(a, lda, kc, b, next_b, c, ldc, tail),
            }
        }
        i += rows;
    }
}

/// The row of the block of `rows` rows (of m) that asks for the next strip's B as it
/// goes (`row_groups`): the second block, so that the first has brought this strip's own
/// rows in, or the first if there is only one full block; none (`usize::MAX`) without a
/// next B or a full block.
#[inline(always)]
fn ahead_row(m: usize, rows: usize, next_b: *const f32) -> usize {
    if next_b.is_null() || m < rows {
        usize::MAX
    } else if m < 2 * rows {
        0
    } else {
        rows
    }
}

/// Asks for the lines of `rows` rows of a 16-float strip of C (`ldc` apart) and of the
/// tail's separate residual. C's lines (and the residual's) are needed only at the end:
/// asking for them before the products overlaps their trip to memory, where C is a
/// layer's output beyond the caches, with the products. ResNet-50 inference at batch 16
/// ran 6% faster (in-process, alternating); where C is in cache it made no difference.
/// Rows of 16 floats may straddle two lines.
///
/// # Safety
/// None needed for the hints themselves; the addresses are computed within the rows the
/// caller's kernel may touch.
#[inline(always)]
unsafe fn prefetch_rows(rows: usize, c: *mut f32, ldc: usize, tail: Option<Tail>) {
    // SAFETY: the offsets stay inside the caller's rows of C and of the residual.
    unsafe {
        for r in 0..rows {
            prefetch(c.add(r * ldc));
            prefetch(c.add(r * ldc + 15));
            if let Some(t) = tail.filter(|t| !t.residual.is_null() && t.residual != c.cast_const()) {
                prefetch(t.residual.add(r * ldc));
                prefetch(t.residual.add(r * ldc + 15));
            }
        }
    }
}

/// An epilogue at one 16-column strip: pointers to its 16 scales and shifts, and to the
/// residual's rows at the strip's first row (`ldc` apart, as C's; C's own for a residual
/// in the output), or null.
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
    #[inline(always)]
    unsafe fn rows_from(self, offset: usize) -> Tail {
        // SAFETY: as the caller promises.
        let residual = if self.residual.is_null() { self.residual } else { unsafe { self.residual.add(offset) } };
        Tail { residual, ..self }
    }

    /// The same tail `offset` columns further right (the next strip: `offset` = 16).
    ///
    /// # Safety
    /// The scales, shifts and residual extend that far.
    #[inline(always)]
    unsafe fn columns_from(self, offset: usize) -> Tail {
        // SAFETY: as the caller promises.
        unsafe {
            let residual = if self.residual.is_null() { self.residual } else { self.residual.add(offset) };
            Tail { scale: self.scale.add(offset), shift: self.shift.add(offset), residual, relu: self.relu }
        }
    }
}

/// `c[r][0..16] (+)= Σ_{p<kc} A[r][p] · b[16p..][0..16]` for the `R` ≤ 6 rows r, with
/// `A[r][p]` at `a[r*lda + p]`, or at `a[6p + r]` when `INTERLEAVED`; `ACC` adds to C
/// instead of overwriting it; `tail` is applied before the store. `AHEAD` asks for the
/// line at `next_b + 16p` at each step p (a hint: the address need not be valid).
///
/// # Safety
/// `a` holds R rows of kc floats as that says, `b` kc rows of 16 floats, `c` (and the
/// tail's residual, if any) R rows of 16 floats `ldc` apart, the tail's scale and shift
/// 16 floats.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
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
    // SAFETY: the caller's contract above bounds every access.
    unsafe {
        prefetch_rows(R, c, ldc, tail);
        let mut acc = [[V8::zero(); 2]; R];
        for p in 0..kc {
            if AHEAD {
                prefetch(next_b.wrapping_add(p * 16));
            }
            let (b0, b1) = (V8::read(b.add(p * 16)), V8::read(b.add(p * 16 + 8)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = V8::splat(*a.add(if INTERLEAVED { 6 * p + r } else { r * lda + p }));
                acc[0] = x.mul_add(b0, acc[0]);
                acc[1] = x.mul_add(b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let c = c.add(r * ldc);
            for (h, &v) in acc.iter().enumerate() {
                let mut v = if ACC { V8::read(c.add(8 * h)) + v } else { v };
                if let Some(t) = tail {
                    let (scale, shift) = (V8::read(t.scale.add(8 * h)), V8::read(t.shift.add(8 * h)));
                    let residual = (!t.residual.is_null()).then(|| V8::read(t.residual.add(r * ldc + 8 * h)));
                    v = v.finish(scale, shift, residual, t.relu);
                }
                v.write(c.add(8 * h));
            }
        }
    }
}

/// `out[6p + r] = rows[r][p]` for the 6 rows and every p.
#[cfg(not(target_arch = "x86_64"))]
fn interleave6(rows: [&[f32]; 6], out: &mut [f32], _ahead: usize) {
    interleave_rows(&rows, 0, out);
}

/// `out[6p + r] = rows[r][p]` for the 6 rows and every p: 8 steps at a time by a transpose
/// of 8 registers (6 rows and 2 of zeros), each step's 6 floats stored as 8, the last 2
/// overwritten by the next step (or, for the block's last step, left out). Asks for the
/// line `ahead` floats after each row's line it reads (once per 16 floats).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn interleave6(rows: [&[f32]; 6], out: &mut [f32], ahead: usize) {
    use std::arch::x86_64::*;
    let kc = rows[0].len();
    assert!(rows.iter().all(|r| r.len() == kc) && out.len() >= 6 * kc);
    let mut p = 0;
    // SAFETY: AVX is enabled (`applies`, and the callers' `simd!` copies); loads read floats p..p+8 ≤ kc of each row,
    // stores write floats 6p..6p+48 ≤ 6·kc of `out` (assert above).
    unsafe {
        while p + 8 <= kc {
            if p.is_multiple_of(16) {
                for row in rows {
                    // Past the end of A the address may lie outside any allocation:
                    // `wrapping_add` makes no claim on it, and a prefetch never faults.
                    prefetch(row.as_ptr().wrapping_add(p + ahead));
                }
            }
            let r: [__m256; 6] = std::array::from_fn(|i| _mm256_loadu_ps(rows[i].as_ptr().add(p)));
            let zeros = _mm256_setzero_ps();
            // Pairs of rows, then quads, then the 128-bit halves: the usual 8×8 transpose.
            let t = [
                _mm256_unpacklo_ps(r[0], r[1]),
                _mm256_unpackhi_ps(r[0], r[1]),
                _mm256_unpacklo_ps(r[2], r[3]),
                _mm256_unpackhi_ps(r[2], r[3]),
                _mm256_unpacklo_ps(r[4], r[5]),
                _mm256_unpackhi_ps(r[4], r[5]),
            ];
            let q = [
                _mm256_shuffle_ps::<0x44>(t[0], t[2]),
                _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
                _mm256_shuffle_ps::<0x44>(t[1], t[3]),
                _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
                _mm256_shuffle_ps::<0x44>(t[4], zeros),
                _mm256_shuffle_ps::<0xEE>(t[4], zeros),
                _mm256_shuffle_ps::<0x44>(t[5], zeros),
                _mm256_shuffle_ps::<0xEE>(t[5], zeros),
            ];
            let steps = [
                _mm256_permute2f128_ps::<0x20>(q[0], q[4]),
                _mm256_permute2f128_ps::<0x20>(q[1], q[5]),
                _mm256_permute2f128_ps::<0x20>(q[2], q[6]),
                _mm256_permute2f128_ps::<0x20>(q[3], q[7]),
                _mm256_permute2f128_ps::<0x31>(q[0], q[4]),
                _mm256_permute2f128_ps::<0x31>(q[1], q[5]),
                _mm256_permute2f128_ps::<0x31>(q[2], q[6]),
                _mm256_permute2f128_ps::<0x31>(q[3], q[7]),
            ];
            let dst = out.as_mut_ptr().add(6 * p);
            for (j, step) in steps.iter().enumerate().take(7) {
                _mm256_storeu_ps(dst.add(6 * j), *step);
            }
            let mut last = [0f32; 8];
            _mm256_storeu_ps(last.as_mut_ptr(), steps[7]);
            std::ptr::copy_nonoverlapping(last.as_ptr(), dst.add(42), 6);
            p += 8;
        }
    }
    interleave_rows(&rows, p, out);
}

/// `out[6p + r] = rows[r][p]` for the (up to 6) rows and steps p from `from` on.
#[inline(always)]
fn interleave_rows(rows: &[&[f32]], from: usize, out: &mut [f32]) {
    for (r, row) in rows.iter().enumerate() {
        for (p, &v) in row.iter().enumerate().skip(from) {
            out[p * MR + r] = v;
        }
    }
}
