//! Every engine kernel, forward and backward, against a naive float64 reference on
//! random shapes: stride 2, odd sizes, batch 1, 1×1 and 3×3.

mod common;

use common::{conv_ref, random, rel_err};
use resnet::engine::batchnorm::{self, BnParams};
use resnet::engine::conv::{self, ConvShape, InputGrad};
use resnet::engine::device::{Epilogue, Residual};
use resnet::engine::epilogue::{self, Store};
use resnet::engine::matmul::Mat;
use resnet::engine::pool::{self, PoolShape};
use resnet::engine::{self, ConvAlgo, DeviceVec, GradMode, Workspace, ops, panel, sgd, winograd};
use resnet::rng::Rng;

const TOL: f64 = 1e-5;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

#[test]
fn conv_forward_and_backward_match_naive_reference() {
    let cases = [
        (2, ConvShape { c_in: 3, c_out: 16, kernel: 3, stride: 1, pad: 1, h: 8, w: 8 }),
        (3, ConvShape { c_in: 5, c_out: 7, kernel: 3, stride: 2, pad: 1, h: 9, w: 7 }),
        (1, ConvShape { c_in: 16, c_out: 32, kernel: 3, stride: 2, pad: 1, h: 16, w: 16 }),
        (4, ConvShape { c_in: 8, c_out: 12, kernel: 1, stride: 2, pad: 0, h: 7, w: 5 }),
        (3, ConvShape { c_in: 6, c_out: 4, kernel: 1, stride: 1, pad: 0, h: 5, w: 3 }),
        (1, ConvShape { c_in: 2, c_out: 3, kernel: 3, stride: 1, pad: 1, h: 1, w: 1 }),
        (5, ConvShape { c_in: 4, c_out: 4, kernel: 3, stride: 1, pad: 0, h: 6, w: 6 }),
        // The ImageNet stem (7×7, stride 2, pad 3) on an odd, non-square input.
        (2, ConvShape { c_in: 3, c_out: 8, kernel: 7, stride: 2, pad: 3, h: 13, w: 10 }),
        // Bottleneck-sized channels: larger GEMMs (k = 1152 and 256).
        (2, ConvShape { c_in: 128, c_out: 96, kernel: 3, stride: 1, pad: 1, h: 5, w: 4 }),
        (1, ConvShape { c_in: 256, c_out: 512, kernel: 1, stride: 2, pad: 0, h: 7, w: 7 }),
        // Fewer output rows than threads have tiles: the channels are split, unevenly.
        (1, ConvShape { c_in: 8, c_out: 52, kernel: 3, stride: 1, pad: 1, h: 4, w: 5 }),
        (1, ConvShape { c_in: 64, c_out: 40, kernel: 1, stride: 1, pad: 0, h: 3, w: 3 }),
        // 1×1 layers whose weight gradient runs on the panel kernel (16s of output
        // channels), the second over several row tiles.
        (2, ConvShape { c_in: 40, c_out: 64, kernel: 1, stride: 1, pad: 0, h: 9, w: 7 }),
        (3, ConvShape { c_in: 24, c_out: 32, kernel: 1, stride: 1, pad: 0, h: 13, w: 17 }),
        // Several row tiles (256 rows each) with a partial last one, across images.
        (3, ConvShape { c_in: 4, c_out: 8, kernel: 3, stride: 1, pad: 1, h: 13, w: 17 }),
        // Winograd F(4x4, 3x3): partial edge tiles, and channel counts past its 64-wide chunks.
        (4, ConvShape { c_in: 16, c_out: 24, kernel: 3, stride: 1, pad: 1, h: 13, w: 11 }),
        (2, ConvShape { c_in: 72, c_out: 80, kernel: 3, stride: 1, pad: 1, h: 18, w: 17 }),
        (40, ConvShape { c_in: 8, c_out: 8, kernel: 3, stride: 1, pad: 1, h: 3, w: 2 }),
        // Direct kernel: 9·c_in not a multiple of its 6-row groups, several 16-channel
        // output blocks, odd and 1-pixel images, fewer images than threads.
        (3, ConvShape { c_in: 5, c_out: 32, kernel: 3, stride: 1, pad: 1, h: 7, w: 9 }),
        (2, ConvShape { c_in: 17, c_out: 48, kernel: 3, stride: 1, pad: 1, h: 5, w: 3 }),
        (1, ConvShape { c_in: 16, c_out: 16, kernel: 3, stride: 1, pad: 1, h: 1, w: 1 }),
        (5, ConvShape { c_in: 16, c_out: 16, kernel: 3, stride: 1, pad: 1, h: 32, w: 32 }),
        // winograd_small at 32 and 64 channels: clipped tiles, bands across images.
        (3, ConvShape { c_in: 32, c_out: 32, kernel: 3, stride: 1, pad: 1, h: 7, w: 10 }),
        (2, ConvShape { c_in: 64, c_out: 64, kernel: 3, stride: 1, pad: 1, h: 6, w: 5 }),
        (1, ConvShape { c_in: 128, c_out: 128, kernel: 3, stride: 1, pad: 1, h: 5, w: 9 }),
    ];
    // Auto picks per shape; Direct forces the direct kernel wherever it can run, Im2col
    // the GEMMs (on packed weights wherever the channels come in 16s).
    for algo in [ConvAlgo::Auto, ConvAlgo::Direct, ConvAlgo::Im2col] {
        check_conv_cases(&cases, algo);
    }
}

