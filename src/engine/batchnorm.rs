//! Batch normalization over the rows of an NHWC tensor viewed as `[rows, c]`, with
//! the ReLU and the residual addition that follow it in a ResNet fused in.
//!
//! Loops run over blocks of whole rows (at least 512 floats) against per-channel values
//! repeated to the block's length, so each is one long vectorized loop. Statistics are
//! accumulated per block position and task, then combined: in the forward pass in f32 over
//! runs of 32 blocks and then in f64, in the backward pass in f64.

use rayon::prelude::*;

/// Rows per parallel task: large enough to amortise the per-task partial sums.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(64)
}

/// Per-channel sums of `a - k` and `(a - k)²`, with `k` the first row: shifting by a
/// sample of the data keeps `E[(a-k)²] - E[a-k]²` accurate when the mean is large
/// against the spread.
fn channel_sums(a: &[f32], c: usize, rows: usize) -> (Vec<f64>, Vec<f64>) {
    let chunk = chunk_rows(rows) * c;
    let len = block_len(c);
    let k = a[..c].repeat(len / c);
    a[..rows * c]
        .par_chunks(chunk)
        .map(|part| {
            let (mut s, mut q) = (vec![0f64; len], vec![0f64; len]);
            let (mut sf, mut qf) = (vec![0f32; len], vec![0f32; len]);
            for run in part.chunks(len * F32_RUN) {
                sf.fill(0.0);
                qf.fill(0.0);
                for block in run.chunks(len) {
                    for ((v, k), (s, q)) in block.iter().zip(&k).zip(sf.iter_mut().zip(qf.iter_mut())) {
                        let d = v - k;
                        *s += d;
                        *q += d * d;
                    }
                }
                add_into(&mut s, &sf);
                add_into(&mut q, &qf);
            }
            (fold(&s, c), fold(&q, c))
        })
        .reduce(|| (vec![0f64; c], vec![0f64; c]), add_pair)
}

/// Blocks whose per-position sums are kept in f32 before they go into the f64 totals.
/// A run adds at most 32 values per position (f32 rounding about 1e-6 relative), and
/// the f64 work, which runs at half the vector width plus conversions, shrinks 32-fold:
/// these loops had been compute-bound at under half the machine's copy bandwidth.
const F32_RUN: usize = 32;

fn add_into(total: &mut [f64], run: &[f32]) {
    total.iter_mut().zip(run).for_each(|(t, r)| *t += *r as f64);
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

/// Rows per block of the elementwise loops: at least 512 floats, so that each block is
/// one long vectorized loop against per-channel values repeated to its length (a loop
/// per row of 16 channels spent more time on loop overhead than on the data).
fn block_len(c: usize) -> usize {
    (512 / c).max(1) * c
}

/// Per-channel totals of per-position sums over a block of rows.
fn fold(part: &[f64], c: usize) -> Vec<f64> {
    let mut total = vec![0f64; c];
    for row in part.chunks_exact(c) {
        total.iter_mut().zip(row).for_each(|(t, p)| *t += p);
    }
    total
}

/// `y = [relu](scale*x + shift [+ residual])`, the shared elementwise tail.
fn apply(x: &[f32], c: usize, scale: &[f32], shift: &[f32], residual: Option<&[f32]>, relu: bool, y: &mut [f32]) {
    let chunk = chunk_rows(x.len() / c) * c;
    let len = block_len(c);
    let (scale, shift) = (scale[..c].repeat(len / c), shift[..c].repeat(len / c));
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, yc)| {
        let start = i * chunk;
        let xc = &x[start..start + yc.len()];
        for (b, (yb, xb)) in yc.chunks_mut(len).zip(xc.chunks(len)).enumerate() {
            for ((y, x), (s, t)) in yb.iter_mut().zip(xb).zip(scale.iter().zip(&shift)) {
                *y = x * s + t;
            }
            if let Some(res) = residual {
                let rb = &res[start + b * len..][..yb.len()];
                yb.iter_mut().zip(rb).for_each(|(y, r)| *y += r);
            }
            if relu {
                yb.iter_mut().for_each(|v| *v = v.max(0.0));
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
        let shifted_mean = s[j] / m;
        let var = (q[j] / m - shifted_mean * shifted_mean).max(0.0);
        let mu = x[j] as f64 + shifted_mean;
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
    // Σ dy and Σ dy·x̂ per channel, masking dy by the ReLU block by block while it is in
    // cache.
    let len = block_len(c);
    let (mu, is) = (mean[..c].repeat(len / c), invstd[..c].repeat(len / c));
    let (sum_dy, sum_dy_xhat) = g[..rows * c]
        .par_chunks_mut(chunk)
        .enumerate()
        .map(|(i, gc)| {
            let start = i * chunk;
            let (mut s, mut t) = (vec![0f64; len], vec![0f64; len]);
            for (n, gb) in gc.chunks_mut(len).enumerate() {
                let at = start + n * len;
                let bl = gb.len();
                if let Some(out) = relu_out {
                    for (g, o) in gb.iter_mut().zip(&out[at..at + bl]) {
                        if *o <= 0.0 {
                            *g = 0.0;
                        }
                    }
                }
                let sums = s.iter_mut().zip(t.iter_mut());
                for ((g, x), ((s, t), (mu, is))) in gb.iter().zip(&x[at..at + bl]).zip(sums.zip(mu.iter().zip(&is))) {
                    *s += *g as f64;
                    *t += (g * ((x - mu) * is)) as f64;
                }
            }
            (fold(&s, c), fold(&t, c))
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
    // dx = k·(dy - a - x̂·b) with x̂ = (x - mean)·invstd.
    let (k, a, b) = (k.repeat(len / c), a.repeat(len / c), b.repeat(len / c));
    g[..rows * c].par_chunks_mut(chunk).zip(x[..rows * c].par_chunks(chunk)).for_each(|(gc, xc)| {
        for (gb, xb) in gc.chunks_mut(len).zip(xc.chunks(len)) {
            let per_channel = k.iter().zip(&a).zip(b.iter().zip(mu.iter().zip(&is)));
            for ((g, x), ((k, a), (b, (mu, is)))) in gb.iter_mut().zip(xb).zip(per_channel) {
                let xhat = (x - mu) * is;
                *g = k * (*g - a - xhat * b);
            }
        }
    });
}
