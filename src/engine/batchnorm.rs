//! Batch normalization over the rows of an NHWC tensor viewed as `[rows, c]`, with
//! the ReLU and the residual addition that follow it in a ResNet fused in.
//!
//! Loops run over blocks of whole rows (at least 512 floats) against per-channel values
//! repeated to the block's length, so each is one long vectorized loop. Statistics are
//! accumulated per block position and task, then combined: in the forward pass in f32 over
//! runs of 32 blocks and then in f64, in the backward pass in f64. Each task folds its own
//! sums per channel, and the tasks' totals are added in task order, so the statistics do
//! not depend on which thread ran what.

use super::ensure_len;
use rayon::prelude::*;

/// Room a BatchNorm call works in, reused from call to call (it lives in the
/// [`Workspace`](super::Workspace)). Allocated per call, these vectors had been about 4,000
/// allocations per ResNet-20 training step.
#[derive(Default)]
pub struct Scratch {
    /// Per-channel values repeated to a block's length (up to 7 blocks).
    repeated: Vec<f32>,
    /// Each task's two runs of per-position sums, kept in f32 over runs of blocks.
    runs: Vec<f32>,
    /// Each task's two runs of per-position sums in f64; the first `c` of each run end up
    /// holding the task's per-channel totals.
    partials: Vec<f64>,
    /// The call's two per-channel totals (2c).
    channels: Vec<f64>,
    /// Per-channel f32 values: scale and shift, or the backward's k, a and b.
    affine: Vec<f32>,
    /// The values the forward's sums are shifted by (a row of the batch).
    shift: Vec<f32>,
}

/// Synchronized BatchNorm: one batch spread over several processes and normalized by the
/// statistics of all of it (`--sync-bn`). The engine asks for two collective operations
/// and knows nothing of how they travel.
pub trait SyncStats: Send + Sync {
    /// The first process's `values` on every process.
    fn first_to_all(&self, values: &mut [f32]);
    /// Element-wise sums over the processes, left in every process's `sums`.
    fn add_up(&self, sums: &mut [f64]);
}

/// Rows per parallel task: large enough to amortise the per-task partial sums.
fn chunk_rows(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    rows.div_ceil(threads * 4).max(64)
}

/// Per-channel sums of `a - k` and `(a - k)²`, with `k` the batch's first row (in
/// `scr.shift`), in `scr.channels[..c]` and `[c..2c]`: shifting by a sample of the data
/// keeps `E[(a-k)²] - E[a-k]²` accurate when the mean is large against the spread. Each
/// task's sums are added in task order, so the result does not depend on the threads' timing.
fn channel_sums(a: &[f32], c: usize, rows: usize, scr: &mut Scratch) {
    let chunk = chunk_rows(rows) * c;
    let len = block_len(c);
    let tasks = (rows * c).div_ceil(chunk);
    ensure_len(&mut scr.repeated, len);
    ensure_len(&mut scr.runs, tasks * 2 * len);
    ensure_len(&mut scr.partials, tasks * 2 * len);
    let k = &mut scr.repeated[..len];
    repeat_into(k, &scr.shift[..c]);
    let k = &*k;
    (a[..rows * c].par_chunks(chunk))
        .zip(scr.partials.par_chunks_mut(2 * len))
        .zip(scr.runs.par_chunks_mut(2 * len))
        .for_each(|((part, sums), runs)| {
            crate::simd!({
                sums.fill(0.0);
                let ((s, q), (sf, qf)) = (sums.split_at_mut(len), runs.split_at_mut(len));
                for run in part.chunks(len * F32_RUN) {
                    sf.fill(0.0);
                    qf.fill(0.0);
                    for block in run.chunks(len) {
                        for ((v, k), (s, q)) in block.iter().zip(k).zip(sf.iter_mut().zip(qf.iter_mut())) {
                            let d = v - k;
                            *s += d;
                            *q += d * d;
                        }
                    }
                    add_into(s, sf);
                    add_into(q, qf);
                }
                fold_in_place(s, c);
                fold_in_place(q, c);
            })
        });
    sum_tasks(&scr.partials[..tasks * 2 * len], c, &mut scr.channels);
}

