use super::common;
use anyhow::{Result, bail};
use resnet::export::{ExportOptions, export};
use resnet::model::Shortcut;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Model (default: the one the weights record).
    #[arg(long)]
    model: Option<String>,
    /// Weights: a file, a checkpoint, or published weights by name (resnet weights list).
    #[arg(long)]
    weights: PathBuf,
    /// The ONNX file to write (ends in .onnx; an existing one needs --overwrite).
    #[arg(long)]
    out: PathBuf,
    /// Images per call: `dynamic` (a free batch dimension) or a number.
    #[arg(long, default_value = "dynamic")]
    batch: String,
    /// ONNX opset (13 to 21).
    #[arg(long, default_value_t = 17)]
    opset: i64,
    /// Fold each BatchNorm into the convolution before it.
    #[arg(long)]
    fold_bn: bool,
    /// The normalization to record (default: the one the weights record).
    #[arg(long, value_parser = super::parse_norm)]
    norm: Option<String>,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

/// The network as an ONNX model: NCHW input at the size it was trained for, logits out,
/// its preprocessing in the model's metadata.
pub fn run(a: Args) -> Result<ExitCode> {
    if a.out.extension().and_then(|e| e.to_str()) != Some("onnx") {
        bail!("--out {}: must end in .onnx", a.out.display());
    }
    super::check_new_output(&a.out, a.overwrite)?;
    let batch = match a.batch.as_str() {
        "dynamic" => None,
        n => match n.parse::<usize>() {
            Ok(n) if (1..=4096).contains(&n) => Some(n),
            _ => bail!("--batch must be 'dynamic' or a number from 1 to 4096, not '{n}'"),
        },
    };
    let (mut net, file) = common::load_model(a.model.as_deref(), a.shortcut, &a.weights)?;
    let mut metadata = std::collections::HashMap::from([("model".to_string(), net.config.name())]);
    if let Some(norm) = common::default_norm(&net, &file, a.norm.as_deref())? {
        metadata.insert("norm".into(), serde_json::to_string(&norm)?);
    }
    metadata.insert("view".into(), serde_json::to_string(&common::view(&net, &file, None, None)?)?);
    let names = common::class_list(None, &file, net.classes())?.or_else(|| common::cifar_names(&net));
    if let Some(list) = names {
        metadata.insert("class_names".into(), serde_json::to_string(&list.names)?);
    }
    let bytes = export(&mut net, &metadata, ExportOptions { batch, opset: a.opset, fold_bn: a.fold_bn })?;
    resnet::files::write_atomic(&a.out, &bytes)?;
    println!(
        "{}: {} (opset {}, batch {}, BatchNorm {}), {} bytes",
        a.out.display(),
        net.config.name(),
        a.opset,
        a.batch,
        if a.fold_bn { "folded" } else { "as BatchNormalization" },
        resnet::text::grouped(bytes.len() as u64)
    );
    Ok(ExitCode::SUCCESS)
}
