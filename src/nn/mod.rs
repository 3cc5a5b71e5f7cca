//! Layers: parameters plus a forward and a backward that call the engine. Each layer
//! keeps what its backward needs (batch statistics); activations are owned by the model.

mod batchnorm;
mod conv;
mod linear;

pub use batchnorm::{BatchNorm2d, bn_group_count};
pub use conv::Conv2d;
pub use linear::Linear;

use crate::engine::{DeviceVec, ParamVec};
use crate::rng::Rng;

/// A trainable tensor with its gradient and its SGD momentum buffer, in the engine's memory.
/// A model's parameters are windows into its flat buffers (see `engine::flat`): change
/// them in place (`copy_from_host`), not by putting another `Param` in their place, which
/// the model refuses to train.
pub struct Param {
    pub value: ParamVec,
    pub grad: ParamVec,
    pub momentum: ParamVec,
}

impl Param {
    /// A parameter made on the host (its initialization) and moved to the engine.
    pub fn new(value: Vec<f32>) -> Self {
        let n = value.len();
        Param { value: ParamVec::from_host(value), grad: ParamVec::zeros(n), momentum: ParamVec::zeros(n) }
    }
    pub fn filled(len: usize, v: f32) -> Self {
        Self::new(vec![v; len])
    }
    /// He (Kaiming) normal initialisation, std = sqrt(2 / fan), as the paper.
    pub fn he_normal(len: usize, fan: usize, rng: &mut Rng) -> Self {
        let std = (2.0 / fan as f64).sqrt();
        Self::new((0..len).map(|_| (rng.normal() * std) as f32).collect())
    }
}

/// A part of a network whose parameters' gradients the backward pass finishes together (a
/// layer, a residual block): data-parallel training adds them up across processes as
/// soon as they are done, while the backward pass goes on.
pub trait ParamGroup {
    fn for_each_param(&mut self, f: &mut dyn FnMut(&mut Param));
}

/// How a tensor is stored internally versus in PyTorch's convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Same element order as PyTorch.
    Plain,
    /// Convolution weight: internal OHWI, PyTorch OIHW.
    ConvOhwi,
}

/// What a named tensor is: a trained parameter or a running statistic.
pub enum Slot<'a> {
    Param(&'a mut Param),
    Buffer(&'a mut DeviceVec),
}

/// One entry of a model's state dict, named and shaped as PyTorch would.
pub struct Named<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub layout: Layout,
    pub slot: Slot<'a>,
}

impl Named<'_> {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match &self.slot {
            Slot::Param(p) => p.value.len(),
            Slot::Buffer(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The values, copied to the host in the internal layout.
    pub fn to_host(&self) -> Vec<f32> {
        match &self.slot {
            Slot::Param(p) => p.value.to_host(),
            Slot::Buffer(b) => b.to_host(),
        }
    }
    /// Replaces the values with host ones in the internal layout, as many as there are.
    pub fn set_from_host(&mut self, values: Vec<f32>) {
        assert_eq!(values.len(), self.len(), "{} keeps its size", self.name);
        match &mut self.slot {
            Slot::Param(p) => p.value.copy_from_host(&values),
            Slot::Buffer(b) => b.copy_from_host(&values),
        }
    }
}
