//! Convolutions in bf16 (`--precision bf16`), as PyTorch's CPU autocast runs them: the
//! GEMMs of a convolution (forward, input gradient, weight gradient) take their two
//! operands rounded to bf16 and add the products in f32; everything else (BatchNorm and
//! its statistics, the residual additions, the classifier, the master weights and the
//! optimizer) stays f32. Activations are kept in f32 between layers and rounded as they
//! enter a GEMM, so a layer's output carries f32's precision.
//!
//! The products run on one of three paths ([`Path`], chosen once like [`isa`](super::isa)):
//! - AMX (`amx.rs`): 16×16 tiles of C, `tdpbf16ps` adds a 16×32 by 32×16 product per
//!   instruction, 16 times AVX-512's multiply-adds per cycle;
//! - AVX-512 BF16 (`kernels.rs`): `vdpbf16ps`, pairs of products per 32-bit lane;
//! - emulated (`kernels.rs`): the same values widened to f32 on any CPU. Its results are
//!   the reference the others are tested against (they differ only in the order of the
//!   f32 additions).
//!
//! All three read the same layouts: A (rows of the output) as bf16 rows of `kp` values, k
//! rounded up to a multiple of 32 with zeros; B (the weights, or a
//! tile of the output gradient) packed in 16-column strips of pairs along k,
//! `[kp/2][16][2]`, the layout of an AMX B tile and of `vdpbf16ps`'s operand.

#[cfg(target_arch = "x86_64")]
mod amx;
#[cfg(target_arch = "x86_64")]
pub mod conv3x3;
mod convert;
mod kernels;
pub mod peak;

use super::epilogue::Residual;
use super::epilogue::Store;
use super::matmul::Mat;
use std::sync::atomic::{AtomicU8, Ordering};

/// Columns per strip of packed B, as `panel::STRIP`.
pub const STRIP: usize = 16;
/// k is padded to a multiple of this: one AMX tile's depth.
pub const K_STEP: usize = 32;
/// Rows of A converted and multiplied at a time: 96 rows of k ≤ 4608 bf16 (about 864 KB)
/// stay in L2 while the strips of B pass over them. `panel::MC` too, so that a GEMM's tile
/// of rows is one block here.
pub const MC: usize = 96;

/// The number format of a network's convolutions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    /// Operands in bf16, sums in f32 (see the module comment).
    Bf16,
    /// The GPU's convolutions on TF32 tensor cores (operands rounded to 10 bits of mantissa,
    /// sums in f32), as PyTorch's `allow_tf32`. An allowance, not a format: the CPU engine
    /// has no TF32 and computes in f32.
    Tf32,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Tf32 => "tf32",
        }
    }

    /// f32 or bf16: what the CPU computes in.
    pub fn parse(name: &str) -> Result<Precision, String> {
        match Precision::parse_any(name)? {
            Precision::Tf32 => Err("tf32 is for NVIDIA GPUs, and this command runs on the CPU: f32 or bf16".into()),
            p => Ok(p),
        }
    }

    /// f32, bf16 or tf32 (GPUs).
    pub fn parse_any(name: &str) -> Result<Precision, String> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "tf32" => Ok(Precision::Tf32),
            other => Err(format!("unknown precision {other:?}: f32, bf16, or tf32 on GPUs")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The instructions bf16 products run on, slowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Path {
    /// Widened to f32 and multiplied there: any CPU.
    Emulated,
    /// AVX-512 BF16's `vdpbf16ps`.
    Dot,
    /// AMX tiles (`tdpbf16ps`).
    Amx,
}

impl Path {
    pub const ALL: [Path; 3] = [Path::Emulated, Path::Dot, Path::Amx];

    pub fn name(self) -> &'static str {
        match self {
            Path::Emulated => "emulated",
            Path::Dot => "avx512-bf16",
            Path::Amx => "amx",
        }
    }

    pub fn parse(name: &str) -> Result<Path, String> {
        Path::ALL.into_iter().find(|p| p.name().eq_ignore_ascii_case(name.trim())).ok_or_else(|| {
            let names: Vec<_> = Path::ALL.iter().map(|p| p.name()).collect();
            format!("unknown bf16 path {name:?}: one of {}", names.join(", "))
        })
    }

    /// The fastest path this CPU (and the kernel set in use: `RESNET_ISA=avx2` rules out
    /// both AVX-512 paths) can run.
    pub fn detected() -> Path {
        #[cfg(target_arch = "x86_64")]
        // Both AVX-512 paths round operands with AVX-512 BF16 (`convert.rs`).
        if super::isa::isa() == super::isa::Isa::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16") {
            return if amx::usable() { Path::Amx } else { Path::Dot };
        }
        Path::Emulated
    }

    /// Every path this CPU can run, slowest first.
    pub fn available() -> Vec<Path> {
        Path::ALL.into_iter().filter(|&p| p <= Path::detected()).collect()
    }
}

