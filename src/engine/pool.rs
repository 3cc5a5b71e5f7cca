//! Pooling, NHWC: the stem's max pool (ImageNet networks) and the global average pool
//! before the classifier.

use rayon::prelude::*;

/// Geometry of a square max pool with symmetric implicit padding (padding never wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolShape {
    pub c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub h: usize,
    pub w: usize,
}

impl PoolShape {
    pub fn out_h(&self) -> usize {
        (self.h + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn out_w(&self) -> usize {
        (self.w + 2 * self.pad - self.kernel) / self.stride + 1
    }
    pub fn in_len(&self) -> usize {
        self.h * self.w * self.c
    }
    pub fn out_len(&self) -> usize {
        self.out_h() * self.out_w() * self.c
    }
}

/// Max pool forward. `argmax` (same length as `y`) receives, for each output, the index of
/// the winning input element within its image, which is all the backward pass needs.
pub fn maxpool_forward(s: &PoolShape, n: usize, x: &[f32], y: &mut [f32], argmax: &mut [u32]) {
    let (oh, ow, c) = (s.out_h(), s.out_w(), s.c);
    y[..n * s.out_len()]
        .par_chunks_mut(s.out_len())
        .zip(argmax[..n * s.out_len()].par_chunks_mut(s.out_len()))
        .enumerate()
        .for_each(|(img, (yi, ai))| {
            let xi = &x[img * s.in_len()..(img + 1) * s.in_len()];
            for oy in 0..oh {
                for ox in 0..ow {
                    let dst = (oy * ow + ox) * c;
                    let (yv, av) = (&mut yi[dst..dst + c], &mut ai[dst..dst + c]);
                    yv.fill(f32::NEG_INFINITY);
                    av.fill(u32::MAX);
                    // A window always holds at least one real pixel (pad < kernel), so every
                    // output gets a real argmax. `>` keeps the first maximum and a NaN wins and
                    // sticks, as in PyTorch.
                    for ky in 0..s.kernel {
                        let iy = (oy * s.stride + ky) as isize - s.pad as isize;
                        if iy < 0 || iy >= s.h as isize {
                            continue;
                        }
                        for kx in 0..s.kernel {
                            let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                            if ix < 0 || ix >= s.w as isize {
                                continue;
                            }
                            let src = (iy as usize * s.w + ix as usize) * c;
                            for (j, &v) in xi[src..src + c].iter().enumerate() {
                                if av[j] == u32::MAX || v > yv[j] || v.is_nan() {
                                    yv[j] = v;
                                    av[j] = (src + j) as u32;
                                }
                            }
                        }
                    }
                }
            }
        });
}

/// Max pool forward for inference: the same maxima (NaN sticks, as in PyTorch), without
/// the argmax bookkeeping. ResNet-50's pool at batch 16: 18 ms where `maxpool_forward`
/// took 37–62 (2.7% of the inference). Parallel over output rows, so that one image
/// uses every core.
pub fn maxpool_eval(s: &PoolShape, n: usize, x: &[f32], y: &mut [f32]) {
    let (oh, ow, c) = (s.out_h(), s.out_w(), s.c);
    y[..n * s.out_len()].par_chunks_mut(ow * c).enumerate().for_each(|(row, yr)| {
        let (img, oy) = (row / oh, row % oh);
        let xi = &x[img * s.in_len()..(img + 1) * s.in_len()];
        yr.fill(f32::NEG_INFINITY);
        for ky in 0..s.kernel {
            let iy = (oy * s.stride + ky) as isize - s.pad as isize;
            if iy < 0 || iy >= s.h as isize {
                continue;
            }
            for (ox, yv) in yr.chunks_exact_mut(c).enumerate() {
                for kx in 0..s.kernel {
                    let ix = (ox * s.stride + kx) as isize - s.pad as isize;
                    if ix < 0 || ix >= s.w as isize {
                        continue;
                    }
                    let src = &xi[(iy as usize * s.w + ix as usize) * c..][..c];
                    for (m, &v) in yv.iter_mut().zip(src) {
                        *m = if v > *m || v.is_nan() { v } else { *m };
                    }
                }
            }
        }
    });
}

/// Max pool backward: routes each output gradient to its winning input; overwrites `dx`.
pub fn maxpool_backward(s: &PoolShape, n: usize, g: &[f32], argmax: &[u32], dx: &mut [f32]) {
    dx[..n * s.in_len()].par_chunks_mut(s.in_len()).enumerate().for_each(|(img, dxi)| {
        dxi.fill(0.0);
        let range = img * s.out_len()..(img + 1) * s.out_len();
        for (&gv, &a) in g[range.clone()].iter().zip(&argmax[range]) {
            dxi[a as usize] += gv;
        }
    });
}

/// Global average pool: `[n, pixels, c]` to `[n, c]`.
pub fn avgpool_forward(n: usize, pixels: usize, c: usize, x: &[f32], y: &mut [f32]) {
    y[..n * c].par_chunks_mut(c).enumerate().for_each(|(img, yi)| {
        yi.fill(0.0);
        for p in x[img * pixels * c..(img + 1) * pixels * c].chunks_exact(c) {
            for (a, b) in yi.iter_mut().zip(p) {
                *a += b;
            }
        }
        let inv = 1.0 / pixels as f32;
        yi.iter_mut().for_each(|v| *v *= inv);
    });
}

/// Backward of the global average pool; overwrites `dx`.
pub fn avgpool_backward(n: usize, pixels: usize, c: usize, g: &[f32], dx: &mut [f32]) {
    let inv = 1.0 / pixels as f32;
    dx[..n * pixels * c].par_chunks_mut(pixels * c).enumerate().for_each(|(img, dxi)| {
        let gi = &g[img * c..(img + 1) * c];
        for p in dxi.chunks_exact_mut(c) {
            for (d, gv) in p.iter_mut().zip(gi) {
                *d = gv * inv;
            }
        }
    });
}
