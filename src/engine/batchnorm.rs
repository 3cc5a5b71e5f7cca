//! Batch normalization over the rows of an NHWC tensor viewed as `[rows, c]`, with
//! the ReLU and the residual addition that follow it in a ResNet fused in.
//!
//! Statistics are accumulated in f64 per thread, then combined, so results do not
//! depend on the thread count beyond f32 rounding of the output.

use rayon::prelude::*;

/// Rows per parallel task: large enough to amortise the per-task partial sums.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(64)
}

/// Per-channel sums of `a` and of `a*b` over all rows (b = None: sums of a and a²).
fn channel_sums(a: &[f32], c: usize, rows: usize) -> (Vec<f64>, Vec<f64>) {
    let chunk = chunk_rows(rows) * c;
    a[..rows * c]
        .par_chunks(chunk)
        .map(|part| {
            let mut s = vec![0f64; c];
            let mut q = vec![0f64; c];
            for row in part.chunks_exact(c) {
                for ((s, q), &v) in s.iter_mut().zip(q.iter_mut()).zip(row) {
                    let v = v as f64;
                    *s += v;
                    *q += v * v;
                }
            }
            (s, q)
        })
        .reduce(|| (vec![0f64; c], vec![0f64; c]), add_pair)
}

fn add_pair(mut a: (Vec<f64>, Vec<f64>), b: (Vec<f64>, Vec<f64>)) -> (Vec<f64>, Vec<f64>) {
    for (x, y) in a.0.iter_mut().zip(&b.0) {
        *x += y;
    }
    for (x, y) in a.1.iter_mut().zip(&b.1) {
        *x += y;
    }
    a
}

/// Parameters and running statistics of one BatchNorm layer.
pub struct BnParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
}

/// `y = [relu](scale*x + shift [+ residual])`, the shared elementwise tail.
fn apply(x: &[f32], c: usize, scale: &[f32], shift: &[f32], residual: Option<&[f32]>, relu: bool, y: &mut [f32]) {
    let chunk = chunk_rows(x.len() / c) * c;
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, yc)| {
        let start = i * chunk;
        let xc = &x[start..start + yc.len()];
        for (r, (yr, xr)) in yc.chunks_exact_mut(c).zip(xc.chunks_exact(c)).enumerate() {
            for j in 0..c {
                yr[j] = xr[j] * scale[j] + shift[j];
            }
            if let Some(res) = residual {
                let rr = &res[start + r * c..start + (r + 1) * c];
                for j in 0..c {
                    yr[j] += rr[j];
                }
            }
            if relu {
                for v in yr.iter_mut() {
                    *v = v.max(0.0);
                }
            }
        }
    });
}

/// Training-mode forward: normalizes with batch statistics, writes them to
/// `mean`/`invstd` for the backward pass and updates the running averages with
/// PyTorch's convention (`running = (1-m)*running + m*batch`, unbiased variance).
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    p: &BnParams,
    x: &[f32],
    rows: usize,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    mean: &mut [f32],
    invstd: &mut [f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let c = p.gamma.len();
    let (s, q) = channel_sums(x, c, rows);
    let m = rows as f64;
    let mut scale = vec![0f32; c];
    let mut shift = vec![0f32; c];
    for j in 0..c {
        let mu = s[j] / m;
        let var = (q[j] / m - mu * mu).max(0.0);
        let is = 1.0 / (var + p.eps as f64).sqrt();
        mean[j] = mu as f32;
        invstd[j] = is as f32;
        scale[j] = (p.gamma[j] as f64 * is) as f32;
        shift[j] = (p.beta[j] as f64 - mu * p.gamma[j] as f64 * is) as f32;
        let unbiased = if rows > 1 { var * m / (m - 1.0) } else { var };
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mu as f32;
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * unbiased as f32;
    }
    apply(&x[..rows * c], c, &scale, &shift, residual, relu, &mut y[..rows * c]);
}

/// Inference-mode forward with the running statistics.
#[allow(clippy::too_many_arguments)]
pub fn forward_eval(
    p: &BnParams,
    x: &[f32],
    rows: usize,
    running_mean: &[f32],
    running_var: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let c = p.gamma.len();
    let (mut scale, mut shift) = (vec![0f32; c], vec![0f32; c]);
    eval_affine(p, running_mean, running_var, &mut scale, &mut shift);
    apply(&x[..rows * c], c, &scale, &shift, residual, relu, &mut y[..rows * c]);
}

/// Inference-mode BatchNorm as `x·scale + shift`, from the running statistics.
pub fn eval_affine(p: &BnParams, running_mean: &[f32], running_var: &[f32], scale: &mut [f32], shift: &mut [f32]) {
    for j in 0..p.gamma.len() {
        scale[j] = p.gamma[j] / (running_var[j] + p.eps).sqrt();
        shift[j] = p.beta[j] - running_mean[j] * scale[j];
    }
}

/// Training-mode backward, in place: `g` holds dL/dy on entry and dL/dx on return.
/// With `relu_out` (the fused ReLU's output), `g` is first masked where it was zero.
/// `dgamma`/`dbeta` are overwritten.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &BnParams,
    x: &[f32],
    rows: usize,
    mean: &[f32],
    invstd: &[f32],
    relu_out: Option<&[f32]>,
    g: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let c = p.gamma.len();
    let chunk = chunk_rows(rows) * c;
    if let Some(out) = relu_out {
        g[..rows * c].par_chunks_mut(chunk).zip(out[..rows * c].par_chunks(chunk)).for_each(|(gc, oc)| {
            for (gv, &o) in gc.iter_mut().zip(oc) {
                if o <= 0.0 {
                    *gv = 0.0;
                }
            }
        });
    }
    // Σ dy and Σ dy·x̂ per channel.
    let (sum_dy, sum_dy_xhat) = g[..rows * c]
        .par_chunks(chunk)
        .zip(x[..rows * c].par_chunks(chunk))
        .map(|(gc, xc)| {
            let mut s = vec![0f64; c];
            let mut t = vec![0f64; c];
            for (gr, xr) in gc.chunks_exact(c).zip(xc.chunks_exact(c)) {
                for j in 0..c {
                    let xhat = (xr[j] - mean[j]) * invstd[j];
                    s[j] += gr[j] as f64;
                    t[j] += (gr[j] * xhat) as f64;
                }
            }
            (s, t)
        })
        .reduce(|| (vec![0f64; c], vec![0f64; c]), add_pair);
    let m = rows as f64;
    let mut k = vec![0f32; c]; // gamma * invstd
    let mut a = vec![0f32; c]; // mean of dy
    let mut b = vec![0f32; c]; // mean of dy*xhat
    for j in 0..c {
        dbeta[j] = sum_dy[j] as f32;
        dgamma[j] = sum_dy_xhat[j] as f32;
        k[j] = p.gamma[j] * invstd[j];
        a[j] = (sum_dy[j] / m) as f32;
        b[j] = (sum_dy_xhat[j] / m) as f32;
    }
    g[..rows * c].par_chunks_mut(chunk).zip(x[..rows * c].par_chunks(chunk)).for_each(|(gc, xc)| {
        for (gr, xr) in gc.chunks_exact_mut(c).zip(xc.chunks_exact(c)) {
            for j in 0..c {
                let xhat = (xr[j] - mean[j]) * invstd[j];
                gr[j] = k[j] * (gr[j] - a[j] - xhat * b[j]);
            }
        }
    });
}
