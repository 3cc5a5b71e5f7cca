//! Times every distinct convolution of ResNet-50 (v1.5) at one batch size, as training's
//! forward runs it (weights as stored, prepared per call) and as inference runs it
//! (weights prepared once and kept), then training's backward pass (input gradient and
//! weight gradient; the stem has no input gradient), and sums each over the network.
//!
//!     cargo run --release --example resnet50_layers -- 16        # batch (default 1)
//!     cargo run --release --example resnet50_layers -- 16 bf16   # and precision (default f32)

use resnet::engine::Workspace;
use resnet::engine::conv::{self, ConvShape, InputGrad};
use resnet::engine::epilogue::Store;
use std::time::Instant;

/// As the `resnet` binary: large buffers start on a cache line.
#[global_allocator]
static ALLOCATOR: resnet::engine::alloc::CacheLineAlloc = resnet::engine::alloc::CacheLineAlloc;

/// Median of seven runs after one warm-up, in ms.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    let mut runs: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    runs[3]
}

/// The convolutions of ResNet-50 v1.5 with how often each occurs.
fn layers() -> Vec<(ConvShape, usize)> {
    let mut shapes: Vec<(ConvShape, usize)> = vec![];
    let mut add = |s: ConvShape| match shapes.iter_mut().find(|e| e.0 == s) {
        Some(e) => e.1 += 1,
        None => shapes.push((s, 1)),
    };
    let conv = ConvShape::square;
    add(conv(3, 64, 7, 2, 224));
    let mut c_in = 64;
    for (stage, (width, blocks, hw)) in [(64, 3, 56), (128, 4, 28), (256, 6, 14), (512, 3, 7)].into_iter().enumerate() {
        for b in 0..blocks {
            // The first block of stages 2-4 halves the size on its 3×3 conv and shortcut.
            let (inp, h_in, stride) = match (b, stage) {
                (0, 0) => (c_in, hw, 1),
                (0, _) => (c_in, 2 * hw, 2),
                _ => (4 * width, hw, 1),
            };
            add(conv(inp, width, 1, 1, h_in));
            add(conv(width, width, 3, stride, h_in));
            add(conv(width, 4 * width, 1, 1, hw));
            if b == 0 {
                add(conv(inp, 4 * width, 1, stride, h_in));
            }
        }
        c_in = 4 * width;
    }
    shapes
}

fn main() {
    let n: usize = std::env::args().nth(1).map(|s| s.parse().expect("batch size")).unwrap_or(1);
    let precision = std::env::args().nth(2).map_or(Ok(Default::default()), |s| resnet::engine::Precision::parse(&s));
    let mut ws = Workspace::new();
    ws.set_precision(precision.expect("precision"));
    let (mut per_call, mut prepared_once, mut backward) = (0.0, 0.0, 0.0);
    println!(
        "batch {n}, {}: ms per call, forward with weights prepared per call -> prepared once; backward",
        ws.precision()
    );
    for (i, (s, count)) in layers().into_iter().enumerate() {
        let x = vec![0.5f32; n * s.in_len()];
        let w = vec![0.01f32; s.weight_len()];
        let mut y = vec![0f32; n * s.out_len()];
        let mut prepared = conv::Prepared::default();
        let a = time(|| conv::forward(&s, n, &x, &w, &mut y, &mut ws));
        let b = time(|| conv::forward_with(&s, n, &x, &w, &mut y, Store::Overwrite, Some(&mut prepared), &mut ws));
        let (mut dw, mut dx) = (vec![0f32; s.weight_len()], vec![0f32; n * s.in_len()]);
        let back = time(|| {
            let input_grad = if i == 0 { InputGrad::Skip } else { InputGrad::Set(&mut dx[..]) };
            conv::backward(&s, n, &x, &w, &y, &mut dw, input_grad, &mut ws)
        });
        let gflops = |ms: f64, passes: f64| passes * 2.0 * (n * s.out_len() * s.patch()) as f64 / ms / 1e6;
        println!(
            "{count} × {k}×{k}/{st} {:4}→{:<4} {:3}×{:<3}: {a:7.3} -> {b:7.3} ({:5.1} GFLOP/s); {back:7.3} ({:5.1})",
            s.c_in,
            s.c_out,
            s.h,
            s.w,
            gflops(b, 1.0),
            gflops(back, if i == 0 { 1.0 } else { 2.0 }),
            k = s.kernel,
            st = s.stride
        );
        per_call += a * count as f64;
        prepared_once += b * count as f64;
        backward += back * count as f64;
    }
    println!("all convolutions: forward {per_call:.1} -> {prepared_once:.1} ms, backward {backward:.1} ms");
}
