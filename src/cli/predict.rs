use super::common;
use anyhow::{Result, bail};
use resnet::eval::predict::predict;
use resnet::model::Shortcut;
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
    /// Shorter side before the centre crop (default: the view recorded with the weights, else
    /// 32 for CIFAR networks and 256 for ImageNet ones).
    #[arg(long, value_parser = super::parse_side)]
    resize: Option<usize>,
    /// Side of the square centre crop (default: as recorded, else 32 CIFAR, 224 ImageNet).
    #[arg(long, value_parser = super::parse_side)]
    crop: Option<usize>,
    /// Class names: the 1000-class index JSON or one name per line (default: the names saved
    /// with the weights, or ImageNet's for 1000 classes).
    #[arg(long)]
    labels: Option<PathBuf>,
    /// pixel-mean, imagenet or cifar (default: what the weights were trained with, else imagenet).
    #[arg(long, value_parser = super::parse_norm)]
    norm: Option<String>,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Classes shown per image.
    #[arg(long, default_value_t = 5, value_parser = super::parse_top)]
    top: usize,
    /// Images per network call.
    #[arg(long, value_parser = super::parse_batch, default_value_t = 16)]
    batch: usize,
    /// One JSON object per image: file and top classes (index, label, prob).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// With --json, every logit too.
    #[arg(long, requires = "json")]
    logits: bool,
    /// One CSV line per image: file, then index, label and probability of each top class.
    #[arg(long)]
    csv: bool,
    /// JPEG or PNG files, or folders of them (searched recursively).
    #[arg(required = true)]
    images: Vec<PathBuf>,
    /// The convolutions' number format: f32, or bf16 (operands rounded to bf16, sums,
    /// BatchNorm and the weights in f32; on AMX or AVX-512 BF16 where the CPU has them).
    #[arg(long, default_value = "f32", value_parser = resnet::engine::Precision::parse)]
    precision: resnet::engine::Precision,
    /// Set by `--device cuda`: the network runs on the GPU.
    #[arg(skip)]
    pub cuda: bool,
}

pub fn run(mut a: Args) -> Result<ExitCode> {
    a.images = expand_folders(&a.images)?;
    let (mut model, file, norm, view) =
        common::for_inference(a.model.as_deref(), a.shortcut, &a.weights, a.norm.as_deref(), a.resize, a.crop)?;
    model.set_precision(a.precision);
    if !a.cuda {
        super::warn_if_emulated(a.precision);
    }
    let classes =
        common::class_list(a.labels.as_deref(), &file, model.classes())?.or_else(|| common::cifar_names(&model));
    let name = |i: usize| classes.as_ref().map_or_else(|| format!("class {i}"), |c| c.name(i));
    let threads = rayon::current_num_threads().clamp(1, 4);
    let results = on_device(a.cuda, &mut model, a.images.clone(), view, norm, (a.batch, threads))?;
    let mut failed = 0;
    let top_n = a.top;
    if a.csv {
        let columns: Vec<String> = (1..=top_n)
            .flat_map(|r| [format!("top{r}_index"), format!("top{r}_label"), format!("top{r}_prob")])
            .collect();
        println!("file,{}", columns.join(","));
    }
    for (path, r) in a.images.iter().zip(results) {
        let p = match r {
            Ok(p) => p,
            Err(e) => {
                eprintln!("error: {e:#}");
                failed += 1;
                continue;
            }
        };
        let top = p.top(top_n);
        if a.json {
            let top: Vec<_> =
                top.iter().map(|&(i, prob)| json!({"index": i, "label": name(i), "prob": prob})).collect();
            let mut line = json!({"file": path, "top": top});
            if a.logits {
                line["logits"] = json!(p.logits);
            }
            println!("{line}");
        } else if a.csv {
            let cells: Vec<String> =
                top.iter().flat_map(|&(i, prob)| [i.to_string(), csv_cell(&name(i)), prob.to_string()]).collect();
            println!("{},{}", csv_cell(&path.display().to_string()), cells.join(","));
        } else {
            println!("{}", path.display());
            for (rank, &(i, prob)) in top.iter().enumerate() {
                println!("  {}. {:6.2}%  {} ({i})", rank + 1, 100.0 * prob, name(i));
            }
        }
    }
    if failed > 0 {
        eprintln!("{failed} of {} images could not be read", a.images.len());
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// A CSV cell: quoted when it holds a comma, quote or line break.
fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// The paths given, with each folder replaced by the images under it.
pub fn expand_folders(paths: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut images = Vec::new();
    for path in paths {
        if path.is_dir() {
            let found = resnet::data::folder::images_under(path)?;
            if found.is_empty() {
                bail!("{}: no .jpg/.jpeg/.png images in this folder", path.display());
            }
            images.extend(found);
        } else {
            images.push(path.clone());
        }
    }
    Ok(images)
}

/// `files` through the network (`predict` and `embed`): on the CPU, or with `cuda` on the
/// GPU (in f32). `(batch, threads)`: images per network call, threads decoding.
#[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
pub(super) fn on_device(
    cuda: bool,
    model: &mut resnet::model::ResNet,
    files: Vec<PathBuf>,
    view: resnet::data::imagenet::EvalViews,
    norm: resnet::data::Norm,
    (batch, threads): (usize, usize),
) -> Result<Vec<Result<resnet::eval::predict::Prediction>>> {
    if !cuda {
        return Ok(predict(model, files, view, Arc::new(norm), batch, threads));
    }
    #[cfg(feature = "cuda")]
    {
        use anyhow::Context;
        let net = resnet::model::cuda::GpuNet::new(model).context("--device cuda")?;
        let forward = |n: usize, hw: (usize, usize), images: &[f32]| net.forward_with_features(n, hw, images);
        Ok(resnet::eval::predict::predict_by(net.classes(), forward, files, view, Arc::new(norm), (batch, threads)))
    }
    #[cfg(not(feature = "cuda"))]
    bail!("--device cuda: this build has no CUDA support")
}
