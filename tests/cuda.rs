//! The CUDA backend's kernels (feature `cuda`).
//!
//! Without a GPU: NVRTC compiles every kernel for Ampere and Hopper, to machine code (what
//! a GPU loads) and to PTX, which `ptxas` assembles for sm_80 and sm_90. Each step skips, saying why, when its tool is not
//! found, except under `RESNET_REQUIRE_NVRTC=1` (set by `.ci/run`, which installs both
//! from pip), where a missing tool fails.
//!
//! On a GPU: each kernel, and each pass of cuDNN's convolutions, against its CPU
//! counterpart on the shapes of ResNet-20 and ResNet-50, on random data; then whole
//! networks' inference and training steps against the CPU engine's. The kernels add in the CPU's order where the order decides
//! the rounding, so most must match bit for bit; BatchNorm's statistics are summed in
//! another order, so it matches to 1e-5 relative. Without a GPU these skip, saying why.
#![cfg(feature = "cuda")]

mod common;

use resnet::engine::Workspace;
use resnet::engine::batchnorm::{self, BnParams, Saved, Scratch};
use resnet::engine::conv::{self, ConvShape, InputGrad};
use resnet::engine::cuda::{self, Gpu, ops::BnLayer};
use resnet::engine::ops::{self, ShortcutA};
use resnet::engine::pool::{self, PoolShape};
use resnet::engine::sgd::{self, SgdConfig};
use resnet::model::cuda::{GpuNet, GpuTrainer};
use resnet::model::{ModelConfig, ResNet, Shortcut};
use resnet::nn::Slot;
use resnet::rng::Rng;
use std::process::Command;

/// Whether the environment variable `name` is `1`.
fn set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn required() -> bool {
    set("RESNET_REQUIRE_NVRTC")
}

/// `ptxas`, from `$PTXAS` or the path.
fn ptxas() -> Option<String> {
    let candidate = std::env::var("PTXAS").unwrap_or_else(|_| "ptxas".into());
    Command::new(&candidate).arg("--version").output().ok().filter(|o| o.status.success()).map(|_| candidate)
}

#[test]
fn kernels_compile_for_ampere_and_hopper() {
    if let Some(why) = cuda::nvrtc_missing() {
        assert!(!required(), "RESNET_REQUIRE_NVRTC=1, but {why}");
        println!("skipped: {why}");
        return;
    }
    let assembler = ptxas();
    if assembler.is_none() {
        assert!(!required(), "RESNET_REQUIRE_NVRTC=1, but ptxas is neither $PTXAS nor on the path");
        println!("ptxas not found ($PTXAS or the path): compiling to PTX only");
    }
    let dir = std::env::temp_dir().join(format!("resnet-cuda-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for arch in cuda::CI_ARCHS {
        // The machine code `Gpu::open` loads, straight from NVRTC.
        let cubin = cuda::compile(&format!("sm_{arch}")).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(cubin.starts_with(b"\x7fELF"), "sm_{arch}: NVRTC's cubin is not an ELF image");
        // PTX, assembled apart by ptxas.
        let ptx =
            String::from_utf8(cuda::compile(&format!("compute_{arch}")).unwrap_or_else(|e| panic!("{e:#}"))).unwrap();
        for kernel in cuda::KERNELS {
            assert!(ptx.contains(&format!(".entry {kernel}(")), "compute_{arch}: the PTX has no kernel {kernel}");
        }
        let Some(ptxas) = &assembler else { continue };
        let (src, out) = (dir.join(format!("compute_{arch}.ptx")), dir.join(format!("sm_{arch}.cubin")));
        std::fs::write(&src, &ptx).unwrap();
        let run = Command::new(ptxas).arg(format!("-arch=sm_{arch}")).arg(&src).arg("-o").arg(&out).output().unwrap();
        assert!(run.status.success(), "ptxas -arch=sm_{arch} failed:\n{}", String::from_utf8_lossy(&run.stderr));
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// The GPU, or None (after printing why) on a machine without one. A GPU that is there
/// but cannot be used is a failure, and so is a missing one under `RESNET_REQUIRE_GPU=1`
/// (`tools/device_check.sh` sets it).
fn gpu() -> Option<Gpu> {
    if let Some(why) = cuda::gpu_missing() {
        assert!(!set("RESNET_REQUIRE_GPU"), "RESNET_REQUIRE_GPU=1, but {why}");
        println!("skipped: {why}");
        return None;
    }
    Some(Gpu::open().unwrap_or_else(|e| panic!("{e:#}")))
}

/// [`gpu`], where cuDNN can be loaded too; else None, saying why.
fn gpu_with_cudnn() -> Option<Gpu> {
    let gpu = gpu()?;
    if let Some(why) = cuda::conv::cudnn_missing() {
        assert!(!set("RESNET_REQUIRE_GPU"), "RESNET_REQUIRE_GPU=1, but {why}");
        println!("skipped: {why}");
        return None;
    }
    Some(gpu)
}

/// `common::random`'s normal values, scaled and shifted.
fn random(rng: &mut Rng, len: usize, scale: f32, offset: f32) -> Vec<f32> {
    common::random(rng, len).into_iter().map(|v| v * scale + offset).collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what}[{i}]: GPU {g}, CPU {w} (error {err:e} > {tol:e})");
    }
}

fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: GPU {g}, CPU {w}");
    }
}

