use anyhow::Result;
use resnet::model::{CifarConfig, CifarResNet, Shortcut};
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// Model name, e.g. resnet20, plain56, resnet110.
    model: String,
    /// Shortcut option: A (zero-pad), B (projection when dimensions grow), C (all projections).
    #[arg(long, default_value = "A", value_parser = super::parse_shortcut)]
    shortcut: Shortcut,
    #[arg(long, default_value_t = 10)]
    classes: usize,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let mut model = CifarResNet::new(CifarConfig::from_name(&a.model, a.shortcut, a.classes)?, 0);
    println!("{} (CIFAR, {}x{} input, shortcut {:?})", model.config.name(), 32, 32, a.shortcut);
    println!("{:<16} {:<10} {:<46} {:>10} {:>12}", "layer", "output", "", "params", "mult-adds");
    for r in model.layer_table() {
        println!("{:<16} {:<10} {:<46} {:>10} {:>12}", r.name, r.output, r.detail, r.params, r.mult_adds);
    }
    println!("parameters: {}", model.param_count());
    let ma = model.mult_adds();
    println!("mult-adds: {:.2} M ({ma} per image)", ma as f64 / 1e6);
    Ok(ExitCode::SUCCESS)
}
