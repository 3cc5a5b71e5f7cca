//! The residual block, basic or bottleneck (Fig. 5 of the paper), as a chain of conv→BN
//! units with a ReLU after each but the last; the shortcut is added before the final
//! ReLU: `out = relu(bn_k(conv_k(... relu(bn_1(conv_1(x))))) + shortcut(x))`.
//! Basic: 3×3, 3×3. Bottleneck: 1×1, 3×3, 1×1 (4× wider output).

use super::spec::{BlockSpec, ShortcutSpec, UnitSpec};
use crate::engine::device::InputGrad;
use crate::engine::device::{self, DeviceVec, Residual, View, ViewMut};
use crate::engine::{Workspace, ops::ShortcutA};
use crate::nn::{BatchNorm2d, Conv2d, Named, Param};
use crate::rng::Rng;

/// Spatial size of a feature map.
pub type Hw = (usize, usize);

/// One conv→BN layer with the activations its backward pass needs.
pub struct ConvBn {
    pub conv: Conv2d,
    pub bn: BatchNorm2d,
    /// Conv output (BN input) and BN(+ReLU) output, saved in training mode, and the
    /// input size they were computed for.
    pre: DeviceVec,
    post: DeviceVec,
    in_hw: Hw,
}

impl ConvBn {
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, rng: &mut Rng) -> Self {
        let conv = Conv2d::new(c_in, c_out, kernel, stride, rng);
        ConvBn {
            conv,
            bn: BatchNorm2d::new(c_out),
            pre: DeviceVec::default(),
            post: DeviceVec::default(),
            in_hw: (0, 0),
        }
    }

    /// `post = [relu](bn(conv(x)) [+ residual])`, the conv output going to `pre`.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn run(
        &mut self,
        train: bool,
        n: usize,
        hw: Hw,
        x: View,
        pre: &mut DeviceVec,
        residual: Option<View>,
        relu: bool,
        post: ViewMut,
        ws: &mut Workspace,
    ) {
        self.in_hw = hw;
        self.conv.forward(n, hw, x, pre.view_mut(), ws);
        let (oh, ow) = self.conv.out_hw(hw.0, hw.1);
        self.bn.forward(train, n, n * oh * ow, pre.view(), residual, relu, post, ws);
    }

    /// Training forward into the unit's own saved buffers.
    pub(super) fn forward_saved(
        &mut self,
        n: usize,
        hw: Hw,
        x: View,
        residual: Option<View>,
        relu: bool,
        ws: &mut Workspace,
    ) {
        let (mut pre, mut post) = (std::mem::take(&mut self.pre), std::mem::take(&mut self.post));
        self.run(true, n, hw, x, &mut pre, residual, relu, post.view_mut(), ws);
        (self.pre, self.post) = (pre, post);
    }

    /// Backward of the last training forward. `g`: dL/d(post) on entry, dL/d(pre) after
    /// BN; then the conv's input gradient goes to `dx` as it says. `relu`: the unit's own
    /// ReLU, straight after its BN (a ReLU after a residual addition is the block's).
    pub(super) fn backward(
        &mut self,
        n: usize,
        x: View,
        relu: bool,
        mut g: ViewMut,
        dx: InputGrad<ViewMut>,
        ws: &mut Workspace,
    ) {
        self.bn.backward(self.pre.view(), relu, g.reborrow(), ws);
        self.conv.backward(n, self.in_hw, x, g.view(), dx, ws);
    }

    /// Sizes the saved activations for `len` outputs; `post` only where this unit's own
    /// output is kept (a block's last unit writes the block output instead).
    pub(super) fn reserve(&mut self, len: usize, post: bool) {
        self.pre.ensure_len(len);
        if post {
            self.post.ensure_len(len);
        }
    }

    /// The saved BN(+ReLU) output of the last training forward.
    pub fn post(&self) -> View<'_> {
        self.post.view()
    }

    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.conv.for_each_param(f);
        self.bn.for_each_param(f);
    }

    /// State-dict entries `{conv}.weight` and `{bn}.*`.
    pub fn named<'a>(&'a mut self, conv: &str, bn: &str, out: &mut Vec<Named<'a>>) {
        self.conv.named(conv, out);
        self.bn.named(bn, out);
    }
}

#[allow(clippy::large_enum_variant)] // one per block; boxing buys nothing
enum ShortcutPath {
    /// No shortcut: the plain network.
    None,
    Identity,
    /// Option A where dimensions grow: subsample, zero-pad channels.
    ZeroPad {
        stride: usize,
        pad: usize,
        out: DeviceVec,
    },
    /// Options B/C: 1×1 conv (strided where the map shrinks) + BN.
    Projection(ConvBn),
}

