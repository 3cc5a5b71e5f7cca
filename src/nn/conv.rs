use super::{Layout, Named, Param, Slot};
use crate::engine::{Workspace, conv};
use crate::rng::Rng;

/// A bias-free 2-D convolution (every conv in a ResNet is followed by BN).
pub struct Conv2d {
    pub shape: conv::ConvShape,
    pub weight: Param,
}

impl Conv2d {
    pub fn new(shape: conv::ConvShape, rng: &mut Rng) -> Self {
        // fan_out, as torchvision's kaiming_normal_(mode="fan_out") for ResNets.
        let fan = shape.c_out * shape.kernel * shape.kernel;
        Conv2d { shape, weight: Param::he_normal(shape.weight_len(), fan, rng) }
    }
    pub fn forward(&self, n: usize, x: &[f32], y: &mut [f32], ws: &mut Workspace) {
        conv::forward(&self.shape, n, x, &self.weight.value, y, ws);
    }
    /// Writes the weight gradient; accumulates the input gradient into `dx` if given.
    pub fn backward(&mut self, n: usize, x: &[f32], dy: &[f32], dx: Option<&mut [f32]>, ws: &mut Workspace) {
        conv::backward(&self.shape, n, x, &self.weight.value, dy, &mut self.weight.grad, dx, ws);
    }
    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
    }
    pub fn mult_adds(&self) -> usize {
        self.shape.out_pixels() * self.shape.weight_len()
    }
    pub fn named<'a>(&'a mut self, prefix: &str, out: &mut Vec<Named<'a>>) {
        let s = self.shape;
        out.push(Named {
            name: format!("{prefix}.weight"),
            shape: vec![s.c_out, s.c_in, s.kernel, s.kernel],
            layout: Layout::ConvOhwi,
            slot: Slot::Param(&mut self.weight),
        });
    }
}
