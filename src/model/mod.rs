//! Network definitions and model-name parsing.

mod block;
pub mod cifar;

pub use block::BasicBlock;
pub use cifar::{CifarConfig, CifarResNet};

use anyhow::{Result, bail};

/// How a block's shortcut is formed (§3.3 of the paper).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Shortcut {
    /// Identity; where dimensions grow, subsample and zero-pad the channels.
    A,
    /// Projection (1×1 conv + BN) where dimensions grow, identity elsewhere.
    B,
    /// Projection on every block.
    C,
}

impl std::str::FromStr for Shortcut {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "A" => Ok(Shortcut::A),
            "B" => Ok(Shortcut::B),
            "C" => Ok(Shortcut::C),
            _ => bail!("unknown shortcut option '{s}' (expected A, B or C)"),
        }
    }
}

/// Parses a CIFAR model name: `resnet{6n+2}` or `plain{6n+2}`, e.g. `resnet20`, `plain56`.
pub fn parse_cifar_name(name: &str) -> Result<(usize, bool)> {
    let (residual, digits) = if let Some(d) = name.strip_prefix("resnet") {
        (true, d)
    } else if let Some(d) = name.strip_prefix("plain") {
        (false, d)
    } else {
        bail!(
            "unknown model '{name}': expected resnet<depth> or plain<depth> with depth = 6n+2 (20, 32, 44, 56, 110, 1202)"
        )
    };
    let depth: usize = match digits.parse() {
        Ok(d) => d,
        Err(_) => {
            bail!("unknown model '{name}': expected resnet<depth> or plain<depth>, e.g. resnet20")
        }
    };
    if [18, 34, 50, 101, 152].contains(&depth) {
        bail!(
            "model '{name}' is an ImageNet network, which this build does not provide yet; CIFAR models are resnet/plain with depth 6n+2 (20, 32, 44, 56, 110, 1202)"
        );
    }
    if depth < 8 || !(depth - 2).is_multiple_of(6) {
        bail!("unknown model '{name}': CIFAR depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, 1202, ...)");
    }
    Ok(((depth - 2) / 6, residual))
}
