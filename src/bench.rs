//! Throughput measurement for `resnet bench`: medians of timed steps on synthetic data,
//! and the input pipeline alone (decode, augment, normalize) on a real image folder.

use crate::engine::sgd::SgdConfig;
use crate::model::{Family, ModelConfig, ResNet, Shortcut};
use crate::rng::Rng;
use std::time::Instant;

pub struct BenchResult {
    /// Median seconds of a step, and the fastest and slowest of the timed steps.
    pub train_step_s: f64,
    pub infer_step_s: f64,
    pub train_range_s: (f64, f64),
    pub infer_range_s: (f64, f64),
    pub train_ips: f64,
    pub infer_ips: f64,
    /// Effective rates, counting 2 flops per mult-add: forward 1×, training 3×
    /// (forward, backward-data, backward-weights).
    pub train_gflops: f64,
    pub infer_gflops: f64,
}

/// Seconds of each of `steps` calls of `f` after `warmup` untimed ones: (min, median, max).
fn time_steps(warmup: usize, steps: usize, mut f: impl FnMut()) -> (f64, f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<f64> = (0..steps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    (times[0], times[times.len() / 2], times[times.len() - 1])
}

pub fn run(
    model: &str,
    shortcut: Option<Shortcut>,
    batch: usize,
    steps: usize,
    warmup: usize,
    algo: crate::engine::ConvAlgo,
    precision: crate::engine::Precision,
) -> anyhow::Result<BenchResult> {
    // The classes of the network's home dataset: CIFAR-10 or ImageNet.
    let family = ModelConfig::from_name(model, shortcut, 1)?.family;
    let classes = if family == Family::Cifar { 10 } else { 1000 };
    let mut net = ResNet::new(ModelConfig::from_name(model, shortcut, classes)?, 1);
    net.set_conv_algo(algo);
    net.set_precision(precision);
    let s = net.config.image_size;
    let mut rng = Rng::new(7);
    let images: Vec<f32> = (0..batch * s * s * 3).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..batch).map(|_| rng.below(classes) as u32).collect();
    let sgd = SgdConfig { lr: 0.01, momentum: 0.9, weight_decay: 1e-4 };
    let mut scratch = crate::train::StepScratch::default();
    let train = time_steps(warmup, steps, || {
        crate::train::step(&mut net, (s, s), &images, &labels, 1, sgd, &mut scratch);
    });
    let infer = time_steps(warmup, steps, || {
        net.forward(false, batch, (s, s), &images);
    });
    let flops = 2.0 * net.mult_adds() as f64 * batch as f64;
    let ((train_min, train, train_max), (infer_min, infer, infer_max)) = (train, infer);
    Ok(BenchResult {
        train_step_s: train,
        infer_step_s: infer,
        train_range_s: (train_min, train_max),
        infer_range_s: (infer_min, infer_max),
        train_ips: batch as f64 / train,
        infer_ips: batch as f64 / infer,
        train_gflops: 3.0 * flops / train / 1e9,
        infer_gflops: flops / infer / 1e9,
    })
}

/// What `resnet --device cuda bench` measured: the device's name and the step times (min,
/// median, max) of training and of inference.
#[cfg(feature = "cuda")]
pub struct GpuTimes {
    pub device: String,
    pub train: (f64, f64, f64),
    pub infer: (f64, f64, f64),
}

/// Training steps (`model::cuda::GpuTrainer`: forward, loss, backward, SGD, BatchNorm over
/// the whole batch) and inference (`GpuNet`) on the GPU, for `resnet --device cuda bench`.
/// Each step uploads its batch, and inference downloads its logits, as `train` and `eval`
/// use them. `tf32`: cuDNN may use TF32 tensor cores.
#[cfg(feature = "cuda")]
pub fn cuda(
    model: &str,
    shortcut: Option<Shortcut>,
    batch: usize,
    (steps, warmup): (usize, usize),
    precision: crate::engine::Precision,
) -> anyhow::Result<GpuTimes> {
    let family = ModelConfig::from_name(model, shortcut, 1)?.family;
    let classes = if family == Family::Cifar { 10 } else { 1000 };
    let mut net = ResNet::new(ModelConfig::from_name(model, shortcut, classes)?, 1);
    net.set_precision(precision);
    let s = net.config.image_size;
    let mut rng = Rng::new(7);
    let images: Vec<f32> = (0..batch * s * s * 3).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..batch).map(|i| (i % classes) as u32).collect();
    let mut failure = None;
    let mut trainer = crate::model::cuda::GpuTrainer::new(&mut net)?;
    let sgd = crate::engine::sgd::SgdConfig { lr: 0.01, momentum: 0.9, weight_decay: 1e-4 };
    let train = time_steps(warmup, steps, || {
        if failure.is_none() {
            failure = trainer.step((s, s), &images, &labels, 1, sgd, Default::default()).err();
        }
    });
    let device = trainer.gpu().name().to_string();
    drop(trainer);
    let gpu_net = crate::model::cuda::GpuNet::new(&mut net)?;
    let infer = time_steps(warmup, steps, || {
        if failure.is_none() {
            failure = gpu_net.forward(batch, (s, s), &images).err();
        }
    });
    match failure {
        Some(e) => Err(e),
        None => Ok(GpuTimes { device, train, infer }),
    }
}