#[test]
fn relu_backward_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(1);
    let len = 128 * 32 * 32 * 16;
    let (g, out) = (random(&mut rng, len, 1.0, 0.0), random(&mut rng, len, 1.0, 0.0));
    let (mut want, mut want_copy) = (g.clone(), vec![0.0; len]);
    ops::relu_backward(&mut want, &out, Some(&mut want_copy));
    let (mut dg, dout, mut dcopy) = (gpu.upload(&g).unwrap(), gpu.upload(&out).unwrap(), gpu.zeros(len).unwrap());
    gpu.relu_backward(&mut dg, &dout, Some(&mut dcopy)).unwrap();
    assert_same("g", &gpu.download(&dg).unwrap(), &want);
    assert_same("copy", &gpu.download(&dcopy).unwrap(), &want_copy);
    // Without the copy (a null pointer to the kernel).
    let mut dg = gpu.upload(&g).unwrap();
    gpu.relu_backward(&mut dg, &dout, None).unwrap();
    assert_same("g alone", &gpu.download(&dg).unwrap(), &want);
}

/// BatchNorm's training forward and backward on `rows` × `c`, with the residual and ReLU
/// of a block's last BN, the ReLU of its first, or neither.
fn check_batchnorm(gpu: &Gpu, rows: usize, c: usize, residual: bool, relu: bool) {
    let what = format!("rows {rows} c {c} residual {residual} relu {relu}");
    let mut rng = Rng::new((rows * c) as u64);
    let len = rows * c;
    // A mean well away from zero, as after a convolution without bias.
    let x = random(&mut rng, len, 2.0, 3.0);
    let res = random(&mut rng, len, 1.0, 0.0);
    let dy = random(&mut rng, len, 1.0, 0.0);
    let (gamma, beta) = (random(&mut rng, c, 0.2, 1.0), random(&mut rng, c, 0.2, 0.0));
    let (mut rm, mut rv) = (random(&mut rng, c, 0.1, 0.0), random(&mut rng, c, 0.1, 1.0));
    let (rm0, rv0) = (rm.clone(), rv.clone());
    let p = BnParams { gamma: &gamma, beta: &beta, eps: 1e-5, sync: None };
    let (mut saved, mut scr, mut y) = (Saved::new(c), Scratch::default(), vec![0.0; len]);
    let r = residual.then_some(&res[..]);
    batchnorm::forward_train(&p, &x, rows, 0.1, &mut rm, &mut rv, &mut saved, r, relu, &mut y, &mut scr);
    // The backward's ReLU mask is recomputed from x only without a residual (a block's
    // last BN has its ReLU masked before, by `relu_backward`).
    let bwd_relu = relu && !residual;
    let (mut g, mut dgamma, mut dbeta) = (dy.clone(), vec![0.0; c], vec![0.0; c]);
    batchnorm::backward(&p, &x, rows, &saved, bwd_relu, &mut g, &mut dgamma, &mut dbeta, &mut scr);

    let up = |v: &[f32]| gpu.upload(v).unwrap();
    let (dgamma_d, dbeta_d, dx) = (up(&gamma), up(&beta), up(&x));
    let layer = BnLayer { gamma: &dgamma_d, beta: &dbeta_d, eps: 1e-5 };
    let (mut drm, mut drv, dres) = (up(&rm0), up(&rv0), up(&res));
    let (mut dsaved, mut dy_out) = (gpu.zeros::<f32>(4 * c).unwrap(), gpu.zeros::<f32>(len).unwrap());
    let dr = residual.then_some(&dres);
    let (xv, dr) = (dx.as_view(), dr.map(|r| r.as_view()));
    let (mut saved_v, mut y_v) = (dsaved.as_view_mut(), dy_out.as_view_mut());
    gpu.bn_forward_train(&layer, &xv, rows, 0.1, (&mut drm, &mut drv), &mut saved_v, dr.as_ref(), relu, &mut y_v)
        .unwrap();
    let got_saved = gpu.download(&dsaved).unwrap();
    assert_close(&format!("{what}: mean"), &got_saved[..c], &saved.mean, 1e-5);
    assert_close(&format!("{what}: invstd"), &got_saved[c..2 * c], &saved.invstd, 1e-5);
    assert_close(&format!("{what}: y"), &gpu.download(&dy_out).unwrap(), &y, 1e-5);
    assert_close(&format!("{what}: running mean"), &gpu.download(&drm).unwrap(), &rm, 1e-5);
    assert_close(&format!("{what}: running var"), &gpu.download(&drv).unwrap(), &rv, 1e-5);

    assert_close(&format!("{what}: scale"), &got_saved[2 * c..3 * c], &saved.scale, 1e-5);
    assert_close(&format!("{what}: shift"), &got_saved[3 * c..], &saved.shift, 1e-5);
    // The backward from the CPU's saved values: the GPU's may differ in the last bit, and
    // a value that close to zero would flip the ReLU mask the backward recomputes.
    let cpu_saved = up(&[&saved.mean[..], &saved.invstd, &saved.scale, &saved.shift].concat());
    let (mut dg, mut ddgamma, mut ddbeta) = (up(&dy), gpu.zeros::<f32>(c).unwrap(), gpu.zeros::<f32>(c).unwrap());
    let backward = |g: &mut cudarc::driver::CudaSlice<f32>, grads: (&mut _, &mut _), accumulate| {
        let (x, saved, mut g) = (dx.as_view(), cpu_saved.as_view(), g.as_view_mut());
        gpu.bn_backward(&dgamma_d, &x, rows, &saved, bwd_relu, &mut g, grads, accumulate).unwrap();
    };
    backward(&mut dg, (&mut ddgamma, &mut ddbeta), false);
    assert_close(&format!("{what}: dbeta"), &gpu.download(&ddbeta).unwrap(), &dbeta, 1e-5);
    assert_close(&format!("{what}: dgamma"), &gpu.download(&ddgamma).unwrap(), &dgamma, 1e-5);
    assert_close(&format!("{what}: dx"), &gpu.download(&dg).unwrap(), &g, 1e-4);
    // A second BatchNorm group adds its γ and β gradients to the first's.
    backward(&mut up(&dy), (&mut ddgamma, &mut ddbeta), true);
    let twice = |v: &[f32]| v.iter().map(|x| x + x).collect::<Vec<_>>();
    assert_close(&format!("{what}: dbeta added"), &gpu.download(&ddbeta).unwrap(), &twice(&dbeta), 1e-5);
    assert_close(&format!("{what}: dgamma added"), &gpu.download(&ddgamma).unwrap(), &twice(&dgamma), 1e-5);
}

