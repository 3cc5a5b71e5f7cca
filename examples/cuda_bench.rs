//! Times the CUDA backend's kernels and cuDNN's convolutions on ResNet-50's and ResNet-20's
//! shapes: the memory-bound kernels in GB/s moved, the convolutions in TFLOP/s. Needs a GPU
//! (`tools/device_check.sh` runs it there).
//!
//!     cargo run --release --features cuda --example cuda_bench

use anyhow::Result;
use resnet::engine::conv::ConvShape;
use resnet::engine::cuda::{Gpu, ops::BnLayer};
use resnet::engine::sgd::SgdConfig;
use std::time::Instant;

/// Median milliseconds of `f` over 20 runs after 3 warm-ups, each waited for.
fn time(gpu: &Gpu, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    gpu.synchronize()?;
    let mut runs = Vec::new();
    for _ in 0..20 {
        let t = Instant::now();
        f()?;
        gpu.synchronize()?;
        runs.push(t.elapsed().as_secs_f64() * 1e3);
    }
    runs.sort_by(f64::total_cmp);
    Ok(runs[runs.len() / 2])
}

fn filled(gpu: &Gpu, len: usize) -> Result<cudarc::driver::CudaSlice<f32>> {
    gpu.upload(&(0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect::<Vec<_>>())
}

fn main() -> Result<()> {
    let gpu = Gpu::open()?;
    println!("{} (compute capability {}.{})", gpu.name(), gpu.capability().0, gpu.capability().1);
    // BatchNorm, training forward and backward: ResNet-50's first stage at batch 256 and
    // ResNet-20's at batch 128.
    for (what, rows, c) in
        [("resnet50 b256 56x56x64", 256 * 56 * 56, 64), ("resnet20 b128 32x32x16", 128 * 32 * 32, 16)]
    {
        let (gamma, beta) = (filled(&gpu, c)?, filled(&gpu, c)?);
        let layer = BnLayer { gamma: &gamma, beta: &beta, eps: 1e-5 };
        let (x, mut y, mut g) = (filled(&gpu, rows * c)?, gpu.zeros::<f32>(rows * c)?, filled(&gpu, rows * c)?);
        let (mut rm, mut rv, mut saved) = (gpu.zeros::<f32>(c)?, filled(&gpu, c)?, gpu.zeros::<f32>(4 * c)?);
        let (mut dgamma, mut dbeta) = (gpu.zeros::<f32>(c)?, gpu.zeros::<f32>(c)?);
        let fwd = time(&gpu, || {
            let (x, mut saved, mut y) = (x.as_view(), saved.as_view_mut(), y.as_view_mut());
            gpu.bn_forward_train(&layer, &x, rows, 0.1, (&mut rm, &mut rv), &mut saved, None, true, &mut y)
        })?;
        let bwd = time(&gpu, || {
            let (x, saved, mut g) = (x.as_view(), saved.as_view(), g.as_view_mut());
            gpu.bn_backward(&gamma, &x, rows, &saved, true, &mut g, (&mut dgamma, &mut dbeta), false)
        })?;
        // Forward: x read twice, y written; backward: g and x read twice, g written.
        let mb = (rows * c * 4) as f64 / 1e6;
        println!(
            "batchnorm {what}: forward {fwd:.3} ms ({:.0} GB/s), backward {bwd:.3} ms ({:.0} GB/s)",
            3.0 * mb / fwd,
            5.0 * mb / bwd
        );
    }
    // SGD over ResNet-50's parameters: p, g and the momentum read, p and the momentum written.
    let len = 25_557_032;
    let (mut p, grad, mut m) = (filled(&gpu, len)?, filled(&gpu, len)?, gpu.zeros::<f32>(len)?);
    let cfg = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    let sgd = time(&gpu, || gpu.sgd_step(cfg, &mut p, &grad, &mut m))?;
    println!("sgd step resnet50: {sgd:.3} ms ({:.0} GB/s)", 5.0 * (len * 4) as f64 / 1e6 / sgd);
    // cuDNN in f32 (no TF32) on ResNet-50's layers at batch 256.
    let conv = ConvShape::square;
    for s in [conv(3, 64, 7, 2, 224), conv(64, 64, 3, 1, 56), conv(256, 64, 1, 1, 56), conv(512, 512, 3, 1, 7)] {
        let n = 256;
        let (x, w, dy) = (filled(&gpu, n * s.in_len())?, filled(&gpu, s.weight_len())?, filled(&gpu, n * s.out_len())?);
        let (mut y, mut dx, mut dw) =
            (gpu.zeros::<f32>(n * s.out_len())?, gpu.zeros::<f32>(n * s.in_len())?, gpu.zeros::<f32>(s.weight_len())?);
        let fwd = time(&gpu, || gpu.conv_forward(&s, n, &x, &w, &mut y))?;
        let data = time(&gpu, || gpu.conv_backward_data(&s, n, &dy, &w, &mut dx, false))?;
        let filter = time(&gpu, || gpu.conv_backward_weights(&s, n, &x, &dy, &mut dw, false))?;
        let tflop = 2.0 * (n * s.out_len() * s.patch()) as f64 / 1e9;
        println!(
            "conv {}x{}/{} {}->{} {}x{} b{n}: forward {fwd:.2} ms ({:.1} TFLOP/s), data {data:.2} ms ({:.1}), weights {filter:.2} ms ({:.1})",
            s.kernel,
            s.kernel,
            s.stride,
            s.c_in,
            s.c_out,
            s.h,
            s.w,
            tflop / fwd,
            tflop / data,
            tflop / filter
        );
    }
    Ok(())
}
