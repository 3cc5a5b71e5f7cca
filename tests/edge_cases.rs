//! Inputs at the edges, found by an audit of the command line: each gets one clear error
//! line (or, for a closed output pipe, a quiet exit), never a panic or an attempt to
//! allocate terabytes.

mod common;

use common::cli::{assert_error, ok, p, resnet};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// `dir/<class>/a.png` for each class: a small real image.
fn image_folder(dir: &Path, classes: &[&str]) {
    for class in classes {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        std::fs::copy(repo("tests/golden/imagenet/wide.png"), dir.join(class).join("a.png")).unwrap();
    }
}

/// A two-step resnet8 run in `dir/run` on 20 CIFAR-like records (`dir/d.bin`).
fn tiny_run(dir: &Path) -> PathBuf {
    let (data, run) = (dir.join("d.bin"), dir.join("run"));
    common::write_cifar_file(&data, 20, 1);
    let d = p(&data);
    let args = ["--data", d, "--test-data", d, "--iterations", "2", "--batch", "10", "--out", p(&run), "--quiet"];
    common::cli::ok(&resnet(&[&["train", "--model", "resnet8"], &args[..]].concat()));
    run
}

#[test]
fn a_closed_output_pipe_ends_the_process_quietly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["info", "resnet1202"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes away at once, as `head -1` does after its line.
    drop(child.stdout.take());
    let mut stderr = String::new();
    child.stderr.take().unwrap().read_to_string(&mut stderr).unwrap();
    let status = child.wait().unwrap();
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(status.code(), Some(101), "{stderr}");
}

#[test]
fn absurd_sizes_are_refused_before_allocating() {
    let out = resnet(&["info", "resnet20", "--classes", "99999999999"]);
    assert_error(&out, &["1 to 100000 classes", "99999999999"]);
    let out = resnet(&["info", "resnet600002"]);
    assert_error(&out, &["resnet600002", "n = 2000"]);

    let dir = common::temp_dir("edge_epochs");
    common::write_cifar_file(&dir.join("d.bin"), 20, 1);
    let data = dir.join("d.bin");
    let d = p(&data);
    let out = resnet(&[
        "train",
        "--model",
        "resnet8",
        "--data",
        d,
        "--test-data",
        d,
        "--batch",
        "10",
        "--out",
        p(&dir.join("run")),
        "--epochs",
        "18446744073709551615",
    ]);
    assert_error(&out, &["18446744073709551615 epochs", "too many"]);
    assert!(!dir.join("run/model.safetensors").exists());
}

#[test]
fn bad_crop_sizes_and_class_lists_are_reported() {
    let dir = common::temp_dir("edge_folders");
    let weights = repo("tests/golden/imagenet/resnet18.pth");
    let eval = |data: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "--model", "resnet18", "--weights", p(&weights), "--data", p(data)];
        args.extend_from_slice(extra);
        resnet(&args)
    };
    image_folder(&dir.join("one"), &["n01440764"]);
    for protocol in ["center", "10crop"] {
        let out = eval(&dir.join("one"), &["--crop", "0", "--protocol", protocol]);
        assert_error(&out, &["--crop", "must be at least 1"]);
        let out = eval(&dir.join("one"), &["--resize", "0", "--protocol", protocol]);
        assert_error(&out, &["--resize", "must be at least 1"]);
    }

    // "01" and "1" are the same class index.
    let labels = dir.join("labels.json");
    std::fs::write(&labels, r#"{"0": ["n0", "zero"], "1": ["n1", "one"], "01": ["n2", "two"]}"#).unwrap();
    let out = eval(&dir.join("one"), &["--labels", p(&labels)]);
    assert_error(&out, &["labels.json", "class index 1 is listed twice"]);

    // ImageNet has two classes named "crane" (a bird and a machine): the folder is ambiguous.
    image_folder(&dir.join("cranes"), &["crane"]);
    assert_error(&eval(&dir.join("cranes"), &[]), &["'crane'", "134", "517", "synset"]);

    // A classifier stored transposed is named as such, not as a wrong class count.
    let fc = vec![0u8; 64 * 10 * 4];
    let tensors =
        [("linear.weight", safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![64, 10], &fc).unwrap())];
    let file = dir.join("transposed.safetensors");
    std::fs::write(&file, safetensors::serialize(tensors, None).unwrap()).unwrap();
    common::write_cifar_file(&dir.join("d.bin"), 20, 1);
    let out = resnet(&["eval", "--model", "resnet20", "--weights", p(&file), "--data", p(&dir.join("d.bin"))]);
    assert_error(&out, &["transposed.safetensors", "'linear.weight'", "[classes, 64]", "[64, 10]"]);
}

#[test]
fn a_validation_folder_is_numbered_by_the_training_folders() {
    let dir = common::temp_dir("edge_splits");
    image_folder(&dir.join("data/train"), &["a", "b", "c"]);
    image_folder(&dir.join("data/val"), &["a", "d"]);
    let out = resnet(&[
        "train",
        "--model",
        "resnet18",
        "--data",
        p(&dir.join("data")),
        "--iterations",
        "1",
        "--batch",
        "2",
        "--crop",
        "32",
        "--scale",
        "32,40",
        "--out",
        p(&dir.join("run")),
        "--quiet",
    ]);
    assert_error(&out, &["val", "class folder 'd' has no counterpart in", "train"]);
}

