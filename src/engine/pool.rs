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

    /// The input rows (or columns), of `size`, that the window of output row (or column)
    /// `o` covers inside the image.
    fn window(&self, o: usize, size: usize) -> std::ops::Range<usize> {
        let start = o * self.stride;
        let lo = start.max(self.pad) - self.pad;
        let hi = (start + self.kernel).min(size + self.pad) - self.pad;
        lo..hi.max(lo)
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
            crate::simd!({
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
            })
        });
}

/// Max pool forward for inference: the same maxima (NaN sticks, as in PyTorch), without
/// the argmax bookkeeping. Parallel over output rows, so that one image uses every core.
/// Each output pixel's maxima are kept in registers, 8 channels at a time, over its
/// window: updated in place in the output, they compiled to masked stores, which AMD's
/// cores run slowly. ResNet-50's pool at batch 16: 3.4–3.8 ms, against 10.4–13.2 that way
/// and 37–62 with `maxpool_forward`'s argmax.
pub fn maxpool_eval(s: &PoolShape, n: usize, x: &[f32], y: &mut [f32]) {
    let (oh, ow, c) = (s.out_h(), s.out_w(), s.c);
    y[..n * s.out_len()].par_chunks_mut(ow * c).enumerate().for_each(|(row, yr)| {
        crate::simd!({
            let (img, oy) = (row / oh, row % oh);
            let xi = &x[img * s.in_len()..(img + 1) * s.in_len()];
            let rows = s.window(oy, s.h);
            for (ox, yv) in yr.chunks_exact_mut(c).enumerate() {
                let cols = s.window(ox, s.w);
                let (lanes, rest) = yv.as_chunks_mut::<8>();
                for (l, m) in lanes.iter_mut().enumerate() {
                    *m = [f32::NEG_INFINITY; 8];
                    for iy in rows.clone() {
                        for ix in cols.clone() {
                            let at = (iy * s.w + ix) * c + 8 * l;
                            let v: &[f32; 8] = xi[at..].first_chunk().expect("inside the image");
                            *m = std::array::from_fn(|j| max_nan(m[j], v[j]));
                        }
                    }
                }
                let c0 = c - rest.len();
                rest.fill(f32::NEG_INFINITY);
                for iy in rows.clone() {
                    for ix in cols.clone() {
                        let at = (iy * s.w + ix) * c + c0;
                        rest.iter_mut().zip(&xi[at..]).for_each(|(m, &v)| *m = max_nan(*m, v));
                    }
                }
            }
        })
    });
}

/// The larger of `m` and `v`, NaN if either is (a NaN wins and sticks, as in PyTorch).
#[inline(always)]
fn max_nan(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() { v } else { m }
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
        crate::simd!({
            yi.fill(0.0);
            for p in x[img * pixels * c..(img + 1) * pixels * c].chunks_exact(c) {
                for (a, b) in yi.iter_mut().zip(p) {
                    *a += b;
                }
            }
            let inv = 1.0 / pixels as f32;
            yi.iter_mut().for_each(|v| *v *= inv);
        })
    });
}

/// Backward of the global average pool; overwrites `dx`.
pub fn avgpool_backward(n: usize, pixels: usize, c: usize, g: &[f32], dx: &mut [f32]) {
    let inv = 1.0 / pixels as f32;
    dx[..n * pixels * c].par_chunks_mut(pixels * c).enumerate().for_each(|(img, dxi)| {
        crate::simd!({
            let gi = &g[img * c..(img + 1) * c];
            for p in dxi.chunks_exact_mut(c) {
                for (d, gv) in p.iter_mut().zip(gi) {
                    *d = gv * inv;
                }
            }
        })
    });
}
