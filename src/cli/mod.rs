//! The `resnet` command line.

mod bench;
mod common;
mod convert;
mod download;
mod embed;
mod eval;
mod experiment;
mod export;
mod info;
mod plot;
mod predict;
mod responses;
mod train;
mod weights;

use anyhow::Result;
use clap::error::ErrorKind;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Parser)]
#[command(
    name = "resnet",
    version = version_line(),
    about = "Deep residual networks (He et al. 2015): build, train, evaluate, predict, benchmark"
)]
struct Cli {
    /// Worker threads for the compute engine (default: all cores).
    #[arg(long, global = true, value_parser = parse_threads)]
    threads: Option<usize>,
    /// Where networks run: cpu, or cuda (an NVIDIA GPU: train, eval, predict, embed and bench so far;
    /// needs a build with `--features cuda`).
    #[arg(long, global = true, value_enum, default_value_t = Device::Cpu)]
    device: Device,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Device {
    Cpu,
    Cuda,
}

/// Why `--device cuda` cannot run the command: this build has no CUDA support, the
/// machine no GPU, or (with both) networks do not run on the GPU yet.
fn cuda_refusal() -> String {
    #[cfg(feature = "cuda")]
    return resnet::engine::cuda::device_line();
    #[cfg(not(feature = "cuda"))]
    "--device cuda: this build has no CUDA support; build it with `cargo build --release --features cuda`".into()
}

// Built once per process, so the size of the training variant's arguments does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Print a model's layer table, parameter count and mult-adds.
    Info(info::Args),
    /// Train a model with the paper's recipe.
    Train(train::Args),
    /// Evaluate weights or a checkpoint on a dataset (CIFAR, or image folders with the
    /// paper's centre, 10-crop and multi-scale protocols).
    Eval(eval::Args),
    /// Classify image files: top classes with probabilities.
    Predict(predict::Args),
    /// The pooled features (embeddings) of images, as safetensors or .npy.
    Embed(embed::Args),
    /// Export a network to ONNX (NCHW input, its preprocessing in the metadata).
    Export(export::Args),
    /// Convert a PyTorch checkpoint (.pth) to safetensors.
    Convert(convert::Args),
    /// Measure training and inference throughput.
    Bench(bench::Args),
    /// Download a dataset (cifar10 or cifar100).
    Download(download::Args),
    /// Published weights by name: list them, fetch them into torch's cache.
    Weights(weights::Args),
    /// Reproduce a figure or table of the paper: train its runs, write its report and figures.
    Experiment(experiment::Args),
    /// Draw the training curves of run directories as the paper's figures (SVG and PNG).
    Plot(plot::Args),
    /// The std of each 3x3 layer's response (the paper's Fig. 7) for CIFAR weights.
    Responses(responses::Args),
}

/// The version, with the kernels' instruction set and the CPU's, and MPI where built in.
fn version_line() -> &'static str {
    static LINE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let mpi = if cfg!(feature = "mpi") { "; MPI" } else { "" };
    let cuda = if cfg!(feature = "cuda") { "; CUDA kernels" } else { "" };
    LINE.get_or_init(|| format!("{} ({}{mpi}{cuda})", env!("CARGO_PKG_VERSION"), resnet::bench::isa_line()))
}

