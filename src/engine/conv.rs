//! 2-D convolution, NHWC activations and OHWI weights, as im2col + GEMM on row tiles.
//!
//! The output of the whole batch is a matrix of `n·oh·ow` rows (pixels) by `c_out`. It
//! is computed in tiles of rows: each tile's input patches are lowered into a cache-sized
//! im2col buffer and multiplied by the weight matrix, packed once into strips for
//! `panel::product_packed` (tiles of one row panel, `panel::MC`), or, where the channels
//! do not come in 16s, by the `gemm` crate (`TILE_ROWS`: it runs at ~75% of a core's peak
//! from ~100 to ~700 rows, and at half that for a whole 56×56 image). Workers take the
//! tiles one at a time, so even one image uses every core. 1×1 stride-1 convolutions
//! skip im2col: the input already is the column matrix.
//!
//! The backward pass splits the batch into groups of images (the input gradient of
//! neighbouring rows overlaps), tile by tile within each group, and sums the groups'
//! weight gradients in a fixed order (`sum_groups`).

use super::epilogue::{Residual, Store};
use super::matmul::{Mat, matmul};
use super::{
    Precision, SharedOut, Workspace, bf16, direct, ensure_len, for_each_item, panel, split_range, sum_groups, winograd,
    winograd_small,
};

/// Output rows per GEMM (see the module comment).
const TILE_ROWS: usize = 256;

/// Shape of one convolution: square kernel, symmetric zero padding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub h: usize,
    pub w: usize,
}

impl ConvShape {
    /// A k×k convolution padded by k/2, as all of ResNet's are, on an `hw`×`hw` input.
    pub fn square(c_in: usize, c_out: usize, kernel: usize, stride: usize, hw: usize) -> Self {
        ConvShape { c_in, c_out, kernel, stride, pad: kernel / 2, h: hw, w: hw }
    }

    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kernel) / self.stride + 1
    }
    /// Length of one im2col row (= columns of the weight matrix).
    pub fn patch(&self) -> usize {
        self.kernel * self.kernel * self.c_in
    }
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c_in
    }
    pub fn out_pixels(&self) -> usize {
        self.out_h() * self.out_w()
    }
    pub fn out_len(&self) -> usize {
        self.out_pixels() * self.c_out
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.patch()
    }
    fn is_pointwise(&self) -> bool {
        self.kernel == 1 && self.stride == 1 && self.pad == 0
    }
}

/// Visits output rows `rows` (global over the batch) as (row index, image, oy, ox).
// Inlined into its callers' `simd!` copies.
#[inline(always)]
fn for_each_row(s: &ConvShape, rows: std::ops::Range<usize>, mut f: impl FnMut(usize, usize, usize, usize)) {
    let (ow, pixels) = (s.out_w(), s.out_pixels());
    for r in rows {
        let (img, p) = (r / pixels, r % pixels);
        f(r, img, p / ow, p % ow);
    }
}

/// A column matrix's element: f32, or bf16 (rounded as it is lowered).
trait Lowered: Copy + Default {
    fn lower(dst: &mut [Self], src: &[f32]);
    /// Runs the lowering loop compiled for the instructions `lower` wants.
    fn run(f: impl FnOnce());
}

impl Lowered for f32 {
    #[inline(always)]
    fn lower(dst: &mut [f32], src: &[f32]) {
        dst.copy_from_slice(src);
    }
    #[inline(always)]
    fn run(f: impl FnOnce()) {
        super::isa::run(f)
    }
}

impl Lowered for u16 {
    #[inline(always)]
    fn lower(dst: &mut [u16], src: &[f32]) {
        bf16::round_row(src, dst);
    }
    #[inline(always)]
    fn run(f: impl FnOnce()) {
        bf16::run(f)
    }
}

/// Lowers the patches of output rows `rows` of the batch `x` into `col` (one row each).
fn im2col(s: &ConvShape, x: &[f32], rows: std::ops::Range<usize>, col: &mut [f32]) {
    lower(s, x, rows, col, s.patch());
}

