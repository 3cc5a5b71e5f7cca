//! Classifies image files with published or trained weights:
//!
//!     cargo run --release --example classify -- cifar:resnet20 cat.png dog.jpg
//!     cargo run --release --example classify -- torchvision:resnet50 photo.jpg
//!
//! The weights bring their network, input normalization, view and class names.

use resnet::Classifier;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let weights = args.next().ok_or_else(|| anyhow::anyhow!("usage: classify WEIGHTS IMAGE..."))?;
    let classifier = Classifier::from_weights(&weights)?;
    for file in args {
        println!("{file}:");
        for class in classifier.classify_file(&file, 5)? {
            let name = class.name.as_deref().unwrap_or("?");
            println!("  {:6.2}%  {name} ({})", 100.0 * class.probability, class.index);
        }
    }
    Ok(())
}
