//! BatchNorm over groups of a batch (`--bn-batch`, as on the paper's GPUs). Checked
//! against separate runs on each group: the logits of each group and the running averages
//! (those of the first group alone), and a whole SGD step against the same batch computed
//! as micro-batches (`--accumulate`), a separate code path that runs each group forward and
//! backward on its own and averages the gradients. The gradients themselves are checked by
//! finite differences in `gradcheck.rs`.

mod common;

use resnet::engine::sgd::SgdConfig;
use resnet::model::{ModelConfig, ResNet};
use resnet::nn::Slot;
use resnet::rng::Rng;
use resnet::train::{StepScratch, step};

const HW: (usize, usize) = (32, 32);
const IMAGE: usize = 32 * 32 * 3;

fn model(group: Option<usize>) -> ResNet {
    let mut m = ResNet::new(ModelConfig::from_name("resnet8", None, 10).unwrap(), 5);
    m.set_bn_group(group);
    m
}

/// Every parameter, then every running average, in visiting order.
fn state(m: &mut ResNet) -> (Vec<f32>, Vec<f32>) {
    let (mut params, mut running) = (Vec::new(), Vec::new());
    for t in m.named() {
        match t.slot {
            Slot::Param(_) => params.extend(t.to_host()),
            _ => running.extend(t.to_host()),
        }
    }
    (params, running)
}

#[test]
fn groups_are_normalized_as_separate_batches() {
    let mut rng = Rng::new(21);
    let n = 7; // groups of 4 and 3 images
    let x = common::random(&mut rng, n * IMAGE);
    let mut split = model(Some(4));
    let logits = split.forward(true, n, HW, &x).to_vec();
    let mut first = model(None);
    let first_logits = first.forward(true, 4, HW, &x[..4 * IMAGE]).to_vec();
    let mut second = model(None);
    let second_logits = second.forward(true, 3, HW, &x[4 * IMAGE..]).to_vec();
    let err = common::rel_err32(&logits, &[first_logits, second_logits].concat());
    assert!(err < 1e-5, "logits of the groups: {err}");
    // Against the whole batch normalized at once, the logits differ.
    let mut whole = model(None);
    let whole_logits = whole.forward(true, n, HW, &x).to_vec();
    assert!(common::rel_err32(&logits, &whole_logits) > 1e-2);
    // The running averages are the first group's.
    let (running, first_running) = (state(&mut split).1, state(&mut first).1);
    assert!(common::rel_err32(&running, &first_running) < 1e-5);
    assert!(common::rel_err32(&running, &state(&mut second).1) > 1e-3);
}

#[test]
fn a_step_in_two_groups_matches_two_micro_batches() {
    let mut rng = Rng::new(22);
    let n = 7;
    let x = common::random(&mut rng, n * IMAGE);
    let labels: Vec<u32> = (0..n).map(|_| rng.below(10) as u32).collect();
    let sgd = SgdConfig { lr: 0.1, momentum: 0.9, weight_decay: 1e-4 };
    let (mut split, mut micro) = (model(Some(4)), model(None));
    let (mut s1, mut s2) = (StepScratch::default(), StepScratch::default());
    for _ in 0..3 {
        let (loss_split, _) = step(&mut split, HW, &x, &labels, 1, sgd, &mut s1);
        let (loss_micro, _) = step(&mut micro, HW, &x, &labels, 2, sgd, &mut s2);
        assert!((loss_split - loss_micro).abs() < 1e-5 * loss_micro.abs(), "{loss_split} vs {loss_micro}");
    }
    let err = common::rel_err32(&state(&mut split).0, &state(&mut micro).0);
    assert!(err < 1e-5, "parameters after 3 steps: {err}");
    // Normalizing the whole batch at once takes the parameters elsewhere.
    let mut whole = model(None);
    let mut s3 = StepScratch::default();
    for _ in 0..3 {
        step(&mut whole, HW, &x, &labels, 1, sgd, &mut s3);
    }
    assert!(common::rel_err32(&state(&mut whole).0, &state(&mut micro).0) > 1e-4);
}
