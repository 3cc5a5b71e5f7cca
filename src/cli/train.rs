use anyhow::{Context, Result, bail};
use resnet::data::imagenet::{TrainCrop, TrainTransform};
use resnet::data::{DatasetKind, cifar, download::default_data_dir};
use resnet::model::{ModelConfig, Shortcut};
use resnet::text::grouped;
use resnet::train::checkpoint::Checkpoint;
use resnet::train::recipe::{Length, Recipe};
use resnet::train::run::iterations_per_epoch;
use resnet::train::run_dir::{Claim, RunDir};
use resnet::train::{ImageTraining, Outcome, RunOptions, TrainConfig, data, schedule::Schedule};

use resnet::dist::Collective;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, help = super::MODEL_HELP)]
    model: Option<String>,
    /// CIFAR binary batches (a directory, default: the downloaded copy), or an image folder
    /// (DIR/train/<class>/*, DIR/val/<class>/*).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Test batch file, when --data is a single CIFAR training batch file.
    #[arg(long)]
    test_data: Option<PathBuf>,
    /// cifar10, cifar100 or folder (default: folder when --data holds class folders, else cifar10).
    #[arg(long)]
    dataset: Option<String>,
    /// Image folders: class list (1000-class index JSON or one name per line) mapping folder names
    /// to class indices (default: sorted folder names).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Image folders: classes of the classifier (default: from --labels, else the folder count).
    #[arg(long)]
    classes: Option<usize>,
    /// Train for N epochs (default: CIFAR 64k iterations; image folders 90 epochs).
    #[arg(long, conflicts_with = "iterations")]
    epochs: Option<usize>,
    /// Total iterations (the paper's CIFAR runs: 64000).
    #[arg(long)]
    iterations: Option<usize>,
    /// Iterations at which lr is divided by 10 (default CIFAR 32000,48000 of 64000; a shorter
    /// --epochs or --iterations scales them: 50%,75%).
    #[arg(long, value_delimiter = ',', conflicts_with = "schedule")]
    milestones: Option<Vec<usize>>,
    /// Epochs at which lr is divided by 10 (default for image folders: 30,60 of 90, scaled with --epochs).
    #[arg(long, value_delimiter = ',')]
    schedule: Option<Vec<usize>>,
    /// Run directory: config.json, metrics.jsonl, checkpoints, final weights.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Start from these weights instead of a random initialization (fine-tuning): a file, a
    /// checkpoint or published weights by name (torchvision:resnet50, cifar:resnet20; resnet
    /// weights list). A classifier of another class count starts anew. Without --norm, the
    /// run takes the normalization the weights record (weights that record none need --norm).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Train the classifier alone: the rest keeps its weights, its BatchNorm in inference
    /// mode (linear probing of --weights).
    #[arg(long)]
    freeze_backbone: bool,
    /// The classifier's learning rate (default: --lr), divided at the same points as --lr.
    #[arg(long)]
    lr_classifier: Option<f32>,
    /// Continue the run in --out from its checkpoint (the one before it if the last is damaged).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the run that --out holds (its checkpoints, weights, metrics and config).
    #[arg(long)]
    overwrite: bool,
    /// Images per SGD step (default: 128 CIFAR, 256 image folders).
    #[arg(long, value_parser = super::parse_batch)]
    batch: Option<usize>,
    /// Compute each step as K micro-batches of batch/K images, one after the other (less memory;
    /// BatchNorm statistics per micro-batch, or per --bn-batch group of it).
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// BatchNorm takes its training statistics over groups of at most N images of a (micro-)batch,
    /// as N images per GPU in data-parallel training without synchronized BatchNorm; the running
    /// averages follow the first group, as DataParallel keeps the first GPU's. 0: the whole
    /// (micro-)batch. Default: the paper's, 64 for CIFAR (128 on two GPUs), 32 for image folders
    /// (256 on eight GPUs).
    #[arg(long)]
    bn_batch: Option<usize>,
    /// Under MPI, BatchNorm takes its training statistics over the whole batch of every rank
    /// (synchronized BatchNorm, as PyTorch's SyncBatchNorm) instead of over each rank's share.
    #[arg(long, conflicts_with_all = ["accumulate", "bn_batch"])]
    sync_bn: bool,
    /// Under MPI, megabytes of gradients per all-reduce, each started as soon as the backward
    /// pass has finished them, so that communication overlaps computation (as PyTorch DDP's
    /// buckets); 0: one all-reduce after the backward pass. The results are the same.
    #[arg(long, default_value_t = resnet::train::config::DEFAULT_BUCKET_MB)]
    bucket_mb: usize,
    /// Learning rate, divided by 10 at each of --milestones (CIFAR) or --schedule (image folders).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// SGD momentum, PyTorch's form: buf = momentum·buf + grad + weight_decay·w; w -= lr·buf.
    #[arg(long, default_value_t = 0.9)]
    momentum: f32,
    /// L2 weight decay, added to the gradient of every parameter, BatchNorm's and biases too (as
    /// fb.resnet.torch and PyTorch's SGD; the paper does not say).
    #[arg(long, default_value_t = 1e-4)]
    weight_decay: f32,
    /// Warm-up at --warmup-lr until training error < 80%: auto (CIFAR depth >= 110), on, off.
    #[arg(long, default_value = "auto")]
    warmup: String,
    /// Learning rate during the warm-up.
    #[arg(long, default_value_t = 0.01)]
    warmup_lr: f32,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Input normalization: pixel-mean (the paper's, the default), imagenet or cifar
    /// (per-channel mean/std).
    #[arg(long, value_parser = super::parse_norm)]
    norm: Option<String>,
    /// Image folders: training crop size.
    #[arg(long, value_parser = super::parse_side, default_value_t = 224)]
    crop: usize,
    /// Image folders: range MIN,MAX of the shorter side before the random crop (the paper: 256,480).
    #[arg(long, value_parser = super::parse_side, value_delimiter = ',', default_values_t = [256, 480])]
    scale: Vec<usize>,
    /// Image folders: torchvision's RandomResizedCrop instead of the paper's scale augmentation.
    #[arg(long)]
    random_resized_crop: bool,
    /// Image folders: std of AlexNet's PCA lighting noise (0 turns it off).
    #[arg(long, default_value_t = 0.1)]
    lighting: f32,
    /// Image folders: shorter side before the centre crop when evaluating (default: crop * 8/7, 256).
    #[arg(long, value_parser = super::parse_side)]
    eval_resize: Option<usize>,
    /// Image folders: training images averaged for --norm pixel-mean.
    #[arg(long, default_value_t = 5000)]
    mean_images: usize,
    /// Hold out N training images and evaluate on them instead of the test set.
    #[arg(long, default_value_t = 0)]
    val_split: usize,
    /// Seed of all randomness (initialization, shuffling, augmentation): the same seed gives
    /// the same losses.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// 3×3 stride-1 convolutions: auto (the fastest per layer: Winograd on every CIFAR
    /// layer), im2col, winograd or direct (AVX2 and AVX-512; im2col elsewhere). im2col and
    /// direct sum like PyTorch's f32 kernels; Winograd rounds differently (BENCHMARKS.md).
    #[arg(long, default_value = "auto", value_parser = super::parse_conv)]
    conv: resnet::engine::ConvAlgo,
    /// The convolutions' number format: f32, or bf16 (operands rounded to bf16, sums,
    /// BatchNorm, master weights and SGD in f32; on AMX or AVX-512 BF16 where the CPU has them,
    /// on tensor cores with --device cuda), or with --device cuda tf32 (cuDNN on TF32 tensor
    /// cores, sums in f32).
    #[arg(long, default_value = "f32", value_parser = resnet::engine::Precision::parse_any)]
    precision: resnet::engine::Precision,
    /// Set by `--device cuda`: the steps run on the GPU.
    #[arg(skip)]
    pub cuda: bool,
    /// Threads assembling batches in the background (decoding, augmentation).
    #[arg(long, value_parser = super::parse_loader_threads, default_value_t = 2)]
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
    /// Also write TensorBoard event files to OUT/tensorboard (losses, accuracies, lr, images/s):
    /// `tensorboard --logdir OUT` shows the run live.
    #[arg(long)]
    tensorboard: bool,
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

/// Rejects a run length or hyperparameter that cannot make a sensible run, before any data
/// is read: SGD with a negative rate or momentum ≥ 1 diverges, and zero epochs would write
/// untrained "final" weights.
fn check_hyperparameters(a: &Args) -> Result<()> {
    if a.epochs == Some(0) || a.iterations == Some(0) {
        bail!("--epochs and --iterations must be at least 1");
    }
    for (flag, v) in [("--lr", a.lr), ("--warmup-lr", a.warmup_lr), ("--lr-classifier", a.lr_classifier.unwrap_or(1.0))]
    {
        if !(v.is_finite() && v > 0.0) {
            bail!("{flag} must be a positive number, not {v}");
        }
    }
    if !(0.0..1.0).contains(&a.momentum) {
        bail!("--momentum must be in [0, 1), not {}", a.momentum);
    }
    for (flag, v) in [("--weight-decay", a.weight_decay), ("--lighting", a.lighting)] {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{flag} must be zero or positive, not {v}");
        }
    }
    Ok(())
}

