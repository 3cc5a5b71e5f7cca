//! The training and evaluation sets of a run: CIFAR binary batches or an image folder,
//! with the run's input normalization.

use super::TrainConfig;
use crate::data::folder::{ImageFolder, split_dir};
use crate::data::imagenet::{self, EvalViews, FolderSamples, FolderTransform};
use crate::data::{CifarSamples, ClassList, Norm, Samples, cifar, transform};
use anyhow::{Result, bail};
use std::path::Path;
use std::sync::Arc;

pub struct Datasets {
    pub train: Arc<dyn Samples>,
    pub test: Arc<dyn Samples>,
    pub norm: Arc<Norm>,
    /// Name of each class index, saved with the weights.
    pub class_names: Vec<String>,
    /// The evaluation images of an image-folder run, for other views than the centre crop.
    pub test_folder: Option<Arc<ImageFolder>>,
}

/// The class list of an image-folder run: from its labels file, else None (sorted folders).
pub fn class_list(labels: Option<&Path>) -> Result<Option<ClassList>> {
    labels.map(ClassList::from_file).transpose()
}

/// Loads the data of `cfg`; `saved_norm` (from a checkpoint) avoids recomputing the mean.
pub fn load(cfg: &TrainConfig, saved_norm: Option<Norm>) -> Result<Datasets> {
    match &cfg.images {
        Some(_) => load_folder(cfg, saved_norm),
        None => load_cifar(cfg, saved_norm),
    }
}

fn load_cifar(cfg: &TrainConfig, saved_norm: Option<Norm>) -> Result<Datasets> {
    let mut train = cifar::load(&cfg.data, cfg.dataset, true)?;
    let test = if cfg.val_split > 0 {
        train.split_off_last(cfg.val_split)?
    } else if let Some(t) = &cfg.test_data {
        cifar::load(t, cfg.dataset, false)?
    } else if cfg.data.is_file() {
        bail!(
            "{}: --data is a single batch file; pass --test-data FILE or --val-split N for evaluation",
            cfg.data.display()
        )
    } else {
        cifar::load(&cfg.data, cfg.dataset, false)?
    };
    let norm = Arc::new(match saved_norm {
        Some(n) => n,
        None => Norm::from_name(&cfg.norm, (cfg.norm == "pixel-mean").then(|| transform::pixel_mean(&train)))?,
    });
    let samples = |d| -> Arc<dyn Samples> { Arc::new(CifarSamples { data: Arc::new(d), norm: norm.clone() }) };
    let class_names = cfg.dataset.class_names();
    Ok(Datasets { train: samples(train), test: samples(test), norm, class_names, test_folder: None })
}

fn load_folder(cfg: &TrainConfig, saved_norm: Option<Norm>) -> Result<Datasets> {
    let img = cfg.images.as_ref().expect("an image-folder run");
    let classes = class_list(img.labels.as_deref())?;
    let train_dir = split_dir(&cfg.data, "train")?;
    let val_dir = split_dir(&cfg.data, "val")?;
    if train_dir == val_dir && cfg.val_split == 0 {
        bail!(
            "{}: no train/ and val/ folders; pass a directory holding both, or --val-split N to hold out training images",
            cfg.data.display()
        );
    }
    let mut train = ImageFolder::scan(&train_dir, classes.as_ref())?;
    if let Some(note) = train.ignored_note() {
        eprintln!("{note}");
    }
    let test = if cfg.val_split > 0 {
        if cfg.val_split >= train.len() {
            bail!("--val-split {} leaves no training images (only {})", cfg.val_split, train.len());
        }
        // A fixed, seeded choice of held-out images, spread over all classes.
        let mut order = crate::data::loader::epoch_order(train.len(), cfg.seed, u64::MAX, true);
        order.truncate(cfg.val_split);
        order.sort_unstable();
        let mut held = Vec::with_capacity(order.len());
        for &i in order.iter().rev() {
            held.push(train.samples.remove(i as usize));
        }
        held.reverse();
        ImageFolder { root: train.root.clone(), folders: train.folders.clone(), samples: held, ignored: Vec::new() }
    } else {
        let val = ImageFolder::scan(&val_dir, classes.as_ref())?;
        // Without a class list each split numbers its own folders; the training split's
        // numbering is the model's.
        if classes.is_some() { val } else { val.relabel_as(&train)? }
    };
    let largest = train.samples.iter().chain(&test.samples).map(|s| s.1 as usize + 1).max().unwrap_or(0);
    if largest > img.classes {
        bail!(
            "{}: {} class folders, but the model has {} classes; pass --classes or --labels FILE",
            train_dir.display(),
            train.folders.len(),
            img.classes
        );
    }
    let class_names = match &classes {
        Some(list) => list.names.clone(),
        None => train.folders.clone(),
    };
    let size = img.transform.size;
    let view = EvalViews::Center { resize: img.eval_resize, crop: size };
    let norm = Arc::new(match saved_norm {
        Some(n) => n,
        None if cfg.norm == "pixel-mean" => {
            eprintln!("computing the per-pixel mean of up to {} training images ...", img.mean_images);
            Norm::PixelMean(imagenet::pixel_mean(&train, view, img.mean_images))
        }
        None => Norm::from_name(&cfg.norm, None)?,
    });
    let train = Arc::new(FolderSamples {
        folder: Arc::new(train),
        transform: FolderTransform::Train(img.transform),
        norm: norm.clone(),
    });
    let test_folder = Arc::new(test);
    let test = Arc::new(FolderSamples {
        folder: test_folder.clone(),
        transform: FolderTransform::Eval(view),
        norm: norm.clone(),
    });
    Ok(Datasets { train, test, norm, class_names, test_folder: Some(test_folder) })
}
