use super::common;
use anyhow::{Result, bail};
use resnet::data::folder::{ImageFolder, split_dir};
use resnet::data::imagenet::{EvalViews, FolderSamples, FolderTransform};
use resnet::data::{CifarSamples, DatasetKind, Norm, Samples, cifar, transform};
use resnet::eval::{EvalResult, evaluate, multiscale};
use resnet::model::{Family, Shortcut};
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Model (default: the one the weights record). resnet20/32/44/56/110/1202, plain20, ...
    /// (CIFAR, any 6n+2), or resnet18/34/50/101/152, resnet50-v1, plain18/34 (ImageNet).
    #[arg(long)]
    model: Option<String>,
    /// Weights: safetensors, PyTorch .pth/.pt/.th, a training checkpoint, or published
    /// weights by name (torchvision:resnet50, torchvision:resnet50.v2, cifar:resnet56; resnet
    /// weights list), fetched into torch's cache.
    #[arg(long)]
    weights: PathBuf,
    /// CIFAR batches (a directory, whose test split is used, or one batch file), or an image
    /// folder (DIR/val/<class>/* or DIR/<class>/*).
    #[arg(long)]
    data: PathBuf,
    /// cifar10, cifar100 or folder (default: folder when --data holds class folders).
    #[arg(long)]
    dataset: Option<String>,
    /// Image folders: class list mapping folder names (synsets or names) to the model's classes.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Image folders: center (one crop), 10crop, or multiscale (fully convolutional, shorter side
    /// in --scales, with flips).
    #[arg(long, default_value = "center")]
    protocol: String,
    /// Image folders: shorter side before cropping (center, 10crop; default: the view recorded
    /// with the weights, else 32 for CIFAR networks and 256 for ImageNet ones).
    #[arg(long, value_parser = super::parse_side)]
    resize: Option<usize>,
    /// Image folders: side of the square crop (default: as recorded, else 32 CIFAR, 224 ImageNet).
    #[arg(long, value_parser = super::parse_side)]
    crop: Option<usize>,
    /// Shorter sides for --protocol multiscale.
    #[arg(long, value_parser = super::parse_side, value_delimiter = ',', default_values_t = multiscale::PAPER_SCALES)]
    scales: Vec<usize>,
    /// pixel-mean, imagenet or cifar (default: what the weights were trained with; imagenet for
    /// ImageNet networks without a record, as torchvision's weights).
    #[arg(long, value_parser = super::parse_norm)]
    norm: Option<String>,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Images per network call.
    #[arg(long, value_parser = super::parse_batch, default_value_t = 100)]
    batch: usize,
    /// Threads decoding and preparing images.
    #[arg(long, value_parser = super::parse_loader_threads, default_value_t = 2)]
    loader_threads: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Write the confusion matrix as CSV: a row per true class, a column per predicted class.
    #[arg(long, value_name = "FILE.csv")]
    confusion: Option<PathBuf>,
    /// Replace the --confusion file if it exists.
    #[arg(long)]
    overwrite: bool,
    /// The convolutions' number format: f32, or bf16 (operands rounded to bf16, sums,
    /// BatchNorm and the weights in f32; on AMX or AVX-512 BF16 where the CPU has them, on
    /// tensor cores with --device cuda), or with --device cuda tf32 (cuDNN on TF32 tensor
    /// cores, sums in f32).
    #[arg(long, default_value = "f32", value_parser = resnet::engine::Precision::parse_any)]
    precision: resnet::engine::Precision,
    /// Set by `--device cuda`: the network runs on the GPU.
    #[arg(skip)]
    pub cuda: bool,
}

/// `samples` scored by the network: on the CPU, or with `--device cuda` on the GPU.
fn score(
    a: &Args,
    model: &mut resnet::model::ResNet,
    samples: Arc<dyn Samples>,
    progress: &resnet::progress::Bar,
) -> Result<EvalResult> {
    #[cfg(feature = "cuda")]
    if a.cuda {
        use anyhow::Context;
        let net = resnet::model::cuda::GpuNet::new(model).context("--device cuda")?;
        return resnet::eval::evaluate_on_gpu(&net, samples, a.batch.max(1), a.loader_threads, progress)
            .context("--device cuda");
    }
    Ok(evaluate(model, samples, a.batch.max(1), a.loader_threads, progress))
}

/// Image folder or CIFAR: `--dataset`, else the data's look, else the model's family.
fn is_folder(a: &Args, family: Family) -> Result<bool> {
    Ok(match a.dataset.as_deref() {
        Some("folder") => true,
        Some(name) => {
            super::parse_dataset(name).map_err(anyhow::Error::msg)?;
            false
        }
        None => cifar::is_image_folder(&a.data).unwrap_or(family == Family::ImageNet),
    })
}

