//! Image-folder workflows end to end: the 51 sample photos through `predict` and every
//! evaluation protocol, training on a small synthetic folder, and one clear error (or a
//! reported skip) for each kind of bad input.

mod common;

use common::cli::{assert_error, ok, p, resnet};
use std::path::{Path, PathBuf};

fn golden_weights() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet/resnet18.pth")
}

/// The sample photos as a one-class-per-folder set: `dir/<synset>/<file>`.
fn sample_folder(images: &Path, dir: &Path) -> usize {
    let tsv = std::fs::read_to_string(images.join("../labels.tsv")).unwrap();
    let mut count = 0;
    for line in tsv.lines().skip(1) {
        let cols: Vec<&str> = line.split('\t').collect();
        let file = Path::new(cols[0]).file_name().unwrap();
        let class = dir.join(cols[2]);
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(images.join(file), class.join(file)).unwrap();
        count += 1;
    }
    // The hub's example photo has no label; it shows a Samoyed (n02111889).
    let dog = dir.join("n02111889");
    std::fs::create_dir_all(&dog).unwrap();
    std::fs::copy(images.join("pytorch_hub_dog.jpg"), dog.join("pytorch_hub_dog.jpg")).unwrap();
    count + 1
}

#[test]
fn sample_photos_run_through_predict_and_every_protocol() {
    let Some(images) = common::shared_data("imagenet-samples/images") else { return };
    let weights = golden_weights();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&images).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert_eq!(files.len(), 51);
    let mut args = vec!["predict", "--model", "resnet18", "--weights", p(&weights), "--json", "--logits"];
    args.extend(files.iter().map(|f| p(f)));
    let text = ok(&resnet(&args));
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 51);
    for (v, f) in lines.iter().zip(&files) {
        assert_eq!(v["file"].as_str(), Some(p(f)));
        assert_eq!(v["logits"].as_array().unwrap().len(), 1000);
        let top5 = v["top"].as_array().unwrap();
        let probs: Vec<f64> = top5.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs[0] <= 1.0, "{v}");
        assert!(top5[0]["label"].as_str().is_some_and(|l| !l.is_empty()));
    }

    let dir = common::temp_dir("imagenet_samples");
    assert_eq!(sample_folder(&images, &dir), 51);
    for protocol in ["center", "10crop", "multiscale"] {
        let out = ok(&resnet(&[
            "eval",
            "--model",
            "resnet18",
            "--weights",
            p(&weights),
            "--data",
            p(&dir),
            "--protocol",
            protocol,
            "--json",
        ]));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["images"].as_u64(), Some(51), "{protocol}: {out}");
        assert_eq!(v["skipped"].as_u64(), Some(0), "{protocol}: {out}");
        let (top1, top5) = (v["top1"].as_f64().unwrap(), v["top5"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&top1) && top1 <= top5, "{protocol}: {out}");
    }
}

fn metric_losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v.get("loss").and_then(|x| x.as_f64()))
        .collect()
}

#[test]
fn training_on_an_image_folder_lowers_the_loss() {
    let dir = common::temp_dir("imagenet_train");
    let data = dir.join("data");
    common::images::synthetic_folder(&data.join("train"), 3, 16, 48, 40, 1);
    common::images::synthetic_folder(&data.join("val"), 3, 4, 48, 40, 2);
    // A corrupt file in the training set is reported and skipped, not fatal.
    std::fs::write(data.join("train/class0/broken.jpg"), b"not a jpeg at all").unwrap();
    let run = dir.join("run");
    let out = resnet(&[
        "train",
        "--model",
        "resnet18",
        "--data",
        p(&data),
        "--epochs",
        "8",
        "--batch",
        "12",
        "--accumulate",
        "2",
        "--crop",
        "32",
        "--scale",
        "36,44",
        "--lr",
        "0.05",
        "--log-every",
        "1",
        "--out",
        p(&run),
        "--quiet",
    ]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("finished: test accuracy"), "{stdout}");
    assert!(stderr.contains("broken.jpg") && stderr.contains("not a JPEG or PNG"), "{stderr}");
    assert!(stderr.contains("skipped 1 unreadable images in all"), "{stderr}");
    let losses = metric_losses(&run);
    let n = losses.len();
    assert!(n >= 30, "{n} logged steps");
    let first: f64 = losses[..5].iter().sum::<f64>() / 5.0;
    let last: f64 = losses[n - 5..].iter().sum::<f64>() / 5.0;
    eprintln!("mean loss of the first 5 steps {first:.3}, last 5 {last:.3}");
    assert!(last < 0.7 * first, "loss did not fall: {first} -> {last}");
    // The run's weights carry their classes and normalization: predict names the folders.
    let img = data.join("val/class2/000.png");
    let text = ok(&resnet(&[
        "predict",
        "--model",
        "resnet18",
        "--weights",
        p(&run.join("model.safetensors")),
        "--resize",
        "36",
        "--crop",
        "32",
        p(&img),
    ]));
    assert!(text.contains("class2") || text.contains("class0") || text.contains("class1"), "{text}");
}

