//! The command line: `info` output, and one clear error line (naming the file and the
//! problem, non-zero exit, no panic) for each kind of bad input.

mod common;

use common::cli::{assert_error, p, resnet};
use std::path::Path;
use std::process::Command;

/// A short resnet8 run on one batch file (used for both training and evaluation),
/// giving real weights and checkpoints to feed the error cases.
fn train_tiny(data: &Path, out: &Path, iterations: &str, extra: &[&str]) {
    let mut args = vec!["train", "--model", "resnet8", "--data", p(data), "--test-data", p(data)];
    args.extend(["--iterations", iterations, "--batch", "10", "--out", p(out), "--quiet"]);
    args.extend(extra);
    let out = resnet(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn info_prints_exact_parameter_counts() {
    for (model, params) in [
        ("resnet20", 269722),
        ("resnet32", 464154),
        ("resnet44", 658586),
        ("resnet56", 853018),
        ("resnet110", 1727962),
        ("resnet1202", 19421274),
        ("plain20", 269722),
        ("plain110", 1727962),
    ] {
        let out = resnet(&["info", model]);
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l == format!("parameters: {}", resnet::text::grouped(params as u64))),
            "{model}: {text}"
        );
        assert!(text.contains("mult-adds: "), "{model}");
    }
    let text = String::from_utf8_lossy(&resnet(&["info", "resnet20"]).stdout).to_string();
    assert!(text.contains("mult-adds: 40.55 M"), "{text}");
}

#[test]
fn info_prints_imagenet_counts_and_mult_adds() {
    // torchvision's num_params (option B), and the paper's option-A / plain counts.
    for (args, params, mult_adds) in [
        (&["resnet18"][..], 11689512, "1.814 G"),
        (&["resnet34"], 21797672, "3.664 G"),
        (&["resnet50"], 25557032, "4.089 G"),
        (&["resnet50-v1"], 25557032, "3.858 G"),
        (&["resnet101"], 44549160, "7.801 G"),
        (&["resnet101-v1"], 44549160, "7.570 G"),
        (&["resnet152"], 60192808, "11.514 G"),
        (&["resnet152-v1"], 60192808, "11.282 G"),
        (&["plain18"], 11515688, "1.795 G"),
        (&["plain34"], 21623848, "3.644 G"),
        (&["resnet34", "--shortcut", "A"], 21623848, "3.644 G"),
        (&["resnet34", "--shortcut", "C"], 22716840, "3.831 G"),
    ] {
        let mut argv = vec!["info"];
        argv.extend_from_slice(args);
        let out = resnet(&argv);
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.lines().any(|l| l == format!("parameters: {}", resnet::text::grouped(params as u64))),
            "{args:?}: {text}"
        );
        assert!(text.contains(&format!("mult-adds: {mult_adds}")), "{args:?}: {text}");
    }
    let text = String::from_utf8_lossy(&resnet(&["info", "resnet50", "--classes", "10"]).stdout).to_string();
    assert!(text.contains("fc 2048->10"), "{text}");
    // Depth 50 is also 6n+2: the ImageNet net wins, the CIFAR one has its own name.
    let text = String::from_utf8_lossy(&resnet(&["info", "cifar-resnet50"]).stdout).to_string();
    assert!(text.contains("CIFAR") && text.contains("cifar-resnet50"), "{text}");
    assert_error(&resnet(&["info", "resnet18-v1"]), &["-v1", "bottleneck"]);
    // Names in any case.
    let text = common::cli::ok(&resnet(&["info", "ResNet50"]));
    assert!(text.lines().any(|l| l == "parameters: 25,557,032"), "{text}");
}

#[test]
fn info_without_a_model_lists_the_papers_networks() {
    let text = common::cli::ok(&resnet(&["info"]));
    for line in [
        "  resnet20          269,722 parameters",
        "  resnet1202     19,421,274 parameters",
        "  resnet50       25,557,032 parameters",
        "  plain34        21,623,848 parameters",
    ] {
        assert!(text.lines().any(|l| l == line), "no line '{line}' in:\n{text}");
    }
}

