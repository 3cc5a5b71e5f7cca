//! 2-D convolution, NHWC activations and OHWI weights, as im2col + GEMM.
//!
//! The batch is split into one contiguous range of images per thread. Each thread
//! lowers a group of images into its own im2col buffer and runs one GEMM on it, so
//! the GEMMs are large enough to be efficient while scratch stays cache-sized.
//! 1×1 stride-1 convolutions skip im2col: the input already is the column matrix.

use super::matmul::{Mat, matmul};
use super::{Workspace, ensure_len, split_range};
use rayon::prelude::*;

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
    /// Images lowered together: enough output rows for an efficient GEMM.
    fn group(&self) -> usize {
        (512 / self.out_pixels()).max(1)
    }
}

/// Lowers `images` consecutive NHWC images into rows of `col` (one row per output pixel).
fn im2col(s: &ConvShape, x: &[f32], images: usize, col: &mut [f32]) {
    let (oh, ow, c, k, patch) = (s.out_h(), s.out_w(), s.c_in, s.kernel, s.patch());
    for img in 0..images {
        let xi = &x[img * s.in_len()..(img + 1) * s.in_len()];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &mut col[((img * oh + oy) * ow + ox) * patch..][..patch];
                for ky in 0..k {
                    let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                    for kx in 0..k {
                        let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                        let dst = &mut row[(ky * k + kx) * c..][..c];
                        if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                            dst.fill(0.0);
                        } else {
                            let src = (iy as usize * s.w + ix as usize) * c;
                            dst.copy_from_slice(&xi[src..src + c]);
                        }
                    }
                }
            }
        }
    }
}

/// Adds the column gradients back onto the input-gradient images (adjoint of im2col).
fn col2im_add(s: &ConvShape, dcol: &[f32], images: usize, dx: &mut [f32]) {
    let (oh, ow, c, k, patch) = (s.out_h(), s.out_w(), s.c_in, s.kernel, s.patch());
    for img in 0..images {
        let dxi = &mut dx[img * s.in_len()..(img + 1) * s.in_len()];
        for oy in 0..oh {
            for ox in 0..ow {
                let row = &dcol[((img * oh + oy) * ow + ox) * patch..][..patch];
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
            }
        }
    }
}

/// `y = conv(x, w)` for a batch of `n` images.
pub fn forward(s: &ConvShape, n: usize, x: &[f32], w: &[f32], y: &mut [f32], ws: &mut Workspace) {
    assert!(x.len() >= n * s.in_len() && y.len() >= n * s.out_len() && w.len() == s.weight_len());
    let threads = ws.threads.len();
    let y = &mut y[..n * s.out_len()];
    let ranges: Vec<_> = (0..threads).map(|t| split_range(n, threads, t)).collect();
    let mut outs = split_mut_by(y, &ranges, s.out_len());
    ws.threads.par_iter_mut().zip(outs.par_iter_mut()).zip(ranges.par_iter()).for_each(|((scr, yt), r)| {
        let wt = Mat::transposed(w, s.patch());
        let mut img = r.start;
        while img < r.end {
            let g = s.group().min(r.end - img);
            let rows = g * s.out_pixels();
            let xg = &x[img * s.in_len()..(img + g) * s.in_len()];
            let yg = &mut yt[(img - r.start) * s.out_len()..][..g * s.out_len()];
            if s.is_pointwise() {
                matmul(yg, s.c_out, rows, s.c_out, s.patch(), Mat::rows(xg, s.patch()), wt, false);
            } else {
                ensure_len(&mut scr.col, rows * s.patch());
                im2col(s, xg, g, &mut scr.col);
                matmul(yg, s.c_out, rows, s.c_out, s.patch(), Mat::rows(&scr.col, s.patch()), wt, false);
            }
            img += g;
        }
    });
}

/// Gradients of a convolution: `dw = Σ dyᵀ·col(x)` (overwritten) and, when `dx` is
/// given, `dx += col2im(dy·w)` (accumulated, so a caller can sum branches).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    dx: Option<&mut [f32]>,
    ws: &mut Workspace,
) {
    assert!(x.len() >= n * s.in_len() && dy.len() >= n * s.out_len() && dw.len() == s.weight_len());
    let threads = ws.threads.len();
    let ranges: Vec<_> = (0..threads).map(|t| split_range(n, threads, t)).collect();
    let mut dxs: Vec<Option<&mut [f32]>> = match dx {
        Some(dx) => split_mut_by(&mut dx[..n * s.in_len()], &ranges, s.in_len()).into_iter().map(Some).collect(),
        None => ranges.iter().map(|_| None).collect(),
    };
    ws.threads.par_iter_mut().zip(dxs.par_iter_mut()).zip(ranges.par_iter()).for_each(|((scr, dxt), r)| {
        ensure_len(&mut scr.dw, s.weight_len());
        let dwt = &mut scr.dw[..s.weight_len()];
        dwt.fill(0.0);
        let mut img = r.start;
        while img < r.end {
            let g = s.group().min(r.end - img);
            let rows = g * s.out_pixels();
            let xg = &x[img * s.in_len()..(img + g) * s.in_len()];
            let dyg = &dy[img * s.out_len()..(img + g) * s.out_len()];
            let col: &[f32] = if s.is_pointwise() {
                xg
            } else {
                ensure_len(&mut scr.col, rows * s.patch());
                im2col(s, xg, g, &mut scr.col);
                &scr.col[..rows * s.patch()]
            };
            // dw[c_out × patch] += dyᵀ[c_out × rows] · col[rows × patch]
            let dyt = Mat::transposed(dyg, s.c_out);
            matmul(dwt, s.patch(), s.c_out, s.patch(), rows, dyt, Mat::rows(col, s.patch()), true);
            if let Some(dxt) = dxt.as_deref_mut() {
                let dxg = &mut dxt[(img - r.start) * s.in_len()..][..g * s.in_len()];
                let dyr = Mat::rows(dyg, s.c_out);
                let wr = Mat::rows(w, s.patch());
                if s.is_pointwise() {
                    matmul(dxg, s.patch(), rows, s.patch(), s.c_out, dyr, wr, true);
                } else {
                    ensure_len(&mut scr.dcol, rows * s.patch());
                    matmul(&mut scr.dcol, s.patch(), rows, s.patch(), s.c_out, dyr, wr, false);
                    col2im_add(s, &scr.dcol, g, dxg);
                }
            }
            img += g;
        }
    });
    dw.fill(0.0);
    for scr in &ws.threads {
        for (d, p) in dw.iter_mut().zip(&scr.dw[..s.weight_len()]) {
            *d += p;
        }
    }
}

/// Splits `buf` into disjoint mutable pieces, one per range of items of `item` elements.
pub fn split_mut_by<'a>(mut buf: &'a mut [f32], ranges: &[std::ops::Range<usize>], item: usize) -> Vec<&'a mut [f32]> {
    let mut out = Vec::with_capacity(ranges.len());
    for r in ranges {
        let (head, tail) = buf.split_at_mut(r.len() * item);
        out.push(head);
        buf = tail;
    }
    out
}