#[test]
fn batchnorm_training_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    // ResNet-20's first stage at batch 128, ResNet-50's last at batch 2, and an odd size.
    check_batchnorm(&gpu, 128 * 32 * 32, 16, true, true);
    check_batchnorm(&gpu, 128 * 32 * 32, 16, false, true);
    check_batchnorm(&gpu, 2 * 7 * 7, 2048, false, false);
    check_batchnorm(&gpu, 1000, 40, true, false);
}

#[test]
fn batchnorm_inference_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let (rows, c) = (2 * 56 * 56, 64);
    let mut rng = Rng::new(7);
    let x = random(&mut rng, rows * c, 1.0, 0.5);
    let res = random(&mut rng, rows * c, 1.0, 0.0);
    let (gamma, beta) = (random(&mut rng, c, 0.2, 1.0), random(&mut rng, c, 0.2, 0.0));
    let (rm, rv) = (random(&mut rng, c, 0.1, 0.0), random(&mut rng, c, 0.1, 1.0));
    let p = BnParams { gamma: &gamma, beta: &beta, eps: 1e-5, sync: None };
    let mut y = vec![0.0; rows * c];
    batchnorm::forward_eval(&p, &x, rows, &rm, &rv, Some(&res), true, &mut y, &mut Scratch::default());
    let up = |v: &[f32]| gpu.upload(v).unwrap();
    let (dgamma, dbeta, drm, drv, dx, dres) = (up(&gamma), up(&beta), up(&rm), up(&rv), up(&x), up(&res));
    let (mut affine, mut dy) = (gpu.zeros::<f32>(2 * c).unwrap(), gpu.zeros::<f32>(rows * c).unwrap());
    let layer = BnLayer { gamma: &dgamma, beta: &dbeta, eps: 1e-5 };
    gpu.bn_forward_eval(&layer, &dx, rows, (&drm, &drv), &mut affine, Some(&dres), true, &mut dy).unwrap();
    assert_same("y", &gpu.download(&dy).unwrap(), &y);
    // A projection shortcut's BN: no residual, no ReLU.
    batchnorm::forward_eval(&p, &x, rows, &rm, &rv, None, false, &mut y, &mut Scratch::default());
    gpu.bn_forward_eval(&layer, &dx, rows, (&drm, &drv), &mut affine, None, false, &mut dy).unwrap();
    assert_same("y without residual and ReLU", &gpu.download(&dy).unwrap(), &y);
}

#[test]
fn option_a_shortcut_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(3);
    // ResNet-20's two, and odd sizes.
    for (n, s) in [
        (4, ShortcutA { h: 32, w: 32, c_in: 16, stride: 2, pad: 8 }),
        (4, ShortcutA { h: 16, w: 16, c_in: 32, stride: 2, pad: 16 }),
        (3, ShortcutA { h: 7, w: 5, c_in: 8, stride: 1, pad: 4 }),
        (3, ShortcutA { h: 7, w: 5, c_in: 8, stride: 2, pad: 4 }),
    ] {
        check_shortcut(&gpu, &mut rng, n, s);
    }
}

fn check_shortcut(gpu: &Gpu, rng: &mut Rng, n: usize, s: ShortcutA) {
    let x = random(rng, n * s.h * s.w * s.c_in, 1.0, 0.0);
    let out_len = n * s.out_h() * s.out_w() * s.c_out();
    let mut y = vec![0.0; out_len];
    s.forward(n, &x, &mut y);
    let g = random(rng, out_len, 1.0, 0.0);
    let mut dx = vec![1.0; x.len()];
    s.backward(n, &g, &mut dx);
    let (xd, gd) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
    let (mut yd, mut dxd) = (gpu.zeros::<f32>(out_len).unwrap(), gpu.upload(&vec![1.0f32; x.len()]).unwrap());
    gpu.shortcut_a_forward(&s, n, &xd, &mut yd).unwrap();
    gpu.shortcut_a_backward(&s, n, &gd, &mut dxd).unwrap();
    assert_same(&format!("{s:?}: y"), &gpu.download(&yd).unwrap(), &y);
    assert_same(&format!("{s:?}: dx"), &gpu.download(&dxd).unwrap(), &dx);
}