/// Blocks whose per-position sums are kept in f32 before they go into the f64 totals.
/// A run adds at most 32 values per position (f32 rounding about 1e-6 relative), and
/// the f64 work, which runs at half the vector width plus conversions, shrinks 32-fold:
/// these loops had been compute-bound at under half the machine's copy bandwidth.
const F32_RUN: usize = 32;

#[inline(always)]
fn add_into(total: &mut [f64], run: &[f32]) {
    total.iter_mut().zip(run).for_each(|(t, r)| *t += *r as f64);
}

/// Parameters of one BatchNorm layer, and the processes its training statistics are
/// gathered over (None: this process's batch alone).
pub struct BnParams<'a> {
    pub gamma: &'a [f32],
    pub beta: &'a [f32],
    pub eps: f32,
    pub sync: Option<&'a dyn SyncStats>,
}

/// Rows per block of the elementwise loops: at least 512 floats, so that each block is
/// one long vectorized loop against per-channel values repeated to its length (a loop
/// per row of 16 channels spent more time on loop overhead than on the data).
fn block_len(c: usize) -> usize {
    (512 / c).max(1) * c
}

/// Fills a block with per-channel `values` repeated.
fn repeat_into(block: &mut [f32], values: &[f32]) {
    block.iter_mut().zip(values.iter().cycle()).for_each(|(b, v)| *b = *v);
}

/// Folds a run of per-position sums (a block's length) into its first `c` entries, the
/// per-channel totals, row by row.
#[inline(always)]
fn fold_in_place(run: &mut [f64], c: usize) {
    let (total, rest) = run.split_at_mut(c);
    for row in rest.chunks_exact(c) {
        total.iter_mut().zip(row).for_each(|(t, p)| *t += p);
    }
}

/// Adds up the tasks' per-channel totals (the first `c` values of each of their two runs
/// of a block's length), task by task, into `totals[..c]` and `[c..2c]`.
fn sum_tasks(partials: &[f64], c: usize, totals: &mut Vec<f64>) {
    ensure_len(totals, 2 * c);
    let totals = &mut totals[..2 * c];
    totals.fill(0.0);
    let len = block_len(c);
    for task in partials.chunks_exact(2 * len) {
        for (run, total) in task.chunks_exact(len).zip(totals.chunks_exact_mut(c)) {
            total.iter_mut().zip(&run[..c]).for_each(|(t, p)| *t += p);
        }
    }
}

/// `y = [relu](scale*x + shift [+ residual])`, the shared elementwise tail.
#[allow(clippy::too_many_arguments)]
fn apply(
    x: &[f32],
    c: usize,
    scale: &[f32],
    shift: &[f32],
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    repeated: &mut Vec<f32>,
) {
    let chunk = chunk_rows(x.len() / c) * c;
    let len = block_len(c);
    ensure_len(repeated, 2 * len);
    let (scale_rep, shift_rep) = repeated[..2 * len].split_at_mut(len);
    repeat_into(scale_rep, &scale[..c]);
    repeat_into(shift_rep, &shift[..c]);
    let affine = Affine { scale: scale_rep, shift: shift_rep };
    y.par_chunks_mut(chunk).enumerate().for_each(|(i, yc)| {
        crate::simd!({
            let start = i * chunk;
            let xc = &x[start..start + yc.len()];
            for (b, (yb, xb)) in yc.chunks_mut(len).zip(xc.chunks(len)).enumerate() {
                let rb = residual.map(|r| &r[start + b * len..][..yb.len()]);
                match (rb, relu) {
                    (Some(r), true) => affine.block::<true, true>(xb, r, yb),
                    (Some(r), false) => affine.block::<true, false>(xb, r, yb),
                    (None, true) => affine.block::<false, true>(xb, xb, yb),
                    (None, false) => affine.block::<false, false>(xb, xb, yb),
                }
            }
        })
    });
}

