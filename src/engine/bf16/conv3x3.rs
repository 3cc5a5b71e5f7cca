//! 3×3 stride-1 convolutions in bf16 on AMX as an implicit GEMM: no im2col.
//!
//! The input is rounded once into a zero-padded copy, `(h+2)×(w+2)` pixels per image of
//! `cp` channels (c_in rounded up to 32). Number the padded pixels of the batch v = 0, 1,
//! ... and give output pixel (img, y, x) the "virtual row" v = img·P + y·(w+2) + x (P the
//! padded image's pixels): then its input at kernel tap (ky, kx) is padded pixel
//! v + ky·(w+2) + kx, whatever the pixel. So for each tap and block of 32 channels, 16
//! consecutive virtual rows read 16 consecutive padded pixels, `cp` bf16 apart: one AMX
//! tile loaded in place. The virtual rows that are not output pixels (the last two columns
//! and rows of each image) are computed and thrown away: 2/(w+2) more work at width 32,
//! but im2col wrote and read every input value nine times, which with AMX cost far more
//! than the products (ResNet-20's bf16 inference spent 25% of its time rounding patches).
//!
//! The weights are the GEMM's B with k ordered (ky, kx, channel), channels padded to `cp`
//! with zeros; packed as `bf16::pack` packs.

use super::{Block, Path, STRIP, amx};
use crate::engine::conv::ConvShape;
use crate::engine::epilogue::Store;
use crate::engine::{SharedOut, Workspace, ensure_len, for_each_item};
use rayon::prelude::*;

/// Input channels per AMX tile step.
const CHANNELS: usize = 32;
/// The most input channels: the steps' offsets live on the stack (ResNets reach 512).
const MAX_CHANNELS: usize = 512;
/// Virtual rows per work item.
const ITEM_ROWS: usize = 128;

/// Whether the implicit GEMM computes this convolution: 3×3, stride 1, pad 1, output
/// channels in 16s, on AMX.
pub fn applies(s: &ConvShape) -> bool {
    let shape = s.kernel == 3 && s.stride == 1 && s.pad == 1 && s.c_in <= MAX_CHANNELS;
    super::path() == Path::Amx && shape && super::applies(s.c_out)
}

/// Input channels padded to whole tile steps.
fn padded(s: &ConvShape) -> usize {
    s.c_in.next_multiple_of(CHANNELS)
}

/// u16s of the packed weights.
pub fn packed_len(s: &ConvShape) -> usize {
    9 * padded(s) * s.c_out
}

/// Packs OHWI weights as B (k = 9·cp in (ky, kx, channel) order, c_out columns), in
/// `bf16::pack`'s strips of pairs, the padding channels zero.
pub fn pack_weights(s: &ConvShape, w: &[f32], out: &mut [u16]) {
    let (cp, kp) = (padded(s), 9 * padded(s));
    assert!(w.len() == s.weight_len() && out.len() >= packed_len(s));
    let out = &mut out[..kp * s.c_out];
    if cp > s.c_in {
        out.fill(0);
    }
    super::run(
        #[inline(always)]
        || {
            for (j, strip) in out.chunks_exact_mut(STRIP * kp).enumerate() {
                for col in 0..STRIP {
                    // Output channel o's weights run (tap, channel) along memory.
                    let o = j * STRIP + col;
                    for tap in 0..9 {
                        let src = &w[(o * 9 + tap) * s.c_in..][..s.c_in];
                        super::round_column(src, strip, col, tap * cp / 2);
                    }
                }
            }
        },
    )
}

