//! A network's training on the GPU (feature `cuda`): the spec walked forward in training
//! mode, keeping what the backward pass needs, then backward in reverse, then SGD on every
//! parameter. The arithmetic is `train::step_with`'s on the CPU: BatchNorm by the groups of
//! `--bn-batch` (the running averages following the first), softmax cross-entropy over the
//! batch, micro-batches whose gradients add up (`--accumulate`), one SGD configuration for
//! every parameter but the classifier's learning rate (`--lr-classifier`), or the classifier
//! trained alone on the backbone in inference mode (`--freeze-backbone`).
//!
//! Parameters, their SGD momentum and the running statistics stay on the GPU between
//! steps (the test set is scored with them, [`GpuTrainer::logits`]);
//! [`GpuTrainer::store_into`] copies them into the CPU model, which checkpoints and saves
//! weights as it always does, so a run moves between devices.

use super::{Buf, Hw};
use crate::engine::cuda::{Gpu, ops::BnLayer, ops::SgdTable};
use crate::engine::ops::ShortcutA;
use crate::engine::pool::PoolShape;
use crate::engine::sgd::SgdConfig;
use crate::engine::split_range;
use crate::model::{BlockSpec, NetSpec, ResNet, ShortcutSpec, UnitSpec};
use crate::nn::{Slot, bn_group_count};
use crate::train::Transfer;
use anyhow::{Context, Result, bail};
use cudarc::driver::CudaSlice;
use std::collections::HashMap;

/// A trained tensor on the GPU: its values, gradient and SGD momentum.
struct Param {
    value: Buf,
    grad: Buf,
    momentum: Buf,
}

/// A network's training state on the GPU.
pub struct GpuTrainer {
    gpu: Gpu,
    spec: NetSpec,
    /// The state-dict names of the projection shortcuts and the classifier.
    naming: (&'static str, &'static str),
    eps: f32,
    bn_momentum: f32,
    /// Images per BatchNorm group (None: the whole batch).
    bn_group: Option<usize>,
    params: HashMap<String, Param>,
    /// Running statistics, by state-dict name.
    running: HashMap<String, Buf>,
    /// The SGD step's launch tables: the backbone's parameters, and the classifier's.
    sgd: (SgdTable, SgdTable),
}

/// What a conv→BN unit's training forward keeps for its backward pass.
struct UnitTape {
    /// The convolution's input size.
    hw: Hw,
    /// The convolution's output: BatchNorm's input.
    pre: Buf,
    /// Per BatchNorm group, its statistics and transform (4c floats each).
    saved: Buf,
    /// The unit's output: BatchNorm [+ shortcut] [+ ReLU].
    post: Buf,
}

struct BlockTape {
    hw: Hw,
    units: Vec<UnitTape>,
    projection: Option<UnitTape>,
}

/// A training forward's activations.
struct Tape {
    n: usize,
    input: Buf,
    stem: UnitTape,
    /// The max pool's output and each output's winning input.
    pool: Option<(Buf, CudaSlice<u32>)>,
    blocks: Vec<BlockTape>,
    /// The last block's output size, and its pooled features.
    hw: Hw,
    pooled: Buf,
}

impl Tape {
    /// The input of block `b`.
    fn block_input(&self, b: usize) -> &Buf {
        trunk_output(&self.stem, &self.pool, &self.blocks[..b])
    }
}

/// The output of the stem, its pool and `blocks`: the last block's, or the stem's.
fn trunk_output<'a>(stem: &'a UnitTape, pool: &'a Option<(Buf, CudaSlice<u32>)>, blocks: &'a [BlockTape]) -> &'a Buf {
    match blocks.last() {
        Some(b) => &b.units.last().expect("a block has units").post,
        None => pool.as_ref().map_or(&stem.post, |(y, _)| y),
    }
}