#[test]
fn pooling_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(5);
    // The global average pool of ResNet-50 (7×7×2048) at batch 3.
    let (n, pixels, c) = (3, 49, 2048);
    let x = random(&mut rng, n * pixels * c, 1.0, 0.0);
    let g = random(&mut rng, n * c, 1.0, 0.0);
    let (mut y, mut dx) = (vec![0.0; n * c], vec![0.0; n * pixels * c]);
    pool::avgpool_forward(n, pixels, c, &x, &mut y);
    pool::avgpool_backward(n, pixels, c, &g, &mut dx);
    let (xd, gd) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
    let (mut yd, mut dxd) = (gpu.zeros::<f32>(n * c).unwrap(), gpu.zeros::<f32>(n * pixels * c).unwrap());
    gpu.avgpool_forward(n, pixels, c, &xd, &mut yd).unwrap();
    gpu.avgpool_backward(n, pixels, c, &gd, &mut dxd).unwrap();
    assert_same("avg y", &gpu.download(&yd).unwrap(), &y);
    assert_same("avg dx", &gpu.download(&dxd).unwrap(), &dx);

    // The stem's 3×3/2 max pool (pad 1) at 112×112×64, batch 2, on values rounded to a
    // coarse grid so that windows hold ties, which the first index must win.
    let s = PoolShape { c: 64, kernel: 3, stride: 2, pad: 1, h: 112, w: 112 };
    let n = 2;
    let x: Vec<f32> = random(&mut rng, n * s.in_len(), 2.0, 0.0).iter().map(|v| v.round()).collect();
    let (mut y, mut arg) = (vec![0.0; n * s.out_len()], vec![0u32; n * s.out_len()]);
    pool::maxpool_forward(&s, n, &x, &mut y, &mut arg);
    let g = random(&mut rng, n * s.out_len(), 1.0, 0.0);
    let mut dx = vec![0.0; n * s.in_len()];
    pool::maxpool_backward(&s, n, &g, &arg, &mut dx);
    let (xd, gd) = (gpu.upload(&x).unwrap(), gpu.upload(&g).unwrap());
    let (mut yd, mut argd) = (gpu.zeros::<f32>(n * s.out_len()).unwrap(), gpu.zeros::<u32>(n * s.out_len()).unwrap());
    let mut dxd = gpu.zeros::<f32>(n * s.in_len()).unwrap();
    gpu.maxpool_forward(&s, n, &xd, &mut yd, &mut argd).unwrap();
    gpu.maxpool_backward(&s, n, &gd, &argd, &mut dxd).unwrap();
    assert_same("max y", &gpu.download(&yd).unwrap(), &y);
    assert_eq!(gpu.download(&argd).unwrap(), arg, "max pool argmax");
    assert_same("max dx", &gpu.download(&dxd).unwrap(), &dx);
}

#[test]
fn softmax_cross_entropy_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(9);
    for (n, batch, classes) in [(128, 128, 10), (16, 32, 1000)] {
        let logits = random(&mut rng, n * classes, 3.0, 0.0);
        let labels: Vec<u32> = (0..n).map(|i| ((i * 7919) % classes) as u32).collect();
        let mut grad = vec![0.0; n * classes];
        let (loss, right) = ops::softmax_cross_entropy_of(n, batch, classes, &logits, &labels, &mut grad);
        let (ld, lab) = (gpu.upload(&logits).unwrap(), gpu.upload(&labels).unwrap());
        let mut gd = gpu.zeros::<f32>(n * classes).unwrap();
        let (gloss, gright) = gpu.softmax_cross_entropy(n, batch, classes, &ld, &lab, &mut gd).unwrap();
        assert_close("grad", &gpu.download(&gd).unwrap(), &grad, 1e-6);
        assert!((gloss - loss).abs() <= 1e-6 * loss.abs(), "loss: GPU {gloss}, CPU {loss}");
        assert_eq!(gright, right, "right predictions");
        // A label out of range is an error, as it is a panic on the CPU.
        let mut bad = labels.clone();
        bad[n - 1] = classes as u32;
        let err = gpu.softmax_cross_entropy(n, batch, classes, &ld, &gpu.upload(&bad).unwrap(), &mut gd).unwrap_err();
        assert!(format!("{err}").contains(&format!("row {}", n - 1)), "{err}");
    }
}