fn config_from_args(a: &Args) -> Result<TrainConfig> {
    let Some(model) = a.model.clone() else { bail!("--model is required (e.g. --model resnet20)") };
    check_hyperparameters(a)?;
    if a.precision == resnet::engine::Precision::Tf32 && !a.cuda {
        bail!("--precision tf32 is for NVIDIA GPUs (--device cuda)");
    }
    let folder = match a.dataset.as_deref() {
        Some("folder") => true,
        Some(name) => {
            super::parse_dataset(name).map_err(anyhow::Error::msg)?;
            false
        }
        None => a.data.as_deref().and_then(cifar::is_image_folder).unwrap_or(false),
    };
    let dataset = match a.dataset.as_deref() {
        Some("cifar100") => DatasetKind::Cifar100,
        _ => DatasetKind::Cifar10,
    };
    let data = if folder {
        a.data.clone().ok_or_else(|| anyhow::anyhow!("--dataset folder needs --data DIR"))?
    } else {
        find_data(a.data.clone(), dataset)?
    };
    if resnet::data::folder::is_image(&data) {
        bail!(
            "--data {}: an image file; training takes CIFAR batches or an image folder (DIR/train/<class>/*)",
            data.display()
        );
    }
    let images = folder.then(|| image_training(a, &data)).transpose()?;
    let classes = images.as_ref().map_or(dataset.classes(), |i| i.classes);
    let arch = ModelConfig::from_name(&model, a.shortcut, classes)?;
    let recipe = recipe_of(folder);
    let warmup = match a.warmup.as_str() {
        "auto" => recipe.warmup(&arch),
        "on" => true,
        "off" => false,
        w => bail!("--warmup must be auto, on or off, not '{w}'"),
    };
    let batch = a.batch.unwrap_or(recipe.batch());
    if batch == 0 || a.accumulate == 0 || a.accumulate > batch {
        bail!("--batch must be at least 1 and --accumulate between 1 and the batch ({batch})");
    }
    let (init_weights, norm) = start_weights(a)?;
    let bn_batch = match a.bn_batch.unwrap_or(recipe.bn_batch()) {
        _ if a.sync_bn => None,
        0 => None,
        n => Some(n),
    };
    Ok(TrainConfig {
        model,
        shortcut: arch.shortcut,
        dataset,
        data,
        test_data: a.test_data.clone(),
        images,
        out: a.out.clone().unwrap_or_else(|| PathBuf::from("runs").join(a.model.as_deref().unwrap_or("model"))),
        batch,
        accumulate: a.accumulate,
        ranks: 1,
        sync_bn: a.sync_bn,
        bucket_mb: a.bucket_mb,
        bn_batch,
        momentum: a.momentum,
        weight_decay: a.weight_decay,
        // Set once the training set's size is known (see `set_schedule`).
        iterations: 0,
        schedule: Schedule {
            lr: a.lr,
            milestones: Vec::new(),
            warmup_lr: warmup.then_some(a.warmup_lr),
            warmup_until_error: 0.8,
        },
        norm,
        val_split: a.val_split,
        seed: a.seed,
        conv: a.conv,
        precision: a.precision,
        loader_threads: a.loader_threads,
        log_every: a.log_every,
        checkpoint_every: a.checkpoint_every,
        tensorboard: a.tensorboard,
        init_weights,
        freeze_backbone: a.freeze_backbone,
        lr_classifier: a.lr_classifier,
    })
}

