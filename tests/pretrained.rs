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