/// Which layer of a bottleneck block carries the stride.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum StrideAt {
    /// The first 1×1 conv: the paper's original (Caffe release).
    First1x1,
    /// The 3×3 conv: torchvision's "ResNet v1.5".
    Conv3x3,
}

pub struct Block {
    pub units: Vec<ConvBn>,
    shortcut: ShortcutPath,
    c_in: usize,
    /// The block output, saved in training mode (the next block's input).
    pub out: DeviceVec,
}

impl Block {
    /// The block `spec` describes, initialized from `rng` unit by unit, the projection last.
    pub fn from_spec(spec: &BlockSpec, rng: &mut Rng) -> Self {
        let unit = |u: &UnitSpec, rng: &mut Rng| ConvBn::new(u.c_in, u.c_out, u.kernel, u.stride, rng);
        let units: Vec<ConvBn> = spec.units.iter().map(|u| unit(u, rng)).collect();
        let shortcut = match spec.shortcut {
            ShortcutSpec::None => ShortcutPath::None,
            ShortcutSpec::Identity => ShortcutPath::Identity,
            ShortcutSpec::ZeroPad { stride, pad } => ShortcutPath::ZeroPad { stride, pad, out: DeviceVec::default() },
            ShortcutSpec::Projection(p) => ShortcutPath::Projection(unit(&p, rng)),
        };
        Block { units, shortcut, c_in: spec.c_in(), out: DeviceVec::default() }
    }

    pub fn c_out(&self) -> usize {
        self.units.last().expect("a block has units").conv.c_out
    }
    pub fn stride(&self) -> usize {
        self.units.iter().map(|u| u.conv.stride).product()
    }

    pub fn out_hw(&self, hw: Hw) -> Hw {
        self.units.iter().fold(hw, |(h, w), u| u.conv.out_hw(h, w))
    }

    /// Every BatchNorm layer of the block, the projection shortcut's included.
    pub fn for_each_bn(&mut self, f: &mut dyn FnMut(&mut BatchNorm2d)) {
        for u in &mut self.units {
            f(&mut u.bn);
        }
        if let ShortcutPath::Projection(p) = &mut self.shortcut {
            f(&mut p.bn);
        }
    }

    /// Makes sure every saved activation can hold `n` images of size `hw`.
    fn reserve(&mut self, n: usize, hw: Hw) {
        let mut cur = hw;
        let last = self.units.len() - 1;
        for (i, u) in self.units.iter_mut().enumerate() {
            u.reserve(n * u.conv.shape(cur.0, cur.1).out_len(), i < last);
            cur = u.conv.out_hw(cur.0, cur.1);
        }
        let out_len = n * cur.0 * cur.1 * self.c_out();
        self.out.ensure_len(out_len);
        match &mut self.shortcut {
            ShortcutPath::ZeroPad { out, .. } => out.ensure_len(out_len),
            ShortcutPath::Projection(p) => p.reserve(out_len, true),
            _ => {}
        }
    }

    /// Training forward: saves every activation; the output goes to `self.out`.
    pub fn forward_train(&mut self, n: usize, hw: Hw, x: View, ws: &mut Workspace) {
        self.reserve(n, hw);
        let residual: Option<View> = match &mut self.shortcut {
            ShortcutPath::None => None,
            ShortcutPath::Identity => Some(x),
            ShortcutPath::ZeroPad { stride, pad, out } => {
                let s = ShortcutA { h: hw.0, w: hw.1, c_in: self.c_in, stride: *stride, pad: *pad };
                device::shortcut_a_forward(&s, n, x, out.view_mut());
                Some(out.view())
            }
            ShortcutPath::Projection(p) => {
                p.forward_saved(n, hw, x, None, false, ws);
                Some(p.post.view())
            }
        };
        let last = self.units.len() - 1;
        let mut cur = hw;
        for i in 0..=last {
            let (before, rest) = self.units.split_at_mut(i);
            let (input, u) = (before.last().map_or(x, |u| u.post.view()), &mut rest[0]);
            if i < last {
                u.forward_saved(n, cur, input, None, true, ws);
            } else {
                // The last BN adds the shortcut, applies the ReLU and writes the block output.
                let (mut pre, mut out) = (std::mem::take(&mut u.pre), std::mem::take(&mut self.out));
                u.run(true, n, cur, input, &mut pre, residual, true, out.view_mut(), ws);
                (u.pre, self.out) = (pre, out);
            }
            cur = u.conv.out_hw(cur.0, cur.1);
        }
    }

