//! Model names and the architecture they stand for.
//!
//! - CIFAR (§4.2): `resnet{6n+2}` / `plain{6n+2}`: a 3×3 conv with 16 filters, three
//!   stages of n basic blocks at 16/32/64 filters, global average pool, fc.
//! - ImageNet (Table 1): `resnet18/34` (basic blocks), `resnet50/101/152` (bottlenecks,
//!   stride on the 3×3 as torchvision's "v1.5"; `-v1` puts it on the first 1×1 as the
//!   paper), `plain18/34`; a 7×7/2 conv and 3×3/2 max pool, four stages, pool, fc.
//!
//! Depths 50 and 152 are also 6n+2; the ImageNet network wins, and `cifar-resnet50`
//! names the CIFAR one.

use super::Shortcut;
use super::block::StrideAt;
use anyhow::{Result, bail};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Family {
    Cifar,
    ImageNet,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    /// Layers with weights, as the paper counts them (shortcut projections excluded).
    pub depth: usize,
    pub residual: bool,
    pub bottleneck: bool,
    /// Blocks per stage.
    pub stages: Vec<usize>,
    pub stride_at: StrideAt,
    pub shortcut: Shortcut,
    pub classes: usize,
    /// The input size the network was designed for (32 or 224); any size runs.
    pub image_size: usize,
}

const IMAGENET_DEPTHS: [(usize, bool, [usize; 4]); 5] = [
    (18, false, [2, 2, 2, 2]),
    (34, false, [3, 4, 6, 3]),
    (50, true, [3, 4, 6, 3]),
    (101, true, [3, 4, 23, 3]),
    (152, true, [3, 8, 36, 3]),
];

/// The most classes a classifier may have: ImageNet-21k's 21,841 with room to spare. Its
/// fc layer then holds 2048 × 100,000 floats (0.8 GB); a typo's billions would not fit.
pub const MAX_CLASSES: usize = 100_000;
/// The most basic blocks per stage of a CIFAR net: ten times resnet1202's 200, about 194
/// million parameters.
pub const MAX_CIFAR_BLOCKS: usize = 2000;

impl ModelConfig {
    /// Parses a model name. `shortcut: None` takes the family's default: A for CIFAR (as
    /// the paper), B for ImageNet (as the paper's deeper nets and torchvision).
    /// The network called `name`, in any case (`ResNet50` is `resnet50`).
    pub fn from_name(name: &str, shortcut: Option<Shortcut>, classes: usize) -> Result<Self> {
        let lower = name.to_ascii_lowercase();
        let name = lower.as_str();
        let unknown = || {
            anyhow::anyhow!(
                "unknown model '{name}': expected resnet18/34/50/101/152 (50/101/152 also with -v1), plain18/34, \
                 or a CIFAR net resnet<6n+2>/plain<6n+2> such as resnet20, resnet56, resnet110"
            )
        };
        let (base, v1) = match name.strip_suffix("-v1") {
            Some(b) => (b, true),
            None => (name, false),
        };
        let (cifar_only, base) = match base.strip_prefix("cifar-") {
            Some(b) => (true, b),
            None => (false, base),
        };
        let (residual, digits) = if let Some(d) = base.strip_prefix("resnet") {
            (true, d)
        } else if let Some(d) = base.strip_prefix("plain") {
            (false, d)
        } else {
            return Err(unknown());
        };
        let depth: usize = digits.parse().map_err(|_| unknown())?;
        if classes == 0 || classes > MAX_CLASSES {
            bail!("a model needs 1 to {MAX_CLASSES} classes, not {classes}");
        }
        let imagenet = IMAGENET_DEPTHS.iter().find(|d| d.0 == depth).filter(|_| !cifar_only);
        if let Some(&(_, bottleneck, stages)) = imagenet {
            if v1 && !bottleneck {
                bail!("model '{name}': -v1 only applies to the bottleneck nets (resnet50/101/152)");
            }
            return Ok(ModelConfig {
                family: Family::ImageNet,
                depth,
                residual,
                bottleneck,
                stages: stages.to_vec(),
                stride_at: if v1 { StrideAt::First1x1 } else { StrideAt::Conv3x3 },
                shortcut: shortcut.unwrap_or(Shortcut::B),
                classes,
                image_size: 224,
            });
        }
        if v1 {
            bail!("model '{name}': -v1 only applies to the ImageNet bottleneck nets (resnet50/101/152)");
        }
        if depth < 8 || !(depth - 2).is_multiple_of(6) {
            bail!(
                "unknown model '{name}': ImageNet depths are 18, 34, 50, 101, 152; CIFAR depths are 6n+2 \
                 (20, 32, 44, 56, 110, 1202, ...)"
            );
        }
        let n = (depth - 2) / 6;
        if n > MAX_CIFAR_BLOCKS {
            bail!("model '{name}': CIFAR nets go up to n = {MAX_CIFAR_BLOCKS} blocks per stage (resnet1202 has 200)");
        }
        Ok(ModelConfig {
            family: Family::Cifar,
            depth,
            residual,
            bottleneck: false,
            stages: vec![n; 3],
            stride_at: StrideAt::Conv3x3,
            shortcut: shortcut.unwrap_or(Shortcut::A),
            classes,
            image_size: 32,
        })
    }

