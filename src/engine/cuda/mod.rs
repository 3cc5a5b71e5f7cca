//! The CUDA backend (cargo feature `cuda`): GPU memory, streams and kernels through
//! `cudarc`, which loads `libcuda` and `libnvrtc` when first asked, so a build needs no
//! CUDA installed and a binary built with the feature still runs on machines without a GPU.
//!
//! What exists:
//! - the backend's own kernels (`kernels.cu`: BatchNorm in training and inference, the
//!   ReLU's backward, the option-A shortcut, max and average pooling, softmax
//!   cross-entropy, the SGD step and the bf16 casts), compiled by NVRTC at first use for
//!   the device's architecture and launched on GPU buffers by [`Gpu`]'s methods in [`ops`].
//!   Each computes what its CPU counterpart in `engine` computes, in the same order where
//!   the order decides the rounding; compiled without contracting multiply-adds into FMAs,
//!   for the same reason;
//! - convolutions forward and backward through cuDNN ([`conv`]), in NHWC, in f32, tf32 or
//!   bf16 ([`Gpu::set_precision`]), and the classifier through cuBLAS ([`linear`]);
//! - `tests/cuda.rs`, which compares every one with the CPU engine.
//!
//! Networks are walked on the GPU by `model::cuda`: `GpuNet` for inference (`eval`,
//! `predict`, `embed`, `bench`) and `GpuTrainer` for training. `device`'s boundary over GPU
//! memory, which the CPU layers compute through, is not built: the GPU walks are their own.

pub mod conv;
mod cudnn;
pub mod linear;
pub mod ops;

use anyhow::{Context, Result, anyhow, bail};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::ffi::CString;
use std::sync::{Arc, Mutex, OnceLock};

/// The kernels' CUDA C source.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every kernel `SOURCE` defines, by its (unmangled) name.
pub const KERNELS: &[&str] = &[
    "relu_backward",
    "to_bf16",
    "from_bf16",
    "bn_sums",
    "bn_stats",
    "bn_apply",
    "bn_eval_affine",
    "bn_backward_sums",
    "bn_backward_coef",
    "bn_backward_input",
    "shortcut_a_forward",
    "shortcut_a_backward",
    "avgpool_forward",
    "avgpool_backward",
    "maxpool_forward",
    "maxpool_backward",
    "bias_rows",
    "bias_grad",
    "softmax_xent",
    "sgd_step",
    "sgd_many",
];

/// The architectures CI compiles the kernels for: Ampere (A100) and Hopper (H100/H200).
pub const CI_ARCHS: &[&str] = &["80", "90"];

/// Why NVRTC cannot be used here, if it cannot: its library is found through
/// `LD_LIBRARY_PATH` (the `nvidia-cuda-nvrtc` pip wheel's `nvidia/cu13/lib` will do).
pub fn nvrtc_missing() -> Option<String> {
    // SAFETY: only tries to open the library by its usual names.
    let present = unsafe { cudarc::nvrtc::sys::is_culib_present() };
    (!present).then(|| "NVRTC (libnvrtc.so) is not on the library path (LD_LIBRARY_PATH)".to_string())
}

/// Why no GPU can be used here, if none can: no driver library, or no device behind it.
pub fn gpu_missing() -> Option<String> {
    // SAFETY: only tries to open the library by its usual names.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Some("no CUDA driver: libcuda.so.1 is not on the library path (is an NVIDIA driver installed?)".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => None,
        Ok(_) => Some("the CUDA driver reports no GPU".into()),
        Err(e) => Some(format!("the CUDA driver found no usable GPU ({e})")),
    }
}

/// Compiles `SOURCE` for `target`: PTX for a virtual architecture (`compute_90`), machine
/// code (a cubin) for a real one (`sm_90`). An error carries NVRTC's log.
pub fn compile(target: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::result;
    if let Some(why) = nvrtc_missing() {
        bail!("cannot compile the CUDA kernels: {why}");
    }
    let src = CString::new(SOURCE).expect("kernels.cu holds no NUL");
    let prog = result::create_program(&src, Some(c"kernels.cu")).map_err(|e| anyhow!("NVRTC: {e:?}"))?;
    // SAFETY: `prog` was just created from `src`, which outlives it, and is destroyed once.
    let out = unsafe { compile_program(prog, target) };
    // SAFETY: as above.
    unsafe { result::destroy_program(prog) }.ok();
    out
}

