//! Network definitions: the residual block (basic or bottleneck), the network built from
//! it for CIFAR or ImageNet, and model-name parsing.

mod block;
mod config;
#[cfg(feature = "cuda")]
pub mod cuda;
mod resnet;
mod spec;

pub use block::{Block, ConvBn, StrideAt};
pub use config::{Family, ModelConfig};
pub use resnet::ResNet;
pub(crate) use resnet::block_names;
pub use spec::{BlockSpec, LayerRow, NetSpec, ShortcutSpec, UnitSpec};

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