    /// Inference forward with borrowed scratch (nothing saved): `io` holds the block's
    /// input on entry and its output on return. Each conv applies its BatchNorm (and the
    /// residual and ReLU) as it writes its output. The last writes over the shortcut's
    /// values (`Residual::InOutput`): over the input itself for an identity shortcut, so
    /// the block needs no output buffer of its own, and the residual's lines are already
    /// in cache when the output is stored. `io` and the three scratch buffers `t` hold at
    /// least `max_len(n, hw)` elements each.
    pub fn forward_eval(&mut self, n: usize, hw: Hw, io: &mut DeviceVec, t: &mut [DeviceVec; 3], ws: &mut Workspace) {
        let [a, b, s] = t;
        // The shortcut's values, and so the output, end in `io` or in `s`.
        let (residual, output_in_s) = match &mut self.shortcut {
            ShortcutPath::None => (Residual::None, false),
            ShortcutPath::Identity => (Residual::InOutput, false),
            ShortcutPath::ZeroPad { stride, pad, .. } => {
                let shape = ShortcutA { h: hw.0, w: hw.1, c_in: self.c_in, stride: *stride, pad: *pad };
                device::shortcut_a_forward(&shape, n, io.view(), s.view_mut());
                (Residual::InOutput, true)
            }
            ShortcutPath::Projection(p) => {
                let epi = p.bn.epilogue(Residual::None, false);
                p.conv.forward_fused(n, hw, io.view(), s.view_mut(), epi, ws);
                (Residual::InOutput, true)
            }
        };
        // Unit i writes `a` (even i) or `b` (odd i) and the next reads it; the last writes
        // the output. Only the first unit reads the input, so a plain block's last unit
        // may write over it too.
        let last = self.units.len() - 1;
        assert!(last > 0, "a block has at least two units");
        let mut cur = hw;
        for (i, u) in self.units.iter_mut().enumerate() {
            let (src, dst, residual) = match (i, i == last) {
                (0, _) => (io.view(), a.view_mut(), Residual::None),
                (_, false) if i % 2 == 1 => (a.view(), b.view_mut(), Residual::None),
                (_, false) => (b.view(), a.view_mut(), Residual::None),
                (_, true) => {
                    let src = if i % 2 == 1 { a.view() } else { b.view() };
                    (src, if output_in_s { s.view_mut() } else { io.view_mut() }, residual)
                }
            };
            let epi = u.bn.epilogue(residual, true);
            u.conv.forward_fused(n, cur, src, dst, epi, ws);
            cur = u.conv.out_hw(cur.0, cur.1);
        }
        if output_in_s {
            std::mem::swap(io, s);
        }
    }

