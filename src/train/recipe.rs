//! The paper's training recipes as values: CIFAR-10 (§4.2) and ImageNet (§3.4). `resnet
//! train` starts from them and changes what its flags say; the experiments use them as
//! they are, shortened with [`Recipe::set_length`].

use super::TrainConfig;
use super::schedule::Schedule;
use crate::data::DatasetKind;
use crate::data::imagenet::{TrainCrop, TrainTransform};
use crate::model::{Family, ModelConfig, Shortcut};
use anyhow::Result;
use std::path::PathBuf;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Recipe {
    /// Batch 128 (64 per BatchNorm, as on the paper's two GPUs), lr 0.1 ÷10 at 32k and
    /// 48k of 64k iterations, warm-up at 0.01 for 110 layers and deeper.
    Cifar,
    /// Batch 256 (32 per BatchNorm, as on eight GPUs), lr 0.1 ÷10 at epochs 30 and 60 of
    /// 90, scale augmentation 256–480 to 224 with lighting noise; evaluated at 256 → 224.
    ImageNet,
}

/// How long a run trains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Length {
    Iterations(usize),
    Epochs(usize),
}

impl Recipe {
    pub fn batch(self) -> usize {
        match self {
            Recipe::Cifar => 128,
            Recipe::ImageNet => 256,
        }
    }

    /// Images per BatchNorm group (the per-GPU batch of the paper's runs).
    pub fn bn_batch(self) -> usize {
        match self {
            Recipe::Cifar => 64,
            Recipe::ImageNet => 32,
        }
    }

    /// The full run.
    pub fn full_length(self) -> Length {
        match self {
            Recipe::Cifar => Length::Iterations(64000),
            Recipe::ImageNet => Length::Epochs(90),
        }
    }

    /// Whether `arch` starts with the warm-up (§4.2: ResNet-110 and deeper on CIFAR).
    pub fn warmup(self, arch: &ModelConfig) -> bool {
        self == Recipe::Cifar && arch.family == Family::Cifar && arch.depth >= 110
    }

    /// The iterations at which lr is divided by 10 in a run of `total` iterations: the
    /// paper's own points in the full run, the same fractions of a shorter one (never
    /// before the first step, so a one-step run trains at the rate it was given).
    pub fn milestones(self, total: usize, per_epoch: usize) -> Vec<usize> {
        let at = |num: u128, den: u128| ((total as u128 * num / den) as usize).max(1);
        match self {
            Recipe::Cifar if Length::Iterations(total) == self.full_length() => vec![32000, 48000],
            Recipe::Cifar => vec![at(1, 2), at(3, 4)],
            Recipe::ImageNet if total == 90 * per_epoch => vec![30 * per_epoch, 60 * per_epoch],
            Recipe::ImageNet => vec![at(1, 3), at(2, 3)],
        }
    }

    /// Sets the run length and its lr drops, now that an epoch's length is known.
    pub fn set_length(self, cfg: &mut TrainConfig, length: Length, per_epoch: usize) -> Result<()> {
        cfg.iterations = match length {
            Length::Iterations(n) => n,
            Length::Epochs(e) => e
                .checked_mul(per_epoch)
                .ok_or_else(|| anyhow::anyhow!("{e} epochs of {per_epoch} iterations is too many"))?,
        };
        cfg.schedule.milestones = self.milestones(cfg.iterations, per_epoch);
        Ok(())
    }

    /// The recipe's configuration for `model` on `data`, written to `out`; the length is
    /// set by [`Recipe::set_length`] once the data is loaded. `classes`: of an ImageNet-style
    /// folder (CIFAR-10 for the CIFAR recipe).
    pub fn config(
        self,
        model: &str,
        shortcut: Option<Shortcut>,
        data: PathBuf,
        out: PathBuf,
        classes: usize,
        seed: u64,
    ) -> Result<TrainConfig> {
        let arch = ModelConfig::from_name(model, shortcut, classes)?;
        let images = (self == Recipe::ImageNet).then_some(super::ImageTraining {
            labels: None,
            classes,
            transform: TrainTransform { crop: TrainCrop::Scale { min: 256, max: 480 }, size: 224, lighting: 0.1 },
            eval_resize: 256,
            mean_images: 5000,
        });
        Ok(TrainConfig {
            model: model.to_string(),
            shortcut: arch.shortcut,
            dataset: DatasetKind::Cifar10,
            data,
            test_data: None,
            images,
            out,
            batch: self.batch(),
            accumulate: 1,
            ranks: 1,
            sync_bn: false,
            bucket_mb: super::config::DEFAULT_BUCKET_MB,
            bn_batch: Some(self.bn_batch()),
            momentum: 0.9,
            weight_decay: 1e-4,
            iterations: 0,
            schedule: Schedule {
                lr: 0.1,
                milestones: Vec::new(),
                warmup_lr: self.warmup(&arch).then_some(0.01),
                warmup_until_error: 0.8,
            },
            norm: "pixel-mean".into(),
            val_split: 0,
            seed,
            conv: crate::engine::ConvAlgo::Auto,
            precision: crate::engine::Precision::F32,
            loader_threads: 2,
            log_every: 50,
            checkpoint_every: 0,
            init_weights: None,
            freeze_backbone: false,
            lr_classifier: None,
            tensorboard: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_papers_points_in_full_runs_and_the_same_fractions_in_shorter_ones() {
        assert_eq!(Recipe::Cifar.milestones(64000, 391), vec![32000, 48000]);
        assert_eq!(Recipe::Cifar.milestones(1000, 391), vec![500, 750]);
        assert_eq!(Recipe::Cifar.milestones(1, 391), vec![1, 1]);
        assert_eq!(Recipe::ImageNet.milestones(90 * 5005, 5005), vec![30 * 5005, 60 * 5005]);
        assert_eq!(Recipe::ImageNet.milestones(900, 10), vec![300, 600]);
    }

    #[test]
    fn warm_up_for_cifar_nets_of_110_layers_and_more() {
        let arch = |name| ModelConfig::from_name(name, None, 10).unwrap();
        assert!(!Recipe::Cifar.warmup(&arch("resnet56")));
        assert!(Recipe::Cifar.warmup(&arch("resnet110")));
        assert!(!Recipe::ImageNet.warmup(&arch("resnet110")));
    }
}
