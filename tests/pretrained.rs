//! The published CIFAR-10 ResNet-20 (../shared/data/resnet-cifar10-pretrained) scores
//! exactly 932/1017 on the bit-exact official test records with its normalization, read
//! from its safetensors copy and from the original file (a legacy-format torch.save).

mod common;

use std::process::Command;

#[test]
fn published_resnet20_scores_932_of_1017() {
    let (Some(safetensors), Some(original), Some(data)) = (
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors"),
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.th"),
        common::shared_data("cifar-10-official-partial/test_batch.first1017.bin"),
    ) else {
        return;
    };
    for weights in [safetensors, original] {
        let out = Command::new(env!("CARGO_BIN_EXE_resnet"))
            .args(["eval", "--model", "resnet20", "--norm", "imagenet", "--weights"])
            .arg(&weights)
            .arg("--data")
            .arg(&data)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}", weights.display(), String::from_utf8_lossy(&out.stderr));
        assert!(text.lines().any(|l| l == "top-1: 91.64% (932/1017)"), "{}: {text}", weights.display());
    }
}

/// `predict` sees a CIFAR network's images as `eval` does (32×32, no resize) without any
/// view flag: the official test images as PNG files get the answers eval counts.
#[test]
fn predict_needs_no_view_flags_for_the_published_resnet20() {
    let (Some(weights), Some(data)) = (
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.th"),
        common::shared_data("cifar-10-official-partial/test_batch.first1017.bin"),
    ) else {
        return;
    };
    let dir = common::temp_dir("pretrained_predict_view");
    let records = std::fs::read(&data).unwrap();
    const COUNT: usize = 64;
    let mut labels = Vec::new();
    let mut images = Vec::new();
    for (i, record) in records.chunks_exact(3073).take(COUNT).enumerate() {
        labels.push(record[0] as usize);
        let planes = &record[1..];
        let png = dir.join(format!("{i:02}.png"));
        image::RgbImage::from_fn(32, 32, |x, y| {
            let at = (y * 32 + x) as usize;
            image::Rgb([planes[at], planes[1024 + at], planes[2048 + at]])
        })
        .save(&png)
        .unwrap();
        images.push(png);
    }
    let subset = dir.join("first64.bin");
    std::fs::write(&subset, &records[..COUNT * 3073]).unwrap();

    let eval = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["eval", "--model", "resnet20", "--norm", "imagenet", "--json", "--weights"])
        .arg(&weights)
        .arg("--data")
        .arg(&subset)
        .output()
        .unwrap();
    assert!(eval.status.success(), "{}", String::from_utf8_lossy(&eval.stderr));
    let report: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    let eval_correct = report["top1_correct"].as_u64().expect("correct count") as usize;

    let predict = Command::new(env!("CARGO_BIN_EXE_resnet"))
        .args(["predict", "--model", "resnet20", "--norm", "imagenet", "--json", "--weights"])
        .arg(&weights)
        .args(&images)
        .output()
        .unwrap();
    assert!(predict.status.success(), "{}", String::from_utf8_lossy(&predict.stderr));
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&predict.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), COUNT);
    let predict_correct = lines
        .iter()
        .zip(&labels)
        .filter(|(line, label)| line["top"][0]["index"].as_u64() == Some(**label as u64))
        .count();
    assert_eq!(predict_correct, eval_correct, "predict and eval disagree");
    assert!(eval_correct >= COUNT * 85 / 100, "{eval_correct} of {COUNT}: not the published model's accuracy");
}
