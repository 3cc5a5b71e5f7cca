//! The network: stem, stages of residual blocks, global average pool and classifier.
//! Training runs the blocks forward saving activations, then backward in reverse, with
//! gradient buffers shared by all blocks. Inference saves nothing: blocks ping-pong
//! between two buffers with three shared scratch buffers.

use super::block::{Block, ConvBn, Hw};
use super::config::ModelConfig;
use super::spec::{LayerRow, NetSpec};
use crate::engine::GradMode;
use crate::engine::device::InputGrad;
use crate::engine::device::{self, DeviceVec, Residual, View, ViewMut};
use crate::engine::flat::FlatParams;
use crate::engine::pool::PoolShape;
use crate::engine::sgd::SgdConfig;
use crate::engine::{Workspace, ensure_len};
use crate::nn::{Linear, Named, Param, ParamGroup, Slot};
use crate::rng::Rng;

/// The ImageNet stem's 3×3, stride-2, pad-1 max pool (torchvision's form).
struct MaxPool {
    out: DeviceVec,
    argmax: DeviceVec<u32>,
}

impl MaxPool {
    fn shape(c: usize, (h, w): Hw) -> PoolShape {
        PoolShape { c, kernel: 3, stride: 2, pad: 1, h, w }
    }
}

/// The parts of a network in the order its backward pass finishes them (apart from
/// `ResNet`, so that it can be called while `ResNet::flat` is borrowed).
fn backward_order(fc: &mut Linear, blocks: &mut [Block], stem: &mut ConvBn, f: &mut dyn FnMut(&mut dyn ParamGroup)) {
    f(fc);
    for b in blocks.iter_mut().rev() {
        f(b);
    }
    f(stem);
}

/// `layer{stage}.{index}` for every block, as PyTorch names them.
pub(crate) fn block_names(stages: &[usize]) -> Vec<String> {
    let mut names = Vec::new();
    for (stage, &count) in stages.iter().enumerate() {
        names.extend((0..count).map(|j| format!("layer{}.{j}", stage + 1)));
    }
    names
}

pub struct ResNet {
    pub config: ModelConfig,
    /// The structure `config` describes (buffer planning reads it).
    spec: NetSpec,
    pub stem: ConvBn,
    pool: Option<MaxPool>,
    pub blocks: Vec<Block>,
    pub fc: Linear,
    ws: Workspace,
    /// Batch size and input size of the last training forward, and each block's input size.
    trace: Option<(usize, Hw)>,
    block_inputs: Vec<Hw>,
    input: DeviceVec,
    pooled: DeviceVec,
    logits: DeviceVec,
    dlogits: DeviceVec,
    dpooled: DeviceVec,
    // Gradient buffers shared by all blocks (ping-pong plus two scratch).
    grads: [DeviceVec; 4],
    // Inference buffers: the activation between blocks (each block's output replaces its
    // input) and scratch.
    eval_io: DeviceVec,
    eval_tmp: [DeviceVec; 3],
    /// The logits of the last forward, copied to the host.
    host_logits: Vec<f32>,
    /// Every parameter's value, gradient and momentum, in the order of
    /// [`for_each_group_backward`](ResNet::for_each_group_backward): the classifier's
    /// first, then the blocks' from the last, then the stem's (see `engine::flat`).
    flat: FlatParams,
    /// Floats of the classifier's parameters, at the start of `flat`.
    classifier_len: usize,
}

impl ResNet {
    pub fn new(config: ModelConfig, seed: u64) -> Self {
        let mut rng = Rng::derive(seed, 0x1417, 0);
        let spec = config.spec();
        let s = spec.stem;
        let stem = ConvBn::new(s.c_in, s.c_out, s.kernel, s.stride, &mut rng);
        let pool = spec.max_pool.then(|| MaxPool { out: DeviceVec::default(), argmax: DeviceVec::default() });
        let blocks: Vec<Block> = spec.blocks.iter().map(|b| Block::from_spec(b, &mut rng)).collect();
        let fc = Linear::new(spec.features, config.classes, &mut rng);
        let mut net = ResNet {
            config,
            spec,
            stem,
            pool,
            blocks,
            fc,
            ws: Workspace::new(),
            trace: None,
            block_inputs: Vec::new(),
            input: DeviceVec::default(),
            pooled: DeviceVec::default(),
            logits: DeviceVec::default(),
            dlogits: DeviceVec::default(),
            dpooled: DeviceVec::default(),
            grads: Default::default(),
            eval_io: Default::default(),
            eval_tmp: Default::default(),
            host_logits: Vec::new(),
            flat: FlatParams::new(0),
            classifier_len: 0,
        };
        net.flatten();
        net
    }

