//! Data-parallel training on MPI (a build with `--features mpi`, run by `mpirun`): N ranks
//! at batch 128 compute what one process computes taking each batch in N micro-batches
//! (`--accumulate N`: BatchNorm over each share, the shares' gradients weighted and added
//! in order), for N = 2 (shares of 64) and 3 (43, 43, 42), on ResNet-20 for 30 steps: every
//! logged loss within 1e-5 relative and the final parameters within 1e-4. (The running
//! averages are rank 0's share's, so they are left out.) A rank that dies ends the job.
//! Skipped, saying why, without `mpirun` or without MPI in the binary.
//!
//! Against one process with `--bn-batch 64` instead, the forward passes are the same but
//! the weight gradients are summed over all 128 images in one pass rather than per share:
//! the same sums rounded differently, 1e-7 apart after one step, and the training on this
//! data amplifies that tenfold a step (1e-3 after 30 steps).

mod common;

use resnet::weights::StateDict;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_resnet");

/// Whether the job can run here: an `mpirun`, and MPI in the binary.
fn available() -> bool {
    if Command::new("mpirun").arg("--version").output().is_err() {
        println!("skipped: no mpirun (apt-get install mpich libmpich-dev)");
        return false;
    }
    let version = Command::new(EXE).arg("--version").output().unwrap();
    if !String::from_utf8_lossy(&version.stdout).contains("MPI") {
        println!("skipped: the binary was built without MPI (cargo test --release --features mpi)");
        return false;
    }
    true
}

/// ResNet-20 for 30 steps at batch 128 on `dir`'s data into `out`, a loss logged each step.
fn train_args(dir: &Path, out: &Path, threads: &str, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = ["--threads", threads, "train", "--model", "resnet20", "--batch", "128"]
        .iter()
        .chain(&["--iterations", "30", "--log-every", "1", "--seed", "3", "--quiet", "--data"])
        .map(|s| s.to_string())
        .collect();
    args.push(dir.join("train.bin").display().to_string());
    args.push("--test-data".into());
    args.push(dir.join("test.bin").display().to_string());
    args.push("--out".into());
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn checked(out: Output, what: &str) {
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
}

fn losses(out: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap().get("loss")?.as_f64()).collect()
}

/// The largest relative difference of any parameter of two runs' weights (‖a−b‖/‖b‖).
fn weights_differ(a: &Path, b: &Path) -> f64 {
    let a = StateDict::read(&a.join("model.safetensors")).unwrap();
    let b = StateDict::read(&b.join("model.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    let mut worst = 0f64;
    for ((name, x), (other, y)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(name, other);
        if name.contains("running_") || name.contains("num_batches") {
            continue;
        }
        worst = worst.max(common::rel_err32(&x.values, &y.values));
    }
    worst
}

fn same_training(reference: &Path, ranks: &Path) {
    let (want, got) = (losses(reference), losses(ranks));
    assert_eq!(want.len(), 30, "a loss per step");
    assert_eq!(got.len(), want.len(), "a loss per step");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(((g - w) / w).abs() <= 1e-5, "step {}: loss {g} against {w}", i + 1);
    }
    let e = weights_differ(ranks, reference);
    assert!(e <= 1e-4, "final weights differ by {e:.2e}");
}

#[test]
fn ranks_train_as_one_process_in_micro_batches_of_their_shares() {
    if !available() {
        return;
    }
    let dir = common::temp_dir("mpi_equivalence");
    common::write_cifar_file(&dir.join("train.bin"), 1280, 1);
    common::write_cifar_file(&dir.join("test.bin"), 100, 2);
    for ranks in ["2", "3"] {
        // One thread on both sides: some weight-gradient sums are grouped by thread count.
        let reference = dir.join(format!("one-process-accumulate{ranks}"));
        let args = train_args(&dir, &reference, "1", &["--accumulate", ranks]);
        checked(Command::new(EXE).args(&args).output().unwrap(), "one process");
        let job = dir.join(format!("{ranks}-ranks"));
        let args = train_args(&dir, &job, "1", &[]);
        let out = Command::new("mpirun").args(["-n", ranks, EXE]).args(&args).output().unwrap();
        checked(out, &format!("{ranks} ranks"));
        same_training(&reference, &job);
    }
}

#[test]
fn a_rank_that_dies_ends_the_job() {
    if !available() {
        return;
    }
    let dir = common::temp_dir("mpi_failure");
    common::write_cifar_file(&dir.join("train.bin"), 1280, 1);
    common::write_cifar_file(&dir.join("test.bin"), 100, 2);
    let out = dir.join("run");
    let mut args = train_args(&dir, &out, "1", &[]);
    // Long enough that it is still training when a rank is killed.
    let iterations = args.iter().position(|a| a == "30").unwrap();
    args[iterations] = "100000".into();
    let mut job = Command::new("mpirun").args(["-n", "2", EXE]).args(&args).spawn().unwrap();
    // Rank 1's process: a `resnet` whose environment names rank 1, once it has started.
    let started = Instant::now();
    let victim = loop {
        assert!(started.elapsed() < Duration::from_secs(60), "rank 1 never started");
        std::thread::sleep(Duration::from_millis(500));
        if let Some(pid) = rank_process(1) {
            break pid;
        }
    };
    std::thread::sleep(Duration::from_secs(2));
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    let killed = Instant::now();
    loop {
        if let Some(status) = job.try_wait().unwrap() {
            assert!(!status.success(), "the job succeeded with a rank killed");
            break;
        }
        if killed.elapsed() > Duration::from_secs(30) {
            let _ = job.kill();
            panic!("the job still runs 30 s after a rank was killed");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(rank_process(0).is_none(), "rank 0 outlived the job");
}

/// The process of this test binary's `resnet` with PMI_RANK (MPICH) or OMPI_COMM_WORLD_RANK
/// equal to `rank`.
fn rank_process(rank: usize) -> Option<u32> {
    let exe = std::fs::canonicalize(EXE).ok()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if std::fs::read_link(entry.path().join("exe")).ok().as_deref() != Some(exe.as_path()) {
            continue;
        }
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let wanted = [format!("PMI_RANK={rank}"), format!("OMPI_COMM_WORLD_RANK={rank}")];
        if environ.split(|&b| b == 0).any(|v| wanted.iter().any(|w| v == w.as_bytes())) {
            return Some(pid);
        }
    }
    None
}
