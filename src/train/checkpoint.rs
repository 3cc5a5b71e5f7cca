//! Checkpoints: one safetensors file holding the model's state dict, the SGD momentum
//! buffers (`optimizer.<name>.momentum_buffer`) and, in its metadata, the run config,
//! the position in the schedule and the normalization. Randomness is derived from
//! (seed, epoch, position), so the position is the whole RNG state. Written atomically.

use super::TrainConfig;
use crate::data::Norm;
use crate::engine::DeviceVec;
use crate::model::ResNet;
use crate::nn::Slot;
use crate::weights::{self, Entry, StateDict};
use anyhow::{Context, Result, anyhow};
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
pub fn weights_metadata(model: &ResNet, norm: &Norm, class_names: &[String]) -> HashMap<String, String> {
    let c = &model.config;
    HashMap::from([
        ("format".to_string(), "resnet-rs".to_string()),
        ("model".to_string(), c.name()),
        ("shortcut".to_string(), format!("{:?}", c.shortcut)),
        ("classes".to_string(), c.classes.to_string()),
        ("class_names".to_string(), serde_json::to_string(class_names).expect("names serialize")),
        ("norm".to_string(), serde_json::to_string(norm).expect("norm serializes")),
    ])
}

pub fn save(
    path: &Path,
    model: &mut ResNet,
    config: &TrainConfig,
    state: &TrainState,
    norm: &Norm,
    class_names: &[String],
) -> Result<()> {
    let mut metadata = weights_metadata(model, norm, class_names);
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
    weights::write_atomic(path, &weights::serialize(&tensors, metadata)?)
}

/// Reads a checkpoint's run config, position and normalization.
pub fn read_meta(path: &Path) -> Result<(TrainConfig, TrainState, Norm)> {
    let file = StateDict::read(path)?;
    let raw = file
        .metadata
        .get("checkpoint")
        .ok_or_else(|| anyhow!("{}: not a resnet-rs checkpoint (no run state)", path.display()))?;
    let meta: Meta =
        serde_json::from_str(raw).with_context(|| format!("{}: corrupt checkpoint metadata", path.display()))?;
    Ok((meta.config, meta.state, meta.norm))
}

/// Loads model weights, running statistics and momentum buffers from a checkpoint.
pub fn restore(path: &Path, model: &mut ResNet) -> Result<()> {
    let file = StateDict::read(path)?;
    let mut named = model.named();
    weights::load_into(&file, &mut named, Some(OPTIMIZER_PREFIX))?;
    for t in named.iter_mut() {
        if let Slot::Param(p) = &mut t.slot {
            let v = file.get(&momentum_key(&t.name), &t.shape)?;
            p.momentum = DeviceVec::from_host(weights::from_torch(t.layout, &t.shape, v.to_vec()));
        }
    }
    Ok(())
}