#[test]
fn unknown_model_and_bad_flags_fail_cleanly() {
    assert_error(&resnet(&["info", "resnet21"]), &["resnet21", "6n+2"]);
    assert_error(&resnet(&["info", "vgg16"]), &["unknown model 'vgg16'"]);
    assert_error(&resnet(&["bench", "--model", "nope"]), &["unknown model 'nope'"]);
    assert_error(&resnet(&["train", "--model", "resnet20", "--conv", "fft"]), &["unknown --conv 'fft'"]);
    // Values that parse but cannot make a run are refused before any data is read.
    let train = |flag: &str| resnet(&["train", "--model", "resnet20", "--data", "/nonexistent", flag]);
    assert_error(&train("--epochs=0"), &["--epochs", "at least 1"]);
    assert_error(&train("--lr=-0.1"), &["--lr must be a positive number, not -0.1"]);
    assert_error(&train("--momentum=1.5"), &["--momentum must be in [0, 1), not 1.5"]);
    assert_error(&train("--weight-decay=NaN"), &["--weight-decay", "NaN"]);
    assert_error(&resnet(&["bench", "--model", "resnet8", "--batch", "0"]), &["--batch", "at least 1"]);
    // clap's usage errors, in one line without the usage block.
    assert_error(&resnet(&["train", "--model", "resnet20", "--lr", "fast"]), &["'fast'", "--lr"]);
    assert_error(&resnet(&["train", "--model", "resnet20", "--epoch", "3"]), &["'--epoch'", "'--epochs'"]);
    assert_error(&resnet(&["eval", "--model", "resnet20"]), &["required", "--weights", "--data"]);
    // A GPU asked for where there is none (or no CUDA support in this build): one line.
    // TF32 is for GPUs: the CPU commands refuse it, train and eval name the flag it needs.
    let out = std::env::temp_dir().join("resnet_cli_tf32");
    let tf32 = ["train", "--model", "resnet8", "--precision", "tf32", "--out", out.to_str().unwrap()];
    assert_error(&resnet(&tf32), &["tf32", "--device cuda"]);
    assert_error(&resnet(&["bench", "--model", "resnet8", "--precision", "tf32"]), &["tf32", "--device cuda"]);
    assert_error(&resnet(&["predict", "--weights", "w", "--precision", "tf32", "x.png"]), &["tf32", "f32 or bf16"]);
    for command in [&["bench", "--model", "resnet20"][..], &["train", "--model", "resnet8", "--iterations", "1"]] {
        let cuda = resnet(&[command, &["--device", "cuda"]].concat());
        match cfg!(feature = "cuda") {
            false => assert_error(&cuda, &["--device cuda", "--features cuda"]),
            true => assert_error(&cuda, &["--device cuda"]),
        }
    }
    let bare = resnet(&[]);
    assert!(!bare.status.success() && String::from_utf8_lossy(&bare.stderr).contains("Commands:"));
    let help = resnet(&["eval", "--help"]);
    assert!(help.status.success() && String::from_utf8_lossy(&help.stdout).contains("Usage:"));
}

/// `--conv` sets the 3×3 algorithm of a training run, which its config records (so that a
/// resumed run keeps it), and changes its rounding only: the first step's loss agrees.
#[test]
fn train_records_the_convolution_algorithm() {
    let dir = common::temp_dir("cli_conv");
    common::write_cifar_file(&dir.join("d.bin"), 20, 1);
    let first_loss = |run: &Path| {
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let line: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
        line["loss"].as_f64().unwrap()
    };
    let mut losses = vec![];
    for conv in ["auto", "direct", "im2col"] {
        let run = dir.join(conv);
        train_tiny(&dir.join("d.bin"), &run, "1", &["--conv", conv, "--log-every", "1"]);
        let config = std::fs::read_to_string(run.join("config.json")).unwrap();
        assert!(config.contains(&format!("\"conv\": \"{conv}\"")), "{config}");
        losses.push(first_loss(&run));
    }
    assert!(losses.iter().all(|l| (l - losses[0]).abs() < 1e-5 * losses[0]), "{losses:?}");
}

/// `--bn-batch` (default 64 on CIFAR, the paper's 128 images over two GPUs) goes into the
/// run's config, so that a resumed run keeps it, and changes what training computes.
#[test]
fn train_records_the_batchnorm_groups() {
    let dir = common::temp_dir("cli_bn_batch");
    common::write_cifar_file(&dir.join("d.bin"), 20, 1);
    let mut losses = vec![];
    for (flag, recorded) in [(None, "64"), (Some("5"), "5"), (Some("0"), "null")] {
        let run = dir.join(recorded);
        let extra = flag.map_or(vec![], |f| vec!["--bn-batch", f]);
        train_tiny(&dir.join("d.bin"), &run, "3", &[&extra[..], &["--log-every", "1"]].concat());
        let config = std::fs::read_to_string(run.join("config.json")).unwrap();
        assert!(config.contains(&format!("\"bn_batch\": {recorded}")), "{config}");
        let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
        let third = metrics.lines().find(|l| l.contains("\"iter\":3")).unwrap();
        let line: serde_json::Value = serde_json::from_str(third).unwrap();
        losses.push(line["loss"].as_f64().unwrap());
    }
    // The third step's loss. Batches of 10: groups of 64 and the whole batch are the same; groups of 5 are not.
    assert!((losses[0] - losses[2]).abs() < 1e-6 * losses[2], "{losses:?}");
    assert!((losses[1] - losses[2]).abs() > 1e-4 * losses[2], "{losses:?}");
}

