use anyhow::{Context, Result, bail};
use resnet::data::{DatasetKind, Norm, cifar};
use resnet::eval::evaluate;
use resnet::model::{ModelConfig, ResNet, Shortcut};
use resnet::train::checkpoint::OPTIMIZER_PREFIX;
use resnet::weights::{self, TensorFile};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    model: String,
    /// Safetensors weights or a training checkpoint.
    #[arg(long)]
    weights: PathBuf,
    /// A directory of batch files (its test split is used) or a single batch file.
    #[arg(long)]
    data: PathBuf,
    #[arg(long, default_value = "cifar10", value_parser = super::parse_dataset)]
    dataset: DatasetKind,
    /// pixel-mean, imagenet or cifar (default: what the weights were trained with).
    #[arg(long)]
    norm: Option<String>,
    /// Shortcut option (default: A for CIFAR nets, B for ImageNet nets).
    #[arg(long, value_parser = super::parse_shortcut)]
    shortcut: Option<Shortcut>,
    #[arg(long, default_value_t = 500)]
    batch: usize,
}

fn choose_norm(a: &Args, file: &TensorFile) -> Result<Norm> {
    if let Some(name) = &a.norm
        && name != "pixel-mean"
    {
        return Norm::from_name(name, None);
    }
    if let Some(saved) = file.metadata.get("norm") {
        let norm: Norm =
            serde_json::from_str(saved).with_context(|| format!("{}: corrupt 'norm' metadata", a.weights.display()))?;
        if a.norm.is_none() || matches!(norm, Norm::PixelMean(_)) {
            return Ok(norm);
        }
    }
    if a.data.is_dir() {
        let train = cifar::load(&a.data, a.dataset, true)?;
        return Norm::from_name("pixel-mean", Some(&train));
    }
    bail!(
        "{}: the weights do not record their input normalization; pass --norm imagenet|cifar, or a data directory with the training batches for pixel-mean",
        a.weights.display()
    )
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut model = ResNet::new(ModelConfig::from_name(&a.model, a.shortcut, a.dataset.classes())?, 0);
    let bytes = weights::read_file(&a.weights)?;
    let file = TensorFile::parse(&a.weights, &bytes)?;
    weights::load_into(&file, &mut model.named(), Some(OPTIMIZER_PREFIX))?;
    let norm = choose_norm(&a, &file)?;
    let data = cifar::load(&a.data, a.dataset, false)?;
    let r = evaluate(&mut model, Arc::new(data), Arc::new(norm), a.batch.max(1));
    println!("top-1: {:.2}% ({}/{})", 100.0 * r.accuracy(), r.correct, r.total);
    println!("loss: {:.4}", r.loss);
    for (name, (ok, total)) in a.dataset.class_names().iter().zip(&r.per_class) {
        if *total > 0 {
            println!("  {name:<12} {:6.2}% ({ok}/{total})", 100.0 * *ok as f64 / *total as f64);
        }
    }
    Ok(ExitCode::SUCCESS)
}
