//! CIFAR-10/100 binary batch files: records of label byte(s) + 3072 pixel bytes
//! (R, G, B planes of 32×32, row-major). Every file is validated: size, record count
//! and label range, with errors that name the file.

use anyhow::{Context, Result, bail};
use std::path::{Path, PathBuf};

pub const IMAGE_BYTES: usize = 3072;
pub const SIDE: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum DatasetKind {
    Cifar10,
    Cifar100,
}

impl DatasetKind {
    /// Bytes before the pixels: CIFAR-100 stores a coarse and a fine label.
    pub fn label_bytes(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 1,
            DatasetKind::Cifar100 => 2,
        }
    }
    pub fn record_bytes(self) -> usize {
        self.label_bytes() + IMAGE_BYTES
    }
    pub fn classes(self) -> usize {
        match self {
            DatasetKind::Cifar10 => 10,
            DatasetKind::Cifar100 => 100,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "CIFAR-10",
            DatasetKind::Cifar100 => "CIFAR-100",
        }
    }
    /// The official file names of the training and test splits, and records per file.
    fn official_files(self, train: bool) -> (&'static [&'static str], usize) {
        match (self, train) {
            (DatasetKind::Cifar10, true) => (
                &["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"],
                10000,
            ),
            (DatasetKind::Cifar10, false) => (&["test_batch.bin"], 10000),
            (DatasetKind::Cifar100, true) => (&["train.bin"], 50000),
            (DatasetKind::Cifar100, false) => (&["test.bin"], 10000),
        }
    }
    /// The folder name inside the official archive.
    pub fn archive_dir(self) -> &'static str {
        match self {
            DatasetKind::Cifar10 => "cifar-10-batches-bin",
            DatasetKind::Cifar100 => "cifar-100-binary",
        }
    }
    pub fn class_names(self) -> Vec<String> {
        match self {
            DatasetKind::Cifar10 => {
                ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect()
            }
            // The fine labels, in the order of the archive's fine_label_names.txt.
            DatasetKind::Cifar100 => include_str!("cifar100_classes.txt").lines().map(str::to_string).collect(),
        }
    }
}

/// Images (planar CHW bytes, as in the files) and labels held in memory.
#[derive(Clone, Debug, Default)]
pub struct Dataset {
    pub images: Vec<u8>,
    pub labels: Vec<u8>,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image(&self, i: usize) -> &[u8] {
        &self.images[i * IMAGE_BYTES..(i + 1) * IMAGE_BYTES]
    }
    /// Splits off the last `n` records (the paper's 45k/5k train/validation split).
    pub fn split_off_last(&mut self, n: usize) -> Result<Dataset> {
        if n >= self.len() {
            bail!("--val-split {n} leaves no training images (only {} in the training set)", self.len());
        }
        let keep = self.len() - n;
        Ok(Dataset { images: self.images.split_off(keep * IMAGE_BYTES), labels: self.labels.split_off(keep) })
    }
    fn append(&mut self, other: Dataset) {
        self.images.extend(other.images);
        self.labels.extend(other.labels);
    }
}

/// The most records a batch file without an official name is read with: the whole of
/// CIFAR-100's training and test sets in one file.
const MAX_RECORDS: usize = 60_000;

/// Reads one batch file. `expected_records`, when known, is checked exactly, and the file
/// is refused before reading when its size is not that of those records.
pub fn read_batch_file(path: &Path, kind: DatasetKind, expected_records: Option<usize>) -> Result<Dataset> {
    let limit = (expected_records.unwrap_or(MAX_RECORDS) * kind.record_bytes()) as u64;
    let what = format!("{} batch file", kind.name());
    let bytes = crate::files::read_limited(path, limit, &what)?;
    parse_batch(&bytes, kind, expected_records).with_context(|| path.display().to_string())
}