fn check_conv_cases(cases: &[(usize, ConvShape)], algo: ConvAlgo) {
    let mut rng = Rng::new(1);
    let mut ws = Workspace::new();
    ws.set_algo(algo);
    for &(n, s) in cases {
        let x = random(&mut rng, n * s.in_len());
        let w = random(&mut rng, s.weight_len());
        let dy = random(&mut rng, n * s.out_len());
        let (y_ref, dx_ref, dw_ref) = conv_ref(&s, n, &x, &w, &dy);
        let mut y = vec![f32::NAN; n * s.out_len()];
        conv::forward(&s, n, &x, &w, &mut y, &mut ws);
        assert!(rel_err(&y, &y_ref) < TOL, "forward {algo:?} {s:?} n={n}: {}", rel_err(&y, &y_ref));
        // Set overwrites dx (NaN before, so any read of it shows).
        let mut dx = vec![f32::NAN; n * s.in_len()];
        let mut dw = vec![f32::NAN; s.weight_len()];
        conv::backward(&s, n, &x, &w, &dy, &mut dw, InputGrad::Set(&mut dx), &mut ws);
        assert!(rel_err(&dx, &dx_ref) < TOL, "backward-data {algo:?} {s:?} n={n}: {}", rel_err(&dx, &dx_ref));
        assert!(rel_err(&dw, &dw_ref) < TOL, "backward-weights {algo:?} {s:?} n={n}: {}", rel_err(&dw, &dw_ref));
        // Add accumulates: start from a known value and subtract it.
        let base = random(&mut rng, n * s.in_len());
        let mut dx = base.clone();
        conv::backward(&s, n, &x, &w, &dy, &mut dw, InputGrad::Add(&mut dx), &mut ws);
        let dx_ref: Vec<f64> = dx_ref.iter().zip(&base).map(|(r, b)| r + *b as f64).collect();
        assert!(rel_err(&dx, &dx_ref) < TOL, "backward-data add {algo:?} {s:?} n={n}: {}", rel_err(&dx, &dx_ref));
        // Weight gradient without input gradient (the first layer) is the same.
        let mut dw2 = vec![0f32; s.weight_len()];
        conv::backward(&s, n, &x, &w, &dy, &mut dw2, InputGrad::Skip, &mut ws);
        assert_eq!(dw, dw2);
        // Accumulating adds the weight gradient to what `dw` holds (micro-batches).
        let base = random(&mut rng, s.weight_len());
        let mut dw3 = base.clone();
        ws.set_grad_mode(GradMode::Accumulate);
        conv::backward(&s, n, &x, &w, &dy, &mut dw3, InputGrad::Skip, &mut ws);
        ws.set_grad_mode(GradMode::Overwrite);
        let dw_ref: Vec<f64> = dw_ref.iter().zip(&base).map(|(r, b)| r + *b as f64).collect();
        assert!(rel_err(&dw3, &dw_ref) < TOL, "backward-weights add {algo:?} {s:?} n={n}: {}", rel_err(&dw3, &dw_ref));
    }
}

/// Naive training-mode BN (+ residual, + ReLU): returns (y, dx, dgamma, dbeta, mean, var).
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn bn_ref(
    x: &[f32],
    rows: usize,
    c: usize,
    gamma: &[f32],
    beta: &[f32],
    res: Option<&[f32]>,
    relu: bool,
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>) {
    let m = rows as f64;
    let mut mean = vec![0f64; c];
    let mut var = vec![0f64; c];
    for r in 0..rows {
        for j in 0..c {
            mean[j] += x[r * c + j] as f64 / m;
        }
    }
    for r in 0..rows {
        for j in 0..c {
            var[j] += (x[r * c + j] as f64 - mean[j]).powi(2) / m;
        }
    }
    let xhat = |r: usize, j: usize| (x[r * c + j] as f64 - mean[j]) / (var[j] + 1e-5).sqrt();
    let mut y = vec![0f64; rows * c];
    let mut g = vec![0f64; rows * c];
    for r in 0..rows {
        for j in 0..c {
            let i = r * c + j;
            let pre = gamma[j] as f64 * xhat(r, j) + beta[j] as f64 + res.map_or(0.0, |v| v[i] as f64);
            y[i] = if relu { pre.max(0.0) } else { pre };
            g[i] = if relu && pre <= 0.0 { 0.0 } else { dy[i] as f64 };
        }
    }
    let (mut dg, mut db) = (vec![0f64; c], vec![0f64; c]);
    for r in 0..rows {
        for j in 0..c {
            dg[j] += g[r * c + j] * xhat(r, j);
            db[j] += g[r * c + j];
        }
    }
    let mut dx = vec![0f64; rows * c];
    for r in 0..rows {
        for j in 0..c {
            let k = gamma[j] as f64 / (var[j] + 1e-5).sqrt();
            dx[r * c + j] = k * (g[r * c + j] - db[j] / m - xhat(r, j) * dg[j] / m);
        }
    }
    (y, dx, dg, db, mean, var)
}