#[test]
fn predict_asks_for_the_normalization_and_names_cifar_classes() {
    // Weights without the normalization and class names our runs record, as published
    // CIFAR weights come: a one-step run's, with the metadata dropped.
    let dir = common::temp_dir("edge_predict");
    let run = tiny_run(&dir);
    let bytes = std::fs::read(run.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let weights = dir.join("bare.safetensors");
    std::fs::write(&weights, safetensors::serialize(file.tensors(), None).unwrap()).unwrap();

    let photo = repo("tests/golden/imagenet/wide.png");
    let out = resnet(&["predict", "--model", "resnet8", "--weights", p(&weights), p(&photo)]);
    assert_error(&out, &["bare.safetensors", "pass --norm"]);
    let args = ["--norm", "cifar", "--resize", "32", "--crop", "32", "--top", "10", "--json", p(&photo)];
    let out = resnet(&[&["predict", "--model", "resnet8", "--weights", p(&weights)], &args[..]].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];
    let top = v["top"].as_array().unwrap();
    assert_eq!(top.len(), 10);
    for t in top {
        assert_eq!(t["label"].as_str(), Some(names[t["index"].as_u64().unwrap() as usize]), "{t}");
    }
}

#[test]
fn resume_names_the_flags_it_ignores() {
    let dir = common::temp_dir("edge_resume_flags");
    let run = tiny_run(&dir);
    // The summary line without its time, which differs from run to run.
    let finished = |out: &Output| {
        ok(out).lines().find(|l| l.starts_with("finished:")).map(|l| l.split(" in ").next().unwrap().to_string())
    };
    let first = resnet(&["train", "--resume", "--out", p(&run), "--quiet"]);
    // The run had finished: resuming it trains nothing, and reports its accuracy again (it
    // printed 0.00% before), without a note.
    assert!(!String::from_utf8_lossy(&first.stderr).contains("ignoring"));
    let accuracy = finished(&first).expect("a finished line");
    // The run's settings come from its checkpoint; flags that would change them are named.
    let out = resnet(&["train", "--resume", "--out", p(&run), "--batch", "3", "--lr", "0.5", "--quiet"]);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(stderr.contains("ignoring --batch, --lr"), "{stderr}");
    assert_eq!(finished(&out), Some(accuracy));
    // Another model is not a setting to ignore: the run is refused.
    let other = resnet(&["train", "--resume", "--out", p(&run), "--model", "resnet14", "--quiet"]);
    assert_error(&other, &["--resume", "trains resnet8, not resnet14"]);
}

#[test]
fn a_diverging_run_names_its_last_checkpoint_only_if_there_is_one() {
    let dir = common::temp_dir("edge_nan");
    let data = dir.join("d.bin");
    common::write_cifar_file(&data, 20, 1);
    let d = p(&data);
    let train = |extra: &[&str]| {
        let args = ["--data", d, "--test-data", d, "--batch", "10", "--lr", "1e30", "--quiet"];
        resnet(&[&["train", "--model", "resnet8"], &args[..], extra].concat())
    };
    let out = train(&["--iterations", "20", "--out", p(&dir.join("fresh"))]);
    assert_error(&out, &["loss became", "no checkpoint was written yet"]);
    let out = train(&["--iterations", "20", "--checkpoint-every", "1", "--out", p(&dir.join("saved"))]);
    assert_error(&out, &["loss became", "the last good checkpoint is", "checkpoint.safetensors (iteration"]);
}

#[test]
fn impossible_views_and_names_are_refused_before_any_work() {
    let dir = common::temp_dir("edge_views");
    let run = tiny_run(&dir);
    let (weights, photo) = (run.join("model.safetensors"), repo("tests/golden/imagenet/wide.png"));
    let predict = |extra: &[&str]| resnet(&[&["predict", "--weights", p(&weights), p(&photo)], extra].concat());
    assert_error(&predict(&["--top", "0"]), &["--top", "at least 1"]);
    assert_error(&predict(&["--resize", "32", "--crop", "48"]), &["crop of 48", "resized to 32"]);
    // A misspelt normalization is named before the (missing) data is looked for.
    let out = resnet(&["eval", "--weights", p(&weights), "--data", "/nonexistent", "--norm", "imagnet"]);
    assert_error(&out, &["imagnet", "expected pixel-mean, imagenet or cifar"]);
    // Ten classes: top-5 is printed. Three: every image is in its top 5, so it is not.
    let out = ok(&resnet(&["eval", "--weights", p(&weights), "--data", p(&dir.join("d.bin"))]));
    assert!(out.contains("top-1:") && out.contains("top-5:"), "{out}");
    let data = dir.join("three");
    image_folder(&data.join("train"), &["a", "b", "c"]);
    image_folder(&data.join("val"), &["a", "b", "c"]);
    let run = dir.join("run3");
    let args = ["--iterations", "1", "--batch", "3", "--crop", "32", "--scale", "32,40", "--out", p(&run), "--quiet"];
    ok(&resnet(&[&["train", "--model", "resnet18", "--data", p(&data)], &args[..]].concat()));
    let weights = run.join("model.safetensors");
    let out = ok(&resnet(&["eval", "--weights", p(&weights), "--data", p(&data.join("val"))]));
    assert!(out.contains("top-1:") && !out.contains("top-5"), "{out}");
}
