//! Small kernels: ReLU mask, the option-A shortcut, the fully connected layer and
//! softmax cross-entropy. All NHWC.

use rayon::prelude::*;

/// `g *= (out > 0)`: the ReLU backward, given the ReLU's output; also copied to `copy`
/// if given (a residual block's two branches), in the same parallel pass.
pub fn relu_backward(g: &mut [f32], out: &[f32], copy: Option<&mut [f32]>) {
    const CHUNK: usize = 1 << 14;
    let len = g.len();
    // A multiply by 0 or 1, not `if o <= 0 { g = 0 }`: LLVM compiles that to masked stores,
    // which AMD's cores run slowly (ResNet-20's 16-channel maps at batch 128: 0.5–0.7 ms
    // against 1.1–1.4). The two differ only for an infinite or NaN gradient, where
    // training has failed anyway, and in the sign of a zero.
    let mask = |gc: &mut [f32], oc: &[f32]| {
        crate::simd!({
            for (gv, &o) in gc.iter_mut().zip(oc) {
                *gv *= f32::from(u8::from(o > 0.0));
            }
        })
    };
    let (g, out) = (g.par_chunks_mut(CHUNK), out[..len].par_chunks(CHUNK));
    match copy {
        None => g.zip(out).for_each(|(gc, oc)| mask(gc, oc)),
        Some(copy) => g.zip(out).zip(copy[..len].par_chunks_mut(CHUNK)).for_each(|((gc, oc), cc)| {
            mask(gc, oc);
            cc.copy_from_slice(gc);
        }),
    }
}