#[test]
fn sgd_step_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut rng = Rng::new(11);
    // ResNet-20's parameter count.
    let len = 272_474;
    let (p, g, b) =
        (random(&mut rng, len, 0.1, 0.0), random(&mut rng, len, 0.01, 0.0), random(&mut rng, len, 0.01, 0.0));
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    let (mut want_p, mut want_b) = (p.clone(), b.clone());
    sgd::step(cfg, &mut want_p, &g, &mut want_b);
    let (mut pd, gd, mut bd) = (gpu.upload(&p).unwrap(), gpu.upload(&g).unwrap(), gpu.upload(&b).unwrap());
    gpu.sgd_step(cfg, &mut pd, &gd, &mut bd).unwrap();
    assert_same("param", &gpu.download(&pd).unwrap(), &want_p);
    assert_same("momentum", &gpu.download(&bd).unwrap(), &want_b);

    // Many tensors in one launch: lengths below, at and across the table's chunks.
    let lens = [1, 100, 16384, 16385, 70_000];
    let tensors: Vec<_> = lens
        .iter()
        .map(|&len| {
            (random(&mut rng, len, 0.1, 0.0), random(&mut rng, len, 0.01, 0.0), random(&mut rng, len, 0.01, 0.0))
        })
        .collect();
    let on_gpu: Vec<_> = tensors
        .iter()
        .map(|(p, g, b)| (gpu.upload(p).unwrap(), gpu.upload(g).unwrap(), gpu.upload(b).unwrap()))
        .collect();
    // SAFETY: the buffers outlive the table's use below and nothing else writes them.
    let table = unsafe { gpu.sgd_table(on_gpu.iter().map(|(p, g, b)| (p, g, b))) }.unwrap();
    for _ in 0..2 {
        gpu.sgd_many(cfg, &table).unwrap();
    }
    for ((p, g, b), (pd, _, bd)) in tensors.iter().zip(&on_gpu) {
        let (mut want_p, mut want_b) = (p.clone(), b.clone());
        for _ in 0..2 {
            sgd::step(cfg, &mut want_p, g, &mut want_b);
        }
        assert_same(&format!("param of {}", p.len()), &gpu.download(pd).unwrap(), &want_p);
        assert_same(&format!("momentum of {}", p.len()), &gpu.download(bd).unwrap(), &want_b);
    }
}

