//! Evaluation: single-view top-1 accuracy, loss and per-class accuracy on a dataset,
//! BatchNorm in inference mode.

use crate::data::{BatchLoader, Dataset, Norm};
use crate::engine::ops;
use crate::model::ResNet;
use std::sync::Arc;

#[derive(Clone, Debug, Default)]
pub struct EvalResult {
    pub loss: f64,
    pub correct: usize,
    pub total: usize,
    /// (correct, total) per class.
    pub per_class: Vec<(usize, usize)>,
}

impl EvalResult {
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.total.max(1) as f64
    }
}

pub fn evaluate(model: &mut ResNet, data: Arc<Dataset>, norm: Arc<Norm>, batch: usize) -> EvalResult {
    let classes = model.config.classes;
    let order = Arc::new((0..data.len() as u32).collect::<Vec<_>>());
    let mut r = EvalResult { per_class: vec![(0, 0); classes], ..Default::default() };
    let mut grad = vec![0f32; batch * classes];
    for b in BatchLoader::new(data, norm, order, batch, 0, None, 1) {
        let n = b.len();
        let logits = model.forward(false, n, b.hw, &b.images);
        let (loss, correct) = ops::softmax_cross_entropy(n, classes, logits, &b.labels, &mut grad);
        r.loss += loss as f64 * n as f64;
        r.correct += correct;
        r.total += n;
        for (i, &label) in b.labels.iter().enumerate() {
            let (pred, _) = ops::argmax(&logits[i * classes..(i + 1) * classes]);
            let e = &mut r.per_class[label as usize];
            e.0 += usize::from(pred == label as usize);
            e.1 += 1;
        }
    }
    r.loss /= r.total.max(1) as f64;
    r
}