/// The weights a run starts from (`--weights`, a registry name fetched first) and its
/// normalization: `--norm`, else the one the weights record (an error if they record none).
fn start_weights(a: &Args) -> Result<(Option<PathBuf>, String)> {
    let Some(spec) = &a.weights else { return Ok((None, a.norm.clone().unwrap_or_else(|| "pixel-mean".into()))) };
    let (path, published) = resnet::weights::registry::resolve(spec)?;
    if let Some(norm) = &a.norm {
        return Ok((Some(path), norm.clone()));
    }
    let recorded = match published {
        Some(p) => Some(p.norm.to_string()),
        None => {
            resnet::weights::metadata_norm(&resnet::weights::StateDict::read(&path)?)?.map(|n| n.label().to_string())
        }
    };
    // Guessing here would train on inputs the weights were not made for, and the first
    // epoch's accuracy would be the only hint (a published CIFAR ResNet-20 scored 35%
    // instead of 91% under the paper's pixel mean).
    let Some(norm) = recorded else {
        bail!(
            "{}: the weights do not record their input normalization; pass --norm imagenet|cifar|pixel-mean, the one they were trained with",
            path.display()
        );
    };
    if norm != "pixel-mean" {
        eprintln!("note: normalizing inputs as the weights expect (--norm {norm})");
    }
    Ok((Some(path), norm))
}

