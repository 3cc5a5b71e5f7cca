//! Times the forward, backward-data and backward-weights passes of one convolution by
//! im2col+GEMM and by Winograd (im2col first) for the 3×3 stride-1 layers of ResNet-20
//! (batch 128) and ResNet-50 (batch 16 and 1), to choose between them.
//!
//!     cargo run --release --example conv_algos

use resnet::engine::conv::{self, ConvShape};
use resnet::engine::{Workspace, winograd};
use std::time::Instant;

fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let mut ws = Workspace::new();
    for (n, c, hw) in [
        (128, 16, 32),
        (128, 32, 16),
        (128, 64, 8),
        (16, 64, 56),
        (16, 128, 28),
        (16, 256, 14),
        (16, 512, 7),
        (1, 64, 56),
        (1, 512, 7),
    ] {
        let s = ConvShape { c_in: c, c_out: c, kernel: 3, stride: 1, pad: 1, h: hw, w: hw };
        let x = vec![0.5f32; n * s.in_len()];
        let w = vec![0.01f32; s.weight_len()];
        let mut y = vec![0f32; n * s.out_len()];
        let flops = 2.0 * (n * s.out_pixels() * s.weight_len()) as f64;
        let a = time(|| conv::forward_im2col(&s, n, &x, &w, &mut y, None, &mut ws));
        let b = time(|| winograd::forward(&s, n, &x, &w, &mut y, false, None, &mut ws));
        // Backward-data by im2col: both gradients minus the weight gradient alone.
        let mut dw = vec![0f32; s.weight_len()];
        let mut dx = vec![0f32; n * s.in_len()];
        let both = time(|| conv::backward_im2col(&s, n, &x, &w, &y, &mut dw, Some(&mut dx), &mut ws));
        let dw_only = time(|| conv::backward_im2col(&s, n, &x, &w, &y, &mut dw, None, &mut ws));
        let bd = time(|| winograd::backward_data(&s, n, &y, &w, &mut dx, &mut ws));
        let bw = time(|| winograd::backward_weights(&s, n, &x, &y, &mut dw, &mut ws));
        let ms = |t: f64| format!("{:6.2}", t * 1e3);
        println!(
            "n={n:3} c={c:3} {hw:2}x{hw:<2}: forward {} vs {} ms (x{:.2}) | backward-data {} vs {} (x{:.2}) | weights {} vs {} (x{:.2})",
            ms(a),
            ms(b),
            a / b,
            ms(both - dw_only),
            ms(bd),
            (both - dw_only) / bd,
            ms(dw_only),
            ms(bw),
            dw_only / bw,
        );
        let _ = flops;
    }
}
