//! `resnet download`: fetches the official CIFAR archive over HTTPS (or takes one already on
//! disk), checks its md5, and unpacks it into the data directory, with a progress bar.

use super::cifar::DatasetKind;
#[cfg(feature = "download")]
use anyhow::Context;
use anyhow::{Result, bail};
#[cfg(feature = "download")]
use md5::{Digest, Md5};
#[cfg(feature = "download")]
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub struct Source {
    pub url: &'static str,
    pub md5: &'static str,
}

pub fn official_source(kind: DatasetKind) -> Source {
    match kind {
        DatasetKind::Cifar10 => Source {
            url: "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",
            md5: "c32a1d4ab5d03f1284b67883e8d87530",
        },
        DatasetKind::Cifar100 => Source {
            url: "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz",
            md5: "03b5dce01913d631647c71ecec9e9cb8",
        },
    }
}

/// The data directory used when `--data`/`--dir` is not given: `$RESNET_DATA` or `./data`.
pub fn default_data_dir() -> PathBuf {
    std::env::var_os("RESNET_DATA").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("data"))
}

/// Without the `download` feature nothing is fetched: the error says so.
#[cfg(not(feature = "download"))]
pub fn fetch(
    url: &str,
    _target: &Path,
    _label: &str,
    _progress: bool,
    _limit: u64,
    _digest: &mut dyn FnMut(&[u8]),
) -> Result<crate::files::TempFile> {
    bail!("{url}: this build of resnet has no downloads (its 'download' feature is off); fetch the file by other means")
}

/// Streams `url` (at most `limit` bytes) into a temporary file beside `target`, with a
/// progress bar labelled `label`, handing every chunk to `digest` as it passes. The caller
/// checks the digest, then persists the file, or drops it, which removes it.
#[cfg(feature = "download")]
pub fn fetch(
    url: &str,
    target: &Path,
    label: &str,
    progress: bool,
    limit: u64,
    digest: &mut dyn FnMut(&[u8]),
) -> Result<crate::files::TempFile> {
    let mut response = ureq::get(url).call().with_context(|| format!("{url}: download failed"))?;
    let bar = crate::progress::bytes_bar(label, response.body().content_length().unwrap_or(0), progress);
    let mut reader = response.body_mut().with_config().limit(limit).reader();
    let mut tmp = crate::files::TempFile::beside(target)?;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf).with_context(|| format!("{url}: connection broken during download"))?;
        if n == 0 {
            break;
        }
        digest(&buf[..n]);
        tmp.file().write_all(&buf[..n]).with_context(|| format!("{}: write failed", tmp.path().display()))?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(tmp)
}

#[cfg(feature = "download")]
/// Downloads `url` into `dir`, verifies the md5 and unpacks the archive there.
/// Returns the folder that holds the batch files.
pub fn download(kind: DatasetKind, url: &str, md5_hex: &str, dir: &Path, progress: bool) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create data directory", dir.display()))?;
    let archive = dir.join(url.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("archive.tar.gz"));
    let mut hasher = Md5::new();
    let label = format!("downloading {}", kind.name());
    // Removed on every error path; renamed to `archive` once complete and checked.
    let partial = fetch(url, &archive, &label, progress, 1 << 31, &mut |chunk| hasher.update(chunk)).map_err(|e| {
        let flag = kind.name().to_ascii_lowercase().replace('-', "");
        anyhow::anyhow!(
            "{e:#}; without a network, fetch {url} by other means and run `resnet download {flag} --from FILE`"
        )
    })?;
    check_md5(url, hasher, md5_hex)?;
    partial.persist(&archive)?;
    let out = unpack(kind, &archive, dir)?;
    let _ = std::fs::remove_file(&archive);
    Ok(out)
}

#[cfg(feature = "download")]
/// Unpacks an archive already on disk (fetched by other means) into `dir` after checking its
/// md5. The archive itself is left where it is.
pub fn from_file(kind: DatasetKind, archive: &Path, md5_hex: &str, dir: &Path) -> Result<PathBuf> {
    let mut hasher = Md5::new();
    crate::files::for_each_chunk(archive, &mut |chunk| hasher.update(chunk))?;
    check_md5(&archive.display().to_string(), hasher, md5_hex)?;
    std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create data directory", dir.display()))?;
    unpack(kind, archive, dir)
}

#[cfg(feature = "download")]
fn check_md5(source: &str, hasher: Md5, md5_hex: &str) -> Result<()> {
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    if digest != md5_hex.to_ascii_lowercase() {
        bail!(
            "{source}: md5 mismatch (got {digest}, expected {md5_hex}); the archive is corrupt, nothing was unpacked"
        );
    }
    Ok(())
}

#[cfg(feature = "download")]
fn unpack(kind: DatasetKind, archive: &Path, dir: &Path) -> Result<PathBuf> {
    let opened = std::fs::File::open(archive).with_context(|| format!("{}: cannot open", archive.display()))?;
    let tar = flate2::read::GzDecoder::new(opened);
    tar::Archive::new(tar).unpack(dir).with_context(|| format!("{}: cannot unpack archive", archive.display()))?;
    if !super::cifar::is_present(dir, kind) {
        bail!("{}: archive unpacked but the {} batch files are not there", archive.display(), kind.name());
    }
    Ok(dir.join(kind.archive_dir()))
}
