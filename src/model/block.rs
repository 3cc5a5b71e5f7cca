//! The basic residual block of the CIFAR networks: two 3×3 convs with BN, ReLU
//! between them, the shortcut added before the final ReLU (Fig. 2 of the paper).

use super::Shortcut;
use crate::engine::{Workspace, conv::ConvShape, ops, ops::ShortcutA};
use crate::nn::{BatchNorm2d, Conv2d, Named, Param};
use crate::rng::Rng;

#[allow(clippy::large_enum_variant)] // one per block; boxing buys nothing
enum ShortcutPath {
    /// No shortcut: the plain network.
    None,
    Identity,
    ZeroPad {
        op: ShortcutA,
        out: Vec<f32>,
    },
    Projection {
        conv: Conv2d,
        bn: BatchNorm2d,
        conv_out: Vec<f32>,
        out: Vec<f32>,
    },
}

pub struct BasicBlock {
    pub conv1: Conv2d,
    pub bn1: BatchNorm2d,
    pub conv2: Conv2d,
    pub bn2: BatchNorm2d,
    shortcut: ShortcutPath,
    // Activations saved for the backward pass (NHWC, sized for the largest batch seen).
    c1: Vec<f32>,
    a1: Vec<f32>,
    c2: Vec<f32>,
    pub out: Vec<f32>,
}

impl BasicBlock {
    /// A block from `c_in` channels at `h×w` to `planes` channels, first conv strided.
    pub fn new(
        c_in: usize,
        planes: usize,
        stride: usize,
        h: usize,
        w: usize,
        shortcut: Option<Shortcut>,
        rng: &mut Rng,
    ) -> Self {
        let s1 = ConvShape { c_in, c_out: planes, kernel: 3, stride, pad: 1, h, w };
        let s2 = ConvShape { c_in: planes, c_out: planes, kernel: 3, stride: 1, pad: 1, h: s1.out_h(), w: s1.out_w() };
        let conv1 = Conv2d::new(s1, rng);
        let conv2 = Conv2d::new(s2, rng);
        let grows = stride != 1 || c_in != planes;
        let projection = |rng: &mut Rng| ShortcutPath::Projection {
            conv: Conv2d::new(ConvShape { c_in, c_out: planes, kernel: 1, stride, pad: 0, h, w }, rng),
            bn: BatchNorm2d::new(planes),
            conv_out: Vec::new(),
            out: Vec::new(),
        };
        let shortcut = match shortcut {
            None => ShortcutPath::None,
            Some(Shortcut::C) => projection(rng),
            Some(Shortcut::B) if grows => projection(rng),
            Some(Shortcut::A) if grows => {
                assert!((planes - c_in).is_multiple_of(2), "option A needs an even channel increase");
                ShortcutPath::ZeroPad {
                    op: ShortcutA { h, w, c_in, stride, pad: (planes - c_in) / 2 },
                    out: Vec::new(),
                }
            }
            Some(_) => ShortcutPath::Identity,
        };
        BasicBlock {
            conv1,
            bn1: BatchNorm2d::new(planes),
            conv2,
            bn2: BatchNorm2d::new(planes),
            shortcut,
            c1: Vec::new(),
            a1: Vec::new(),
            c2: Vec::new(),
            out: Vec::new(),
        }
    }

    pub fn in_len(&self) -> usize {
        self.conv1.shape.in_len()
    }
    pub fn out_len(&self) -> usize {
        self.conv2.shape.out_len()
    }
    pub fn out_shape(&self) -> (usize, usize, usize) {
        let s = self.conv2.shape;
        (s.out_h(), s.out_w(), s.c_out)
    }

    /// Makes sure every saved activation can hold `n` images.
    pub fn reserve(&mut self, n: usize) {
        let len = n * self.out_len();
        for v in [&mut self.c1, &mut self.a1, &mut self.c2, &mut self.out] {
            crate::engine::ensure_len(v, len);
        }
        match &mut self.shortcut {
            ShortcutPath::ZeroPad { out, .. } => crate::engine::ensure_len(out, len),
            ShortcutPath::Projection { conv_out, out, .. } => {
                crate::engine::ensure_len(conv_out, len);
                crate::engine::ensure_len(out, len);
            }
            _ => {}
        }
    }