/// Every pass of one convolution on the GPU (cuDNN) against the CPU engine, within 1e-4
/// of the largest value (the sums run in another order). With `bf16` (the GPU set to it)
/// the operands are bf16 values already, so the products are exact in f32 on both sides
/// and what differs is the rounding of cuDNN's bf16 results (2⁻⁹ of each value, twice
/// where a result is added to another): within 8e-3.
fn check_convolution(gpu: &Gpu, s: ConvShape, n: usize, bf16: bool) {
    let what = format!("{s:?} batch {n}, bf16 {bf16}");
    let mut rng = Rng::new((s.c_in * s.c_out * s.h) as u64);
    let operand = |rng: &mut Rng, len: usize, scale: f32| -> Vec<f32> {
        let v = random(rng, len, scale, 0.0);
        let round = |x: f32| resnet::engine::bf16::widen(resnet::engine::bf16::round(x));
        if bf16 { v.into_iter().map(round).collect() } else { v }
    };
    let x = operand(&mut rng, n * s.in_len(), 1.0);
    let w = operand(&mut rng, s.weight_len(), 0.1);
    let dy = operand(&mut rng, n * s.out_len(), 1.0);
    let tolerance = if bf16 { 8e-3 } else { 1e-4 };
    let mut ws = Workspace::new();
    let mut y = vec![0.0; n * s.out_len()];
    conv::forward(&s, n, &x, &w, &mut y, &mut ws);
    let (mut dw, mut dx) = (vec![0.0; s.weight_len()], vec![0.0; n * s.in_len()]);
    conv::backward(&s, n, &x, &w, &dy, &mut dw, InputGrad::Set(&mut dx), &mut ws);

    let up = |v: &[f32]| gpu.upload(v).unwrap();
    let (xd, wd, dyd) = (up(&x), up(&w), up(&dy));
    let mut yd = gpu.zeros::<f32>(y.len()).unwrap();
    let (mut dwd, mut dxd) = (gpu.zeros::<f32>(dw.len()).unwrap(), gpu.zeros::<f32>(dx.len()).unwrap());
    gpu.conv_forward(&s, n, &xd, &wd, &mut yd).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    gpu.conv_backward_data(&s, n, &dyd, &wd, &mut dxd, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    gpu.conv_backward_weights(&s, n, &xd, &dyd, &mut dwd, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let scaled = |what: &str, got: &[f32], want: &[f32]| {
        let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / top;
        assert!(err <= tolerance, "{what}: largest error {err:e} of the largest value {top}");
    };
    scaled(&format!("{what}: y"), &gpu.download(&yd).unwrap(), &y);
    scaled(&format!("{what}: dx"), &gpu.download(&dxd).unwrap(), &dx);
    // Added to what is there: a block's first unit adds to the shortcut's gradient.
    gpu.conv_backward_data(&s, n, &dyd, &wd, &mut dxd, true).unwrap_or_else(|e| panic!("{what}: {e:#}"));
    let twice: Vec<f32> = dx.iter().map(|v| v + v).collect();
    scaled(&format!("{what}: dx added"), &gpu.download(&dxd).unwrap(), &twice);
    scaled(&format!("{what}: dw"), &gpu.download(&dwd).unwrap(), &dw);
}

#[test]
fn convolutions_match_the_cpu() {
    let Some(gpu) = gpu_with_cudnn() else { return };
    let conv = ConvShape::square;
    // ResNet-20: a 3×3 layer of each stage and the stride-2 one; ResNet-50: the stem, a
    // bottleneck's 1×1 layers and its strided projection.
    for (s, n) in [
        (conv(3, 16, 3, 1, 32), 8),
        (conv(16, 16, 3, 1, 32), 8),
        (conv(16, 32, 3, 2, 32), 8),
        (conv(64, 64, 3, 1, 8), 8),
        (conv(3, 64, 7, 2, 64), 2),
        (conv(256, 64, 1, 1, 14), 2),
        (conv(512, 1024, 1, 2, 14), 2),
    ] {
        // With cuDNN's heuristics' choice of algorithm, and with the fastest as timed.
        for timed in [false, true] {
            gpu.choose_by_timing(timed);
            check_convolution(&gpu, s, n, false);
        }
    }
}

/// The backward passes give the same bits every time, with algorithms chosen by cuDNN's
/// heuristics and by timing: only deterministic ones are chosen. The shapes are ResNet-50's
/// where cuDNN's fastest weight-gradient algorithms add with atomics.
#[test]
fn convolutions_repeat_bit_for_bit() {
    let Some(gpu) = gpu_with_cudnn() else { return };
    let conv = ConvShape::square;
    for timed in [false, true] {
        gpu.choose_by_timing(timed);
        for (s, n) in [(conv(256, 256, 3, 1, 14), 32), (conv(64, 256, 1, 1, 56), 16), (conv(3, 64, 7, 2, 112), 16)] {
            let what = format!("{s:?} batch {n}, chosen by timing: {timed}");
            let mut rng = Rng::new(s.c_out as u64);
            let up = |v: Vec<f32>| gpu.upload(&v).unwrap();
            let x = up(random(&mut rng, n * s.in_len(), 1.0, 0.0));
            let w = up(random(&mut rng, s.weight_len(), 0.1, 0.0));
            let dy = up(random(&mut rng, n * s.out_len(), 1.0, 0.0));
            let run = || {
                let (mut dw, mut dx) =
                    (gpu.zeros::<f32>(s.weight_len()).unwrap(), gpu.zeros::<f32>(n * s.in_len()).unwrap());
                gpu.conv_backward_weights(&s, n, &x, &dy, &mut dw, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
                gpu.conv_backward_data(&s, n, &dy, &w, &mut dx, false).unwrap_or_else(|e| panic!("{what}: {e:#}"));
                (gpu.download(&dw).unwrap(), gpu.download(&dx).unwrap())
            };
            let first = run();
            for _ in 0..3 {
                let again = run();
                assert!(again.0 == first.0, "{what}: the weight gradient changed between runs");
                assert!(again.1 == first.1, "{what}: the input gradient changed between runs");
            }
        }
    }
}

#[test]
fn classifier_matches_the_cpu() {
    let Some(gpu) = gpu() else { return };
    if let Some(why) = cuda::linear::cublas_missing() {
        assert!(!set("RESNET_REQUIRE_GPU"), "RESNET_REQUIRE_GPU=1, but {why}");
        println!("skipped: {why}");
        return;
    }
    let mut rng = Rng::new(13);
    // ResNet-20's classifier at batch 128 and ResNet-50's at batch 4.
    for (n, i, o, accumulate) in [(128, 64, 10, false), (4, 2048, 1000, true)] {
        let what = format!("n {n} in {i} out {o} accumulate {accumulate}");
        let (x, w, b) =
            (random(&mut rng, n * i, 1.0, 0.0), random(&mut rng, o * i, 0.05, 0.0), random(&mut rng, o, 0.1, 0.0));
        let g = random(&mut rng, n * o, 0.1, 0.0);
        let mut y = vec![0.0; n * o];
        ops::linear_forward(n, i, o, &x, &w, &b, &mut y);
        // Overwriting, and adding to gradients already there, as with micro-batches.
        let (dw0, db0) = (random(&mut rng, o * i, 0.01, 0.0), random(&mut rng, o, 0.01, 0.0));
        let (mut dw, mut db, mut dx) = (dw0.clone(), db0.clone(), vec![0.0; n * i]);
        ops::linear_backward(n, i, o, &x, &w, &g, &mut dw, &mut db, &mut dx, accumulate);
        let up = |v: &[f32]| gpu.upload(v).unwrap();
        let (xd, wd, bd, gd) = (up(&x), up(&w), up(&b), up(&g));
        let (mut yd, mut dxd) = (gpu.zeros::<f32>(n * o).unwrap(), gpu.zeros::<f32>(n * i).unwrap());
        let (mut dwd, mut dbd) = (up(&dw0), up(&db0));
        gpu.linear_forward(n, i, o, &xd, &wd, &bd, &mut yd).unwrap();
        gpu.linear_backward((n, i, o), &xd, &wd, &gd, &mut dwd, &mut dbd, &mut dxd, accumulate).unwrap();
        assert_close(&format!("{what}: y"), &gpu.download(&yd).unwrap(), &y, 1e-4);
        assert_close(&format!("{what}: dx"), &gpu.download(&dxd).unwrap(), &dx, 1e-4);
        assert_close(&format!("{what}: dw"), &gpu.download(&dwd).unwrap(), &dw, 1e-4);
        assert_same(&format!("{what}: db"), &gpu.download(&dbd).unwrap(), &db);
    }
}

/// Whole networks' inference on the GPU (`model::cuda::GpuNet`) against `ResNet::forward`:
/// CIFAR's option A, and ImageNet's projections, max pool and bottlenecks, with running
/// statistics moved off their initial values by training-mode forwards.
#[test]
fn networks_infer_on_the_gpu_as_on_the_cpu() {
    let Some(_) = gpu() else { return };
    for (name, shortcut, side) in
        [("resnet20", Shortcut::A, 32), ("resnet18", Shortcut::B, 64), ("resnet50", Shortcut::B, 64)]
    {
        let mut net = ResNet::new(ModelConfig::from_name(name, Some(shortcut), 10).unwrap(), 7);
        let mut rng = Rng::new(17);
        let n = 3;
        let images = random(&mut rng, n * side * side * 3, 1.0, 0.0);
        for _ in 0..2 {
            net.forward(true, n, (side, side), &random(&mut rng, n * side * side * 3, 1.0, 0.5));
        }
        let want = net.forward(false, n, (side, side), &images).to_vec();
        let gpu_net = GpuNet::new(&mut net).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let got = gpu_net.forward(n, (side, side), &images).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / top;
        assert!(err <= 1e-4, "{name}: logits differ by {err:e} of the largest ({got:?} against {want:?})");
    }
}

/// Training steps on the GPU (`model::cuda::GpuTrainer`) against `train::step` on the CPU,
/// from the same initial weights: option A, projections, the max pool and bottlenecks,
/// BatchNorm over the whole batch and in `--bn-batch` groups, micro-batches whose gradients
/// add up (`--accumulate`), the classifier's own learning rate (`--lr-classifier`) and the
/// classifier trained alone on the inference-mode backbone (`--freeze-backbone`). Two
/// steps, so that the second starts from the momentum and running statistics of the first;
/// then every parameter, momentum buffer and running statistic, stored back into a CPU model.
#[test]
fn networks_train_on_the_gpu_as_on_the_cpu() {
    let Some(_) = gpu() else { return };
    // (model, shortcut, image side, BatchNorm group, micro-batches, backbone frozen,
    // classifier's lr scale)
    let cases = [
        ("resnet8", Shortcut::A, 32, Some(3), 1, false, 1.0),
        ("resnet8", Shortcut::A, 32, Some(2), 2, false, 10.0),
        ("resnet18", Shortcut::B, 32, None, 1, false, 1.0),
        ("resnet18", Shortcut::B, 32, None, 1, true, 2.0),
        ("resnet50", Shortcut::B, 64, Some(2), 1, false, 1.0),
    ];
    for (name, shortcut, side, group, accumulate, freeze_backbone, classifier_lr_scale) in cases {
        let name = &format!("{name}, groups of {group:?}, {accumulate} micro-batches, frozen {freeze_backbone}");
        let transfer = resnet::train::Transfer { freeze_backbone, classifier_lr_scale };
        let net = || {
            let mut net = ResNet::new(ModelConfig::from_name(name, Some(shortcut), 10).unwrap(), 7);
            net.set_bn_group(group);
            net
        };
        let (mut cpu, mut stored) = (net(), net());
        let mut trainer = GpuTrainer::new(&mut stored).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        let sgd = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 1e-4 };
        let (n, mut rng) = (5, Rng::new(3));
        for step in 0..2u32 {
            let images = random(&mut rng, n * side * side * 3, 1.0, 0.0);
            let labels: Vec<u32> = (0..n as u32).map(|i| (3 * i + step) % 10).collect();
            let mut scratch = resnet::train::StepScratch::default();
            let hw = (side, side);
            let (want, _) =
                resnet::train::step_with(&mut cpu, hw, &images, &labels, accumulate, sgd, transfer, &mut scratch);
            let (got, _) = trainer
                .step(hw, &images, &labels, accumulate, sgd, transfer)
                .unwrap_or_else(|e| panic!("{name}: {e:#}"));
            assert!(
                (got - want).abs() <= 1e-4 * want.abs(),
                "{name} step {step}: loss {got} on the GPU, {want} on the CPU"
            );
        }
        trainer.store_into(&mut stored).unwrap();
        let close = |what: &str, got: &[f32], want: &[f32], tol: f32| {
            let top = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = got.iter().zip(want).fold(0f32, |m, (g, w)| m.max((g - w).abs())) / top;
            assert!(err <= tol, "{name}: {what} differs by {err:e} of its largest value");
        };
        // The trained network in inference mode, as the evaluation after an epoch runs it.
        let images = random(&mut rng, n * side * side * 3, 1.0, 0.0);
        let want = cpu.forward(false, n, (side, side), &images).to_vec();
        close("inference logits", &trainer.logits(n, (side, side), &images).unwrap(), &want, 1e-4);
        for (mine, theirs) in stored.named().iter().zip(cpu.named().iter()) {
            close(&mine.name, &mine.to_host(), &theirs.to_host(), 1e-4);
            if let (Slot::Param(a), Slot::Param(b)) = (&mine.slot, &theirs.slot) {
                close(&format!("{}'s momentum", mine.name), &a.momentum.to_host(), &b.momentum.to_host(), 1e-3);
            }
        }
    }
}

/// `resnet --device cuda train` writes the same files as on the CPU, and the run resumes
/// on the CPU; `--device cuda predict` gives the CPU's logits for its weights.
#[test]
fn a_run_started_on_the_gpu_resumes_on_the_cpu() {
    let Some(_) = gpu() else { return };
    let dir = common::temp_dir("cuda_train");
    let data = dir.join("d.bin");
    common::write_cifar_file(&data, 40, 1);
    let (d, run) = (data.to_str().unwrap(), dir.join("run"));
    let run_s = run.to_str().unwrap();
    let train = |extra: &[&str]| {
        let args =
            ["train", "--model", "resnet8", "--data", d, "--test-data", d, "--batch", "10", "--out", run_s, "--quiet"];
        Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).args(extra).output().unwrap()
    };
    let out = train(&["--iterations", "4", "--accumulate", "2", "--device", "cuda"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(run.join("model.safetensors").exists() && run.join("checkpoint.safetensors").exists());
    let out = train(&["--resume", "--iterations", "8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let iters = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["iter"].as_u64());
    assert_eq!(iters.max().flatten(), Some(8), "{metrics}");

    let photo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/imagenet/wide.png");
    let weights = run.join("model.safetensors");
    let logits = |device: &str| {
        let args = ["--device", device, "predict", "--json", "--logits", "--weights"];
        let out = Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).arg(&weights).arg(&photo).output().unwrap();
        assert!(out.status.success(), "{device}: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["logits"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect::<Vec<_>>()
    };
    let (gpu, cpu) = (logits("cuda"), logits("cpu"));
    assert_close("predicted logits", &gpu, &cpu, 1e-4);
    // And the embedding (the pooled features), as `embed` writes it.
    let embedding = |device: &str| {
        let file = dir.join(format!("{device}.safetensors"));
        let args = ["--device", device, "embed", "--out", file.to_str().unwrap(), "--weights"];
        let out = Command::new(env!("CARGO_BIN_EXE_resnet")).args(args).arg(&weights).arg(&photo).output().unwrap();
        assert!(out.status.success(), "{device}: {}", String::from_utf8_lossy(&out.stderr));
        let bytes = std::fs::read(&file).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let data = tensors.tensor("embeddings").unwrap().data().to_vec();
        data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect::<Vec<_>>()
    };
    assert_close("embedding", &embedding("cuda"), &embedding("cpu"), 1e-4);
}

/// `--precision tf32` (cuDNN on TF32 tensor cores, 10 bits of mantissa in the products)
/// and `bf16` (operands and the convolutions' results rounded to bf16, 8 bits): two steps
/// of ResNet-8 land within that rounding of the CPU's f32 ones.
#[test]
fn tf32_and_bf16_training_stay_within_their_rounding() {
    let Some(_) = gpu() else { return };
    for precision in [resnet::engine::Precision::Tf32, resnet::engine::Precision::Bf16] {
        let net = || ResNet::new(ModelConfig::from_name("resnet8", Some(Shortcut::A), 10).unwrap(), 7);
        let (mut cpu, mut stored) = (net(), net());
        stored.set_precision(precision);
        let mut trainer = GpuTrainer::new(&mut stored).unwrap_or_else(|e| panic!("{precision}: {e:#}"));
        assert!(trainer.gpu().tf32() == (precision == resnet::engine::Precision::Tf32));
        assert!(trainer.gpu().bf16() == (precision == resnet::engine::Precision::Bf16));
        let sgd = SgdConfig { lr: 0.05, momentum: 0.9, weight_decay: 1e-4 };
        let (n, mut rng) = (8, Rng::new(5));
        for step in 0..2u32 {
            let images = random(&mut rng, n * 32 * 32 * 3, 1.0, 0.0);
            let labels: Vec<u32> = (0..n as u32).map(|i| (i + step) % 10).collect();
            let mut scratch = resnet::train::StepScratch::default();
            let (want, _) = resnet::train::step(&mut cpu, (32, 32), &images, &labels, 1, sgd, &mut scratch);
            let (got, _) = trainer.step((32, 32), &images, &labels, 1, sgd, Default::default()).unwrap();
            assert!((got - want).abs() <= 2e-2 * want.abs(), "step {step}: loss {got} in {precision}, {want} in f32");
        }
    }
}

/// The bf16 casts round as the CPU engine does (`engine::bf16::round`, ties to even, NaN
/// kept) and widen exactly.
#[test]
fn bf16_casts_round_as_the_cpu() {
    let Some(gpu) = gpu() else { return };
    let mut values = vec![0.0f32, -0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::MIN_POSITIVE, 1e-40];
    // Ties: halfway between two bf16 values, with an even and an odd lower neighbour.
    values.extend([f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::from_bits(0x3f80_8001)]);
    values.extend(random(&mut Rng::new(9), 1000, 100.0, 0.0));
    let bits = gpu.download(&gpu.to_bf16(&gpu.upload(&values).unwrap(), values.len()).unwrap()).unwrap();
    for (v, b) in values.iter().zip(&bits) {
        assert_eq!(*b, resnet::engine::bf16::round(*v), "{v} ({:#x})", v.to_bits());
    }
    let mut wide = gpu.upload(&vec![1.0f32; bits.len()]).unwrap();
    gpu.from_bf16(&gpu.upload(&bits).unwrap(), &mut wide, true).unwrap();
    let want: Vec<f32> = bits.iter().map(|&b| 1.0 + resnet::engine::bf16::widen(b)).collect();
    assert_same("1 + widen(bits)", &gpu.download(&wide).unwrap(), &want);
}

/// bf16 convolutions against the CPU engine's f32 ones on the same bf16 operands.
#[test]
fn bf16_convolutions_match_the_cpu_on_rounded_operands() {
    let Some(gpu) = gpu_with_cudnn() else { return };
    gpu.set_precision(resnet::engine::Precision::Bf16).unwrap();
    let conv = ConvShape::square;
    for (s, n) in [(conv(16, 32, 3, 2, 32), 8), (conv(64, 64, 3, 1, 14), 4), (conv(256, 64, 1, 1, 14), 2)] {
        check_convolution(&gpu, s, n, true);
    }
}
