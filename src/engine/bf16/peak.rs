//! The arithmetic peak of one core on a bf16 path: products on registers or tiles,
//! nothing read from memory after the start, as `engine::peak` measures f32's.

use super::Path;

/// Floating-point operations per second of one thread on `path` (2 per product), over
/// about `rounds`·1e5 instructions per chain; None for the emulated path, whose products
/// are f32's (`engine::peak`).
pub fn flops_per_thread(path: Path, rounds: usize) -> Option<f64> {
    let steps = rounds * 100_000;
    let start = std::time::Instant::now();
    let flops = match path {
        Path::Emulated => return None,
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AMX is configured for this thread while `_tiles` lives.
        Path::Amx if Path::detected() >= Path::Amx => {
            let _tiles = super::amx::Tiles::configure();
            unsafe { super::amx::peak(steps / 16) as f64 }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 BF16 (checked).
        Path::Dot if Path::detected() >= Path::Dot => unsafe { dot(steps) },
        _ => return None,
    };
    Some(flops / start.elapsed().as_secs_f64())
}

/// 24 independent chains of `vdpbf16ps` (32 registers); returns the operations done.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dot(steps: usize) -> f64 {
    use std::arch::x86_64::*;
    const CHAINS: usize = 24;
    let mut acc = [_mm512_set1_ps(1.0); CHAINS];
    // SAFETY: bit patterns of 32 small bf16s, reinterpreted.
    let (a, b): (__m512bh, __m512bh) = unsafe {
        (
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(std::hint::black_box(0x3f80_3f80))),
            std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3380_3380)),
        )
    };
    for _ in 0..steps {
        for v in &mut acc {
            *v = _mm512_dpbf16_ps(*v, a, b);
        }
    }
    let sum = acc.iter().fold(_mm512_setzero_ps(), |s, v| _mm512_add_ps(s, *v));
    std::hint::black_box(_mm512_reduce_add_ps(sum));
    // 16 lanes, 2 products each, a multiply and an add.
    (steps * CHAINS * 16 * 2 * 2) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_available_path_measures_a_rate() {
        for path in Path::available() {
            match (path, flops_per_thread(path, 1)) {
                (Path::Emulated, rate) => assert!(rate.is_none()),
                (_, Some(rate)) => assert!(rate.is_finite() && rate > 0.0, "{path}: {rate}"),
                (_, None) => panic!("{path}: no rate"),
            }
        }
    }
}
