//! A training run's configuration, saved as `config.json` and inside checkpoints.

use super::schedule::Schedule;
use crate::data::DatasetKind;
use crate::data::imagenet::TrainTransform;
use crate::model::Shortcut;
use std::path::PathBuf;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub model: String,
    pub shortcut: Shortcut,
    /// The CIFAR variant, when `images` is None.
    pub dataset: DatasetKind,
    pub data: PathBuf,
    /// Evaluation batches when `data` is a single training file.
    pub test_data: Option<PathBuf>,
    /// Training on an image folder (`DIR/train/<class>/*`, `DIR/val/<class>/*`).
    #[serde(default)]
    pub images: Option<ImageTraining>,
    pub out: PathBuf,
    /// Images per SGD step.
    pub batch: usize,
    /// Micro-batches each process computes a step in (BatchNorm statistics per micro-batch).
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Processes the run trains on (MPI ranks), each on its `accumulate` micro-batches of
    /// every step ([`crate::dist::Part`]). Recorded so that a resume on another number of
    /// ranks cuts the batch as before.
    #[serde(default = "one")]
    pub ranks: usize,
    /// Synchronized BatchNorm: training statistics over the whole batch of every rank.
    #[serde(default)]
    pub sync_bn: bool,
    /// Across ranks: megabytes of gradients per all-reduce, started during the backward
    /// pass (0: one all-reduce after it). The sums are the same either way.
    #[serde(default = "default_bucket_mb")]
    pub bucket_mb: usize,
    /// Images per BatchNorm group in training, as per GPU in data-parallel training; None:
    /// the whole (micro-)batch, as runs saved before this setting existed.
    #[serde(default)]
    pub bn_batch: Option<usize>,
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
    /// How 3×3 stride-1 convolutions are computed.
    #[serde(default)]
    pub conv: crate::engine::ConvAlgo,
    /// The convolutions' number format (f32, or bf16 with f32 sums and master weights).
    #[serde(default)]
    pub precision: crate::engine::Precision,
    pub loader_threads: usize,
    pub log_every: usize,
    /// Also checkpoint every this many iterations (0: only at epoch ends).
    pub checkpoint_every: usize,
    /// Weights the run starts from (fine-tuning) instead of a random initialization.
    #[serde(default)]
    pub init_weights: Option<PathBuf>,
    /// Train the classifier alone (the backbone's BatchNorm in inference mode).
    #[serde(default)]
    pub freeze_backbone: bool,
    /// The classifier's learning rate, following the schedule as the rest's does (None: the same).
    #[serde(default)]
    pub lr_classifier: Option<f32>,
    /// Also write TensorBoard event files to `out/tensorboard`.
    #[serde(default)]
    pub tensorboard: bool,
}

fn one() -> usize {
    1
}

/// PyTorch DDP's bucket size.
pub const DEFAULT_BUCKET_MB: usize = 25;

fn default_bucket_mb() -> usize {
    DEFAULT_BUCKET_MB
}

/// Image-folder specifics: classes, augmentation and the evaluation view.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageTraining {
    /// Class list mapping folder names to indices (None: sorted folder names).
    pub labels: Option<PathBuf>,
    pub classes: usize,
    pub transform: TrainTransform,
    /// Evaluation: shorter side to `eval_resize`, centre crop of the training size.
    pub eval_resize: usize,
    /// Training images averaged for the per-pixel mean.
    pub mean_images: usize,
}

impl TrainConfig {
    /// How a step treats the classifier apart from the backbone.
    pub fn transfer(&self) -> super::Transfer {
        let scale = self.lr_classifier.map_or(1.0, |lr| lr / self.schedule.lr);
        super::Transfer { freeze_backbone: self.freeze_backbone, classifier_lr_scale: scale }
    }

    /// How the trained model sees an image when evaluated: (shorter side, centre crop).
    /// CIFAR images are 32×32 as they are; a folder model at its training crop.
    pub fn eval_view(&self) -> crate::weights::View {
        match &self.images {
            Some(i) => crate::weights::View { resize: i.eval_resize, crop: i.transform.size },
            None => crate::weights::View { resize: crate::data::cifar::SIDE, crop: crate::data::cifar::SIDE },
        }
    }

    /// Classes of the model's classifier.
    pub fn classes(&self) -> usize {
        match &self.images {
            Some(i) => i.classes,
            None => self.dataset.classes(),
        }
    }
}