/// The arithmetic peak of all threads on the selected instruction set (registers only), in
/// GFLOP/s: the physical limit a network's effective rate is set against.
pub fn fma_peak_gflops() -> f64 {
    let isa = crate::engine::isa::isa();
    let rates = rayon::broadcast(|_| crate::engine::peak::flops_per_thread(isa, 20));
    rates.iter().sum::<f64>() / 1e9
}

/// The arithmetic peak of the bf16 path in use on all threads (`engine::bf16::peak`), in
/// GFLOP/s; None on the emulated path.
pub fn bf16_peak_gflops() -> Option<f64> {
    let path = crate::engine::bf16::path();
    let rates = rayon::broadcast(|_| crate::engine::bf16::peak::flops_per_thread(path, 20));
    rates.into_iter().sum::<Option<f64>>().map(|r| r / 1e9)
}

/// The CPU's model name (Linux's /proc/cpuinfo), or "unknown CPU".
pub fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name =
        info.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, n)| n.trim()));
    name.unwrap_or("unknown CPU").to_string()
}

/// The kernels' instruction set and the CPU's best, as bench and --version print them.
pub fn isa_line() -> String {
    use crate::engine::isa::{Isa, isa};
    let forced = if isa() < Isa::detected() { " (forced by RESNET_ISA)" } else { "" };
    let bf16 = crate::engine::bf16::path();
    format!("kernels: {}{forced}; bf16: {bf16}; CPU: {}, best {}", isa(), cpu_name(), Isa::detected())
}

/// The machine's f32 matrix-multiply rate through the same GEMM on all threads.
pub fn gemm_peak_gflops() -> f64 {
    let n = 1024;
    let a = vec![1.0f32; n * n];
    let b = vec![0.5f32; n * n];
    let mut c = vec![0f32; n * n];
    let threads = rayon::current_num_threads();
    let (_, t, _) = time_steps(1, 5, || unsafe {
        // SAFETY: three n×n row-major buffers of exactly n*n elements.
        gemm::gemm(
            n,
            n,
            n,
            c.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            n as isize,
            b.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(threads),
        )
    });
    2.0 * (n * n * n) as f64 / t / 1e9
}

/// Images per second of the training input pipeline alone: the paper's augmentation on
/// the images of `dir` (cycled to `images` samples), in batches of `batch` built by
/// `threads` loader threads, with the network idle.
pub fn pipeline_ips(
    dir: &std::path::Path,
    crop: usize,
    batch: usize,
    images: usize,
    threads: usize,
) -> anyhow::Result<f64> {
    use crate::data::folder::{ImageFolder, split_dir};
    use crate::data::imagenet::{FolderSamples, FolderTransform, TrainTransform};
    use crate::data::{BatchLoader, Norm, Spare};
    use std::sync::Arc;
    let mut folder = ImageFolder::scan(&split_dir(dir, "train")?, None)?;
    let originals = folder.samples.clone();
    while folder.samples.len() < images {
        folder.samples.extend_from_slice(&originals);
    }
    folder.samples.truncate(images.max(1));
    let samples = Arc::new(FolderSamples {
        folder: Arc::new(folder),
        transform: FolderTransform::Train(TrainTransform::paper(crop, crop * 8 / 7, crop * 15 / 7)),
        norm: Arc::new(Norm::from_name("imagenet", None)?),
    });
    let order = Arc::new((0..samples.folder.len() as u32).collect::<Vec<_>>());
    let t = Instant::now();
    let mut seen = 0;
    // Batches handed back, as training does, so that their buffers are reused.
    let spare = Spare::default();
    for b in BatchLoader::new(samples, order, batch, 0, Some((0, 0)), threads, spare.clone()) {
        seen += b.len();
        spare.put(b);
    }
    Ok(seen as f64 / t.elapsed().as_secs_f64())
}