#[test]
fn bad_image_inputs_are_reported() {
    let dir = common::temp_dir("imagenet_bad");
    let weights = golden_weights();
    let eval = |data: &Path, extra: &[&str]| {
        let mut args = vec!["eval", "--model", "resnet18", "--weights", p(&weights), "--data", p(data)];
        args.extend_from_slice(extra);
        resnet(&args)
    };
    // A corrupt JPEG among good images: reported with its path and reason, skipped, counted.
    let folder = dir.join("mixed/n01440764");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet/wide.png"), folder.join("a.png"))
        .unwrap();
    let good = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/images/q90_420.jpg")).unwrap();
    std::fs::write(folder.join("cut.jpg"), &good[..good.len() / 2]).unwrap();
    let out = eval(&dir.join("mixed"), &[]);
    let stdout = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cut.jpg"), "{stderr}");
    assert!(stdout.contains("top-1: ") && stdout.contains("(0/1)") || stdout.contains("(1/1)"), "{stdout}");
    assert!(stdout.contains("skipped: 1 unreadable images"), "{stdout}");

    // An empty folder, and a folder of class folders without images.
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    assert_error(&eval(&dir.join("empty"), &[]), &["empty", "no class folders"]);
    std::fs::create_dir_all(dir.join("hollow/n01440764")).unwrap();
    assert_error(&eval(&dir.join("hollow"), &[]), &["hollow", "no .jpg/.jpeg/.png images"]);

    // A class folder the labels file does not know.
    let unknown = dir.join("unknown/not_a_class");
    std::fs::create_dir_all(&unknown).unwrap();
    std::fs::copy(folder.join("a.png"), unknown.join("a.png")).unwrap();
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, (0..1000).map(|i| format!("thing {i}\n")).collect::<String>()).unwrap();
    assert_error(
        &eval(&dir.join("unknown"), &["--labels", p(&labels)]),
        &["class folder 'not_a_class' is not in the labels file"],
    );
    // A labels file with the wrong number of classes.
    std::fs::write(&labels, "cat\ndog\n").unwrap();
    assert_error(&eval(&dir.join("mixed"), &["--labels", p(&labels)]), &["labels.txt", "2 classes", "1000"]);

    // A truncated .pth, for eval and for predict.
    let bytes = std::fs::read(&weights).unwrap();
    let cut = dir.join("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let out = resnet(&["predict", "--model", "resnet18", "--weights", p(&cut), p(&folder.join("a.png"))]);
    assert_error(&out, &["cut.pth"]);
    // A non-image given to predict: reported, the others still predicted, non-zero exit.
    let out =
        resnet(&["predict", "--model", "resnet18", "--weights", p(&weights), p(&folder.join("a.png")), p(&labels)]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("a.png"));
    assert!(String::from_utf8_lossy(&out.stderr).contains("labels.txt: not a JPEG or PNG image"));
}

/// A `w`×`h` PNG of a colour ramp: a few KB however long the strip.
fn ramp_png(path: &Path, w: u32, h: u32) {
    image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])).save(path).unwrap();
}

#[test]
fn elongated_and_tiny_images_are_predicted_or_skipped() {
    let dir = common::temp_dir("imagenet_shapes");
    let weights = golden_weights();
    let class = dir.join("data/n01440764");
    std::fs::create_dir_all(&class).unwrap();
    // Resized whole to shorter side 256, the strip would be 10240000×256, 7.8 GB; only the crop is resized.
    let (strip, tall, dot) = (class.join("strip.png"), class.join("tall.png"), class.join("dot.png"));
    ramp_png(&strip, 40000, 1);
    ramp_png(&tall, 2, 30000);
    ramp_png(&dot, 1, 1);
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet/wide.png"), class.join("wide.png"))
        .unwrap();
    let text = ok(&resnet(&["predict", "--model", "resnet18", "--weights", p(&weights), p(&strip), p(&tall), p(&dot)]));
    assert!(text.contains("strip.png") && text.contains("tall.png") && text.contains("dot.png"), "{text}");

    let eval = |protocol: &str| {
        let data = dir.join("data");
        let args = ["eval", "--model", "resnet18", "--weights", p(&weights), "--data", p(&data)];
        resnet(&[&args[..], &["--protocol", protocol, "--json"]].concat())
    };
    for protocol in ["center", "10crop"] {
        let out = ok(&eval(protocol));
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!((v["images"].as_u64(), v["skipped"].as_u64()), (Some(4), Some(0)), "{protocol}: {out}");
    }
    // Multi-scale testing needs the whole scaled image: the strips are reported and skipped, the rest evaluated.
    let out = eval("multiscale");
    let v: serde_json::Value = serde_json::from_str(ok(&out).trim()).unwrap();
    assert_eq!((v["images"].as_u64(), v["skipped"].as_u64()), (Some(2), Some(2)), "{v}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let strip_line = format!(
        "{}: 40000x1 is too elongated for multi-scale testing: shorter side 224 would make it 8960000x224",
        strip.display()
    );
    assert!(stderr.contains(&strip_line), "{stderr}");
    assert!(stderr.contains("tall.png: 2x30000 is too elongated"), "{stderr}");
}
