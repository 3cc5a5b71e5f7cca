//! What the residual costs a 1×1 convolution's panel product with the inference epilogue:
//! no residual, a residual in its own buffer, and the residual in the output (which a block
//! writes over its shortcut). Alternates the three in every round, one thread per product
//! unless `threads` says more (each with its own buffers), and prints median GFLOP/s.
//!
//!     cargo run --release --example residual_epilogue -- 50176 64 256   # m k n [rounds threads]
//!
//! 50176 × 64 × 256 is ResNet-50's 64→256 layer at batch 16 (56×56 pixels per image).

use resnet::engine::epilogue::{Epilogue, Residual, Store};
use resnet::engine::matmul::Mat;
use resnet::engine::panel;
use std::time::Instant;

/// As the `resnet` binary: large buffers start on a cache line.
#[global_allocator]
static ALLOCATOR: resnet::engine::alloc::CacheLineAlloc = resnet::engine::alloc::CacheLineAlloc;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("m k n [rounds threads]")).collect();
    let [m, k, n] = args[..3] else { panic!("usage: m k n [rounds threads]") };
    let (rounds, threads) = (args.get(3).copied().unwrap_or(20), args.get(4).copied().unwrap_or(1));
    if !panel::applies(n) {
        println!("skipped: the panel product needs AVX2, FMA and n a multiple of 16");
        return;
    }
    let runs: Vec<_> = (0..threads).map(|_| std::thread::spawn(move || measure(m, k, n, rounds))).collect();
    for run in runs {
        let [none, separate, in_output] = run.join().unwrap();
        println!(
            "m {m} k {k} n {n}: no residual {none:.1}, separate {separate:.1}, in the output {in_output:.1} GFLOP/s"
        );
    }
}

/// Median GFLOP/s with no residual, a separate one, and one in the output.
fn measure(m: usize, k: usize, n: usize, rounds: usize) -> [f64; 3] {
    let a: Vec<f32> = (0..m * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let w: Vec<f32> = (0..k * n).map(|i| (i % 5) as f32 * 0.1).collect();
    let mut packed = vec![0f32; k * n];
    panel::pack(Mat::rows(&w, n), k, n, &mut packed);
    let (scale, shift) = (vec![1.0f32; n], vec![0.5f32; n]);
    let residual = vec![0.25f32; m * n];
    let mut c = vec![0f32; m * n];
    let mut a_panel = Vec::new();
    let mut times = [vec![], vec![], vec![]];
    for round in 0..rounds {
        // Both orders, so that no variant always runs after the same other one.
        let order = if round % 2 == 0 { [0, 1, 2] } else { [2, 1, 0] };
        for variant in order {
            let residual = match variant {
                0 => Residual::None,
                1 => Residual::Separate(&residual[..]),
                _ => Residual::InOutput,
            };
            let store = Store::Finish(Epilogue { scale: &scale[..], shift: &shift[..], residual, relu: true });
            let t = Instant::now();
            panel::product_packed(&mut c, n, m, 0..n / 16, k, &a, k, &packed, store, &mut a_panel);
            times[variant].push(t.elapsed().as_secs_f64());
        }
    }
    times.map(|mut t| {
        t.sort_by(f64::total_cmp);
        2.0 * (m * k * n) as f64 / t[t.len() / 2] / 1e9
    })
}