/// Per-channel scale and shift repeated over a block.
struct Affine<'a> {
    scale: &'a [f32],
    shift: &'a [f32],
}

impl Affine<'_> {
    /// `y = [relu](x·scale + shift [+ r])` over one block, in one pass. (Three loops over the
    /// block, for the affine transform, the residual and the ReLU, made ResNet-20's
    /// 16-channel training forward 1.56–1.81 ms with a residual against 1.00–1.10, and
    /// 0.99–1.15 without against 0.75–0.83.)
    #[inline(always)]
    fn block<const RESIDUAL: bool, const RELU: bool>(&self, x: &[f32], r: &[f32], y: &mut [f32]) {
        let n = y.len();
        let (x, r, scale, shift) = (&x[..n], &r[..n], &self.scale[..n], &self.shift[..n]);
        for i in 0..n {
            let mut v = normalized(x[i], scale[i], shift[i]);
            if RESIDUAL {
                v += r[i];
            }
            y[i] = if RELU { v.max(0.0) } else { v };
        }
    }
}

/// BatchNorm's output before the residual and ReLU, `x·scale + shift`. The training
/// forward and the backward's ReLU mask both compute it here, so the backward decides
/// exactly as the forward did.
#[inline(always)]
fn normalized(x: f32, scale: f32, shift: f32) -> f32 {
    x * scale + shift
}

/// What a training-mode forward leaves for the backward pass, per channel: the batch
/// mean and 1/std, and the transform `x·scale + shift` it applied.
#[derive(Clone, Default)]
pub struct Saved {
    pub mean: Vec<f32>,
    pub invstd: Vec<f32>,
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    /// The rows the statistics cover: this call's, or with `sync` the whole job's.
    pub rows: usize,
}

impl Saved {
    pub fn new(c: usize) -> Self {
        Saved { mean: vec![0.0; c], invstd: vec![0.0; c], scale: vec![0.0; c], shift: vec![0.0; c], rows: 0 }
    }
}

/// Training-mode forward: normalizes with batch statistics, keeps them in `saved` for the
/// backward pass and updates the running averages with PyTorch's convention
/// (`running = (1-m)*running + m*batch`, unbiased variance).
#[allow(clippy::too_many_arguments)]
pub fn forward_train(
    p: &BnParams,
    x: &[f32],
    rows: usize,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    saved: &mut Saved,
    residual: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
    scr: &mut Scratch,
) {
    let c = p.gamma.len();
    ensure_len(&mut scr.shift, c);
    scr.shift[..c].copy_from_slice(&x[..c]);
    if let Some(sync) = p.sync {
        // One shift for every process, so that their sums add up.
        sync.first_to_all(&mut scr.shift[..c]);
    }
    channel_sums(x, c, rows, scr);
    ensure_len(&mut scr.channels, 2 * c + 1);
    scr.channels[2 * c] = rows as f64;
    if let Some(sync) = p.sync {
        sync.add_up(&mut scr.channels[..2 * c + 1]);
    }
    let (s, q) = scr.channels[..2 * c].split_at(c);
    let m = scr.channels[2 * c];
    saved.rows = m as usize;
    for j in 0..c {
        let shifted_mean = s[j] / m;
        let var = (q[j] / m - shifted_mean * shifted_mean).max(0.0);
        let mu = scr.shift[j] as f64 + shifted_mean;
        let is = 1.0 / (var + p.eps as f64).sqrt();
        saved.mean[j] = mu as f32;
        saved.invstd[j] = is as f32;
        saved.scale[j] = (p.gamma[j] as f64 * is) as f32;
        saved.shift[j] = (p.beta[j] as f64 - mu * p.gamma[j] as f64 * is) as f32;
        let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
        running_mean[j] = (1.0 - momentum) * running_mean[j] + momentum * mu as f32;
        running_var[j] = (1.0 - momentum) * running_var[j] + momentum * unbiased as f32;
    }
    apply(&x[..rows * c], c, &saved.scale, &saved.shift, residual, relu, &mut y[..rows * c], &mut scr.repeated);
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
    scr: &mut Scratch,
) {
    let c = p.gamma.len();
    ensure_len(&mut scr.affine, 2 * c);
    let (scale, shift) = scr.affine[..2 * c].split_at_mut(c);
    eval_affine(p, running_mean, running_var, scale, shift);
    apply(&x[..rows * c], c, scale, shift, residual, relu, &mut y[..rows * c], &mut scr.repeated);
}

