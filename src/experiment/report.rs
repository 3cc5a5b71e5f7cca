//! The experiment's report in `OUT/<experiment>/`: report.md (what ran and at what
//! scale, the table beside the paper's numbers, the paper's findings checked on these
//! runs, the figures), results.json (the same, machine-readable) and each figure as SVG
//! and PNG.

use super::runner::{Options, RunResult};
use super::{Experiment, Figure};
use crate::plot::curves::{CurvesFigure, Panel, Series};
use crate::plot::display_name;
use crate::plot::responses::ResponsesFigure;
use crate::train::recipe::{Length, Recipe};
use anyhow::{Context, Result};
use std::path::{Path, PathBuf};

/// best, mean and standard deviation (n-1; 0 for one value) of some values.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Spread {
    pub best: f64,
    pub mean: f64,
    pub std: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Spread {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
        Spread { best: v.iter().copied().fold(f64::INFINITY, f64::min), mean, std: var.sqrt() }
    }
}

/// One network over its seeds, errors in percent.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Row {
    pub run: String,
    pub seeds: usize,
    pub train_error: Spread,
    pub test_error: Spread,
    pub test_error5: Option<Spread>,
    pub paper_top1: Option<f64>,
    pub paper_top5: Option<f64>,
    /// The mean over layers of the per-layer response std (Fig. 7).
    pub mean_response: Option<f64>,
}

/// A claim of the paper, checked on these runs.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Finding {
    pub claim: String,
    pub holds: bool,
    pub detail: String,
}

#[derive(serde::Serialize)]
struct Results<'a> {
    experiment: &'a str,
    artifact: &'a str,
    data: &'a Path,
    note: Option<&'a str>,
    scale: String,
    table: Vec<Row>,
    findings: Vec<Finding>,
    figures: Vec<PathBuf>,
    runs: &'a [RunResult],
}

