//! The CIFAR-10 networks of §4.2: a 3×3 conv with 16 filters, three stages of n basic
//! blocks at 16/32/64 filters (stride 2 at the start of stages 2 and 3), global
//! average pooling and a fully connected classifier. 6n+2 weighted layers.

use super::{BasicBlock, Shortcut};
use crate::engine::{Workspace, conv::ConvShape, ensure_len, ops};
use crate::nn::{BatchNorm2d, Conv2d, Linear, Named, Param, Slot};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CifarConfig {
    /// Blocks per stage (depth = 6n+2).
    pub n: usize,
    pub residual: bool,
    pub shortcut: Shortcut,
    pub classes: usize,
    /// Input height and width (32 for CIFAR; smaller sizes help tests).
    pub image_size: usize,
}

impl CifarConfig {
    pub fn from_name(name: &str, shortcut: Shortcut, classes: usize) -> anyhow::Result<Self> {
        let (n, residual) = super::parse_cifar_name(name)?;
        Ok(CifarConfig { n, residual, shortcut, classes, image_size: 32 })
    }
    pub fn depth(&self) -> usize {
        6 * self.n + 2
    }
    pub fn name(&self) -> String {
        format!("{}{}", if self.residual { "resnet" } else { "plain" }, self.depth())
    }
}

/// One row of `resnet info`'s layer table.
pub struct LayerRow {
    pub name: String,
    pub output: String,
    pub detail: String,
    pub params: usize,
    pub mult_adds: usize,
}

pub struct CifarResNet {
    pub config: CifarConfig,
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub blocks: Vec<BasicBlock>,
    pub linear: Linear,
    ws: Workspace,
    capacity: usize,
    input: Vec<f32>,
    c1: Vec<f32>,
    a1: Vec<f32>,
    pooled: Vec<f32>,
    logits: Vec<f32>,
    // Gradient buffers, shared by all blocks (ping-pong plus two scratch).
    grads: [Vec<f32>; 4],
    dpooled: Vec<f32>,
}

const WIDTHS: [usize; 3] = [16, 32, 64];