/// What follows a unit's BatchNorm.
#[derive(Clone, Copy)]
enum Then<'a> {
    Relu,
    /// A block's last unit: the shortcut added, then the ReLU.
    AddRelu(&'a Buf),
    /// A projection shortcut: nothing.
    Nothing,
}

/// Two distinct entries of a map, both to write.
fn two<'a, V>(map: &'a mut HashMap<String, V>, a: &str, b: &str) -> Result<(&'a mut V, &'a mut V)> {
    match map.get_disjoint_mut([a, b]) {
        [Some(x), Some(y)] => Ok((x, y)),
        _ => bail!("the network has no tensor '{a}' or '{b}'"),
    }
}

/// Whether the tensor `name` belongs to the classifier, whose state-dict prefix is `classifier`.
fn in_classifier(name: &str, classifier: &str) -> bool {
    name.strip_prefix(classifier).is_some_and(|rest| rest.starts_with('.'))
}

fn get<'a, V>(map: &'a HashMap<String, V>, name: &str) -> Result<&'a V> {
    map.get(name).with_context(|| format!("the network has no tensor '{name}'"))
}

impl GpuTrainer {
    /// Opens the GPU and uploads `net`'s parameters, their momentum and its running
    /// statistics. Synchronized BatchNorm is not there on the GPU.
    pub fn new(net: &mut ResNet) -> Result<GpuTrainer> {
        if net.sync_bn().is_some() {
            bail!("synchronized BatchNorm (--sync-bn) does not run on the GPU yet");
        }
        let gpu = Gpu::open()?;
        gpu.set_precision(net.precision())?;
        let (mut params, mut running) = (HashMap::new(), HashMap::new());
        for t in net.named() {
            match &t.slot {
                Slot::Param(p) => {
                    let value = gpu.upload(&p.value.to_host())?;
                    let (grad, momentum) = (gpu.zeros::<f32>(p.value.len())?, gpu.upload(&p.momentum.to_host())?);
                    params.insert(t.name.clone(), Param { value, grad, momentum });
                }
                Slot::Buffer(b) => {
                    running.insert(t.name.clone(), gpu.upload(&b.to_host())?);
                }
            }
        }
        let bn = &net.stem.bn;
        let (eps, bn_momentum, bn_group) = (bn.eps, bn.momentum, bn.group);
        let naming = net.config.naming();
        let table = |classifier: bool| {
            let chosen = params.iter().filter(|(name, _)| in_classifier(name, naming.1) == classifier);
            // SAFETY: the buffers belong to the trainer, which keeps them (and the tables)
            // as long as it lives and never reallocates them; only its SGD step writes
            // them through the tables.
            unsafe { gpu.sgd_table(chosen.map(|(_, p)| (&p.value, &p.grad, &p.momentum))) }
        };
        let sgd = (table(false)?, table(true)?);
        Ok(GpuTrainer { gpu, spec: net.config.spec(), naming, eps, bn_momentum, bn_group, params, running, sgd })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// Copies the parameters, their momentum and the running statistics into `net` (the
    /// network this trainer was made from), for checkpoints, evaluation and weights files.
    pub fn store_into(&self, net: &mut ResNet) -> Result<()> {
        for mut t in net.named() {
            match &mut t.slot {
                Slot::Param(p) => {
                    let on_gpu = get(&self.params, &t.name)?;
                    p.value.copy_from_host(&self.gpu.download(&on_gpu.value)?);
                    p.momentum.copy_from_host(&self.gpu.download(&on_gpu.momentum)?);
                }
                Slot::Buffer(b) => b.copy_from_host(&self.gpu.download(get(&self.running, &t.name)?)?),
            }
        }
        Ok(())
    }

    /// One SGD step on `labels.len()` images of `hw` (NHWC, normalized): forward in
    /// training mode, softmax cross-entropy, backward, update, as `train::step_with` on the
    /// CPU. With `accumulate` > 1 the batch runs as that many micro-batches whose gradients
    /// add up, each micro-batch's loss divided by the whole batch's size. The classifier
    /// takes its learning rate scaled by `transfer`'s, and with `transfer.freeze_backbone`
    /// is all that trains. Returns (mean loss, correct predictions); a non-finite loss
    /// returns at once without updating.
    pub fn step(
        &mut self,
        hw: Hw,
        images: &[f32],
        labels: &[u32],
        accumulate: usize,
        cfg: SgdConfig,
        transfer: Transfer,
    ) -> Result<(f32, usize)> {
        if labels.is_empty() {
            return Ok((0.0, 0));
        }
        let frozen = transfer.freeze_backbone;
        let (loss, correct) = match frozen {
            true => self.classifier_gradients(hw, images, labels)?,
            false => self.micro_batches(hw, images, labels, accumulate)?,
        };
        if !loss.is_finite() {
            return Ok((loss, correct));
        }
        let (backbone, classifier) = &self.sgd;
        if !frozen {
            self.gpu.sgd_many(cfg, backbone)?;
        }
        let classifier_cfg = SgdConfig { lr: cfg.lr * transfer.classifier_lr_scale, ..cfg };
        self.gpu.sgd_many(classifier_cfg, classifier)?;
        Ok((loss, correct))
    }

    /// Every parameter's gradient of the batch's mean loss, in `accumulate` micro-batches
    /// whose gradients add up. Returns (mean loss, correct predictions), at once on a
    /// non-finite loss.
    fn micro_batches(&mut self, hw: Hw, images: &[f32], labels: &[u32], accumulate: usize) -> Result<(f32, usize)> {
        let spec = self.spec.clone();
        let n = labels.len();
        let (parts, image_len) = (accumulate.clamp(1, n), hw.0 * hw.1 * 3);
        let (mut loss, mut correct) = (0f32, 0);
        for k in 0..parts {
            let range = split_range(n, parts, k);
            let pixels = &images[range.start * image_len..range.end * image_len];
            let (l, ok) = self.gradients(&spec, hw, pixels, &labels[range.clone()], n, k > 0)?;
            if !l.is_finite() {
                return Ok((l, correct));
            }
            let share = range.len() as f32 / n as f32;
            (loss, correct) = (loss + share * l, correct + ok);
        }
        Ok((loss, correct))
    }

    /// The classifier's gradients alone (`--freeze-backbone`), the backbone run as in
    /// inference (BatchNorm on its running statistics), the whole batch at once, as
    /// `classifier_gradients` on the CPU.
    fn classifier_gradients(&mut self, hw: Hw, images: &[f32], labels: &[u32]) -> Result<(f32, usize)> {
        let (n, features, classes) = (labels.len(), self.spec.features, self.spec.classes);
        let (logits, pooled) = self.inference().forward(n, hw, images, true)?;
        let gpu = &self.gpu;
        let (logits, pooled) = (gpu.upload(&logits)?, gpu.upload(&pooled.context("pooled features")?)?);
        let mut dlogits = gpu.scratch(n * classes)?;
        let labels = gpu.upload(labels)?;
        let (loss, correct) = gpu.softmax_cross_entropy(n, n, classes, &logits, &labels, &mut dlogits)?;
        if loss.is_finite() {
            let (_, classifier) = self.naming;
            let (w, b) = two(&mut self.params, &format!("{classifier}.weight"), &format!("{classifier}.bias"))?;
            // The features' gradient goes unused: the backbone does not train.
            let mut dpooled = gpu.scratch(n * features)?;
            let dims = (n, features, classes);
            gpu.linear_backward(dims, &pooled, &w.value, &dlogits, &mut w.grad, &mut b.grad, &mut dpooled, false)?;
        }
        Ok((loss, correct))
    }

    /// Forward and backward on one micro-batch: every parameter's gradient of its part of
    /// the mean loss over `global` images, written, or added to what is there with
    /// `accumulate`. Returns (the micro-batch's mean loss, correct predictions), and
    /// returns at once on a non-finite loss.
    fn gradients(
        &mut self,
        spec: &NetSpec,
        hw: Hw,
        images: &[f32],
        labels: &[u32],
        global: usize,
        accumulate: bool,
    ) -> Result<(f32, usize)> {
        let n = labels.len();
        let tape = self.forward(spec, n, hw, images)?;
        let (features, classes) = (spec.features, spec.classes);
        let (_, classifier) = self.naming;
        let (w, b) = (format!("{classifier}.weight"), format!("{classifier}.bias"));
        let gpu = &self.gpu;
        let mut logits = gpu.scratch(n * classes)?;
        let (wv, bv) = (&get(&self.params, &w)?.value, &get(&self.params, &b)?.value);
        gpu.linear_forward(n, features, classes, &tape.pooled, wv, bv, &mut logits)?;
        let mut dlogits = gpu.scratch(n * classes)?;
        let labels = gpu.upload(labels)?;
        let (loss, correct) = gpu.softmax_cross_entropy(n, global, classes, &logits, &labels, &mut dlogits)?;
        if !loss.is_finite() {
            return Ok((loss, correct));
        }
        let mut dpooled = gpu.scratch(n * features)?;
        let (wp, bp) = two(&mut self.params, &w, &b)?;
        let x = &tape.pooled;
        let dims = (n, features, classes);
        gpu.linear_backward(dims, x, &wp.value, &dlogits, &mut wp.grad, &mut bp.grad, &mut dpooled, accumulate)?;
        let pixels = tape.hw.0 * tape.hw.1;
        let mut g = gpu.scratch(n * pixels * features)?;
        gpu.avgpool_backward(n, pixels, features, &dpooled, &mut g)?;
        self.backward(spec, &tape, g, accumulate)?;
        Ok((loss, correct))
    }

    fn forward(&mut self, spec: &NetSpec, n: usize, hw: Hw, images: &[f32]) -> Result<Tape> {
        let input = self.gpu.upload(&images[..n * hw.0 * hw.1 * 3])?;
        let stem = self.unit_forward(&input, n, hw, &spec.stem, ("conv1", "bn1"), Then::Relu)?;
        let mut hw = spec.stem.out_hw(hw);
        let pool = match spec.max_pool {
            true => {
                let s = PoolShape { c: spec.stem.c_out, kernel: 3, stride: 2, pad: 1, h: hw.0, w: hw.1 };
                let (mut y, mut argmax) = (self.gpu.scratch(n * s.out_len())?, self.gpu.zeros::<u32>(n * s.out_len())?);
                self.gpu.maxpool_forward(&s, n, &stem.post, &mut y, &mut argmax)?;
                hw = (s.out_h(), s.out_w());
                Some((y, argmax))
            }
            false => None,
        };
        let mut blocks = Vec::new();
        for block in &spec.blocks {
            let bt = self.block_forward(trunk_output(&stem, &pool, &blocks), n, hw, block)?;
            hw = block.out_hw(hw);
            blocks.push(bt);
        }
        let mut pooled = self.gpu.scratch(n * spec.features)?;
        self.gpu.avgpool_forward(n, hw.0 * hw.1, spec.features, trunk_output(&stem, &pool, &blocks), &mut pooled)?;
        Ok(Tape { n, input, stem, pool, blocks, hw, pooled })
    }

    /// A block's training forward: its shortcut, then its units, the last one adding the
    /// shortcut before its ReLU.
    fn block_forward(&mut self, x: &Buf, n: usize, hw: Hw, block: &BlockSpec) -> Result<BlockTape> {
        let prefix = &block.name;
        let (projection_name, _) = self.naming;
        let (mut zero_pad, mut projection) = (None, None);
        match &block.shortcut {
            ShortcutSpec::None | ShortcutSpec::Identity => {}
            ShortcutSpec::ZeroPad { stride, pad } => {
                let s = ShortcutA { h: hw.0, w: hw.1, c_in: block.c_in(), stride: *stride, pad: *pad };
                let mut y = self.gpu.zeros::<f32>(n * s.out_h() * s.out_w() * s.c_out())?;
                self.gpu.shortcut_a_forward(&s, n, x, &mut y)?;
                zero_pad = Some(y);
            }
            ShortcutSpec::Projection(p) => {
                let (conv, bn) = (format!("{prefix}.{projection_name}.0"), format!("{prefix}.{projection_name}.1"));
                projection = Some(self.unit_forward(x, n, hw, p, (&conv, &bn), Then::Nothing)?);
            }
        }
        let residual = match &block.shortcut {
            ShortcutSpec::None => None,
            ShortcutSpec::Identity => Some(x),
            ShortcutSpec::ZeroPad { .. } => zero_pad.as_ref(),
            ShortcutSpec::Projection(_) => projection.as_ref().map(|t| &t.post),
        };
        let (mut units, mut cur_hw) = (Vec::<UnitTape>::new(), hw);
        let last = block.units.len() - 1;
        for (i, u) in block.units.iter().enumerate() {
            let (conv, bn) = (format!("{prefix}.conv{}", i + 1), format!("{prefix}.bn{}", i + 1));
            let from = units.last().map_or(x, |t| &t.post);
            let then = match residual {
                Some(r) if i == last => Then::AddRelu(r),
                _ => Then::Relu,
            };
            let t = self.unit_forward(from, n, cur_hw, u, (&conv, &bn), then)?;
            cur_hw = u.out_hw(cur_hw);
            units.push(t);
        }
        Ok(BlockTape { hw, units, projection })
    }

    /// `bn(conv(x))` in training mode, then what `then` says.
    fn unit_forward(
        &mut self,
        x: &Buf,
        n: usize,
        hw: Hw,
        u: &UnitSpec,
        (conv, bn): (&str, &str),
        then: Then,
    ) -> Result<UnitTape> {
        let gpu = &self.gpu;
        let s = u.conv_shape(hw);
        let (c, len, plane) = (u.c_out, n * s.out_len(), s.out_pixels());
        let mut pre = gpu.scratch(len)?;
        gpu.conv_forward(&s, n, x, &get(&self.params, &format!("{conv}.weight"))?.value, &mut pre)?;
        let (residual, relu) = match then {
            Then::Relu => (None, true),
            Then::AddRelu(r) => (Some(r), true),
            Then::Nothing => (None, false),
        };
        let (gamma, beta) =
            (&get(&self.params, &format!("{bn}.weight"))?.value, &get(&self.params, &format!("{bn}.bias"))?.value);
        let layer = BnLayer { gamma, beta, eps: self.eps };
        let groups = bn_group_count(n, self.bn_group);
        let (mut saved, mut post) = (gpu.scratch(groups * 4 * c)?, gpu.scratch(len)?);
        // The running averages follow the first group; the others' go to scratch.
        let (mut spare_mean, mut spare_var) = (gpu.zeros::<f32>(c)?, gpu.zeros::<f32>(c)?);
        let (mean, var) = two(&mut self.running, &format!("{bn}.running_mean"), &format!("{bn}.running_var"))?;
        for k in 0..groups {
            let images = split_range(n, groups, k);
            let values = images.start * plane * c..images.end * plane * c;
            let running = if k == 0 { (&mut *mean, &mut *var) } else { (&mut spare_mean, &mut spare_var) };
            let r = residual.map(|r| r.slice(values.clone()));
            let (x, mut y) = (pre.slice(values.clone()), post.slice_mut(values));
            let mut saved = saved.slice_mut(k * 4 * c..(k + 1) * 4 * c);
            let rows = images.len() * plane;
            gpu.bn_forward_train(&layer, &x, rows, self.bn_momentum, running, &mut saved, r.as_ref(), relu, &mut y)?;
        }
        Ok(UnitTape { hw, pre, saved, post })
    }

    /// The backward pass from `g`, the gradient of the last block's output, down to the
    /// stem's weights; parameter gradients added to what is there with `accumulate`.
    fn backward(&mut self, spec: &NetSpec, tape: &Tape, mut g: Buf, accumulate: bool) -> Result<()> {
        for (b, block) in spec.blocks.iter().enumerate().rev() {
            g = self.block_backward(tape, b, block, g, accumulate)?;
        }
        let n = tape.n;
        if let Some((_, argmax)) = &tape.pool {
            let (h, w) = spec.stem.out_hw(tape.stem.hw);
            let s = PoolShape { c: spec.stem.c_out, kernel: 3, stride: 2, pad: 1, h, w };
            let mut dx = self.gpu.zeros::<f32>(n * s.in_len())?;
            self.gpu.maxpool_backward(&s, n, &g, argmax, &mut dx)?;
            g = dx;
        }
        let unit = (&spec.stem, "conv1", "bn1");
        self.unit_backward(&tape.stem, n, unit, &tape.input, true, g, None, accumulate)
    }

    /// A block's backward from `g`, the gradient of its output: the ReLU after the
    /// addition, the shortcut's gradient into the block input's, then the units in
    /// reverse, the first adding its input gradient. Returns the input's gradient.
    fn block_backward(
        &mut self,
        tape: &Tape,
        b: usize,
        block: &BlockSpec,
        mut g: Buf,
        accumulate: bool,
    ) -> Result<Buf> {
        let (bt, x, n) = (&tape.blocks[b], tape.block_input(b), tape.n);
        let gpu = &self.gpu;
        let mut dx = gpu.zeros::<f32>(n * bt.hw.0 * bt.hw.1 * block.c_in())?;
        let out = &bt.units.last().expect("a block has units").post;
        let prefix = &block.name;
        match &block.shortcut {
            ShortcutSpec::None => gpu.relu_backward(&mut g, out, None)?,
            ShortcutSpec::Identity => gpu.relu_backward(&mut g, out, Some(&mut dx))?,
            ShortcutSpec::ZeroPad { stride, pad } => {
                gpu.relu_backward(&mut g, out, None)?;
                let s = ShortcutA { h: bt.hw.0, w: bt.hw.1, c_in: block.c_in(), stride: *stride, pad: *pad };
                gpu.shortcut_a_backward(&s, n, &g, &mut dx)?;
            }
            ShortcutSpec::Projection(p) => {
                // The projection's BatchNorm backward works in place: on a copy of g.
                let mut copy = gpu.scratch(g.len())?;
                gpu.relu_backward(&mut g, out, Some(&mut copy))?;
                let (projection, _) = self.naming;
                let (conv, bn) = (format!("{prefix}.{projection}.0"), format!("{prefix}.{projection}.1"));
                let t = bt.projection.as_ref().context("a projection block keeps its projection's activations")?;
                self.unit_backward(t, n, (p, &conv, &bn), x, false, copy, Some((&mut dx, false)), accumulate)?;
            }
        }
        let plain = matches!(block.shortcut, ShortcutSpec::None);
        let last = block.units.len() - 1;
        for i in (0..=last).rev() {
            let (u, t, relu) = (&block.units[i], &bt.units[i], i < last);
            let (conv, bn) = (format!("{prefix}.conv{}", i + 1), format!("{prefix}.bn{}", i + 1));
            if i == 0 {
                self.unit_backward(t, n, (u, &conv, &bn), x, relu, g, Some((&mut dx, !plain)), accumulate)?;
                break;
            }
            let mut next = self.gpu.scratch(n * t.hw.0 * t.hw.1 * u.c_in)?;
            let input = &bt.units[i - 1].post;
            self.unit_backward(t, n, (u, &conv, &bn), input, relu, g, Some((&mut next, false)), accumulate)?;
            g = next;
        }
        Ok(dx)
    }

    /// A unit's backward from `g`, the gradient of its BatchNorm's output (masked by the
    /// ReLU here with `relu`): BatchNorm group by group, then the convolution's weight
    /// gradient and, if asked, its input gradient (`(dx, add to it)`). The parameter
    /// gradients are added to what is there with `accumulate`.
    #[allow(clippy::too_many_arguments)]
    fn unit_backward(
        &mut self,
        t: &UnitTape,
        n: usize,
        (u, conv, bn): (&UnitSpec, &str, &str),
        x: &Buf,
        relu: bool,
        mut g: Buf,
        dx: Option<(&mut Buf, bool)>,
        accumulate: bool,
    ) -> Result<()> {
        let gpu = &self.gpu;
        let s = u.conv_shape(t.hw);
        let (c, plane) = (u.c_out, s.out_pixels());
        let groups = bn_group_count(n, self.bn_group);
        let (gamma, beta) = two(&mut self.params, &format!("{bn}.weight"), &format!("{bn}.bias"))?;
        for k in 0..groups {
            let images = split_range(n, groups, k);
            let values = images.start * plane * c..images.end * plane * c;
            let (pre, mut dy) = (t.pre.slice(values.clone()), g.slice_mut(values));
            let saved = t.saved.slice(k * 4 * c..(k + 1) * 4 * c);
            let grads = (&mut gamma.grad, &mut beta.grad);
            let add = accumulate || k > 0;
            gpu.bn_backward(&gamma.value, &pre, images.len() * plane, &saved, relu, &mut dy, grads, add)?;
        }
        let w = self.params.get_mut(&format!("{conv}.weight")).with_context(|| format!("no tensor '{conv}.weight'"))?;
        gpu.conv_backward_weights(&s, n, x, &g, &mut w.grad, accumulate)?;
        if let Some((dx, accumulate)) = dx {
            gpu.conv_backward_data(&s, n, &g, &w.value, dx, accumulate)?;
        }
        Ok(())
    }
}

impl GpuTrainer {
    /// The logits of `n` images in inference mode (BatchNorm on the running statistics),
    /// with the weights as trained so far.
    pub fn logits(&self, n: usize, hw: Hw, images: &[f32]) -> Result<Vec<f32>> {
        Ok(self.inference().forward(n, hw, images, false)?.0)
    }

