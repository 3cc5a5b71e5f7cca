//! Daily use: views that follow the weights, the best weights kept, plain progress lines
//! where there is no terminal, a summary at the end, flags that cannot contradict.

mod common;

use common::cli::{assert_error, ok, p, resnet};
use common::{temp_dir, write_cifar_file};
use std::path::{Path, PathBuf};
use std::process::Output;

/// A resnet8 run of `epochs` on tiny CIFAR-10 files (`train` and `test` records), a
/// metrics line every 2 iterations, its stderr not a terminal.
fn tiny_run(dir: &Path, records: (usize, usize), epochs: &str, extra: &[&str]) -> (Output, PathBuf) {
    let (train, test, run) = (dir.join("train.bin"), dir.join("test.bin"), dir.join("run"));
    write_cifar_file(&train, records.0, 1);
    write_cifar_file(&test, records.1, 2);
    let mut args = vec!["train", "--model", "resnet8", "--data", p(&train), "--test-data", p(&test)];
    args.extend(["--epochs", epochs, "--batch", "10", "--log-every", "2", "--out", p(&run)]);
    args.extend(extra);
    let out = resnet(&args);
    ok(&out);
    (out, run)
}

/// Three epochs of 6 iterations.
fn three_epochs(dir: &Path) -> (Output, PathBuf) {
    tiny_run(dir, (60, 30), "3", &[])
}

