//! Reading and writing files without surprises: every read has a size budget and takes
//! regular files only (a device or FIFO as data would read for ever, or block), and every
//! write goes through a temporary file with a name of its own, renamed into place.

use anyhow::{Context, Result, anyhow, bail};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

/// Bytes as the user reads them: "30,730,000 bytes (29.3 MiB)".
fn describe_size(bytes: u64) -> String {
    format!("{} bytes ({:.1} MiB)", crate::text::grouped(bytes), bytes as f64 / (1 << 20) as f64)
}

/// Opens `path` for reading if it is a regular file. Opening never blocks: a FIFO without
/// a writer would wait for ever in a plain `open`.
fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    // One level of message, so that even `to_string` names the file and the reason.
    let file = options.open(path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let meta = file.metadata().map_err(|e| anyhow!("{}: {e}", path.display()))?;
    if meta.is_dir() {
        // A run directory given where its weights were meant.
        let hint = (["best.safetensors", "model.safetensors"].iter().map(|f| path.join(f)))
            .find(|f| f.is_file())
            .map(|f| format!("; a run's weights are in {}", f.display()))
            .unwrap_or_default();
        bail!("{}: is a directory, not a file{hint}", path.display());
    }
    if !meta.is_file() {
        bail!("{}: not a regular file (a device, FIFO or socket cannot be read as data)", path.display());
    }
    Ok((file, meta.len()))
}

/// The whole of the regular file `path`, refused before reading when it is larger than
/// `limit` bytes. `what` names the kind of file in the message ("CIFAR batch file").
pub fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    if len > limit {
        bail!(
            "{}: {} is larger than any {what} ({} at most)",
            path.display(),
            describe_size(len),
            describe_size(limit)
        );
    }
    // The length can change while we read (a file still being written): read at most one
    // byte past the budget, to tell.
    let mut bytes = Vec::new();
    bytes
        .try_reserve_exact(len as usize)
        .with_context(|| format!("{}: cannot allocate {}", path.display(), describe_size(len)))?;
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| anyhow!("{}: read failed: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!("{}: grew past {} while being read", path.display(), describe_size(limit));
    }
    Ok(bytes)
}

/// [`read_limited`] as text.
/// Hands the whole file at `path` to `chunk`, a block at a time (checksums of large files).
pub fn for_each_chunk(path: &Path, chunk: &mut dyn FnMut(&[u8])) -> Result<()> {
    let mut file = std::fs::File::open(path).with_context(|| format!("{}: cannot open", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).with_context(|| format!("{}: cannot read", path.display()))?;
        if n == 0 {
            return Ok(());
        }
        chunk(&buf[..n]);
    }
}

pub fn read_text_limited(path: &Path, limit: u64, what: &str) -> Result<String> {
    let bytes = read_limited(path, limit, what)?;
    String::from_utf8(bytes)
        .map_err(|e| anyhow::anyhow!("{}: not UTF-8 text (byte {})", path.display(), e.utf8_error().valid_up_to()))
}

/// A temporary file beside `target`, with a name no other process or file shares
/// (`.NAME.PID.RANDOM.tmp`), removed when dropped unless it was renamed into place.
pub struct TempFile {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl TempFile {
    pub fn beside(target: &Path) -> Result<Self> {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = target.file_name().with_context(|| format!("{}: not a file name", target.display()))?;
        for _ in 0..16 {
            let mut tmp_name = std::ffi::OsString::from(".");
            tmp_name.push(name);
            tmp_name.push(format!(".{}.{:08x}.tmp", std::process::id(), unique_suffix()));
            let path = dir.join(tmp_name);
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok(TempFile { path, file: Some(file) }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("{}: cannot create a file in {}", target.display(), dir.display()));
                }
            }
        }
        bail!("{}: cannot find a free temporary name in {}", target.display(), dir.display())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The open file, for writing in pieces; [`TempFile::persist`] flushes it.
    pub fn file(&mut self) -> &mut std::fs::File {
        self.file.as_mut().expect("open until persisted")
    }

    /// Writes all of `bytes` and flushes them to disk.
    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let file = self.file.as_mut().expect("open until persisted");
        file.write_all(bytes)
            .and_then(|_| file.sync_all())
            .with_context(|| format!("{}: write failed", self.path.display()))
    }

    /// Renames the file over `target`.
    pub fn persist(mut self, target: &Path) -> Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all().with_context(|| format!("{}: write failed", self.path.display()))?;
        }
        std::fs::rename(&self.path, target)
            .with_context(|| format!("{}: cannot move the new file into place", target.display()))?;
        self.path = PathBuf::new();
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A number that differs between calls and processes (time, counter, address).
fn unique_suffix() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos.wrapping_mul(2_654_435_761).wrapping_add(count.wrapping_mul(0x9e37_79b9))
}

/// Writes `bytes` to `path` atomically: a temporary file beside it, flushed to disk, then
/// renamed over it. On any error the temporary file is removed and `path` is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = TempFile::beside(path)?;
    tmp.write_all(bytes)?;
    tmp.persist(path)
}
