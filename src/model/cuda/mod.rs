//! A network's inference on the GPU (feature `cuda`): its spec walked as the ONNX exporter
//! walks it, each conv→BN unit on the CUDA backend (cuDNN's convolution, then BatchNorm
//! with the residual and ReLU in one kernel), its weights uploaded once in the engine's
//! layout (OHWI convolutions, which cuDNN reads as NHWC filters).
//!
//! Until layers compute through the engine boundary on either backend, this is how a
//! network runs on a GPU; `tests/cuda.rs` compares its logits with `ResNet::forward`'s.

mod train;

pub use train::GpuTrainer;

use super::{NetSpec, ResNet, ShortcutSpec, UnitSpec};
use crate::engine::cuda::{Gpu, ops::BnLayer};
use crate::engine::ops::ShortcutA;
use crate::engine::pool::PoolShape;
use anyhow::{Context, Result};
use cudarc::driver::CudaSlice;
use std::collections::HashMap;

type Buf = CudaSlice<f32>;
type Hw = (usize, usize);

/// A network's weights on the GPU, and its structure.
pub struct GpuNet {
    gpu: Gpu,
    spec: NetSpec,
    /// Every named tensor (state-dict names), in the engine's layout.
    tensors: HashMap<String, Buf>,
    eps: f32,
    /// The state-dict names of the projection shortcuts and the classifier.
    naming: (&'static str, &'static str),
}

impl GpuNet {
    /// Opens the GPU and uploads `net`'s weights and running statistics.
    pub fn new(net: &mut ResNet) -> Result<GpuNet> {
        let gpu = Gpu::open()?;
        gpu.set_precision(net.precision())?;
        let mut tensors = HashMap::new();
        for t in net.named() {
            tensors.insert(t.name.clone(), gpu.upload(&t.to_host())?);
        }
        Ok(GpuNet { gpu, spec: net.config.spec(), tensors, eps: net.stem.bn.eps, naming: net.config.naming() })
    }

    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    pub fn classes(&self) -> usize {
        self.spec.classes
    }

    fn tensor(&self, name: &str) -> Result<&Buf> {
        self.tensors.get(name).with_context(|| format!("the network has no tensor '{name}'"))
    }

    /// The logits of `n` images of `hw` pixels, NHWC and normalized, as
    /// `ResNet::forward(false, ...)` takes them.
    pub fn forward(&self, n: usize, hw: Hw, images: &[f32]) -> Result<Vec<f32>> {
        Ok(self.inference().forward(n, hw, images, false)?.0)
    }

    /// [`GpuNet::forward`]'s logits, and the pooled features the classifier read (the
    /// embedding, `features()` values per image).
    pub fn forward_with_features(&self, n: usize, hw: Hw, images: &[f32]) -> Result<(Vec<f32>, Vec<f32>)> {
        let (logits, pooled) = self.inference().forward(n, hw, images, true)?;
        Ok((logits, pooled.unwrap_or_default()))
    }

    fn inference(&self) -> Inference<'_> {
        let tensor = Box::new(|name: &str| self.tensor(name));
        Inference { gpu: &self.gpu, spec: &self.spec, naming: self.naming, eps: self.eps, tensor }
    }
}

/// A network's inference walk on the GPU over weights found by name: those of a
/// [`GpuNet`], or those a [`GpuTrainer`] trains.
struct Inference<'a> {
    gpu: &'a Gpu,
    spec: &'a NetSpec,
    naming: (&'static str, &'static str),
    eps: f32,
    /// Every named tensor (state-dict names), in the engine's layout.
    tensor: Lookup<'a>,
}

/// Finds a tensor by its state-dict name.
type Lookup<'a> = Box<dyn Fn(&str) -> Result<&'a Buf> + 'a>;

