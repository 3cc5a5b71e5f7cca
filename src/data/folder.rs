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

pub fn is_image(path: &Path) -> bool {
    let ext = path.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase());
    matches!(ext.as_deref(), Some("jpg" | "jpeg" | "png"))
}

/// All files under `dir` (recursively, following links, hidden entries skipped), sorted.
/// `ancestors` holds the canonical paths of the directories above `dir`: a link back to one
/// of them is a loop, and is not followed.
fn files_under(dir: &Path, ancestors: &mut Vec<PathBuf>, out: &mut Vec<PathBuf>) -> Result<()> {
    let canonical = dir.canonicalize().with_context(|| format!("{}: cannot resolve directory", dir.display()))?;
    if ancestors.contains(&canonical) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list directory", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.')))
        .collect();
    entries.sort();
    ancestors.push(canonical);
    for p in entries {
        if p.is_dir() {
            files_under(&p, ancestors, out)?;
        } else if p.is_file() {
            out.push(p);
        }
    }
    ancestors.pop();
    Ok(())
}

/// The folder of one split: `DIR/<split>` when it exists, else `DIR` itself.
pub fn split_dir(dir: &Path, split: &str) -> Result<PathBuf> {
    if dir.exists() && !dir.is_dir() {
        bail!("{}: a file where an image folder (DIR/{split}/<class>/*) was expected", dir.display());
    }
    if !dir.is_dir() {
        bail!("{}: no such directory", dir.display());
    }
    let sub = dir.join(split);
    Ok(if sub.is_dir() { sub } else { dir.to_path_buf() })
}

/// The image files (.jpg, .jpeg, .png) under `dir`, recursively, sorted.
pub fn images_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    files_under(dir, &mut Vec::new(), &mut files)?;
    files.retain(|p| is_image(p));
    Ok(files)
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
        // ImageNet's 1.28 M files take a while to list: a bar of class folders.
        let progress = crate::progress::bar(&format!("scanning {}", dir.display()), folders.len(), true);
        for (i, name) in folders.iter().enumerate() {
            progress.inc(1);
            let label = match classes {
                None => i,
                Some(list) => list.index_of(name).with_context(|| dir.display().to_string())?,
            };
            let mut files = Vec::new();
            files_under(&dir.join(name), &mut Vec::new(), &mut files)?;
            for f in files {
                if is_image(&f) {
                    samples.push((f, label as u32));
                } else {
                    ignored.push(f);
                }
            }
        }
        progress.finish_and_clear();
        if samples.is_empty() {
            bail!("{}: no .jpg/.jpeg/.png images in its {} class folders", dir.display(), folders.len());
        }
        Ok(ImageFolder { root: dir.to_path_buf(), folders, samples, ignored })
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// The same images with the class indices of `reference`, matched by folder name, so
    /// that a validation split with fewer (or differently sorted) folders than the training
    /// split still scores each image against its own class. A folder that `reference` lacks
    /// is an error.
    pub fn relabel_as(mut self, reference: &ImageFolder) -> Result<Self> {
        let mut index = Vec::with_capacity(self.folders.len());
        for name in &self.folders {
            match reference.folders.iter().position(|r| r == name) {
                Some(i) => index.push(i as u32),
                None => bail!(
                    "{}: class folder '{name}' has no counterpart in {}",
                    self.root.display(),
                    reference.root.display()
                ),
            }
        }
        for sample in &mut self.samples {
            sample.1 = index[sample.1 as usize];
        }
        Ok(self)
    }

    /// A note on the files left out for their names, if any, for the user to see.
    pub fn ignored_note(&self) -> Option<String> {
        self.ignored.first().map(|first| {
            format!(
                "note: ignoring {} files that are not .jpg/.jpeg/.png (e.g. {})",
                self.ignored.len(),
                first.display()
            )
        })
    }
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directory removed when the test is done with it.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A fresh directory with `root/<class>/x.png` (empty files: scanning reads names only).
    fn classes(name: &str, names: &[&str]) -> Scratch {
        let root = std::env::temp_dir().join(format!("resnet_folder_{name}_{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for class in names {
            std::fs::create_dir_all(root.join(class)).unwrap();
            std::fs::write(root.join(class).join("x.png"), b"").unwrap();
        }
        Scratch(root)
    }

    #[test]
    fn validation_labels_follow_the_training_folders() {
        let train = ImageFolder::scan(&classes("train", &["a", "b", "c"]).0, None).unwrap();
        let val = ImageFolder::scan(&classes("val", &["a", "c"]).0, None).unwrap();
        assert_eq!(val.samples.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 1]);
        let val = val.relabel_as(&train).unwrap();
        assert_eq!(val.samples.iter().map(|s| s.1).collect::<Vec<_>>(), [0, 2]);
        let stray = ImageFolder::scan(&classes("stray", &["a", "z"]).0, None).unwrap();
        let err = stray.relabel_as(&train).err().unwrap().to_string();
        assert!(err.contains("class folder 'z' has no counterpart"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn link_loops_are_not_followed() {
        let scratch = classes("loop", &["a"]);
        let root = &scratch.0;
        std::os::unix::fs::symlink(root.join("a"), root.join("a/again")).unwrap();
        std::os::unix::fs::symlink(root, root.join("a/up")).unwrap();
        let folder = ImageFolder::scan(root, None).unwrap();
        // a/again and a/up/a lead back into a directory being listed: only a/x.png is found.
        let names: Vec<_> = folder.samples.iter().map(|s| s.0.strip_prefix(root).unwrap().to_owned()).collect();
        assert_eq!(names, [Path::new("a/x.png")]);
    }
}