/// The records of a batch file's bytes; errors are to be prefixed with the file's name.
pub fn parse_batch(bytes: &[u8], kind: DatasetKind, expected_records: Option<usize>) -> Result<Dataset> {
    let rec = kind.record_bytes();
    if bytes.is_empty() {
        bail!("empty file, not a {} batch file", kind.name());
    }
    if !bytes.len().is_multiple_of(rec) {
        bail!(
            "size {} bytes is not a whole number of {}-byte {} records (truncated, or not a {} batch file)",
            bytes.len(),
            rec,
            kind.name(),
            kind.name()
        );
    }
    let count = bytes.len() / rec;
    if let Some(expected) = expected_records.filter(|&e| e != count) {
        bail!("{count} records, expected {expected} (truncated or foreign file)");
    }
    let mut data = Dataset { images: Vec::with_capacity(count * IMAGE_BYTES), labels: Vec::with_capacity(count) };
    for (i, r) in bytes.chunks_exact(rec).enumerate() {
        let label = r[kind.label_bytes() - 1];
        if label as usize >= kind.classes() {
            bail!("record {i} has label {label}, outside 0..{} ({})", kind.classes() - 1, kind.name());
        }
        data.labels.push(label);
        data.images.extend_from_slice(&r[kind.label_bytes()..]);
    }
    Ok(data)
}

/// Finds the folder that holds the official batch files: `dir` itself or the archive's
/// folder inside it (as `resnet download` leaves it).
fn batch_dir(dir: &Path, kind: DatasetKind) -> PathBuf {
    let inner = dir.join(kind.archive_dir());
    if inner.is_dir() { inner } else { dir.to_path_buf() }
}

/// Loads the training (`train`) or test split from a directory of official batch files,
/// or a single batch file.
pub fn load(path: &Path, kind: DatasetKind, train: bool) -> Result<Dataset> {
    if !path.exists() {
        bail!("{}: no such file or directory", path.display());
    }
    if !path.is_dir() {
        // A file under an official name must hold the official count (a cut-off copy would
        // otherwise read as a smaller dataset); other names, such as partial copies, are
        // read as they are.
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let expected = [true, false].iter().map(|&t| kind.official_files(t)).find(|(names, _)| names.contains(&name));
        return read_batch_file(path, kind, expected.map(|(_, count)| count));
    }
    let dir = batch_dir(path, kind);
    let (names, per_file) = kind.official_files(train);
    let mut data = Dataset::default();
    for name in names {
        let file = dir.join(name);
        if !file.exists() {
            bail!(
                "{}: missing {} file {name} (expected the official binary batches in this directory)",
                dir.display(),
                kind.name()
            );
        }
        data.append(read_batch_file(&file, kind, Some(per_file))?);
    }
    Ok(data)
}

/// Whether `path` holds an image folder rather than CIFAR data: Some(false) for a file or a
/// directory with `.bin` batch files (in it or in the archive folders), Some(true) for a
/// directory with subdirectories and no batch files, None when it cannot tell (empty).
pub fn is_image_folder(path: &Path) -> Option<bool> {
    let entries =
        |d: &Path| std::fs::read_dir(d).map(|e| e.flatten().map(|e| e.path()).collect::<Vec<_>>()).unwrap_or_default();
    let has_bin = |d: &Path| entries(d).iter().any(|p| p.extension().is_some_and(|x| x == "bin"));
    let kinds = [DatasetKind::Cifar10, DatasetKind::Cifar100];
    if !path.is_dir() || has_bin(path) || kinds.iter().any(|k| has_bin(&path.join(k.archive_dir()))) {
        return Some(false);
    }
    entries(path).iter().any(|p| p.is_dir()).then_some(true)
}

/// Whether `dir` holds a complete copy of the dataset's batch files.
pub fn is_present(dir: &Path, kind: DatasetKind) -> bool {
    let d = batch_dir(dir, kind);
    [true, false].iter().all(|&t| kind.official_files(t).0.iter().all(|n| d.join(n).is_file()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_names_match_label_count() {
        for kind in [DatasetKind::Cifar10, DatasetKind::Cifar100] {
            let names = kind.class_names();
            assert_eq!(names.len(), kind.classes(), "{}", kind.name());
            assert!(names.iter().all(|n| !n.is_empty() && !n.contains(char::is_whitespace)));
        }
        let fine = DatasetKind::Cifar100.class_names();
        assert_eq!((fine[0].as_str(), fine[30].as_str(), fine[99].as_str()), ("apple", "dolphin", "worm"));
    }
}