impl CifarResNet {
    pub fn new(config: CifarConfig, seed: u64) -> Self {
        let mut rng = Rng::derive(seed, 0x1417, 0);
        let s = config.image_size;
        let conv1 = Conv2d::new(ConvShape { c_in: 3, c_out: 16, kernel: 3, stride: 1, pad: 1, h: s, w: s }, &mut rng);
        let mut blocks = Vec::new();
        let (mut c, mut h) = (16, s);
        for (stage, &planes) in WIDTHS.iter().enumerate() {
            for i in 0..config.n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let shortcut = config.residual.then_some(config.shortcut);
                let block = BasicBlock::new(c, planes, stride, h, h, shortcut, &mut rng);
                h = block.out_shape().0;
                c = planes;
                blocks.push(block);
            }
        }
        let linear = Linear::new(64, config.classes, &mut rng);
        CifarResNet {
            config,
            conv1,
            bn1: BatchNorm2d::new(16),
            blocks,
            linear,
            ws: Workspace::new(),
            capacity: 0,
            input: Vec::new(),
            c1: Vec::new(),
            a1: Vec::new(),
            pooled: Vec::new(),
            logits: Vec::new(),
            grads: Default::default(),
            dpooled: Vec::new(),
        }
    }

    /// Elements of one input image (HWC).
    pub fn image_len(&self) -> usize {
        self.conv1.shape.in_len()
    }

    fn reserve(&mut self, n: usize) {
        if n <= self.capacity {
            return;
        }
        let stem = n * self.conv1.shape.out_len();
        let image = self.image_len();
        ensure_len(&mut self.input, n * image);
        ensure_len(&mut self.c1, stem);
        ensure_len(&mut self.a1, stem);
        ensure_len(&mut self.pooled, n * 64);
        ensure_len(&mut self.dpooled, n * 64);
        ensure_len(&mut self.logits, n * self.config.classes);
        let mut largest = stem;
        for b in &mut self.blocks {
            b.reserve(n);
            largest = largest.max(n * b.out_len());
        }
        for g in &mut self.grads {
            ensure_len(g, largest);
        }
        self.capacity = n;
    }

    /// Runs `n` NHWC images; returns the logits `[n, classes]`. `train` selects
    /// BatchNorm's batch statistics (and updates its running averages).
    pub fn forward(&mut self, train: bool, n: usize, images: &[f32]) -> &[f32] {
        self.reserve(n);
        let len = n * self.image_len();
        self.input[..len].copy_from_slice(&images[..len]);
        let rows = n * self.conv1.shape.out_pixels();
        self.conv1.forward(n, &self.input, &mut self.c1, &mut self.ws);
        self.bn1.forward(train, rows, &self.c1, None, true, &mut self.a1);
        for i in 0..self.blocks.len() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = before.last().map_or(&self.a1, |b| &b.out);
            rest[0].forward(train, n, x, &mut self.ws);
        }
        let last = self.blocks.last().expect("at least one block");
        let (h, w, c) = last.out_shape();
        ops::avgpool_forward(n, h * w, c, &last.out, &mut self.pooled);
        self.linear.forward(n, &self.pooled, &mut self.logits);
        &self.logits[..n * self.config.classes]
    }

    /// Backpropagates dL/dlogits through the network run by the last `forward(true, n, ..)`,
    /// writing every parameter's gradient.
    pub fn backward(&mut self, n: usize, dlogits: &[f32]) {
        let [ga, gb, t1, t2] = &mut self.grads;
        self.linear.backward(n, &self.pooled, dlogits, &mut self.dpooled);
        let last = self.blocks.last().expect("at least one block");
        let (h, w, c) = last.out_shape();
        ops::avgpool_backward(n, h * w, c, &self.dpooled, ga);
        let (mut g, mut dx) = (ga, gb);
        for i in (0..self.blocks.len()).rev() {
            let (before, rest) = self.blocks.split_at_mut(i);
            let x = before.last().map_or(&self.a1, |b| &b.out);
            rest[0].backward(n, x, g, dx, t1, t2, &mut self.ws);
            std::mem::swap(&mut g, &mut dx);
        }
        let rows = n * self.conv1.shape.out_pixels();
        self.bn1.backward(rows, &self.c1, Some(&self.a1), g);
        self.conv1.backward(n, &self.input, g, None, &mut self.ws);
    }

    /// The state dict, in PyTorch's order and naming (`conv1.weight`, `layer1.0.bn2.bias`, ...).
    pub fn named(&mut self) -> Vec<Named<'_>> {
        let mut out = Vec::new();
        self.conv1.named("conv1", &mut out);
        self.bn1.named("bn1", &mut out);
        let n = self.config.n;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            b.named(&format!("layer{}.{}", i / n + 1, i % n), &mut out);
        }
        self.linear.named("linear", &mut out);
        out
    }

    /// Visits every trainable parameter (no allocation: used by the optimizer each step).
    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.conv1.for_each_param(f);
        self.bn1.for_each_param(f);
        for b in &mut self.blocks {
            b.for_each_param(f);
        }
        self.linear.for_each_param(f);
    }

    /// Number of trainable parameters.
    pub fn param_count(&mut self) -> usize {
        self.named().iter().filter(|t| matches!(t.slot, Slot::Param(_))).map(|t| t.value().len()).sum()
    }

    /// Multiply-adds of one forward pass of one image.
    pub fn mult_adds(&self) -> usize {
        self.conv1.mult_adds() + self.blocks.iter().map(|b| b.mult_adds()).sum::<usize>() + 64 * self.config.classes
    }

    pub fn layer_table(&mut self) -> Vec<LayerRow> {
        let s = self.config.image_size;
        let mut rows = vec![LayerRow {
            name: "conv1".into(),
            output: format!("{s}x{s}x16"),
            detail: "3x3, 16, stride 1 + BN + ReLU".into(),
            params: self.conv1.shape.weight_len() + 32,
            mult_adds: self.conv1.mult_adds(),
        }];
        let n = self.config.n;
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let (h, w, c) = b.out_shape();
            let stride = b.conv1.shape.stride;
            let name = format!("layer{}.{}", i / n + 1, i % n);
            let mut named = Vec::new();
            b.named("", &mut named);
            let params = named.iter().filter(|t| matches!(t.slot, Slot::Param(_))).map(|t| t.value().len()).sum();
            rows.push(LayerRow {
                name,
                output: format!("{h}x{w}x{c}"),
                detail: format!("[3x3, {c}] x2, stride {stride}, shortcut {}", b.shortcut_label()),
                params,
                mult_adds: b.mult_adds(),
            });
        }
        let k = self.config.classes;
        rows.push(LayerRow {
            name: "avgpool+linear".into(),
            output: format!("{k}"),
            detail: format!("global average pool, fc 64->{k}"),
            params: 64 * k + k,
            mult_adds: 64 * k,
        });
        rows
    }
}
