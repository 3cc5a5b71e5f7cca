//! SGD with momentum and weight decay, PyTorch's formulation:
//! `d = g + wd·p;  buf = μ·buf + d;  p -= lr·buf` (buf starts at zero, so the first
//! step's buffer equals `d`, as PyTorch's clone on first use).

use rayon::prelude::*;

#[derive(Clone, Copy, Debug)]
pub struct SgdConfig {
    pub lr: f32,
    pub momentum: f32,
    pub weight_decay: f32,
}

pub fn step(cfg: SgdConfig, param: &mut [f32], grad: &[f32], buf: &mut [f32]) {
    let update = |(p, (g, b)): (&mut f32, (&f32, &mut f32))| {
        let d = g + cfg.weight_decay * *p;
        *b = cfg.momentum * *b + d;
        *p -= cfg.lr * *b;
    };
    if param.len() >= 1 << 15 {
        param.par_iter_mut().zip(grad.par_iter().zip(buf.par_iter_mut())).for_each(update);
    } else {
        param.iter_mut().zip(grad.iter().zip(buf.iter_mut())).for_each(update);
    }
}
