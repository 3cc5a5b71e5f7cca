//! Trains an experiment's runs one after the other, each an ordinary run directory
//! `OUT/<run>` made by the same trainer as `resnet train`. A finished run is skipped and
//! an interrupted one resumed, so running the command again continues where it stopped.
//! After training, what the experiment needs beyond the run's own metrics (10-crop
//! errors, layer responses) is measured once and kept beside the run.

use super::{Experiment, RunSpec};
use crate::data::imagenet::{EvalViews, FolderSamples, FolderTransform};
use crate::data::{DatasetKind, Samples, cifar, folder};
use crate::eval::responses::{LayerResponse, layer_responses};
use crate::model::{ModelConfig, ResNet, Shortcut};
use crate::train::checkpoint::Checkpoint;
use crate::train::recipe::{Length, Recipe};
use crate::train::run::{FINAL_WEIGHTS, METRICS, iterations_per_epoch};
use crate::train::run_dir::{Claim, RunDir};
use crate::train::{History, Outcome, Record, RunOptions, Sink, TrainConfig};
use crate::weights::StateDict;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

pub struct Options<'a> {
    /// CIFAR-10 batches (CIFAR experiments) or an image folder with train/ and val/.
    pub data: PathBuf,
    pub out: PathBuf,
    /// Each run's length (None: the paper's full schedule); lr drops at the same fractions.
    pub length: Option<Length>,
    /// Each run is trained with seeds 0..seeds.
    pub seeds: u64,
    /// Only these runs (empty: all of the experiment's).
    pub runs: Vec<String>,
    pub progress: bool,
    pub cancel: &'a AtomicBool,
}

/// One run's curves, errors in percent: (iteration, training error of the window before
/// it) and (iteration, test error after the epoch ending there).
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Curves {
    pub train: Vec<(usize, f64)>,
    pub test: Vec<(usize, f64)>,
}

/// What a finished run gave, errors in percent.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RunResult {
    pub run: String,
    pub seed: u64,
    pub model: String,
    pub shortcut: Shortcut,
    pub dir: PathBuf,
    pub iterations: usize,
    pub epochs: f64,
    /// Over the last epoch's training batches.
    pub train_error: f64,
    /// The final network's error: on the CIFAR test set, or 10-crop on the validation images.
    pub test_error: f64,
    pub test_error5: Option<f64>,
    /// How `test_error` was measured.
    pub protocol: String,
    /// Training time, summed over the epochs.
    pub train_s: f64,
    pub curves: Curves,
    pub responses: Option<Vec<LayerResponse>>,
}

pub enum Finished {
    All(Vec<RunResult>),
    /// Cancelled: the run being trained checkpointed; running again resumes it.
    Interrupted,
}

/// The run directory of `spec` trained with `seed`.
pub fn run_dir(out: &Path, spec: &RunSpec, seed: u64) -> PathBuf {
    match seed {
        0 => out.join(spec.name),
        s => out.join(format!("{}-seed{s}", spec.name)),
    }
}

/// Trains (or skips, or resumes) every run of `exp`, then measures what it needs.
pub fn run(exp: &Experiment, opts: &Options) -> Result<Finished> {
    let specs = exp.selected_runs(&opts.runs)?;
    let (classes, train_images) = check_data(exp.recipe, &opts.data)?;
    let per_epoch = iterations_per_epoch(train_images, exp.recipe.batch());
    std::fs::create_dir_all(&opts.out).with_context(|| format!("{}: cannot create", opts.out.display()))?;
    let jobs: Vec<(RunSpec, u64)> =
        specs.iter().flat_map(|s| (0..opts.seeds.max(1)).map(move |seed| (*s, seed))).collect();
    // The cost of each job in mult-adds per image times iterations, for the ETA; the
    // iterations of an epoch are known once the first run's data is loaded.
    let per_image: Vec<f64> = jobs.iter().map(|(s, _)| mult_adds(exp.recipe, s, classes)).collect::<Result<_>>()?;
    let mut eta = Eta { per_image, done: vec![false; jobs.len()], per_epoch, started: Instant::now(), work_done: 0.0 };
    let mut results = Vec::new();
    for (k, (spec, seed)) in jobs.iter().enumerate() {
        let dir = run_dir(&opts.out, spec, *seed);
        let label = format!("{} run {}/{}: {}{}", exp.name, k + 1, jobs.len(), spec.name, seed_label(*seed));
        match train_one(exp.recipe, spec, *seed, classes, &dir, opts, &label, &mut eta, k)? {
            Some(cfg) => {
                eta.done[k] = true;
                results.push(measure(exp, spec, *seed, &cfg, eta.per_epoch, opts.progress)?);
            }
            None => return Ok(Finished::Interrupted),
        }
    }
    Ok(Finished::All(results))
}

