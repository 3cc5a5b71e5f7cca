//! torchvision parity: `resnet predict` on a 224×224 photo with torchvision's ResNet-18 and
//! ResNet-50 weights (a `.pth` written by torch.save, and the same converted to
//! safetensors by `resnet convert`) gives torchvision's logits within 1e-3 relative.
//! Generator: tools/golden_imagenet.py (float64 reference, BN statistics non-trivial).

mod common;

use resnet::weights::StateDict;
use std::path::{Path, PathBuf};
use std::process::Command;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet").join(name)
}

fn resnet(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).output().expect("run resnet");
    assert!(out.status.success(), "resnet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The logits `predict --json` prints for the golden photo.
fn predict_logits(model: &str, weights: &Path) -> Vec<f64> {
    let input = golden("input.png");
    let out = resnet(&[
        "predict",
        "--model",
        model,
        "--weights",
        weights.to_str().unwrap(),
        "--resize",
        "224",
        "--crop",
        "224",
        "--json",
        "--logits",
        input.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["file"].as_str(), input.to_str(), "{out}");
    assert_eq!(v["top"].as_array().map(Vec::len), Some(5));
    v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn predict_matches_torchvision_from_pth_and_safetensors() {
    let reference = StateDict::read(&golden("logits.safetensors")).unwrap();
    let dir = common::temp_dir("imagenet_golden");
    for model in ["resnet18", "resnet50"] {
        let want: Vec<f64> =
            reference.get(&format!("{model}.logits"), &[1000]).unwrap().iter().map(|&v| v as f64).collect();
        let pth = golden(&format!("{model}.pth"));
        let converted = dir.join(format!("{model}.safetensors"));
        resnet(&["convert", pth.to_str().unwrap(), converted.to_str().unwrap()]);
        let from_pth = predict_logits(model, &pth);
        let from_safetensors = predict_logits(model, &converted);
        assert_eq!(from_pth, from_safetensors, "{model}: the two formats load the same weights");
        let diff = from_pth.iter().zip(&want).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
        let norm = want.iter().map(|b| b * b).sum::<f64>().sqrt();
        let worst = from_pth.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        let scale = want.iter().fold(0.0f64, |m, b| m.max(b.abs()));
        eprintln!("{model}: relative error {:.2e}, worst logit error {:.2e} of {scale:.2}", diff / norm, worst);
        assert!(diff / norm < 1e-3 && worst / scale < 1e-3, "{model}: rel {} worst {worst}", diff / norm);
        let argmax = |v: &[f64]| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
        assert_eq!(argmax(&from_pth), argmax(&want), "{model}: top-1 class");
    }
}

/// `resnet eval --json` on a one-image folder whose class is `class`: (top-1 correct, loss).
fn eval_one(protocol: &str, dir: &Path) -> (u64, f64) {
    let weights = golden("resnet18.pth");
    let out = resnet(&[
        "eval",
        "--model",
        "resnet18",
        "--weights",
        weights.to_str().unwrap(),
        "--data",
        dir.to_str().unwrap(),
        "--protocol",
        protocol,
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("one JSON line");
    assert_eq!(v["images"].as_u64(), Some(1), "{out}");
    (v["top1_correct"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
}

#[test]
fn evaluation_protocols_match_torchvision() {
    let reference = StateDict::read(&golden("logits.safetensors")).unwrap();
    let dir = common::temp_dir("imagenet_protocols");
    for protocol in ["center", "10crop", "multiscale"] {
        let probs = reference.get(&format!("resnet18.{protocol}"), &[1000]).unwrap();
        let best = (0..1000).max_by(|&a, &b| probs[a].total_cmp(&probs[b])).unwrap();
        // A one-image folder of the class torchvision ranks first, named by its synset.
        let synset = resnet::data::ClassList::imagenet().synsets[best].clone().unwrap();
        let class_dir = dir.join(protocol).join(&synset);
        std::fs::create_dir_all(&class_dir).unwrap();
        std::fs::copy(golden("wide.png"), class_dir.join("wide.png")).unwrap();
        let (correct, loss) = eval_one(protocol, &dir.join(protocol));
        let want = -(probs[best] as f64).ln();
        eprintln!("{protocol}: loss {loss:.6} vs torchvision {want:.6}");
        assert_eq!(correct, 1, "{protocol}: top-1 class");
        assert!(((loss - want) / want).abs() < 1e-4, "{protocol}: loss {loss} vs {want}");
    }
}