/// `im2col` into rows of `row_len` ≥ patch elements, zeros after the patch.
fn lower<T: Lowered>(s: &ConvShape, x: &[f32], rows: std::ops::Range<usize>, col: &mut [T], row_len: usize) {
    T::run(
        #[inline(always)]
        || {
            let (c, k, patch) = (s.c_in, s.kernel, s.patch());
            let first = rows.start;
            for_each_row(s, rows, |r, img, oy, ox| {
                let xi = &x[img * s.in_len()..(img + 1) * s.in_len()];
                let (dst_row, rest) = col[(r - first) * row_len..][..row_len].split_at_mut(patch);
                rest.fill(T::default());
                let ix0 = (ox * s.stride) as isize - s.pad as isize;
                let inside_x = ix0 >= 0 && ix0 as usize + k <= s.w;
                for ky in 0..k {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    let dst = &mut dst_row[ky * k * c..(ky + 1) * k * c];
                    if iy < 0 || iy >= s.h as isize {
                        dst.fill(T::default());
                    } else if inside_x {
                        // The k pixels of a kernel row are contiguous in NHWC: one copy.
                        let src = (iy as usize * s.w + ix0 as usize) * c;
                        T::lower(dst, &xi[src..src + k * c]);
                    } else {
                        for kx in 0..k {
                            let ix = ix0 + kx as isize;
                            let d = &mut dst[kx * c..(kx + 1) * c];
                            if ix < 0 || ix >= s.w as isize {
                                d.fill(T::default());
                            } else {
                                let src = (iy as usize * s.w + ix as usize) * c;
                                T::lower(d, &xi[src..src + c]);
                            }
                        }
                    }
                }
            });
        },
    )
}

/// The column matrix of output rows `rows` (k = rows, n = patch) packed as `bf16::pack`
/// packs it, without the f32 im2col: each pair of rows' 16 values of a strip are one
/// tap's 16 channels of two input pixels (or zeros). Requires 16s of input channels.
fn lower_packed(s: &ConvShape, x: &[f32], rows: std::ops::Range<usize>, out: &mut [u16]) {
    const ZEROS: [f32; 16] = [0.0; 16];
    assert!(s.c_in.is_multiple_of(16) && rows.len() <= TILE_ROWS);
    let (patch, kp) = (s.patch(), rows.len().next_multiple_of(bf16::K_STEP));
    assert!(out.len() >= kp * patch);
    // Each row's image offset and the input pixel of its patch's first tap.
    let mut origin = [(0usize, 0isize, 0isize); TILE_ROWS];
    for_each_row(s, rows.clone(), |r, img, oy, ox| {
        let (iy, ix) = ((oy * s.stride) as isize - s.pad as isize, (ox * s.stride) as isize - s.pad as isize);
        origin[r - rows.start] = (img * s.in_len(), iy, ix);
    });
    let origin = &origin[..rows.len()];
    let source = |row: usize, ky: usize, kx: usize, channel: usize| -> &[f32] {
        let Some(&(base, iy, ix)) = origin.get(row) else { return &ZEROS };
        let (y, x_) = (iy + ky as isize, ix + kx as isize);
        if y < 0 || x_ < 0 || y >= s.h as isize || x_ >= s.w as isize {
            return &ZEROS;
        }
        &x[base + (y as usize * s.w + x_ as usize) * s.c_in + channel..][..16]
    };
    bf16::run(
        #[inline(always)]
        || {
            for (j, strip) in out[..kp * patch].chunks_exact_mut(16 * kp).enumerate() {
                let (tap, channel) = (16 * j / s.c_in, 16 * j % s.c_in);
                let (ky, kx) = (tap / s.kernel, tap % s.kernel);
                for (q, pair) in strip.chunks_exact_mut(32).enumerate() {
                    let first = source(2 * q, ky, kx, channel);
                    bf16::round_pair_row(first, Some(source(2 * q + 1, ky, kx, channel)), pair);
                }
            }
        },
    )
}

/// Adds the column gradients of output rows `rows` back onto the input-gradient images
/// (the adjoint of `im2col`); `dx` holds the images of `images` only.
fn col2im_add(
    s: &ConvShape,
    dcol: &[f32],
    rows: std::ops::Range<usize>,
    images: std::ops::Range<usize>,
    dx: &mut [f32],
) {
    crate::simd!({
        let (c, k, patch) = (s.c_in, s.kernel, s.patch());
        let first = rows.start;
        for_each_row(s, rows, |r, img, oy, ox| {
            let dxi = &mut dx[(img - images.start) * s.in_len()..][..s.in_len()];
            let row = &dcol[(r - first) * patch..][..patch];
            for ky in 0..k {
                let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                if iy < 0 || iy >= s.h as isize {
                    continue;
                }
                for kx in 0..k {
                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                    if ix < 0 || ix >= s.w as isize {
                        continue;
                    }
                    let dst = (iy as usize * s.w + ix as usize) * c;
                    let src = &row[(ky * k + kx) * c..][..c];
                    for (d, g) in dxi[dst..dst + c].iter_mut().zip(src) {
                        *d += g;
                    }
                }
            }
        });
    })
}

