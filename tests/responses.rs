//! `resnet responses` (the paper's Fig. 7) against PyTorch: the published ResNet-20 on
//! the exact official test images, every per-layer std within 1e-4 relative of
//! tests/golden/responses_resnet20.json (tools/golden_responses.py, float64 hooks).

mod common;

use common::cli::{ok, p, resnet};

#[test]
fn published_resnet20_responses_match_pytorch() {
    let (Some(weights), Some(images)) = (
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors"),
        common::shared_data("cifar-10-official-partial/test_batch.first1017.bin"),
    ) else {
        return;
    };
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/responses_resnet20.json")).unwrap(),
    )
    .unwrap();
    let dir = common::temp_dir("responses_golden");
    let figure = dir.join("fig7.png");
    let args =
        ["responses", "--model", "resnet20", "--weights", p(&weights), "--data", p(&images), "--norm", "imagenet"];
    let out = ok(&resnet(&[&args[..], &["--json", "--out", p(&figure)]].concat()));
    let ours: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(ours["model"], "resnet20");
    let (ours, theirs) = (ours["layers"].as_array().unwrap(), golden["layers"].as_array().unwrap());
    assert_eq!(ours.len(), theirs.len());
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["layer"], b["layer"]);
        let (x, y) = (a["std"].as_f64().unwrap(), b["std"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-4 * y, "{}: {x} vs PyTorch {y}", a["layer"]);
    }
    let png = image::open(&figure).unwrap();
    assert_eq!((png.width(), png.height()), (760, 700));
    assert!(figure.with_extension("svg").exists());
}
