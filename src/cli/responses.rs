use super::common;
use anyhow::{Result, bail};
use resnet::data::{CifarSamples, DatasetKind, Samples, cifar};
use resnet::eval::responses::layer_responses;
use resnet::model::Shortcut;
use resnet::plot::responses::ResponsesFigure;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    /// Model (default: the one the weights record).
    #[arg(long)]
    model: Option<String>,
    /// Weights: a file, a checkpoint, or published weights by name (resnet weights list).
    /// Several, comma-separated, draw several networks in one figure.
    #[arg(long, value_delimiter = ',', required = true)]
    weights: Vec<PathBuf>,
    /// CIFAR batches: a test batch file or a directory (its test_batch.bin).
    #[arg(long)]
    data: PathBuf,
    /// pixel-mean, imagenet or cifar (default: what the weights record).
    #[arg(long, value_parser = super::parse_norm)]
    norm: Option<String>,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Print one JSON object per network: the model and its per-layer values.
    #[arg(long)]
    json: bool,
    /// Also draw the figure (Fig. 7): FILE.svg or FILE.png, the other written beside it.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Images per network call.
    #[arg(long, value_parser = super::parse_batch, default_value_t = 500)]
    batch: usize,
}

/// Fig. 7 of the paper for any CIFAR weights: the std of each 3×3 layer's response (after
/// BatchNorm, before the ReLU and the shortcut addition) over all values of the images.
pub fn run(a: Args) -> Result<ExitCode> {
    if let Some(out) = &a.out
        && !matches!(out.extension().and_then(|e| e.to_str()), Some("svg" | "png"))
    {
        bail!("--out {}: must end in .svg or .png", out.display());
    }
    let mut networks = Vec::new();
    for weights in &a.weights {
        let (mut model, file) = common::load_model(a.model.as_deref(), a.shortcut, weights)?;
        let kind = if model.classes() == 100 { DatasetKind::Cifar100 } else { DatasetKind::Cifar10 };
        let Some(norm) = common::default_norm(&model, &file, a.norm.as_deref())? else {
            bail!("{}: the weights do not record their input normalization; pass --norm", weights.display())
        };
        let data = cifar::load(&a.data, kind, false)?;
        let samples: Arc<dyn Samples> = Arc::new(CifarSamples { data: Arc::new(data), norm: Arc::new(norm) });
        let bar = resnet::progress::bar("responses", samples.len(), !a.json);
        let layers = layer_responses(&mut model, samples, a.batch, 2, &bar);
        let name = model.config.name();
        if a.json {
            println!("{}", json!({"model": name, "weights": weights.display().to_string(), "layers": layers}));
        } else {
            println!("{name} ({}):", weights.display());
            for l in &layers {
                println!("  {:<20} {:.6}", l.layer, l.std);
            }
        }
        networks.push((name, layers.iter().map(|l| l.std).collect()));
    }
    if let Some(out) = &a.out {
        let [svg, png] = resnet::plot::save(&ResponsesFigure { networks }, &out.with_extension(""))?;
        eprintln!("figure: {} and {}", svg.display(), png.display());
    }
    Ok(ExitCode::SUCCESS)
}
