use anyhow::Result;
use resnet::model::{Family, ModelConfig, ResNet, Shortcut};
use resnet::text::grouped;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Model (see --help of any command); without one, every model of the paper is listed.
    model: Option<String>,
    #[arg(long, value_parser = super::parse_shortcut, help = super::SHORTCUT_HELP)]
    shortcut: Option<Shortcut>,
    /// Classes of the classifier (default: 10 for CIFAR nets, 1000 for ImageNet nets).
    #[arg(long)]
    classes: Option<usize>,
}

/// The paper's networks, by family: the CIFAR nets of §4.2 (Tables 6 and 7, Figure 6) and
/// the ImageNet nets of Table 1.
const LISTED: [(&str, &[&str]); 2] = [
    (
        "CIFAR (32x32 input, 10 classes, shortcut A; any resnet<6n+2> or plain<6n+2>)",
        &[
            "resnet20",
            "resnet32",
            "resnet44",
            "resnet56",
            "resnet110",
            "resnet1202",
            "plain20",
            "plain32",
            "plain44",
            "plain56",
            "plain110",
        ],
    ),
    (
        "ImageNet (224x224 input, 1000 classes, shortcut B; -v1: stride on the first 1x1, as the paper)",
        &["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "plain18", "plain34"],
    ),
];

/// Every listed model with its parameter count.
fn list() -> Result<ExitCode> {
    for (family, names) in LISTED {
        println!("{family}");
        for name in names {
            let config = ModelConfig::from_name(name, None, if family.starts_with("CIFAR") { 10 } else { 1000 })?;
            println!("  {name:<12} {:>12} parameters", grouped(config.param_count() as u64));
        }
    }
    println!("resnet info MODEL prints its layers and mult-adds.");
    Ok(ExitCode::SUCCESS)
}

pub fn run(a: Args) -> Result<ExitCode> {
    let Some(name) = a.model.as_deref() else { return list() };
    let family = ModelConfig::from_name(name, a.shortcut, 1)?.family;
    let classes = a.classes.unwrap_or(if family == Family::Cifar { 10 } else { 1000 });
    let mut model = ResNet::new(ModelConfig::from_name(name, a.shortcut, classes)?, 0);
    let c = &model.config;
    let (family, s) = (if c.family == Family::Cifar { "CIFAR" } else { "ImageNet" }, c.image_size);
    println!("{} ({family}, {s}x{s} input, shortcut {:?}, {classes} classes)", c.name(), c.shortcut);
    println!("{:<12} {:<12} {:<62} {:>10} {:>12}", "layer", "output", "", "params", "mult-adds");
    for r in model.layer_table() {
        let (params, mult_adds) = (grouped(r.params as u64), grouped(r.mult_adds as u64));
        println!("{:<12} {:<12} {:<62} {params:>10} {mult_adds:>14}", r.name, r.output, r.detail);
    }
    println!("parameters: {}", grouped(model.param_count() as u64));
    let ma = model.mult_adds();
    if ma >= 1_000_000_000 {
        println!("mult-adds: {:.3} G ({} per image)", ma as f64 / 1e9, grouped(ma as u64));
    } else {
        println!("mult-adds: {:.2} M ({} per image)", ma as f64 / 1e6, grouped(ma as u64));
    }
    Ok(ExitCode::SUCCESS)
}