    /// Moves every parameter into the flat buffers, in the order the backward pass
    /// finishes them.
    fn flatten(&mut self) {
        let mut total = 0;
        self.for_each_group_backward(&mut |g| g.for_each_param(&mut |p| total += p.value.len()));
        let mut flat = FlatParams::new(total);
        self.for_each_group_backward(&mut |g| {
            g.for_each_param(&mut |p| {
                flat.push([&mut p.value, &mut p.grad, &mut p.momentum]);
            })
        });
        self.classifier_len = {
            let mut n = 0;
            self.fc.for_each_param(&mut |p| n += p.value.len());
            n
        };
        self.flat = flat;
    }

    /// The flat buffers, once every parameter is found in its place in them (a parameter
    /// replaced by another `Param` is not: training refuses it, as the flat step would
    /// miss it). Visiting the parameters also drops the convolutions' prepared weights,
    /// which the callers change.
    fn flat(&mut self) -> &mut FlatParams {
        let mut at = 0;
        let mut in_place = true;
        let flat = &self.flat;
        let mut check = |p: &mut Param| {
            in_place &= flat.holds(at, [&p.value, &p.grad, &p.momentum]);
            at += p.value.len();
        };
        backward_order(&mut self.fc, &mut self.blocks, &mut self.stem, &mut |g| g.for_each_param(&mut check));
        assert!(
            in_place && at == self.flat.len(),
            "a parameter of the model was replaced by another; change parameters in place (copy_from_host)"
        );
        &mut self.flat
    }

    /// Floats of all the parameters: the length of [`grads`](ResNet::grads).
    pub fn flat_len(&self) -> usize {
        self.flat.len()
    }

    /// Floats of the classifier's parameters, at the start of [`grads`](ResNet::grads).
    pub fn classifier_len(&self) -> usize {
        self.classifier_len
    }

