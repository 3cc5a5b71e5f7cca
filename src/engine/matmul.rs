//! Single-threaded matrix product through the `gemm` crate (SIMD microkernels with
//! runtime CPU detection). Threading happens one level up, over the batch.

/// A strided read-only matrix view: element (i, j) is `data[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Row-major matrix with `cols` columns.
    pub fn rows(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: cols, cs: 1 }
    }
    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(data: &'a [f32], cols: usize) -> Self {
        Mat { data, rs: 1, cs: cols }
    }
    fn fits(&self, r: usize, c: usize) -> bool {
        r == 0 || c == 0 || (r - 1) * self.rs + (c - 1) * self.cs < self.data.len()
    }
}

/// `dst[m×n] (row-major, row stride dst_rs) = (accumulate ? dst : 0) + a[m×k] · b[k×n]`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(dst: &mut [f32], dst_rs: usize, m: usize, n: usize, k: usize, a: Mat, b: Mat, accumulate: bool) {
    assert!(a.fits(m, k) && b.fits(k, n), "matmul operand out of bounds");
    assert!(m == 0 || n == 0 || (m - 1) * dst_rs + n <= dst.len(), "matmul destination out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                dst[r * dst_rs..r * dst_rs + n].fill(0.0);
            }
        }
        return;
    }
    // SAFETY: all three views were bounds-checked above for the given m, n, k and strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