/// Inference-mode BatchNorm as `x·scale + shift`, from the running statistics.
pub fn eval_affine(p: &BnParams, running_mean: &[f32], running_var: &[f32], scale: &mut [f32], shift: &mut [f32]) {
    for j in 0..p.gamma.len() {
        scale[j] = p.gamma[j] / (running_var[j] + p.eps).sqrt();
        shift[j] = p.beta[j] - running_mean[j] * scale[j];
    }
}

/// Training-mode backward, in place: `g` holds dL/dy on entry and dL/dx on return.
/// `dgamma`/`dbeta` are overwritten.
///
/// `relu`: the forward applied a ReLU straight after the normalization (no residual), so
/// `g` counts only where its output was positive. That is decided again from `x` with the
/// forward's own f32 operations (`x·scale + shift > 0`), instead of reading the output
/// and masking `g` in place: the in-place mask compiled to masked stores, which AMD's
/// cores run slowly, and the output was one more tensor to read. (ResNet-20's 16-channel
/// layers at batch 128: 1.3–1.6 ms against 2.6–3.7; the training step 4–7% faster.)
#[allow(clippy::too_many_arguments)]
pub fn backward(
    p: &BnParams,
    x: &[f32],
    rows: usize,
    saved: &Saved,
    relu: bool,
    g: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
    scr: &mut Scratch,
) {
    let c = p.gamma.len();
    let chunk = chunk_rows(rows) * c;
    let len = block_len(c);
    let tasks = (rows * c).div_ceil(chunk);
    ensure_len(&mut scr.repeated, 7 * len);
    ensure_len(&mut scr.partials, tasks * 2 * len);
    let (forward_values, grad_values) = scr.repeated[..7 * len].split_at_mut(4 * len);
    let [mu, is, scale, shift] = blocks(forward_values, c, [&saved.mean, &saved.invstd, &saved.scale, &saved.shift]);
    let forward = Forward { mu, is, scale, shift };
    // Σ dy and Σ dy·x̂ per channel, per block position in f64. (Not in f32 over runs of
    // blocks, as `channel_sums`: these sums nearly cancel, and that rounding moved
    // ResNet-20's weights after 3 steps of `tests/golden.rs` by 3e-4 from PyTorch's.)
    let (g, x) = (&mut g[..rows * c], &x[..rows * c]);
    (g.par_chunks(chunk)).zip(x.par_chunks(chunk)).zip(scr.partials.par_chunks_mut(2 * len)).for_each(
        |((gc, xc), sums)| {
            crate::simd!({
                sums.fill(0.0);
                let (s, t) = sums.split_at_mut(len);
                for (gb, xb) in gc.chunks(len).zip(xc.chunks(len)) {
                    match relu {
                        true => forward.add_sums::<true>(gb, xb, s, t),
                        false => forward.add_sums::<false>(gb, xb, s, t),
                    }
                }
                fold_in_place(s, c);
                fold_in_place(t, c);
            })
        },
    );
    sum_tasks(&scr.partials[..tasks * 2 * len], c, &mut scr.channels);
    // γ's and β's gradients are this process's own (the gradients' all-reduce adds them
    // up); the input's gradient needs the sums over the rows the statistics covered.
    for j in 0..c {
        dbeta[j] = scr.channels[j] as f32;
        dgamma[j] = scr.channels[c + j] as f32;
    }
    if let Some(sync) = p.sync {
        sync.add_up(&mut scr.channels[..2 * c]);
    }
    let (sum_dy, sum_dy_xhat) = scr.channels[..2 * c].split_at(c);
    let m = saved.rows as f64;
    ensure_len(&mut scr.affine, 3 * c);
    let (k, rest) = scr.affine[..3 * c].split_at_mut(c); // gamma * invstd
    let (a, b) = rest.split_at_mut(c); // means of dy and of dy*xhat
    for j in 0..c {
        k[j] = p.gamma[j] * saved.invstd[j];
        a[j] = (sum_dy[j] / m) as f32;
        b[j] = (sum_dy_xhat[j] / m) as f32;
    }
    let [k, a, b] = blocks(grad_values, c, [&*k, &*a, &*b]);
    let input_grad = InputGrad { k, a, b };
    g.par_chunks_mut(chunk).zip(x.par_chunks(chunk)).for_each(|(gc, xc)| {
        crate::simd!({
            for (gb, xb) in gc.chunks_mut(len).zip(xc.chunks(len)) {
                match relu {
                    true => forward.input_grad::<true>(&input_grad, gb, xb),
                    false => forward.input_grad::<false>(&input_grad, gb, xb),
                }
            }
        })
    });
}