#[test]
fn batchnorm_train_forward_backward_match_naive_reference() {
    let mut rng = Rng::new(2);
    // One scratch for every shape, as the layers of a network share one.
    let mut scr = batchnorm::Scratch::default();
    for (rows, c, residual, relu) in [
        (37, 5, false, false),
        (200, 16, true, true),
        (3, 7, false, true),
        (1000, 3, true, false),
        (5000, 16, false, true),
        // More channels than a block's 512 floats (a block is one row), and a block of
        // five rows of 100 over several tasks.
        (70, 600, true, true),
        (300, 100, false, false),
    ] {
        let x: Vec<f32> = random(&mut rng, rows * c).iter().map(|v| v * 2.0 + 0.5).collect();
        let gamma: Vec<f32> = (0..c).map(|_| rng.uniform() as f32 + 0.5).collect();
        let beta = random(&mut rng, c);
        let res = random(&mut rng, rows * c);
        let dy = random(&mut rng, rows * c);
        let r = residual.then_some(res.as_slice());
        let (y_ref, dx_ref, dg_ref, db_ref, mean_ref, var_ref) = bn_ref(&x, rows, c, &gamma, &beta, r, relu, &dy);
        let p = BnParams { gamma: &gamma, beta: &beta, eps: 1e-5, sync: None };
        let (mut rm, mut rv) = (vec![0.5f32; c], vec![2.0f32; c]);
        let mut saved = batchnorm::Saved::new(c);
        let mut y = vec![f32::NAN; rows * c];
        batchnorm::forward_train(&p, &x, rows, 0.1, &mut rm, &mut rv, &mut saved, r, relu, &mut y, &mut scr);
        assert!(rel_err(&y, &y_ref) < TOL, "bn forward rows={rows} c={c}");
        // Running averages with PyTorch's momentum and unbiased variance.
        let unbiased = rows as f64 / (rows as f64 - 1.0);
        let rm_ref: Vec<f64> = mean_ref.iter().map(|m| 0.9 * 0.5 + 0.1 * m).collect();
        let rv_ref: Vec<f64> = var_ref.iter().map(|v| 0.9 * 2.0 + 0.1 * v * unbiased).collect();
        assert!(rel_err(&rm, &rm_ref) < TOL && rel_err(&rv, &rv_ref) < TOL, "running stats");
        let mut g = dy.clone();
        let (mut dg, mut db) = (vec![0f32; c], vec![0f32; c]);
        // The block masks the final ReLU itself before the shortcut; emulate that here.
        if relu {
            ops::relu_backward(&mut g, &y, None);
        }
        batchnorm::backward(&p, &x, rows, &saved, false, &mut g, &mut dg, &mut db, &mut scr);
        assert!(rel_err(&g, &dx_ref) < 1e-4, "bn backward dx rows={rows} c={c}: {}", rel_err(&g, &dx_ref));
        assert!(rel_err(&dg, &dg_ref) < TOL && rel_err(&db, &db_ref) < TOL, "bn dgamma/dbeta");
        if relu && !residual {
            // The layer's own ReLU, masked inside the backward, gives the same result.
            let mut g2 = dy.clone();
            batchnorm::backward(&p, &x, rows, &saved, true, &mut g2, &mut dg, &mut db, &mut scr);
            assert!(rel_err(&g2, &dx_ref) < 1e-4, "bn fused relu backward");
        }
    }
}

#[test]
fn batchnorm_eval_uses_running_statistics() {
    let mut rng = Rng::new(3);
    let (rows, c) = (50, 6);
    let x = random(&mut rng, rows * c);
    let gamma = random(&mut rng, c);
    let beta = random(&mut rng, c);
    let rm = random(&mut rng, c);
    let rv: Vec<f32> = (0..c).map(|_| rng.uniform() as f32 + 0.1).collect();
    let mut y = vec![0f32; rows * c];
    let p = BnParams { gamma: &gamma, beta: &beta, eps: 1e-5, sync: None };
    batchnorm::forward_eval(&p, &x, rows, &rm, &rv, None, true, &mut y, &mut Default::default());
    let y_ref: Vec<f64> = (0..rows * c)
        .map(|i| {
            let j = i % c;
            let v = (x[i] as f64 - rm[j] as f64) / (rv[j] as f64 + 1e-5).sqrt() * gamma[j] as f64 + beta[j] as f64;
            v.max(0.0)
        })
        .collect();
    assert!(rel_err(&y, &y_ref) < TOL);
}

#[test]
fn shortcut_a_subsamples_and_pads_both_sides() {
    let mut rng = Rng::new(4);
    let op = ops::ShortcutA { h: 5, w: 7, c_in: 4, stride: 2, pad: 2 };
    let n = 2;
    let x = random(&mut rng, n * 5 * 7 * 4);
    let mut y = vec![f32::NAN; n * 3 * 4 * 8];
    op.forward(n, &x, &mut y);
    for b in 0..n {
        for oy in 0..3 {
            for ox in 0..4 {
                for c in 0..8 {
                    let got = y[((b * 3 + oy) * 4 + ox) * 8 + c];
                    let want = if (2..6).contains(&c) { x[((b * 5 + 2 * oy) * 7 + 2 * ox) * 4 + c - 2] } else { 0.0 };
                    assert_eq!(got, want);
                }
            }
        }
    }
    // Backward is the adjoint: <A x, g> = <x, Aᵀ g>.
    let g = random(&mut rng, y.len());
    let mut dx = vec![f32::NAN; x.len()];
    op.backward(n, &g, &mut dx);
    let lhs: f64 = y.iter().zip(&g).map(|(a, b)| *a as f64 * *b as f64).sum();
    let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
    assert!((lhs - rhs).abs() < 1e-4 * lhs.abs().max(1.0));
}

