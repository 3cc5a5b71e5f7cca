//! Launches of `kernels.cu` on GPU buffers, one method per CPU counterpart (named in each
//! method's documentation), with that function's arguments in device memory. Launches
//! are queued on the GPU's stream; a kernel's failure shows at the next
//! [`Gpu::synchronize`] or download.

use super::Gpu;
use crate::engine::ops::ShortcutA;
use crate::engine::pool::PoolShape;
use crate::engine::sgd::SgdConfig;
use anyhow::Result;
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, LaunchArgs, LaunchConfig, PushKernelArg};

type Buf = CudaSlice<f32>;
type View<'a> = CudaView<'a, f32>;
type ViewMut<'a> = CudaViewMut<'a, f32>;

/// Threads per block of the element-wise kernels, which loop over the grid's stride.
const THREADS: u32 = 256;
/// At most this many blocks: past a few per multiprocessor, more only add scheduling.
const MAX_BLOCKS: usize = 1 << 16;
/// Rows per part of BatchNorm's sums, at least: the parts' sums go through f64 partials,
/// so a part should be long enough to amortise its share.
const MIN_PART_ROWS: usize = 256;
/// At most this many parts per channel: enough blocks to fill an H100 at every layer.
const MAX_PARTS: usize = 1024;

fn grid_stride(len: usize) -> LaunchConfig {
    let blocks = len.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn per_channel(c: usize) -> LaunchConfig {
    LaunchConfig { grid_dim: (c.div_ceil(128) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 }
}

/// How BatchNorm's sums split `rows`: a function of `rows` alone, so every GPU adds the
/// same parts in the same order. Blocks of 32 channels × 8 row lanes (the kernels' shared
/// arrays are sized for that).
struct Parts {
    count: usize,
    rows_per_part: usize,
}

impl Parts {
    fn new(rows: usize) -> Parts {
        let rows_per_part = rows.div_ceil(MAX_PARTS).max(MIN_PART_ROWS);
        Parts { count: rows.div_ceil(rows_per_part).max(1), rows_per_part }
    }

    fn launch(&self, c: usize) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (c.div_ceil(32) as u32, self.count as u32, 1),
            block_dim: (32, 8, 1),
            shared_mem_bytes: 0,
        }
    }
}

/// Values per chunk of an [`SgdTable`]: enough to keep a block's threads busy, few enough
/// that a large tensor spreads over many blocks.
const SGD_CHUNK: usize = 1 << 14;

/// Many tensors' SGD step in one launch ([`Gpu::sgd_many`]): a table of chunks, each the
/// addresses of its parameters, gradients and momentum and its length, made once for
/// buffers that stay put. A network's 100-odd tensors then cost one launch a step, not
/// one each.
pub struct SgdTable {
    table: CudaSlice<u64>,
    chunks: usize,
}

/// A null pointer for an optional buffer argument.
const NULL: u64 = 0;

/// One BatchNorm layer's parameters on the GPU.
pub struct BnLayer<'a> {
    pub gamma: &'a Buf,
    pub beta: &'a Buf,
    pub eps: f32,
}

impl Gpu {
    fn launch(&self, mut b: LaunchArgs, cfg: LaunchConfig) -> Result<()> {
        // SAFETY: every method below passes the arguments its kernel declares, in order and
        // of its types, with buffers at least as long as the indices the kernel reaches.
        unsafe { b.launch(cfg) }?;
        Ok(())
    }

    /// `ops::relu_backward`: `g *= (out > 0)`, also copied to `copy` if given.
    pub fn relu_backward(&self, g: &mut Buf, out: &Buf, copy: Option<&mut Buf>) -> Result<()> {
        let len = g.len();
        assert!(out.len() >= len && copy.as_ref().is_none_or(|c| c.len() >= len));
        let mut b = self.stream.launch_builder(self.function("relu_backward"));
        b.arg(g).arg(out);
        match copy {
            Some(c) => b.arg(c),
            None => b.arg(&NULL),
        };
        let len64 = len as i64;
        b.arg(&len64);
        self.launch(b, grid_stride(len))
    }

