//! Data-parallel training on MPI (a build with `--features mpi`, run by `mpirun`):
//! - N ranks at batch 128 compute what one process computes taking each batch in N
//!   micro-batches (`--accumulate N`: BatchNorm over each share, the shares' gradients
//!   weighted and added in order), for N = 2 (shares of 64) and 3 (43, 43, 42), on ResNet-20
//!   for 30 steps: every logged loss within 1e-5 relative and the final parameters within
//!   1e-4. (The running averages are rank 0's share's, so they are left out.)
//! - `--sync-bn` on N ranks normalizes as one process does with `--bn-batch 0`.
//! - A 2-rank run killed mid-epoch resumes on 1 rank and on 2, and ends as it would have.
//! - Gradients all-reduced in buckets during the backward pass give exactly what one
//!   all-reduce after it gives.
//! - A rank that dies ends the job.
//! - The all-reduce adds the ranks' values in rank order, bit for bit, on 2, 3 and 4 ranks.
//!
//! Skipped, saying why, without `mpirun` or without MPI in the binary.
//!
//! Against one process with `--bn-batch 64` (or `--bn-batch 0` for `--sync-bn`), the
//! forward passes are the same but the weight gradients are summed over all 128 images in
//! one pass rather than per share: the same sums rounded differently, 1e-7 apart after one
//! step. Training amplifies that quickly. BatchNorm's biases have gradients that nearly
//! cancel, and on the lossy CIFAR-10 data they are 3e-4 apart after 3 steps. So the
//! `--sync-bn` comparison is held to 1e-5 for one step.

mod common;

use resnet::weights::StateDict;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_resnet");

/// One job at a time: the tests find ranks by their environment, and the jobs would share
/// the two cores.
static ONE_JOB: std::sync::Mutex<()> = std::sync::Mutex::new(());

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

/// The lock that keeps this test's job alone, and a directory with 1,280 training and 100
/// test images; None (the test skips, saying why) where no job can run.
fn job_dir(name: &str) -> Option<(std::sync::MutexGuard<'static, ()>, std::path::PathBuf)> {
    let alone = ONE_JOB.lock().unwrap_or_else(|e| e.into_inner());
    if !available() {
        return None;
    }
    let dir = common::temp_dir(name);
    common::write_cifar_file(&dir.join("train.bin"), 1280, 1);
    common::write_cifar_file(&dir.join("test.bin"), 100, 2);
    Some((alone, dir))
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
    weights_differ_in(a, b, |name| !name.contains("running_"))
}

/// The largest relative difference of the tensors of two runs' weights that `which` names.
fn weights_differ_in(a: &Path, b: &Path, which: impl Fn(&str) -> bool) -> f64 {
    let a = StateDict::read(&a.join("model.safetensors")).unwrap();
    let b = StateDict::read(&b.join("model.safetensors")).unwrap();
    assert_eq!(a.tensors.len(), b.tensors.len());
    let mut worst = 0f64;
    for ((name, x), (other, y)) in a.tensors.iter().zip(&b.tensors) {
        assert_eq!(name, other);
        if name.contains("num_batches") || !which(name) {
            continue;
        }
        worst = worst.max(common::rel_err32(&x.values, &y.values));
    }
    worst
}

/// The losses logged so far, while a run may be writing them.
fn losses_if_any(out: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()?.get("loss")?.as_f64()).collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
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

/// What rank `rank` contributes to the all-reduce test: values of several magnitudes, so
/// that the order of the additions shows in the sums' last bits.
fn contribution(rank: usize, len: usize) -> Vec<f64> {
    (0..len).map(|i| ((i * 7919 + rank * 104_729) % 1013) as f64 * 10f64.powi((i % 7) as i32 - 3) / 3.0).collect()
}