#[test]
fn pooling_linear_softmax_match_reference() {
    let mut rng = Rng::new(5);
    let (n, pixels, c, o) = (3, 5, 4, 6);
    let x = random(&mut rng, n * pixels * c);
    let mut pooled = vec![0f32; n * c];
    pool::avgpool_forward(n, pixels, c, &x, &mut pooled);
    let pooled_ref: Vec<f64> = (0..n * c)
        .map(|i| (0..pixels).map(|p| x[(i / c * pixels + p) * c + i % c] as f64).sum::<f64>() / pixels as f64)
        .collect();
    assert!(rel_err(&pooled, &pooled_ref) < TOL);
    let g = random(&mut rng, n * c);
    let mut dx = vec![0f32; n * pixels * c];
    pool::avgpool_backward(n, pixels, c, &g, &mut dx);
    let dx_ref: Vec<f64> =
        (0..n * pixels * c).map(|i| g[i / (pixels * c) * c + i % c] as f64 / pixels as f64).collect();
    assert!(rel_err(&dx, &dx_ref) < TOL);

    let w = random(&mut rng, o * c);
    let b = random(&mut rng, o);
    let mut y = vec![0f32; n * o];
    ops::linear_forward(n, c, o, &pooled, &w, &b, &mut y);
    let y_ref: Vec<f64> = (0..n * o)
        .map(|i| b[i % o] as f64 + (0..c).map(|k| pooled[i / o * c + k] as f64 * w[i % o * c + k] as f64).sum::<f64>())
        .collect();
    assert!(rel_err(&y, &y_ref) < TOL);
    let gy = random(&mut rng, n * o);
    let (mut dw, mut db, mut dxl) = (vec![0f32; o * c], vec![0f32; o], vec![0f32; n * c]);
    ops::linear_backward(n, c, o, &pooled, &w, &gy, &mut dw, &mut db, &mut dxl, false);
    let dw_ref: Vec<f64> =
        (0..o * c).map(|i| (0..n).map(|r| gy[r * o + i / c] as f64 * pooled[r * c + i % c] as f64).sum()).collect();
    let db_ref: Vec<f64> = (0..o).map(|j| (0..n).map(|r| gy[r * o + j] as f64).sum()).collect();
    let dx_ref: Vec<f64> =
        (0..n * c).map(|i| (0..o).map(|j| gy[i / c * o + j] as f64 * w[j * c + i % c] as f64).sum()).collect();
    assert!(rel_err(&dw, &dw_ref) < TOL && rel_err(&db, &db_ref) < TOL && rel_err(&dxl, &dx_ref) < TOL);
    // Accumulating: the weight and bias gradients add to what they hold, dx does not.
    ops::linear_backward(n, c, o, &pooled, &w, &gy, &mut dw, &mut db, &mut dxl, true);
    let twice = |r: &[f64]| r.iter().map(|v| 2.0 * v).collect::<Vec<f64>>();
    assert!(rel_err(&dw, &twice(&dw_ref)) < TOL && rel_err(&db, &twice(&db_ref)) < TOL);
    assert!(rel_err(&dxl, &dx_ref) < TOL);

    let labels = [1u32, 5, 0];
    let mut grad = vec![0f32; n * o];
    let (loss, correct) = ops::softmax_cross_entropy(n, o, &y, &labels, &mut grad);
    let mut loss_ref = 0f64;
    let mut grad_ref = vec![0f64; n * o];
    let mut correct_ref = 0;
    for r in 0..n {
        let z: Vec<f64> = y[r * o..(r + 1) * o].iter().map(|&v| v as f64).collect();
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        loss_ref += (lse - z[labels[r] as usize]) / n as f64;
        for j in 0..o {
            grad_ref[r * o + j] = ((z[j] - lse).exp() - f64::from(j == labels[r] as usize)) / n as f64;
        }
        let best = (0..o).max_by(|&a, &b| z[a].total_cmp(&z[b])).unwrap();
        correct_ref += usize::from(best == labels[r] as usize);
    }
    assert!((loss as f64 - loss_ref).abs() < 1e-5 * loss_ref.abs());
    assert!(rel_err(&grad, &grad_ref) < TOL);
    assert_eq!(correct, correct_ref);
}