fn seed_label(seed: u64) -> String {
    if seed == 0 { String::new() } else { format!(" (seed {seed})") }
}

/// The classes and training images of the experiment's data, after checking it is the
/// kind the recipe needs.
fn check_data(recipe: Recipe, data: &Path) -> Result<(usize, usize)> {
    match recipe {
        Recipe::Cifar if cifar::is_present(data, DatasetKind::Cifar10) => {
            Ok((10, cifar::load(data, DatasetKind::Cifar10, true)?.len()))
        }
        Recipe::Cifar => bail!(
            "{}: no CIFAR-10 batches (data_batch_1.bin ... test_batch.bin); the CIFAR experiments train on them (resnet download cifar10)",
            data.display()
        ),
        Recipe::ImageNet => {
            let train = folder::split_dir(data, "train")?;
            if cifar::is_image_folder(data) != Some(true) {
                bail!("{}: not an image folder (DIR/train/<class>/*, DIR/val/<class>/*)", data.display());
            }
            let train = folder::ImageFolder::scan(&train, None)?;
            Ok((train.folders.len(), train.len()))
        }
    }
}

fn mult_adds(recipe: Recipe, spec: &RunSpec, classes: usize) -> Result<f64> {
    let per_image = ModelConfig::from_name(spec.model, spec.shortcut, classes)?.spec().mult_adds() as f64;
    Ok(per_image * recipe.batch() as f64)
}

/// Where the experiment stands, for its ETA: finished runs, and the rate of this
/// invocation's training in mult-adds per second.
struct Eta {
    per_image: Vec<f64>,
    done: Vec<bool>,
    per_epoch: usize,
    started: Instant,
    work_done: f64,
}

/// Receives the run's records and prints the experiment's progress after each epoch.
struct ProgressLine<'a> {
    eta: &'a mut Eta,
    job: usize,
    iterations: usize,
    first_iteration: usize,
    label: &'a str,
}

impl Sink for ProgressLine<'_> {
    fn record(&mut self, r: &Record) -> Result<()> {
        let Record::Epoch(e) = r else { return Ok(()) };
        let eta = &mut *self.eta;
        let cost = eta.per_image[self.job];
        let now_done = eta.work_done + cost * (e.iter - self.first_iteration) as f64;
        let rate = now_done / eta.started.elapsed().as_secs_f64().max(1e-9);
        let left: f64 = (eta.per_image.iter().zip(&eta.done).enumerate())
            .filter(|(j, (_, done))| !**done && *j != self.job)
            .map(|(_, (c, _))| c * self.iterations as f64)
            .sum::<f64>()
            + cost * (self.iterations - e.iter) as f64;
        eprintln!(
            "{}: epoch {} done, iteration {}/{}, test error {:.2}% | experiment eta {}",
            self.label,
            e.epoch,
            e.iter,
            self.iterations,
            100.0 * (1.0 - e.test_acc),
            crate::text::duration(left / rate.max(1e-9))
        );
        Ok(())
    }
}

