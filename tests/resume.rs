//! Training runs are reproducible and survive SIGKILL: a run killed mid-epoch and
//! resumed from its last checkpoint completes the full schedule and ends with exactly
//! the weights of an uninterrupted run with the same seed.

mod common;

use resnet::train::checkpoint;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `resnet train` of resnet8 at batch 16 on `data`'s train.bin and test.bin into `out`,
/// logging every step, with `extra` flags.
fn train_cmd(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_resnet"));
    c.args(["--threads", "2", "train", "--model", "resnet8", "--batch", "16", "--log-every", "1", "--quiet"])
        .arg("--data")
        .arg(data.join("train.bin"))
        .arg("--test-data")
        .arg(data.join("test.bin"))
        .arg("--out")
        .arg(out)
        .args(extra);
    c
}

/// The killed-run test's schedule: 4 epochs, a checkpoint every 7 steps, seed 5.
fn four_epochs(data: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = train_cmd(data, out, &["--epochs", "4", "--checkpoint-every", "7", "--seed", "5"]);
    c.args(extra);
    c
}

/// `resnet train --resume` of the run in `out`, which must succeed.
fn resume(out: &Path) {
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["--threads", "2", "train", "--resume", "--quiet", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// (iteration, `key`) of every per-iteration metrics line (those with a `loss`).
fn column(out: &Path, key: &str) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.get("loss")?;
            Some((v["iter"].as_u64()?, v.get(key)?.as_f64()?))
        })
        .collect()
}

/// (iteration, loss) of every per-iteration metrics line.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    column(out, "loss")
}

#[test]
fn killed_run_resumes_to_the_same_result() {
    let dir = common::temp_dir("resume");
    common::write_cifar_file(&dir.join("train.bin"), 640, 1);
    common::write_cifar_file(&dir.join("test.bin"), 100, 2);
    let per_epoch = 640 / 16;
    let total = 4 * per_epoch as u64;

    // Reference: uninterrupted.
    let reference = dir.join("reference");
    let out = four_epochs(&dir, &reference, &[]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // `--epochs 4` scales the paper's schedule: ÷10 after half the steps and again after
    // three quarters (the lr logged with a step is the one it used).
    let lr_want = |iter: u64| {
        if iter <= total / 2 {
            0.1
        } else if iter <= total * 3 / 4 {
            0.01
        } else {
            0.001
        }
    };
    let lrs = column(&reference, "lr");
    assert_eq!(lrs.len() as u64, total);
    assert!(lrs.iter().all(|&(iter, lr)| (lr - lr_want(iter)).abs() < 1e-9), "lr schedule: {lrs:?}");

    // Same seed, other loader thread count: identical losses.
    let other = dir.join("other_loader");
    let out = four_epochs(&dir, &other, &["--loader-threads", "3"]).output().unwrap();
    assert!(out.status.success());
    assert_eq!(losses(&reference), losses(&other), "same seed must give the same losses");

    // Killed mid-epoch 2 with SIGKILL, then resumed.
    let killed = dir.join("killed");
    let mut child = four_epochs(&dir, &killed, &[]).spawn().unwrap();
    let start = Instant::now();
    loop {
        let done = std::fs::read_to_string(killed.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0);
        if done >= per_epoch + per_epoch / 2 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "run ended before it could be killed");
        assert!(start.elapsed() < Duration::from_secs(120), "run made no progress");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the run was killed, not finished");
    let state = checkpoint::Checkpoint::read(&killed.join("checkpoint.safetensors")).unwrap().state;
    assert!(state.iteration > 0 && (state.iteration as u64) < total, "checkpoint from mid-run: {}", state.iteration);
    resume(&killed);

    let state = checkpoint::Checkpoint::read(&killed.join("checkpoint.safetensors")).unwrap().state;
    assert_eq!(state.iteration as u64, total, "full schedule completed");
    let resumed_losses = losses(&killed);
    assert_eq!(resumed_losses.len() as u64, total, "one line per iteration, none duplicated");
    assert_eq!(resumed_losses, losses(&reference));
    // Tensor by tensor (the header's metadata order is not fixed).
    let a = std::fs::read(reference.join("model.safetensors")).unwrap();
    let b = std::fs::read(killed.join("model.safetensors")).unwrap();
    let (a, b) =
        (safetensors::SafeTensors::deserialize(&a).unwrap(), safetensors::SafeTensors::deserialize(&b).unwrap());
    let mut names = a.names();
    names.sort();
    assert_eq!(names.len(), 1 + 4 + 3 * 10 + 2, "all state-dict entries of resnet8");
    for name in names {
        assert!(a.tensor(name).unwrap().data() == b.tensor(name).unwrap().data(), "{name} differs after resume");
    }
}

/// Warm-up ends when the training error over the last 20 steps falls below 80%. A run
/// resumed a few steps before that point must end it at the same step, so the window of
/// errors is part of the checkpoint.
#[test]
fn a_run_resumed_during_warm_up_ends_it_at_the_same_step() {
    let dir = common::temp_dir("resume_warmup");
    common::write_cifar_file(&dir.join("train.bin"), 640, 1);
    common::write_cifar_file(&dir.join("test.bin"), 20, 2);
    let flags = |iterations: &str, out: &Path| {
        let warmup = ["--warmup", "on", "--warmup-lr", "0.05", "--milestones", "1000", "--seed", "3"];
        train_cmd(&dir, out, &[&["--iterations", iterations][..], &warmup].concat())
    };
    let reference = dir.join("reference");
    let out = flags("80", &reference).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lrs = column(&reference, "lr");
    let end = lrs.iter().position(|&(_, lr)| lr > 0.05).expect("warm-up ends within 80 steps") as u64;
    assert!(end >= 20, "warm-up needs a full window of 20 steps: ended at {end}");

    // The first leg stops 10 steps before warm-up ends; its checkpoint is then made to
    // describe the full run, and resumed.
    let stop = end - 10;
    let resumed = dir.join("resumed");
    let out = flags(&stop.to_string(), &resumed).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let path = resumed.join("checkpoint.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    let mut meta: serde_json::Value = serde_json::from_str(&metadata["checkpoint"]).unwrap();
    assert_eq!(meta["state"]["warmup_window"].as_array().map(Vec::len), Some(stop.min(20) as usize));
    meta["config"]["iterations"] = 80.into();
    metadata.insert("checkpoint".into(), meta.to_string());
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    std::fs::write(&path, safetensors::serialize(file.tensors(), Some(metadata)).unwrap()).unwrap();
    resume(&resumed);
    assert_eq!(column(&resumed, "lr"), lrs, "the same rate at every step");
    assert_eq!(losses(&resumed), losses(&reference));
}

/// The scaled schedule's drops never come before the first step: a one-step run trains
/// at the rate it was given, not a hundredth of it.
#[test]
fn a_one_step_run_uses_the_given_rate() {
    let dir = common::temp_dir("one_step");
    common::write_cifar_file(&dir.join("train.bin"), 16, 1);
    common::write_cifar_file(&dir.join("test.bin"), 4, 2);
    let run = dir.join("run");
    let out = train_cmd(&dir, &run, &["--epochs", "1", "--lr", "0.05"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(column(&run, "lr"), vec![(1, 0.05)]);
}