/// Where a backward pass puts the input gradient: in a slice for the kernels here, in a
/// `device::ViewMut` for the layers.
pub enum InputGrad<D> {
    /// Not wanted (the network's first layer).
    Skip,
    /// Overwrites it.
    Set(D),
    /// Adds to it, so that a caller can sum branches.
    Add(D),
}

impl InputGrad<&mut [f32]> {
    /// The slice and whether to add to it, if a gradient is wanted.
    fn target(&mut self) -> Option<(&mut [f32], bool)> {
        match self {
            InputGrad::Skip => None,
            InputGrad::Set(dx) => Some((&mut **dx, false)),
            InputGrad::Add(dx) => Some((&mut **dx, true)),
        }
    }
}

/// `y = conv(x, w)` for a batch of `n` images, by the algorithm the workspace picks.
pub fn forward(s: &ConvShape, n: usize, x: &[f32], w: &[f32], y: &mut [f32], ws: &mut Workspace) {
    forward_with(s, n, x, w, y, Store::Overwrite, None, ws)
}

/// A convolution's weights in the forms its inference kernels read, made from the OHWI
/// weights on first use and kept for the following calls. Whoever keeps one must drop it
/// when the weights change (`nn::Conv2d` does).
#[derive(Default)]
pub struct Prepared {
    /// Packed for `panel::product_packed`.
    gemm: Option<Vec<f32>>,
    /// Transformed by `winograd::transform_weights`.
    winograd: Option<Vec<f32>>,
    /// Packed in bf16 for `bf16::product`.
    bf16: Option<Vec<u16>>,
    /// Packed in bf16 for `bf16::conv3x3`.
    bf16_3x3: Option<Vec<u16>>,
}

/// The weights of an im2col GEMM as its kernel reads them.
#[derive(Clone, Copy)]
enum Packed<'a> {
    /// Not packed: the `gemm` crate reads them in place.
    No,
    F32(&'a [f32]),
    Bf16(&'a [u16]),
}

/// `conv(x, w)` into `y` as `store` says: by Winograd or the direct kernel where they
/// apply, else by im2col + GEMM; the one choice for the forward and for the input gradient
/// (a forward on `dy` with the flipped kernel). With `prepared` (inference), Winograd
/// reads weights transformed once (and so pays off from 16 tiles on) and the GEMM weights
/// packed once.
#[allow(clippy::too_many_arguments)]
pub fn forward_with(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    store: Store<&[f32]>,
    prepared: Option<&mut Prepared>,
    ws: &mut Workspace,
) {
    if ws.precision == Precision::Bf16 && bf16::applies(s.c_out) {
        // Every bf16 convolution is a GEMM, as oneDNN's are: Winograd's transforms would
        // add their own rounding error to bf16's. 3×3 stride-1 layers on AMX read their
        // input in place (`bf16::conv3x3`), the others through im2col.
        #[cfg(target_arch = "x86_64")]
        if bf16::conv3x3::applies(s) {
            return conv3x3_bf16(s, n, x, w, y, store, prepared, ws);
        }
        let packed = match prepared {
            Some(p) => Packed::Bf16(p.bf16.get_or_insert_with(|| {
                let mut packed = vec![0u16; bf16::packed_len(s.patch(), s.c_out)];
                bf16::pack(weights_as_b(s, w), s.patch(), s.c_out, &mut packed);
                packed
            })),
            None => Packed::No,
        };
        return im2col_gemm(s, n, x, w, packed, y, store, ws);
    }
    let small = winograd_small::applies(s, ws.algo);
    if small || winograd::applies(s, n, ws.threads.len(), ws.algo, prepared.is_some()) {
        let u = prepared.map(|p| &**p.winograd.get_or_insert_with(|| winograd::transform_weights(s, w)));
        return match small {
            true => winograd_small::forward(s, n, x, w, u, y, store, ws),
            false => winograd::forward(winograd::way_for(s, n), s, n, x, w, u, y, store, ws),
        };
    }
    if direct::applies(s, n, ws.threads.len(), ws.algo) {
        return direct::forward(s, n, x, w, y, store, ws);
    }
    let packed = match prepared {
        Some(p) if panel::applies(s.c_out) => Packed::F32(p.gemm.get_or_insert_with(|| {
            let mut packed = vec![0f32; s.weight_len()];
            pack_weights(s, w, &mut packed);
            packed
        })),
        _ => Packed::No,
    };
    im2col_gemm(s, n, x, w, packed, y, store, ws)
}

/// `conv(x, w)` into `y` as `store` says, by `bf16::conv3x3`, on weights packed once in
/// `prepared` if given, else here.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn conv3x3_bf16(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    store: Store<&[f32]>,
    prepared: Option<&mut Prepared>,
    ws: &mut Workspace,
) {
    use bf16::conv3x3;
    match prepared {
        Some(p) => {
            let packed = p.bf16_3x3.get_or_insert_with(|| {
                let mut packed = vec![0u16; conv3x3::packed_len(s)];
                conv3x3::pack_weights(s, w, &mut packed);
                packed
            });
            conv3x3::forward(s, n, x, packed, y, store, ws);
        }
        None => {
            let mut packed = std::mem::take(&mut ws.packed_bf16);
            ensure_len(&mut packed, conv3x3::packed_len(s));
            conv3x3::pack_weights(s, w, &mut packed);
            conv3x3::forward(s, n, x, &packed, y, store, ws);
            ws.packed_bf16 = packed;
        }
    }
}

