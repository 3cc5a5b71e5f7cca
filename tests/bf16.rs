//! `--precision bf16`: every bf16 path this CPU has (AMX, AVX-512 BF16, emulated)
//! convolves, forward and backward, as a float64 convolution of the same operands rounded
//! to bf16; a ResNet-20 training step on each stays as close to f32's as PyTorch's
//! autocast does, and AVX-512 BF16 gives the emulated path's bits; and the published
//! ResNet-20 scores within half a point of its f32 accuracy (932 of the 1017 exact
//! official test images). Paths the CPU lacks are skipped with a printed reason.
//!
//! The path is process-wide, so each test that changes it walks every path in turn, and
//! the tests that do hold one lock.

mod common;

use common::{Grads, conv_ref, forward_backward, random, rel_err, rel_err32};
use resnet::engine::bf16::{self, Path};
use resnet::engine::conv::{self, ConvShape, InputGrad};
use resnet::engine::epilogue::{Epilogue, Residual, Store};
use resnet::engine::{Precision, Workspace};
use resnet::model::{ModelConfig, ResNet};
use resnet::rng::Rng;
use std::sync::Mutex;

static PATH: Mutex<()> = Mutex::new(());

/// Runs `f` on every path this CPU has, then restores the fastest.
fn on_every_path(mut f: impl FnMut(Path)) {
    let _guard = PATH.lock().unwrap_or_else(|e| e.into_inner());
    for path in Path::ALL {
        if path > Path::detected() {
            println!("skipped {path}: this CPU (with the kernels in use) has only {}", Path::detected());
            continue;
        }
        bf16::select(path).unwrap();
        f(path);
    }
    bf16::select(Path::detected()).unwrap();
}

fn rounded(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| bf16::widen(bf16::round(x))).collect()
}

/// bf16's products are exact in f32 and summed in f32: against float64 on the rounded
/// operands, the error is f32 summation's.
const TOL: f64 = 1e-5;