fn image_training(a: &Args, data: &Path) -> Result<ImageTraining> {
    let classes = match (a.classes, &a.labels) {
        (Some(c), _) => c,
        (None, Some(l)) => resnet::data::ClassList::from_file(l)?.len(),
        (None, None) => {
            let train = resnet::data::folder::split_dir(data, "train")?;
            resnet::data::folder::ImageFolder::scan(&train, None)?.folders.len()
        }
    };
    if a.crop == 0 || a.scale.len() != 2 || a.scale[0] == 0 || a.scale[0] > a.scale[1] {
        bail!("--crop must be positive and --scale MIN,MAX with 0 < MIN <= MAX");
    }
    let crop = if a.random_resized_crop {
        TrainCrop::RandomResized
    } else {
        TrainCrop::Scale { min: a.scale[0], max: a.scale[1] }
    };
    Ok(ImageTraining {
        labels: a.labels.clone(),
        classes,
        transform: TrainTransform { crop, size: a.crop, lighting: a.lighting },
        eval_resize: a.eval_resize.unwrap_or(a.crop * 8 / 7),
        mean_images: a.mean_images,
    })
}

/// Sets the run length and lr drops from the flags, now that an epoch's length is known.
fn set_schedule(a: &Args, cfg: &mut TrainConfig, per_epoch: usize) -> Result<()> {
    let recipe = recipe_of(cfg.images.is_some());
    let length = match (a.epochs, a.iterations) {
        (Some(e), _) => Length::Epochs(e),
        (None, Some(i)) => Length::Iterations(i),
        (None, None) => recipe.full_length(),
    };
    recipe.set_length(cfg, length, per_epoch)?;
    if let Some(m) = &a.milestones {
        cfg.schedule.milestones = m.clone();
    } else if let Some(epochs) = &a.schedule {
        cfg.schedule.milestones = epochs
            .iter()
            .map(|&e| {
                e.checked_mul(per_epoch).with_context(|| format!("epoch {e} of {per_epoch} iterations is too far"))
            })
            .collect::<Result<_>>()?;
    }
    Ok(())
}

fn recipe_of(folder: bool) -> Recipe {
    if folder { Recipe::ImageNet } else { Recipe::Cifar }
}

/// How a step's batch is cut: micro-batches, and BatchNorm's groups.
fn batch_note(cfg: &TrainConfig) -> String {
    let mut note = String::new();
    if cfg.accumulate > 1 {
        note += &format!(" in {} micro-batches", cfg.accumulate);
    }
    let group = bn_group(cfg);
    if cfg.sync_bn && cfg.ranks > 1 {
        note += ", BatchNorm over the whole batch of every rank";
    } else if group < cfg.batch {
        note += &format!(", BatchNorm over groups of {group}");
    }
    note
}

/// A run resumed on `ranks` processes where it trained on `cfg.ranks`. Where `ranks`
/// divides the run's micro-batches per step (`ranks × accumulate`), each rank takes an
/// equal number of them, so the batch is cut, and BatchNorm normalizes, as before (the
/// running averages now follow the first micro-batch of each rank's share);
/// elsewhere (a job that lost a node) each rank takes one, and a change of BatchNorm's
/// groups is said. Synchronized BatchNorm normalizes the whole batch on any number of ranks.
fn rescale_ranks(cfg: &mut TrainConfig, ranks: usize, speak: bool) -> Result<()> {
    if ranks == cfg.ranks {
        return Ok(());
    }
    let (was, parts) = (bn_group(cfg), cfg.ranks * cfg.accumulate);
    let accumulate = if cfg.sync_bn || parts % ranks != 0 { 1 } else { parts / ranks };
    let before = cfg.ranks;
    (cfg.ranks, cfg.accumulate) = (ranks, accumulate);
    if speak {
        let each = match accumulate {
            1 => String::new(),
            k => format!(", each taking {k} micro-batches of a step"),
        };
        eprintln!("note: the run trained on {before} processes and continues on {ranks}{each}");
        let now = bn_group(cfg);
        if !cfg.sync_bn && now != was {
            eprintln!(
                "warning: BatchNorm now normalizes groups of {now} images instead of {was}: the run goes on, \
                 but not as it would have on {before} processes"
            );
        }
    }
    Ok(())
}