/// The OHWI weights as the GEMM's B (patch × c_out).
fn weights_as_b<'a>(s: &ConvShape, w: &'a [f32]) -> Mat<'a> {
    Mat::transposed(w, s.patch())
}

/// The OHWI weights as the GEMM's B, packed for `panel::product_packed`.
fn pack_weights(s: &ConvShape, w: &[f32], out: &mut [f32]) {
    panel::pack(weights_as_b(s, w), s.patch(), s.c_out, out);
}

/// `conv(x, w)` into `y` as `store` says, by im2col + GEMM, whatever the shape. The GEMM
/// runs on `bf16::product` in bf16, else on
/// `panel::product_packed` where it applies, on `packed` if given, else on weights packed
/// here once for all tiles.
#[allow(clippy::too_many_arguments)]
fn im2col_gemm(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    packed: Packed,
    y: &mut [f32],
    store: Store<&[f32]>,
    ws: &mut Workspace,
) {
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len() && w.len() == s.weight_len());
    let mut own = std::mem::take(&mut ws.packed_weights);
    let mut own_bf16 = std::mem::take(&mut ws.packed_bf16);
    let packed = match packed {
        Packed::No if ws.precision == Precision::Bf16 && bf16::applies(s.c_out) => {
            let len = bf16::packed_len(s.patch(), s.c_out);
            ensure_len(&mut own_bf16, len);
            bf16::pack(weights_as_b(s, w), s.patch(), s.c_out, &mut own_bf16);
            Packed::Bf16(&own_bf16[..len])
        }
        Packed::No if panel::applies(s.c_out) => {
            ensure_len(&mut own, s.weight_len());
            pack_weights(s, w, &mut own);
            Packed::F32(&own[..s.weight_len()])
        }
        packed => packed,
    };
    let is_packed = !matches!(packed, Packed::No);
    let threads = ws.threads.len();
    let rows = n * s.out_pixels();
    // On packed weights, one row panel of the product per tile.
    let tile_rows = if is_packed { panel::MC } else { TILE_ROWS };
    let tiles = rows.div_ceil(tile_rows);
    // Few rows (late layers at small batch): split the output channels too, in blocks of
    // whole SIMD widths (packed strips), so every thread has work.
    let unit = if is_packed { panel::STRIP } else { 8 };
    let col_blocks = if tiles >= threads { 1 } else { threads.div_ceil(tiles).min(s.c_out / 16).max(1) };
    let items = tiles * col_blocks;
    // Every work item writes its own block of rows × channels, disjoint from the others'.
    let out = SharedOut(y[..rows * s.c_out].as_mut_ptr());
    let patch = s.patch();
    for_each_item(&mut ws.threads, items, |scr, item| {
        crate::simd!({
            let (tile, block) = (item / col_blocks, item % col_blocks);
            let (start, end) = (tile * tile_rows, ((tile + 1) * tile_rows).min(rows));
            let units = split_range(s.c_out / unit, col_blocks, block);
            let cols = units.start * unit..if block + 1 == col_blocks { s.c_out } else { units.end * unit };
            let m = end - start;
            // bf16 patches are rounded as they are lowered, straight into the rows the
            // product reads (one pass over the column matrix instead of two).
            let lowered_bf16 = matches!(packed, Packed::Bf16(_)) && !s.is_pointwise();
            let a: &[f32] = if lowered_bf16 {
                &[]
            } else if s.is_pointwise() {
                &x[start * s.c_in..end * s.c_in]
            } else {
                // With several column blocks there are about as many items as threads, so
                // each tile's rows are lowered once per block, by whichever thread takes it.
                ensure_len(&mut scr.col, m * patch);
                im2col(s, x, start..end, &mut scr.col);
                &scr.col[..m * patch]
            };
            // SAFETY: rows start..end × channels `cols` of y lie inside y and belong to this
            // work item alone.
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    out.base().add(start * s.c_out + cols.start),
                    (m - 1) * s.c_out + cols.len(),
                )
            };
            let strips = cols.start / panel::STRIP..cols.end / panel::STRIP;
            let block_store = store.for_block(start, s.c_out, cols.clone());
            match packed {
                Packed::F32(packed) => {
                    panel::product_packed(
                        dst,
                        s.c_out,
                        m,
                        strips,
                        patch,
                        a,
                        patch,
                        packed,
                        block_store,
                        &mut scr.a_panel,
                    );
                }
                Packed::Bf16(packed) if lowered_bf16 => {
                    let (kp, rows) = (patch.next_multiple_of(bf16::K_STEP), bf16::rows_for(m));
                    ensure_len(&mut scr.b_bf16, rows * kp);
                    let rounded = &mut scr.b_bf16[..rows * kp];
                    lower(s, x, start..end, rounded, kp);
                    rounded[m * kp..].fill(0);
                    let a = bf16::Rows::Rounded { a: rounded };
                    bf16::product(dst, s.c_out, m, strips, patch, a, packed, block_store, &mut scr.a_bf16);
                }
                Packed::Bf16(packed) => {
                    let a = bf16::Rows::Direct { a, lda: patch };
                    bf16::product(dst, s.c_out, m, strips, patch, a, packed, block_store, &mut scr.a_bf16);
                }
                Packed::No => {
                    let wt = weights_as_b(s, &w[cols.start * patch..cols.end * patch]);
                    let width = cols.len();
                    match store {
                        Store::Finish(epi) if matches!(epi.residual, Residual::InOutput) => {
                            // The residual is in dst: the products go to a tile of their own.
                            ensure_len(&mut scr.dcol, m * width);
                            let tile = &mut scr.dcol[..m * width];
                            matmul(tile, width, m, width, patch, Mat::rows(a, patch), wt, false);
                            for (r, values) in tile.chunks_exact(width).enumerate() {
                                epi.apply_over(
                                    values,
                                    &mut dst[r * s.c_out..][..width],
                                    start + r,
                                    s.c_out,
                                    cols.clone(),
                                );
                            }
                        }
                        _ => {
                            matmul(dst, s.c_out, m, width, patch, Mat::rows(a, patch), wt, store.accumulates());
                            if let Store::Finish(epi) = store {
                                for r in 0..m {
                                    epi.apply(&mut dst[r * s.c_out..][..width], start + r, s.c_out, cols.clone());
                                }
                            }
                        }
                    }
                }
            }
        })
    });
    ws.packed_weights = own;
    ws.packed_bf16 = own_bf16;
}