#[test]
fn every_path_convolves_as_float64_on_operands_rounded_to_bf16() {
    let cases = [
        // CIFAR's stem (27-long patches: k padded to 32), 3×3 stride 1 and 2, 1×1 stride 1
        // and 2, the ImageNet stem, bottleneck-sized GEMMs over several row tiles, a
        // layer whose input gradient has too few channels for bf16 (3: f32's kernels).
        (2, ConvShape { c_in: 3, c_out: 16, kernel: 3, stride: 1, pad: 1, h: 8, w: 8 }),
        (3, ConvShape { c_in: 16, c_out: 32, kernel: 3, stride: 1, pad: 1, h: 9, w: 7 }),
        (2, ConvShape { c_in: 16, c_out: 32, kernel: 3, stride: 2, pad: 1, h: 16, w: 16 }),
        (3, ConvShape { c_in: 48, c_out: 64, kernel: 1, stride: 1, pad: 0, h: 13, w: 17 }),
        (2, ConvShape { c_in: 32, c_out: 64, kernel: 1, stride: 2, pad: 0, h: 9, w: 9 }),
        (2, ConvShape { c_in: 3, c_out: 16, kernel: 7, stride: 2, pad: 3, h: 13, w: 10 }),
        (2, ConvShape { c_in: 128, c_out: 96, kernel: 3, stride: 1, pad: 1, h: 12, w: 11 }),
        // An odd number of 16-channel strips (the last one alone), 32 channels in.
        (2, ConvShape { c_in: 32, c_out: 48, kernel: 3, stride: 1, pad: 1, h: 5, w: 6 }),
        (1, ConvShape { c_in: 256, c_out: 512, kernel: 1, stride: 2, pad: 0, h: 7, w: 7 }),
    ];
    on_every_path(|path| {
        let mut rng = Rng::new(5);
        for (n, s) in cases {
            let x = random(&mut rng, n * s.in_len());
            let w = random(&mut rng, s.weight_len());
            let dy = random(&mut rng, n * s.out_len());
            let (y_ref, mut dx_ref, dw_ref) = conv_ref(&s, n, &rounded(&x), &rounded(&w), &rounded(&dy));
            // The input gradient of a layer whose patches do not come in 16s (the stems)
            // runs in f32's kernels.
            if !bf16::applies(s.patch()) {
                dx_ref = conv_ref(&s, n, &x, &w, &dy).1;
            }
            let mut ws = Workspace::new();
            ws.set_precision(Precision::Bf16);
            let mut y = vec![0f32; n * s.out_len()];
            conv::forward(&s, n, &x, &w, &mut y, &mut ws);
            let e = rel_err(&y, &y_ref);
            assert!(e < TOL, "{path} forward {s:?}: {e:.2e}");

            let (mut dx, mut dw) = (vec![0f32; n * s.in_len()], vec![0f32; s.weight_len()]);
            conv::backward(&s, n, &x, &w, &dy, &mut dw, InputGrad::Set(&mut dx), &mut ws);
            let (ex, ew) = (rel_err(&dx, &dx_ref), rel_err(&dw, &dw_ref));
            assert!(ex < TOL && ew < TOL, "{path} backward {s:?}: dx {ex:.2e}, dw {ew:.2e}");
            // Adding to an input gradient (a block's two branches).
            let base = random(&mut rng, n * s.in_len());
            let mut dx_add = base.clone();
            conv::backward(&s, n, &x, &w, &dy, &mut dw, InputGrad::Add(&mut dx_add), &mut ws);
            let want: Vec<f64> = dx_ref.iter().zip(&base).map(|(d, b)| d + *b as f64).collect();
            let e = rel_err(&dx_add, &want);
            assert!(e < TOL, "{path} backward adding {s:?}: {e:.2e}");

            // Inference: weights packed once, the BatchNorm, residual and ReLU epilogue.
            let (scale, shift) = (random(&mut rng, s.c_out), random(&mut rng, s.c_out));
            let residual = random(&mut rng, n * s.out_len());
            let epi = Epilogue {
                scale: &scale[..],
                shift: &shift[..],
                residual: Residual::Separate(&residual[..]),
                relu: true,
            };
            let mut prepared = conv::Prepared::default();
            for _ in 0..2 {
                conv::forward_with(&s, n, &x, &w, &mut y, Store::Finish(epi), Some(&mut prepared), &mut ws);
                let want: Vec<f64> = (0..y.len())
                    .map(|i| {
                        let c = i % s.c_out;
                        (y_ref[i] * scale[c] as f64 + shift[c] as f64 + residual[i] as f64).max(0.0)
                    })
                    .collect();
                let e = rel_err(&y, &want);
                assert!(e < TOL, "{path} inference {s:?}: {e:.2e}");
            }
        }
        println!("{path}: every convolution within {TOL:e} of float64 on the rounded operands");
    });
}

/// One ResNet-20 training step's loss and parameter gradients.
fn resnet20_step(precision: Precision, images: &[f32], labels: &[u32]) -> (f32, Grads) {
    let mut model = ResNet::new(ModelConfig::from_name("resnet20", None, 10).unwrap(), 3);
    model.set_precision(precision);
    let (_, loss, grads) = forward_backward(&mut model, images, labels);
    (loss, grads)
}

