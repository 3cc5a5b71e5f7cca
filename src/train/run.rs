//! The training loop: epochs of background-loaded batches, progress bar, metrics
//! lines, evaluation after each epoch, checkpoints, Ctrl-C and NaN handling, resume.

use super::checkpoint::{self, Checkpoint, TrainState};
use super::data::Datasets;
use super::record::{EpochRecord, History, JsonlSink, Record, Sink, StepRecord};
use super::schedule::Warmup;
use super::tensorboard::EventWriter;
use super::{Across, Ranks, StepScratch, TrainConfig, step_across};
use crate::data::{BatchLoader, Spare, loader::epoch_order};
use crate::dist::{Background, Collective, Part, SyncBn};
use crate::engine::sgd::SgdConfig;
use crate::eval::{evaluate, evaluate_across};
use crate::model::{ModelConfig, ResNet};
use anyhow::{Context, Result, bail};
use std::io::IsTerminal;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a run ended, with its records (all of them, those before a resume too).
pub enum Outcome {
    /// `best_acc`: the best accuracy of an epoch, kept as best.safetensors.
    Finished { test_acc: f64, best_acc: Option<f64>, history: History },
    /// Cancelled: a checkpoint was written at `iteration`.
    Interrupted { iteration: usize, history: History },
}

/// How to run a training: from scratch or resumed, what to show, when to stop early and
/// who else receives the records.
pub struct RunOptions<'a> {
    /// Continue from the run directory's checkpoint.
    pub resume: bool,
    /// A progress bar on a terminal, log lines elsewhere; nothing when false.
    pub progress: bool,
    /// Checked after every step: when set, the run checkpoints and returns `Interrupted`.
    pub cancel: &'a AtomicBool,
    /// Receive every record as it is written to metrics.jsonl.
    pub sinks: Vec<&'a mut dyn Sink>,
    /// The job's processes (`dist::Single` for one). With several, each trains on its
    /// part of every batch; rank 0 alone prints and writes files.
    pub comm: Arc<dyn Collective>,
    /// Where the steps run when not on the CPU engine: made from the model once it is
    /// built, resumed or initialized (`--device cuda`).
    pub device: Option<DeviceFactory<'a>>,
}

/// Makes a [`DeviceSteps`] holding a copy of the model.
pub type DeviceFactory<'a> = &'a dyn Fn(&mut ResNet) -> Result<Box<dyn DeviceSteps>>;

/// Training steps on another device (a GPU), which keeps its own copy of the network
/// between steps and scores the test set with it. The CPU model is what checkpoints and
/// weight files read: the loop has the device store its state into it before each of them.
pub trait DeviceSteps {
    /// One SGD step on a batch, in `accumulate` micro-batches: (mean loss, correct
    /// predictions), as [`super::step_with`].
    fn step(
        &mut self,
        hw: (usize, usize),
        batch: (&[f32], &[u32]),
        accumulate: usize,
        cfg: SgdConfig,
        transfer: super::Transfer,
    ) -> Result<(f32, usize)>;
    /// Copies parameters, momentum and running statistics into `model`.
    fn store_into(&mut self, model: &mut ResNet) -> Result<()>;
    /// Scores `data` with the device's network in inference mode, as [`evaluate`].
    fn evaluate(
        &mut self,
        data: Arc<dyn crate::data::Samples>,
        batch: usize,
        workers: usize,
        progress: &crate::progress::Bar,
    ) -> Result<crate::eval::EvalResult>;
}

pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The checkpoint before the last, kept in case the last is damaged.
pub const PREVIOUS_CHECKPOINT: &str = "checkpoint.prev.safetensors";
pub const FINAL_WEIGHTS: &str = "model.safetensors";
/// The weights of the epoch with the best test (or validation) accuracy.
pub const BEST_WEIGHTS: &str = "best.safetensors";
pub const METRICS: &str = "metrics.jsonl";
/// The epoch lines of the metrics as CSV, for spreadsheets.
pub const METRICS_CSV: &str = "metrics.csv";
/// The folder of TensorBoard's event files (`--tensorboard`).
pub const TENSORBOARD: &str = "tensorboard";