/// Gradients of a convolution: `dw = Σ dyᵀ·col(x)` (overwritten, or added to as
/// `ws.grad_mode` says) and the input gradient `convᵀ(dy)` into `dx` as it says, by the
/// algorithm the workspace picks. The kernels write a fresh gradient outright (which saves
/// clearing it and reading it back); one to be added is made apart and added.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dx: InputGrad<&mut [f32]>,
    ws: &mut Workspace,
) {
    if ws.grad_mode == super::GradMode::Overwrite {
        return backward_overwriting(s, n, x, w, dy, dw, dx, ws);
    }
    let mut sum = std::mem::take(&mut ws.grad_sum);
    ensure_len(&mut sum, dw.len());
    let fresh = &mut sum[..dw.len()];
    ws.grad_mode = super::GradMode::Overwrite;
    backward_overwriting(s, n, x, w, dy, fresh, dx, ws);
    ws.grad_mode = super::GradMode::Accumulate;
    dw.iter_mut().zip(&*fresh).for_each(|(g, f)| *g += f);
    ws.grad_sum = sum;
}

#[allow(clippy::too_many_arguments)]
fn backward_overwriting(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    mut dx: InputGrad<&mut [f32]>,
    ws: &mut Workspace,
) {
    let threads = ws.threads.len();
    let small = winograd_small::applies(s, ws.algo);
    let winograd = winograd::applies(s, n, threads, ws.algo, false);
    if ws.precision == Precision::Bf16 {
        // As the forward: im2col GEMMs, in bf16 where the channels come in 16s.
        return backward_im2col(s, n, x, w, dy, dw, dx, ws);
    }
    if small {
        winograd_small::backward_weights(s, n, x, dy, dw, ws);
    } else if winograd {
        winograd::backward_weights(s, n, x, dy, dw, ws);
    } else if direct::applies(s, n, threads, ws.algo) {
        direct::backward_weights(s, n, x, dy, dw, ws);
    } else {
        return backward_im2col(s, n, x, w, dy, dw, dx, ws);
    }
    if let Some((dx, add)) = dx.target() {
        // The same choice as the forward's, made on the flipped shape (channel counts
        // swapped); Winograd's depends on them symmetrically, so it matches the choice above.
        with_flipped_kernel(s, w, ws, |t, flipped, ws| {
            forward_with(t, n, dy, flipped, dx, Store::adding(add), None, ws)
        });
    }
}

