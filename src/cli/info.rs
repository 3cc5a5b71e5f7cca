use anyhow::Result;
use resnet::model::{Family, ModelConfig, ResNet, Shortcut};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    #[arg(help = super::MODEL_HELP)]
    model: String,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Classes of the classifier (default: 10 for CIFAR nets, 1000 for ImageNet nets).
    #[arg(long)]
    classes: Option<usize>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let family = ModelConfig::from_name(&a.model, a.shortcut, 1)?.family;
    let classes = a.classes.unwrap_or(if family == Family::Cifar { 10 } else { 1000 });
    let mut model = ResNet::new(ModelConfig::from_name(&a.model, a.shortcut, classes)?, 0);
    let c = &model.config;
    let (family, s) = (if c.family == Family::Cifar { "CIFAR" } else { "ImageNet" }, c.image_size);
    println!("{} ({family}, {s}x{s} input, shortcut {:?}, {classes} classes)", c.name(), c.shortcut);
    println!("{:<12} {:<12} {:<62} {:>10} {:>12}", "layer", "output", "", "params", "mult-adds");
    for r in model.layer_table() {
        println!("{:<12} {:<12} {:<62} {:>10} {:>12}", r.name, r.output, r.detail, r.params, r.mult_adds);
    }
    println!("parameters: {}", model.param_count());
    let ma = model.mult_adds();
    if ma >= 1_000_000_000 {
        println!("mult-adds: {:.3} G ({ma} per image)", ma as f64 / 1e9);
    } else {
        println!("mult-adds: {:.2} M ({ma} per image)", ma as f64 / 1e6);
    }
    Ok(ExitCode::SUCCESS)
}
