//! Times the forward, backward-data and backward-weights passes of one convolution by
//! im2col+GEMM, Winograd and the direct kernel, for the 3×3 stride-1 layers of ResNet-20
//! (batch 128) and ResNet-50 (batch 16 and 1), to choose between them (`ConvAlgo::Auto`).
//!
//!     cargo run --release --example conv_algos

use resnet::engine::conv::{self, ConvShape, InputGrad};
use resnet::engine::{ConvAlgo, Workspace};
use std::time::Instant;

/// As the `resnet` binary: large buffers start on a cache line.
#[global_allocator]
static ALLOCATOR: resnet::engine::alloc::CacheLineAlloc = resnet::engine::alloc::CacheLineAlloc;

/// Best of five runs after one warm-up, in ms.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..5 {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed().as_secs_f64());
    }
    best * 1e3
}

const ALGOS: [ConvAlgo; 3] = [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Direct];

fn main() {
    let mut ws = Workspace::new();
    println!("ms per pass: im2col / winograd / direct (direct needs whole 16-channel blocks)");
    for (n, c, hw) in [
        (128, 16, 32),
        (128, 32, 16),
        (128, 64, 8),
        (16, 64, 56),
        (16, 128, 28),
        (16, 256, 14),
        (16, 512, 7),
        (1, 64, 56),
        (1, 128, 28),
        (1, 256, 14),
        (1, 512, 7),
    ] {
        let s = ConvShape { c_in: c, c_out: c, kernel: 3, stride: 1, pad: 1, h: hw, w: hw };
        let x = vec![0.5f32; n * s.in_len()];
        let w = vec![0.01f32; s.weight_len()];
        let mut y = vec![0f32; n * s.out_len()];
        let mut dw = vec![0f32; s.weight_len()];
        let mut dx = vec![0f32; n * s.in_len()];
        let mut passes = [[0f64; 3]; 3];
        for (a, algo) in ALGOS.into_iter().enumerate() {
            ws.set_algo(algo);
            passes[0][a] = time(|| conv::forward(&s, n, &x, &w, &mut y, &mut ws));
            let both = time(|| conv::backward(&s, n, &x, &w, &y, &mut dw, InputGrad::Set(&mut dx), &mut ws));
            passes[2][a] = time(|| conv::backward(&s, n, &x, &w, &y, &mut dw, InputGrad::Skip, &mut ws));
            passes[1][a] = both - passes[2][a];
        }
        let cols: Vec<String> = passes.iter().map(|p| format!("{:6.2} / {:6.2} / {:6.2}", p[0], p[1], p[2])).collect();
        println!(
            "n={n:3} c={c:3} {hw:2}x{hw:<2}: forward {} | backward-data {} | weights {}",
            cols[0], cols[1], cols[2]
        );
    }
}
