//! The classifier (fully connected layer) on the GPU: its products through cuBLAS in f32
//! (cuBLAS's default math, no TF32), its bias through `kernels.cu`. Row-major tensors as
//! on the CPU: cuBLAS, being column-major, sees each as its transpose, so every product
//! below is written for the transposes.

use super::Gpu;
use anyhow::{Context, Result, bail};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

type Buf = CudaSlice<f32>;

const N: cublasOperation_t = cublasOperation_t::CUBLAS_OP_N;
const T: cublasOperation_t = cublasOperation_t::CUBLAS_OP_T;

/// Why cuBLAS cannot be used here, if it cannot.
pub fn cublas_missing() -> Option<String> {
    // SAFETY: only tries to open the library by its usual names.
    let present = unsafe { cudarc::cublas::sys::is_culib_present() };
    (!present).then(|| "cuBLAS (libcublas.so) is not on the library path (LD_LIBRARY_PATH)".to_string())
}

/// `C (m × n) = alpha·op(A)·op(B) + beta·C`, all column-major with the given leading
/// dimensions.
struct Product {
    ops: (cublasOperation_t, cublasOperation_t),
    mnk: (usize, usize, usize),
    lds: (usize, usize, usize),
    beta: f32,
}

impl Gpu {
    fn cublas(&self) -> Result<&CudaBlas> {
        if let Some(h) = self.cublas.get() {
            return Ok(h);
        }
        if let Some(why) = cublas_missing() {
            bail!("{why}");
        }
        let handle = CudaBlas::new(self.stream.clone()).context("could not start cuBLAS")?;
        Ok(self.cublas.get_or_init(|| handle))
    }

    fn product(&self, p: Product, a: &Buf, b: &Buf, c: &mut Buf) -> Result<()> {
        let ((m, n, k), (lda, ldb, ldc)) = (p.mnk, p.lds);
        let cfg = GemmConfig {
            transa: p.ops.0,
            transb: p.ops.1,
            m: m as i32,
            n: n as i32,
            k: k as i32,
            alpha: 1.0f32,
            lda: lda as i32,
            ldb: ldb as i32,
            beta: p.beta,
            ldc: ldc as i32,
        };
        // SAFETY: the callers assert that each buffer holds the matrix its dimensions say.
        unsafe { self.cublas()?.gemm(cfg, a, b, c) }?;
        Ok(())
    }

    /// `ops::linear_forward`: `y[n, o] = x[n, i]·wᵀ + b` with `w` as `[o, i]`.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_forward(&self, n: usize, i: usize, o: usize, x: &Buf, w: &Buf, b: &Buf, y: &mut Buf) -> Result<()> {
        assert!(n > 0 && i > 0 && o > 0, "linear layer of an empty shape");
        assert!(x.len() >= n * i && w.len() >= o * i && b.len() >= o && y.len() >= n * o);
        let dims = [n as i32, o as i32];
        {
            let mut launch = self.stream.launch_builder(self.function("bias_rows"));
            launch.arg(&mut *y).arg(b).arg(&dims[0]).arg(&dims[1]);
            // SAFETY: `bias_rows(float*, const float*, int, int)`, y holding n·o floats.
            unsafe { launch.launch(LaunchConfig::for_num_elems((n * o) as u32)) }?;
        }
        // yᵀ (o × n) = w (o × i, stored as its transpose) · xᵀ (i × n), added to the bias.
        let p = Product { ops: (T, N), mnk: (o, n, i), lds: (i, i, o), beta: 1.0 };
        self.product(p, w, x, y)
    }

    /// `ops::linear_backward`: overwrites `dx`, and `dw` and `db` or, with `accumulate`,
    /// adds to them.
    #[allow(clippy::too_many_arguments)]
    pub fn linear_backward(
        &self,
        (n, i, o): (usize, usize, usize),
        x: &Buf,
        w: &Buf,
        g: &Buf,
        dw: &mut Buf,
        db: &mut Buf,
        dx: &mut Buf,
        accumulate: bool,
    ) -> Result<()> {
        assert!(n > 0 && i > 0 && o > 0, "linear layer of an empty shape");
        assert!(x.len() >= n * i && w.len() >= o * i && g.len() >= n * o);
        assert!(dw.len() >= o * i && db.len() >= o && dx.len() >= n * i);
        // dxᵀ (i × n) = wᵀ (i × o, stored as is) · gᵀ (o × n).
        self.product(Product { ops: (N, N), mnk: (i, n, o), lds: (i, o, i), beta: 0.0 }, w, g, dx)?;
        // dwᵀ (i × o) = xᵀ (i × n) · g (n × o, stored as its transpose).
        let beta = if accumulate { 1.0 } else { 0.0 };
        self.product(Product { ops: (N, T), mnk: (i, o, n), lds: (i, o, i), beta }, x, g, dw)?;
        let args = [n as i32, o as i32, i32::from(accumulate)];
        let mut launch = self.stream.launch_builder(self.function("bias_grad"));
        launch.arg(g).arg(&args[0]).arg(&args[1]).arg(db).arg(&args[2]);
        let cfg =
            LaunchConfig { grid_dim: (o.div_ceil(128) as u32, 1, 1), block_dim: (128, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: `bias_grad(const float*, int, int, float*, int)`, g holding n·o floats, db o.
        unsafe { launch.launch(cfg) }?;
        Ok(())
    }
}
