//! The engine's instruction sets agree on a ResNet-20 training step (logits, loss, every
//! parameter gradient, the parameters after the SGD update) and a ResNet-50 inference
//! batch, on each set this CPU has; and the release binary under a CPU without AVX
//! (qemu's Nehalem) scores the published ResNet-20 as on the best path. Sets the CPU
//! lacks are skipped with a printed reason.
//!
//! Where two sets run the same algorithms they agree within 1e-5. The portable set lacks
//! the register kernels (Winograd for 16–128 channels, the direct convolution), so with
//! the default algorithms it is compared at the step's im2col algorithm, and against
//! PyTorch by `tests/golden.rs`, which CI runs on every set (`.ci/run`). (Winograd's and
//! the direct kernel's rounding against im2col's, amplified by a training step's
//! BatchNorm gradients, reach 5e-3 relative at this batch: that is what separates the
//! algorithms, not the instruction sets.)
//!
//! The set is process-wide, so one test walks every set in turn.

mod common;

use common::rel_err32;
use resnet::engine::ConvAlgo;
use resnet::engine::isa::{self, Isa};
use resnet::engine::sgd::SgdConfig;
use resnet::model::{ModelConfig, ResNet};
use resnet::rng::Rng;
use std::process::Command;

/// The bound on how far two f32 paths may drift apart on a training step. The
/// paths sum in different orders (AVX2's FMA kernels and Winograd against im2col and the
/// `gemm` crate's SSE code), so they agree to rounding, not bit for bit.
const TOL: f64 = 1e-5;

/// What one training step of ResNet-20 produced: logits, loss, gradients, new parameters.
struct Step {
    logits: Vec<f32>,
    loss: f32,
    grads: common::Grads,
    params: Vec<(String, Vec<f32>)>,
}

fn resnet20_step(algo: ConvAlgo, images: &[f32], labels: &[u32]) -> Step {
    let mut model = ResNet::new(ModelConfig::from_name("resnet20", None, 10).unwrap(), 3);
    model.set_conv_algo(algo);
    let (logits, loss, grads) = common::forward_backward(&mut model, images, labels);
    // A fresh model (the same seed) for the full step, whose update reads the gradients.
    let mut model = ResNet::new(ModelConfig::from_name("resnet20", None, 10).unwrap(), 3);
    model.set_conv_algo(algo);
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    resnet::train::step(&mut model, (32, 32), images, labels, 1, sgd, &mut Default::default());
    let params = model.named().iter().map(|t| (t.name.clone(), t.to_host())).collect();
    Step { logits, loss, grads, params }
}

fn resnet50_logits(images: &[f32], n: usize) -> Vec<f32> {
    let mut model = ResNet::new(ModelConfig::from_name("resnet50", None, 1000).unwrap(), 5);
    model.forward(false, n, (64, 64), images).to_vec()
}

fn compare(isa: Isa, against: Isa, what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err32(got, want);
    assert!(e <= TOL, "{isa} against {against}: {what} differs by {e:.2e} relative");
}

fn compare_steps(isa: Isa, against: Isa, got: &Step, want: &Step) {
    compare(isa, against, "ResNet-20's logits", &got.logits, &want.logits);
    let loss_err = ((got.loss - want.loss) / want.loss).abs() as f64;
    assert!(loss_err <= TOL, "{isa} against {against}: loss {} against {}", got.loss, want.loss);
    for ((name, g), (_, w)) in got.grads.iter().zip(&want.grads) {
        compare(isa, against, &format!("the gradient of {name}"), g, w);
    }
    for ((name, g), (_, w)) in got.params.iter().zip(&want.params) {
        compare(isa, against, &format!("{name} after the step"), g, w);
    }
}

#[test]
fn every_instruction_set_computes_what_the_portable_path_does() {
    let mut rng = Rng::new(11);
    let n = 16;
    let images: Vec<f32> = (0..n * 32 * 32 * 3).map(|_| rng.normal() as f32).collect();
    let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
    let large: Vec<f32> = (0..2 * 64 * 64 * 3).map(|_| rng.normal() as f32).collect();

    isa::select(Isa::Portable).unwrap();
    let portable = resnet20_step(ConvAlgo::Im2col, &images, &labels);
    let portable50 = resnet50_logits(&large, 2);
    let mut avx2_default = None;
    for set in [Isa::Avx2, Isa::Avx512] {
        if set > Isa::detected() {
            println!("skipped {set}: this CPU has only {}", Isa::detected());
            continue;
        }
        isa::select(set).unwrap();
        compare_steps(set, Isa::Portable, &resnet20_step(ConvAlgo::Im2col, &images, &labels), &portable);
        compare(set, Isa::Portable, "ResNet-50's logits", &resnet50_logits(&large, 2), &portable50);
        let default = resnet20_step(ConvAlgo::Auto, &images, &labels);
        match &avx2_default {
            None => avx2_default = Some(default),
            Some(avx2) => compare_steps(set, Isa::Avx2, &default, avx2),
        }
        println!("{set}: agrees with the lower sets within {TOL:e}");
    }
    isa::select(Isa::detected()).unwrap();
}

/// The release binary on a CPU model with SSE4.2 but no AVX, under qemu's user-mode
/// emulation: no illegal instruction, the portable kernels chosen, and the published
/// ResNet-20's 932 of the 1017 exact official test images.
#[test]
fn runs_on_a_cpu_without_avx() {
    let (Some(weights), Some(data)) = (
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors"),
        common::shared_data("cifar-10-official-partial/test_batch.first1017.bin"),
    ) else {
        return;
    };
    if Command::new("qemu-x86_64").arg("--version").output().is_err() {
        println!("skipped: qemu-x86_64 (Debian's qemu-user) is not installed");
        return;
    }
    let exe = env!("CARGO_BIN_EXE_resnet");
    let version = Command::new("qemu-x86_64").args(["-cpu", "Nehalem", exe, "--version"]).output().unwrap();
    let version = String::from_utf8_lossy(&version.stdout);
    assert!(version.contains("kernels: portable"), "under Nehalem: {version}");
    let out = Command::new("qemu-x86_64")
        .args(["-cpu", "Nehalem", exe, "eval", "--model", "resnet20", "--norm", "imagenet", "--weights"])
        .arg(&weights)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "eval under Nehalem failed: {text}");
    assert!(text.lines().any(|l| l == "top-1: 91.64% (932/1017)"), "eval under Nehalem: {text}");
}