/// Trains one run to its end; returns its configuration, or None when cancelled.
#[allow(clippy::too_many_arguments)]
fn train_one(
    recipe: Recipe,
    spec: &RunSpec,
    seed: u64,
    classes: usize,
    dir: &Path,
    opts: &Options,
    label: &str,
    eta: &mut Eta,
    job: usize,
) -> Result<Option<TrainConfig>> {
    if let Some(cfg) = finished(dir)? {
        check_length(&cfg, opts.length, eta.per_epoch, recipe, dir)?;
        eprintln!("{label}: finished before, skipped ({})", dir.display());
        return Ok(Some(cfg));
    }
    let resume =
        dir.join(crate::train::run::CHECKPOINT).exists() || dir.join(crate::train::run::PREVIOUS_CHECKPOINT).exists();
    let claim = RunDir::claim(dir, if resume { Claim::Resume } else { Claim::Fresh })?;
    let (mut cfg, norm, position) = if resume {
        let saved = Checkpoint::latest(dir)?;
        let mut cfg = saved.config;
        (cfg.out, cfg.data) = (dir.to_path_buf(), opts.data.clone());
        (cfg, Some(saved.norm), saved.state.iteration)
    } else {
        let cfg = recipe.config(spec.model, spec.shortcut, opts.data.clone(), dir.to_path_buf(), classes, seed)?;
        (cfg, None, 0)
    };
    let data = crate::train::data::load(&cfg, norm)?;
    if resume {
        check_length(&cfg, opts.length, eta.per_epoch, recipe, dir)?;
        eprintln!("{label}: resuming at iteration {position} of {}", cfg.iterations);
    } else {
        recipe.set_length(&mut cfg, opts.length.unwrap_or(recipe.full_length()), eta.per_epoch)?;
        eprintln!("{label}: training {} for {} iterations -> {}", cfg.model, cfg.iterations, dir.display());
    }
    let per_job = eta.per_image[job];
    let iterations = cfg.iterations;
    let mut line = ProgressLine { eta, job, iterations, first_iteration: position, label };
    let run_opts = RunOptions {
        resume,
        progress: opts.progress,
        cancel: opts.cancel,
        sinks: vec![&mut line as &mut dyn Sink],
        comm: std::sync::Arc::new(crate::dist::Single),
        device: None,
    };
    let outcome = crate::train::train(&cfg, data, run_opts)?;
    drop(claim);
    eta.work_done += per_job * (iterations - position) as f64;
    Ok(match outcome {
        Outcome::Finished { .. } => Some(cfg),
        Outcome::Interrupted { iteration, .. } => {
            eprintln!("{label}: interrupted at iteration {iteration}; run the same command again to resume");
            None
        }
    })
}

/// The configuration of the finished run in `dir`, if it holds one: its final weights
/// and an epoch record at its last iteration.
fn finished(dir: &Path) -> Result<Option<TrainConfig>> {
    if !dir.join(FINAL_WEIGHTS).exists() || !dir.join(METRICS).exists() {
        return Ok(None);
    }
    let cfg = read_config(dir)?;
    let history = History::read(&dir.join(METRICS))?;
    Ok(history.epochs().any(|e| e.iter == cfg.iterations).then_some(cfg))
}

fn read_config(dir: &Path) -> Result<TrainConfig> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: not a run configuration", path.display()))
}

/// A run kept from an earlier invocation must have the length asked for now: a table
/// mixing scales would mislead.
fn check_length(cfg: &TrainConfig, length: Option<Length>, per_epoch: usize, recipe: Recipe, dir: &Path) -> Result<()> {
    let wanted = match length.unwrap_or(recipe.full_length()) {
        Length::Iterations(n) => Some(n),
        Length::Epochs(e) if per_epoch > 0 => Some(e * per_epoch),
        Length::Epochs(_) => None,
    };
    if let Some(n) = wanted.filter(|&n| n != cfg.iterations) {
        bail!(
            "{}: this run was started for {} iterations, not {n}; use the same --epochs/--iterations as before, or another --out",
            dir.display(),
            cfg.iterations
        );
    }
    Ok(())
}