    pub fn forward(&mut self, train: bool, n: usize, x: &[f32], ws: &mut Workspace) {
        let rows = n * self.conv2.shape.out_pixels();
        self.conv1.forward(n, x, &mut self.c1, ws);
        self.bn1.forward(train, rows, &self.c1, None, true, &mut self.a1);
        self.conv2.forward(n, &self.a1, &mut self.c2, ws);
        let residual: Option<&[f32]> = match &mut self.shortcut {
            ShortcutPath::None => None,
            ShortcutPath::Identity => Some(x),
            ShortcutPath::ZeroPad { op, out } => {
                op.forward(n, x, out);
                Some(out.as_slice())
            }
            ShortcutPath::Projection { conv, bn, conv_out, out } => {
                conv.forward(n, x, conv_out, ws);
                bn.forward(train, rows, conv_out, None, false, out);
                Some(out.as_slice())
            }
        };
        self.bn2.forward(train, rows, &self.c2, residual, true, &mut self.out);
    }

    /// `g`: dL/d(out) on entry (clobbered). Writes dL/dx to `dx`. `t1`, `t2`: scratch
    /// of at least `n * out_len()` elements each.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        n: usize,
        x: &[f32],
        g: &mut [f32],
        dx: &mut [f32],
        t1: &mut [f32],
        t2: &mut [f32],
        ws: &mut Workspace,
    ) {
        let rows = n * self.conv2.shape.out_pixels();
        let (out_len, in_len) = (n * self.out_len(), n * self.in_len());
        let (g, dx, t1) = (&mut g[..out_len], &mut dx[..in_len], &mut t1[..out_len]);
        ops::relu_backward_inplace(g, &self.out);
        match &mut self.shortcut {
            ShortcutPath::None => dx.fill(0.0),
            ShortcutPath::Identity => dx.copy_from_slice(g),
            ShortcutPath::ZeroPad { op, .. } => op.backward(n, g, dx),
            ShortcutPath::Projection { conv, bn, conv_out, .. } => {
                let t2 = &mut t2[..out_len];
                t2.copy_from_slice(g);
                bn.backward(rows, conv_out, None, t2);
                dx.fill(0.0);
                conv.backward(n, x, t2, Some(dx), ws);
            }
        }
        self.bn2.backward(rows, &self.c2, None, g);
        t1.fill(0.0);
        self.conv2.backward(n, &self.a1, g, Some(t1), ws);
        self.bn1.backward(rows, &self.c1, Some(&self.a1), t1);
        self.conv1.backward(n, x, t1, Some(dx), ws);
    }

    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.conv1.for_each_param(f);
        self.bn1.for_each_param(f);
        self.conv2.for_each_param(f);
        self.bn2.for_each_param(f);
        if let ShortcutPath::Projection { conv, bn, .. } = &mut self.shortcut {
            conv.for_each_param(f);
            bn.for_each_param(f);
        }
    }

    pub fn mult_adds(&self) -> usize {
        let proj = match &self.shortcut {
            ShortcutPath::Projection { conv, .. } => conv.mult_adds(),
            _ => 0,
        };
        self.conv1.mult_adds() + self.conv2.mult_adds() + proj
    }

    /// State-dict entries, named as the published PyTorch CIFAR ResNets.
    pub fn named<'a>(&'a mut self, prefix: &str, out: &mut Vec<Named<'a>>) {
        self.conv1.named(&format!("{prefix}.conv1"), out);
        self.bn1.named(&format!("{prefix}.bn1"), out);
        self.conv2.named(&format!("{prefix}.conv2"), out);
        self.bn2.named(&format!("{prefix}.bn2"), out);
        if let ShortcutPath::Projection { conv, bn, .. } = &mut self.shortcut {
            conv.named(&format!("{prefix}.shortcut.0"), out);
            bn.named(&format!("{prefix}.shortcut.1"), out);
        }
    }

    pub fn shortcut_label(&self) -> &'static str {
        match self.shortcut {
            ShortcutPath::None => "none",
            ShortcutPath::Identity => "identity",
            ShortcutPath::ZeroPad { .. } => "zero-pad (A)",
            ShortcutPath::Projection { .. } => "projection",
        }
    }
}
