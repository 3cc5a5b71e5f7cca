//! Starting from weights (`train --weights`) and extending a finished run
//! (`train --resume --epochs N`).

mod common;

use common::cli::{assert_error, ok, p, resnet};
use common::{temp_dir, write_cifar_file};
use resnet::weights::StateDict;
use std::path::{Path, PathBuf};

/// Tiny CIFAR-10 files (40 and 20 records, from `seeds`) in `dir`, and a one-epoch resnet8
/// run on them in `dir/source`: (train file, test file, run directory).
fn one_epoch(dir: &Path, seeds: (u64, u64)) -> (PathBuf, PathBuf, PathBuf) {
    let (train, test, run) = (dir.join("train.bin"), dir.join("test.bin"), dir.join("source"));
    write_cifar_file(&train, 40, seeds.0);
    write_cifar_file(&test, 20, seeds.1);
    let mut args = vec!["train", "--model", "resnet8", "--data", p(&train), "--test-data", p(&test)];
    args.extend(["--epochs", "1", "--batch", "10", "--out", p(&run), "--quiet"]);
    ok(&resnet(&args));
    (train, test, run)
}

#[test]
fn a_run_starts_from_weights_with_a_new_classifier() {
    let dir = temp_dir("fine_tune_start");
    let (train, test, source) = one_epoch(&dir, (1, 2));
    // CIFAR-100 records made from the same images: two label bytes, 100 classes.
    let to_cifar100 = |from: &std::path::Path, to: &std::path::Path| {
        let bytes = std::fs::read(from).unwrap();
        let records: Vec<u8> =
            bytes.chunks_exact(3073).flat_map(|r| [[0, r[0] * 7].as_slice(), &r[1..]].concat()).collect();
        std::fs::write(to, records).unwrap();
    };
    let (train100, test100) = (dir.join("train100.bin"), dir.join("test100.bin"));
    to_cifar100(&train, &train100);
    to_cifar100(&test, &test100);

    // One step at a vanishing rate: the convolutions stay the source's, the classifier is new.
    let tuned = dir.join("tuned");
    let out = resnet(&[
        "train",
        "--model",
        "resnet8",
        "--dataset",
        "cifar100",
        "--data",
        p(&train100),
        "--test-data",
        p(&test100),
        "--iterations",
        "1",
        "--batch",
        "10",
        "--lr",
        "1e-30",
        "--warmup",
        "off",
        "--out",
        p(&tuned),
        "--quiet",
        "--weights",
        p(&source.join("model.safetensors")),
    ]);
    ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("which has 10 classes there and 100 here and starts anew"), "{stderr}");
    let (before, after) = (
        StateDict::read(&source.join("model.safetensors")).unwrap(),
        StateDict::read(&tuned.join("model.safetensors")).unwrap(),
    );
    for key in ["conv1.weight", "layer2.0.conv2.weight", "layer3.0.bn1.weight"] {
        assert_eq!(before.find(key).unwrap().values, after.find(key).unwrap().values, "{key}");
    }
    assert_eq!(after.find("linear.weight").unwrap().shape, [100, 64]);

    // Weights of another network are an error naming the key.
    let out = resnet(&[
        "train",
        "--model",
        "resnet14",
        "--data",
        p(&train),
        "--test-data",
        p(&test),
        "--iterations",
        "1",
        "--out",
        p(&dir.join("wrong")),
        "--quiet",
        "--weights",
        p(&source.join("model.safetensors")),
    ]);
    assert_error(&out, &["model.safetensors", "missing key 'layer1.1.conv1.weight'"]);

    // Weights that do not record their input normalization (a plain PyTorch file's case):
    // the run asks for --norm rather than guessing one the weights were not trained with.
    let bare = dir.join("bare.safetensors");
    let source_dict = StateDict::read(&source.join("model.safetensors")).unwrap();
    let entries: Vec<_> = (source_dict.tensors.iter())
        .map(|(name, t)| resnet::weights::Entry::f32(name.clone(), t.shape.clone(), t.values.clone()))
        .collect();
    std::fs::write(&bare, resnet::weights::serialize(&entries, Default::default()).unwrap()).unwrap();
    let bare_run = |extra: &[&str]| {
        let base = ["train", "--model", "resnet8", "--data", p(&train), "--test-data", p(&test), "--iterations", "1"];
        let out = dir.join(format!("bare{}", extra.len()));
        resnet(&[&base[..], &["--quiet", "--out", p(&out), "--weights", p(&bare)], extra].concat())
    };
    assert_error(&bare_run(&[]), &["bare.safetensors", "do not record their input normalization", "--norm"]);
    ok(&bare_run(&["--norm", "cifar"]));
}

#[test]
fn a_finished_run_is_extended() {
    let dir = temp_dir("fine_tune_extend");
    let (_, _, run) = one_epoch(&dir, (1, 2));
    let out = resnet(&["train", "--resume", "--out", p(&run), "--epochs", "3", "--quiet"]);
    let stdout = ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("now ends at iteration 12 instead of 4"));
    assert!(stdout.contains(" 12 iterations in "), "{stdout}");
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"train_loss\"")).count(), 3, "{metrics}");
    assert_error(
        &resnet(&["train", "--resume", "--out", p(&run), "--iterations", "5", "--quiet"]),
        &["at iteration 12", "must not be before"],
    );
}

#[test]
fn a_frozen_backbone_leaves_all_but_the_classifier_as_it_was() {
    let dir = temp_dir("fine_tune_frozen");
    let (train, test, source) = one_epoch(&dir, (3, 4));
    let base = |out: &Path| {
        vec![
            "train".to_string(),
            "--model".into(),
            "resnet8".into(),
            "--data".into(),
            p(&train).into(),
            "--test-data".into(),
            p(&test).into(),
            "--batch".into(),
            "10".into(),
            "--out".into(),
            p(out).into(),
            "--quiet".into(),
        ]
    };
    let run = |args: Vec<String>| ok(&resnet(&args.iter().map(String::as_str).collect::<Vec<_>>()));
    let from = source.join("model.safetensors");
    let frozen = dir.join("frozen");
    run([
        base(&frozen),
        vec!["--iterations".into(), "4".into(), "--freeze-backbone".into(), "--weights".into(), p(&from).into()],
    ]
    .concat());

    let (before, after) =
        (StateDict::read(&from).unwrap(), StateDict::read(&frozen.join("model.safetensors")).unwrap());
    for (name, tensor) in &before.tensors {
        let changed = after.find(name).unwrap().values != tensor.values;
        // Everything else, BatchNorm's running statistics included, is as it was.
        assert_eq!(changed, name.starts_with("linear."), "{name}");
    }

    // --lr-classifier: the classifier learns at its own rate while the rest barely moves.
    let probe = dir.join("probe");
    run([
        base(&probe),
        ["--iterations", "2", "--lr", "1e-30", "--lr-classifier", "0.1", "--weights", p(&from)]
            .map(String::from)
            .to_vec(),
    ]
    .concat());
    let probed = StateDict::read(&probe.join("model.safetensors")).unwrap();
    assert_eq!(
        probed.find("layer1.0.conv1.weight").unwrap().values,
        before.find("layer1.0.conv1.weight").unwrap().values
    );
    assert_ne!(probed.find("linear.weight").unwrap().values, before.find("linear.weight").unwrap().values);
}