/// The results of a finished run, measuring what its metrics do not hold (kept in the
/// run directory, so a rerun does not measure again).
fn measure(
    exp: &Experiment,
    spec: &RunSpec,
    seed: u64,
    cfg: &TrainConfig,
    per_epoch: usize,
    progress: bool,
) -> Result<RunResult> {
    let dir = &cfg.out;
    let history = History::read(&dir.join(METRICS))?;
    let last = history.epochs().last().with_context(|| format!("{}: no epoch in the metrics", dir.display()))?.clone();
    let curves = Curves {
        train: history.steps().map(|s| (s.iter, 100.0 * (1.0 - s.acc))).collect(),
        test: history.epochs().map(|e| (e.iter, 100.0 * (1.0 - e.test_acc))).collect(),
    };
    let (test_error, test_error5, protocol) = match exp.recipe {
        Recipe::Cifar => (100.0 * (1.0 - last.test_acc), None, "CIFAR-10 test set, 32x32".to_string()),
        Recipe::ImageNet => {
            let (top1, top5) = cached(&dir.join("eval-10crop.json"), || ten_crop(cfg, progress))?;
            (top1, Some(top5), "10-crop (shorter side 256, 224x224 crops), validation images".to_string())
        }
    };
    let responses = match exp.has_responses() {
        true => Some(cached(&dir.join("responses.json"), || responses(cfg, progress))?),
        false => None,
    };
    Ok(RunResult {
        run: spec.name.to_string(),
        seed,
        model: cfg.model.clone(),
        shortcut: cfg.shortcut,
        dir: dir.clone(),
        iterations: cfg.iterations,
        epochs: cfg.iterations as f64 / per_epoch.max(1) as f64,
        train_error: 100.0 * (1.0 - last.train_acc),
        test_error,
        test_error5,
        protocol,
        train_s: history.epochs().map(|e| e.time_s).sum(),
        curves,
        responses,
    })
}

/// The value kept in `path`, else `compute`'s, kept there.
fn cached<T: serde::Serialize + serde::de::DeserializeOwned>(
    path: &Path,
    compute: impl FnOnce() -> Result<T>,
) -> Result<T> {
    if let Ok(text) = std::fs::read_to_string(path)
        && let Ok(v) = serde_json::from_str(&text)
    {
        return Ok(v);
    }
    let value = compute()?;
    crate::files::write_atomic(path, serde_json::to_string_pretty(&value)?.as_bytes())?;
    Ok(value)
}

/// The run's final network (measured as the paper reports its networks, not the best
/// epoch's) and its data (with the normalization the weights record).
fn final_model(cfg: &TrainConfig) -> Result<(ResNet, crate::train::data::Datasets)> {
    let path = cfg.out.join(FINAL_WEIGHTS);
    let file = StateDict::read(&path)?;
    let norm = crate::weights::metadata_norm(&file)?
        .with_context(|| format!("{}: no normalization recorded", path.display()))?;
    let mut net = ResNet::new(ModelConfig::from_name(&cfg.model, Some(cfg.shortcut), cfg.classes())?, 0);
    crate::weights::load_into(&file, &mut net.named(), None)?;
    let data = crate::train::data::load(cfg, Some(norm))?;
    Ok((net, data))
}

/// Top-1 and top-5 error (%) of the final network, 10-crop, as the paper's tables.
fn ten_crop(cfg: &TrainConfig, progress: bool) -> Result<(f64, f64)> {
    let (mut net, data) = final_model(cfg)?;
    let img = cfg.images.as_ref().context("an image-folder run")?;
    let folder = data.test_folder.context("an image-folder run")?;
    let views = EvalViews::TenCrop { resize: img.eval_resize, crop: img.transform.size };
    let samples: Arc<dyn Samples> =
        Arc::new(FolderSamples { folder, transform: FolderTransform::Eval(views), norm: data.norm });
    let bar = crate::progress::bar("10-crop", samples.len(), progress);
    let r = crate::eval::evaluate(&mut net, samples, cfg.batch, cfg.loader_threads, &bar);
    Ok((100.0 * (1.0 - r.accuracy()), 100.0 * (1.0 - r.accuracy5())))
}

/// The final network's layer responses over the test set.
fn responses(cfg: &TrainConfig, progress: bool) -> Result<Vec<LayerResponse>> {
    let (mut net, data) = final_model(cfg)?;
    let bar = crate::progress::bar("responses", data.test.len(), progress);
    Ok(layer_responses(&mut net, data.test, 500, cfg.loader_threads, &bar))
}
