use super::{Layout, Named, Param, Slot};
use crate::engine::GradMode;
use crate::engine::device::{self, View, ViewMut};
use crate::rng::Rng;

/// Fully connected layer, weight `[out, in]` as PyTorch.
pub struct Linear {
    pub inputs: usize,
    pub outputs: usize,
    pub weight: Param,
    pub bias: Param,
}

impl Linear {
    /// PyTorch's default nn.Linear init: U(-1/sqrt(in), 1/sqrt(in)) for weight and bias.
    pub fn new(inputs: usize, outputs: usize, rng: &mut Rng) -> Self {
        let bound = 1.0 / (inputs as f64).sqrt();
        let mut uniform =
            |len: usize| Param::new((0..len).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32).collect());
        let weight = uniform(inputs * outputs);
        let bias = uniform(outputs);
        Linear { inputs, outputs, weight, bias }
    }
    pub fn forward(&self, n: usize, x: View, y: ViewMut) {
        let (w, b) = (self.weight.value.view(), self.bias.value.view());
        device::linear_forward(n, self.inputs, self.outputs, x, w, b, y);
    }
    /// The gradients of the weights and bias (written or added to, as `mode` says) and of
    /// the input.
    pub fn backward(&mut self, n: usize, x: View, g: View, dx: ViewMut, mode: GradMode) {
        let (i, o, w) = (self.inputs, self.outputs, self.weight.value.view());
        let (dw, db) = (self.weight.grad.view_mut(), self.bias.grad.view_mut());
        device::linear_backward(n, i, o, x, w, g, dw, db, dx, mode);
    }
    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }
    pub fn named<'a>(&'a mut self, prefix: &str, out: &mut Vec<Named<'a>>) {
        let (i, o) = (self.inputs, self.outputs);
        out.push(Named {
            name: format!("{prefix}.weight"),
            shape: vec![o, i],
            layout: Layout::Plain,
            slot: Slot::Param(&mut self.weight),
        });
        out.push(Named {
            name: format!("{prefix}.bias"),
            shape: vec![o],
            layout: Layout::Plain,
            slot: Slot::Param(&mut self.bias),
        });
    }
}

impl super::ParamGroup for Linear {
    fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        Linear::for_each_param(self, f)
    }
}
