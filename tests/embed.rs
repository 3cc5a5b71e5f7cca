//! `resnet embed`: the pooled features of images, checked through the classifier (its
//! weights applied to them in f64 give the logits `predict` prints), as safetensors and
//! .npy; and `predict --csv`.

mod common;

use common::cli::{assert_error, ok, p, resnet};
use std::path::Path;

#[test]
fn embeddings_are_the_classifiers_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let weights = root.join("tests/golden/imagenet/resnet18.pth");
    let dir = common::temp_dir("embed");
    for name in ["a.png", "sub/b.png"] {
        std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
        let source = if name == "a.png" { "input.png" } else { "wide.png" };
        std::fs::copy(root.join("tests/golden/imagenet").join(source), dir.join(name)).unwrap();
    }
    let out = dir.join("emb.safetensors");
    let text = ok(&resnet(&["embed", "--model", "resnet18", "--weights", p(&weights), "--out", p(&out), p(&dir)]));
    assert!(text.contains("2 images x 512 features"), "{text}");
    let file = resnet::weights::StateDict::read(&out).unwrap();
    let emb = file.find("embeddings").unwrap();
    assert_eq!(emb.shape, [2, 512]);
    let files: Vec<String> = serde_json::from_str(&file.metadata["files"]).unwrap();
    assert_eq!(files, [p(&dir.join("a.png")), p(&dir.join("sub/b.png"))]);

    // fc(embedding) in f64 against predict's logits.
    let net = resnet::weights::StateDict::read(&weights).unwrap();
    let (w, b) = (&net.find("fc.weight").unwrap().values, &net.find("fc.bias").unwrap().values);
    for (k, image) in files.iter().enumerate() {
        let line =
            ok(&resnet(&["predict", "--model", "resnet18", "--weights", p(&weights), "--json", "--logits", image]));
        let v: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        let logits: Vec<f64> = v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let f = &emb.values[k * 512..(k + 1) * 512];
        let reference: Vec<f64> = (0..1000)
            .map(|o| b[o] as f64 + (0..512).map(|i| w[o * 512 + i] as f64 * f[i] as f64).sum::<f64>())
            .collect();
        let err = common::rel_err(&logits.iter().map(|&x| x as f32).collect::<Vec<_>>(), &reference);
        assert!(err < 1e-5, "{image}: relative error {err}");
    }

    // The same values as .npy, names beside it; an existing output is not replaced silently.
    let npy = dir.join("emb.npy");
    ok(&resnet(&["embed", "--model", "resnet18", "--weights", p(&weights), "--out", p(&npy), p(&dir)]));
    let bytes = std::fs::read(&npy).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    assert!(header.contains("'descr': '<f4'") && header.contains("'shape': (2, 512)"), "{header}");
    assert_eq!((10 + header_len) % 64, 0);
    let values: Vec<f32> =
        bytes[10 + header_len..].chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(values, emb.values);
    let names = std::fs::read_to_string(dir.join("emb.npy.txt")).unwrap();
    assert_eq!(names.lines().collect::<Vec<_>>(), files);
    let again = resnet(&["embed", "--model", "resnet18", "--weights", p(&weights), "--out", p(&npy), p(&dir)]);
    assert_error(&again, &["emb.npy", "--overwrite"]);

    // predict --csv: a header, then a line per image with its top classes.
    let csv =
        ok(&resnet(&["predict", "--model", "resnet18", "--weights", p(&weights), "--csv", "--top", "2", p(&dir)]));
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "file,top1_index,top1_label,top1_prob,top2_index,top2_label,top2_prob");
    assert_eq!(lines.len(), 3);
    assert!(lines[1].starts_with(&format!("{},", p(&dir.join("a.png")))), "{csv}");
}
