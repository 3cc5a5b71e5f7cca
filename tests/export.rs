//! `resnet export` against onnxruntime: the exported ResNet-20 (option A), ResNet-18 and
//! ResNet-50 (option B projections) give our logits within 1e-4 relative, BatchNorm as
//! BatchNormalization and folded into the convolutions, at batch 1 and 8. The BatchNorm
//! statistics and affine parameters are randomized, so that folding is tested. Skips,
//! saying why, when python3 cannot import onnxruntime (`.ci/run` installs it).

mod common;

use common::cli::{ok, p, resnet};
use resnet::model::ModelConfig;
use resnet::rng::Rng;
use std::path::{Path, PathBuf};
use std::process::Command;

fn onnxruntime_missing() -> bool {
    let probe = Command::new("python3").args(["-c", "import onnxruntime, numpy"]).output();
    let missing = !probe.is_ok_and(|o| o.status.success());
    if missing {
        eprintln!("SKIP: python3 cannot import onnxruntime (pip install onnxruntime)");
    }
    missing
}

/// A network's weights with random BatchNorm parameters and statistics, saved with CIFAR
/// normalization metadata.
fn random_weights(model: &str, path: &Path, seed: u64) {
    let classes = if model.starts_with("resnet20") { 10 } else { 1000 };
    let mut net = resnet::model::ResNet::new(ModelConfig::from_name(model, None, classes).unwrap(), seed);
    let mut rng = Rng::new(seed);
    let mut entries = resnet::weights::state_dict(&net.named());
    for e in entries.iter_mut().filter(|e| e.name.contains("bn") || e.name.contains("downsample.1")) {
        for v in e.values.iter_mut() {
            let u = rng.below(1000) as f32 / 1000.0;
            *v = match e.name.rsplit('.').next().unwrap() {
                "weight" => 0.5 + u,
                "bias" | "running_mean" => u - 0.5,
                "running_var" => 0.5 + u,
                _ => *v,
            };
        }
    }
    let norm = resnet::data::Norm::from_name("cifar", None).unwrap();
    let view = resnet::weights::View { resize: 32, crop: 32 };
    let metadata = resnet::train::checkpoint::weights_metadata(&net, &norm, &[], view);
    std::fs::write(path, resnet::weights::serialize(&entries, metadata).unwrap()).unwrap();
}

/// Our logits for an NCHW input.
fn our_logits(weights: &Path, model: &str, nchw: &[f32], n: usize, side: usize) -> Vec<f32> {
    let (mut net, _) = resnet::classifier::setup::load_model(Some(model), None, weights).unwrap();
    let plane = side * side;
    let mut nhwc = vec![0f32; nchw.len()];
    for i in 0..n {
        for c in 0..3 {
            for q in 0..plane {
                nhwc[(i * plane + q) * 3 + c] = nchw[(i * 3 + c) * plane + q];
            }
        }
    }
    net.forward(false, n, (side, side), &nhwc).to_vec()
}

fn ort_logits(model: &Path, nchw: &[f32], n: usize, side: usize, dir: &Path) -> Vec<f32> {
    let (input, output) = (dir.join("input.f32"), dir.join("output.f32"));
    std::fs::write(&input, nchw.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/onnx_run.py");
    let dims = [n, 3, side, side].map(|d| d.to_string());
    let out = Command::new("python3").args([script, p(model), p(&input)]).args(&dims).arg(p(&output)).output().unwrap();
    assert!(out.status.success(), "onnxruntime: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&output).unwrap().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn check(model: &str, weights: PathBuf, side: usize, dir: &Path) {
    let mut rng = Rng::new(5);
    for fold in [false, true] {
        for (batch, flag) in [(1, "1"), (8, "dynamic")] {
            let onnx = dir.join(format!("{model}-{fold}-{batch}.onnx"));
            let mut args =
                vec!["export", "--model", model, "--weights", p(&weights), "--out", p(&onnx), "--batch", flag];
            if fold {
                args.push("--fold-bn");
            }
            ok(&resnet(&args));
            let input = common::random(&mut rng, batch * 3 * side * side);
            let ours = our_logits(&weights, model, &input, batch, side);
            let theirs = ort_logits(&onnx, &input, batch, side, dir);
            let err = common::rel_err32(&ours, &theirs);
            assert!(err < 1e-4, "{model} fold {fold} batch {batch}: relative error {err:e}");
        }
    }
}

#[test]
fn exported_networks_match_onnxruntime() {
    if onnxruntime_missing() {
        return;
    }
    let dir = common::temp_dir("export");
    let r20 = dir.join("resnet20.safetensors");
    random_weights("resnet20", &r20, 1);
    check("resnet20", r20, 32, &dir);
    for (model, seed) in [("resnet18", 2), ("resnet50", 3)] {
        let w = dir.join(format!("{model}.safetensors"));
        random_weights(model, &w, seed);
        check(model, w, 224, &dir);
    }
}

#[test]
fn export_refuses_what_it_cannot_write() {
    let dir = common::temp_dir("export_refuses");
    let w = dir.join("r20.safetensors");
    random_weights("resnet20", &w, 1);
    let out = dir.join("m.onnx");
    let base = ["export", "--weights", p(&w), "--out"];
    common::cli::assert_error(&resnet(&[&base[..], &[p(&dir.join("m.pb"))]].concat()), &["m.pb", ".onnx"]);
    common::cli::assert_error(&resnet(&[&base[..], &[p(&out), "--opset", "9"]].concat()), &["--opset 9", "13 to 21"]);
    common::cli::assert_error(&resnet(&[&base[..], &[p(&out), "--batch", "0"]].concat()), &["--batch", "'0'"]);
    ok(&resnet(&[&base[..], &[p(&out)]].concat()));
    common::cli::assert_error(&resnet(&[&base[..], &[p(&out)]].concat()), &["m.onnx", "already exists"]);
}
