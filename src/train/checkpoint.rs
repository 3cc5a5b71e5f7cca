//! Checkpoints: one safetensors file holding the model's state dict, the SGD momentum
//! buffers (`optimizer.<name>.momentum_buffer`) and, in its metadata, the run config,
//! the position in the schedule and the normalization. Randomness is derived from
//! (seed, epoch, position), so the position is the whole RNG state. Written atomically,
//! with the previous checkpoint kept until the next is complete.

use super::TrainConfig;
use super::run::{CHECKPOINT, PREVIOUS_CHECKPOINT};
use crate::data::Norm;
use crate::files::TempFile;
use crate::model::ResNet;
use crate::nn::Slot;
use crate::weights::{self, Entry, StateDict};
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::path::Path;

pub const OPTIMIZER_PREFIX: &str = "optimizer.";

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainState {
    /// SGD iterations completed.
    pub iteration: usize,
    pub warmup_done: bool,
    /// The warm-up's window of recent training errors (empty once it is done). Checkpoints
    /// written before it was saved have none: such a resume restarts the window.
    #[serde(default)]
    pub warmup_window: Vec<f32>,
    /// The best test (or validation) accuracy of an epoch so far, kept as best.safetensors.
    #[serde(default)]
    pub best_acc: Option<f64>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Meta {
    config: TrainConfig,
    state: TrainState,
    norm: Norm,
}

fn momentum_key(name: &str) -> String {
    format!("{OPTIMIZER_PREFIX}{name}.momentum_buffer")
}

/// Metadata every weights file we write carries, so `eval` and `predict` can rebuild the
/// model, its input normalization and its class names.
pub fn weights_metadata(
    model: &ResNet,
    norm: &Norm,
    class_names: &[String],
    view: weights::View,
) -> HashMap<String, String> {
    let c = &model.config;
    HashMap::from([
        ("format".to_string(), "resnet-rs".to_string()),
        ("model".to_string(), c.name()),
        ("shortcut".to_string(), format!("{:?}", c.shortcut)),
        ("classes".to_string(), c.classes.to_string()),
        ("class_names".to_string(), serde_json::to_string(class_names).expect("names serialize")),
        ("norm".to_string(), serde_json::to_string(norm).expect("norm serializes")),
        ("view".to_string(), serde_json::to_string(&view).expect("view serializes")),
    ])
}

/// Writes a checkpoint of the run to `dir` and keeps the one before it: the new file is
/// written beside the last, read back and checked whole, and only then does the last
/// become the previous one (`checkpoint.prev.safetensors`) and the new one the last. At
/// every moment at least one complete checkpoint is on disk.
pub fn save(
    dir: &Path,
    model: &mut ResNet,
    config: &TrainConfig,
    state: &TrainState,
    norm: &Norm,
    class_names: &[String],
) -> Result<()> {
    let mut metadata = weights_metadata(model, norm, class_names, config.eval_view());
    let meta = Meta { config: config.clone(), state: state.clone(), norm: norm.clone() };
    metadata.insert("checkpoint".into(), serde_json::to_string(&meta)?);
    let named = model.named();
    let mut tensors = weights::state_dict(&named);
    for t in &named {
        if let Slot::Param(p) = &t.slot {
            let values = weights::to_torch(t.layout, &t.shape, &p.momentum.to_host());
            tensors.push(Entry::f32(momentum_key(&t.name), t.shape.clone(), values));
        }
    }
    let bytes = weights::serialize(&tensors, metadata)?;
    let last = dir.join(CHECKPOINT);
    let mut tmp = TempFile::beside(&last)?;
    tmp.write_all(&bytes)?;
    Checkpoint::read(tmp.path())
        .with_context(|| format!("{}: the checkpoint just written reads back wrong", last.display()))?;
    if last.exists() {
        let previous = dir.join(PREVIOUS_CHECKPOINT);
        std::fs::rename(&last, &previous)
            .with_context(|| format!("{}: cannot keep it as {}", last.display(), previous.display()))?;
    }
    tmp.persist(&last)
}

/// A checkpoint read whole: its tensors, run config, position and normalization.
pub struct Checkpoint {
    pub file: StateDict,
    pub config: TrainConfig,
    pub state: TrainState,
    pub norm: Norm,
}

impl Checkpoint {
    pub fn read(path: &Path) -> Result<Checkpoint> {
        Self::from_file(StateDict::read(path)?)
    }

    /// The run state in a weights file's metadata.
    pub fn from_file(file: StateDict) -> Result<Checkpoint> {
        let raw = file
            .metadata
            .get("checkpoint")
            .ok_or_else(|| anyhow!("{}: not a resnet-rs checkpoint (no run state)", file.path.display()))?;
        let meta: Meta = serde_json::from_str(raw)
            .with_context(|| format!("{}: corrupt checkpoint metadata", file.path.display()))?;
        meta.norm.validate().with_context(|| format!("{}: checkpoint metadata", file.path.display()))?;
        Ok(Checkpoint { config: meta.config, state: meta.state, norm: meta.norm, file })
    }

    /// The checkpoint to resume the run in `dir` from: the last one, or the one before it
    /// when the last is missing or unreadable (saying so).
    pub fn latest(dir: &Path) -> Result<Checkpoint> {
        let (last, previous) = (dir.join(CHECKPOINT), dir.join(PREVIOUS_CHECKPOINT));
        let error = match Self::read(&last) {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        if !previous.exists() {
            if !last.exists() {
                bail!("{}: no checkpoint to resume from (is it the --out of a run?)", dir.display());
            }
            return Err(error);
        }
        let c =
            Self::read(&previous).with_context(|| format!("{:#}; the previous checkpoint is unreadable too", error))?;
        eprintln!(
            "warning: {:#}\nresuming from the previous checkpoint, {} (iteration {})",
            error,
            previous.display(),
            c.state.iteration
        );
        Ok(c)
    }

    /// Loads model weights, running statistics and momentum buffers.
    pub fn restore(&self, model: &mut ResNet) -> Result<()> {
        let mut named = model.named();
        weights::load_into(&self.file, &mut named, Some(OPTIMIZER_PREFIX))?;
        for t in named.iter_mut() {
            if let Slot::Param(p) = &mut t.slot {
                let v = self.file.get(&momentum_key(&t.name), &t.shape)?;
                p.momentum.copy_from_host(&weights::from_torch(t.layout, &t.shape, v.to_vec()));
            }
        }
        Ok(())
    }
}
