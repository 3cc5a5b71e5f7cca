//! Finite-difference check of a whole small ResNet (n = 1, 8×8 inputs, batch 4) in
//! training mode: the analytic directional derivative g·v must match the central
//! difference (L(θ+εv) − L(θ−εv)) / 2ε along random directions v, for every shortcut.

mod common;

use resnet::engine::ops::softmax_cross_entropy;
use resnet::model::{CifarConfig, CifarResNet, Shortcut};
use resnet::rng::Rng;

fn loss(model: &mut CifarResNet, x: &[f32], labels: &[u8]) -> f64 {
    let n = labels.len();
    let logits = model.forward(true, n, x).to_vec();
    let mut g = vec![0f32; logits.len()];
    softmax_cross_entropy(n, 10, &logits, labels, &mut g).0 as f64
}

/// Adds `eps * v` to every parameter (v laid out in visiting order).
fn shift(model: &mut CifarResNet, v: &[f32], eps: f32) {
    let mut off = 0;
    model.for_each_param(&mut |p| {
        for x in p.value.iter_mut() {
            *x += eps * v[off];
            off += 1;
        }
    });
}

#[test]
fn whole_network_gradient_matches_finite_differences() {
    for (shortcut, residual) in [(Shortcut::A, true), (Shortcut::B, true), (Shortcut::C, true), (Shortcut::A, false)] {
        let cfg = CifarConfig { n: 1, residual, shortcut, classes: 10, image_size: 8 };
        let mut model = CifarResNet::new(cfg, 3);
        let mut rng = Rng::new(11);
        let n = 4;
        let x = common::random(&mut rng, n * model.image_len());
        let labels: Vec<u8> = (0..n).map(|_| rng.below(10) as u8).collect();
        let logits = model.forward(true, n, &x).to_vec();
        let mut dlogits = vec![0f32; logits.len()];
        softmax_cross_entropy(n, 10, &logits, &labels, &mut dlogits);
        model.backward(n, &dlogits);
        let mut grad = Vec::new();
        model.for_each_param(&mut |p| grad.extend_from_slice(&p.grad));
        for trial in 0..3 {
            // Direction: the gradient plus a random part of equal norm, scaled to unit
            // length. A purely random direction is nearly orthogonal to the gradient, so
            // its loss change drowns in float32 rounding; the random half still exposes
            // an error in any coordinate.
            let gnorm = grad.iter().map(|x| x * x).sum::<f32>().sqrt();
            let r = common::random(&mut rng, grad.len());
            let rnorm = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            let mut v: Vec<f32> = grad.iter().zip(&r).map(|(g, r)| g / gnorm + r / rnorm).collect();
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            let analytic: f64 = grad.iter().zip(&v).map(|(g, d)| *g as f64 * *d as f64).sum();
            let eps = 1e-2;
            shift(&mut model, &v, eps);
            let up = loss(&mut model, &x, &labels);
            shift(&mut model, &v, -2.0 * eps);
            let down = loss(&mut model, &x, &labels);
            shift(&mut model, &v, eps);
            let numeric = (up - down) / (2.0 * eps as f64);
            let err = (analytic - numeric).abs() / analytic.abs();
            assert!(
                err < 1e-2,
                "{shortcut:?} residual={residual} trial {trial}: analytic {analytic} numeric {numeric}"
            );
        }
    }
}
