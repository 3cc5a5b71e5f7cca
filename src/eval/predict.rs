//! `resnet predict`: class probabilities of individual image files, decoded and
//! transformed as torchvision's eval transform (resize, centre crop, normalize).

use super::softmax;
use crate::data::Norm;
use crate::data::image;
use crate::data::imagenet::EvalViews;
use crate::data::prefetch::Prefetch;
use crate::model::ResNet;
use anyhow::Result;
use std::path::PathBuf;
use std::sync::Arc;

pub struct Prediction {
    pub file: PathBuf,
    /// Raw network outputs and their softmax.
    pub logits: Vec<f32>,
    pub probs: Vec<f32>,
    /// The pooled penultimate features (512 or 2048 for ImageNet nets, 64 for CIFAR ones).
    pub features: Vec<f32>,
}

impl Prediction {
    /// The `k` most probable classes, best first (ties: lower index first).
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        let mut idx: Vec<usize> = (0..self.probs.len()).collect();
        idx.sort_by(|&a, &b| self.probs[b].total_cmp(&self.probs[a]).then(a.cmp(&b)));
        idx.into_iter().take(k).map(|i| (i, self.probs[i])).collect()
    }
}

/// Runs every file through the model, `batch` images per network call; `workers`
/// threads decode ahead. Files that cannot be read come back as errors, in order.
pub fn predict(
    model: &mut ResNet,
    files: Vec<PathBuf>,
    view: EvalViews,
    norm: Arc<Norm>,
    batch: usize,
    workers: usize,
) -> Vec<Result<Prediction>> {
    let classes = model.classes();
    let forward = |n: usize, hw: (usize, usize), images: &[f32]| -> Result<(Vec<f32>, Vec<f32>)> {
        let logits = model.forward(false, n, hw, images).to_vec();
        Ok((logits, model.pooled_features(n)))
    };
    predict_by(classes, forward, files, view, norm, (batch, workers))
}

/// [`predict`] with each batch's logits and pooled features from `forward(n, hw, images)`:
/// a network elsewhere than the CPU engine (a GPU's). A batch whose call fails comes back
/// as that error for each of its files.
pub fn predict_by(
    classes: usize,
    mut forward: impl FnMut(usize, (usize, usize), &[f32]) -> Result<(Vec<f32>, Vec<f32>)>,
    files: Vec<PathBuf>,
    view: EvalViews,
    norm: Arc<Norm>,
    (batch, workers): (usize, usize),
) -> Vec<Result<Prediction>> {
    let crop = view.crop();
    let len = crop * crop * 3;
    let files = Arc::new(files);
    let source = files.clone();
    let prepared = Prefetch::new(0, files.len(), workers, move |i| -> Result<Vec<f32>> {
        let img = image::decode_file(&source[i])?;
        let mut out = vec![0f32; len];
        norm.normalize_hwc(&view.apply(&img)[0].data, (crop, crop), [0.0; 3], &mut out);
        Ok(out)
    });
    let progress = crate::progress::bar("images", files.len(), true);
    let mut results: Vec<Result<Prediction>> = Vec::with_capacity(files.len());
    let mut pending: Vec<(usize, Vec<f32>)> = Vec::new();
    let mut flush = |pending: &mut Vec<(usize, Vec<f32>)>, results: &mut Vec<Result<Prediction>>| {
        if pending.is_empty() {
            return;
        }
        let images: Vec<f32> = pending.iter().flat_map(|(_, v)| v.iter().copied()).collect();
        let n = pending.len();
        let (logits, features) = match forward(n, (crop, crop), &images) {
            Ok(out) => out,
            Err(e) => {
                for (i, _) in pending.drain(..) {
                    results[i] = Err(anyhow::anyhow!("{}: {e:#}", files[i].display()));
                    progress.inc(1);
                }
                return;
            }
        };
        let width = features.len() / n;
        let probs = softmax(&logits, classes);
        for (k, (i, _)) in pending.drain(..).enumerate() {
            let row = k * classes..(k + 1) * classes;
            results[i] = Ok(Prediction {
                file: files[i].clone(),
                logits: logits[row.clone()].to_vec(),
                probs: probs[row].to_vec(),
                features: features[k * width..(k + 1) * width].to_vec(),
            });
            progress.inc(1);
        }
    };
    for (i, item) in prepared.enumerate() {
        match item {
            Ok(v) => {
                results.push(Err(anyhow::anyhow!("pending")));
                pending.push((i, v));
                if pending.len() >= batch.max(1) {
                    flush(&mut pending, &mut results);
                }
            }
            Err(e) => {
                progress.inc(1);
                results.push(Err(e));
            }
        }
    }
    flush(&mut pending, &mut results);
    progress.finish_and_clear();
    results
}
