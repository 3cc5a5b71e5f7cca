//! Eight floats in an AVX register, or, on other targets, an array the compiler
//! vectorizes as it can: the same operations, so the engine's register kernels (the
//! panel GEMM, the direct convolution, `winograd_small`) and their shared epilogue
//! ([`V8::finish`]) are written once.
//!
//! On x86-64 these are AVX instructions whatever the build targets: the kernels that use
//! them run only where [`available`] says so, inside `simd!` copies compiled for AVX2 or
//! AVX-512 (elsewhere the engine takes im2col and the `gemm` crate).

use super::winograd::{LANES, Lane};

#[cfg(target_arch = "x86_64")]
mod imp {
    use std::arch::x86_64::*;
    pub type Reg = __m256;
    // SAFETY (every function): these run only inside `simd!` copies for AVX2 or
    // AVX-512 (`available` keeps the kernels that use them off other CPUs); pointers
    // are valid for 8 floats as the callers promise.
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

#[cfg(not(target_arch = "x86_64"))]
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

/// Whether the register kernels may run: on x86-64, where the selected instruction set
/// has AVX2; elsewhere always (on arrays).
#[inline]
pub fn available() -> bool {
    !cfg!(target_arch = "x86_64") || super::isa::isa() >= super::isa::Isa::Avx2
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

/// A register of channels as the Winograd transforms read, combine and write them: [`V8`]
/// on AVX2, [`V16`] in AVX-512's copies, so one transform is written for both widths.
pub(super) trait Reg: Lane {
    /// Floats per register.
    const WIDTH: usize;
    fn zero() -> Self;
    /// SAFETY: `WIDTH` floats from `src` on must be readable.
    unsafe fn read(src: *const f32) -> Self;
    /// SAFETY: `WIDTH` floats from `dst` on must be writable.
    unsafe fn write(self, dst: *mut f32);
    /// [`V8::finish`].
    fn finish(self, scale: Self, shift: Self, residual: Option<Self>, relu: bool) -> Self;

    /// The N registers `src[i·step..]`. SAFETY: as `read`, for each.
    #[inline(always)]
    unsafe fn read_n<const N: usize>(src: *const f32, step: usize) -> [Self; N] {
        // SAFETY: the caller's.
        unsafe { std::array::from_fn(|i| Self::read(src.add(i * step))) }
    }

    /// The registers `src[i][offset..]`. SAFETY: as `read`, for each.
    #[inline(always)]
    unsafe fn read_each<const N: usize>(src: [*const f32; N], offset: usize) -> [Self; N] {
        // SAFETY: the caller's.
        unsafe { src.map(|p| Self::read(p.add(offset))) }
    }
}

impl Reg for V8 {
    const WIDTH: usize = LANES;
    #[inline(always)]
    fn zero() -> V8 {
        V8::zero()
    }
    #[inline(always)]
    unsafe fn read(src: *const f32) -> V8 {
        // SAFETY: the caller's.
        unsafe { V8::read(src) }
    }
    #[inline(always)]
    unsafe fn write(self, dst: *mut f32) {
        // SAFETY: the caller's.
        unsafe { V8::write(self, dst) }
    }
    #[inline(always)]
    fn finish(self, scale: V8, shift: V8, residual: Option<V8>, relu: bool) -> V8 {
        V8::finish(self, scale, shift, residual, relu)
    }
}

/// Sixteen floats in an AVX-512 register, for the kernels' 16-lane copies (`simd!`'s
/// `wide` flag): the operations of [`V8`] that they use, with the same rounding, so a
/// kernel gives the same bits on either width.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
pub struct V16(std::arch::x86_64::__m512);

// SAFETY (every method): these run only inside `simd!`'s AVX-512 copies (`wide`);
// pointers are valid for 16 floats as the callers promise.
#[cfg(target_arch = "x86_64")]
impl V16 {
    #[inline(always)]
    pub fn zero() -> V16 {
        V16(unsafe { std::arch::x86_64::_mm512_setzero_ps() })
    }

    #[inline(always)]
    pub fn splat(v: f32) -> V16 {
        V16(unsafe { std::arch::x86_64::_mm512_set1_ps(v) })
    }

    /// SAFETY: 16 floats from `src` on must be readable.
    #[inline(always)]
    pub unsafe fn read(src: *const f32) -> V16 {
        V16(unsafe { std::arch::x86_64::_mm512_loadu_ps(src) })
    }

    /// SAFETY: 16 floats from `dst` on must be writable.
    #[inline(always)]
    pub unsafe fn write(self, dst: *mut f32) {
        unsafe { std::arch::x86_64::_mm512_storeu_ps(dst, self.0) }
    }

    /// `self·b + c`, rounded once.
    #[inline(always)]
    pub fn mul_add(self, b: V16, c: V16) -> V16 {
        V16(unsafe { std::arch::x86_64::_mm512_fmadd_ps(self.0, b.0, c.0) })
    }

    /// [`V8::finish`] on 16 channels.
    #[inline(always)]
    pub fn finish(self, scale: V16, shift: V16, residual: Option<V16>, relu: bool) -> V16 {
        use std::arch::x86_64::*;
        let mut v = self.mul_add(scale, shift);
        if let Some(r) = residual {
            v = v + r;
        }
        if relu { V16(unsafe { _mm512_max_ps(v.0, _mm512_setzero_ps()) }) } else { v }
    }
}

#[cfg(target_arch = "x86_64")]
impl std::ops::Add for V16 {
    type Output = V16;
    #[inline(always)]
    fn add(self, o: V16) -> V16 {
        V16(unsafe { std::arch::x86_64::_mm512_add_ps(self.0, o.0) })
    }
}

#[cfg(target_arch = "x86_64")]
impl std::ops::Sub for V16 {
    type Output = V16;
    #[inline(always)]
    fn sub(self, o: V16) -> V16 {
        V16(unsafe { std::arch::x86_64::_mm512_sub_ps(self.0, o.0) })
    }
}

#[cfg(target_arch = "x86_64")]
impl Lane for V16 {
    #[inline(always)]
    fn fma(k: f32, x: V16, y: V16) -> V16 {
        V16::splat(k).mul_add(x, y)
    }
}

#[cfg(target_arch = "x86_64")]
impl Reg for V16 {
    const WIDTH: usize = 16;
    #[inline(always)]
    fn zero() -> V16 {
        V16::zero()
    }
    #[inline(always)]
    unsafe fn read(src: *const f32) -> V16 {
        // SAFETY: the caller's.
        unsafe { V16::read(src) }
    }
    #[inline(always)]
    unsafe fn write(self, dst: *mut f32) {
        // SAFETY: the caller's.
        unsafe { V16::write(self, dst) }
    }
    #[inline(always)]
    fn finish(self, scale: V16, shift: V16, residual: Option<V16>, relu: bool) -> V16 {
        V16::finish(self, scale, shift, residual, relu)
    }
}
