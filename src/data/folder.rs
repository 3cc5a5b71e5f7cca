//! ImageNet-style image folders: `DIR/train/<class>/*.JPEG`, `DIR/val/<class>/*`, or a
//! directory of class folders. Classes are the sorted folder names, as torchvision's
//! ImageFolder; with a class list, folder names (synsets or class names) map to the
//! model's indices instead, so a folder holding only some classes evaluates correctly.

use super::labels::ClassList;
use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub struct ImageFolder {
    pub root: PathBuf,
    /// Class folder names, sorted.
    pub folders: Vec<String>,
    /// Every image file with its class index (the model's output index).
    pub samples: Vec<(PathBuf, u32)>,
    /// Files skipped for not being .jpg/.jpeg/.png.
    pub ignored: Vec<PathBuf>,
}

fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

/// All files under `dir` (recursively, following links, hidden entries skipped), sorted.
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files_under(&p, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    Ok(())
}

/// The folder of one split: `DIR/<split>` when it exists, else `DIR` itself.
pub fn split_dir(dir: &Path, split: &str) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let sub = dir.join(split);
    Ok(if sub.is_dir() { sub } else { dir.to_path_buf() })
}

impl ImageFolder {
    /// Scans `dir`'s class folders. `classes`: map folder names through this list;
    /// otherwise class `i` is the `i`-th folder in sorted order.
    pub fn scan(dir: &Path, classes: Option<&ClassList>) -> Result<Self> {
        let mut folders: Vec<String> = std::fs::read_dir(dir)
            .with_context(|| format!("{}: cannot list directory", dir.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .filter_map(|e| e.file_name().to_str().map(str::to_string))
            .filter(|n| !n.starts_with('.'))
            .collect();
        folders.sort();
        if folders.is_empty() {
            bail!("{}: no class folders (expected DIR/<class>/<image>, as torchvision's ImageFolder)", dir.display());
        }
        let mut samples = Vec::new();
        let mut ignored = Vec::new();
        for (i, name) in folders.iter().enumerate() {
            let label = match classes {
                None => i,
                Some(list) => list.index_of(name).with_context(|| {
                    format!("{}: class folder '{name}' is not in the labels file (by synset or name)", dir.display())
                })?,
            };
            let mut files = Vec::new();
            files_under(&dir.join(name), &mut files)?;
            for f in files {
                if is_image(&f) {
                    samples.push((f, label as u32));
                } else {
                    ignored.push(f);
                }
            }
        }
        if samples.is_empty() {
            bail!("{}: no .jpg/.jpeg/.png images in its {} class folders", dir.display(), folders.len());
        }
        Ok(ImageFolder { root: dir.to_path_buf(), folders, samples, ignored })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}