pub fn iterations_per_epoch(train_len: usize, batch: usize) -> usize {
    train_len.div_ceil(batch)
}

/// Trains `cfg` on `data` in the run directory `cfg.out` (claimed by the caller).
pub fn train(cfg: &TrainConfig, data: Datasets, opts: RunOptions) -> Result<Outcome> {
    let RunOptions { resume, progress, cancel, sinks: mut extra_sinks, comm: job, device } = opts;
    // With buckets, the collective operations run on a thread of their own, so that the
    // all-reduce overlaps the backward pass.
    let job = match job.size() > 1 && cfg.bucket_mb > 0 {
        true => Arc::new(Background::new(job)) as Arc<dyn Collective>,
        false => job,
    };
    let comm = &*job;
    if cfg.ranks != comm.size() {
        bail!("the run is set for {} processes; this job has {}", cfg.ranks, comm.size());
    }
    // Rank 0 speaks and writes for the job; the others only compute.
    let root = comm.rank() == 0;
    let progress = progress && root;
    let out = &cfg.out;
    let model_cfg = ModelConfig::from_name(&cfg.model, Some(cfg.shortcut), cfg.classes())?;
    let mut model = ResNet::new(model_cfg, cfg.seed);
    model.set_conv_algo(cfg.conv);
    model.set_precision(cfg.precision);
    model.set_bn_group(cfg.bn_batch);
    if cfg.sync_bn && comm.size() > 1 {
        model.set_sync_bn(Some(Arc::new(SyncBn(job.clone()))));
    }
    let ckpt_path = out.join(CHECKPOINT);
    let metrics_path = out.join(METRICS);
    let mut state = TrainState { iteration: 0, warmup_done: false, warmup_window: Vec::new(), best_acc: None };
    // The checkpoint a NaN loss would fall back to: none until this run writes or resumes one.
    let mut last_good = None;
    if resume {
        let saved = Checkpoint::latest(out)?;
        saved.restore(&mut model)?;
        state = saved.state;
        if root && metrics_path.exists() {
            let mut kept = History::read(&metrics_path)?;
            kept.truncate(state.iteration);
            crate::files::write_atomic(&metrics_path, kept.to_jsonl().as_bytes())?;
        }
        if root {
            eprintln!("resumed from {} at iteration {}", saved.file.path.display(), state.iteration);
        }
        last_good = Some(state.iteration);
    } else {
        if root {
            let _ = std::fs::remove_file(&metrics_path);
        }
        if let Some(path) = &cfg.init_weights {
            start_from(&mut model, path, root)?;
        }
    }
    // Every rank starts from rank 0's weights, momentum and statistics.
    if comm.size() > 1 {
        broadcast_state(&mut model, comm);
    }
    let mut device = device.map(|make| make(&mut model)).transpose()?;
    let config_path = out.join("config.json");
    let config_json =
        serde_json::to_string_pretty(cfg).with_context(|| format!("{}: cannot record", config_path.display()))?;
    if root {
        crate::files::write_atomic(&config_path, config_json.as_bytes())?;
    }
    let mut metrics = root.then(|| JsonlSink::append(&metrics_path)).transpose()?;
    let mut tensorboard = (root && cfg.tensorboard).then(|| EventWriter::create(&out.join(TENSORBOARD))).transpose()?;
    let mut emit = |r: Record| -> Result<()> {
        let Some(metrics) = &mut metrics else { return Ok(()) };
        metrics.record(&r)?;
        if let Some(tb) = &mut tensorboard {
            tb.record(&r)?;
        }
        extra_sinks.iter_mut().try_for_each(|s| s.record(&r))
    };
    let per_epoch = iterations_per_epoch(data.train.len(), cfg.batch);
    // On a terminal, a progress bar; elsewhere (nohup, Slurm, a pipe) a plain line every
    // --log-every iterations.
    let (bar_shown, lines_shown) = match progress {
        false => (false, false),
        true if std::io::stderr().is_terminal() => (true, false),
        true => (false, true),
    };
    let (run_start, first_iteration) = (Instant::now(), state.iteration);
    let mut warmup = Warmup::new(cfg.schedule.warmup_lr.is_some(), state.warmup_done, &state.warmup_window);
    let mut scratch = StepScratch::default();
    let transfer = cfg.transfer();
    let mut skipped = std::collections::HashSet::new();
    let mut test_acc = None;
    // The batches' memory, handed back after each step and filled again by the loader.
    let spare = Spare::default();
    while state.iteration < cfg.iterations {
        let epoch = state.iteration / per_epoch;
        let start = state.iteration % per_epoch;
        let order = Arc::new(epoch_order(data.train.len(), cfg.seed, epoch as u64, true));
        let loader = BatchLoader::share_of(
            data.train.clone(),
            order,
            cfg.batch,
            start,
            Some((cfg.seed, epoch as u64)),
            cfg.loader_threads,
            spare.clone(),
            Part { rank: comm.rank(), ranks: comm.size(), micro: cfg.accumulate },
        );
        let steps_this_epoch = (per_epoch - start).min(cfg.iterations - state.iteration);
        let bar = crate::progress::epoch_bar(bar_shown, steps_this_epoch, epoch);
        let (mut loss_sum, mut correct, mut seen) = (0f64, 0usize, 0usize);
        let (mut win_loss, mut win_correct, mut win_seen) = (0f64, 0usize, 0usize);
        let (mut win_comm, mut win_steps) = (0f64, 0usize);
        let epoch_start = Instant::now();
        let mut window_start = Instant::now();
        for batch in loader.take(steps_this_epoch) {
            let lr = cfg.schedule.lr_at(state.iteration, !warmup.done);
            let sgd = SgdConfig { lr, momentum: cfg.momentum, weight_decay: cfg.weight_decay };
            for e in &batch.errors {
                if skipped.insert(e.clone()) {
                    bar.suspend(|| eprintln!("warning: skipped unreadable image: {e}"));
                }
            }
            let done = match &mut device {
                Some(d) => {
                    let images = (&batch.images[..], &batch.labels[..]);
                    let (loss, correct) = d.step(batch.hw, images, cfg.accumulate, sgd, transfer)?;
                    let (images, stop) = (batch.labels.len(), cancel.load(Ordering::SeqCst));
                    Across { loss, correct, images, stop, comm_s: 0.0 }
                }
                None => step_across(
                    &mut model,
                    batch.hw,
                    &batch.images,
                    &batch.labels,
                    cfg.accumulate,
                    sgd,
                    transfer,
                    &mut scratch,
                    Ranks { comm, bucket_mb: cfg.bucket_mb },
                    cancel.load(Ordering::SeqCst),
                ),
            };
            spare.put(batch);
            let (loss, ok, n) = (done.loss, done.correct, done.images);
            if n == 0 {
                // Every image of the batch was unreadable: the step is skipped, the position kept.
                state.iteration += 1;
                bar.inc(1);
                continue;
            }
            if !loss.is_finite() {
                bar.abandon();
                let fallback = match last_good {
                    Some(i) => format!("the last good checkpoint is {} (iteration {i})", ckpt_path.display()),
                    None => "no checkpoint was written yet".to_string(),
                };
                bail!("loss became {loss} at iteration {} (lr {lr}); stopping: {fallback}", state.iteration + 1);
            }
            state.iteration += 1;
            warmup.record(1.0 - ok as f32 / n as f32, cfg.schedule.warmup_until_error);
            state.warmup_done = warmup.done;
            state.warmup_window.clear();
            state.warmup_window.extend(warmup.window());
            loss_sum += loss as f64 * n as f64;
            correct += ok;
            seen += n;
            win_loss += loss as f64 * n as f64;
            win_correct += ok;
            win_seen += n;
            win_comm += done.comm_s;
            win_steps += 1;
            let ips = seen as f64 / epoch_start.elapsed().as_secs_f64();
            let per_step = run_start.elapsed().as_secs_f64() / (state.iteration - first_iteration) as f64;
            let run_eta = crate::text::duration(per_step * (cfg.iterations - state.iteration) as f64);
            bar.set_message(format!(
                "epoch loss {:.4} acc {:.2}% lr {lr} {:.0} img/s | run eta {run_eta}",
                loss_sum / seen as f64,
                100.0 * correct as f64 / seen as f64,
                ips
            ));
            bar.inc(1);
            if lines_shown && cfg.log_every > 0 && state.iteration.is_multiple_of(cfg.log_every) {
                let waited = match comm.size() {
                    1 => String::new(),
                    _ => format!(" ({:.1} ms/step in the all-reduce)", 1e3 * win_comm / win_steps.max(1) as f64),
                };
                eprintln!(
                    "iter {}/{} epoch {}: loss {:.4} acc {:.2}% lr {lr} {:.0} img/s{waited} | run eta {run_eta}",
                    state.iteration,
                    cfg.iterations,
                    epoch + 1,
                    win_loss / win_seen as f64,
                    100.0 * win_correct as f64 / win_seen as f64,
                    win_seen as f64 / window_start.elapsed().as_secs_f64(),
                );
            }
            if cfg.log_every > 0 && state.iteration.is_multiple_of(cfg.log_every) {
                emit(Record::Step(StepRecord {
                    iter: state.iteration,
                    epoch: epoch + 1,
                    loss: win_loss / win_seen as f64,
                    acc: win_correct as f64 / win_seen as f64,
                    lr: json_f32(lr),
                    images_per_s: win_seen as f64 / window_start.elapsed().as_secs_f64(),
                    comm_s: (comm.size() > 1).then(|| win_comm / win_steps.max(1) as f64),
                }))?;
                (win_loss, win_correct, win_seen) = (0.0, 0, 0);
                (win_comm, win_steps) = (0.0, 0);
                window_start = Instant::now();
            }
            if cfg.checkpoint_every > 0 && state.iteration.is_multiple_of(cfg.checkpoint_every) {
                if root {
                    store(&mut device, &mut model)?;
                    checkpoint::save(out, &mut model, cfg, &state, &data.norm, &data.class_names)?;
                }
                last_good = Some(state.iteration);
            }
            // Any rank's Ctrl-C stops every rank after the same step (`done.stop`).
            if done.stop {
                bar.abandon();
                if !root {
                    return Ok(Outcome::Interrupted { iteration: state.iteration, history: History::default() });
                }
                store(&mut device, &mut model)?;
                checkpoint::save(out, &mut model, cfg, &state, &data.norm, &data.class_names)?;
                let history = History::read(&metrics_path)?;
                return Ok(Outcome::Interrupted { iteration: state.iteration, history });
            }
        }
        bar.finish_and_clear();
        let train_ips = seen as f64 / epoch_start.elapsed().as_secs_f64();
        let pass = crate::progress::bar("test", data.test.len(), bar_shown);
        store(&mut device, &mut model)?;
        // Every rank scores part of the test set, with rank 0's BatchNorm statistics.
        if comm.size() > 1 {
            broadcast_state(&mut model, comm);
        }
        let test = match &mut device {
            Some(d) => d.evaluate(data.test.clone(), cfg.batch, cfg.loader_threads, &pass)?,
            None => evaluate_across(&mut model, data.test.clone(), cfg.batch, cfg.loader_threads, &pass, comm),
        };
        if !root {
            continue;
        }
        for e in &test.skipped {
            if skipped.insert(e.clone()) {
                eprintln!("warning: skipped unreadable image: {e}");
            }
        }
        test_acc = Some(test.accuracy());
        if state.best_acc.is_none_or(|best| test.accuracy() > best) {
            state.best_acc = Some(test.accuracy());
            let metadata = checkpoint::weights_metadata(&model, &data.norm, &data.class_names, cfg.eval_view());
            crate::weights::save(&out.join(BEST_WEIGHTS), &model.named(), metadata)?;
        }
        let lr = cfg.schedule.lr_at(state.iteration.saturating_sub(1), !warmup.done);
        emit(Record::Epoch(EpochRecord {
            iter: state.iteration,
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc: correct as f64 / seen.max(1) as f64,
            test_loss: test.loss,
            test_acc: test.accuracy(),
            test_acc5: test.accuracy5(),
            lr: json_f32(lr),
            images_per_s: train_ips,
            time_s: epoch_start.elapsed().as_secs_f64(),
            skipped_images: skipped.len(),
            rss_mb: proc_status_mb("VmRSS"),
            peak_rss_mb: proc_status_mb("VmHWM"),
        }))?;
        let history = History::read(&metrics_path)?;
        crate::files::write_atomic(&out.join(METRICS_CSV), history.epochs_csv().as_bytes())?;
        eprintln!(
            "epoch {} iter {}/{}: train loss {:.4} acc {:.2}% | test loss {:.4} acc {:.2}% | lr {} | {:.0} img/s",
            epoch + 1,
            state.iteration,
            cfg.iterations,
            loss_sum / seen.max(1) as f64,
            100.0 * correct as f64 / seen.max(1) as f64,
            test.loss,
            100.0 * test.accuracy(),
            lr,
            train_ips
        );
        checkpoint::save(out, &mut model, cfg, &state, &data.norm, &data.class_names)?;
        last_good = Some(state.iteration);
    }
    if !root {
        return Ok(Outcome::Finished { test_acc: f64::NAN, best_acc: None, history: History::default() });
    }
    if !skipped.is_empty() {
        eprintln!("skipped {} unreadable images in all (each named above)", skipped.len());
    }
    // A resumed run that had already finished trains nothing: its accuracy is measured again.
    let test_acc = match test_acc {
        Some(acc) => acc,
        None => {
            let pass = crate::progress::bar("test", data.test.len(), bar_shown);
            evaluate(&mut model, data.test.clone(), cfg.batch, cfg.loader_threads, &pass).accuracy()
        }
    };
    let metadata = checkpoint::weights_metadata(&model, &data.norm, &data.class_names, cfg.eval_view());
    crate::weights::save(&out.join(FINAL_WEIGHTS), &model.named(), metadata)?;
    let history = History::read(&metrics_path)?;
    Ok(Outcome::Finished { test_acc, best_acc: state.best_acc, history })
}

