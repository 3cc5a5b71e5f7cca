use anyhow::{Result, bail};
use resnet::data::{DatasetKind, Norm, cifar, download::default_data_dir};
use resnet::model::{Family, ModelConfig, Shortcut};
use resnet::train::run::{Datasets, INTERRUPTED, iterations_per_epoch};
use resnet::train::{Outcome, TrainConfig, checkpoint, schedule::Schedule};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Model name: resnet20/32/44/56/110/1202, plain20, ... (any 6n+2).
    #[arg(long)]
    model: Option<String>,
    /// Directory of the official binary batches (default: the downloaded copy).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Test batch file, when --data is a single training batch file.
    #[arg(long)]
    test_data: Option<PathBuf>,
    #[arg(long, default_value = "cifar10", value_parser = super::parse_dataset)]
    dataset: DatasetKind,
    /// Train for N epochs, with the lr drops scaled to 50% and 75% of the run.
    #[arg(long)]
    epochs: Option<usize>,
    /// Total iterations (the paper: 64k).
    #[arg(long, default_value_t = 64000)]
    iterations: usize,
    /// Iterations at which lr is divided by 10 (default 32000,48000; with --epochs: 50%,75%).
    #[arg(long, value_delimiter = ',')]
    milestones: Option<Vec<usize>>,
    /// Run directory: config.json, metrics.jsonl, checkpoints, final weights.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its checkpoint.
    #[arg(long)]
    resume: bool,
    #[arg(long, default_value_t = 128)]
    batch: usize,
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Warm-up at --warmup-lr until training error < 80%: auto (depth >= 110), on, off.
    #[arg(long, default_value = "auto")]
    warmup: String,
    #[arg(long, default_value_t = 0.01)]
    warmup_lr: f32,
    /// Shortcut option (default: A for CIFAR nets, B for ImageNet nets).
    #[arg(long, value_parser = super::parse_shortcut)]
    shortcut: Option<Shortcut>,
    /// Input normalization: pixel-mean (the paper), imagenet or cifar (per-channel mean/std).
    #[arg(long, default_value = "pixel-mean")]
    norm: String,
    /// Hold out the last N training images and evaluate on them instead of the test set.
    #[arg(long, default_value_t = 0)]
    val_split: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Threads assembling batches in the background.
    #[arg(long, default_value_t = 2)]
    loader_threads: usize,
    /// Write a metrics line every N iterations.
    #[arg(long, default_value_t = 50)]
    log_every: usize,
    /// Also checkpoint every N iterations (0: at epoch ends only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

fn find_data(data: Option<PathBuf>, kind: DatasetKind) -> Result<PathBuf> {
    if let Some(d) = data {
        return Ok(d);
    }
    let dir = default_data_dir();
    if cifar::is_present(&dir, kind) {
        return Ok(dir);
    }
    let name = if kind == DatasetKind::Cifar10 { "cifar10" } else { "cifar100" };
    bail!("no {} data in {} (pass --data DIR, or fetch it with: resnet download {name})", kind.name(), dir.display())
}

fn config_from_args(a: &Args) -> Result<TrainConfig> {
    let Some(model) = a.model.clone() else { bail!("--model is required (e.g. --model resnet20)") };
    let arch = ModelConfig::from_name(&model, a.shortcut, a.dataset.classes())?;
    let data = find_data(a.data.clone(), a.dataset)?;
    let warmup = match a.warmup.as_str() {
        "auto" => arch.family == Family::Cifar && arch.depth >= 110,
        "on" => true,
        "off" => false,
        w => bail!("--warmup must be auto, on or off, not '{w}'"),
    };
    if a.batch == 0 {
        bail!("--batch must be at least 1");
    }
    Ok(TrainConfig {
        model,
        shortcut: arch.shortcut,
        dataset: a.dataset,
        data,
        test_data: a.test_data.clone(),
        out: a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(a.model.as_deref().unwrap_or("model"))),
        batch: a.batch,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        iterations: a.iterations,
        schedule: Schedule {
            lr: a.lr,
            milestones: a.milestones.clone().unwrap_or_else(|| vec![32000, 48000]),
            warmup_lr: warmup.then_some(a.warmup_lr),
            warmup_until_error: 0.8,
        },
        norm: a.norm.clone(),
        val_split: a.val_split,
        seed: a.seed,
        loader_threads: a.loader_threads,
        log_every: a.log_every,
        checkpoint_every: a.checkpoint_every,
    })
}

fn load_data(cfg: &TrainConfig, saved_norm: Option<Norm>) -> Result<Datasets> {
    let mut train = cifar::load(&cfg.data, cfg.dataset, true)?;
    let test = if cfg.val_split > 0 {
        train.split_off_last(cfg.val_split)?
    } else if let Some(t) = &cfg.test_data {
        cifar::load(t, cfg.dataset, false)?
    } else if cfg.data.is_file() {
        bail!(
            "{}: --data is a single batch file; pass --test-data FILE or --val-split N for evaluation",
            cfg.data.display()
        )
    } else {
        cifar::load(&cfg.data, cfg.dataset, false)?
    };
    let norm = match saved_norm {
        Some(n) => n,
        None => Norm::from_name(&cfg.norm, Some(&train))?,
    };
    Ok(Datasets { train: Arc::new(train), test: Arc::new(test), norm: Arc::new(norm) })
}

pub fn run(a: Args) -> Result<ExitCode> {
    let (cfg, saved_norm) = if a.resume {
        let out = a.out.clone().or_else(|| a.model.as_ref().map(|m| Path::new("runs").join(m)));
        let Some(out) = out else { bail!("--resume needs --out DIR (the run directory)") };
        let (mut cfg, _, norm) = checkpoint::read_meta(&out.join(resnet::train::run::CHECKPOINT))?;
        cfg.out = out;
        if let Some(d) = &a.data {
            cfg.data = d.clone();
        }
        (cfg, Some(norm))
    } else {
        (config_from_args(&a)?, None)
    };
    let data = load_data(&cfg, saved_norm)?;
    let mut cfg = cfg;
    if let (Some(epochs), false) = (a.epochs, a.resume) {
        let per_epoch = iterations_per_epoch(data.train.len(), cfg.batch);
        cfg.iterations = epochs * per_epoch;
        if a.milestones.is_none() {
            cfg.schedule.milestones = vec![cfg.iterations / 2, cfg.iterations * 3 / 4];
        }
    }
    ctrlc::set_handler(|| INTERRUPTED.store(true, std::sync::atomic::Ordering::SeqCst))?;
    eprintln!(
        "training {} on {} ({} train / {} eval images), {} iterations, batch {}, {} threads -> {}",
        cfg.model,
        cfg.data.display(),
        data.train.len(),
        data.test.len(),
        cfg.iterations,
        cfg.batch,
        rayon::current_num_threads(),
        cfg.out.display()
    );
    match resnet::train::train(&cfg, data, a.resume, !a.quiet)? {
        Outcome::Finished { test_acc } => {
            println!(
                "finished: test accuracy {:.2}%, weights in {}",
                100.0 * test_acc,
                cfg.out.join("model.safetensors").display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted { iteration } => {
            eprintln!(
                "interrupted at iteration {iteration}; checkpoint saved. Continue with: resnet train --resume --out {}",
                cfg.out.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}
