use anyhow::Result;
use resnet::bench;
use resnet::engine::ConvAlgo;
use resnet::model::Shortcut;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, help = super::MODEL_HELP)]
    model: String,
    /// Images per step.
    #[arg(long, value_parser = super::parse_batch, default_value_t = 128)]
    batch: usize,
    /// Timed steps (the median is reported).
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// 3×3 stride-1 convolutions: auto (the fastest per layer), im2col, winograd or direct.
    #[arg(long, default_value = "auto", value_parser = super::parse_conv)]
    conv: ConvAlgo,
    /// The convolutions' number format: f32, or bf16 (operands in bf16, sums in f32; on
    /// AMX or AVX-512 BF16 where the CPU has them, on tensor cores with --device cuda), or
    /// with --device cuda tf32.
    #[arg(long, default_value = "f32", value_parser = resnet::engine::Precision::parse_any)]
    precision: resnet::engine::Precision,
    /// Skip measuring the machine's arithmetic peaks (f32 GEMM and registers, bf16).
    #[arg(long)]
    no_peak: bool,
    /// Also measure the training input pipeline alone on this image folder (decode, the
    /// paper's scale augmentation and crop, flip, lighting, normalization).
    #[arg(long)]
    pipeline: Option<std::path::PathBuf>,
    /// Loader threads for --pipeline.
    #[arg(long, value_parser = super::parse_loader_threads, default_value_t = 2)]
    loader_threads: usize,
    /// One JSON object: images/s of training and inference as min, median and max.
    #[arg(long)]
    json: bool,
}

/// `resnet --device cuda bench`: training and inference on the GPU.
#[cfg(feature = "cuda")]
pub fn run_cuda(a: Args) -> Result<ExitCode> {
    if a.batch == 0 || a.steps == 0 {
        anyhow::bail!("--batch and --steps must be at least 1");
    }
    let measured = bench::cuda(&a.model, a.shortcut, a.batch, (a.steps, a.warmup), a.precision);
    let t = anyhow::Context::context(measured, "--device cuda")?;
    let ips = |seconds: f64| a.batch as f64 / seconds;
    let line = |(fast, median, slow): (f64, f64, f64)| {
        format!("{:.1} img/s ({:.1}-{:.1}; {:.2} ms/batch", ips(median), ips(slow), ips(fast), median * 1e3)
    };
    println!(
        "model: {} batch {} on {} ({}), median of {} steps (slowest-fastest)",
        a.model, a.batch, t.device, a.precision, a.steps
    );
    println!("train: {}, images uploaded)", line(t.train));
    println!("infer: {}, images uploaded and logits downloaded)", line(t.infer));
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.batch == 0 || a.steps == 0 {
        anyhow::bail!("--batch and --steps must be at least 1");
    }
    if a.precision == resnet::engine::Precision::Tf32 {
        anyhow::bail!("--precision tf32 is for NVIDIA GPUs (--device cuda); the CPU computes in f32 or bf16");
    }
    // The pipeline goes first so that a bad folder fails before the long model benchmark.
    let images = (a.batch * 8).max(256);
    let pipeline_ips = match &a.pipeline {
        Some(dir) => Some(bench::pipeline_ips(dir, 224, a.batch, images, a.loader_threads)?),
        None => None,
    };
    super::warn_if_emulated(a.precision);
    let r = bench::run(&a.model, a.shortcut, a.batch, a.steps, a.warmup, a.conv, a.precision)?;
    let threads = rayon::current_num_threads();
    let ips = |seconds: f64| a.batch as f64 / seconds;
    if a.json {
        let round = |x: f64| (x * 10.0).round() / 10.0;
        let spread = |median: f64, (fast, slow): (f64, f64)| serde_json::json!({"min": round(ips(slow)), "median": round(ips(median)), "max": round(ips(fast))});
        let line = serde_json::json!({
            "model": a.model, "batch": a.batch, "threads": threads, "steps": a.steps,
            "train_images_per_s": spread(r.train_step_s, r.train_range_s),
            "infer_images_per_s": spread(r.infer_step_s, r.infer_range_s),
            "train_gflops": round(r.train_gflops), "infer_gflops": round(r.infer_gflops),
            "pipeline_images_per_s": pipeline_ips.map(round),
            "isa": resnet::engine::isa::isa().name(), "cpu": bench::cpu_name(),
            "precision": a.precision.name(), "bf16_path": resnet::engine::bf16::path().name(),
        });
        println!("{line}");
        return Ok(ExitCode::SUCCESS);
    }
    println!("model: {} batch {} threads {threads}, median of {} steps (slowest-fastest)", a.model, a.batch, a.steps);
    println!("{}", bench::isa_line());
    // Effective rates: the arithmetic of direct convolutions (3 × 2 × mult-adds per image for
    // a training step) over the time; Winograd layers do fewer operations than that.
    println!(
        "train: {:.1} img/s ({:.1}-{:.1}; {:.2} ms/step, {:.1} effective GFLOP/s)",
        r.train_ips,
        ips(r.train_range_s.1),
        ips(r.train_range_s.0),
        r.train_step_s * 1e3,
        r.train_gflops
    );
    println!(
        "infer: {:.1} img/s ({:.1}-{:.1}; {:.2} ms/batch, {:.1} effective GFLOP/s)",
        r.infer_ips,
        ips(r.infer_range_s.1),
        ips(r.infer_range_s.0),
        r.infer_step_s * 1e3,
        r.infer_gflops
    );
    if let (Some(dir), Some(ips)) = (&a.pipeline, pipeline_ips) {
        println!(
            "pipeline: {ips:.1} img/s ({} loader threads, {images} images of {}, 224x224 crops)",
            a.loader_threads,
            dir.display()
        );
        println!("pipeline / train step: {:.1}x", ips / r.train_ips);
    }
    if !a.no_peak {
        let peak = bench::gemm_peak_gflops();
        println!("gemm peak: {peak:.1} GFLOP/s (f32, 1024^3, {threads} threads)");
        // Above 100% where Winograd saves more arithmetic than the step loses elsewhere.
        println!("train step: {:.2}x the gemm peak in effective GFLOP/s", r.train_gflops / peak);
        let fma = bench::fma_peak_gflops();
        let isa = resnet::engine::isa::isa();
        let how =
            if isa == resnet::engine::isa::Isa::Portable { "SSE2 multiply and add" } else { "fused multiply-add" };
        println!("fma peak: {fma:.1} GFLOP/s ({isa} registers, {how}, {threads} threads)");
        println!(
            "train step: {:.0}%, inference: {:.0}% of the fma peak in effective GFLOP/s",
            100.0 * r.train_gflops / fma,
            100.0 * r.infer_gflops / fma
        );
        if a.precision == resnet::engine::Precision::Bf16 {
            let path = resnet::engine::bf16::path();
            match bench::bf16_peak_gflops() {
                Some(peak) => println!(
                    "bf16 peak: {peak:.1} GFLOP/s ({path}, {threads} threads); train step: {:.0}%, inference: {:.0}% of it",
                    100.0 * r.train_gflops / peak,
                    100.0 * r.infer_gflops / peak
                ),
                None => println!("bf16 peak: that of f32 above (the {path} path widens bf16 to f32)"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