/// `backward` by im2col + GEMM, whatever the shape. The input gradient of a stride-1
/// convolution is itself a convolution (of `dy` with the flipped kernel), computed as one;
/// other strides scatter the column gradients back with col2im.
#[allow(clippy::too_many_arguments)]
pub fn backward_im2col(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    mut dx: InputGrad<&mut [f32]>,
    ws: &mut Workspace,
) {
    assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len() && dw.len() == s.weight_len());
    match dx.target() {
        Some((dx, add)) if s.stride == 1 && !s.is_pointwise() && s.pad < s.kernel => {
            // A GEMM over im2col(dy) with k = 9·c_out beats the k = c_out GEMM plus the
            // col2im scatter: the ResNet-20 training step ran 1.05-1.6x (median 1.2x) faster
            // in six alternating pairs; ResNet-50 (few such layers) did not change.
            weights_and_scatter(s, n, x, w, dy, dw, None, ws);
            #[cfg(target_arch = "x86_64")]
            if ws.precision == Precision::Bf16 && bf16::conv3x3::applies(&bf16::conv3x3::flipped(s)) {
                // The flipped kernel packed straight from w (no flipped copy).
                let t = bf16::conv3x3::flipped(s);
                let mut packed = std::mem::take(&mut ws.packed_bf16);
                ensure_len(&mut packed, bf16::conv3x3::packed_len(&t));
                bf16::conv3x3::pack_flipped(s, w, &mut packed);
                bf16::conv3x3::forward(&t, n, dy, &packed, dx, Store::adding(add), ws);
                ws.packed_bf16 = packed;
                return;
            }
            with_flipped_kernel(s, w, ws, |t, flipped, ws| match ws.precision {
                // bf16 picks its own way (`forward_with`).
                Precision::Bf16 => forward_with(t, n, dy, flipped, dx, Store::adding(add), None, ws),
                Precision::F32 | Precision::Tf32 => {
                    im2col_gemm(t, n, dy, flipped, Packed::No, dx, Store::adding(add), ws)
                }
            });
        }
        dx => weights_and_scatter(s, n, x, w, dy, dw, dx, ws),
    }
}

/// Calls `f` with the shape and weights of the convolution that maps `dy` to `dx` for a
/// stride-1 convolution `s` (in- and out-channels swapped, the kernel rotated by 180°,
/// padding `k-1-pad`). The weights live in the workspace, so nothing is allocated.
pub(crate) fn with_flipped_kernel(
    s: &ConvShape,
    w: &[f32],
    ws: &mut Workspace,
    f: impl FnOnce(&ConvShape, &[f32], &mut Workspace),
) {
    debug_assert!(s.stride == 1 && s.pad < s.kernel);
    let t = ConvShape { c_in: s.c_out, c_out: s.c_in, pad: s.kernel - 1 - s.pad, h: s.out_h(), w: s.out_w(), ..*s };
    let mut flipped = std::mem::take(&mut ws.flipped_weights);
    flip_kernel(s, w, &mut flipped);
    f(&t, &flipped[..s.weight_len()], ws);
    ws.flipped_weights = flipped;
}