impl Inference<'_> {
    /// The logits of `n` images of `hw` pixels, NHWC and normalized, and with `features`
    /// the pooled features too.
    fn forward(&self, n: usize, hw: Hw, images: &[f32], features: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let gpu = self.gpu;
        let spec = self.spec;
        let input = gpu.upload(&images[..n * hw.0 * hw.1 * 3])?;
        let mut x = self.conv_bn(&input, n, hw, &spec.stem, "conv1", "bn1", None, true)?;
        let mut hw = spec.stem.out_hw(hw);
        if spec.max_pool {
            let s = PoolShape { c: spec.stem.c_out, kernel: 3, stride: 2, pad: 1, h: hw.0, w: hw.1 };
            let (mut y, mut argmax) = (gpu.zeros::<f32>(n * s.out_len())?, gpu.zeros::<u32>(n * s.out_len())?);
            gpu.maxpool_forward(&s, n, &x, &mut y, &mut argmax)?;
            (x, hw) = (y, (s.out_h(), s.out_w()));
        }
        let (projection, classifier) = self.naming;
        for block in &spec.blocks {
            let prefix = &block.name;
            let c_in = block.units[0].c_in;
            let shortcut = match &block.shortcut {
                ShortcutSpec::None | ShortcutSpec::Identity => None,
                ShortcutSpec::ZeroPad { stride, pad } => {
                    let s = ShortcutA { h: hw.0, w: hw.1, c_in, stride: *stride, pad: *pad };
                    let mut y = gpu.zeros::<f32>(n * s.out_h() * s.out_w() * s.c_out())?;
                    gpu.shortcut_a_forward(&s, n, &x, &mut y)?;
                    Some(y)
                }
                ShortcutSpec::Projection(p) => {
                    let (conv, bn) = (format!("{prefix}.{projection}.0"), format!("{prefix}.{projection}.1"));
                    Some(self.conv_bn(&x, n, hw, p, &conv, &bn, None, false)?)
                }
            };
            let residual = match block.shortcut {
                ShortcutSpec::None => None,
                ShortcutSpec::Identity => Some(&x),
                _ => shortcut.as_ref(),
            };
            let (mut cur, mut cur_hw, last) = (None::<Buf>, hw, block.units.len() - 1);
            for (i, u) in block.units.iter().enumerate() {
                let (conv, bn) = (format!("{prefix}.conv{}", i + 1), format!("{prefix}.bn{}", i + 1));
                let from = cur.as_ref().unwrap_or(&x);
                let r = if i == last { residual } else { None };
                let y = self.conv_bn(from, n, cur_hw, u, &conv, &bn, r, true)?;
                (cur, cur_hw) = (Some(y), u.out_hw(cur_hw));
            }
            (x, hw) = (cur.expect("a block has units"), cur_hw);
        }
        let (width, classes) = (spec.features, spec.classes);
        let mut pooled = gpu.zeros::<f32>(n * width)?;
        gpu.avgpool_forward(n, hw.0 * hw.1, width, &x, &mut pooled)?;
        let (w, b) = ((self.tensor)(&format!("{classifier}.weight"))?, (self.tensor)(&format!("{classifier}.bias"))?);
        let mut logits = gpu.zeros::<f32>(n * classes)?;
        gpu.linear_forward(n, width, classes, &pooled, w, b, &mut logits)?;
        Ok((gpu.download(&logits)?, features.then(|| gpu.download(&pooled)).transpose()?))
    }

    /// `[relu](bn(conv(x)) [+ residual])` with the running statistics.
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(
        &self,
        x: &Buf,
        n: usize,
        hw: Hw,
        u: &UnitSpec,
        conv: &str,
        bn: &str,
        residual: Option<&Buf>,
        relu: bool,
    ) -> Result<Buf> {
        let gpu = self.gpu;
        let s = u.conv_shape(hw);
        let mut y = gpu.zeros::<f32>(n * s.out_len())?;
        gpu.conv_forward(&s, n, x, (self.tensor)(&format!("{conv}.weight"))?, &mut y)?;
        let get = |what: &str| (self.tensor)(&format!("{bn}.{what}"));
        let layer = BnLayer { gamma: get("weight")?, beta: get("bias")?, eps: self.eps };
        let (mut out, mut affine) = (gpu.zeros::<f32>(n * s.out_len())?, gpu.zeros::<f32>(2 * s.c_out)?);
        let running = (get("running_mean")?, get("running_var")?);
        gpu.bn_forward_eval(&layer, &y, n * s.out_pixels(), running, &mut affine, residual, relu, &mut out)?;
        Ok(out)
    }
}