    /// The inference walk over the weights and running statistics as trained so far.
    fn inference(&self) -> super::Inference<'_> {
        let tensor = Box::new(|name: &str| match self.params.get(name) {
            Some(p) => Ok(&p.value),
            None => get(&self.running, name),
        });
        let (gpu, spec, naming, eps) = (&self.gpu, &self.spec, self.naming, self.eps);
        super::Inference { gpu, spec, naming, eps, tensor }
    }
}

impl crate::train::run::DeviceSteps for GpuTrainer {
    fn step(
        &mut self,
        hw: Hw,
        (images, labels): (&[f32], &[u32]),
        accumulate: usize,
        cfg: SgdConfig,
        transfer: Transfer,
    ) -> Result<(f32, usize)> {
        GpuTrainer::step(self, hw, images, labels, accumulate, cfg, transfer)
    }
    fn store_into(&mut self, model: &mut ResNet) -> Result<()> {
        GpuTrainer::store_into(self, model)
    }
    fn evaluate(
        &mut self,
        data: std::sync::Arc<dyn crate::data::Samples>,
        batch: usize,
        workers: usize,
        progress: &crate::progress::Bar,
    ) -> Result<crate::eval::EvalResult> {
        let logits = |n: usize, hw: Hw, images: &[f32]| self.logits(n, hw, images);
        crate::eval::evaluate_by(self.spec.classes, data, batch, workers, progress, logits)
    }
}