#[test]
fn panel_packed_product_matches_naive_reference() {
    if !panel::applies(16) {
        println!("skipped: the panel product needs AVX2 and FMA");
        return;
    }
    // B packed from both layouts (weights [n][k], and row-major [k][n]), a range of
    // strips, A and C rows further apart than needed, every remainder of rows (m mod 6),
    // more rows than a row panel (96), k past one k-block (1024), so that later blocks add
    // to C, accumulation onto C, and the epilogue (which must wait for the last k-block),
    // with a residual of its own, one in C, or none. The last two cases meet enough strips for A's rows to
    // be interleaved first (8 strips; 4 on rows of 256 floats or more), with a short last
    // group of rows and k not a multiple of the interleaving's 8 steps; the room for the
    // interleaved rows starts as NaN and is reused from case to case.
    let mut rng = Rng::new(13);
    let mut a_panel = vec![f32::NAN; 1 << 16];
    let cases = [
        (7, 48, 5, 0..3, 9),
        (13, 64, 1500, 1..3, 1500),
        (6, 16, 2049, 0..1, 2050),
        (1, 32, 3, 1..2, 3),
        (10, 32, 3, 0..2, 3),
        (9, 16, 4, 0..1, 4),
        (11, 16, 9, 0..1, 9),
        (128, 64, 32, 0..4, 32),
        (5, 48, 1, 0..3, 1),
        (103, 128, 300, 0..8, 301),
        (17, 80, 1100, 1..5, 1100),
    ];
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Res {
        No,
        Separate,
        InC,
    }
    let modes =
        [(false, None), (true, None), (false, Some(Res::Separate)), (false, Some(Res::No)), (false, Some(Res::InC))];
    for ((m, n, k, strips, lda), (accumulate, finish)) in
        cases.into_iter().flat_map(|c| modes.map(|mode| (c.clone(), mode)))
    {
        let w = random(&mut rng, n * k);
        let b_rows: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
        let a = random(&mut rng, (m - 1) * lda + k);
        let ldc = n + 5;
        let residual = random(&mut rng, m * ldc);
        let c0 = if finish == Some(Res::InC) { residual.clone() } else { random(&mut rng, m * ldc) };
        let cols = strips.start * 16..strips.end * 16;
        let (scale, shift) = (random(&mut rng, cols.len()), random(&mut rng, cols.len()));
        let want: Vec<f64> = (0..m)
            .flat_map(|i| cols.clone().map(move |j| (i, j)))
            .map(|(i, j)| {
                let (at, col) = (i * ldc + j - cols.start, j - cols.start);
                let sum: f64 = (0..k).map(|p| a[i * lda + p] as f64 * w[j * k + p] as f64).sum();
                let v = sum + if accumulate { c0[at] as f64 } else { 0.0 };
                match finish {
                    None => v,
                    Some(res) => {
                        let r = if res == Res::No { 0.0 } else { residual[at] as f64 };
                        (v * scale[col] as f64 + shift[col] as f64 + r).max(0.0)
                    }
                }
            })
            .collect();
        let finish = finish.map(|res| epilogue::Epilogue {
            scale: &scale[..],
            shift: &shift[..],
            residual: match res {
                Res::No => epilogue::Residual::None,
                Res::Separate => epilogue::Residual::Separate(&residual[..]),
                Res::InC => epilogue::Residual::InOutput,
            },
            relu: true,
        });
        let store = match finish {
            Some(f) => Store::Finish(f),
            None => Store::adding(accumulate),
        };
        for b in [Mat::transposed(&w, k), Mat::rows(&b_rows, n)] {
            let mut packed = vec![f32::NAN; n * k];
            panel::pack(b, k, n, &mut packed);
            let mut c = c0.clone();
            panel::product_packed(&mut c, ldc, m, strips.clone(), k, &a, lda, &packed, store, &mut a_panel);
            let got: Vec<f32> = (0..m).flat_map(|i| c[i * ldc..i * ldc + cols.len()].to_vec()).collect();
            let e = rel_err(&got, &want);
            let epilogue = finish.map(|f| f.residual);
            let residual = match epilogue {
                None => "no epilogue",
                Some(epilogue::Residual::None) => "epilogue",
                Some(epilogue::Residual::Separate(_)) => "epilogue, residual",
                Some(epilogue::Residual::InOutput) => "epilogue, residual in C",
            };
            assert!(e < TOL, "packed product m={m} n={n} k={k} accumulate {accumulate} {residual}: {e}");
            let beyond = (0..m).flat_map(|i| (cols.len()..ldc).map(move |j| i * ldc + j));
            assert!(beyond.clone().all(|i| c[i] == c0[i]), "wrote past the strips");
        }
    }
}

#[test]
fn panel_product_of_transposed_a_matches_naive_reference() {
    if !panel::applies(16) {
        println!("skipped: the panel product needs AVX2 and FMA");
        return;
    }
    // A given as its transpose (k rows of m floats, further apart than m), as the weight
    // gradients use it: every remainder of rows (m mod 6), more rows than a row panel
    // (96), k past one k-block (1024), a range of strips, and accumulation onto C.
    let mut rng = Rng::new(17);
    let mut a_panel = vec![f32::NAN; 1 << 10];
    let cases = [(7, 48, 5, 0..3), (13, 64, 1500, 1..3), (1, 32, 3, 1..2), (100, 16, 9, 0..1), (203, 96, 256, 2..6)];
    for ((m, n, k, strips), accumulate) in cases.into_iter().flat_map(|c| [(c.clone(), false), (c, true)]) {
        let ldat = m + 3;
        let at = random(&mut rng, (k - 1) * ldat + m);
        let b = random(&mut rng, k * n);
        let ldc = n + 5;
        let c0 = random(&mut rng, m * ldc);
        let cols = strips.start * 16..strips.end * 16;
        let mut packed = vec![f32::NAN; n * k];
        panel::pack(Mat::rows(&b, n), k, n, &mut packed);
        let mut c = c0.clone();
        panel::product_packed_transposed(
            &mut c,
            ldc,
            m,
            strips.clone(),
            k,
            &at,
            ldat,
            &packed,
            accumulate,
            &mut a_panel,
        );
        for i in 0..m {
            for (col, j) in cols.clone().enumerate() {
                let sum: f64 = (0..k).map(|p| at[p * ldat + i] as f64 * b[p * n + j] as f64).sum();
                let want = sum + if accumulate { c0[i * ldc + col] as f64 } else { 0.0 };
                let got = c[i * ldc + col] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "m={m} n={n} k={k} at ({i}, {j}): {got} vs {want}"
                );
            }
            let beyond = cols.len()..ldc;
            assert!(beyond.clone().all(|j| c[i * ldc + j] == c0[i * ldc + j]), "wrote past the strips");
        }
    }
}