/// Consecutive blocks of `room`, each filled with the first `c` of one of `values` (per
/// channel) repeated.
fn blocks<'a, const N: usize>(room: &'a mut [f32], c: usize, values: [&[f32]; N]) -> [&'a [f32]; N] {
    let len = block_len(c);
    for (block, v) in room.chunks_exact_mut(len).zip(values) {
        repeat_into(block, &v[..c]);
    }
    let room = &*room;
    std::array::from_fn(|i| &room[i * len..(i + 1) * len])
}

/// The forward's per-channel values repeated over a block: batch mean and 1/std, and
/// the transform `x·scale + shift`.
struct Forward<'a> {
    mu: &'a [f32],
    is: &'a [f32],
    scale: &'a [f32],
    shift: &'a [f32],
}

/// `dx = k·(dy - a - x̂·b)` per block position.
struct InputGrad<'a> {
    k: &'a [f32],
    a: &'a [f32],
    b: &'a [f32],
}

impl Forward<'_> {
    /// Adds a block's `dy` and `dy·x̂` to `s` and `t`, position by position.
    #[inline(always)]
    fn add_sums<const RELU: bool>(&self, dy: &[f32], x: &[f32], s: &mut [f64], t: &mut [f64]) {
        let n = dy.len();
        let (x, mu, is, scale, shift) = (&x[..n], &self.mu[..n], &self.is[..n], &self.scale[..n], &self.shift[..n]);
        let (s, t) = (&mut s[..n], &mut t[..n]);
        for i in 0..n {
            let dy = active::<RELU>(dy[i], normalized(x[i], scale[i], shift[i]));
            s[i] += dy as f64;
            t[i] += (dy * ((x[i] - mu[i]) * is[i])) as f64;
        }
    }

    /// Overwrites a block's `dy` with `dx`.
    #[inline(always)]
    fn input_grad<const RELU: bool>(&self, d: &InputGrad, g: &mut [f32], x: &[f32]) {
        let n = g.len();
        let (x, mu, is, scale, shift) = (&x[..n], &self.mu[..n], &self.is[..n], &self.scale[..n], &self.shift[..n]);
        let (k, a, b) = (&d.k[..n], &d.a[..n], &d.b[..n]);
        for i in 0..n {
            let xhat = (x[i] - mu[i]) * is[i];
            g[i] = k[i] * (active::<RELU>(g[i], normalized(x[i], scale[i], shift[i])) - a[i] - xhat * b[i]);
        }
    }
}

/// `g` where the forward's ReLU passed its input `y` (or without a ReLU), else 0.
#[inline(always)]
fn active<const RELU: bool>(g: f32, y: f32) -> f32 {
    if !RELU || y > 0.0 { g } else { 0.0 }
}
