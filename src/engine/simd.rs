//! Eight floats in an AVX register, or, on other targets, an array the compiler
//! vectorizes as it can: the same operations, so the engine's register kernels (the
//! panel GEMM, the direct convolution, `winograd_small`) and their shared epilogue
//! ([`V8::finish`]) are written once.

use super::winograd::{LANES, Lane};

#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
mod imp {
    use std::arch::x86_64::*;
    pub type Reg = __m256;
    // SAFETY (every function): this module is compiled only where AVX2 and FMA are
    // enabled; pointers are valid for 8 floats as the callers promise.
    #[inline(always)]
    pub fn zero() -> Reg {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    pub fn splat(v: f32) -> Reg {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    pub unsafe fn read(p: *const f32) -> Reg {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    pub unsafe fn write(v: Reg, p: *mut f32) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    pub fn add(a: Reg, b: Reg) -> Reg {
        unsafe { _mm256_add_ps(a, b) }
    }
    #[inline(always)]
    pub fn sub(a: Reg, b: Reg) -> Reg {
        unsafe { _mm256_sub_ps(a, b) }
    }
    #[inline(always)]
    pub fn mul_add(a: Reg, b: Reg, c: Reg) -> Reg {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    /// max(v, 0), 0 for NaN (as `f32::max(v, 0.0)`): MAXPS returns its second operand
    /// when either is NaN.
    #[inline(always)]
    pub fn max0(v: Reg) -> Reg {
        unsafe { _mm256_max_ps(v, _mm256_setzero_ps()) }
    }
}

#[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")))]
mod imp {
    use super::LANES;
    pub type Reg = [f32; LANES];
    pub fn zero() -> Reg {
        [0.0; LANES]
    }
    pub fn splat(v: f32) -> Reg {
        [v; LANES]
    }
    pub unsafe fn read(p: *const f32) -> Reg {
        unsafe { p.cast::<Reg>().read_unaligned() }
    }
    pub unsafe fn write(v: Reg, p: *mut f32) {
        unsafe { p.cast::<Reg>().write_unaligned(v) }
    }
    pub fn add(a: Reg, b: Reg) -> Reg {
        std::array::from_fn(|i| a[i] + b[i])
    }
    pub fn sub(a: Reg, b: Reg) -> Reg {
        std::array::from_fn(|i| a[i] - b[i])
    }
    pub fn mul_add(a: Reg, b: Reg, c: Reg) -> Reg {
        std::array::from_fn(|i| a[i].mul_add(b[i], c[i]))
    }
    pub fn max0(v: Reg) -> Reg {
        v.map(|x| x.max(0.0))
    }
}

/// Asks for the cache line holding `p` ahead of its use (a hint: nothing on targets
/// without one).
#[inline(always)]
pub fn prefetch(p: *const f32) {
    // SAFETY: a prefetch never faults, whatever the address.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

#[derive(Clone, Copy)]
pub struct V8(imp::Reg);

impl V8 {
    #[inline(always)]
    pub fn zero() -> V8 {
        V8(imp::zero())
    }

    #[inline(always)]
    pub fn splat(v: f32) -> V8 {
        V8(imp::splat(v))
    }

    /// SAFETY: 8 floats from `src` on must be readable.
    #[inline(always)]
    pub unsafe fn read(src: *const f32) -> V8 {
        V8(unsafe { imp::read(src) })
    }

    /// The N vectors `src[i·step..]`. SAFETY: as `read`, for each.
    #[inline(always)]
    pub unsafe fn read_n<const N: usize>(src: *const f32, step: usize) -> [V8; N] {
        // SAFETY: the caller's.
        unsafe { std::array::from_fn(|i| V8::read(src.add(i * step))) }
    }

    /// The vectors `src[i][offset..]`. SAFETY: as `read`, for each.
    #[inline(always)]
    pub unsafe fn read_each<const N: usize>(src: [*const f32; N], offset: usize) -> [V8; N] {
        // SAFETY: the caller's.
        unsafe { src.map(|p| V8::read(p.add(offset))) }
    }

    /// SAFETY: 8 floats from `dst` on must be writable.
    #[inline(always)]
    pub unsafe fn write(self, dst: *mut f32) {
        unsafe { imp::write(self.0, dst) }
    }

    /// `self·b + c`, rounded once.
    #[inline(always)]
    pub fn mul_add(self, b: V8, c: V8) -> V8 {
        V8(imp::mul_add(self.0, b.0, c.0))
    }

    #[inline(always)]
    pub fn max0(self) -> V8 {
        V8(imp::max0(self.0))
    }

    /// A convolution's inference epilogue on 8 output channels, in registers:
    /// `relu(self·scale + shift + residual)`, with the residual and the ReLU where given.
    #[inline(always)]
    pub fn finish(self, scale: V8, shift: V8, residual: Option<V8>, relu: bool) -> V8 {
        let mut v = self.mul_add(scale, shift);
        if let Some(r) = residual {
            v = v + r;
        }
        if relu { v.max0() } else { v }
    }
}

impl std::ops::Add for V8 {
    type Output = V8;
    #[inline(always)]
    fn add(self, o: V8) -> V8 {
        V8(imp::add(self.0, o.0))
    }
}

impl std::ops::Sub for V8 {
    type Output = V8;
    #[inline(always)]
    fn sub(self, o: V8) -> V8 {
        V8(imp::sub(self.0, o.0))
    }
}

impl Lane for V8 {
    #[inline(always)]
    fn fma(k: f32, x: V8, y: V8) -> V8 {
        V8::splat(k).mul_add(x, y)
    }
}

const _: () = assert!(LANES == 8);