    /// `batchnorm::forward_train` on `rows` rows of `c = gamma.len()` channels: normalizes
    /// `x` with the batch's statistics into `y` (adding `residual`, then the ReLU, if
    /// asked), updates the running averages, and leaves in `saved` (4c floats) the mean,
    /// 1/std, scale and shift for the backward pass. Views, so that a batch's BatchNorm
    /// groups (`--bn-batch`) are ranges of its rows.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_forward_train(
        &self,
        p: &BnLayer,
        x: &View,
        rows: usize,
        momentum: f32,
        running: (&mut Buf, &mut Buf),
        saved: &mut ViewMut,
        residual: Option<&View>,
        relu: bool,
        y: &mut ViewMut,
    ) -> Result<()> {
        let c = p.gamma.len();
        let len = rows * c;
        assert!(rows > 0 && c > 0 && x.len() >= len && y.len() >= len && saved.len() >= 4 * c);
        assert!(residual.is_none_or(|r| r.len() >= len) && p.beta.len() >= c);
        assert!(running.0.len() >= c && running.1.len() >= c, "BatchNorm: running statistics too short");
        let parts = Parts::new(rows);
        let mut partials = self.zeros::<f64>(parts.count * 2 * c)?;
        let (rows64, c32) = (rows as i64, c as i32);
        let (part_rows, part_count) = (parts.rows_per_part as i64, parts.count as i32);
        // The first row is the shift the sums are taken around (see `channel_sums`).
        let mut b = self.stream.launch_builder(self.function("bn_sums"));
        b.arg(x).arg(&rows64).arg(&c32).arg(x).arg(&part_rows).arg(&mut partials);
        self.launch(b, parts.launch(c))?;
        let (running_mean, running_var) = running;
        let mut b = self.stream.launch_builder(self.function("bn_stats"));
        b.arg(&partials).arg(&part_count).arg(&c32).arg(&rows64).arg(x);
        b.arg(p.gamma).arg(p.beta).arg(&p.eps).arg(&momentum).arg(running_mean).arg(running_var);
        b.arg(&mut *saved);
        self.launch(b, per_channel(c))?;
        let (scale, shift) = (saved.slice(2 * c..3 * c), saved.slice(3 * c..4 * c));
        self.bn_apply(x, len, c, (&scale, &shift), residual, relu, y)
    }

    /// `y = [relu](x·scale + shift [+ residual])` over `len` values of `c` channels.
    #[allow(clippy::too_many_arguments)]
    fn bn_apply(
        &self,
        x: &View,
        len: usize,
        c: usize,
        (scale, shift): (&View, &View),
        residual: Option<&View>,
        relu: bool,
        y: &mut ViewMut,
    ) -> Result<()> {
        let (c32, len64, relu32) = (c as i32, len as i64, i32::from(relu));
        let mut b = self.stream.launch_builder(self.function("bn_apply"));
        b.arg(x).arg(&len64).arg(&c32).arg(scale).arg(shift);
        match residual {
            Some(r) => b.arg(r),
            None => b.arg(&NULL),
        };
        b.arg(&relu32).arg(y);
        self.launch(b, grid_stride(len))
    }

    /// `batchnorm::forward_eval`: `y = [relu](x·scale + shift [+ residual])` with the
    /// running statistics. `affine` (2c floats) is room for the scale and shift.
    #[allow(clippy::too_many_arguments)]
    pub fn bn_forward_eval(
        &self,
        p: &BnLayer,
        x: &Buf,
        rows: usize,
        running: (&Buf, &Buf),
        affine: &mut Buf,
        residual: Option<&Buf>,
        relu: bool,
        y: &mut Buf,
    ) -> Result<()> {
        let c = p.gamma.len();
        let len = rows * c;
        assert!(c > 0 && x.len() >= len && y.len() >= len && affine.len() >= 2 * c);
        assert!(p.beta.len() >= c && running.0.len() >= c && running.1.len() >= c);
        assert!(residual.is_none_or(|r| r.len() >= len));
        let c32 = c as i32;
        let mut b = self.stream.launch_builder(self.function("bn_eval_affine"));
        b.arg(p.gamma).arg(p.beta).arg(&p.eps).arg(running.0).arg(running.1).arg(&c32);
        b.arg(&mut *affine);
        self.launch(b, per_channel(c))?;
        let (scale, shift) = (affine.slice(..c), affine.slice(c..2 * c));
        let residual = residual.map(|r| r.as_view());
        self.bn_apply(&x.as_view(), len, c, (&scale, &shift), residual.as_ref(), relu, &mut y.as_view_mut())
    }

    /// `batchnorm::backward`, in place: `g` holds dL/dy on entry and dL/dx on return;
    /// `dgamma` and `dbeta` are overwritten, or added to with `accumulate` (a batch's
    /// BatchNorm groups after the first). `relu`: the forward's ReLU came straight after
    /// the normalization (no residual). `saved` as `bn_forward_train` left it, and `rows`
    /// the rows its statistics covered (this call's: no synchronized BatchNorm yet).
    #[allow(clippy::too_many_arguments)]
    pub fn bn_backward(
        &self,
        gamma: &Buf,
        x: &View,
        rows: usize,
        saved: &View,
        relu: bool,
        g: &mut ViewMut,
        (dgamma, dbeta): (&mut Buf, &mut Buf),
        accumulate: bool,
    ) -> Result<()> {
        let c = gamma.len();
        let len = rows * c;
        assert!(rows > 0 && c > 0 && x.len() >= len && g.len() >= len && saved.len() >= 4 * c);
        assert!(dgamma.len() >= c && dbeta.len() >= c);
        let parts = Parts::new(rows);
        let mut partials = self.zeros::<f64>(parts.count * 2 * c)?;
        let mut coef = self.zeros::<f32>(3 * c)?;
        let (rows64, c32, len64, relu) = (rows as i64, c as i32, len as i64, i32::from(relu));
        let (part_rows, part_count, add) = (parts.rows_per_part as i64, parts.count as i32, i32::from(accumulate));
        let dy = g.slice(..len);
        let mut b = self.stream.launch_builder(self.function("bn_backward_sums"));
        b.arg(&dy).arg(x).arg(&rows64).arg(&c32).arg(saved).arg(&relu).arg(&part_rows).arg(&mut partials);
        self.launch(b, parts.launch(c))?;
        let mut b = self.stream.launch_builder(self.function("bn_backward_coef"));
        b.arg(&partials).arg(&part_count).arg(&c32).arg(&rows64).arg(gamma).arg(saved);
        b.arg(dgamma).arg(dbeta).arg(&add).arg(&mut coef);
        self.launch(b, per_channel(c))?;
        let mut b = self.stream.launch_builder(self.function("bn_backward_input"));
        b.arg(g).arg(x).arg(&len64).arg(&c32).arg(saved).arg(&coef).arg(&relu);
        self.launch(b, grid_stride(len))
    }

    /// `ShortcutA::forward` of `n` images.
    pub fn shortcut_a_forward(&self, s: &ShortcutA, n: usize, x: &Buf, y: &mut Buf) -> Result<()> {
        let len = n * s.out_h() * s.out_w() * s.c_out();
        assert!(x.len() >= n * s.h * s.w * s.c_in && y.len() >= len);
        let dims = shortcut_dims(s, n);
        let mut b = self.stream.launch_builder(self.function("shortcut_a_forward"));
        b.arg(x);
        ints(&mut b, &dims);
        b.arg(y);
        self.launch(b, grid_stride(len))
    }

    /// `ShortcutA::backward`: overwrites `dx`.
    pub fn shortcut_a_backward(&self, s: &ShortcutA, n: usize, g: &Buf, dx: &mut Buf) -> Result<()> {
        let len = n * s.h * s.w * s.c_in;
        assert!(g.len() >= n * s.out_h() * s.out_w() * s.c_out() && dx.len() >= len);
        let dims = shortcut_dims(s, n);
        let mut b = self.stream.launch_builder(self.function("shortcut_a_backward"));
        b.arg(g);
        ints(&mut b, &dims);
        b.arg(dx);
        self.launch(b, grid_stride(len))
    }

    /// `pool::avgpool_forward`: `[n, pixels, c]` to `[n, c]`.
    pub fn avgpool_forward(&self, n: usize, pixels: usize, c: usize, x: &Buf, y: &mut Buf) -> Result<()> {
        assert!(x.len() >= n * pixels * c && y.len() >= n * c);
        let dims = [n, pixels, c].map(|v| v as i32);
        let mut b = self.stream.launch_builder(self.function("avgpool_forward"));
        b.arg(x).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(y);
        self.launch(b, grid_stride(n * c))
    }

    /// `pool::avgpool_backward`: overwrites `dx`.
    pub fn avgpool_backward(&self, n: usize, pixels: usize, c: usize, g: &Buf, dx: &mut Buf) -> Result<()> {
        assert!(g.len() >= n * c && dx.len() >= n * pixels * c);
        let dims = [n, pixels, c].map(|v| v as i32);
        let mut b = self.stream.launch_builder(self.function("avgpool_backward"));
        b.arg(g).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]).arg(dx);
        self.launch(b, grid_stride(n * pixels * c))
    }

    /// `pool::maxpool_forward`: the maxima in `y` and each one's index within its image
    /// in `argmax`.
    pub fn maxpool_forward(
        &self,
        s: &PoolShape,
        n: usize,
        x: &Buf,
        y: &mut Buf,
        argmax: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let len = n * s.out_len();
        assert!(x.len() >= n * s.in_len() && y.len() >= len && argmax.len() >= len);
        let dims = pool_dims(s, n);
        let mut b = self.stream.launch_builder(self.function("maxpool_forward"));
        b.arg(x);
        ints(&mut b, &dims);
        b.arg(y).arg(argmax);
        self.launch(b, grid_stride(len))
    }

    /// `pool::maxpool_backward`: routes each output's gradient to its winning input;
    /// overwrites `dx`.
    pub fn maxpool_backward(
        &self,
        s: &PoolShape,
        n: usize,
        g: &Buf,
        argmax: &CudaSlice<u32>,
        dx: &mut Buf,
    ) -> Result<()> {
        let len = n * s.in_len();
        assert!(g.len() >= n * s.out_len() && argmax.len() >= n * s.out_len() && dx.len() >= len);
        let dims = pool_dims(s, n);
        let mut b = self.stream.launch_builder(self.function("maxpool_backward"));
        b.arg(g).arg(argmax);
        ints(&mut b, &dims);
        b.arg(dx);
        self.launch(b, grid_stride(len))
    }

    /// `ops::softmax_cross_entropy_of`: `n` rows of a batch of `batch`. Writes dL/dlogits
    /// to `grad`; returns the mean loss over the rows and the number of right top-1
    /// predictions.
    pub fn softmax_cross_entropy(
        &self,
        n: usize,
        batch: usize,
        classes: usize,
        logits: &Buf,
        labels: &CudaSlice<u32>,
        grad: &mut Buf,
    ) -> Result<(f32, usize)> {
        assert!(n > 0 && classes > 0, "softmax cross-entropy of no rows or classes");
        assert!(logits.len() >= n * classes && labels.len() >= n && grad.len() >= n * classes);
        let mut loss = self.zeros::<f64>(n)?;
        let mut correct = self.zeros::<u32>(n)?;
        let dims = [n, batch, classes].map(|v| v as i32);
        let mut b = self.stream.launch_builder(self.function("softmax_xent"));
        b.arg(logits).arg(labels).arg(&dims[0]).arg(&dims[1]).arg(&dims[2]);
        b.arg(grad).arg(&mut loss).arg(&mut correct);
        self.launch(b, grid_stride(n))?;
        let correct = self.download(&correct)?;
        if let Some(r) = correct.iter().position(|&c| c == u32::MAX) {
            anyhow::bail!("softmax cross-entropy: row {r}'s label is not below {classes}");
        }
        // The rows' losses are added in order on the host, as the CPU adds them.
        let total: f64 = self.download(&loss)?.iter().sum();
        let right = correct.iter().map(|&c| c as usize).sum();
        Ok(((total / n as f64) as f32, right))
    }

    /// The first `len` values of `x` rounded to bf16 (`engine::bf16::round`), as their bits.
    pub fn to_bf16(&self, x: &Buf, len: usize) -> Result<CudaSlice<u16>> {
        assert!(x.len() >= len);
        // SAFETY: every value is written below before anything reads it.
        let mut y = unsafe { self.stream.alloc::<u16>(len.max(1)) }?;
        let len64 = len as i64;
        let mut b = self.stream.launch_builder(self.function("to_bf16"));
        b.arg(x).arg(&mut y).arg(&len64);
        self.launch(b, grid_stride(len))?;
        Ok(y)
    }

    /// `y = widen(x)` over `x`'s length, or `y += widen(x)` with `accumulate`.
    pub fn from_bf16(&self, x: &CudaSlice<u16>, y: &mut Buf, accumulate: bool) -> Result<()> {
        let len = x.len();
        assert!(y.len() >= len);
        let (len64, add) = (len as i64, i32::from(accumulate));
        let mut b = self.stream.launch_builder(self.function("from_bf16"));
        b.arg(x).arg(y).arg(&len64).arg(&add);
        self.launch(b, grid_stride(len))
    }

    /// The [`SgdTable`] of `tensors`, each (parameters, gradients, momentum) of one length.
    ///
    /// # Safety
    /// The buffers must outlive every [`Gpu::sgd_many`] with the table, unmoved on the GPU
    /// (not dropped or reallocated), and not be written by anything else meanwhile.
    pub unsafe fn sgd_table<'a>(
        &self,
        tensors: impl IntoIterator<Item = (&'a Buf, &'a Buf, &'a Buf)>,
    ) -> Result<SgdTable> {
        let mut table = Vec::new();
        for (p, g, buf) in tensors {
            let len = p.len();
            assert!(g.len() >= len && buf.len() >= len);
            let address = |b: &Buf| b.device_ptr(&self.stream).0;
            let (p, g, buf) = (address(p), address(g), address(buf));
            let float = std::mem::size_of::<f32>() as u64;
            for start in (0..len).step_by(SGD_CHUNK) {
                let at = start as u64 * float;
                table.extend([p + at, g + at, buf + at, SGD_CHUNK.min(len - start) as u64]);
            }
        }
        let chunks = table.len() / 4;
        let table = self.upload(if table.is_empty() { &[0u64; 4] } else { &table })?;
        Ok(SgdTable { table, chunks })
    }

    /// [`Gpu::sgd_step`] on every tensor of `table`, in one launch.
    pub fn sgd_many(&self, cfg: SgdConfig, table: &SgdTable) -> Result<()> {
        if table.chunks == 0 {
            return Ok(());
        }
        let chunks = table.chunks as i32;
        let mut b = self.stream.launch_builder(self.function("sgd_many"));
        b.arg(&table.table).arg(&chunks).arg(&cfg.lr).arg(&cfg.momentum).arg(&cfg.weight_decay);
        let blocks = table.chunks.min(MAX_BLOCKS) as u32;
        self.launch(b, LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
    }

    /// `sgd::step`: `d = g + wd·p; buf = μ·buf + d; p -= lr·buf`.
    pub fn sgd_step(&self, cfg: SgdConfig, param: &mut Buf, grad: &Buf, buf: &mut Buf) -> Result<()> {
        let len = param.len();
        assert!(grad.len() >= len && buf.len() >= len);
        let len64 = len as i64;
        let mut b = self.stream.launch_builder(self.function("sgd_step"));
        b.arg(param).arg(grad).arg(buf).arg(&len64);
        b.arg(&cfg.lr).arg(&cfg.momentum).arg(&cfg.weight_decay);
        self.launch(b, grid_stride(len))
    }
}

/// The shortcut kernels' geometry arguments: n, h, w, c_in, stride, pad.
fn shortcut_dims(s: &ShortcutA, n: usize) -> [i32; 6] {
    [n, s.h, s.w, s.c_in, s.stride, s.pad].map(|v| v as i32)
}

/// The pooling kernels' geometry arguments: n, h, w, c, kernel, stride, pad, oh, ow.
fn pool_dims(s: &PoolShape, n: usize) -> [i32; 9] {
    [n, s.h, s.w, s.c, s.kernel, s.stride, s.pad, s.out_h(), s.out_w()].map(|v| v as i32)
}

/// Pushes `int` arguments in order.
fn ints<'a>(b: &mut LaunchArgs<'a>, values: &'a [i32]) {
    for v in values {
        b.arg(v);
    }
}
