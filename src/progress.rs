//! Progress bars for long work, shown on a terminal only: under nohup, Slurm or a pipe
//! they would fill the log with redrawn lines, so there they stay hidden.

#[cfg(feature = "progress")]
pub use indicatif::ProgressBar as Bar;
#[cfg(feature = "progress")]
use indicatif::{ProgressBar, ProgressStyle};
#[cfg(not(feature = "progress"))]
pub use quiet::Bar;
#[cfg(not(feature = "progress"))]
use quiet::Bar as ProgressBar;
use std::io::IsTerminal;

/// A bar of `len` steps labelled `label` ("eval", "pixel mean"), hidden unless `shown`
/// and stderr is a terminal.
pub fn bar(label: &str, len: usize, shown: bool) -> ProgressBar {
    if !shown || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    styled(len as u64, "{prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}", label)
}

/// The bar of a training epoch, with the run's figures as its message.
pub fn epoch_bar(shown: bool, len: usize, epoch: usize) -> ProgressBar {
    if !shown {
        return ProgressBar::hidden();
    }
    styled(len as u64, "epoch {prefix} [{bar:30}] {pos}/{len} eta {eta} | {msg}", &(epoch + 1).to_string())
}

#[cfg(feature = "progress")]
fn styled(len: u64, template: &str, prefix: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).expect("valid template").progress_chars("=> "));
    bar.set_prefix(prefix.to_string());
    bar
}

#[cfg(not(feature = "progress"))]
fn styled(_len: u64, _template: &str, _prefix: &str) -> ProgressBar {
    ProgressBar::hidden()
}

/// A bar of `total` bytes (a download), hidden under the same conditions as [`bar`].
pub fn bytes_bar(label: &str, total: u64, shown: bool) -> ProgressBar {
    if !shown || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    styled(total, "{prefix} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}", label)
}

/// Without the `progress` feature: bars that show nothing, with the methods used here.
#[cfg(not(feature = "progress"))]
mod quiet {
    #[derive(Clone, Debug, Default)]
    pub struct Bar;

    impl Bar {
        pub fn hidden() -> Bar {
            Bar
        }
        pub fn inc(&self, _delta: u64) {}
        pub fn set_message(&self, _message: impl Into<String>) {}
        pub fn finish_and_clear(&self) {}
        pub fn abandon(&self) {}
        pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
            f()
        }
    }
}