/// Images per BatchNorm group in a full training batch, over all ranks.
fn bn_group(cfg: &TrainConfig) -> usize {
    if cfg.sync_bn {
        return cfg.batch;
    }
    let micro = cfg.batch.div_ceil(cfg.ranks * cfg.accumulate);
    micro.div_ceil(resnet::nn::bn_group_count(micro, cfg.bn_batch))
}

/// What `--resume` reads from the command line; the run's own settings come from its
/// checkpoint, so that it continues exactly as it began.
const RESUME_FLAGS: [&str; 9] =
    ["resume", "out", "model", "data", "quiet", "threads", "iterations", "epochs", "bucket_mb"];

/// With `--device cuda`, what makes the GPU's copy of the model, after refusing what the
/// GPU does not do yet.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
fn on_device(a: &Args, cfg: &TrainConfig) -> Result<Option<resnet::train::run::DeviceFactory<'static>>> {
    use resnet::engine::Precision;
    if !a.cuda {
        // A run begun in tf32 on a GPU goes on in f32 here, the nearest the CPU has. (A new
        // run in tf32 without a GPU is refused with the other flags.)
        if cfg.precision == Precision::Tf32 {
            eprintln!("note: the run trained in tf32 on a GPU; the CPU goes on in f32");
        }
        return Ok(None);
    }
    #[cfg(feature = "cuda")]
    {
        use resnet::train::run::DeviceSteps;
        if cfg.ranks > 1 {
            bail!("--device cuda: training with several processes (MPI) runs on the CPU only so far");
        }
        fn gpu_trainer(model: &mut resnet::model::ResNet) -> Result<Box<dyn DeviceSteps>> {
            let trainer = resnet::model::cuda::GpuTrainer::new(model).context("--device cuda")?;
            let gpu = trainer.gpu();
            let math = match (gpu.tf32(), gpu.bf16()) {
                (true, _) => ", convolutions on TF32 tensor cores",
                (_, true) => ", convolutions in bf16 on tensor cores",
                _ => "",
            };
            eprintln!("training on {}{math}", trainer.gpu().name());
            Ok(Box::new(trainer))
        }
        Ok(Some(&gpu_trainer))
    }
    #[cfg(not(feature = "cuda"))]
    bail!("--device cuda: this build has no CUDA support")
}