    /// Backward of the last training forward (input `x` of size `hw`). `g`: dL/d(out) on
    /// entry (clobbered). Writes dL/dx to `dx`. `t1`, `t2`: scratch of at least `max_len`.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        n: usize,
        hw: Hw,
        x: View,
        g: ViewMut,
        dx: ViewMut,
        t1: ViewMut,
        t2: ViewMut,
        ws: &mut Workspace,
    ) {
        let (oh, ow) = self.out_hw(hw);
        let out_len = n * oh * ow * self.c_out();
        let in_len = n * hw.0 * hw.1 * self.c_in;
        let (mut g, mut dx) = (g.slice_mut(..out_len), dx.slice_mut(..in_len));
        // The ReLU after the addition, and the shortcut's gradient into dx; the first unit
        // then adds its own, except in a plain network.
        let out = self.out.slice(..out_len);
        match &mut self.shortcut {
            ShortcutPath::None => device::relu_backward(g.reborrow(), out, None),
            ShortcutPath::Identity => device::relu_backward(g.reborrow(), out, Some(dx.reborrow())),
            ShortcutPath::ZeroPad { stride, pad, .. } => {
                device::relu_backward(g.reborrow(), out, None);
                let s = ShortcutA { h: hw.0, w: hw.1, c_in: self.c_in, stride: *stride, pad: *pad };
                device::shortcut_a_backward(&s, n, g.view(), dx.reborrow());
            }
            ShortcutPath::Projection(p) => {
                // The projection's BN backward works in place: on a copy of g.
                let mut t2 = t2.slice_mut(..out_len);
                device::relu_backward(g.reborrow(), out, Some(t2.reborrow()));
                p.backward(n, x, false, t2, InputGrad::Set(dx.reborrow()), ws);
            }
        }
        let plain = matches!(self.shortcut, ShortcutPath::None);
        // Walk the units backwards, the gradient alternating between `g` and `t1`. The last
        // unit's ReLU came after the addition (masked above); the others' are their own.
        let (mut cur, mut next) = (g, t1);
        let last = self.units.len() - 1;
        for i in (0..=last).rev() {
            let (before, rest) = self.units.split_at_mut(i);
            let (u, relu) = (&mut rest[0], i < last);
            if i == 0 {
                let dx = if plain { InputGrad::Set(dx.reborrow()) } else { InputGrad::Add(dx.reborrow()) };
                u.backward(n, x, relu, cur.reborrow(), dx, ws);
            } else {
                let (h, w) = u.in_hw;
                let len = n * h * w * u.conv.c_in;
                let dx = InputGrad::Set(next.reborrow().slice_mut(..len));
                u.backward(n, before[i - 1].post.view(), relu, cur.reborrow(), dx, ws);
                std::mem::swap(&mut cur, &mut next);
            }
        }
    }

    /// Multiply-adds of one image of size `hw`.
    pub fn mult_adds(&self, hw: Hw) -> usize {
        let mut total = match &self.shortcut {
            ShortcutPath::Projection(p) => p.conv.mult_adds(hw.0, hw.1),
            _ => 0,
        };
        let mut cur = hw;
        for u in &self.units {
            total += u.conv.mult_adds(cur.0, cur.1);
            cur = u.conv.out_hw(cur.0, cur.1);
        }
        total
    }

    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        for u in &mut self.units {
            u.for_each_param(f);
        }
        if let ShortcutPath::Projection(p) = &mut self.shortcut {
            p.for_each_param(f);
        }
    }

    /// State-dict entries: `{prefix}.conv1`, `.bn1`, ... and the projection as
    /// `{prefix}.{projection}.0` (conv) and `.1` (BN), e.g. torchvision's `downsample`.
    pub fn named<'a>(&'a mut self, prefix: &str, projection: &str, out: &mut Vec<Named<'a>>) {
        for (i, u) in self.units.iter_mut().enumerate() {
            u.named(&format!("{prefix}.conv{}", i + 1), &format!("{prefix}.bn{}", i + 1), out);
        }
        if let ShortcutPath::Projection(p) = &mut self.shortcut {
            p.named(&format!("{prefix}.{projection}.0"), &format!("{prefix}.{projection}.1"), out);
        }
    }

    /// Inference: the shortcut's values for input `x` (BatchNorm of a projection on its
    /// running statistics) into `out`; false for a plain block, which has none.
    pub fn shortcut_eval(&mut self, n: usize, hw: Hw, x: View, out: &mut DeviceVec, ws: &mut Workspace) -> bool {
        let (oh, ow) = self.out_hw(hw);
        out.ensure_len(n * oh * ow * self.c_out());
        match &mut self.shortcut {
            ShortcutPath::None => return false,
            ShortcutPath::Identity => device::copy(out.slice_mut(..x.len()), x),
            ShortcutPath::ZeroPad { stride, pad, .. } => {
                let shape = ShortcutA { h: hw.0, w: hw.1, c_in: self.c_in, stride: *stride, pad: *pad };
                device::shortcut_a_forward(&shape, n, x, out.view_mut());
            }
            ShortcutPath::Projection(p) => {
                let epi = p.bn.epilogue(Residual::None, false);
                p.conv.forward_fused(n, hw, x, out.view_mut(), epi, ws);
            }
        }
        true
    }

    /// The 1×1 conv + BN of a projection shortcut (options B and C).
    pub fn projection(&self) -> Option<&ConvBn> {
        match &self.shortcut {
            ShortcutPath::Projection(p) => Some(p),
            _ => None,
        }
    }

    pub fn shortcut_label(&self) -> &'static str {
        match self.shortcut {
            ShortcutPath::None => "none",
            ShortcutPath::Identity => "identity",
            ShortcutPath::ZeroPad { .. } => "zero-pad (A)",
            ShortcutPath::Projection(_) => "projection",
        }
    }
}

impl crate::nn::ParamGroup for ConvBn {
    fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        ConvBn::for_each_param(self, f)
    }
}

impl crate::nn::ParamGroup for Block {
    fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        Block::for_each_param(self, f)
    }
}
