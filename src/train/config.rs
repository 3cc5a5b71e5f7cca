//! A training run's configuration, saved as `config.json` and inside checkpoints.

use super::schedule::Schedule;
use crate::data::DatasetKind;
use crate::model::Shortcut;
use std::path::PathBuf;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub model: String,
    pub shortcut: Shortcut,
    pub dataset: DatasetKind,
    pub data: PathBuf,
    /// Evaluation batches when `data` is a single training file.
    pub test_data: Option<PathBuf>,
    pub out: PathBuf,
    pub batch: usize,
    pub momentum: f32,
    pub weight_decay: f32,
    /// Total SGD iterations.
    pub iterations: usize,
    pub schedule: Schedule,
    /// `pixel-mean`, `imagenet` or `cifar`.
    pub norm: String,
    /// Training images held out for validation (evaluated instead of the test set).
    pub val_split: usize,
    pub seed: u64,
    pub loader_threads: usize,
    pub log_every: usize,
    /// Also checkpoint every this many iterations (0: only at epoch ends).
    pub checkpoint_every: usize,
}
