use super::{Layout, Named, Param, Slot};
use crate::engine::batchnorm::{self as bn, BnParams};
use crate::engine::conv;

/// BatchNorm2d with PyTorch's defaults (eps 1e-5, momentum 0.1, γ=1, β=0).
pub struct BatchNorm2d {
    pub weight: Param,
    pub bias: Param,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub momentum: f32,
    pub eps: f32,
    /// The batch statistics of the last training forward.
    saved: bn::Saved,
    /// The inference transform `x·scale + shift` from the running statistics.
    eval_scale: Vec<f32>,
    eval_shift: Vec<f32>,
}

impl BatchNorm2d {
    pub fn new(c: usize) -> Self {
        BatchNorm2d {
            weight: Param::filled(c, 1.0),
            bias: Param::filled(c, 0.0),
            running_mean: vec![0.0; c],
            running_var: vec![1.0; c],
            momentum: 0.1,
            eps: 1e-5,
            saved: bn::Saved::new(c),
            eval_scale: vec![0.0; c],
            eval_shift: vec![0.0; c],
        }
    }

    /// `y = [relu](bn(x) [+ residual])` over `rows` NHWC pixels.
    pub fn forward(
        &mut self,
        train: bool,
        rows: usize,
        x: &[f32],
        residual: Option<&[f32]>,
        relu: bool,
        y: &mut [f32],
    ) {
        let p = BnParams { gamma: &self.weight.value, beta: &self.bias.value, eps: self.eps };
        if train {
            bn::forward_train(
                &p,
                x,
                rows,
                self.momentum,
                &mut self.running_mean,
                &mut self.running_var,
                &mut self.saved,
                residual,
                relu,
                y,
            );
        } else {
            bn::forward_eval(&p, x, rows, &self.running_mean, &self.running_var, residual, relu, y);
        }
    }

    /// The inference-mode transform as a convolution epilogue: `relu(x·scale + shift + residual)`.
    pub fn epilogue<'a>(&'a mut self, residual: Option<&'a [f32]>, relu: bool) -> conv::Epilogue<'a> {
        let p = BnParams { gamma: &self.weight.value, beta: &self.bias.value, eps: self.eps };
        bn::eval_affine(&p, &self.running_mean, &self.running_var, &mut self.eval_scale, &mut self.eval_shift);
        conv::Epilogue { scale: &self.eval_scale, shift: &self.eval_shift, residual, relu }
    }

    /// In place: `g` is dL/d(output) on entry, dL/dx on return. `relu`: the forward's
    /// ReLU came straight after this layer (no residual), and `g` is masked by it.
    pub fn backward(&mut self, rows: usize, x: &[f32], relu: bool, g: &mut [f32]) {
        let p = BnParams { gamma: &self.weight.value, beta: &self.bias.value, eps: self.eps };
        bn::backward(&p, x, rows, &self.saved, relu, g, &mut self.weight.grad, &mut self.bias.grad);
    }

    pub fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        f(&mut self.bias);
    }

    pub fn named<'a>(&'a mut self, prefix: &str, out: &mut Vec<Named<'a>>) {
        let c = self.running_mean.len();
        let entries: [(&str, Slot<'a>); 4] = [
            ("weight", Slot::Param(&mut self.weight)),
            ("bias", Slot::Param(&mut self.bias)),
            ("running_mean", Slot::Buffer(&mut self.running_mean)),
            ("running_var", Slot::Buffer(&mut self.running_var)),
        ];
        for (field, slot) in entries {
            out.push(Named { name: format!("{prefix}.{field}"), shape: vec![c], layout: Layout::Plain, slot });
        }
    }
}
