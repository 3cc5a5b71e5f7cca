//! How exact each convolution algorithm's gradients are on trained weights: ResNet-20's
//! gradient on one batch in training mode, per `--conv` algorithm, against float64
//! PyTorch, beside PyTorch's own float32 (`tools/gradient_reference.py` writes both).
//! The relative error is ‖ours − f64‖ / ‖f64‖ per parameter; the worst is printed.
//!
//!     python tools/gradient_reference.py runs/r20/model.safetensors /tmp/ref.safetensors --data DIR
//!     cargo run --release --example gradient_accuracy -- runs/r20/model.safetensors /tmp/ref.safetensors

use resnet::engine::ConvAlgo;
use resnet::model::{ModelConfig, ResNet};
use resnet::nn::Slot;
use resnet::weights::{StateDict, from_torch, to_torch};
use std::path::Path;

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let norm: f64 = b.iter().map(|&y| (y as f64).powi(2)).sum();
    (diff / norm.max(f64::MIN_POSITIVE)).sqrt()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [weights, reference] = [&args[0], &args[1]].map(|p| StateDict::read(Path::new(p)).unwrap());
    let n = reference.find("labels").expect("no labels in the reference file").values.len();
    let nchw = reference.get("input", &[n, 3, 32, 32]).unwrap();
    let mut input = vec![0f32; nchw.len()];
    for i in 0..n {
        for c in 0..3 {
            for p in 0..1024 {
                input[(i * 1024 + p) * 3 + c] = nchw[(i * 3 + c) * 1024 + p];
            }
        }
    }
    let labels: Vec<u32> = reference.get("labels", &[n]).unwrap().iter().map(|&v| v as u32).collect();
    for (name, algo) in [
        ("auto", ConvAlgo::Auto),
        ("winograd", ConvAlgo::Winograd),
        ("direct", ConvAlgo::Direct),
        ("im2col", ConvAlgo::Im2col),
    ] {
        let mut model = ResNet::new(ModelConfig::from_name("resnet20", None, 10).unwrap(), 0);
        model.set_conv_algo(algo);
        for t in model.named().iter_mut() {
            t.set_from_host(from_torch(t.layout, &t.shape, weights.get(&t.name, &t.shape).unwrap().to_vec()));
        }
        let logits = model.forward(true, n, (32, 32), &input).to_vec();
        let mut dlogits = vec![0f32; n * 10];
        resnet::engine::ops::softmax_cross_entropy(n, 10, &logits, &labels, &mut dlogits);
        model.backward(&dlogits);
        let (mut ours, mut pytorch, mut at) = (0f64, 0f64, String::new());
        for t in model.named() {
            if let Slot::Param(p) = &t.slot {
                let want = reference.get(&format!("f64.{}", t.name), &t.shape).unwrap();
                let e = rel_err(&to_torch(t.layout, &t.shape, &p.grad.to_host()), want);
                if e > ours {
                    (ours, at) = (e, t.name.clone());
                }
                pytorch = pytorch.max(rel_err(reference.get(&format!("f32.{}", t.name), &t.shape).unwrap(), want));
            }
        }
        println!("--conv {name:8}: worst gradient error {ours:.1e} ({at}); PyTorch float32: {pytorch:.1e}");
    }
}