/// `given`: the ids of the arguments given on the command line.
/// `comm`: the job's processes; rank 0 owns the run directory and speaks for the job.
pub fn run(a: Args, given: &[String], job: &Arc<dyn Collective>) -> Result<ExitCode> {
    let comm = &**job;
    let root = comm.rank() == 0;
    let claim_dir = |path: &Path, claim: Claim| root.then(|| RunDir::claim(path, claim)).transpose();
    let mut position = 0;
    let (mut cfg, saved_norm, run_dir) = if a.resume {
        let out = a.out.clone().or_else(|| a.model.as_ref().map(|m| Path::new("runs").join(m)));
        let Some(out) = out else { bail!("--resume needs --out DIR (the run directory)") };
        if !out.is_dir() {
            bail!("--out {}: no such run directory to resume", out.display());
        }
        let run_dir = claim_dir(&out, Claim::Resume)?;
        let saved = Checkpoint::latest(&out)?;
        let mut cfg = saved.config;
        if let Some(model) = a.model.as_deref().filter(|m| !m.eq_ignore_ascii_case(&cfg.model)) {
            bail!("--resume: the run in {} trains {}, not {model}", out.display(), cfg.model);
        }
        cfg.out = out;
        if let Some(d) = &a.data {
            cfg.data = d.clone();
        }
        if given.iter().any(|g| g == "bucket_mb") {
            cfg.bucket_mb = a.bucket_mb;
        }
        let ignored: Vec<String> = given
            .iter()
            .filter(|id| !RESUME_FLAGS.contains(&id.as_str()))
            .map(|id| format!("--{}", id.replace('_', "-")))
            .collect();
        if root && !ignored.is_empty() {
            eprintln!(
                "note: --resume continues the run with the settings in its checkpoint; ignoring {}",
                ignored.join(", ")
            );
        }
        position = saved.state.iteration;
        rescale_ranks(&mut cfg, comm.size(), root)?;
        (cfg, Some(saved.norm), run_dir)
    } else {
        let mut cfg = config_from_args(&a)?;
        cfg.ranks = comm.size();
        if cfg.ranks * cfg.accumulate > cfg.batch {
            bail!(
                "--batch {} is too small for {} ranks × --accumulate {}: every rank needs images in every step",
                cfg.batch,
                cfg.ranks,
                cfg.accumulate
            );
        }
        let claim = if a.overwrite { Claim::Overwrite } else { Claim::Fresh };
        let run_dir = claim_dir(&cfg.out, claim)?;
        (cfg, None, run_dir)
    };
    if root && !a.cuda {
        super::warn_if_emulated(cfg.precision);
    }
    // What the GPU cannot do yet is refused before the data is loaded.
    let device = on_device(&a, &cfg)?;
    let data = data::load(&cfg, saved_norm)?;
    let per_epoch = iterations_per_epoch(data.train.len(), cfg.batch);
    if !a.resume {
        set_schedule(&a, &mut cfg, per_epoch)?;
    } else if let Some(total) = a.iterations.or(a.epochs.map(|e| e.saturating_mul(per_epoch))) {
        // A longer (or shorter, not yet reached) end for the run; its lr drops stay where
        // they were, so the steps added train at the last rate.
        if total < position {
            bail!("the run in {} is at iteration {position}; a new end must not be before it", cfg.out.display());
        }
        if total != cfg.iterations {
            if root {
                eprintln!(
                    "note: the run now ends at iteration {} instead of {}",
                    grouped(total as u64),
                    grouped(cfg.iterations as u64)
                );
            }
            cfg.iterations = total;
        }
    }
    super::on_ctrl_c()?;
    let processes = match comm.size() {
        1 => String::new(),
        _ => format!(" on {} ({} threads each)", comm.describe(), rayon::current_num_threads()),
    };
    let threads = if comm.size() > 1 { String::new() } else { format!(", {} threads", rayon::current_num_threads()) };
    if root {
        eprintln!(
            "training {} on {} ({} train / {} eval images, {} classes), {} iterations, batch {}{}{threads}{processes} -> {}",
            cfg.model,
            cfg.data.display(),
            grouped(data.train.len() as u64),
            grouped(data.test.len() as u64),
            cfg.classes(),
            grouped(cfg.iterations as u64),
            cfg.batch,
            batch_note(&cfg),
            cfg.out.display()
        );
    }
    let started = std::time::Instant::now();
    let opts = RunOptions {
        resume: a.resume,
        progress: !a.quiet,
        cancel: &super::INTERRUPTED,
        sinks: Vec::new(),
        comm: job.clone(),
        device,
    };
    let outcome = resnet::train::train(&cfg, data, opts)?;
    drop(run_dir);
    if !root {
        return Ok(ExitCode::SUCCESS);
    }
    match outcome {
        Outcome::Finished { test_acc, best_acc, .. } => {
            let out = &cfg.out;
            let best = best_acc.map_or(String::new(), |b| format!(", best {:.2}%", 100.0 * b));
            println!(
                "finished: test accuracy {:.2}%{best}, {} iterations in {}",
                100.0 * test_acc,
                grouped(cfg.iterations as u64),
                duration(started.elapsed())
            );
            println!("  weights: {}", out.join(resnet::train::run::FINAL_WEIGHTS).display());
            if best_acc.is_some() {
                println!("  best weights: {}", out.join(resnet::train::run::BEST_WEIGHTS).display());
            }
            println!("  metrics: {}", out.join(resnet::train::run::METRICS).display());
            Ok(ExitCode::SUCCESS)
        }
        Outcome::Interrupted { iteration, .. } => {
            eprintln!(
                "interrupted at iteration {iteration}; checkpoint saved. Continue with: resnet train --resume --out {}",
                cfg.out.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}

/// A duration as "1h02m03s", "2m05s" or "7.1s".
fn duration(d: std::time::Duration) -> String {
    resnet::text::duration(d.as_secs_f64())
}