    /// The canonical name, which `from_name` parses back to this architecture.
    pub fn name(&self) -> String {
        let kind = if self.residual { "resnet" } else { "plain" };
        let ambiguous = self.family == Family::Cifar && IMAGENET_DEPTHS.iter().any(|d| d.0 == self.depth);
        let prefix = if ambiguous { "cifar-" } else { "" };
        let suffix = if self.bottleneck && self.stride_at == StrideAt::First1x1 { "-v1" } else { "" };
        format!("{prefix}{kind}{}{suffix}", self.depth)
    }

    /// Stem output channels and the planes of each stage.
    pub fn widths(&self) -> (usize, &'static [usize]) {
        match self.family {
            Family::Cifar => (16, &[16, 32, 64]),
            Family::ImageNet => (64, &[64, 128, 256, 512]),
        }
    }

    /// Learned parameters (weights, BatchNorm scales and shifts, classifier), counted from the
    /// architecture alone: `ResNet::param_count` without building and initializing the network.
    pub fn param_count(&self) -> usize {
        self.spec().params()
    }

    /// The network whose state dict has these keys, by its stages' block counts: a name
    /// `from_name` accepts ("resnet56", "resnet50", "plain34"), for messages when weights
    /// are loaded into the wrong depth. None when the keys are not a ResNet's.
    pub fn guess_from_keys<'a>(keys: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let (mut blocks, mut bottleneck, mut projections, mut cifar) = ([0usize; 4], false, false, false);
        for key in keys {
            let key = key.strip_prefix("module.").unwrap_or(key);
            cifar |= key.starts_with("linear.");
            let Some(rest) = key.strip_prefix("layer") else { continue };
            let mut parts = rest.split('.');
            let stage = parts.next().and_then(|s| s.parse::<usize>().ok()).filter(|s| (1..=4).contains(s));
            let (Some(stage), Some(Ok(block))) = (stage, parts.next().map(str::parse::<usize>)) else { continue };
            blocks[stage - 1] = blocks[stage - 1].max(block + 1);
            let unit = parts.next().unwrap_or("");
            bottleneck |= unit == "conv3";
            projections |= unit == "shortcut" || unit == "downsample";
        }
        if cifar && blocks[3] == 0 && blocks[0] > 0 && blocks[..3].iter().all(|&b| b == blocks[0]) {
            let depth = 6 * blocks[0] + 2;
            let ambiguous = IMAGENET_DEPTHS.iter().any(|d| d.0 == depth);
            let prefix = if ambiguous { "cifar-" } else { "" };
            // Option A adds no parameters: a residual and a plain net look alike.
            return Some(if projections {
                format!("{prefix}resnet{depth}")
            } else {
                format!("{prefix}resnet{depth} or {prefix}plain{depth}")
            });
        }
        let (depth, _, _) = IMAGENET_DEPTHS.iter().find(|(_, b, stages)| *b == bottleneck && *stages == blocks)?;
        Some(if projections || bottleneck {
            format!("resnet{depth}")
        } else {
            format!("resnet{depth} or plain{depth}")
        })
    }

    /// Channels into the classifier.
    pub fn features(&self) -> usize {
        let planes = *self.widths().1.last().expect("stages");
        if self.bottleneck { 4 * planes } else { planes }
    }

    /// State-dict names of the projection shortcut and the classifier: the published CIFAR
    /// models' (`shortcut`, `linear`) or torchvision's (`downsample`, `fc`).
    pub fn naming(&self) -> (&'static str, &'static str) {
        match self.family {
            Family::Cifar => ("shortcut", "linear"),
            Family::ImageNet => ("downsample", "fc"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ResNet;

    #[test]
    fn the_network_is_told_by_its_keys() {
        let keys = |name: &str, shortcut: Option<Shortcut>| {
            let mut net = ResNet::new(ModelConfig::from_name(name, shortcut, 10).unwrap(), 0);
            net.named().iter().map(|t| t.name.clone()).collect::<Vec<_>>()
        };
        let guess = |keys: &[String]| ModelConfig::guess_from_keys(keys.iter().map(String::as_str));
        assert_eq!(guess(&keys("resnet56", None)).as_deref(), Some("resnet56 or plain56"));
        assert_eq!(guess(&keys("resnet32", Some(Shortcut::B))).as_deref(), Some("resnet32"));
        assert_eq!(guess(&keys("cifar-resnet50", Some(Shortcut::C))).as_deref(), Some("cifar-resnet50"));
        assert_eq!(guess(&keys("resnet34", None)).as_deref(), Some("resnet34"));
        assert_eq!(guess(&keys("plain18", None)).as_deref(), Some("resnet18 or plain18"));
        assert_eq!(guess(&keys("resnet101", None)).as_deref(), Some("resnet101"));
        assert_eq!(guess(&["conv1.weight".to_string(), "fc.bias".to_string()]), None);
    }

    #[test]
    fn param_count_from_the_config_is_the_built_networks() {
        for (name, shortcut, classes) in [
            ("resnet8", None, 10),
            ("resnet14", Some(Shortcut::B), 10),
            ("resnet8", Some(Shortcut::C), 7),
            ("plain14", Some(Shortcut::C), 10),
            ("resnet18", Some(Shortcut::C), 5),
            ("resnet34", Some(Shortcut::A), 3),
            ("resnet50", None, 4),
            ("resnet50-v1", Some(Shortcut::A), 4),
        ] {
            let config = ModelConfig::from_name(name, shortcut, classes).unwrap();
            let counted = config.param_count();
            assert_eq!(counted, ResNet::new(config, 0).param_count(), "{name} {shortcut:?}");
        }
    }
}
