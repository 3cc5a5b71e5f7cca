use anyhow::{Result, bail};
use resnet::experiment::runner::{self, Finished, Options};
use resnet::experiment::{EXPERIMENTS, Experiment, report};
use resnet::train::recipe::{Length, Recipe};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// An experiment (fig1, fig4, fig6, fig7, table2, table3, table6), or `list`.
    name: String,
    /// CIFAR-10 batches (fig1, fig6, fig7, table6; default: the downloaded copy) or an
    /// image folder with train/ and val/ (fig4, table2, table3).
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where the runs go (OUT/<run>) and the report (OUT/<experiment>/); default
    /// experiments/cifar10 or experiments/imagenet, so experiments share their runs.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Train each run for N epochs instead of the paper's schedule (lr drops at the same fractions).
    #[arg(long, conflicts_with = "iterations")]
    epochs: Option<usize>,
    /// Train each run for N iterations instead of the paper's schedule.
    #[arg(long)]
    iterations: Option<usize>,
    /// Train each run with K seeds (0..K) and report the best and mean ± std.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Only these runs, e.g. --runs plain20,resnet20 (the others are left out of the report).
    #[arg(long, value_delimiter = ',')]
    runs: Vec<String>,
    /// A line for the report about the data or the machine (e.g. "lossy CIFAR-10 pixels").
    #[arg(long)]
    note: Option<String>,
    /// No progress bars (the per-epoch lines remain).
    #[arg(long)]
    quiet: bool,
}

pub fn run(a: Args) -> Result<ExitCode> {
    if a.name == "list" {
        list();
        return Ok(ExitCode::SUCCESS);
    }
    let exp = resnet::experiment::find(&a.name)?;
    if a.epochs == Some(0) || a.iterations == Some(0) || a.seeds == 0 {
        bail!("--epochs, --iterations and --seeds must be at least 1");
    }
    let data = match (&a.data, exp.recipe) {
        (Some(d), _) => d.clone(),
        (None, Recipe::Cifar) => resnet::data::download::default_data_dir(),
        (None, Recipe::ImageNet) => {
            bail!("{} trains on an image folder: pass --data DIR (DIR/train/<class>/*, DIR/val/<class>/*)", exp.name)
        }
    };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from("experiments").join(default_dir(exp)));
    let length = match (a.epochs, a.iterations) {
        (Some(e), _) => Some(Length::Epochs(e)),
        (None, Some(i)) => Some(Length::Iterations(i)),
        (None, None) => None,
    };
    super::on_ctrl_c()?;
    let started = std::time::Instant::now();
    let opts = Options {
        data,
        out,
        length,
        seeds: a.seeds,
        runs: a.runs.clone(),
        progress: !a.quiet,
        cancel: &super::INTERRUPTED,
    };
    match runner::run(exp, &opts)? {
        Finished::Interrupted => Ok(ExitCode::from(130)),
        Finished::All(results) => {
            let written = report::write(exp, &opts, &results, a.note.as_deref())?;
            println!(
                "{} finished in {}: {}",
                exp.name,
                resnet::text::duration(started.elapsed().as_secs_f64()),
                written.display()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn default_dir(exp: &Experiment) -> &'static str {
    match exp.recipe {
        Recipe::Cifar => "cifar10",
        Recipe::ImageNet => "imagenet",
    }
}

/// Every experiment with its runs and what its full schedule costs here, estimated from
/// a short timed training of ResNet-20 scaled by each network's mult-adds.
fn list() {
    let rate = resnet::bench::run("resnet20", None, 64, 3, 1, resnet::engine::ConvAlgo::Auto, Default::default())
        .map(|b| b.train_gflops)
        .unwrap_or(0.0);
    println!("{:<8} {:<9} {:>12}  reproduces", "name", "also", "full run here");
    for exp in EXPERIMENTS {
        let cost = full_cost_s(exp, rate);
        println!(
            "{:<8} {:<9} {:>12}  {}",
            exp.name,
            exp.aliases.join(","),
            cost.map_or("?".into(), long_duration),
            exp.artifact
        );
        let runs: Vec<&str> = exp.runs.iter().map(|r| r.name).collect();
        println!("{:<8} runs: {}", "", runs.join(", "));
    }
    println!(
        "\nFull-run times are estimates: this machine's ResNet-20 training rate ({rate:.0} GFLOP/s) applied to each network's\n\
         mult-adds over the paper's schedule (CIFAR: 64,000 iterations of 128 images; ImageNet: 90 epochs of 1.28M images).\n\
         Deeper and larger networks run at other rates; resnet bench --model NAME measures one."
    );
}

/// Days past two days, as such spans are read.
fn long_duration(secs: f64) -> String {
    match secs / 86400.0 {
        d if d >= 2.0 => format!("{} days", resnet::text::grouped(d.round() as u64)),
        _ => resnet::text::duration(secs),
    }
}

fn full_cost_s(exp: &Experiment, gflops: f64) -> Option<f64> {
    if gflops <= 0.0 {
        return None;
    }
    let images = match exp.recipe {
        Recipe::Cifar => 64000.0 * 128.0,
        Recipe::ImageNet => 90.0 * 1_281_167.0,
    };
    let classes = if exp.recipe == Recipe::Cifar { 10 } else { 1000 };
    exp.runs
        .iter()
        .map(|r| {
            let arch = resnet::model::ModelConfig::from_name(r.model, r.shortcut, classes).ok()?;
            // Training: forward, backward-data, backward-weights, 2 flops per mult-add.
            Some(6.0 * arch.spec().mult_adds() as f64 * images / (gflops * 1e9))
        })
        .sum()
}