/// What was evaluated: the protocol's description, the result, and the class names to
/// print per-class accuracy with (small class counts only).
struct Report {
    protocol: String,
    result: EvalResult,
    per_class: Option<Vec<String>>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    use resnet::engine::Precision;
    if !a.cuda && a.precision == Precision::Tf32 {
        bail!("--precision tf32 is for NVIDIA GPUs (--device cuda)");
    }
    if a.cuda && a.protocol == "multiscale" {
        bail!("--device cuda: --protocol multiscale runs on the CPU only so far");
    }
    if let Some(path) = &a.confusion {
        // Before the evaluation, which on ImageNet takes hours, not after it.
        super::check_new_output(path, a.overwrite)?;
    }
    let (mut model, file) = common::load_model(a.model.as_deref(), a.shortcut, &a.weights)?;
    model.set_precision(a.precision);
    if !a.cuda {
        super::warn_if_emulated(a.precision);
    }
    let report = if is_folder(&a, model.config.family)? {
        eval_folder(&a, &mut model, &file)?
    } else {
        eval_cifar(&a, &mut model, &file)?
    };
    let r = &report.result;
    for e in &r.skipped {
        eprintln!("warning: skipped image: {e}");
    }
    let names =
        |i: usize| report.per_class.as_ref().and_then(|n| n.get(i)).cloned().unwrap_or_else(|| format!("class {i}"));
    if a.json {
        // Six decimals: what a fraction of a million images can tell.
        let round = |x: f64| (x * 1e6).round() / 1e6;
        let per_class: Vec<_> = (r.per_class.iter().enumerate())
            .filter(|(_, (_, total))| *total > 0)
            .map(|(i, &(ok, total))| {
                json!({"index": i, "name": names(i), "correct": ok, "total": total, "accuracy": round(ok as f64 / total as f64)})
            })
            .collect();
        let line = json!({
            "protocol": report.protocol, "images": r.total, "skipped": r.skipped.len(),
            "top1": round(r.accuracy()), "top5": round(r.accuracy5()), "top1_correct": r.correct, "top5_correct": r.correct5,
            "top1_error": round(1.0 - r.accuracy()), "top5_error": round(1.0 - r.accuracy5()), "loss": round(r.loss),
            "per_class": per_class,
        });
        println!("{line}");
    } else {
        let pct = |x: f64| 100.0 * x;
        println!("protocol: {}", report.protocol);
        println!("top-1: {:.2}% ({}/{})", pct(r.accuracy()), r.correct, r.total);
        // With five classes or fewer every image is in its top 5: nothing to print.
        let top5 = model.classes() > 5;
        if top5 {
            println!("top-5: {:.2}% ({}/{})", pct(r.accuracy5()), r.correct5, r.total);
        }
        println!("top-1 error: {:.2}%", pct(1.0 - r.accuracy()));
        if top5 {
            println!("top-5 error: {:.2}%", pct(1.0 - r.accuracy5()));
        }
        println!("loss: {:.4}", r.loss);
        // Per class where there are few enough to read.
        let shown = r.per_class.iter().filter(|(_, total)| *total > 0).count();
        for (i, (ok, total)) in r.per_class.iter().enumerate().filter(|(_, (_, total))| *total > 0 && shown <= 100) {
            let name = names(i);
            let name = resnet::text::printable(&name);
            println!("  {name:<12} {:6.2}% ({ok}/{total})", 100.0 * *ok as f64 / *total as f64);
        }
        if !r.skipped.is_empty() {
            println!("skipped: {} unreadable images", r.skipped.len());
        }
    }
    // After the results are printed, so that a failed write loses nothing.
    if let Some(path) = &a.confusion {
        resnet::files::write_atomic(path, confusion_csv(r, &names).as_bytes())?;
        eprintln!("confusion matrix written to {}", path.display());
    }
    if r.total == 0 {
        bail!("{}: no image could be evaluated", a.data.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn eval_cifar(a: &Args, model: &mut resnet::model::ResNet, file: &resnet::weights::StateDict) -> Result<Report> {
    if resnet::data::folder::is_image(&a.data) {
        bail!(
            "{}: an image file; --data takes CIFAR batches or an image folder (DIR/val/<class>/*), and resnet predict classifies single images",
            a.data.display()
        );
    }
    if a.protocol != "center" {
        bail!("--protocol {} applies to image folders; CIFAR is evaluated on the 32x32 images", a.protocol);
    }
    let kind = match (a.dataset.as_deref(), model.classes()) {
        (Some("cifar100"), _) | (None, 100) => DatasetKind::Cifar100,
        _ => DatasetKind::Cifar10,
    };
    if model.classes() != kind.classes() {
        bail!(
            "{}: the weights are for {} classes (key '{}.weight'), {} has {}",
            a.weights.display(),
            model.classes(),
            model.config.naming().1,
            kind.name(),
            kind.classes()
        );
    }
    let norm = match common::default_norm(model, file, a.norm.as_deref())? {
        Some(Norm::PixelMean(m)) if m.len() != 3 * 32 * 32 => {
            bail!("{}: the weights' per-pixel mean is not 32x32; pass --norm", a.weights.display())
        }
        Some(n) => n,
        None if a.data.is_dir() => {
            let train = cifar::load(&a.data, kind, true)?;
            Norm::PixelMean(transform::pixel_mean(&train))
        }
        None => bail!(
            "{}: the weights do not record their input normalization; pass --norm imagenet|cifar, or a data directory with the training batches for pixel-mean",
            a.weights.display()
        ),
    };
    let data = cifar::load(&a.data, kind, false)?;
    let samples = Arc::new(CifarSamples { data: Arc::new(data), norm: Arc::new(norm) });
    let progress = resnet::progress::bar("eval", samples.len(), true);
    let result = score(a, model, samples, &progress)?;
    let names = common::class_list(a.labels.as_deref(), file, model.classes())?
        .map(|l| l.names)
        .unwrap_or_else(|| kind.class_names());
    Ok(Report { protocol: format!("{} test images, 32x32", kind.name()), result, per_class: Some(names) })
}

fn eval_folder(a: &Args, model: &mut resnet::model::ResNet, file: &resnet::weights::StateDict) -> Result<Report> {
    let classes = common::class_list(a.labels.as_deref(), file, model.classes())?;
    let dir = split_dir(&a.data, "val")?;
    let folder = ImageFolder::scan(&dir, classes.as_ref())?;
    if let Some(note) = folder.ignored_note() {
        eprintln!("{note}");
    }
    if classes.is_none() && folder.folders.len() != model.classes() {
        bail!(
            "{}: {} class folders for a {}-class model; pass --labels FILE to map folder names to the model's classes",
            dir.display(),
            folder.folders.len(),
            model.classes()
        );
    }
    let norm = match common::default_norm(model, file, a.norm.as_deref())? {
        Some(n) => n,
        None => bail!(
            "{}: the weights do not record their input normalization; pass --norm imagenet|cifar",
            a.weights.display()
        ),
    };
    let view = common::view(model, file, a.resize, a.crop)?;
    let (folder, norm) = (Arc::new(folder), Arc::new(norm));
    let (protocol, result) = match a.protocol.as_str() {
        "center" | "10crop" => {
            let views = if a.protocol == "center" {
                EvalViews::Center { resize: view.resize, crop: view.crop }
            } else {
                EvalViews::TenCrop { resize: view.resize, crop: view.crop }
            };
            let samples: Arc<dyn Samples> =
                Arc::new(FolderSamples { folder: folder.clone(), transform: FolderTransform::Eval(views), norm });
            let desc = format!(
                "{} (shorter side {}, {c}x{c} crops), {} images",
                a.protocol,
                view.resize,
                folder.len(),
                c = view.crop
            );
            let progress = resnet::progress::bar("eval", folder.len(), true);
            (desc, score(a, model, samples, &progress)?)
        }
        "multiscale" => {
            if a.scales.is_empty() || a.scales.contains(&0) {
                bail!("--scales needs positive shorter sides, e.g. 224,256,384,480,640");
            }
            let desc = format!("multiscale (shorter sides {:?}, with flips), {} images", a.scales, folder.len());
            let progress = resnet::progress::bar("eval", folder.len(), true);
            (desc, multiscale::evaluate(model, folder.clone(), norm, a.scales.clone(), a.loader_threads, &progress))
        }
        p => bail!("unknown --protocol '{p}' (expected center, 10crop or multiscale)"),
    };
    let names = match classes {
        Some(list) => list.names,
        None => folder.folders.clone(),
    };
    Ok(Report { protocol, result, per_class: Some(names) })
}

/// The confusion matrix as CSV, with the class names as header and first column.
fn confusion_csv(r: &EvalResult, names: &dyn Fn(usize) -> String) -> String {
    let classes = r.per_class.len();
    let cell =
        |s: String| if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s };
    let mut out = String::from("true \\ predicted");
    for j in 0..classes {
        out += &format!(",{}", cell(names(j)));
    }
    out.push('\n');
    for i in 0..classes {
        out += &cell(names(i));
        for j in 0..classes {
            out += &format!(",{}", r.confusion[i * classes + j]);
        }
        out.push('\n');
    }
    out
}