/// Writes the report; returns its directory.
pub fn write(exp: &Experiment, opts: &Options, results: &[RunResult], note: Option<&str>) -> Result<PathBuf> {
    let dir = opts.out.join(exp.name);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create", dir.display()))?;
    let rows = table(exp, results);
    let findings = findings(&rows);
    let mut figures = Vec::new();
    for fig in exp.figures {
        figures.extend(draw(fig, exp.recipe, results, &dir)?);
    }
    let scale = scale(exp.recipe, opts.length, results);
    let md = markdown(exp, opts, note, &scale, &rows, &findings, &figures);
    crate::files::write_atomic(&dir.join("report.md"), md.as_bytes())?;
    let json = Results {
        experiment: exp.name,
        artifact: exp.artifact,
        data: &opts.data,
        note,
        scale,
        table: rows,
        findings,
        figures: figures.iter().map(|f| dir.join(f)).collect(),
        runs: results,
    };
    crate::files::write_atomic(&dir.join("results.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    Ok(dir)
}

/// "1,955 of 64,000 iterations (5.0 of 163.7 epochs)" or "the paper's full schedule".
fn scale(recipe: Recipe, length: Option<Length>, results: &[RunResult]) -> String {
    let Some(r) = results.first() else { return String::new() };
    let per_epoch = r.iterations as f64 / r.epochs.max(1e-9);
    let full = match recipe.full_length() {
        Length::Iterations(n) => n as f64,
        Length::Epochs(e) => e as f64 * per_epoch,
    };
    let g = |x: f64| crate::text::grouped(x.round() as u64);
    match length {
        None => format!("the paper's full schedule: {} iterations ({:.1} epochs)", g(r.iterations as f64), r.epochs),
        Some(_) => format!(
            "{} of {} iterations ({:.1} of {:.1} epochs), learning-rate drops at the same fractions",
            g(r.iterations as f64),
            g(full),
            r.epochs,
            full / per_epoch
        ),
    }
}

fn table(exp: &Experiment, results: &[RunResult]) -> Vec<Row> {
    let mut rows = Vec::new();
    for spec in exp.runs {
        let runs: Vec<&RunResult> = results.iter().filter(|r| r.run == spec.name).collect();
        if runs.is_empty() {
            continue;
        }
        let spread = |f: &dyn Fn(&RunResult) -> f64| Spread::of(&runs.iter().map(|r| f(r)).collect::<Vec<_>>());
        let top5: Option<Vec<f64>> = runs.iter().map(|r| r.test_error5).collect();
        let responses: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.responses.as_ref())
            .map(|l| l.iter().map(|x| x.std).sum::<f64>() / l.len().max(1) as f64)
            .collect();
        rows.push(Row {
            run: spec.name.to_string(),
            seeds: runs.len(),
            train_error: spread(&|r| r.train_error),
            test_error: spread(&|r| r.test_error),
            test_error5: top5.map(|v| Spread::of(&v)),
            paper_top1: spec.paper.0,
            paper_top5: spec.paper.1,
            mean_response: (!responses.is_empty()).then(|| responses.iter().sum::<f64>() / responses.len() as f64),
        });
    }
    rows
}

/// (plain or ResNet, depth) of a run name such as "plain56" or "resnet34-A".
fn kind_depth(run: &str) -> Option<(bool, usize)> {
    let base = run.split('-').next()?;
    let residual = base.starts_with("resnet");
    let depth = base.trim_start_matches(|c: char| c.is_ascii_alphabetic()).parse().ok()?;
    Some((residual, depth))
}

/// The paper's claims that these runs can test: deeper plain nets train worse, deeper
/// ResNets better, a ResNet better than its plain twin; ResNets respond less than plain
/// nets, and deeper ResNets less than shallower ones.
fn findings(rows: &[Row]) -> Vec<Finding> {
    let mut out = Vec::new();
    let named: Vec<(&Row, bool, usize)> =
        rows.iter().filter_map(|r| kind_depth(&r.run).map(|(res, d)| (r, res, d))).collect();
    let pct = |x: f64| format!("{x:.2}%");
    for (a, ra, da) in &named {
        for (b, rb, db) in &named {
            let (ta, tb) = (a.train_error.mean, b.train_error.mean);
            let (na, nb) = (display_name(&a.run), display_name(&b.run));
            if !ra && !rb && da < db {
                out.push(Finding {
                    claim: format!("{nb} has higher training error than {na} (degradation)"),
                    holds: tb > ta,
                    detail: format!("{} vs {}", pct(tb), pct(ta)),
                });
            }
            if *ra && *rb && da < db && a.run.split('-').nth(1) == b.run.split('-').nth(1) {
                out.push(Finding {
                    claim: format!("{nb} has lower training error than {na}"),
                    holds: tb < ta,
                    detail: format!("{} vs {}", pct(tb), pct(ta)),
                });
            }
            if !ra && *rb && da == db {
                out.push(Finding {
                    claim: format!("{nb} has lower training error than {na}"),
                    holds: tb < ta,
                    detail: format!("{} vs {}", pct(tb), pct(ta)),
                });
                if let (Some(sa), Some(sb)) = (a.mean_response, b.mean_response) {
                    out.push(Finding {
                        claim: format!("{nb} responds less than {na}"),
                        holds: sb < sa,
                        detail: format!("mean layer std {sb:.4} vs {sa:.4}"),
                    });
                }
            }
            if *ra
                && *rb
                && da < db
                && let (Some(sa), Some(sb)) = (a.mean_response, b.mean_response)
            {
                out.push(Finding {
                    claim: format!("{nb} responds less than {na}"),
                    holds: sb < sa,
                    detail: format!("mean layer std {sb:.4} vs {sa:.4}"),
                });
            }
        }
    }
    out
}

/// Draws one of the experiment's figures; returns the file names written.
fn draw(fig: &Figure, recipe: Recipe, results: &[RunResult], dir: &Path) -> Result<Vec<PathBuf>> {
    // The first seed of each network is drawn, as the paper draws one run each.
    let first = |name: &str| results.iter().find(|r| r.run == name && r.seed == 0);
    let paths = match fig {
        Figure::Curves { file, panels } => {
            let panels = panels
                .iter()
                .map(|p| Panel {
                    title: p.title.to_string(),
                    series: p
                        .runs
                        .iter()
                        .filter_map(|&r| first(r))
                        .map(|r| Series {
                            label: r.run.clone(),
                            train: r.curves.train.clone(),
                            test: r.curves.test.clone(),
                        })
                        .collect(),
                })
                .filter(|p| !p.series.is_empty())
                .collect::<Vec<_>>();
            if panels.is_empty() {
                return Ok(Vec::new());
            }
            let test_label = if recipe == Recipe::Cifar { "test error" } else { "val error (centre crop)" };
            crate::plot::save(&CurvesFigure { panels, test_label: test_label.into() }, &dir.join(file))?
        }
        Figure::Responses { file } => {
            let networks: Vec<(String, Vec<f64>)> = results
                .iter()
                .filter(|r| r.seed == 0)
                .filter_map(|r| r.responses.as_ref().map(|l| (r.run.clone(), l.iter().map(|x| x.std).collect())))
                .collect();
            if networks.is_empty() {
                return Ok(Vec::new());
            }
            crate::plot::save(&ResponsesFigure { networks }, &dir.join(file))?
        }
    };
    Ok(paths.iter().filter_map(|p| p.file_name().map(PathBuf::from)).collect())
}

fn markdown(
    exp: &Experiment,
    opts: &Options,
    note: Option<&str>,
    scale: &str,
    rows: &[Row],
    findings: &[Finding],
    figures: &[PathBuf],
) -> String {
    let mut md = format!("# {}\n\n", exp.artifact);
    md += &format!("The paper finds: {}.\n\n## What ran\n\n", exp.finding);
    md += &format!("- Data: `{}`", opts.data.display());
    if let Some(n) = note {
        md += &format!(": {n}");
    }
    md += "\n";
    let recipe = match exp.recipe {
        Recipe::Cifar => {
            "the paper's CIFAR-10 recipe (§4.2): batch 128, lr 0.1 divided by 10 at 1/2 and 3/4 of the run, momentum 0.9, weight decay 1e-4, warm-up at lr 0.01 for 110 layers and more, per-pixel mean, 4-pixel pad and random crop and flip"
        }
        Recipe::ImageNet => {
            "the paper's ImageNet recipe (§3.4): batch 256, lr 0.1 divided by 10 at 1/3 and 2/3 of the run, momentum 0.9, weight decay 1e-4, scale augmentation 256-480 to 224 with flips and lighting noise; errors 10-crop on the validation images"
        }
    };
    md += &format!("- Recipe: {recipe}\n- Scale: {scale}\n");
    if let Some(r) = rows.first() {
        md += &format!("- Seeds per network: {}\n", r.seeds);
    }
    md += &format!("- Runs: `{}/<run>/` (each an ordinary `resnet train` run directory)\n\n", opts.out.display());
    md += &format!("## {}\n\n", exp.table.unwrap_or("Errors"));
    let seeds = rows.iter().any(|r| r.seeds > 1);
    let five = rows.iter().any(|r| r.test_error5.is_some());
    md += "| network | training error (%) | test error (%) |";
    if five {
        md += " top-5 (%) |";
    }
    md += " paper (%) |";
    if rows.iter().any(|r| r.mean_response.is_some()) {
        md += " mean layer response std |";
    }
    md += "\n|---|---|---|";
    md += if five { "---|" } else { "" };
    md += "---|";
    md += if rows.iter().any(|r| r.mean_response.is_some()) { "---|" } else { "" };
    md += "\n";
    let cell = |s: &Spread| {
        if seeds { format!("{:.2} ({:.2} ± {:.2})", s.best, s.mean, s.std) } else { format!("{:.2}", s.best) }
    };
    for r in rows {
        md += &format!("| {} | {} | {} |", display_name(&r.run), cell(&r.train_error), cell(&r.test_error));
        if five {
            md += &format!(" {} |", r.test_error5.as_ref().map_or("".into(), cell));
        }
        let paper = match (r.paper_top1, r.paper_top5) {
            (Some(a), Some(b)) => format!("{a:.2} / {b:.2}"),
            (Some(a), None) => format!("{a:.2}"),
            _ => "–".into(),
        };
        md += &format!(" {paper} |");
        if let Some(s) = r.mean_response {
            md += &format!(" {s:.4} |");
        }
        md += "\n";
    }
    if seeds {
        md += "\nWith several seeds: best (mean ± std), as Table 6 gives ResNet-110.\n";
    }
    md += "\nTraining error: over the last epoch's training batches. Test error: the final network.\n";
    if !findings.is_empty() {
        md += "\n## The paper's findings on these runs\n\n";
        for f in findings {
            md += &format!("- {} {}: {}\n", if f.holds { "✔" } else { "✘" }, f.claim, f.detail);
        }
    }
    let pngs: Vec<&PathBuf> = figures.iter().filter(|f| f.extension().is_some_and(|e| e == "png")).collect();
    if !pngs.is_empty() {
        md += "\n## Figures\n\n";
        for png in pngs {
            let svg = png.with_extension("svg");
            md += &format!("![{}]({})\n\n([SVG]({}))\n\n", png.display(), png.display(), svg.display());
        }
    }
    md
}