/// Geometry of the option-A shortcut: spatial subsample by `stride` (top-left pixel of
/// each cell, `x[:, :, ::s, ::s]`) and `pad` zero channels on each side of the channels.
#[derive(Clone, Copy, Debug)]
pub struct ShortcutA {
    pub h: usize,
    pub w: usize,
    pub c_in: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ShortcutA {
    pub fn out_h(&self) -> usize {
        self.h.div_ceil(self.stride)
    }
    pub fn out_w(&self) -> usize {
        self.w.div_ceil(self.stride)
    }
    pub fn c_out(&self) -> usize {
        self.c_in + 2 * self.pad
    }

    pub fn forward(&self, n: usize, x: &[f32], y: &mut [f32]) {
        let (oh, ow, co) = (self.out_h(), self.out_w(), self.c_out());
        y[..n * oh * ow * co].par_chunks_mut(oh * ow * co).enumerate().for_each(|(img, yi)| {
            let xi = &x[img * self.h * self.w * self.c_in..];
            for oy in 0..oh {
                for ox in 0..ow {
                    let dst = &mut yi[(oy * ow + ox) * co..][..co];
                    let src = ((oy * self.stride) * self.w + ox * self.stride) * self.c_in;
                    dst[..self.pad].fill(0.0);
                    dst[self.pad..self.pad + self.c_in].copy_from_slice(&xi[src..src + self.c_in]);
                    dst[self.pad + self.c_in..].fill(0.0);
                }
            }
        });
    }

    /// `dx = shortcutᵀ(g)`: overwrites `dx` (zeros where the subsample skipped pixels).
    pub fn backward(&self, n: usize, g: &[f32], dx: &mut [f32]) {
        let (oh, ow, co) = (self.out_h(), self.out_w(), self.c_out());
        let img_len = self.h * self.w * self.c_in;
        dx[..n * img_len].par_chunks_mut(img_len).enumerate().for_each(|(img, dxi)| {
            dxi.fill(0.0);
            let gi = &g[img * oh * ow * co..];
            for oy in 0..oh {
                for ox in 0..ow {
                    let src = &gi[(oy * ow + ox) * co + self.pad..][..self.c_in];
                    let dst = ((oy * self.stride) * self.w + ox * self.stride) * self.c_in;
                    dxi[dst..dst + self.c_in].copy_from_slice(src);
                }
            }
        });
    }
}

/// Fully connected: `y[n, o] = x[n, i] · wᵀ + b` with `w` as `[o, i]` (PyTorch's layout).
///
/// The classifier is a small share of any network's work (ResNet-50's is 0.05% of its
/// mult-adds), so it runs on one thread in plain loops the compiler vectorizes, where the
/// `gemm` crate would allocate its packing room on every call. Each row of
/// `w` meets every image in turn, so `w` (8 MB in ResNet-50) is read once, not once per
/// image: ResNet-50's classifier at batch 16 took 4.9 ms the other way round.
pub fn linear_forward(n: usize, i: usize, o: usize, x: &[f32], w: &[f32], b: &[f32], y: &mut [f32]) {
    let y = &mut y[..n * o];
    crate::simd!({
        for (col, (wr, b)) in w[..o * i].chunks_exact(i).zip(b).enumerate() {
            for (row, xr) in x[..n * i].chunks_exact(i).enumerate() {
                y[row * o + col] = b + dot(xr, wr);
            }
        }
    })
}

/// Backward of the fully connected layer: overwrites `dx`, and `dw` and `db` or, with
/// `accumulate`, adds to them. Row by row of `w`, as the forward, so that `w` and `dw` are
/// each passed over once.
#[allow(clippy::too_many_arguments)]
pub fn linear_backward(
    n: usize,
    i: usize,
    o: usize,
    x: &[f32],
    w: &[f32],
    g: &[f32],
    dw: &mut [f32],
    db: &mut [f32],
    dx: &mut [f32],
    accumulate: bool,
) {
    let (x, w, g, dx) = (&x[..n * i], &w[..o * i], &g[..n * o], &mut dx[..n * i]);
    // dw[o, i] = Σ_r g[r, o]·x[r, i]; db[o] = Σ_r g[r, o]; dx[r, i] = Σ_o g[r, o]·w[o, i]
    dx.fill(0.0);
    // A gradient to be added is made apart and added whole (old + new), as the sums of
    // micro-batches or of ranks are, so that both round alike.
    let mut fresh = vec![0f32; if accumulate { i } else { 0 }];
    crate::simd!({
        let rows = dw[..o * i].chunks_exact_mut(i).zip(&mut db[..o]).zip(w.chunks_exact(i));
        for (col, ((dwr, db), wr)) in rows.enumerate() {
            let sum: &mut [f32] = if accumulate { &mut fresh } else { &mut *dwr };
            sum.fill(0.0);
            let mut bias = 0.0;
            for (row, (xr, dxr)) in x.chunks_exact(i).zip(dx.chunks_exact_mut(i)).enumerate() {
                let gv = g[row * o + col];
                axpy(gv, xr, sum);
                bias += gv;
                axpy(gv, wr, dxr);
            }
            if accumulate {
                dwr.iter_mut().zip(&fresh).for_each(|(d, f)| *d += f);
                *db += bias;
            } else {
                *db = bias;
            }
        }
    })
}

/// `Σ a[j]·b[j]` in 16 lanes (two registers, so that two sums are in flight).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let (ac, bc) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ac.remainder().iter().zip(bc.remainder()).map(|(x, y)| x * y).sum();
    for (a16, b16) in ac.zip(bc) {
        for j in 0..16 {
            lanes[j] += a16[j] * b16[j];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// `y += alpha·x`.
#[inline(always)]
pub(crate) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// Mean softmax cross-entropy over the batch. Writes dL/dlogits to `grad` and returns
/// (loss, number of correct top-1 predictions).
pub fn softmax_cross_entropy(
    n: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    grad: &mut [f32],
) -> (f32, usize) {
    softmax_cross_entropy_of(n, n, classes, logits, labels, grad)
}

/// [`softmax_cross_entropy`] of `n` rows that are part of a batch of `batch`: the gradient
/// is that of the whole batch's mean loss (divided by `batch`), the loss returned the mean
/// over these rows.
pub fn softmax_cross_entropy_of(
    n: usize,
    batch: usize,
    classes: usize,
    logits: &[f32],
    labels: &[u32],
    grad: &mut [f32],
) -> (f32, usize) {
    let mut loss = 0f64;
    let mut correct = 0;
    for r in 0..n {
        let z = &logits[r * classes..(r + 1) * classes];
        let g = &mut grad[r * classes..(r + 1) * classes];
        let (arg, max) = argmax(z);
        let mut sum = 0f64;
        for (gv, &zv) in g.iter_mut().zip(z) {
            let e = ((zv - max) as f64).exp();
            *gv = e as f32;
            sum += e;
        }
        let label = labels[r] as usize;
        loss += sum.ln() - (z[label] - max) as f64;
        for gv in g.iter_mut() {
            *gv = (*gv as f64 / sum / batch as f64) as f32;
        }
        g[label] -= 1.0 / batch as f32;
        correct += usize::from(arg == label);
    }
    ((loss / n as f64) as f32, correct)
}

/// Index and value of the largest element (first one on ties).
pub fn argmax(z: &[f32]) -> (usize, f32) {
    z.iter().enumerate().fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &v)| if v > bv { (i, v) } else { (bi, bv) })
}
