//! The network's structure as data: every conv→BN unit and shortcut, derived once from a
//! [`ModelConfig`]. The network is built from it, and the parameter and mult-add counts
//! and the ONNX exporter read it, so the structure is written down in one place.

use super::block::StrideAt;
use super::config::{Family, ModelConfig};
use super::{Shortcut, block_names};

/// A k×k convolution (padding k/2, no bias) followed by BatchNorm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub c_in: usize,
    pub c_out: usize,
    pub kernel: usize,
    pub stride: usize,
}

impl UnitSpec {
    pub fn pad(&self) -> usize {
        self.kernel / 2
    }

    /// Output size for an input of `hw`.
    pub fn out_hw(&self, (h, w): (usize, usize)) -> (usize, usize) {
        let side = |x: usize| (x + 2 * self.pad() - self.kernel) / self.stride + 1;
        (side(h), side(w))
    }

    /// Convolution weights plus BatchNorm's scale and shift.
    pub fn params(&self) -> usize {
        self.kernel * self.kernel * self.c_in * self.c_out + 2 * self.c_out
    }

    pub fn mult_adds(&self, hw: (usize, usize)) -> usize {
        let (oh, ow) = self.out_hw(hw);
        oh * ow * self.kernel * self.kernel * self.c_in * self.c_out
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShortcutSpec {
    /// A plain network's block.
    None,
    Identity,
    /// Option A where dimensions grow: every `stride`-th pixel, `pad` zero channels on each side.
    ZeroPad {
        stride: usize,
        pad: usize,
    },
    /// Options B and C: a 1×1 conv and BatchNorm.
    Projection(UnitSpec),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Its state-dict prefix, `layer{stage}.{index}`.
    pub name: String,
    /// ReLU after each unit but the last, whose BN output gets the shortcut added before the ReLU.
    pub units: Vec<UnitSpec>,
    pub shortcut: ShortcutSpec,
}

impl BlockSpec {
    pub fn c_in(&self) -> usize {
        self.units[0].c_in
    }
    pub fn c_out(&self) -> usize {
        self.units.last().expect("a block has units").c_out
    }
    pub fn stride(&self) -> usize {
        self.units.iter().map(|u| u.stride).product()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetSpec {
    pub stem: UnitSpec,
    /// The ImageNet stem's 3×3, stride-2 max pool.
    pub max_pool: bool,
    pub blocks: Vec<BlockSpec>,
    /// Classifier: features → classes.
    pub features: usize,
    pub classes: usize,
    pub image_size: usize,
}

impl ModelConfig {
    /// The network's structure, unit by unit.
    pub fn spec(&self) -> NetSpec {
        let unit = |c_in, c_out, kernel, stride| UnitSpec { c_in, c_out, kernel, stride };
        let (stem_c, widths) = self.widths();
        let imagenet = self.family == Family::ImageNet;
        let stem = if imagenet { unit(3, stem_c, 7, 2) } else { unit(3, stem_c, 3, 1) };
        let mut names = block_names(&self.stages).into_iter();
        let mut blocks = Vec::new();
        let mut c = stem_c;
        for (stage, (&count, &planes)) in self.stages.iter().zip(widths).enumerate() {
            for i in 0..count {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                let units = if self.bottleneck {
                    let (s1, s3) = match self.stride_at {
                        StrideAt::First1x1 => (stride, 1),
                        StrideAt::Conv3x3 => (1, stride),
                    };
                    vec![unit(c, planes, 1, s1), unit(planes, planes, 3, s3), unit(planes, 4 * planes, 1, 1)]
                } else {
                    vec![unit(c, planes, 3, stride), unit(planes, planes, 3, 1)]
                };
                let c_out = units.last().expect("units").c_out;
                let grows = stride != 1 || c != c_out;
                let shortcut = match (self.residual, self.shortcut) {
                    (false, _) => ShortcutSpec::None,
                    (true, Shortcut::C) => ShortcutSpec::Projection(unit(c, c_out, 1, stride)),
                    (true, Shortcut::B) if grows => ShortcutSpec::Projection(unit(c, c_out, 1, stride)),
                    (true, Shortcut::A) if grows => ShortcutSpec::ZeroPad { stride, pad: (c_out - c) / 2 },
                    (true, _) => ShortcutSpec::Identity,
                };
                blocks.push(BlockSpec { name: names.next().expect("a name per block"), units, shortcut });
                c = c_out;
            }
        }
        NetSpec { stem, max_pool: imagenet, blocks, features: c, classes: self.classes, image_size: self.image_size }
    }
}

impl NetSpec {
    /// Every unit in order: stem, then each block's units and projection.
    pub fn units(&self) -> impl Iterator<Item = &UnitSpec> {
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| {
            let projection = match &b.shortcut {
                ShortcutSpec::Projection(p) => Some(p),
                _ => None,
            };
            b.units.iter().chain(projection)
        }))
    }

    /// Learned parameters: convolutions, BatchNorm scales and shifts, classifier.
    pub fn params(&self) -> usize {
        self.units().map(UnitSpec::params).sum::<usize>() + self.features * self.classes + self.classes
    }

    /// Multiply-adds of one image at the design size (convolutions and classifier).
    pub fn mult_adds(&self) -> usize {
        let s = self.image_size;
        let mut cur = self.stem.out_hw((s, s));
        let mut total = self.stem.mult_adds((s, s));
        if self.max_pool {
            cur = ((cur.0 - 1) / 2 + 1, (cur.1 - 1) / 2 + 1);
        }
        for b in &self.blocks {
            if let ShortcutSpec::Projection(p) = &b.shortcut {
                total += p.mult_adds(cur);
            }
            for u in &b.units {
                total += u.mult_adds(cur);
                cur = u.out_hw(cur);
            }
        }
        total + self.features * self.classes
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{ModelConfig, ResNet, Shortcut};

    /// The spec's counts against the built network's own: its tensors, and the
    /// mult-adds of its layers' convolutions.
    #[test]
    fn the_spec_counts_what_the_built_network_holds() {
        for (name, shortcut) in [
            ("resnet20", Shortcut::A),
            ("plain20", Shortcut::A),
            ("resnet20", Shortcut::C),
            ("resnet18", Shortcut::A),
            ("resnet34", Shortcut::B),
            ("resnet50", Shortcut::B),
            ("resnet50-v1", Shortcut::C),
        ] {
            let config = ModelConfig::from_name(name, Some(shortcut), 10).unwrap();
            let spec = config.spec();
            let mut net = ResNet::new(config, 0);
            assert_eq!(spec.params(), net.param_count(), "{name} {shortcut:?}");
            let layers: usize = net.layer_table().iter().map(|r| r.mult_adds).sum();
            assert_eq!(spec.mult_adds(), layers, "{name} {shortcut:?}");
            assert_eq!(spec.blocks.len(), net.blocks.len());
        }
    }
}