/// One rank of the job `all_reduce_adds_in_rank_order` starts: it takes no part in a plain
/// test run.
#[test]
#[ignore = "a rank of the MPI job of all_reduce_adds_in_rank_order"]
fn rank_of_the_all_reduce_job() {
    let comm = resnet::dist::init().unwrap();
    let (rank, ranks) = (comm.rank(), comm.size());
    // Several of the chain's 1 MB messages and a short last one, and a single value.
    for len in [700_001, 1] {
        let mut values: Vec<f32> = contribution(rank, len).iter().map(|&v| v as f32).collect();
        let mut wide = contribution(rank, len);
        comm.all_reduce_sum(&mut values);
        comm.all_reduce_sum_f64(&mut wide);
        // The sums of one process adding the ranks' values in order.
        let mut want: Vec<f32> = contribution(0, len).iter().map(|&v| v as f32).collect();
        let mut want_wide = contribution(0, len);
        for r in 1..ranks {
            want.iter_mut().zip(contribution(r, len)).for_each(|(s, v)| *s += v as f32);
            want_wide.iter_mut().zip(contribution(r, len)).for_each(|(s, v)| *s += v);
        }
        assert!(values.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {rank} of {ranks}, f32");
        assert!(wide.iter().zip(&want_wide).all(|(a, b)| a.to_bits() == b.to_bits()), "rank {rank} of {ranks}, f64");
    }
    println!("rank {rank} of {ranks}: sums in rank order");
}

#[test]
fn all_reduce_adds_in_rank_order() {
    let Some((_alone, _)) = job_dir("mpi_all_reduce") else { return };
    let me = std::env::current_exe().unwrap();
    for ranks in ["2", "3", "4"] {
        let out = Command::new("mpirun")
            .args(["-n", ranks])
            .arg(&me)
            .args(["--ignored", "--exact", "rank_of_the_all_reduce_job", "--nocapture", "--test-threads", "1"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{ranks} ranks: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(stdout.matches("sums in rank order").count(), ranks.parse::<usize>().unwrap(), "{stdout}");
    }
}

#[test]
fn ranks_train_as_one_process_in_micro_batches_of_their_shares() {
    let Some((_alone, dir)) = job_dir("mpi_equivalence") else { return };
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
fn buckets_overlapping_the_backward_pass_change_nothing() {
    let Some((_alone, dir)) = job_dir("mpi_buckets") else { return };
    // ResNet-20's 1.1 MB of gradients: a first bucket of 1 MB (the classifier and the last
    // blocks) started during the backward pass, then the rest; against one all-reduce after
    // it. With synchronized BatchNorm too, whose operations share the communication thread.
    for extra in [&[][..], &["--sync-bn"][..]] {
        let mut runs = Vec::new();
        for bucket_mb in ["0", "1"] {
            let out = dir.join(format!("buckets-{bucket_mb}{}", extra.join("")));
            let mut flags = vec!["--bucket-mb", bucket_mb];
            flags.extend_from_slice(extra);
            let args = train_args(&dir, &out, "1", &flags);
            checked(Command::new("mpirun").args(["-n", "2", EXE]).args(&args).output().unwrap(), "2 ranks");
            runs.push(out);
        }
        assert_eq!(losses(&runs[0]), losses(&runs[1]), "losses with and without buckets ({extra:?})");
        let e = weights_differ_in(&runs[0], &runs[1], |_| true);
        assert_eq!(e, 0.0, "weights with and without buckets ({extra:?})");
    }
}

#[test]
fn synchronized_batchnorm_normalizes_the_whole_batch() {
    let Some((_alone, dir)) = job_dir("mpi_sync_bn") else { return };
    // One step at `batch` images.
    let one_step = |out: &Path, batch: &str, extra: &[&str]| {
        let mut args = train_args(&dir, out, "1", extra);
        let at = args.iter().position(|a| a == "30").unwrap();
        args[at] = "1".into();
        let at = args.iter().position(|a| a == "128").unwrap();
        args[at] = batch.into();
        args
    };
    // Shares of 64 images. (With shares of 43 or 60, BatchNorm's biases come out up to 3e-3
    // apart after one step and the rest 3e-5: the first gradients of those biases nearly
    // cancel over the batch, so the least change of rounding shows there.)
    for (ranks, batch) in [("2", "128"), ("3", "192")] {
        let reference = dir.join(format!("one-process-whole-batch-{batch}"));
        let args = one_step(&reference, batch, &["--bn-batch", "0"]);
        checked(Command::new(EXE).args(args).output().unwrap(), "one process");
        let job = dir.join(format!("{ranks}-ranks-sync"));
        let out = Command::new("mpirun")
            .args(["-n", ranks, EXE])
            .args(one_step(&job, batch, &["--sync-bn"]))
            .output()
            .unwrap();
        checked(out, &format!("{ranks} ranks"));
        let (want, got) = (losses(&reference), losses(&job));
        assert!(((got[0] - want[0]) / want[0]).abs() <= 1e-6, "{ranks} ranks: loss {} against {}", got[0], want[0]);
        // The running averages too: they hold the whole batch's statistics, where each rank's
        // share alone would put them 1e-2 away.
        let e = weights_differ_in(&job, &reference, |_| true);
        assert!(e <= 1e-5, "{ranks} ranks: parameters and running averages differ by {e:.2e}");
    }
    // Without --sync-bn the running averages are those of rank 0's share: the check above
    // tells the two apart.
    let job = dir.join("2-ranks-own");
    let out = Command::new("mpirun").args(["-n", "2", EXE]).args(one_step(&job, "128", &[])).output().unwrap();
    checked(out, "2 ranks");
    let reference = dir.join("one-process-whole-batch-128");
    let e = weights_differ_in(&job, &reference, |name| name.contains("running_"));
    assert!(e > 1e-3, "each rank's statistics came within {e:.2e} of the whole batch's");
}

#[test]
fn a_killed_job_resumes_on_another_number_of_ranks() {
    let Some((_alone, dir)) = job_dir("mpi_resume") else { return };
    let run = |out: &Path, iterations: &str| {
        let mut args = train_args(&dir, out, "1", &["--checkpoint-every", "4"]);
        let at = args.iter().position(|a| a == "30").unwrap();
        args[at] = iterations.into();
        args
    };
    let whole = dir.join("uninterrupted");
    let out = Command::new("mpirun").args(["-n", "2", EXE]).args(run(&whole, "30")).output().unwrap();
    checked(out, "the uninterrupted job");
    // The same job, with rank 1 killed by SIGKILL once the run is past iteration 13 (mid-epoch:
    // 10 steps an epoch); its checkpoint of iteration 12 survives.
    let killed = dir.join("killed");
    let mut job = Command::new("mpirun").args(["-n", "2", EXE]).args(run(&killed, "30")).spawn().unwrap();
    let started = Instant::now();
    while losses_if_any(&killed).len() < 13 {
        assert!(started.elapsed() < Duration::from_secs(120), "the job never reached iteration 13");
        assert!(job.try_wait().unwrap().is_none(), "the job ended before it was killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let victim = rank_process(1).expect("rank 1 runs");
    Command::new("kill").args(["-9", &victim.to_string()]).status().unwrap();
    assert!(!job.wait().unwrap().success(), "the killed job succeeded");
    let done = losses_if_any(&killed).len();
    assert!(done < 30, "the job finished ({done} steps) before it was killed");
    for ranks in [1, 2] {
        let out = dir.join(format!("resumed-on-{ranks}"));
        copy_dir(&killed, &out);
        let resume = ["--threads", "1", "train", "--resume", "--quiet", "--out"];
        let mut cmd = match ranks {
            1 => Command::new(EXE),
            _ => {
                let mut c = Command::new("mpirun");
                c.args(["-n", "2", EXE]);
                c
            }
        };
        let output = cmd.args(resume).arg(&out).output().unwrap();
        let said = String::from_utf8_lossy(&output.stderr).to_string();
        checked(output, &format!("the resume on {ranks} ranks"));
        if ranks == 1 {
            assert!(said.contains("continues on 1, each taking 2 micro-batches"), "{said}");
        }
        assert!(!said.contains("warning"), "{said}");
        assert_eq!(losses(&out).len(), 30, "a loss per step after the resume on {ranks}");
        let e = weights_differ(&out, &whole);
        assert!(e <= 1e-4, "resumed on {ranks} ranks: final weights differ by {e:.2e}");
    }
}

#[test]
fn a_rank_that_dies_ends_the_job() {
    let Some((_alone, dir)) = job_dir("mpi_failure") else { return };
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
