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
    const CHUNK: usize = 1 << 14;
    let update = |p: &mut [f32], g: &[f32], b: &mut [f32]| {
        crate::simd!({
            for (p, (g, b)) in p.iter_mut().zip(g.iter().zip(b.iter_mut())) {
                let d = g + cfg.weight_decay * *p;
                *b = cfg.momentum * *b + d;
                *p -= cfg.lr * *b;
            }
        })
    };
    let (grad, buf) = (&grad[..param.len()], &mut buf[..param.len()]);
    if param.len() >= 2 * CHUNK {
        (param.par_chunks_mut(CHUNK).zip(grad.par_chunks(CHUNK)).zip(buf.par_chunks_mut(CHUNK)))
            .for_each(|((p, g), b)| update(p, g, b));
    } else {
        update(param, grad, buf);
    }
}