/// The CPU model brought up to date with the device's, before it is read.
fn store(device: &mut Option<Box<dyn DeviceSteps>>, model: &mut ResNet) -> Result<()> {
    device.as_mut().map_or(Ok(()), |d| d.store_into(model))
}

/// Initializes `model` from the weights at `path` (fine-tuning); a classifier of another
/// class count starts anew, which is said.
fn start_from(model: &mut ResNet, path: &Path, speak: bool) -> Result<()> {
    let file = crate::weights::StateDict::read(path)?;
    let (_, classifier) = model.config.naming();
    let classes = model.classes();
    match crate::weights::load_for_fine_tuning(&file, &mut model.named(), classifier)? {
        _ if !speak => {}
        Some(theirs) => eprintln!(
            "starting from {}: every layer but the classifier, which has {theirs} classes there and {classes} here and starts anew",
            path.display()
        ),
        None => eprintln!("starting from {}", path.display()),
    }
    Ok(())
}

/// Rank 0's parameters, momentum buffers and BatchNorm statistics to every rank.
fn broadcast_state(model: &mut ResNet, comm: &dyn Collective) {
    for t in model.named().iter_mut() {
        let mut values = t.to_host();
        comm.broadcast(&mut values, 0);
        t.set_from_host(values);
    }
    model.for_each_param(&mut |p| {
        let mut momentum = p.momentum.to_host();
        comm.broadcast(&mut momentum, 0);
        p.momentum.copy_from_host(&momentum);
    });
}

/// An f32 as the JSON number it prints as (0.1, not 0.10000000149011612).
fn json_f32(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}

/// A memory figure of this process from /proc/self/status (Linux), in MiB.
fn proc_status_mb(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}