#[test]
fn winograd_matches_naive_reference() {
    // Called directly, whatever `applies` would choose on this machine's core count.
    let mut rng = Rng::new(9);
    let mut ws = Workspace::new();
    // Channel counts not multiples of 8 exercise the transforms' partial lane group. The
    // forward runs in blocks of tiles and, where the output channels come in 16s, by
    // position (both on the panel kernel), whichever `forward` would choose.
    let cases = [
        (1, 8, 8, 4, 4),
        (3, 16, 24, 13, 11),
        (2, 72, 80, 9, 18),
        (5, 8, 16, 1, 7),
        (2, 5, 13, 6, 9),
        (6, 32, 48, 16, 16),
    ];
    for (n, c_in, c_out, h, w) in cases {
        let s = ConvShape { c_in, c_out, kernel: 3, stride: 1, pad: 1, h, w };
        let x = random(&mut rng, n * s.in_len());
        let wt = random(&mut rng, s.weight_len());
        let dy = random(&mut rng, n * s.out_len());
        let (y_ref, dx_ref, dw_ref) = conv_ref(&s, n, &x, &wt, &dy);
        let ways = [winograd::Way::InBlocks, winograd::Way::ByPosition];
        for way in ways.into_iter().filter(|&w| w == winograd::Way::InBlocks || panel::applies(c_out)) {
            let mut y = vec![f32::NAN; n * s.out_len()];
            winograd::forward(way, &s, n, &x, &wt, None, &mut y, Store::Overwrite, &mut ws);
            let e = rel_err(&y, &y_ref);
            assert!(e < TOL, "winograd forward {way:?} {s:?} n={n}: {e}");
            // Accumulating forward: y + conv(x) = 2·conv(x).
            winograd::forward(way, &s, n, &x, &wt, None, &mut y, Store::Accumulate, &mut ws);
            let twice: Vec<f64> = y_ref.iter().map(|v| 2.0 * v).collect();
            assert!(rel_err(&y, &twice) < TOL, "winograd accumulate {way:?} {s:?}");
        }
        let base = random(&mut rng, n * s.in_len());
        let mut dx = base.clone();
        winograd::backward_data(&s, n, &dy, &wt, &mut dx, true, &mut ws);
        let dx_ref: Vec<f64> = dx_ref.iter().zip(&base).map(|(r, b)| r + *b as f64).collect();
        assert!(rel_err(&dx, &dx_ref) < TOL, "winograd backward-data {s:?} n={n}: {}", rel_err(&dx, &dx_ref));
        let mut dw = vec![f32::NAN; s.weight_len()];
        winograd::backward_weights(&s, n, &x, &dy, &mut dw, &mut ws);
        assert!(rel_err(&dw, &dw_ref) < TOL, "winograd backward-weights {s:?} n={n}: {}", rel_err(&dw, &dw_ref));
    }
}

#[test]
fn conv_epilogue_fuses_batchnorm_residual_and_relu() {
    // y = relu(conv(x)·scale + shift + residual), on every algorithm and the channel split,
    // on the OHWI weights and on weights prepared for inference (packed GEMM weights).
    let mut rng = Rng::new(10);
    for algo in [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Direct] {
        let mut ws = Workspace::new();
        ws.set_algo(algo);
        for (n, s) in [
            (3, ConvShape { c_in: 16, c_out: 24, kernel: 3, stride: 1, pad: 1, h: 9, w: 7 }),
            (2, ConvShape { c_in: 6, c_out: 32, kernel: 3, stride: 1, pad: 1, h: 5, w: 6 }),
            (1, ConvShape { c_in: 8, c_out: 48, kernel: 3, stride: 1, pad: 1, h: 3, w: 4 }),
            // 16 channels in and out: `winograd_small` under Auto and Winograd, clipped
            // tiles on both edges.
            (3, ConvShape { c_in: 16, c_out: 16, kernel: 3, stride: 1, pad: 1, h: 10, w: 7 }),
            (2, ConvShape { c_in: 24, c_out: 64, kernel: 1, stride: 1, pad: 0, h: 5, w: 5 }),
            (1, ConvShape { c_in: 16, c_out: 32, kernel: 3, stride: 2, pad: 1, h: 9, w: 9 }),
            // More rows than a row panel, and patches longer than a k-block of the packed
            // GEMM: the epilogue must wait for the last block.
            (2, ConvShape { c_in: 120, c_out: 32, kernel: 3, stride: 1, pad: 1, h: 8, w: 7 }),
        ] {
            let x = random(&mut rng, n * s.in_len());
            let w = random(&mut rng, s.weight_len());
            let scale = random(&mut rng, s.c_out);
            let shift = random(&mut rng, s.c_out);
            let residual = random(&mut rng, n * s.out_len());
            let (y_ref, _, _) = conv_ref(&s, n, &x, &w, &vec![0.0; n * s.out_len()]);
            // With residual and ReLU (a block's last unit), the residual in its own buffer
            // or in the output (which then holds it on entry); and with neither.
            for (full, in_output) in [(true, false), (true, true), (false, false)] {
                let want: Vec<f64> = y_ref
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * scale[i % s.c_out] as f64 + shift[i % s.c_out] as f64)
                    .enumerate()
                    .map(|(i, v)| if full { (v + residual[i] as f64).max(0.0) } else { v })
                    .collect();
                let res = match (full, in_output) {
                    (false, _) => epilogue::Residual::None,
                    (true, false) => epilogue::Residual::Separate(&residual[..]),
                    (true, true) => epilogue::Residual::InOutput,
                };
                let epi = epilogue::Epilogue { scale: &scale[..], shift: &shift[..], residual: res, relu: full };
                let mut prepared = conv::Prepared::default();
                for prepare in [false, true, true] {
                    let mut y = if in_output { residual.clone() } else { vec![f32::NAN; n * s.out_len()] };
                    let p = prepare.then_some(&mut prepared);
                    conv::forward_with(&s, n, &x, &w, &mut y, Store::Finish(epi), p, &mut ws);
                    let e = rel_err(&y, &want);
                    assert!(
                        e < TOL,
                        "{algo:?} {s:?} prepared {prepare} residual+ReLU {full} in output {in_output}: {e}"
                    );
                }
            }
        }
    }
}