    /// The gradients of the parameters in `range` of the flat order (that of
    /// [`for_each_group_backward`](ResNet::for_each_group_backward)).
    pub fn grads(&mut self, range: std::ops::Range<usize>) -> View<'_> {
        self.flat().grads(range)
    }

    /// [`grads`](ResNet::grads), to write.
    pub fn grads_mut(&mut self, range: std::ops::Range<usize>) -> ViewMut<'_> {
        self.flat().grads_mut(range)
    }

    /// One SGD step over the flat buffers: the classifier with `classifier`, every other
    /// parameter with `backbone` (None: left as they are).
    pub fn sgd_step(&mut self, backbone: Option<SgdConfig>, classifier: SgdConfig) {
        let (fc, all) = (self.classifier_len, self.flat.len());
        crate::engine::in_pool(|| {
            let flat = self.flat();
            flat.sgd_step(classifier, 0..fc);
            if let Some(cfg) = backbone {
                flat.sgd_step(cfg, fc..all);
            }
        })
    }

    /// How 3×3 stride-1 convolutions are computed (default: the faster, per layer).
    pub fn set_conv_algo(&mut self, algo: crate::engine::ConvAlgo) {
        self.ws.set_algo(algo);
    }

    /// The number format of the convolutions (default f32; see [`crate::engine::bf16`]).
    pub fn set_precision(&mut self, precision: crate::engine::Precision) {
        self.ws.set_precision(precision);
    }

    pub fn precision(&self) -> crate::engine::Precision {
        self.ws.precision()
    }

    /// Training normalizes groups of at most `group` images of a batch, each by its own
    /// BatchNorm statistics, as on that many GPUs (see `BatchNorm2d::forward`); None: the
    /// whole batch.
    pub fn set_bn_group(&mut self, group: Option<usize>) {
        self.for_each_bn(&mut |bn| bn.group = group);
    }

    /// Synchronized BatchNorm: training statistics over the batches of every process that
    /// `sync` joins (see [`SyncStats`](crate::engine::batchnorm::SyncStats)); None: each
    /// process's own.
    pub fn set_sync_bn(&mut self, sync: Option<std::sync::Arc<dyn crate::engine::batchnorm::SyncStats>>) {
        self.for_each_bn(&mut |bn| bn.sync = sync.clone());
    }

    /// Whether BatchNorm's statistics are synchronized across processes.
    pub fn sync_bn(&self) -> Option<std::sync::Arc<dyn crate::engine::batchnorm::SyncStats>> {
        self.stem.bn.sync.clone()
    }

    fn for_each_bn(&mut self, f: &mut dyn FnMut(&mut crate::nn::BatchNorm2d)) {
        f(&mut self.stem.bn);
        for b in &mut self.blocks {
            b.for_each_bn(f);
        }
    }

    pub fn classes(&self) -> usize {
        self.config.classes
    }

    /// Runs `n` NHWC images of `h`×`w` pixels; returns the logits `[n, classes]`. The
    /// images and logits are on the host (a copy each way; everything between stays in
    /// the engine's memory). `train` selects BatchNorm's batch statistics (updating its
    /// running averages) and saves the activations for `backward`.
    pub fn forward(&mut self, train: bool, n: usize, hw: Hw, images: &[f32]) -> &[f32] {
        crate::engine::in_pool(move || self.forward_in_pool(train, n, hw, images))
    }

    fn forward_in_pool(&mut self, train: bool, n: usize, hw: Hw, images: &[f32]) -> &[f32] {
        let len = n * hw.0 * hw.1 * 3;
        assert!(images.len() >= len, "forward: {} values for {n} images of {hw:?}", images.len());
        self.input.copy_from_host(&images[..len]);
        let features = if train { self.forward_train(n, hw) } else { self.forward_eval(n, hw) };
        let (h, w) = features;
        let c = self.config.features();
        let classes = self.config.classes;
        self.pooled.ensure_len(n * c);
        self.logits.ensure_len(n * classes);
        let last = if train { self.blocks.last().expect("at least one block").out.view() } else { self.eval_io.view() };
        device::avgpool_forward(n, h * w, c, last, self.pooled.view_mut());
        self.fc.forward(n, self.pooled.view(), self.logits.view_mut());
        ensure_len(&mut self.host_logits, n * classes);
        self.logits.slice(..n * classes).copy_to_host(&mut self.host_logits);
        &self.host_logits[..n * classes]
    }

    /// Returns the size of the last feature map; activations stay in the layers.
    fn forward_train(&mut self, n: usize, hw: Hw) -> Hw {
        let conv1 = self.stem.conv.out_hw(hw.0, hw.1);
        self.stem.reserve(n * conv1.0 * conv1.1 * self.stem.conv.c_out, true);
        self.stem.forward_saved(n, hw, self.input.view(), None, true, &mut self.ws);
        let mut cur = conv1;
        if let Some(p) = &mut self.pool {
            let s = MaxPool::shape(self.stem.conv.c_out, cur);
            p.out.ensure_len(n * s.out_len());
            p.argmax.ensure_len(n * s.out_len());
            device::maxpool_forward(&s, n, self.stem.post(), p.out.view_mut(), p.argmax.view_mut());
            cur = (s.out_h(), s.out_w());
        }
        self.block_inputs.clear();
        for i in 0..self.blocks.len() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = match (before.last(), &self.pool) {
                (Some(b), _) => b.out.view(),
                (None, Some(p)) => p.out.view(),
                (None, None) => self.stem.post(),
            };
            self.block_inputs.push(cur);
            rest[0].forward_train(n, cur, x, &mut self.ws);
            cur = rest[0].out_hw(cur);
        }
        self.trace = Some((n, hw));
        cur
    }

    /// Inference: nothing is saved; each block's output replaces its input in `eval_io`.
    fn forward_eval(&mut self, n: usize, hw: Hw) -> Hw {
        let largest = self.spec.max_activation(n, hw);
        for v in std::iter::once(&mut self.eval_io).chain(self.eval_tmp.iter_mut()) {
            v.ensure_len(largest);
        }
        let images = self.input.view();
        let io = &mut self.eval_io;
        let [t0, _, _] = &mut self.eval_tmp;
        let mut cur = self.stem.conv.out_hw(hw.0, hw.1);
        let epi = self.stem.bn.epilogue(Residual::None, true);
        // Inference needs no argmax, so the pool layer's own buffers stay unused here.
        if self.pool.is_some() {
            self.stem.conv.forward_fused(n, hw, images, t0.view_mut(), epi, &mut self.ws);
            let s = MaxPool::shape(self.stem.conv.c_out, cur);
            device::maxpool_eval(&s, n, t0.view(), io.view_mut());
            cur = (s.out_h(), s.out_w());
        } else {
            self.stem.conv.forward_fused(n, hw, images, io.view_mut(), epi, &mut self.ws);
        }
        for b in &mut self.blocks {
            b.forward_eval(n, cur, io, &mut self.eval_tmp, &mut self.ws);
            cur = b.out_hw(cur);
        }
        cur
    }

    /// Backpropagates dL/dlogits (on the host) through the network run by the last
    /// training forward, writing every parameter's gradient.
    pub fn backward(&mut self, dlogits: &[f32]) {
        self.backward_with(dlogits, GradMode::Overwrite, &mut |_| {})
    }

    /// [`backward`](ResNet::backward), writing the gradients or adding to them as `mode`
    /// says, and calling `ready` with each part of the network as its gradients are
    /// finished: the classifier, the blocks from the last, the stem (the order of
    /// [`for_each_group_backward`](ResNet::for_each_group_backward) and of the flat buffers).
    pub fn backward_with(
        &mut self,
        dlogits: &[f32],
        mode: GradMode,
        ready: &mut (dyn FnMut(&mut dyn ParamGroup) + Send),
    ) {
        self.ws.set_grad_mode(mode);
        crate::engine::in_pool(|| self.backward_in_pool(dlogits, ready));
        self.ws.set_grad_mode(GradMode::Overwrite);
    }

    /// The parts of the network in the order `backward_with` finishes them.
    pub fn for_each_group_backward(&mut self, f: &mut dyn FnMut(&mut dyn ParamGroup)) {
        backward_order(&mut self.fc, &mut self.blocks, &mut self.stem, f)
    }

    fn backward_in_pool(&mut self, dlogits: &[f32], ready: &mut (dyn FnMut(&mut dyn ParamGroup) + Send)) {
        let (n, hw) = self.trace.expect("backward needs a training forward first");
        let largest = self.spec.max_activation(n, hw);
        for g in &mut self.grads {
            g.ensure_len(largest);
        }
        self.dpooled.ensure_len(n * self.config.features());
        self.dlogits.copy_from_host(&dlogits[..n * self.config.classes]);
        let [ga, gb, t1, t2] = &mut self.grads;
        let mode = self.ws.grad_mode();
        self.fc.backward(n, self.pooled.view(), self.dlogits.view(), self.dpooled.view_mut(), mode);
        ready(&mut self.fc);
        let last = self.blocks.last().expect("at least one block");
        let (h, w) = last.out_hw(*self.block_inputs.last().expect("traced"));
        device::avgpool_backward(n, h * w, self.config.features(), self.dpooled.view(), ga.view_mut());
        let (mut g, mut dx) = (ga, gb);
        for i in (0..self.blocks.len()).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = match (before.last(), &self.pool) {
                (Some(b), _) => b.out.view(),
                (None, Some(p)) => p.out.view(),
                (None, None) => self.stem.post(),
            };
            let hw = self.block_inputs[i];
            rest[0].backward(n, hw, x, g.view_mut(), dx.view_mut(), t1.view_mut(), t2.view_mut(), &mut self.ws);
            ready(&mut rest[0]);
            std::mem::swap(&mut g, &mut dx);
        }
        if let Some(p) = &self.pool {
            let s = MaxPool::shape(self.stem.conv.c_out, self.stem.conv.out_hw(hw.0, hw.1));
            device::maxpool_backward(&s, n, g.view(), p.argmax.view(), dx.view_mut());
            std::mem::swap(&mut g, &mut dx);
        }
        self.stem.backward(n, self.input.view(), true, g.view_mut(), InputGrad::Skip, &mut self.ws);
        ready(&mut self.stem);
    }

    /// The state dict, in PyTorch's order and naming (`conv1.weight`, `layer1.0.bn2.bias`,
    /// `layer2.0.downsample.0.weight`, `fc.bias`, ...).
    pub fn named(&mut self) -> Vec<Named<'_>> {
        let (projection, classifier) = self.config.naming();
        let mut out = Vec::new();
        self.stem.named("conv1", "bn1", &mut out);
        for (b, name) in self.blocks.iter_mut().zip(block_names(&self.config.stages)) {
            b.named(&name, projection, &mut out);
        }
        self.fc.named(classifier, &mut out);
        out
    }

    /// Visits every trainable parameter (no allocation: used by the optimizer each step).
    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.for_each_backbone_param(f);
        self.fc.for_each_param(f);
    }

    /// The pooled features of the last forward pass's `n` images (the classifier's input,
    /// `features()` values per image): the network's embedding of them.
    pub fn pooled_features(&self, n: usize) -> Vec<f32> {
        let mut out = vec![0f32; n * self.config.features()];
        self.pooled.slice(..out.len()).copy_to_host(&mut out);
        out
    }

    /// Every parameter but the classifier's.
    pub fn for_each_backbone_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.stem.for_each_param(f);
        for b in &mut self.blocks {
            b.for_each_param(f);
        }
    }

    /// The classifier's gradients alone, after a forward pass of either kind: what training
    /// with a frozen backbone needs.
    pub fn backward_classifier(&mut self, n: usize, dlogits: &[f32]) {
        crate::engine::in_pool(|| {
            self.dpooled.ensure_len(n * self.config.features());
            self.dlogits.ensure_len(n * self.config.classes);
            self.dlogits.copy_from_host(&dlogits[..n * self.config.classes]);
            let mode = GradMode::Overwrite;
            self.fc.backward(n, self.pooled.view(), self.dlogits.view(), self.dpooled.view_mut(), mode);
        })
    }

    /// Number of trainable parameters.
    pub fn param_count(&mut self) -> usize {
        self.named().iter().filter(|t| matches!(t.slot, Slot::Param(_))).map(|t| t.len()).sum()
    }

    /// Multiply-adds of one forward pass of one image at the design size.
    pub fn mult_adds(&mut self) -> usize {
        self.config.spec().mult_adds()
    }

    /// Layers at the design input size: stem, each block, head.
    pub fn layer_table(&self) -> Vec<LayerRow> {
        self.config.spec().layer_table()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ModelConfig;
    use crate::nn::Param;

    fn resnet8() -> ResNet {
        ResNet::new(ModelConfig::from_name("resnet8", None, 10).unwrap(), 3)
    }

    /// A training forward and backward on `n` random images.
    fn backward(net: &mut ResNet, n: usize, seed: u64, mode: GradMode) {
        let mut rng = Rng::new(seed);
        let images: Vec<f32> = (0..n * 8 * 8 * 3).map(|_| rng.normal() as f32).collect();
        let logits = net.forward(true, n, (8, 8), &images).to_vec();
        let dlogits: Vec<f32> = logits.iter().map(|z| z / 10.0 - 0.05).collect();
        net.backward_with(&dlogits, mode, &mut |_| {});
    }

    fn each_grad(net: &mut ResNet) -> Vec<f32> {
        let mut all = Vec::new();
        net.for_each_group_backward(&mut |g| g.for_each_param(&mut |p| all.extend(p.grad.to_host())));
        all
    }

    #[test]
    fn the_flat_gradients_are_every_parameters_in_backward_order() {
        let mut net = resnet8();
        backward(&mut net, 3, 1, GradMode::Overwrite);
        let all = each_grad(&mut net);
        assert_eq!(all.len(), net.flat_len());
        let mut flat = vec![0f32; net.flat_len()];
        net.grads(0..flat.len()).copy_to_host(&mut flat);
        assert_eq!(flat, all);
        assert!(all.iter().any(|&g| g != 0.0));
        // The classifier's come first.
        let mut fc = Vec::new();
        net.fc.for_each_param(&mut |p| fc.extend(p.grad.to_host()));
        assert_eq!(net.classifier_len(), fc.len());
        assert_eq!(&all[..fc.len()], &fc[..]);
    }

    #[test]
    fn accumulating_adds_the_next_batchs_gradients_in_place() {
        let mut net = resnet8();
        backward(&mut net, 3, 1, GradMode::Overwrite);
        let first = each_grad(&mut net);
        backward(&mut net, 2, 2, GradMode::Overwrite);
        let second = each_grad(&mut net);
        backward(&mut net, 3, 1, GradMode::Overwrite);
        backward(&mut net, 2, 2, GradMode::Accumulate);
        let sum = each_grad(&mut net);
        for (i, ((a, b), s)) in first.iter().zip(&second).zip(&sum).enumerate() {
            let want = a + b;
            assert!((s - want).abs() <= 1e-5 * want.abs().max(1e-3), "gradient {i}: {s} against {a} + {b}");
        }
    }

    #[test]
    #[should_panic(expected = "replaced by another")]
    fn a_parameter_replaced_by_another_is_refused() {
        let mut net = resnet8();
        net.fc.bias = Param::new(vec![0.0; 10]);
        let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 0.0 };
        net.sgd_step(Some(cfg), cfg);
    }
}
