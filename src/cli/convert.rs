use anyhow::{Result, bail};
use resnet::weights::{self, Entry, StateDict, TorchDType};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// A PyTorch checkpoint (.pth, .pt, .th; zip or legacy format) or a safetensors file.
    input: PathBuf,
    /// The safetensors file to write: every tensor, same names and shapes, floats as f32
    /// and integers (BatchNorm's num_batches_tracked) as i64.
    output: PathBuf,
    /// Replace OUTPUT if it exists.
    #[arg(long)]
    overwrite: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.output.extension().and_then(|e| e.to_str()) != Some("safetensors") {
        bail!("{}: the output must be a .safetensors file", a.output.display());
    }
    super::check_new_output(&a.output, a.overwrite)?;
    let file = StateDict::read(&a.input)?;
    let integer = |d: TorchDType| !matches!(d, TorchDType::F32 | TorchDType::F64 | TorchDType::F16 | TorchDType::BF16);
    let entries: Vec<Entry> = file
        .tensors
        .iter()
        .map(|(name, t)| Entry {
            name: name.clone(),
            shape: t.shape.clone(),
            values: t.values.clone(),
            integer: integer(t.dtype),
        })
        .collect();
    let mut metadata = file.metadata.clone();
    metadata.insert("converted_from".into(), a.input.display().to_string());
    resnet::files::write_atomic(&a.output, &weights::serialize(&entries, metadata)?)?;
    let values: usize = entries.iter().map(|e| e.values.len()).sum();
    println!(
        "wrote {} tensors ({} values) to {}",
        entries.len(),
        resnet::text::grouped(values as u64),
        a.output.display()
    );
    Ok(ExitCode::SUCCESS)
}