/// Naive max pool: each output is the max over its window (padding excluded), and the
/// backward sends each output gradient to the first position holding that max.
fn maxpool_ref(s: &PoolShape, n: usize, x: &[f32], g: &[f32]) -> (Vec<f64>, Vec<f64>) {
    let (oh, ow) = (s.out_h(), s.out_w());
    let mut y = vec![0f64; n * s.out_len()];
    let mut dx = vec![0f64; n * s.in_len()];
    for b in 0..n {
        for oy in 0..oh {
            for ox in 0..ow {
                for c in 0..s.c {
                    let mut best: Option<(f32, usize)> = None;
                    for ky in 0..s.kernel {
                        for kx in 0..s.kernel {
                            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            if iy < 0 || ix < 0 || iy >= s.h as isize || ix >= s.w as isize {
                                continue;
                            }
                            let i = ((b * s.h + iy as usize) * s.w + ix as usize) * s.c + c;
                            if best.is_none_or(|(v, _)| x[i] > v) {
                                best = Some((x[i], i));
                            }
                        }
                    }
                    let (v, i) = best.unwrap();
                    let o = ((b * oh + oy) * ow + ox) * s.c + c;
                    y[o] = v as f64;
                    dx[i] += g[o] as f64;
                }
            }
        }
    }
    (y, dx)
}

#[test]
fn maxpool_matches_naive_reference() {
    let mut rng = Rng::new(8);
    let cases = [
        (2, PoolShape { c: 5, kernel: 3, stride: 2, pad: 1, h: 9, w: 8 }),
        (1, PoolShape { c: 64, kernel: 3, stride: 2, pad: 1, h: 112, w: 112 }),
        (3, PoolShape { c: 3, kernel: 3, stride: 2, pad: 1, h: 1, w: 2 }),
        (2, PoolShape { c: 4, kernel: 2, stride: 2, pad: 0, h: 6, w: 7 }),
        // Whole groups of 8 channels and a remainder.
        (2, PoolShape { c: 21, kernel: 3, stride: 2, pad: 1, h: 7, w: 6 }),
    ];
    for (n, s) in cases {
        // Coarse values make ties common, which exercises the first-max rule.
        let x: Vec<f32> = random(&mut rng, n * s.in_len()).iter().map(|v| (v * 2.0).round()).collect();
        let g = random(&mut rng, n * s.out_len());
        let (y_ref, dx_ref) = maxpool_ref(&s, n, &x, &g);
        let mut y = vec![f32::NAN; n * s.out_len()];
        let mut argmax = vec![0u32; n * s.out_len()];
        pool::maxpool_forward(&s, n, &x, &mut y, &mut argmax);
        assert!(y.iter().zip(&y_ref).all(|(a, b)| *a as f64 == *b), "maxpool forward {s:?}");
        let mut y_eval = vec![f32::NAN; n * s.out_len()];
        pool::maxpool_eval(&s, n, &x, &mut y_eval);
        assert!(y_eval.iter().zip(&y_ref).all(|(a, b)| *a as f64 == *b), "maxpool inference {s:?}");
        let mut dx = vec![f32::NAN; n * s.in_len()];
        pool::maxpool_backward(&s, n, &g, &argmax, &mut dx);
        assert!(rel_err(&dx, &dx_ref) < TOL, "maxpool backward {s:?}: {}", rel_err(&dx, &dx_ref));
    }
    // A NaN in a window wins and sticks, wherever it is, as in PyTorch: in a group of 8
    // channels (channel 0) and in the remainder (channel 8).
    let s = PoolShape { c: 9, kernel: 3, stride: 1, pad: 0, h: 3, w: 3 };
    for at in [0, 4, 8] {
        let mut x = vec![1.0f32; 9 * 9];
        (x[at * 9], x[at * 9 + 8]) = (f32::NAN, f32::NAN);
        let (mut y, mut y_eval, mut argmax) = (vec![0f32; 9], vec![0f32; 9], vec![0u32; 9]);
        pool::maxpool_forward(&s, 1, &x, &mut y, &mut argmax);
        pool::maxpool_eval(&s, 1, &x, &mut y_eval);
        for c in [0, 8] {
            assert!(y[c].is_nan() && y_eval[c].is_nan(), "NaN at {at}, channel {c}: {} {}", y[c], y_eval[c]);
        }
        assert!(y_eval[1..8].iter().all(|v| *v == 1.0), "the other channels are untouched");
    }
}