/// The weights of the convolution that takes `dy` to `dx` for `s` (stride 1, so itself a
/// 3×3 stride-1 convolution: channels swapped, the kernel turned by 180°), packed as
/// [`pack_weights`] packs that convolution's, straight from `s`'s OHWI weights: its B
/// holds `w[o][2-ky][2-kx][i]` at k = (ky, kx, o), column i, so each pair-row is 16
/// channels i of two rows o of `w`, along memory. Requires [`applies`] to the flipped
/// shape (`flipped`).
pub fn pack_flipped(s: &ConvShape, w: &[f32], out: &mut [u16]) {
    let t = flipped(s);
    let (cp, kp) = (padded(&t), 9 * padded(&t));
    assert!(w.len() == s.weight_len() && out.len() >= packed_len(&t) && super::applies(t.c_out));
    let row = |o: usize, tap: usize, i: usize| &w[(o * 9 + 8 - tap) * s.c_in + i..][..STRIP];
    super::run(
        #[inline(always)]
        || {
            for (j, strip) in out[..kp * t.c_out].chunks_exact_mut(STRIP * kp).enumerate() {
                for (q, pair) in strip.chunks_exact_mut(2 * STRIP).enumerate() {
                    let (tap, o) = (2 * q / cp, 2 * q % cp);
                    match o < s.c_out {
                        true => {
                            let second = (o + 1 < s.c_out).then(|| row(o + 1, tap, j * STRIP));
                            super::round_pair_row(row(o, tap, j * STRIP), second, pair)
                        }
                        false => pair.fill(0),
                    }
                }
            }
        },
    )
}

/// The shape of the convolution that takes `dy` to `dx` for a 3×3 stride-1 `s`.
pub fn flipped(s: &ConvShape) -> ConvShape {
    ConvShape { c_in: s.c_out, c_out: s.c_in, h: s.out_h(), w: s.out_w(), ..*s }
}

/// The batch's virtual rows, for n images (see the module comment).
struct Rows {
    h: usize,
    w: usize,
    /// Padded width and pixels per padded image.
    pw: usize,
    pixels: usize,
}

impl Rows {
    fn new(s: &ConvShape) -> Rows {
        Rows { h: s.h, w: s.w, pw: s.w + 2, pixels: (s.h + 2) * (s.w + 2) }
    }

    /// The output pixels (rows of y) before virtual row v.
    fn outputs_before(&self, v: usize) -> usize {
        let (img, rem) = (v / self.pixels, v % self.pixels);
        let (y, x) = (rem / self.pw, rem % self.pw);
        img * self.h * self.w + if y >= self.h { self.h * self.w } else { y * self.w + x.min(self.w) }
    }

    /// The runs of consecutive virtual rows in `span` that compute output pixels, as
    /// (first virtual row, first row of y, length), in order.
    fn runs(&self, span: std::ops::Range<usize>, mut f: impl FnMut(usize, usize, usize)) {
        let mut v = span.start;
        while v < span.end {
            let rem = v % self.pixels;
            let (y, x) = (rem / self.pw, rem % self.pw);
            if y >= self.h {
                // The padding rows below the image: on to the next image.
                v += self.pixels - rem;
            } else if x >= self.w {
                v += self.pw - x;
            } else {
                let len = (self.w - x).min(span.end - v);
                f(v, self.outputs_before(v), len);
                v += len;
            }
        }
    }
}

/// `conv(x, w)` into `y` as `store` says, by the implicit GEMM, on the weights packed by
/// [`pack_weights`]. Requires [`applies`].
pub fn forward(
    s: &ConvShape,
    n: usize,
    x: &[f32],
    packed: &[u16],
    y: &mut [f32],
    store: Store<&[f32]>,
    ws: &mut Workspace,
) {
    assert!(applies(s) && x.len() >= n * s.in_len() && y.len() >= n * s.out_len() && packed.len() >= packed_len(s));
    let (cp, rows) = (padded(s), Rows::new(s));
    // The last output pixel's virtual row, the groups of 32 rows past it, and the taps'
    // reach past those: zeros.
    let virtual_rows = (n - 1) * rows.pixels + (s.h - 1) * rows.pw + s.w;
    let reach = virtual_rows.next_multiple_of(32) + 2 * rows.pw + 2;
    let mut buffer = std::mem::take(&mut ws.padded_bf16);
    ensure_len(&mut buffer, reach.max(n * rows.pixels) * cp);
    pad_input(s, n, x, cp, &mut buffer[..reach.max(n * rows.pixels) * cp]);
    let input = &buffer[..];
    // Where step q of k (tap, block of 32 channels) starts, from a row's padded pixel.
    let blocks = cp / CHANNELS;
    let mut offsets = [0usize; 9 * MAX_CHANNELS / CHANNELS];
    for (q, offset) in offsets[..9 * blocks].iter_mut().enumerate() {
        let (tap, block) = (q / blocks, q % blocks);
        *offset = ((tap / 3) * rows.pw + tap % 3) * cp + block * CHANNELS;
    }
    let offsets = &offsets[..9 * blocks];
    let strips = s.c_out / STRIP;
    let out = SharedOut(y.as_mut_ptr());
    let items = virtual_rows.div_ceil(ITEM_ROWS);
    for_each_item(&mut ws.threads, items, |_, item| {
        let (v0, v1) = (item * ITEM_ROWS, ((item + 1) * ITEM_ROWS).min(virtual_rows));
        let (r0, r1) = (rows.outputs_before(v0), rows.outputs_before(v1));
        if r0 == r1 {
            return;
        }
        // SAFETY: the rows r0..r1 of y are this item's alone (virtual rows map to output
        // rows in order, and items' virtual rows are disjoint).
        let c = unsafe { std::slice::from_raw_parts_mut(out.base().add(r0 * s.c_out), (r1 - r0) * s.c_out) };
        let block = Block { c, ldc: s.c_out, m: r1 - r0, first_row: r0, store };
        let _tiles = amx::Tiles::configure();
        // SAFETY: AMX is configured; AVX-512 is present on the AMX path.
        unsafe { item_avx512(block, &rows, v0..v1, input, cp, offsets, packed, strips) };
    });
    ws.padded_bf16 = buffer;
}

