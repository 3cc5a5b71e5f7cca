//! Finite-difference check of whole small ResNets in training mode: the analytic
//! directional derivative g·v must match the central difference
//! (L(θ+εv) − L(θ−εv)) / 2ε along random directions v. CIFAR layout (basic blocks,
//! every shortcut option, plain) and ImageNet layout (7×7 stem, max pool, bottlenecks
//! with the stride on either conv); each with the default convolution algorithms, with
//! Winograd for every 3×3 stride-1 layer, and with the direct kernel wherever it runs;
//! and with BatchNorm's statistics taken over groups of the batch (`--bn-batch`).

mod common;

use resnet::engine::ConvAlgo;
use resnet::engine::ops::softmax_cross_entropy;
use resnet::model::{Family, ModelConfig, ResNet, Shortcut, StrideAt};
use resnet::rng::Rng;

fn loss(model: &mut ResNet, hw: (usize, usize), x: &[f32], labels: &[u32]) -> f64 {
    let n = labels.len();
    let logits = model.forward(true, n, hw, x).to_vec();
    let mut g = vec![0f32; logits.len()];
    softmax_cross_entropy(n, 10, &logits, labels, &mut g).0 as f64
}

/// Adds `eps * v` to every parameter (v laid out in visiting order).
fn shift(model: &mut ResNet, v: &[f32], eps: f32) {
    let mut off = 0;
    model.for_each_param(&mut |p| {
        let mut values = p.value.to_host();
        for x in values.iter_mut() {
            *x += eps * v[off];
            off += 1;
        }
        p.value.copy_from_host(&values);
    });
}

#[test]
fn whole_network_gradient_matches_finite_differences() {
    let cifar = |shortcut, residual| ModelConfig {
        family: Family::Cifar,
        depth: 8,
        residual,
        bottleneck: false,
        stages: vec![1, 1, 1],
        stride_at: StrideAt::Conv3x3,
        shortcut,
        classes: 10,
        image_size: 8,
    };
    let imagenet = |shortcut, stride_at| ModelConfig {
        family: Family::ImageNet,
        depth: 14,
        residual: true,
        bottleneck: true,
        stages: vec![1, 1, 1, 1],
        stride_at,
        shortcut,
        classes: 10,
        image_size: 64,
    };
    let configs = [
        cifar(Shortcut::A, true),
        cifar(Shortcut::B, true),
        cifar(Shortcut::C, true),
        cifar(Shortcut::A, false),
        imagenet(Shortcut::B, StrideAt::Conv3x3),
        imagenet(Shortcut::A, StrideAt::First1x1),
    ];
    let algos = [ConvAlgo::Auto, ConvAlgo::Winograd, ConvAlgo::Direct];
    let mut runs: Vec<_> = configs.iter().flat_map(|c| algos.map(|a| (c.clone(), a, None))).collect();
    // BatchNorm over groups of 2 images, as on two GPUs.
    runs.push((configs[0].clone(), ConvAlgo::Auto, Some(2)));
    runs.push((configs[4].clone(), ConvAlgo::Auto, Some(2)));
    for (cfg, algo, group) in runs {
        let (shortcut, residual, s) = (cfg.shortcut, cfg.residual, cfg.image_size);
        let label = format!(
            "{:?} {shortcut:?} residual={residual} {:?} {algo:?} bn group {group:?}",
            cfg.family, cfg.stride_at
        );
        let mut model = ResNet::new(cfg, 3);
        model.set_conv_algo(algo);
        model.set_bn_group(group);
        let mut rng = Rng::new(11);
        let (n, hw) = (4, (s, s + 3));
        let x = common::random(&mut rng, n * hw.0 * hw.1 * 3);
        let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
        let logits = model.forward(true, n, hw, &x).to_vec();
        let mut dlogits = vec![0f32; logits.len()];
        softmax_cross_entropy(n, 10, &logits, &labels, &mut dlogits);
        model.backward(&dlogits);
        let mut grad = Vec::new();
        model.for_each_param(&mut |p| grad.extend(p.grad.to_host()));
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
            // Small enough that few ReLU/max-pool switches are crossed (their error is
            // first order in eps), large enough to stay clear of float32 rounding.
            let eps = 1e-4;
            shift(&mut model, &v, eps);
            let up = loss(&mut model, hw, &x, &labels);
            shift(&mut model, &v, -2.0 * eps);
            let down = loss(&mut model, hw, &x, &labels);
            shift(&mut model, &v, eps);
            let numeric = (up - down) / (2.0 * eps as f64);
            let err = (analytic - numeric).abs() / analytic.abs();
            assert!(err < 3e-3, "{label} trial {trial}: analytic {analytic} numeric {numeric}");
        }
    }
}
