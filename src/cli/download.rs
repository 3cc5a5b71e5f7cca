use anyhow::Result;
use resnet::data::{DatasetKind, download};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(clap::Args)]
pub struct Args {
    /// cifar10 or cifar100.
    #[arg(value_parser = super::parse_dataset)]
    dataset: DatasetKind,
    /// Data directory (default: $RESNET_DATA or ./data).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Fetch from this address instead of the official one (mirrors, tests).
    #[arg(long)]
    url: Option<String>,
    /// Unpack this archive, fetched by other means, instead of downloading (offline machines).
    #[arg(long, conflicts_with = "url")]
    from: Option<PathBuf>,
    /// Expected md5 of the archive (default: the official archive's).
    #[arg(long)]
    md5: Option<String>,
}

pub fn run(a: Args) -> Result<ExitCode> {
    let src = download::official_source(a.dataset);
    let dir = a.dir.unwrap_or_else(download::default_data_dir);
    let url = a.url.as_deref().unwrap_or(src.url);
    let md5 = a.md5.as_deref().unwrap_or(src.md5);
    let out = match &a.from {
        Some(archive) => download::from_file(a.dataset, archive, md5, &dir)?,
        None => download::download(a.dataset, url, md5, &dir, true)?,
    };
    println!("{} ready in {}", a.dataset.name(), out.display());
    Ok(ExitCode::SUCCESS)
}