/// One work item's virtual rows `span`, 32 at a time, over every pair of strips.
#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")]
#[allow(clippy::too_many_arguments)]
unsafe fn item_avx512(
    mut block: Block,
    rows: &Rows,
    span: std::ops::Range<usize>,
    input: &[u16],
    cp: usize,
    offsets: &[usize],
    packed: &[u16],
    strips: usize,
) {
    let kp = 9 * cp;
    let mut values = [0f32; 32 * 32];
    for g in span.clone().step_by(32) {
        // Each group reads virtual rows g..g+32 at every tap: inside `input` (`reach`).
        let base = input[g * cp..].as_ptr();
        for j in (0..strips).step_by(2) {
            let pair = (strips - j).min(2);
            let b0 = packed[j * STRIP * kp..].as_ptr();
            let b1 = if pair == 2 { packed[(j + 1) * STRIP * kp..].as_ptr() } else { std::ptr::null() };
            // SAFETY: A's tiles read virtual rows g..g+32 plus a tap's offset, inside
            // `input` (its length covers the groups past the last row and the reach of
            // the taps); B's 9·cp/32 steps lie inside each strip.
            unsafe {
                amx::tiles(|q| base.add(offsets[q]), offsets.len(), 2 * cp, (16 * cp) as isize, b0, b1, &mut values)
            };
            rows.runs(g..(g + 32).min(span.end), |v, row, len| {
                block.store(&values[(v - g) * 32..], 32, row - block.first_row, len, j, pair)
            });
        }
    }
}

/// Rounds the batch into `out` as zero-padded images of `cp` channels (and zeros after).
fn pad_input(s: &ConvShape, n: usize, x: &[f32], cp: usize, out: &mut [u16]) {
    let (pw, pixels) = (s.w + 2, (s.h + 2) * (s.w + 2));
    let (images, after) = out.split_at_mut(n * pixels * cp);
    after.fill(0);
    images.par_chunks_mut(pixels * cp).enumerate().for_each(|(img, dst)| {
        let src = &x[img * s.in_len()..][..s.in_len()];
        super::run(
            #[inline(always)]
            || {
                for (py, row) in dst.chunks_exact_mut(pw * cp).enumerate() {
                    if py == 0 || py > s.h {
                        row.fill(0);
                        continue;
                    }
                    let (left, rest) = row.split_at_mut(cp);
                    let (inside, right) = rest.split_at_mut(s.w * cp);
                    left.fill(0);
                    right.fill(0);
                    let src = &src[(py - 1) * s.w * s.c_in..][..s.w * s.c_in];
                    if cp == s.c_in {
                        super::round_row(src, inside);
                        continue;
                    }
                    for (pixel, values) in inside.chunks_exact_mut(cp).zip(src.chunks_exact(s.c_in)) {
                        let (rounded, padding) = pixel.split_at_mut(s.c_in);
                        super::round_row(values, rounded);
                        padding.fill(0);
                    }
                }
            },
        )
    });
}
