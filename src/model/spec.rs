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

    /// The convolution's shape on an input of `hw`.
    pub fn conv_shape(&self, (h, w): (usize, usize)) -> crate::engine::conv::ConvShape {
        let (c_in, c_out, kernel, stride) = (self.c_in, self.c_out, self.kernel, self.stride);
        crate::engine::conv::ConvShape { c_in, c_out, kernel, stride, pad: self.pad(), h, w }
    }

    pub fn mult_adds(&self, hw: (usize, usize)) -> usize {
        let (oh, ow) = self.out_hw(hw);
        oh * ow * self.kernel * self.kernel * self.c_in * self.c_out
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

impl ShortcutSpec {
    pub fn label(&self) -> &'static str {
        match self {
            ShortcutSpec::None => "none",
            ShortcutSpec::Identity => "identity",
            ShortcutSpec::ZeroPad { .. } => "zero-pad (A)",
            ShortcutSpec::Projection(_) => "projection",
        }
    }
}

impl BlockSpec {
    fn projection(&self) -> Option<&UnitSpec> {
        match &self.shortcut {
            ShortcutSpec::Projection(p) => Some(p),
            _ => None,
        }
    }

    pub fn params(&self) -> usize {
        self.units.iter().chain(self.projection()).map(UnitSpec::params).sum()
    }

    pub fn mult_adds(&self, hw: (usize, usize)) -> usize {
        let mut cur = hw;
        let mut total = self.projection().map_or(0, |p| p.mult_adds(hw));
        for u in &self.units {
            total += u.mult_adds(cur);
            cur = u.out_hw(cur);
        }
        total
    }

    pub fn out_hw(&self, hw: (usize, usize)) -> (usize, usize) {
        self.units.iter().fold(hw, |cur, u| u.out_hw(cur))
    }

    /// The largest output of its units for `n` images of size `hw` (buffer planning).
    pub fn max_len(&self, n: usize, hw: (usize, usize)) -> usize {
        let (mut largest, mut cur) = (0, hw);
        for u in &self.units {
            cur = u.out_hw(cur);
            largest = largest.max(n * cur.0 * cur.1 * u.c_out);
        }
        largest
    }

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
        std::iter::once(&self.stem).chain(self.blocks.iter().flat_map(|b| b.units.iter().chain(b.projection())))
    }

    /// Learned parameters: convolutions, BatchNorm scales and shifts, classifier.
    pub fn params(&self) -> usize {
        self.units().map(UnitSpec::params).sum::<usize>() + self.features * self.classes + self.classes
    }

    /// The size after the stem (its conv, and the max pool of ImageNet nets).
    pub fn stem_out(&self, hw: (usize, usize)) -> (usize, usize) {
        let (h, w) = self.stem.out_hw(hw);
        if self.max_pool { ((h - 1) / 2 + 1, (w - 1) / 2 + 1) } else { (h, w) }
    }

    /// Multiply-adds of one image at the design size (convolutions and classifier).
    pub fn mult_adds(&self) -> usize {
        self.layer_table().iter().map(|r| r.mult_adds).sum()
    }

    /// The largest activation (elements) anywhere in the network for `n` images of `hw`.
    pub fn max_activation(&self, n: usize, hw: (usize, usize)) -> usize {
        let (h, w) = self.stem.out_hw(hw);
        let mut largest = n * h * w * self.stem.c_out;
        let mut cur = self.stem_out(hw);
        for b in &self.blocks {
            largest = largest.max(b.max_len(n, cur));
            cur = b.out_hw(cur);
        }
        largest
    }

    /// Layers at the design input size: stem, each block, head.
    pub fn layer_table(&self) -> Vec<LayerRow> {
        let s = self.image_size;
        let stem = &self.stem;
        let (h, w) = stem.out_hw((s, s));
        let mut detail = format!("{k}x{k}, {}, stride {} + BN + ReLU", stem.c_out, stem.stride, k = stem.kernel);
        if self.max_pool {
            detail.push_str(", 3x3 max pool stride 2");
        }
        let mut rows = vec![LayerRow {
            name: "conv1".into(),
            output: format!("{h}x{w}x{}", stem.c_out),
            detail,
            params: stem.params(),
            mult_adds: stem.mult_adds((s, s)),
        }];
        let mut cur = self.stem_out((s, s));
        for b in &self.blocks {
            let (oh, ow) = b.out_hw(cur);
            let kernels: Vec<String> = b.units.iter().map(|u| format!("{k}x{k},{}", u.c_out, k = u.kernel)).collect();
            let detail = format!("[{}], stride {}, shortcut {}", kernels.join(" "), b.stride(), b.shortcut.label());
            rows.push(LayerRow {
                name: b.name.clone(),
                output: format!("{oh}x{ow}x{}", b.c_out()),
                detail,
                params: b.params(),
                mult_adds: b.mult_adds(cur),
            });
            cur = (oh, ow);
        }
        let (f, k) = (self.features, self.classes);
        rows.push(LayerRow {
            name: "avgpool+fc".into(),
            output: format!("{k}"),
            detail: format!("global average pool, fc {f}->{k}"),
            params: f * k + k,
            mult_adds: f * k,
        });
        rows
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
            // The built layers' own mult-adds, walking the network.
            let side = spec.image_size;
            let (h, w) = net.stem.conv.out_hw(side, side);
            let mut cur = if spec.max_pool { ((h - 1) / 2 + 1, (w - 1) / 2 + 1) } else { (h, w) };
            let mut built = net.stem.conv.mult_adds(side, side) + spec.features * spec.classes;
            for b in &net.blocks {
                built += b.mult_adds(cur);
                cur = b.out_hw(cur);
            }
            assert_eq!(spec.mult_adds(), built, "{name} {shortcut:?}");
            assert_eq!(spec.blocks.len(), net.blocks.len());
        }
    }
}
