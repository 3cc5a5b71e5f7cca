//! The arithmetic peak of one core on each instruction set: independent multiply-adds on
//! registers, nothing read from memory. `resnet bench` sets a network's rate beside it.

use super::isa::Isa;

/// Multiply-add chains in flight: enough to cover the latency (4 cycles) of two FMA units,
/// and few enough to stay in registers (16 on SSE and AVX2: 24 chains there spilled and
/// measured AVX2 at 0.4× AVX-512 instead of 0.5×).
const CHAINS: usize = 12;
/// AVX-512 has 32 registers.
const WIDE_CHAINS: usize = 24;

/// Floating-point operations per second of one thread on `isa`, over about `rounds`·1e5
/// steps of every chain (2 per multiply-add and lane).
pub fn flops_per_thread(isa: Isa, rounds: usize) -> f64 {
    let steps = rounds * 100_000;
    let start = std::time::Instant::now();
    // SAFETY (the x86 functions): each runs only where the CPU has its set (checked here).
    let (lanes, chains, checksum) = match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if Isa::detected() >= Isa::Avx512 => (16, WIDE_CHAINS, unsafe { x86::avx512(steps) }),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 if Isa::detected() >= Isa::Avx2 => (8, CHAINS, unsafe { x86::avx2(steps) }),
        _ => (4, CHAINS, portable(steps)),
    };
    let seconds = start.elapsed().as_secs_f64();
    std::hint::black_box(checksum);
    (2 * lanes * chains * steps) as f64 / seconds
}

/// Four lanes of SSE2 (baseline x86-64), multiply then add: baseline x86-64 has no FMA.
#[cfg(target_arch = "x86_64")]
fn portable(steps: usize) -> f32 {
    use std::arch::x86_64::*;
    // SAFETY: SSE2 is part of every x86-64 CPU; `out` holds 4 floats.
    unsafe {
        let mut acc = [_mm_set1_ps(1.0); CHAINS];
        let (m, a) = (_mm_set1_ps(std::hint::black_box(0.999_999)), _mm_set1_ps(1e-6));
        for _ in 0..steps {
            for v in &mut acc {
                *v = _mm_add_ps(_mm_mul_ps(*v, m), a);
            }
        }
        let mut out = [0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), acc.iter().fold(_mm_setzero_ps(), |s, v| _mm_add_ps(s, *v)));
        out.iter().sum()
    }
}

/// Four lanes as arrays elsewhere, for the compiler to vectorize as it can.
#[cfg(not(target_arch = "x86_64"))]
fn portable(steps: usize) -> f32 {
    let mut acc = [[1.0f32; 4]; CHAINS];
    let (m, a) = (std::hint::black_box(0.999_999), std::hint::black_box(1e-6));
    for _ in 0..steps {
        for chain in &mut acc {
            for v in chain.iter_mut() {
                *v = *v * m + a;
            }
        }
    }
    acc.iter().flatten().sum()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CHAINS, WIDE_CHAINS};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2(steps: usize) -> f32 {
        let mut acc = [_mm256_set1_ps(1.0); CHAINS];
        let (m, a) = (_mm256_set1_ps(std::hint::black_box(0.999_999)), _mm256_set1_ps(1e-6));
        for _ in 0..steps {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, m, a);
            }
        }
        let mut out = [0f32; 8];
        let sum = acc.iter().fold(_mm256_setzero_ps(), |s, v| _mm256_add_ps(s, *v));
        // SAFETY: `out` holds 8 floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr(), sum) };
        out.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn avx512(steps: usize) -> f32 {
        let mut acc = [_mm512_set1_ps(1.0); WIDE_CHAINS];
        let (m, a) = (_mm512_set1_ps(std::hint::black_box(0.999_999)), _mm512_set1_ps(1e-6));
        for _ in 0..steps {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, m, a);
            }
        }
        let sum = acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
        _mm512_reduce_add_ps(sum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_set_measures_a_rate() {
        for isa in Isa::available() {
            let rate = flops_per_thread(isa, 1);
            assert!(rate.is_finite() && rate > 0.0, "{isa}: {rate}");
        }
    }
}