impl std::fmt::Display for Path {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 0 until chosen, then 1 + the path.
static SELECTED: AtomicU8 = AtomicU8::new(0);

/// The path bf16 products take: [`select`]'s, or on first use the environment's
/// (`RESNET_BF16=amx|avx512-bf16|emulated` forces a slower one; one the CPU lacks falls
/// back to the fastest it has, with a warning).
#[inline]
pub fn path() -> Path {
    match SELECTED.load(Ordering::Relaxed) {
        0 => choose(),
        n => Path::ALL[n as usize - 1],
    }
}

#[cold]
fn choose() -> Path {
    let path = from_env().unwrap_or_else(|e| {
        eprintln!("warning: {e}; bf16 products run on {}", Path::detected());
        Path::detected()
    });
    SELECTED.store(1 + path as u8, Ordering::Relaxed);
    path
}

/// The path `RESNET_BF16` asks for, or the fastest; an error names a value that is
/// unknown or beyond this CPU.
pub fn from_env() -> Result<Path, String> {
    match std::env::var("RESNET_BF16") {
        Err(_) => Ok(Path::detected()),
        Ok(v) => {
            let path = Path::parse(&v).map_err(|e| format!("RESNET_BF16: {e}"))?;
            match path <= Path::detected() {
                true => Ok(path),
                false => {
                    Err(format!("RESNET_BF16={v}: this CPU, with the kernels in use, has only {}", Path::detected()))
                }
            }
        }
    }
}

/// Makes bf16 products take `path` from now on (tests compare the paths).
pub fn select(path: Path) -> Result<(), String> {
    if path > Path::detected() {
        return Err(format!("this CPU has only {}, not {path}", Path::detected()));
    }
    SELECTED.store(1 + path as u8, Ordering::Relaxed);
    Ok(())
}

/// `x` rounded to the nearest bf16 (ties to even), as its bits; NaN stays NaN.
#[inline(always)]
pub fn round(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// The f32 value of a bf16.
#[inline(always)]
pub fn widen(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Whether bf16 products handle `n` columns (whole strips).
pub fn applies(n: usize) -> bool {
    n > 0 && n.is_multiple_of(STRIP)
}

/// u16s of B (k × n) packed by [`pack`].
pub fn packed_len(k: usize, n: usize) -> usize {
    k.next_multiple_of(K_STEP) * n
}

/// Packs B (k × n, any strides, f32) into `out` as bf16: strip j of 16 columns holds
/// `B[p][16j + col]` at `j·kp·16 + (p/2)·32 + 2·col + p%2`, kp = k rounded up to 32, zeros
/// past k. Requires `applies(n)`.
pub fn pack(b: Mat, k: usize, n: usize, out: &mut [u16]) {
    assert!(applies(n) && out.len() >= packed_len(k, n));
    assert!(k == 0 || (k - 1) * b.rs + (n - 1) * b.cs < b.data.len(), "bf16 pack: B out of bounds");
    let kp = k.next_multiple_of(K_STEP);
    run(
        #[inline(always)]
        || {
            for (j, strip) in out[..kp * n].chunks_exact_mut(STRIP * kp).enumerate() {
                if b.cs == 1 {
                    // Rows of B (a tile of activations or gradients): 16 values of two rows
                    // make a pair-row.
                    for (q, pair_row) in strip.chunks_exact_mut(2 * STRIP).enumerate() {
                        let row = |p: usize| (p < k).then(|| &b.data[j * STRIP + p * b.rs..][..STRIP]);
                        match row(2 * q) {
                            Some(first) => convert::pair_row(first, row(2 * q + 1), pair_row),
                            None => pair_row.fill(0),
                        }
                    }
                    continue;
                }
                if b.rs == 1 {
                    // Columns of B along memory (the weights, by output channel).
                    for col in 0..STRIP {
                        convert::column(&b.data[(j * STRIP + col) * b.cs..][..k], strip, col, 0);
                    }
                    strip[k.div_ceil(2) * 2 * STRIP..].fill(0);
                    continue;
                }
                for (q, pair_row) in strip.chunks_exact_mut(2 * STRIP).enumerate() {
                    for half in 0..2 {
                        let p = 2 * q + half;
                        if p >= k {
                            for col in 0..STRIP {
                                pair_row[2 * col + half] = 0;
                            }
                            continue;
                        }
                        let row = j * STRIP * b.cs + p * b.rs;
                        for col in 0..STRIP {
                            pair_row[2 * col + half] = round(b.data[row + col * b.cs]);
                        }
                    }
                }
            }
        },
    )
}

/// Where a product's A comes from.
#[derive(Clone, Copy)]
pub enum Rows<'a> {
    /// m rows of k floats, `lda` apart.
    Direct { a: &'a [f32], lda: usize },
    /// Given by its transpose: `A[r][p]` at `at[p·ldat + r]` (the weight gradient's
    /// output gradient, as the layer leaves it).
    Transposed { at: &'a [f32], ldat: usize },
    /// Already rounded: at most `MC` rows of kp (k rounded up to 32, zeros after k),
    /// [`rows_for`]`(m)` of them, zeros after m.
    Rounded { a: &'a [u16] },
}

/// Rows of A a product of m ≤ [`MC`] rows reads from [`Rows::Rounded`]: m rounded up to the
/// kernel's row blocks.
pub fn rows_for(m: usize) -> usize {
    m.next_multiple_of(row_step(path()))
}

/// Rows each kernel computes at a time.
fn row_step(path: Path) -> usize {
    match path {
        Path::Amx => 16,
        Path::Dot => kernels::DOT_ROWS,
        Path::Emulated => 1,
    }
}

/// `dst[i] = round(src[i])`, vectorized where the CPU allows. Inlined: called inside
/// [`run`], the conversion compiles into the caller's loop.
#[inline(always)]
pub fn round_row(src: &[f32], dst: &mut [u16]) {
    convert::row(src, dst)
}

/// One column of a packed strip (see [`pack`]) from values along k: pair i of `src`
/// (zero-padded) into column `col` of pair-row `first_pair + i`.
#[inline(always)]
pub fn round_column(src: &[f32], strip: &mut [u16], col: usize, first_pair: usize) {
    convert::column(src, strip, col, first_pair)
}

/// One pair-row of a packed strip (see [`pack`]): `dst[2·col + h] = round(rows[h][col])`
/// for 16 columns, the second row zeros where absent. Inlined as [`round_row`].
#[inline(always)]
pub fn round_pair_row(first: &[f32], second: Option<&[f32]>, dst: &mut [u16]) {
    convert::pair_row(first, second, dst)
}

/// Runs `f` compiled for AVX-512 BF16 where the path uses it, so that the conversions
/// (`round_row`, `convert`) inline into `f`'s loops (called on runs of 16 to 64 channels
/// they cost more as calls than as work); elsewhere as `simd!` does. `f` must be an
/// `#[inline(always)]` closure.
#[inline(always)]
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if path() >= Path::Dot {
        // SAFETY: the path is never above what the CPU has, and Dot and Amx need AVX-512
        // F, BW, DQ, VL and BF16 (`Path::detected`) besides AVX2's set.
        return unsafe { with_bf16(f) };
    }
    super::isa::run(f)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,f16c,lzcnt,movbe,avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")]
unsafe fn with_bf16<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `C (+)= A · B` in bf16 with f32 sums, on strips `strips` of B packed by [`pack`] (k
/// rows), A's m rows as `a` says; `c[i·ldc + col]` receives column `16·strips.start +
/// col` as `store` says (as `panel::product_packed`). `a_block` is the calling thread's
/// room for A's rows in bf16.
#[allow(clippy::too_many_arguments)]
pub fn product(
    c: &mut [f32],
    ldc: usize,
    m: usize,
    strips: std::ops::Range<usize>,
    k: usize,
    a: Rows,
    packed: &[u16],
    store: Store<&[f32]>,
    a_block: &mut Vec<u16>,
) {
    let width = strips.len() * STRIP;
    let kp = k.next_multiple_of(K_STEP);
    assert!(k > 0 && ldc >= width && m.checked_sub(1).is_none_or(|last| c.len() >= last * ldc + width));
    match a {
        Rows::Direct { a, lda } => assert!(lda >= k && m.checked_sub(1).is_none_or(|l| a.len() >= l * lda + k)),
        Rows::Transposed { at, ldat } => assert!(ldat >= m && at.len() >= (k - 1) * ldat + m),
        Rows::Rounded { a } => assert!(m <= MC && a.len() >= rows_for(m) * kp),
    }
    assert!(packed.len() >= strips.end * STRIP * kp, "bf16 product: packed B out of bounds");
    if let Some(f) = store.epilogue() {
        assert!(f.scale.len() >= width && f.shift.len() >= width, "bf16 product: epilogue too short");
        assert!(m == 0 || f.residual.covers((m - 1) * ldc + width), "bf16 product: residual too short");
    }
    let path = path();
    let row_step = row_step(path);
    let b = &packed[strips.start * STRIP * kp..strips.end * STRIP * kp];
    #[cfg(target_arch = "x86_64")]
    let _tiles = (path == Path::Amx).then(amx::Tiles::configure);
    for i0 in (0..m).step_by(MC) {
        let mc = MC.min(m - i0);
        let rows = mc.next_multiple_of(row_step);
        let a: &[u16] = match a {
            Rows::Rounded { a } => &a[..rows * kp],
            _ => {
                super::ensure_len(a_block, rows * kp);
                convert_rows(a, i0, mc, k, kp, &mut a_block[..rows * kp]);
                &a_block[..rows * kp]
            }
        };
        let block = Block { c: &mut c[i0 * ldc..], ldc, m: mc, first_row: i0, store };
        let a = RoundedRows { a, kp };
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Amx => amx::product(block, a, b),
            #[cfg(not(target_arch = "x86_64"))]
            Path::Amx => unreachable!("AMX is x86-64's"),
            Path::Dot => kernels::dot_product(block, a, b),
            Path::Emulated => kernels::emulated_product(block, a, b),
        }
    }
}

/// A's rows in bf16 as the kernels read them: rows of `kp` values.
#[derive(Clone, Copy)]
struct RoundedRows<'a> {
    a: &'a [u16],
    kp: usize,
}

/// Rows `first..first+m` of A, rounded to bf16, into `out` (rows of kp, zeros past k and
/// in the rows after m).
fn convert_rows(a: Rows, first: usize, m: usize, k: usize, kp: usize, out: &mut [u16]) {
    run(
        #[inline(always)]
        || {
            let (used, padding) = out.split_at_mut(m * kp);
            padding.fill(0);
            match a {
                Rows::Direct { a, lda } => {
                    for (r, row) in used.chunks_exact_mut(kp).enumerate() {
                        convert::row(&a[(first + r) * lda..][..k], &mut row[..k]);
                    }
                }
                Rows::Transposed { at, ldat } => convert::transposed(at, ldat, first, m, k, kp, used),
                Rows::Rounded { .. } => unreachable!("rounded rows are not converted"),
            }
            for row in used.chunks_exact_mut(kp) {
                row[k..].fill(0);
            }
        },
    )
}

/// The rows of C one call of a path's kernel fills: m rows `ldc` apart from `c`, which
/// are rows `first_row..` of the whole product (for the residual).
struct Block<'a> {
    c: &'a mut [f32],
    ldc: usize,
    m: usize,
    first_row: usize,
    store: Store<&'a [f32]>,
}

impl Block<'_> {
    /// Stores `values` (rows × 16·strips floats, `stride` apart) as C's rows `row..` and
    /// strips `strip..` of the block (relative to the product's first strip), by the
    /// store's rule: added to C, or finished by the epilogue, as the panel kernel does.
    #[inline(always)]
    fn store(&mut self, values: &[f32], stride: usize, row: usize, rows: usize, strip: usize, strips: usize) {
        let rows = rows.min(self.m - row);
        let (col0, width) = (strip * STRIP, strips * STRIP);
        let ldc = self.ldc;
        for r in 0..rows {
            let v = &values[r * stride..][..width];
            let at = (row + r) * ldc + col0;
            let dst = &mut self.c[at..][..width];
            match self.store {
                Store::Accumulate => dst.iter_mut().zip(v).for_each(|(d, v)| *d += v),
                Store::Overwrite => dst.copy_from_slice(v),
                Store::Finish(f) => {
                    let (scale, shift) = (&f.scale[col0..][..width], &f.shift[col0..][..width]);
                    let relu = |x: f32| if f.relu { x.max(0.0) } else { x };
                    match f.residual {
                        Residual::None => {
                            for i in 0..width {
                                dst[i] = relu(v[i].mul_add(scale[i], shift[i]));
                            }
                        }
                        Residual::InOutput => {
                            for i in 0..width {
                                dst[i] = relu(v[i].mul_add(scale[i], shift[i]) + dst[i]);
                            }
                        }
                        Residual::Separate(res) => {
                            let res = &res[self.first_row * ldc + at..][..width];
                            for i in 0..width {
                                dst[i] = relu(v[i].mul_add(scale[i], shift[i]) + res[i]);
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_to_nearest_even_and_keeps_specials() {
        assert_eq!(round(1.0), 0x3f80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even (1.0).
        assert_eq!(round(1.0 + 1.0 / 256.0), 0x3f80);
        // 1 + 3·2^-8 lies halfway between 1 + 2^-7 and 1 + 2^-6: to the even (1 + 2^-6).
        assert_eq!(widen(round(1.0 + 3.0 / 256.0)), 1.0 + 1.0 / 64.0);
        assert_eq!(widen(round(1.0 + 1.0 / 256.0 + 1e-6)), 1.0 + 1.0 / 128.0);
        assert_eq!(widen(round(-2.5)), -2.5);
        assert!(widen(round(f32::NAN)).is_nan());
        assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
        assert_eq!(widen(round(f32::MAX)), f32::INFINITY);
        for x in [0.1f32, -3.7, 1e-20, 6.5e4] {
            assert!(((widen(round(x)) - x) / x).abs() <= 1.0 / 256.0, "{x}");
        }
    }

    #[test]
    fn names_round_trip() {
        for p in Path::ALL {
            assert_eq!(Path::parse(p.name()), Ok(p));
        }
        assert!(Path::parse("tpu").unwrap_err().contains("tpu"));
        assert_eq!(Precision::parse("BF16"), Ok(Precision::Bf16));
        assert!(Precision::parse("fp8").is_err());
        assert!(Path::available().contains(&Path::Emulated));
    }
}

#[cfg(test)]
mod product_tests {
    use super::*;
    use crate::engine::epilogue::Epilogue;

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
            })
            .collect()
    }

    /// Every path against a float64 product of the same bf16-rounded operands, for both
    /// sources of A, overwriting, adding, and through each kind of epilogue.
    #[test]
    fn every_path_matches_a_float64_product_of_the_rounded_operands() {
        for path in Path::available() {
            select(path).unwrap();
            for &(m, k, n) in &[(1, 5, 16), (17, 27, 32), (100, 300, 48), (33, 64, 16), (200, 40, 64)] {
                let (a, b) = (values(m * k, 1), values(k * n, 2));
                let bm = Mat::rows(&b, n);
                let mut packed = vec![0u16; packed_len(k, n)];
                pack(bm, k, n, &mut packed);
                // B given by columns along memory (weights) packs to the same bits, and
                // so does B with any strides.
                let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
                let mut by_columns = vec![1u16; packed_len(k, n)];
                pack(Mat::transposed(&bt, k), k, n, &mut by_columns);
                assert_eq!(by_columns, packed, "{path} {k}x{n} by columns");
                let spaced: Vec<f32> = b.iter().flat_map(|&v| [v, 0.0]).collect();
                let mut strided = vec![1u16; packed_len(k, n)];
                pack(Mat { data: &spaced, rs: 2 * n, cs: 2 }, k, n, &mut strided);
                assert_eq!(strided, packed, "{path} {k}x{n} strided");
                let at: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
                let (scale, shift, res) = (values(n, 3), values(n, 4), values(m * n, 5));
                let exact = |i: usize, j: usize| {
                    (0..k).map(|p| widen(round(a[i * k + p])) as f64 * widen(round(b[p * n + j])) as f64).sum::<f64>()
                };
                let bound =
                    |i: usize, j: usize| (0..k).map(|p| (a[i * k + p] * b[p * n + j]).abs() as f64).sum::<f64>();
                for case in 0..5 {
                    let start = values(m * n, 6);
                    let mut c = start.clone();
                    let residual = match case {
                        3 => Residual::Separate(&res[..]),
                        4 => Residual::InOutput,
                        _ => Residual::None,
                    };
                    let store = match case {
                        1 => Store::Accumulate,
                        2.. => Store::Finish(Epilogue { scale: &scale[..], shift: &shift[..], residual, relu: true }),
                        _ => Store::Overwrite,
                    };
                    let rows = match case {
                        0 => Rows::Transposed { at: &at, ldat: m },
                        _ => Rows::Direct { a: &a, lda: k },
                    };
                    product(&mut c, n, m, 0..n / STRIP, k, rows, &packed, store, &mut Vec::new());
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = exact(i, j);
                            if case == 1 {
                                want += start[i * n + j] as f64;
                            }
                            if case >= 2 {
                                want = want * scale[j] as f64 + shift[j] as f64;
                                want += match case {
                                    3 => res[i * n + j] as f64,
                                    4 => start[i * n + j] as f64,
                                    _ => 0.0,
                                };
                                want = want.max(0.0);
                            }
                            let got = c[i * n + j] as f64;
                            let tol = 1e-6 * (bound(i, j) + 2.0);
                            assert!(
                                (got - want).abs() <= tol,
                                "{path} {m}x{k}x{n} case {case} ({i},{j}): {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
        select(Path::detected()).unwrap();
    }
}