#[test]
fn a_run_keeps_its_best_weights_logs_plain_lines_and_sums_up() {
    let dir = temp_dir("daily_best");
    let (out, run) = three_epochs(&dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);

    // Without a terminal: a plain line every --log-every iterations, with the run's ETA.
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("iter ")).collect();
    assert_eq!(lines.len(), 9, "18 iterations, a line every 2:\n{stderr}");
    assert!(lines[0].starts_with("iter 2/18 epoch 1: loss ") && lines[0].contains(" lr 0.1 "), "{}", lines[0]);
    assert!(lines.iter().all(|l| l.contains("img/s | run eta ")), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains('\u{1b}'), "terminal control in a log: {stderr:?}");

    // best.safetensors scores the best epoch's test accuracy.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let best_epoch = metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v.get("test_acc").and_then(|a| a.as_f64()))
        .fold(0.0f64, f64::max);
    let confusion = dir.join("confusion.csv");
    let eval_to = |confusion: &Path| {
        resnet(&[
            "eval",
            "--model",
            "resnet8",
            "--json",
            "--weights",
            p(&run.join("best.safetensors")),
            "--data",
            p(&dir.join("test.bin")),
            "--confusion",
            p(confusion),
        ])
    };
    let eval = ok(&eval_to(&confusion));
    let report: serde_json::Value = serde_json::from_str(&eval).unwrap();
    let rounded = (best_epoch * 1e6).round() / 1e6;
    assert_eq!(report["top1"].as_f64().unwrap(), rounded, "best.safetensors is not the best epoch's");

    // Per-class counts in the JSON and the confusion matrix agree with the totals.
    let rows: Vec<Vec<String>> = std::fs::read_to_string(&confusion)
        .unwrap()
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(rows.len(), 11, "a header and ten classes");
    assert_eq!(rows[0][1], "airplane");
    let count = |r: &Vec<String>, j: usize| r[j].parse::<u64>().unwrap();
    let diagonal: u64 = (1..=10).map(|i| count(&rows[i], i)).sum();
    let all: u64 = rows[1..].iter().map(|r| (1..=10).map(|j| count(r, j)).sum::<u64>()).sum();
    assert_eq!((diagonal, all), (report["top1_correct"].as_u64().unwrap(), 30));
    for class in report["per_class"].as_array().unwrap() {
        let i = class["index"].as_u64().unwrap() as usize + 1;
        assert_eq!(class["total"].as_u64().unwrap(), (1..=10).map(|j| count(&rows[i], j)).sum::<u64>());
        assert_eq!(class["correct"].as_u64().unwrap(), count(&rows[i], i));
    }

    // The confusion file is checked before the evaluation: an existing one is kept (no
    // --overwrite), and a path that cannot be written is named, with nothing printed.
    let kept = std::fs::read(&confusion).unwrap();
    assert_error(&eval_to(&confusion), &["confusion.csv", "already exists", "--overwrite"]);
    assert_eq!(std::fs::read(&confusion).unwrap(), kept);
    let nowhere = eval_to(&dir.join("no-such-folder").join("c.csv"));
    assert_error(&nowhere, &["c.csv", "there is no folder", "no-such-folder"]);
    assert!(nowhere.stdout.is_empty(), "evaluated before refusing the path");
    assert_error(&eval_to(&dir), &["is a directory"]);
    // The run directory given as weights: its weights file is named.
    let whole_run = resnet(&["eval", "--model", "resnet8", "--weights", p(&run), "--data", p(&dir.join("test.bin"))]);
    assert_error(&whole_run, &["is a directory, not a file; a run's weights are in", "best.safetensors"]);

    // metrics.csv: a header and one row per epoch, the epoch lines' values.
    let csv = std::fs::read_to_string(run.join("metrics.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows.len(), 4, "{csv}");
    assert!(rows[0].starts_with("epoch,iter,train_loss,train_acc,test_loss,test_acc,"), "{csv}");
    assert!(rows[3].starts_with("3,18,"), "{csv}");
    let test_acc: Vec<f64> = rows[1..].iter().map(|r| r.split(',').nth(5).unwrap().parse().unwrap()).collect();
    assert_eq!(test_acc.iter().cloned().fold(0.0, f64::max), best_epoch);

    // The summary: accuracy, time, and where everything is.
    assert!(stdout.starts_with("finished: test accuracy ") && stdout.contains(", best "), "{stdout}");
    assert!(stdout.contains(" 18 iterations in "), "{stdout}");
    for file in ["model.safetensors", "best.safetensors", "metrics.jsonl"] {
        assert!(stdout.contains(p(&run.join(file))), "summary lacks {file}: {stdout}");
    }
}

#[test]
fn predict_sees_images_as_the_weights_were_trained() {
    let dir = temp_dir("daily_view");
    let (_, run) = three_epochs(&dir);
    let weights = run.join("model.safetensors");
    let file = resnet::weights::StateDict::read(&weights).unwrap();
    assert_eq!(resnet::weights::metadata_view(&file).unwrap(), Some(resnet::weights::View { resize: 32, crop: 32 }));
    // A 48x40 photo: resized to 32 on its shorter side and centre-cropped to 32, as trained,
    // with no view flags; the 256/224 of ImageNet networks would give other logits.
    let image = dir.join("photo.png");
    image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5) as u8, (y * 6) as u8, ((x + y) * 3) as u8]))
        .save(&image)
        .unwrap();
    let logits = |extra: &[&str]| {
        let mut args = vec!["predict", "--model", "resnet8", "--json", "--logits", "--weights", p(&weights), p(&image)];
        args.extend(extra);
        let line: serde_json::Value = serde_json::from_str(ok(&resnet(&args)).trim()).unwrap();
        line["logits"].clone()
    };
    assert_eq!(logits(&[]), logits(&["--resize", "32", "--crop", "32"]));
    assert_ne!(logits(&[]), logits(&["--resize", "256", "--crop", "224"]));
}

#[test]
fn contradicting_flags_are_refused() {
    let out = resnet(&["train", "--model", "resnet20", "--epochs", "1", "--iterations", "10"]);
    assert_error(&out, &["--epochs", "--iterations", "cannot be used with"]);
    let out = resnet(&["train", "--model", "resnet20", "--milestones", "5", "--schedule", "1"]);
    assert_error(&out, &["--milestones", "--schedule", "cannot be used with"]);
}

