use anyhow::{Result, bail};
use resnet::plot::curves::{CurvesFigure, Panel, Series};
use resnet::train::History;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Run directories (each holding the metrics.jsonl that resnet train writes).
    #[arg(required = true)]
    runs: Vec<PathBuf>,
    /// The figure: FILE.svg or FILE.png (the other format is written beside it too).
    #[arg(long, default_value = "curves.svg")]
    out: PathBuf,
    /// The panel's title.
    #[arg(long, default_value = "")]
    title: String,
    /// Replace --out if it exists.
    #[arg(long)]
    overwrite: bool,
}

/// Training curves of any runs, drawn as the paper's figures: training error dashed,
/// test error bold, error (%) against iterations (1e4).
pub fn run(a: Args) -> Result<ExitCode> {
    match a.out.extension().and_then(|e| e.to_str()) {
        Some("svg" | "png") => {}
        _ => bail!("--out {}: must end in .svg or .png", a.out.display()),
    }
    for f in [a.out.with_extension("svg"), a.out.with_extension("png")] {
        super::check_new_output(&f, a.overwrite)?;
    }
    let mut series = Vec::new();
    for dir in &a.runs {
        let metrics = dir.join(resnet::train::run::METRICS);
        if !dir.is_dir() {
            bail!("{}: not a run directory", dir.display());
        }
        if !metrics.is_file() {
            bail!(
                "{}: no metrics.jsonl here; resnet plot draws the directories that resnet train writes",
                dir.display()
            );
        }
        let history = History::read(&metrics)?;
        if history.records.is_empty() {
            bail!("{}: no records yet (the run has not logged a step)", metrics.display());
        }
        let label = dir.file_name().map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into_owned());
        series.push(Series {
            label,
            train: history.steps().map(|s| (s.iter, 100.0 * (1.0 - s.acc))).collect(),
            test: history.epochs().map(|e| (e.iter, 100.0 * (1.0 - e.test_acc))).collect(),
        });
    }
    let figure =
        CurvesFigure { panels: vec![Panel { title: a.title.clone(), series }], test_label: "test error".into() };
    let base = a.out.with_extension("");
    let [svg, png] = resnet::plot::save(&figure, &base)?;
    println!("{}\n{}", svg.display(), png.display());
    Ok(ExitCode::SUCCESS)
}
