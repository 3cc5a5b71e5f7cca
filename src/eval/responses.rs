//! The paper's Fig. 7: the standard deviation of each 3×3 layer's response, the values
//! after BatchNorm and before the ReLU and the shortcut addition (for a ResNet, the
//! strength of the residual function), over every value of every image given. BatchNorm
//! runs in inference mode. The layers come in network order: the stem's 3×3 conv (CIFAR
//! nets), then each block's 3×3 convs.

use crate::data::{BatchLoader, Samples, Spare};
use crate::engine::Workspace;
use crate::engine::device::{DeviceVec, Residual};
use crate::engine::pool::PoolShape;
use crate::model::{ResNet, block_names};
use rayon::prelude::*;
use std::sync::Arc;

/// One layer's response: its state-dict name (`layer2.0.conv1`) and standard deviation.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerResponse {
    pub layer: String,
    pub std: f64,
}

/// Sums over the values seen, in f64 so that 10⁹ values lose nothing.
#[derive(Clone, Copy, Default)]
struct Moments {
    count: f64,
    sum: f64,
    sum_sq: f64,
}

impl Moments {
    fn add(&mut self, values: &[f32]) {
        let (sum, sum_sq) = values
            .par_chunks(1 << 15)
            .map(|c| c.iter().fold((0f64, 0f64), |(s, q), &v| (s + v as f64, q + v as f64 * v as f64)))
            .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
        self.count += values.len() as f64;
        self.sum += sum;
        self.sum_sq += sum_sq;
    }

    /// The population standard deviation (over N·H·W·C values the N-1 form differs by
    /// less than 10⁻⁶ relative).
    fn std(&self) -> f64 {
        let mean = self.sum / self.count;
        (self.sum_sq / self.count - mean * mean).max(0.0).sqrt()
    }
}

/// The responses measured so far, batch by batch.
#[derive(Default)]
pub struct Responses {
    layers: Vec<(String, Moments)>,
    ws: Workspace,
}

impl Responses {
    /// The standard deviation of each layer over every batch measured.
    pub fn layers(&self) -> Vec<LayerResponse> {
        self.layers.iter().map(|(layer, m)| LayerResponse { layer: layer.clone(), std: m.std() }).collect()
    }

    fn record(&mut self, index: &mut usize, layer: String, values: &[f32]) {
        if *index == self.layers.len() {
            self.layers.push((layer, Moments::default()));
        }
        self.layers[*index].1.add(values);
        *index += 1;
    }

    /// Runs `n` NHWC images of size `hw` through `model` (inference) and adds the
    /// responses of its 3×3 layers. Each layer runs with its BatchNorm but without the
    /// ReLU or shortcut, which are applied afterwards on the host: slower than
    /// `ResNet::forward`, but every response is seen.
    pub fn measure(&mut self, model: &mut ResNet, n: usize, hw: (usize, usize), images: &[f32]) {
        crate::engine::in_pool(|| self.measure_in_pool(model, n, hw, images))
    }

    fn measure_in_pool(&mut self, model: &mut ResNet, n: usize, hw: (usize, usize), images: &[f32]) {
        let mut index = 0;
        let mut x = DeviceVec::from_host(images[..n * hw.0 * hw.1 * 3].to_vec());
        let stem = &mut model.stem;
        let (mut cur, c) = (stem.conv.out_hw(hw.0, hw.1), stem.conv.c_out);
        let mut pre = DeviceVec::zeros(n * cur.0 * cur.1 * c);
        let epi = stem.bn.epilogue(Residual::None, false);
        stem.conv.forward_fused(n, hw, x.view(), pre.view_mut(), epi, &mut self.ws);
        let mut host = pre.to_host();
        if stem.conv.kernel == 3 {
            self.record(&mut index, "conv1".into(), &host);
        }
        relu(&mut host);
        x = DeviceVec::from_host(host);
        if model.config.family == crate::model::Family::ImageNet {
            // torchvision's 3×3, stride-2, pad-1 max pool after the stem.
            let s = PoolShape { c, kernel: 3, stride: 2, pad: 1, h: cur.0, w: cur.1 };
            let mut pooled = DeviceVec::zeros(n * s.out_len());
            crate::engine::device::maxpool_eval(&s, n, x.view(), pooled.view_mut());
            (x, cur) = (pooled, (s.out_h(), s.out_w()));
        }
        let mut shortcut = DeviceVec::default();
        for (block, name) in model.blocks.iter_mut().zip(block_names(&model.config.stages)) {
            let has_shortcut = block.shortcut_eval(n, cur, x.view(), &mut shortcut, &mut self.ws);
            let last = block.units.len() - 1;
            for (i, u) in block.units.iter_mut().enumerate() {
                let out_hw = u.conv.out_hw(cur.0, cur.1);
                let len = n * out_hw.0 * out_hw.1 * u.conv.c_out;
                let mut pre = DeviceVec::zeros(len);
                let epi = u.bn.epilogue(Residual::None, false);
                u.conv.forward_fused(n, cur, x.view(), pre.view_mut(), epi, &mut self.ws);
                let mut host = pre.to_host();
                if u.conv.kernel == 3 {
                    self.record(&mut index, format!("{name}.conv{}", i + 1), &host);
                }
                if i == last && has_shortcut {
                    let mut add = vec![0f32; len];
                    shortcut.slice(..len).copy_to_host(&mut add);
                    host.par_iter_mut().zip(add.par_iter()).for_each(|(v, s)| *v += s);
                }
                relu(&mut host);
                (x, cur) = (DeviceVec::from_host(host), out_hw);
            }
        }
    }
}

fn relu(values: &mut [f32]) {
    values.par_iter_mut().for_each(|v| *v = v.max(0.0));
}

/// The responses of `model`'s 3×3 layers over every image of `data` (each view of a
/// sample counts as an image), `batch` images per call; `progress` advances by images.
pub fn layer_responses(
    model: &mut ResNet,
    data: Arc<dyn Samples>,
    batch: usize,
    workers: usize,
    progress: &crate::progress::Bar,
) -> Vec<LayerResponse> {
    let order = Arc::new((0..data.len() as u32).collect::<Vec<_>>());
    let mut responses = Responses::default();
    let spare = Spare::default();
    for b in BatchLoader::new(data, order, batch.max(1), 0, None, workers, spare.clone()) {
        progress.inc((b.len() + b.errors.len()) as u64);
        if !b.is_empty() {
            responses.measure(model, b.len() * b.views, b.hw, &b.images);
        }
        spare.put(b);
    }
    progress.finish_and_clear();
    responses.layers()
}