#[test]
fn bench_reports_the_spread_and_json() {
    let out = ok(&resnet(&["bench", "--model", "resnet8", "--batch", "4", "--steps", "3", "--warmup", "1", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["train_images_per_s", "infer_images_per_s"] {
        let (min, median, max) =
            (v[key]["min"].as_f64().unwrap(), v[key]["median"].as_f64().unwrap(), v[key]["max"].as_f64().unwrap());
        assert!(0.0 < min && min <= median && median <= max, "{key}: {out}");
    }
    let text = ok(&resnet(&["bench", "--model", "resnet8", "--batch", "4", "--steps", "3", "--no-peak"]));
    assert!(text.lines().any(|l| l.starts_with("train: ") && l.contains(" img/s (")), "{text}");
}

#[test]
fn wrong_kind_errors_name_the_real_problem() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let resnet18 = root.join("tests/golden/imagenet/resnet18.pth");
    let image = root.join("tests/golden/imagenet/input.png");
    // Weights of another depth: the message says which network they fit.
    let out = resnet(&["predict", "--model", "resnet50", "--weights", p(&resnet18), p(&image)]);
    assert_error(&out, &["resnet18.pth", "the file holds the weights of a resnet18, not a resnet50"]);
    // An image where a data folder was expected.
    let out = resnet(&["eval", "--model", "resnet18", "--weights", p(&resnet18), "--data", p(&image)]);
    assert_error(&out, &["input.png", "an image file", "resnet predict"]);
    let out =
        resnet(&["eval", "--model", "resnet18", "--weights", p(&resnet18), "--data", p(&image), "--dataset", "folder"]);
    assert_error(&out, &["input.png", "a file where an image folder"]);
    let out = resnet(&["train", "--model", "resnet18", "--data", p(&image)]);
    assert_error(&out, &["input.png", "an image file", "DIR/train/<class>"]);
    // predict takes folders of images.
    let dir = temp_dir("daily_predict_dir");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::copy(&image, dir.join("a.png")).unwrap();
    std::fs::copy(&image, dir.join("sub/b.png")).unwrap();
    std::fs::write(dir.join("notes.txt"), "not an image").unwrap();
    let text = ok(&resnet(&["predict", "--model", "resnet18", "--weights", p(&resnet18), p(&dir)]));
    let files: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(files, [p(&dir.join("a.png")), p(&dir.join("sub/b.png"))], "{text}");
}

/// TensorBoard's own reader (the `tensorboard` pip package) reads back what the run logged;
/// skipped, saying why, where the package is missing (.ci/run installs it).
#[test]
fn tensorboard_reads_the_runs_scalars() {
    let probe = std::process::Command::new("python3").args(["-c", "import tensorboard"]).output();
    if !probe.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP: python3 cannot import tensorboard (pip install tensorboard)");
        return;
    }
    let dir = temp_dir("daily_tensorboard");
    let (_, run) = tiny_run(&dir, (40, 20), "2", &["--quiet", "--tensorboard"]);
    let script = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}))
"#;
    let out = std::process::Command::new("python3").args(["-c", script, p(&run.join("tensorboard"))]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scalars: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Window lines have "loss", epoch lines "train_loss"; both have "lr".
    let expect = |tag: &str, key: &str| {
        let marker = if tag.starts_with("train/") { "loss" } else { "train_loss" };
        let logged: Vec<(u64, f64)> = lines
            .iter()
            .filter(|l| l.get(marker).is_some())
            .filter_map(|l| Some((l["iter"].as_u64()?, l.get(key)?.as_f64()?)))
            .collect();
        let read: Vec<(u64, f64)> = scalars[tag]
            .as_array()
            .unwrap_or_else(|| panic!("no scalar {tag}: {scalars}"))
            .iter()
            .map(|e| (e[0].as_u64().unwrap(), e[1].as_f64().unwrap()))
            .collect();
        assert_eq!(read.len(), logged.len(), "{tag}");
        for ((s1, v1), (s2, v2)) in read.iter().zip(&logged) {
            assert_eq!(s1, s2, "{tag}");
            assert!((v1 - v2).abs() <= 1e-6 * v2.abs().max(1.0), "{tag} at {s1}: {v1} vs {v2}");
        }
    };
    expect("train/loss", "loss");
    expect("train/lr", "lr");
    expect("epoch/test_acc", "test_acc");
    expect("epoch/train_loss", "train_loss");
    assert_eq!(scalars["train/loss"].as_array().unwrap().len(), 4, "8 iterations, a point every 2");
}
