//! Writes a model's initial weights for a seed, as `resnet train --seed SEED` starts from
//! them, in PyTorch's layout (for `tools/train_pytorch.py --replay`, and networks to export
//! for `tools/bench_onnx.py`).
//!
//!     cargo run --release --example initial_weights -- resnet20 3 /tmp/init3.safetensors

use resnet::model::{ModelConfig, ResNet};
use std::path::Path;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [model, seed, out] = [&args[0], &args[1], &args[2]];
    // The classes of the network's home dataset: CIFAR-10 or ImageNet.
    let family = ModelConfig::from_name(model, None, 1)?.family;
    let classes = if family == resnet::model::Family::Cifar { 10 } else { 1000 };
    let mut net = ResNet::new(ModelConfig::from_name(model, None, classes)?, seed.parse()?);
    resnet::weights::save(Path::new(out), &net.named(), Default::default())
}
