use super::common;
use anyhow::{Result, bail};
use resnet::model::Shortcut;
use resnet::weights::{Entry, serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Model (default: the one the weights record).
    #[arg(long)]
    model: Option<String>,
    /// Weights: a file, a checkpoint, or published weights by name (resnet weights list).
    #[arg(long)]
    weights: PathBuf,
    /// FILE.safetensors (tensor `embeddings` [images, features], the file names in the
    /// metadata key `files`) or FILE.npy (float32 [images, features]; the names, one per
    /// line, in FILE.npy.txt).
    #[arg(long)]
    out: PathBuf,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Shorter side before the centre crop (default: the weights' view).
    #[arg(long, value_parser = super::parse_side)]
    resize: Option<usize>,
    /// Side of the centre crop (default: the weights' view).
    #[arg(long, value_parser = super::parse_side)]
    crop: Option<usize>,
    /// pixel-mean, imagenet or cifar (default: what the weights record).
    #[arg(long, value_parser = super::parse_norm)]
    norm: Option<String>,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Images per network call.
    #[arg(long, value_parser = super::parse_batch, default_value_t = 16)]
    batch: usize,
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

/// The output formats, by extension.
enum Format {
    Safetensors,
    Npy,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let format = match a.out.extension().and_then(|e| e.to_str()) {
        Some("safetensors") => Format::Safetensors,
        Some("npy") => Format::Npy,
        _ => bail!("--out {}: must end in .safetensors or .npy", a.out.display()),
    };
    super::check_new_output(&a.out, a.overwrite)?;
    if matches!(format, Format::Npy) {
        super::check_new_output(&sidecar(&a.out), a.overwrite)?;
    }
    let images = super::predict::expand_folders(&a.images)?;
    let (mut model, _, norm, view) =
        common::for_inference(a.model.as_deref(), a.shortcut, &a.weights, a.norm.as_deref(), a.resize, a.crop)?;
    model.set_precision(a.precision);
    if !a.cuda {
        super::warn_if_emulated(a.precision);
    }
    let width = model.config.features();
    let threads = rayon::current_num_threads().clamp(1, 4);
    let mut files = Vec::new();
    let mut values = Vec::new();
    let results = super::predict::on_device(a.cuda, &mut model, images.clone(), view, norm, (a.batch, threads))?;
    for (path, r) in images.iter().zip(results) {
        match r {
            Ok(p) => {
                files.push(path.display().to_string());
                values.extend(p.features);
            }
            Err(e) => eprintln!("warning: skipped {e:#}"),
        }
    }
    if files.is_empty() {
        bail!("no image could be read");
    }
    let n = files.len();
    match format {
        Format::Safetensors => {
            let metadata = HashMap::from([("files".to_string(), serde_json::to_string(&files)?)]);
            let entries = [Entry::f32("embeddings".into(), vec![n, width], values)];
            resnet::files::write_atomic(&a.out, &serialize(&entries, metadata)?)?;
        }
        Format::Npy => {
            resnet::files::write_atomic(&a.out, &npy(n, width, &values))?;
            let names = sidecar(&a.out);
            resnet::files::write_atomic(&names, (files.join("\n") + "\n").as_bytes())?;
        }
    }
    println!("{n} images x {width} features -> {}", a.out.display());
    Ok(if n < images.len() { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

/// `FILE.npy.txt`: the image names of an .npy output.
fn sidecar(out: &Path) -> PathBuf {
    let mut name = out.as_os_str().to_owned();
    name.push(".txt");
    PathBuf::from(name)
}

/// A float32 C-order array of `rows` x `cols` as NumPy's .npy (format version 1.0).
fn npy(rows: usize, cols: usize, values: &[f32]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {cols}), }}");
    // Magic (6) + version (2) + length (2) + header + newline, padded to 64 bytes.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((header.len() as u16).to_le_bytes());
    out.extend(header.as_bytes());
    out.extend(values.iter().flat_map(|v| v.to_le_bytes()));
    out
}