#[test]
fn bad_data_files_are_reported_with_their_name() {
    let dir = common::temp_dir("cli_bad_data");
    let weights = dir.join("w.safetensors");
    common::write_cifar_file(&dir.join("good.bin"), 20, 1);
    // Weights for the eval calls below come from a one-step training run.
    let run = dir.join("run");
    train_tiny(&dir.join("good.bin"), &run, "1", &[]);
    std::fs::copy(run.join("model.safetensors"), &weights).unwrap();
    let eval = |data: &Path| resnet(&["eval", "--model", "resnet8", "--weights", p(&weights), "--data", p(data)]);

    let good = eval(&dir.join("good.bin"));
    assert!(good.status.success(), "{}", String::from_utf8_lossy(&good.stderr));
    assert!(String::from_utf8_lossy(&good.stdout).contains("/20)"));

    let bytes = std::fs::read(dir.join("good.bin")).unwrap();
    let truncated = dir.join("truncated.bin");
    std::fs::write(&truncated, &bytes[..bytes.len() - 100]).unwrap();
    assert_error(&eval(&truncated), &["truncated.bin", "not a whole number of 3073-byte"]);

    let wrong = dir.join("cifar100-records.bin");
    std::fs::write(&wrong, vec![0u8; 3074 * 7]).unwrap();
    assert_error(&eval(&wrong), &["cifar100-records.bin", "3073-byte"]);

    let mut bad_label = bytes.clone();
    bad_label[3 * 3073] = 12;
    let bad = dir.join("badlabel.bin");
    std::fs::write(&bad, bad_label).unwrap();
    assert_error(&eval(&bad), &["badlabel.bin", "record 3 has label 12"]);

    assert_error(&eval(&dir.join("missing.bin")), &["missing.bin", "no such file"]);

    // A directory without the official batches names what is missing.
    let empty = common::temp_dir("cli_empty_data");
    assert_error(&eval(&empty), &["test_batch.bin"]);
    // Official names must hold the official record count.
    std::fs::copy(dir.join("good.bin"), empty.join("test_batch.bin")).unwrap();
    assert_error(&eval(&empty), &["test_batch.bin", "20 records, expected 10000"]);
    // So must a single file under an official name.
    assert_error(&eval(&empty.join("test_batch.bin")), &["test_batch.bin", "20 records, expected 10000"]);
}

#[test]
fn bad_weights_and_checkpoints_are_reported() {
    let dir = common::temp_dir("cli_bad_weights");
    common::write_cifar_file(&dir.join("d.bin"), 20, 2);
    let run = dir.join("run");
    train_tiny(&dir.join("d.bin"), &run, "2", &[]);
    let w = run.join("model.safetensors");
    let data = dir.join("d.bin");

    // Wrong depth: the first key the file lacks.
    let deeper = resnet(&["eval", "--model", "resnet14", "--weights", p(&w), "--data", p(&data)]);
    assert_error(&deeper, &["model.safetensors", "missing key 'layer1.1.conv1.weight'", "[16, 16, 3, 3]"]);
    // Wrong classes: expected and found shapes.
    let c100_path = dir.join("c100.bin");
    std::fs::write(&c100_path, vec![1u8; 3074 * 5]).unwrap();
    let classes =
        resnet(&["eval", "--model", "resnet8", "--weights", p(&w), "--data", p(&c100_path), "--dataset", "cifar100"]);
    assert_error(&classes, &["model.safetensors", "10 classes (key 'linear.weight')", "CIFAR-100 has 100"]);
    // A key the model does not have: option-B weights into an option-A model. Without
    // --shortcut the option the weights record is taken.
    let run_b = dir.join("run_b");
    train_tiny(&data, &run_b, "1", &["--shortcut", "B"]);
    let weights_b = run_b.join("model.safetensors");
    let extra =
        resnet(&["eval", "--model", "resnet8", "--shortcut", "A", "--weights", p(&weights_b), "--data", p(&data)]);
    assert_error(&extra, &["unexpected key 'layer2.0.shortcut.0.weight'", "[32, 16, 1, 1]"]);
    common::cli::ok(&resnet(&["eval", "--weights", p(&weights_b), "--data", p(&data)]));
    // A checkpoint (weights plus optimizer state) is accepted as weights.
    let ckpt_eval = resnet(&[
        "eval",
        "--model",
        "resnet8",
        "--weights",
        p(&run.join("checkpoint.safetensors")),
        "--data",
        p(&data),
    ]);
    assert!(ckpt_eval.status.success(), "{}", String::from_utf8_lossy(&ckpt_eval.stderr));

    // Corrupt weights.
    let corrupt = dir.join("corrupt.safetensors");
    std::fs::write(&corrupt, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all").unwrap();
    assert_error(
        &resnet(&["eval", "--model", "resnet8", "--weights", p(&corrupt), "--data", p(&data)]),
        &["corrupt.safetensors", "not a valid safetensors file"],
    );
    // Corrupt checkpoint on resume: names the file, leaves it in place.
    let ckpt = run.join("checkpoint.safetensors");
    let mut bytes = std::fs::read(&ckpt).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&ckpt, &bytes).unwrap();
    assert_error(
        &resnet(&["train", "--resume", "--out", p(&run), "--quiet"]),
        &["checkpoint.safetensors", "not a valid safetensors file (truncated: it ends after"],
    );
    assert_error(
        &resnet(&["train", "--resume", "--out", p(&dir.join("nothing")), "--quiet"]),
        &["nothing", "no such run directory to resume"],
    );
}

#[test]
fn train_without_data_names_the_download_command() {
    let dir = common::temp_dir("cli_no_data");
    let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["train", "--model", "resnet20", "--quiet"])
        .env("RESNET_DATA", &dir)
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_error(&out, &["resnet download cifar10"]);
}