pub fn run() -> Result<ExitCode> {
    // A RESNET_ISA the CPU cannot run, or that names nothing, is an error here rather than
    // the library's warning and fallback.
    // The same for RESNET_BF16 (after RESNET_ISA, which rules out the AVX-512 paths when it
    // forces a lower set).
    let forced = resnet::engine::isa::from_env().and_then(resnet::engine::isa::select).and_then(|()| {
        use resnet::engine::bf16;
        bf16::from_env().and_then(bf16::select)
    });
    match forced {
        Ok(()) => {}
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::from(2));
        }
    }
    let parsed = Cli::command().try_get_matches().and_then(|m| Cli::from_arg_matches(&m).map(|cli| (cli, m)));
    let (cli, matches) = match parsed {
        Ok(parsed) => parsed,
        // --help, --version, and `resnet` alone (which shows the help).
        Err(e) if !e.use_stderr() || e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => e.exit(),
        Err(e) => {
            eprintln!("{}", usage_error_line(&e.render().to_string()));
            return Ok(ExitCode::from(2));
        }
    };
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))] // set below for `--device cuda train`
    let mut command = cli.command;
    if cli.device == Device::Cuda {
        // `bench`, `eval`, `predict`, `embed` and `train` are what run on the GPU so far.
        #[cfg(feature = "cuda")]
        match command {
            Command::Bench(a) => return bench::run_cuda(a),
            Command::Eval(mut a) => {
                a.cuda = true;
                return eval::run(a);
            }
            Command::Predict(mut a) => {
                a.cuda = true;
                return predict::run(a);
            }
            Command::Embed(mut a) => {
                a.cuda = true;
                return embed::run(a);
            }
            Command::Train(ref mut a) if resnet::engine::cuda::gpu_missing().is_none() => a.cuda = true,
            _ => {
                eprintln!("error: {}", cuda_refusal());
                return Ok(ExitCode::from(2));
            }
        }
        #[cfg(not(feature = "cuda"))]
        {
            eprintln!("error: {}", cuda_refusal());
            return Ok(ExitCode::from(2));
        }
    }
    if let Some(t) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(t).build_global()?;
    }
    match command {
        Command::Info(a) => info::run(a),
        Command::Train(a) => {
            let command = Cli::command();
            let train = command.find_subcommand("train").expect("train is a subcommand");
            let given = matches.subcommand_matches("train").map(|m| given_flags(train, m)).unwrap_or_default();
            let comm = resnet::dist::init()?;
            if comm.size() == 1 && resnet::dist::launched_by_mpi() && !cfg!(feature = "mpi") {
                anyhow::bail!(
                    "started by an MPI launcher, but this build has no MPI support: build with `cargo build --release --features mpi`"
                );
            }
            // An error on one rank ends every rank: the others would wait for it forever.
            match train::run(a, &given, &comm) {
                Err(e) if comm.size() > 1 => {
                    eprintln!("error on rank {} of {}: {e:#}", comm.rank(), comm.size());
                    comm.abort(1)
                }
                done => done,
            }
        }
        Command::Eval(a) => eval::run(a),
        Command::Predict(a) => predict::run(a),
        Command::Embed(a) => embed::run(a),
        Command::Export(a) => export::run(a),
        Command::Convert(a) => convert::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Download(a) => download::run(a),
        Command::Weights(a) => weights::run(a),
        Command::Experiment(a) => experiment::run(a),
        Command::Plot(a) => plot::run(a),
        Command::Responses(a) => responses::run(a),
    }
}

/// Set on Ctrl-C (or SIGTERM): a training checkpoints and stops at its next step.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn on_ctrl_c() -> Result<()> {
    ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst))?;
    Ok(())
}

/// The arguments of `command` given on its command line (not left at their defaults), by id.
fn given_flags(command: &clap::Command, matches: &clap::ArgMatches) -> Vec<String> {
    let given = |id: &&clap::Id| matches.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine);
    command.get_arguments().map(clap::Arg::get_id).filter(given).map(|id| id.to_string()).collect()
}

/// clap's usage error as one line: its message and tips, without the usage block and
/// clap's own pointer to --help (a bad flag, like a bad file, gets one line naming what is
/// wrong).
fn usage_error_line(rendered: &str) -> String {
    let message: Vec<&str> = (rendered.lines().take_while(|l| !l.starts_with("Usage:")).map(str::trim))
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    format!("{} (see --help)", message.join("; "))
}

/// Refuses, before any work is done, an output file that would replace one the user has
/// (without `--overwrite`) or that cannot be written: a directory, or a missing folder.
fn check_new_output(path: &std::path::Path, overwrite: bool) -> Result<()> {
    if path.is_dir() {
        anyhow::bail!("{}: is a directory; name a file to write", path.display());
    }
    if path.exists() && !overwrite {
        anyhow::bail!("{}: already exists; pass --overwrite to replace it", path.display());
    }
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if !folder.is_dir() {
        anyhow::bail!("{}: cannot be written, there is no folder {}", path.display(), folder.display());
    }
    Ok(())
}