#[test]
fn a_training_step_in_bf16_stays_as_close_to_f32_as_pytorchs_autocast() {
    let mut rng = Rng::new(11);
    let n = 16;
    let images = random(&mut rng, n * 32 * 32 * 3);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
    let (f32_loss, f32_grads) = resnet20_step(Precision::F32, &images, &labels);
    let mut reference: Option<(Path, f32, Grads)> = None;
    on_every_path(|path| {
        let (loss, grads) = resnet20_step(Precision::Bf16, &images, &labels);
        // bf16 keeps 8 bits of each operand: the loss moves by about 2⁻⁸ relative or
        // less, and the gradients of this random network on random data, whose sums cancel
        // heavily, by far more. PyTorch's CPU autocast, on its copy of this network and
        // such data, moves its gradients by 0.21 (median over the parameters) and at most
        // 0.35; here 0.2 and 0.45. A precision mix-up shows as 0 (f32 after all) or as
        // gradients that no longer point the same way.
        let loss_err = ((loss - f32_loss) / f32_loss).abs();
        assert!(loss_err > 0.0 && loss_err < 1e-2, "{path}: loss {loss} against f32's {f32_loss}");
        let mut errors: Vec<f64> = grads.iter().zip(&f32_grads).map(|((_, g), (_, want))| rel_err32(g, want)).collect();
        errors.sort_by(f64::total_cmp);
        let (median, max) = (errors[errors.len() / 2], errors[errors.len() - 1]);
        assert!(median < 0.3 && max < 0.6, "{path}: gradients from f32's by {median:.2} (median), {max:.2} (max)");
        println!("{path}: loss {loss_err:.1e} from f32's, gradients {median:.2} (median), {max:.2} (max)");
        // AVX-512 BF16 adds each pair of products to the f32 sums in the emulated
        // path's order, so the two give the same bits. (AMX adds in its own order: each
        // f32 difference that moves a value across a bf16 rounding boundary moves it by
        // 2⁻⁸, so on the network it differs from them as bf16 differs from f32.)
        if path <= Path::Dot {
            match &reference {
                None => reference = Some((path, loss, grads)),
                Some((first, first_loss, first_grads)) => {
                    assert_eq!(loss, *first_loss, "{path} against {first}: loss");
                    for ((name, g), (_, want)) in grads.iter().zip(first_grads) {
                        assert!(g == want, "{path} against {first}: the gradient of {name}");
                    }
                }
            }
        }
    });
}

#[test]
fn the_published_resnet20_scores_within_half_a_point_of_f32() {
    let (Some(weights), Some(test)) = (
        common::shared_data("resnet-cifar10-pretrained/resnet20-12fca82f.safetensors"),
        common::shared_data("cifar-10-official-partial/test_batch.first1017.bin"),
    ) else {
        return;
    };
    let bytes = std::fs::read(test).unwrap();
    let records: Vec<&[u8]> = bytes.chunks_exact(3073).collect();
    let norm = resnet::data::Norm::from_name("imagenet", None).unwrap();
    // Planar CIFAR records to normalized HWC images.
    let mut images = vec![0f32; records.len() * 32 * 32 * 3];
    for (r, img) in records.iter().zip(images.chunks_exact_mut(32 * 32 * 3)) {
        let hwc: Vec<u8> = (0..1024 * 3).map(|i| r[1 + (i % 3) * 1024 + i / 3]).collect();
        norm.normalize_hwc(&hwc, (32, 32), [0.0; 3], img);
    }
    let correct = |model: &mut ResNet| {
        let logits = model.forward(false, records.len(), (32, 32), &images).to_vec();
        let best = |l: &[f32]| (0..10).max_by(|&a, &b| l[a].total_cmp(&l[b])).unwrap();
        logits.chunks_exact(10).zip(&records).filter(|(l, r)| best(l) == r[0] as usize).count()
    };
    let (mut model, _) = resnet::classifier::setup::load_model(Some("resnet20"), None, &weights).unwrap();
    assert_eq!(correct(&mut model), 932, "f32");
    model.set_precision(Precision::Bf16);
    on_every_path(|path| {
        let got = correct(&mut model);
        // Half a point of 1017 images is 5 images.
        assert!(got.abs_diff(932) <= 5, "{path}: {got} of 1017 in bf16, 932 in f32");
        println!("{path}: {got} of 1017 in bf16");
    });
}

#[test]
fn the_cli_names_its_bf16_path_and_refuses_an_unknown_one() {
    let exe = env!("CARGO_BIN_EXE_resnet");
    let run =
        |value: &str| std::process::Command::new(exe).env("RESNET_BF16", value).arg("--version").output().unwrap();
    let out = run("emulated");
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("bf16: emulated"), "{out:?}");
    let out = run("tpu");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("RESNET_BF16") && err.contains("tpu") && err.contains("amx"), "{err}");
}