#[test]
fn sgd_matches_pytorch_formula() {
    let mut rng = Rng::new(6);
    let cfg = sgd::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    let mut p = random(&mut rng, 100);
    let mut buf = vec![0f32; 100];
    let (mut p64, mut b64): (Vec<f64>, Vec<f64>) = (f64s(&p), vec![0.0; 100]);
    for _ in 0..3 {
        let g = random(&mut rng, 100);
        sgd::step(cfg, &mut p, &g, &mut buf);
        for i in 0..100 {
            let d = g[i] as f64 + 1e-4 * p64[i];
            b64[i] = 0.9 * b64[i] + d;
            p64[i] -= 0.1 * b64[i];
        }
    }
    assert!(rel_err(&p, &p64) < 1e-6);
}

/// `sum_groups` (the weight gradients' reduction) adds every item's terms exactly once,
/// and in an order fixed by the shapes alone: terms spanning seven orders of magnitude,
/// whose float32 sum depends on the order, come out bit-identical on every run. The
/// last case is too large for a group per item, so groups hold several items.
#[test]
fn sum_groups_adds_every_item_once_in_a_fixed_order() {
    // Per-thread scratch for two workers, and room for the partial sums.
    let mut room: (Vec<engine::Scratch>, Vec<f32>) = ((0..2).map(|_| Default::default()).collect(), Vec::new());
    let term = |item: usize, j: usize| ((item * 31 + j) % 17 + 1) as f32 * 10f32.powi((item % 7) as i32 - 3);
    for (len, items) in [(5, 1), (7, 50), (1 << 19, 13)] {
        let sum = |(threads, partials): &mut (Vec<engine::Scratch>, Vec<f32>)| {
            engine::sum_groups(threads, partials, len, items, |_, group, part| {
                for item in group {
                    part.iter_mut().enumerate().for_each(|(j, p)| *p += term(item, j));
                }
            })
            .to_vec()
        };
        let first = sum(&mut room);
        for _ in 0..3 {
            assert_eq!(sum(&mut room), first, "len {len}, {items} items: the sum changed between runs");
        }
        for j in (0..len).step_by(len / 5 + 1) {
            let want: f64 = (0..items).map(|i| term(i, j) as f64).sum();
            let e = (first[j] as f64 - want).abs() / want;
            assert!(e < 1e-5, "len {len}, {items} items, element {j}: {} vs {want}", first[j]);
        }
    }
}

#[test]
fn conv_layer_drops_prepared_weights_when_they_change() {
    // Inference packs the weights on first use; an SGD step (through `for_each_param`)
    // must not leave the layer computing with the old packing.
    let mut rng = Rng::new(14);
    let mut ws = Workspace::new();
    let mut layer = resnet::nn::Conv2d::new(8, 32, 1, 1, &mut rng);
    let (n, hw) = (2, (3, 3));
    let x = DeviceVec::from_host(random(&mut rng, n * 9 * 8));
    let (ones, zeros) = (DeviceVec::filled(32, 1.0), DeviceVec::zeros(32));
    let epi = Epilogue { scale: ones.view(), shift: zeros.view(), residual: Residual::None, relu: false };
    let mut before = DeviceVec::zeros(n * 9 * 32);
    layer.forward_fused(n, hw, x.view(), before.view_mut(), epi, &mut ws);
    layer.for_each_param(&mut |p| {
        let doubled: Vec<f32> = p.value.to_host().iter().map(|v| v * -2.0).collect();
        p.value.copy_from_host(&doubled);
    });
    let mut after = DeviceVec::zeros(n * 9 * 32);
    layer.forward_fused(n, hw, x.view(), after.view_mut(), epi, &mut ws);
    let after = after.to_host();
    let want: Vec<f64> = before.to_host().iter().map(|&v| -2.0 * v as f64).collect();
    assert!(rel_err(&after, &want) < TOL, "stale prepared weights: {}", rel_err(&after, &want));
}

/// A network runs its passes on a worker of rayon's pool (`engine::in_pool`). Called from
/// the main thread, from inside the pool, or by two threads at once on two networks, a
/// training step and an inference give bit-identical results, and nothing deadlocks.
#[test]
fn passes_give_the_same_result_from_any_thread() {
    use resnet::model::{ModelConfig, ResNet};
    let (n, hw) = (4, (32, 32));
    let mut rng = Rng::new(21);
    let images = random(&mut rng, n * 32 * 32 * 3);
    let labels: Vec<u32> = (0..n as u32).collect();
    let sgd = sgd::SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    // One training step, then an inference: the step's loss and the logits.
    let run = |net: &mut ResNet| {
        let mut scratch = resnet::train::StepScratch::default();
        let (loss, _) = resnet::train::step(net, hw, &images, &labels, 1, sgd, &mut scratch);
        let mut out = vec![loss];
        out.extend_from_slice(net.forward(false, n, hw, &images));
        out
    };
    let net = || ResNet::new(ModelConfig::from_name("resnet8", None, 10).unwrap(), 3);
    let want = run(&mut net());
    let (mut a, mut b) = (net(), net());
    let inside = rayon::scope(|_| run(&mut a));
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| run(&mut net()));
        let y = run(&mut b);
        (x.join().unwrap(), y)
    });
    for (what, got) in [("inside the pool", inside), ("concurrent, spawned", x), ("concurrent, main", y)] {
        assert_eq!(got, want, "{what}: the results differ from the main thread's");
    }
}