/// [`compile`]'s output for `target`, compiled once per process: every [`Gpu::open`]
/// after the first (the trainer and the inference network of one run, each GPU test)
/// takes the same machine code without NVRTC's second or two.
fn compiled(target: &str) -> Result<Vec<u8>> {
    static DONE: Mutex<Vec<(String, Vec<u8>)>> = Mutex::new(Vec::new());
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, code)) = done.iter().find(|(t, _)| t == target) {
        return Ok(code.clone());
    }
    let code = compile(target)?;
    done.push((target.to_string(), code.clone()));
    Ok(code)
}

/// Compiles a created NVRTC program for `target` and returns its PTX or cubin.
///
/// # Safety
/// `prog` is a live program.
unsafe fn compile_program(prog: cudarc::nvrtc::sys::nvrtcProgram, target: &str) -> Result<Vec<u8>> {
    use cudarc::nvrtc::{result, sys};
    let nvrtc = |e| anyhow!("NVRTC: {e:?}");
    // NUL-terminated C strings: bytes as they are, up to the first NUL.
    let text =
        |chars: Vec<std::ffi::c_char>| -> Vec<u8> { chars.iter().map(|&c| c as u8).take_while(|&c| c != 0).collect() };
    let options = [format!("--gpu-architecture={target}"), "--fmad=false".to_string()];
    // SAFETY (all calls): `prog` is live (the caller's promise); each size query sizes the
    // buffer its getter fills.
    unsafe {
        if result::compile_program(prog, &options).is_err() {
            let log = text(result::get_program_log(prog).unwrap_or_default());
            bail!("NVRTC could not compile kernels.cu for {target}:\n{}", String::from_utf8_lossy(&log));
        }
        if !target.starts_with("sm_") {
            return Ok(text(result::get_ptx(prog).map_err(nvrtc)?));
        }
        let mut size = 0usize;
        sys::nvrtcGetCUBINSize(prog, &mut size).result().map_err(nvrtc)?;
        let mut cubin = vec![0u8; size];
        sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr().cast()).result().map_err(nvrtc)?;
        Ok(cubin)
    }
}

/// One GPU with the kernels loaded, and the stream every launch goes to.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    _module: Arc<CudaModule>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    capability: (i32, i32),
    /// cuDNN, started at the first convolution (the kernels above need none).
    cudnn: OnceLock<cudnn::Handle>,
    /// cuBLAS, started at the classifier's first use.
    cublas: OnceLock<CudaBlas>,
    /// Each convolution's descriptors and algorithms, by shape and batch.
    plans: Mutex<conv::Plans>,
    /// cuDNN's scratch, shared by every convolution.
    workspace: Mutex<Option<CudaSlice<u8>>>,
    /// Whether cuDNN's algorithms are chosen by timing them (`RESNET_CUDNN_BENCHMARK=1`).
    cudnn_benchmark: std::sync::atomic::AtomicBool,
    /// Whether cuDNN may run f32 convolutions on TF32 tensor cores ([`Gpu::set_precision`]).
    tf32: std::sync::atomic::AtomicBool,
    /// Whether the convolutions take bf16 operands ([`Gpu::set_precision`]).
    bf16: std::sync::atomic::AtomicBool,
}

impl Gpu {
    /// The first GPU, with the kernels compiled for it. Every failure is one line that
    /// says what is missing.
    pub fn open() -> Result<Gpu> {
        if let Some(why) = gpu_missing() {
            bail!("{why}");
        }
        let ctx = CudaContext::new(0).context("could not open GPU 0")?;
        let capability = ctx.compute_capability().context("could not read the GPU's compute capability")?;
        let name = ctx.name().unwrap_or_else(|_| "an NVIDIA GPU".into());
        // Compiled once per process (`compiled`).
        // Machine code for this GPU, not PTX: the driver would have to compile PTX itself,
        // and refuses PTX from an NVRTC newer than it is.
        let cubin = compiled(&format!("sm_{}{}", capability.0, capability.1))?;
        let module = ctx.load_module(Ptx::from_binary(cubin)).context("the driver rejected the compiled kernels")?;
        let mut functions = HashMap::new();
        for &k in KERNELS {
            functions.insert(k, module.load_function(k).with_context(|| format!("kernel {k} is missing"))?);
        }
        let stream = ctx.default_stream();
        Ok(Gpu {
            ctx,
            stream,
            _module: module,
            functions,
            name,
            capability,
            cudnn: OnceLock::new(),
            cublas: OnceLock::new(),
            plans: Default::default(),
            workspace: Default::default(),
            cudnn_benchmark: std::env::var(conv::BENCHMARK_VAR).is_ok_and(|v| v == "1").into(),
            tf32: Default::default(),
            bf16: Default::default(),
        })
    }

