use anyhow::Result;
use resnet::weights::registry::{Published, REGISTRY, cache_dir};
use std::process::ExitCode;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Every published set of weights resnet knows by name, with its preprocessing and
    /// published accuracy, and whether it is in torch's cache.
    List,
    /// Fetch published weights into torch's cache (as --weights NAME does on first use)
    /// and print the file's path.
    Fetch {
        /// A name from `resnet weights list`, e.g. torchvision:resnet50.
        name: String,
    },
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

pub fn run(a: Args) -> Result<ExitCode> {
    match a.command {
        Command::List => {
            println!(
                "{:<26} {:<10} {:<7} {:>11} {:>7} {:>7}  cached",
                "name", "model", "norm", "view", "top-1", "top-5"
            );
            for p in &REGISTRY {
                let top5 = p.top5.map_or("-".to_string(), |t| format!("{t:.2}"));
                let cached = if cache_dir().join(p.file).is_file() { "yes" } else { "no" };
                let view = format!("{}/{}", p.resize, p.crop);
                println!("{:<26} {:<10} {:<7} {view:>11} {:>7.2} {top5:>7}  {cached}", p.name, p.model, p.norm, p.top1);
            }
            println!(
                "accuracy in % on ImageNet val (torchvision) or the CIFAR-10 test set; cache: {}",
                cache_dir().display()
            );
        }
        Command::Fetch { name } => {
            let Some(p) = Published::find(&name)? else {
                anyhow::bail!("'{name}' is not a published name (resnet weights list names them)");
            };
            println!("{}", p.fetch(true)?.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