fn flip_kernel(s: &ConvShape, w: &[f32], flipped: &mut Vec<f32>) {
    let (ci, co, k) = (s.c_in, s.c_out, s.kernel);
    ensure_len(flipped, s.weight_len());
    for o in 0..co {
        for ky in 0..k {
            for kx in 0..k {
                let src = &w[((o * k + ky) * k + kx) * ci..][..ci];
                for (i, v) in src.iter().enumerate() {
                    flipped[((i * k + k - 1 - ky) * k + k - 1 - kx) * co + o] = *v;
                }
            }
        }
    }
}

/// `dw` by GEMM over image ranges per thread and, when `dx` is given, the input gradient
/// (added to `dx` if the flag says so): the column gradients scattered back by col2im.
#[allow(clippy::too_many_arguments)]
fn weights_and_scatter(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dx: Option<(&mut [f32], bool)>,
    ws: &mut Workspace,
) {
    let pixels = s.out_pixels();
    // dx's GEMMs have the weights as B (c_out × patch): packed once for all tiles.
    let mut own = std::mem::take(&mut ws.packed_weights);
    let mut own_bf16 = std::mem::take(&mut ws.packed_bf16);
    let in_bf16 = ws.precision == Precision::Bf16;
    let packed = match dx.is_some() {
        true if in_bf16 && bf16::applies(s.patch()) => {
            let len = bf16::packed_len(s.c_out, s.patch());
            ensure_len(&mut own_bf16, len);
            bf16::pack(Mat::rows(w, s.patch()), s.c_out, s.patch(), &mut own_bf16);
            Packed::Bf16(&own_bf16[..len])
        }
        true if panel::applies(s.patch()) => {
            ensure_len(&mut own, s.weight_len());
            panel::pack(Mat::rows(w, s.patch()), s.c_out, s.patch(), &mut own);
            Packed::F32(&own[..s.weight_len()])
        }
        _ => Packed::No,
    };
    // The weight gradient by our panel kernel where the output channels come in 16s, as
    // its transpose, so that the kernel's 16 columns are output channels (the `gemm`
    // crate, which ran it before, allocated its packing room on every call).
    // In bf16 one operand is rounded by rows as it lies (packed B, along k: pixels here)
    // and the other transposed into rows of A: dy (`dw = dyᵀ · col`), or the column
    // matrix (`dwᵀ = colᵀ · dy`) where that is narrower and the output channels few, and
    // for the stem, whose 147-long patches are not whole strips of B. Measured on
    // ResNet-50's layers at batch 16 (ms, dy's way against the columns'): 1×1 64→256
    // 11.3 / 8.5, 128→512 3.9 / 3.5, 256→1024 2.3 / 3.0, 512→2048 2.1 / 9.1.
    let narrow_columns = s.patch() < s.c_out && s.c_out <= 256;
    let bf16_dw_by_columns = in_bf16 && bf16::applies(s.c_out) && (!bf16::applies(s.patch()) || narrow_columns);
    let bf16_dw = in_bf16 && bf16::applies(s.patch()) && !bf16_dw_by_columns;
    let transposed_dw = (panel::applies(s.c_out) && !bf16_dw) || bf16_dw_by_columns;
    // Each group of images scatters into its own images of dx.
    let (dx, add) = match dx {
        Some((dx, add)) => (Some(SharedOut(dx[..n * s.in_len()].as_mut_ptr())), add),
        None => (None, false),
    };
    let sum = sum_groups(&mut ws.threads, &mut ws.partials, s.weight_len(), n, |scr, imgs, dwt| {
        crate::simd!({
            // SAFETY: the images of this group lie inside dx, and no other group writes them.
            let mut dxt = dx.map(|dx| unsafe {
                std::slice::from_raw_parts_mut(dx.base().add(imgs.start * s.in_len()), imgs.len() * s.in_len())
            });
            // col2im adds every column gradient: a fresh gradient starts from zero.
            if let Some(dxt) = dxt.as_deref_mut().filter(|_| !add && !s.is_pointwise()) {
                dxt.fill(0.0);
            }
            let (first, last) = (imgs.start * pixels, imgs.end * pixels);
            let mut start = first;
            while start < last {
                let end = (start + TILE_ROWS).min(last);
                let m = end - start;
                let dyg = &dy[start * s.c_out..end * s.c_out];
                let col: &[f32] = if s.is_pointwise() {
                    &x[start * s.c_in..end * s.c_in]
                } else if bf16_dw {
                    &[] // lowered straight into bf16's packed B below
                } else {
                    ensure_len(&mut scr.col, m * s.patch());
                    im2col(s, x, start..end, &mut scr.col);
                    &scr.col[..m * s.patch()]
                };
                if bf16_dw {
                    // dw[c_out × patch] += dyᵀ[c_out × m] · col[m × patch], col packed.
                    ensure_len(&mut scr.b_bf16, bf16::packed_len(m, s.patch()));
                    match s.is_pointwise() {
                        true => bf16::pack(Mat::rows(col, s.patch()), m, s.patch(), &mut scr.b_bf16),
                        false => lower_packed(s, x, start..end, &mut scr.b_bf16),
                    }
                    let strips = 0..s.patch() / panel::STRIP;
                    let at = bf16::Rows::Transposed { at: dyg, ldat: s.c_out };
                    let store = Store::Accumulate;
                    let (b, a_block) = (&scr.b_bf16, &mut scr.a_bf16);
                    bf16::product(dwt, s.patch(), s.c_out, strips, m, at, b, store, a_block);
                } else if bf16_dw_by_columns {
                    // dwᵀ[patch × c_out] += colᵀ[patch × m] · dy[m × c_out], in bf16.
                    ensure_len(&mut scr.b_bf16, bf16::packed_len(m, s.c_out));
                    bf16::pack(Mat::rows(dyg, s.c_out), m, s.c_out, &mut scr.b_bf16);
                    let strips = 0..s.c_out / panel::STRIP;
                    let at = bf16::Rows::Transposed { at: col, ldat: s.patch() };
                    let store = Store::Accumulate;
                    let (b, a_block) = (&scr.b_bf16, &mut scr.a_bf16);
                    bf16::product(dwt, s.c_out, s.patch(), strips, m, at, b, store, a_block);
                } else if transposed_dw {
                    // dwᵀ[patch × c_out] += colᵀ[patch × m] · dy[m × c_out], the tile of dy
                    // packed in strips.
                    ensure_len(&mut scr.b_panel, m * s.c_out);
                    panel::pack(Mat::rows(dyg, s.c_out), m, s.c_out, &mut scr.b_panel);
                    let strips = 0..s.c_out / panel::STRIP;
                    let (b, a_panel) = (&scr.b_panel, &mut scr.a_panel);
                    panel::product_packed_transposed(
                        dwt,
                        s.c_out,
                        s.patch(),
                        strips,
                        m,
                        col,
                        s.patch(),
                        b,
                        true,
                        a_panel,
                    );
                } else {
                    // dw[c_out × patch] += dyᵀ[c_out × m] · col[m × patch]
                    let dyt = Mat::transposed(dyg, s.c_out);
                    matmul(dwt, s.patch(), s.c_out, s.patch(), m, dyt, Mat::rows(col, s.patch()), true);
                }
                if let Some(dxt) = dxt.as_deref_mut() {
                    // dx rows (+)= dy rows · w, straight into dx for 1×1 (rows are pixels),
                    // else into column gradients that col2im adds up.
                    let (dst, accumulate) = if s.is_pointwise() {
                        (&mut dxt[(start - first) * s.c_in..][..m * s.c_in], add)
                    } else {
                        ensure_len(&mut scr.dcol, m * s.patch());
                        (&mut scr.dcol[..m * s.patch()], false)
                    };
                    let (patch, c_out) = (s.patch(), s.c_out);
                    let store = Store::adding(accumulate);
                    let strips = 0..patch / panel::STRIP;
                    match packed {
                        Packed::F32(packed) => {
                            let a_panel = &mut scr.a_panel;
                            panel::product_packed(dst, patch, m, strips, c_out, dyg, c_out, packed, store, a_panel);
                        }
                        Packed::Bf16(packed) => {
                            let a = bf16::Rows::Direct { a: dyg, lda: c_out };
                            bf16::product(dst, patch, m, strips, c_out, a, packed, store, &mut scr.a_bf16);
                        }
                        Packed::No => {
                            let (dyr, wr) = (Mat::rows(dyg, s.c_out), Mat::rows(w, s.patch()));
                            matmul(dst, s.patch(), m, s.patch(), s.c_out, dyr, wr, accumulate);
                        }
                    }
                    if !s.is_pointwise() {
                        col2im_add(s, &scr.dcol, start..end, imgs.clone(), dxt);
                    }
                }
                start = end;
            }
        })
    });
    if transposed_dw {
        for (q, row) in sum.chunks_exact(s.c_out).enumerate() {
            for (o, &v) in row.iter().enumerate() {
                dw[o * s.patch() + q] = v;
            }
        }
    } else {
        dw.copy_from_slice(sum);
    }
    ws.packed_weights = own;
    ws.packed_bf16 = own_bf16;
}