    /// The convolutions' number format: f32 (cuDNN's FMA math, which matches the CPU
    /// engine to float rounding; the default), tf32 (f32 data on TF32 tensor cores, as
    /// PyTorch's `allow_tf32`) or bf16 (operands rounded to bf16, sums in f32, results
    /// rounded to bf16 and widened, as PyTorch's autocast; everything else stays f32). The
    /// algorithms picked so far are forgotten: they were picked for the other math.
    /// bf16 needs tensor cores that take it: compute capability 8.0 (Ampere) or newer.
    pub fn set_precision(&self, precision: crate::engine::Precision) -> Result<()> {
        use crate::engine::Precision;
        if precision == Precision::Bf16 && self.capability < (8, 0) {
            let (major, minor) = self.capability;
            bail!("bf16 needs a GPU of compute capability 8.0 (Ampere) or newer; {} is {major}.{minor}", self.name);
        }
        self.tf32.store(precision == Precision::Tf32, std::sync::atomic::Ordering::Relaxed);
        self.bf16.store(precision == Precision::Bf16, std::sync::atomic::Ordering::Relaxed);
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        Ok(())
    }

    /// Chooses cuDNN's algorithms by timing them on this GPU (`on`), or by its heuristics
    /// (the default; `RESNET_CUDNN_BENCHMARK=1` sets `on` when the GPU is opened). Either
    /// way only among deterministic ones. The algorithms picked so far are forgotten.
    pub fn choose_by_timing(&self, on: bool) {
        self.cudnn_benchmark.store(on, std::sync::atomic::Ordering::Relaxed);
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    pub fn bf16(&self) -> bool {
        self.bf16.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn tf32(&self) -> bool {
        self.tf32.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Compute capability (major, minor).
    pub fn capability(&self) -> (i32, i32) {
        self.capability
    }

    pub fn upload<T: DeviceRepr>(&self, host: &[T]) -> Result<CudaSlice<T>> {
        Ok(self.stream.clone_htod(host)?)
    }

    pub fn download<T: DeviceRepr + Default + Clone>(&self, dev: &CudaSlice<T>) -> Result<Vec<T>> {
        Ok(self.stream.clone_dtoh(dev)?)
    }

    pub fn zeros<T: DeviceRepr + ValidAsZeroBits>(&self, len: usize) -> Result<CudaSlice<T>> {
        Ok(self.stream.alloc_zeros(len)?)
    }

    /// A buffer of `len` floats whose values are whatever the memory held: for outputs that
    /// the next launch writes whole, without `zeros`' extra pass over the memory (and its
    /// launch, which on small networks costs more than the pass).
    pub fn scratch(&self, len: usize) -> Result<CudaSlice<f32>> {
        // SAFETY: any bits are an f32, so even a read before the write is defined.
        Ok(unsafe { self.stream.alloc::<f32>(len) }?)
    }

    /// Waits for every launch so far; a kernel's failure surfaces here.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.stream.synchronize()?)
    }

    fn function(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    #[allow(dead_code)]
    fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }
}

/// The line `--device cuda` prints: what this build and machine can do on a GPU.
pub fn device_line() -> String {
    match Gpu::open() {
        Ok(gpu) => {
            let (major, minor) = gpu.capability();
            format!(
                "--device cuda: found {} (compute capability {major}.{minor}) and compiled the CUDA kernels for it, but only `train`, \
                 `eval`, `predict`, `embed` and `bench` run on the GPU so far: this command runs on the CPU (leave out --device)",
                gpu.name()
            )
        }
        Err(e) => format!("--device cuda: {e:#}"),
    }
}
