use super::{Layout, Named, Param, Slot};
use crate::engine::device::{self, Epilogue, View, ViewMut};
use crate::engine::device::{InputGrad, Prepared};
use crate::engine::{Workspace, conv::ConvShape};
use crate::rng::Rng;

/// A bias-free 2-D convolution (every conv in a ResNet is followed by BN). The spatial
/// size is given per call, so one network runs on any input size.
pub struct Conv2d {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    /// Private, so that every change to it goes through `&mut self` methods that drop
    /// `prepared`.
    weight: Param,
    /// The weights as the inference kernels read them, made on first use.
    prepared: Prepared,
}

impl Conv2d {
    /// A `kernel`×`kernel` conv with "same" padding (`kernel / 2`), as every ResNet conv.
    pub fn new(c_in: usize, c_out: usize, kernel: usize, stride: usize, rng: &mut Rng) -> Self {
        // fan_out, as torchvision's kaiming_normal_(mode="fan_out") for ResNets.
        let fan = c_out * kernel * kernel;
        let weight = Param::he_normal(c_out * kernel * kernel * c_in, fan, rng);
        Conv2d { c_in, c_out, kernel, stride, pad: kernel / 2, weight, prepared: Default::default() }
    }
    pub fn weight(&self) -> &Param {
        &self.weight
    }
    pub fn shape(&self, h: usize, w: usize) -> ConvShape {
        ConvShape { c_in: self.c_in, c_out: self.c_out, kernel: self.kernel, stride: self.stride, pad: self.pad, h, w }
    }
    /// Output height and width for an `h`×`w` input.
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        let s = self.shape(h, w);
        (s.out_h(), s.out_w())
    }
    pub fn forward(&self, n: usize, (h, w): (usize, usize), x: View, y: ViewMut, ws: &mut Workspace) {
        device::conv_forward(&self.shape(h, w), n, x, self.weight.value.view(), y, ws);
    }
    /// `y = epilogue(conv(x))`: inference with BatchNorm, residual and ReLU fused in, on
    /// weights prepared for it on the first call.
    pub fn forward_fused(
        &mut self,
        n: usize,
        (h, w): (usize, usize),
        x: View,
        y: ViewMut,
        epi: Epilogue,
        ws: &mut Workspace,
    ) {
        let s = self.shape(h, w);
        device::conv_forward_fused(&s, n, x, self.weight.value.view(), y, epi, &mut self.prepared, ws);
    }
    /// Writes the weight gradient, and the input gradient as `dx` says.
    pub fn backward(
        &mut self,
        n: usize,
        (h, w): (usize, usize),
        x: View,
        dy: View,
        dx: InputGrad<ViewMut>,
        ws: &mut Workspace,
    ) {
        let (s, w) = (self.shape(h, w), &mut self.weight);
        device::conv_backward(&s, n, x, w.value.view(), dy, w.grad.view_mut(), dx, ws);
    }
    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.prepared = Default::default();
        f(&mut self.weight);
    }
    /// Multiply-adds for one `h`×`w` input image.
    pub fn mult_adds(&self, h: usize, w: usize) -> usize {
        let s = self.shape(h, w);
        s.out_pixels() * s.weight_len()
    }
    pub fn named<'a>(&'a mut self, prefix: &str, out: &mut Vec<Named<'a>>) {
        self.prepared = Default::default();
        out.push(Named {
            name: format!("{prefix}.weight"),
            shape: vec![self.c_out, self.c_in, self.kernel, self.kernel],
            layout: Layout::ConvOhwi,
            slot: Slot::Param(&mut self.weight),
        });
    }
}
