//! A run directory belongs to one run: a new run never replaces a finished or interrupted
//! one unless told to (`--overwrite`), and a lock held for the life of the process keeps
//! a second `train` out of a directory in use.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The files (and TensorBoard's folder) a run writes in its directory. `--overwrite` removes
/// these and nothing else.
pub const RUN_FILES: [&str; 8] = [
    "config.json",
    "metrics.jsonl",
    super::run::CHECKPOINT,
    super::run::PREVIOUS_CHECKPOINT,
    super::run::FINAL_WEIGHTS,
    super::run::BEST_WEIGHTS,
    super::run::METRICS_CSV,
    super::run::TENSORBOARD,
];

const LOCK: &str = ".lock";

/// How a new run treats what its directory already holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Refuse a directory that holds a run.
    Fresh,
    /// Remove the run files it holds, saying which.
    Overwrite,
    /// Continue the run it holds.
    Resume,
}

/// The claim on a run directory: its lock, released when this is dropped or the process
/// ends in any way (the kernel drops a dead process's `flock`, so a stale lock file is
/// simply taken over).
pub struct RunDir {
    pub path: PathBuf,
    _lock: std::fs::File,
}

impl RunDir {
    /// Creates `path` if needed, locks it and checks it against `claim`.
    pub fn claim(path: &Path, claim: Claim) -> Result<RunDir> {
        if path.to_str().is_none() {
            bail!("--out {}: not valid UTF-8 (the run's config records its directory as text)", path.display());
        }
        if path.exists() && !path.is_dir() {
            bail!("--out {}: exists and is not a directory", path.display());
        }
        std::fs::create_dir_all(path)
            .with_context(|| format!("{}: cannot create the run directory", path.display()))?;
        let lock = lock(path)?;
        let present: Vec<&str> = RUN_FILES.into_iter().filter(|f| path.join(f).exists()).collect();
        match claim {
            Claim::Fresh if !present.is_empty() => bail!(
                "{} already holds a run ({}): continue it with --resume, replace it with --overwrite, or choose another --out",
                path.display(),
                present.join(", ")
            ),
            Claim::Overwrite if !present.is_empty() => {
                eprintln!("--overwrite: replacing the run in {} ({})", path.display(), present.join(", "));
                for f in &present {
                    let file = path.join(f);
                    let removed =
                        if file.is_dir() { std::fs::remove_dir_all(&file) } else { std::fs::remove_file(&file) };
                    removed.with_context(|| format!("{}: cannot remove", file.display()))?;
                }
            }
            _ => {}
        }
        Ok(RunDir { path: path.to_path_buf(), _lock: lock })
    }
}

/// Takes the directory's lock, or says which process holds it.
#[cfg(unix)]
fn lock(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let path = dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot create the run's lock file", path.display()))?;
    // SAFETY: flock on a descriptor this function owns; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let holder = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = holder.trim();
        let who = if holder.is_empty() { "another process".to_string() } else { format!("another process ({holder})") };
        bail!(
            "{}: {who} is training in this run directory; wait for it to end, or choose another --out",
            dir.display()
        );
    }
    let started = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let note = format!("pid {}, started at {} UTC", std::process::id(), utc(started));
    file.set_len(0)
        .and_then(|_| file.write_all(note.as_bytes()))
        .with_context(|| format!("{}: cannot write", path.display()))?;
    Ok(file)
}

#[cfg(not(unix))]
fn lock(dir: &Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK);
    std::fs::File::create(&path).with_context(|| format!("{}: cannot create the run's lock file", path.display()))
}

/// Seconds since the epoch as "YYYY-MM-DD HH:MM:SS" (UTC; days to civil date by Howard
/// Hinnant's algorithm, so no time crate is needed for one message).
fn utc(secs: u64) -> String {
    let (days, rem) = ((secs / 86400) as i64, secs % 86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00");
        assert_eq!(utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(utc(1_796_601_845), "2026-12-07 00:04:05");
    }
}
