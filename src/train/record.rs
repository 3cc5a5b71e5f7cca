//! What a training run reports, as typed records: a step record every `log_every`
//! iterations, an epoch record after each epoch's evaluation. The trainer writes them
//! through sinks: `metrics.jsonl` (one JSON object per line, the file `resnet plot` and
//! the experiments read back), TensorBoard, or memory.

use super::tensorboard::EventWriter;
use anyhow::{Context, Result, bail};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The training loss and accuracy of the window since the previous step record.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StepRecord {
    pub iter: usize,
    pub epoch: usize,
    pub loss: f64,
    pub acc: f64,
    pub lr: f64,
    pub images_per_s: f64,
    /// Across processes: seconds per step spent adding up the ranks' gradients (the
    /// all-reduce, and waiting there for the slowest rank).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm_s: Option<f64>,
}

/// One epoch: its training loss and accuracy (over the epoch's batches, as the network
/// changed), then the test (or validation) set's, measured after it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochRecord {
    pub iter: usize,
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_loss: f64,
    pub test_acc: f64,
    pub test_acc5: f64,
    pub lr: f64,
    pub images_per_s: f64,
    pub time_s: f64,
    pub skipped_images: usize,
    pub rss_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
}

/// A line of metrics.jsonl: the two kinds are told apart by their keys.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Record {
    Epoch(EpochRecord),
    Step(StepRecord),
}

impl Record {
    pub fn iter(&self) -> usize {
        match self {
            Record::Epoch(e) => e.iter,
            Record::Step(s) => s.iter,
        }
    }
}

/// Where records go.
pub trait Sink {
    fn record(&mut self, r: &Record) -> Result<()>;
}

/// Records kept in memory (tests, callers that want them live).
impl Sink for Vec<Record> {
    fn record(&mut self, r: &Record) -> Result<()> {
        self.push(r.clone());
        Ok(())
    }
}

/// metrics.jsonl, appended to line by line.
pub struct JsonlSink {
    path: PathBuf,
    file: std::fs::File,
}

impl JsonlSink {
    pub fn append(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("{}: cannot open", path.display()))?;
        Ok(JsonlSink { path: path.to_path_buf(), file })
    }
}

impl Sink for JsonlSink {
    fn record(&mut self, r: &Record) -> Result<()> {
        let line = serde_json::to_string(r).context("a record as JSON")?;
        writeln!(self.file, "{line}").with_context(|| format!("{}: write failed", self.path.display()))
    }
}

impl Sink for EventWriter {
    fn record(&mut self, r: &Record) -> Result<()> {
        match r {
            Record::Step(s) => self.scalars(
                s.iter as u64,
                &[
                    ("train/loss", s.loss),
                    ("train/acc", s.acc),
                    ("train/lr", s.lr),
                    ("train/images_per_s", s.images_per_s),
                ],
            ),
            Record::Epoch(e) => self.scalars(
                e.iter as u64,
                &[
                    ("epoch/train_loss", e.train_loss),
                    ("epoch/train_acc", e.train_acc),
                    ("epoch/test_loss", e.test_loss),
                    ("epoch/test_acc", e.test_acc),
                    ("epoch/test_acc5", e.test_acc5),
                    ("epoch/images_per_s", e.images_per_s),
                ],
            ),
        }
    }
}

/// The records of a run, in order.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct History {
    pub records: Vec<Record>,
}

impl History {
    /// Reads a run's metrics.jsonl. A line that is not a record (a line cut short when
    /// the machine stopped) is an error naming its line.
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = crate::files::read_limited(path, 1 << 30, "metrics file")?;
        let text = String::from_utf8(bytes).with_context(|| format!("{}: not UTF-8 text", path.display()))?;
        let mut records = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            match serde_json::from_str(line) {
                Ok(r) => records.push(r),
                Err(e) => bail!("{}: line {}: not a metrics record ({e})", path.display(), i + 1),
            }
        }
        Ok(History { records })
    }

    pub fn steps(&self) -> impl Iterator<Item = &StepRecord> {
        self.records.iter().filter_map(|r| if let Record::Step(s) = r { Some(s) } else { None })
    }

    pub fn epochs(&self) -> impl Iterator<Item = &EpochRecord> {
        self.records.iter().filter_map(|r| if let Record::Epoch(e) = r { Some(e) } else { None })
    }

    /// Keeps only the records at or before `iteration` (after a resume, records past the
    /// checkpoint describe steps that will be redone).
    pub fn truncate(&mut self, iteration: usize) {
        self.records.retain(|r| r.iter() <= iteration);
    }

    /// The whole history as metrics.jsonl's text.
    pub fn to_jsonl(&self) -> String {
        self.records.iter().filter_map(|r| serde_json::to_string(r).ok()).map(|l| l + "\n").collect()
    }

    /// The epoch records as CSV, for spreadsheets.
    pub fn epochs_csv(&self) -> String {
        const COLUMNS: &str = "epoch,iter,train_loss,train_acc,test_loss,test_acc,test_acc5,lr,images_per_s,time_s,skipped_images,rss_mb,peak_rss_mb";
        let opt = |x: Option<f64>| x.map_or(String::new(), |v| v.to_string());
        let mut out = format!("{COLUMNS}\n");
        for e in self.epochs() {
            out += &format!(
                "{},{},{},{},{},{},{},{},{},{},{},{},{}\n",
                e.epoch,
                e.iter,
                e.train_loss,
                e.train_acc,
                e.test_loss,
                e.test_acc,
                e.test_acc5,
                e.lr,
                e.images_per_s,
                e.time_s,
                e.skipped_images,
                opt(e.rss_mb),
                opt(e.peak_rss_mb)
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(iter: usize) -> Record {
        Record::Step(StepRecord { iter, epoch: 1, loss: 2.25, acc: 0.125, lr: 0.1, images_per_s: 900.0, comm_s: None })
    }

    fn epoch(iter: usize) -> Record {
        Record::Epoch(EpochRecord {
            iter,
            epoch: 1,
            train_loss: 1.5,
            train_acc: 0.5,
            test_loss: 1.25,
            test_acc: 0.625,
            test_acc5: 0.875,
            lr: 0.1,
            images_per_s: 850.0,
            time_s: 58.5,
            skipped_images: 0,
            rss_mb: None,
            peak_rss_mb: Some(512.0),
        })
    }

    #[test]
    fn a_history_reads_back_what_the_sink_wrote_and_the_two_kinds_stay_apart() {
        let dir = std::env::temp_dir().join(format!("resnet-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("metrics.jsonl");
        let _ = std::fs::remove_file(&path);
        let written = vec![step(50), step(100), epoch(100), step(150)];
        let mut sink = JsonlSink::append(&path).unwrap();
        let mut memory: Vec<Record> = Vec::new();
        for r in &written {
            sink.record(r).unwrap();
            memory.record(r).unwrap();
        }
        let mut read = History::read(&path).unwrap();
        assert_eq!(read.records, written);
        assert_eq!(memory, written);
        assert_eq!((read.steps().count(), read.epochs().count()), (3, 1));
        let csv = read.epochs_csv();
        assert_eq!(csv.lines().nth(1).unwrap(), "1,100,1.5,0.5,1.25,0.625,0.875,0.1,850,58.5,0,,512");
        read.truncate(100);
        assert_eq!(read.records, written[..3]);

        // A line cut short (the machine stopped mid-write) is named.
        std::fs::write(&path, format!("{}{{\"iter\": 3", read.to_jsonl())).unwrap();
        let e = History::read(&path).unwrap_err().to_string();
        assert!(e.contains("metrics.jsonl: line 4: not a metrics record"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
