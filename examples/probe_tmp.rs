use resnet::engine::Workspace;
use resnet::engine::conv::{self, ConvShape};
use std::time::Instant;
fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (n, reps): (usize, usize) = (a[1].parse().unwrap(), a[2].parse().unwrap());
    let s = ConvShape { c_in: 3, c_out: 64, kernel: 7, stride: 2, pad: 3, h: 224, w: 224 };
    let mut ws = Workspace::new();
    let x: Vec<f32> = (0..n * s.in_len()).map(|i| (i % 17) as f32 * 0.1).collect();
    let w = vec![0.01f32; s.weight_len()];
    let mut y = vec![0f32; n * s.out_len()];
    let mut prepared = conv::Prepared::default();
    conv::forward_with(&s, n, &x, &w, &mut y, None, Some(&mut prepared), &mut ws);
    let mut times = vec![];
    for _ in 0..reps {
        let t = Instant::now();
        conv::forward_with(&s, n, &x, &w, &mut y, None, Some(&mut prepared), &mut ws);
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    println!("stem b{n}: median {:.3} ms, min {:.3}", times[reps / 2], times[0]);
}