/// Help for every subcommand's model flag.
const MODEL_HELP: &str = "Model: resnet20/32/44/56/110/1202, plain20, ... (CIFAR, any 6n+2), or \
    resnet18/34/50/101/152, resnet50-v1, plain18/34 (ImageNet); `resnet info MODEL` lists its layers";
/// Help for every subcommand's --shortcut.
const SHORTCUT_HELP: &str = "Shortcut option: A (zero-pad), B (projection when dimensions grow), C (all \
    projections). Default: A for CIFAR nets, B for ImageNet nets";

/// Parses a dataset name.
fn parse_dataset(s: &str) -> Result<resnet::data::DatasetKind, String> {
    match s {
        "cifar10" => Ok(resnet::data::DatasetKind::Cifar10),
        "cifar100" => Ok(resnet::data::DatasetKind::Cifar100),
        _ => Err(format!("unknown dataset '{s}' (expected cifar10 or cifar100)")),
    }
}

/// An input normalization's name, checked when the command line is read (before any data is).
fn parse_norm(s: &str) -> Result<String, String> {
    match s {
        "pixel-mean" | "imagenet" | "cifar" => Ok(s.to_string()),
        _ => Err(format!("unknown normalization '{s}' (expected pixel-mean, imagenet or cifar)")),
    }
}

/// Classes shown per image: at least one.
fn parse_top(s: &str) -> Result<usize, String> {
    parse_bounded(s, 1, 1_000_000, "classes shown per image")
}

fn parse_shortcut(s: &str) -> Result<resnet::model::Shortcut, String> {
    s.parse().map_err(|e: anyhow::Error| e.to_string())
}

/// Warns where bf16 is asked for on a CPU that can only emulate it.
fn warn_if_emulated(precision: resnet::engine::Precision) {
    use resnet::engine::bf16::{Path, path};
    if precision == resnet::engine::Precision::Bf16 && path() == Path::Emulated {
        eprintln!(
            "warning: this CPU (with the kernels in use) has neither AMX nor AVX-512 BF16: bf16 products are \
             emulated in f32, several times slower than --precision f32"
        );
    }
}

fn parse_conv(s: &str) -> Result<resnet::engine::ConvAlgo, String> {
    use resnet::engine::ConvAlgo;
    match s {
        "auto" => Ok(ConvAlgo::Auto),
        "im2col" => Ok(ConvAlgo::Im2col),
        "winograd" => Ok(ConvAlgo::Winograd),
        "direct" => Ok(ConvAlgo::Direct),
        _ => Err(format!("unknown --conv '{s}' (expected auto, im2col, winograd or direct)")),
    }
}

/// A count within `min..=max`, or a message that names the limit and why it is there.
fn parse_bounded(s: &str, min: usize, max: usize, why: &str) -> Result<usize, String> {
    let n: usize = s.trim().parse().map_err(|_| format!("'{s}' is not a whole number"))?;
    if n < min {
        return Err(format!("must be at least {min}"));
    }
    if n > max {
        return Err(format!("must be at most {max} ({why})"));
    }
    Ok(n)
}

/// The largest image side accepted by --crop, --resize, --scale(s): 4096 (16.8 M pixels;
/// ImageNet networks are trained at 224 and tested at up to 640).
const MAX_SIDE: usize = 4096;

fn parse_side(s: &str) -> Result<usize, String> {
    parse_bounded(s, 1, MAX_SIDE, "the largest image side this tool works at")
}

fn parse_batch(s: &str) -> Result<usize, String> {
    parse_bounded(s, 1, 8192, "images per batch")
}

fn parse_threads(s: &str) -> Result<usize, String> {
    parse_bounded(s, 1, 1024, "threads in one process")
}

fn parse_loader_threads(s: &str) -> Result<usize, String> {
    parse_bounded(s, 1, 256, "threads decoding images")
}
