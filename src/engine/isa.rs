//! The instruction set the kernels run on, chosen once at run time.
//!
//! The release build targets baseline x86-64, so the binary runs on any x86-64 CPU. Each
//! hot kernel wraps its body in [`simd!`](crate::simd), which compiles the body once per
//! [`Isa`] (as `#[target_feature]` copies) and runs the copy for [`isa()`]: the best set
//! the CPU has, or a lower one forced by `RESNET_ISA=avx512|avx2|portable`. The copies get
//! the wider instructions through inlining, so a kernel's helpers are `#[inline(always)]`
//! (or wrap their own bodies); a helper left out still computes the same values, only
//! with baseline instructions.

use std::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the kernels are compiled for, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline x86-64 (SSE2), or whatever the target guarantees elsewhere.
    Portable,
    /// x86-64-v3: AVX2, FMA, BMI1/2, F16C, LZCNT, MOVBE.
    Avx2,
    /// x86-64-v4: x86-64-v3 with AVX-512 F, BW, DQ and VL.
    Avx512,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Portable, Isa::Avx2, Isa::Avx512];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Parses `RESNET_ISA`'s value.
    pub fn parse(name: &str) -> Result<Isa, String> {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name().eq_ignore_ascii_case(name.trim()))
            .ok_or_else(|| format!("unknown instruction set {name:?}: expected avx512, avx2 or portable"))
    }

    /// The best set this CPU runs.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let v3 = has!("avx2")
                && has!("fma")
                && has!("bmi1")
                && has!("bmi2")
                && has!("f16c")
                && has!("lzcnt")
                && has!("movbe");
            let v4 = v3 && has!("avx512f") && has!("avx512bw") && has!("avx512dq") && has!("avx512vl");
            if v4 {
                return Isa::Avx512;
            }
            if v3 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Every set this CPU runs, lowest first.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|&isa| isa <= Isa::detected()).collect()
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// 0 until chosen, else 1 + the `Isa`'s index.
static SELECTED: AtomicU8 = AtomicU8::new(0);

/// The set the kernels run on: [`select`]'s, or on first use the environment's
/// (`RESNET_ISA`, capped at what the CPU has, with a warning where it asked for more or
/// for nothing known; see [`from_env`] for the strict reading).
#[inline]
pub fn isa() -> Isa {
    match SELECTED.load(Ordering::Relaxed) {
        0 => {
            let isa = from_env().unwrap_or_else(|e| {
                eprintln!("warning: {e}; using {}", Isa::detected());
                Isa::detected()
            });
            SELECTED.store(1 + isa as u8, Ordering::Relaxed);
            isa
        }
        n => Isa::ALL[n as usize - 1],
    }
}

/// The set `RESNET_ISA` asks for (the CPU's best when unset), or why it cannot be had.
pub fn from_env() -> Result<Isa, String> {
    let best = Isa::detected();
    match std::env::var("RESNET_ISA") {
        Err(_) => Ok(best),
        Ok(name) => {
            let wanted = Isa::parse(&name).map_err(|e| format!("RESNET_ISA: {e}"))?;
            if wanted > best {
                return Err(format!("RESNET_ISA={name}: this CPU has only {best}"));
            }
            Ok(wanted)
        }
    }
}

/// Makes the kernels run on `isa` from now on (tests compare the sets this way; the
/// command line sets `from_env`'s choice). Refuses a set the CPU lacks.
pub fn select(isa: Isa) -> Result<(), String> {
    if isa > Isa::detected() {
        return Err(format!("this CPU has only {}, not {isa}", Isa::detected()));
    }
    SELECTED.store(1 + isa as u8, Ordering::Relaxed);
    Ok(())
}

/// Runs `f` compiled for the selected set. `f` must be an `#[inline(always)]` closure,
/// or it is not compiled into the copies: [`simd!`](crate::simd) writes it so.
#[inline(always)]
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `isa()` never returns a set the CPU lacks (`select`, `from_env`).
    unsafe {
        match isa() {
            Isa::Avx512 => return avx512(f),
            Isa::Avx2 => return avx2(f),
            Isa::Portable => {}
        }
    }
    f()
}

/// Runs `f`, which computes on `simd::V8` registers, compiled for the selected set. On
/// x86-64 that must be AVX2 or AVX-512 (`simd::available`): there is no portable copy.
/// `f`'s argument says whether its copy is AVX-512's (a constant in each copy, so a
/// kernel's 16-lane branch exists only there).
#[inline(always)]
pub fn run_registers<R>(f: impl FnOnce(bool) -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: as `run`.
    unsafe {
        match isa() {
            Isa::Avx512 => avx512(
                #[inline(always)]
                || f(true),
            ),
            Isa::Avx2 => avx2(
                #[inline(always)]
                || f(false),
            ),
            Isa::Portable => unreachable!("register kernels need AVX2 (see simd::available)"),
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    f(false)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,f16c,lzcnt,movbe")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,bmi1,bmi2,f16c,lzcnt,movbe,avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// Compiles a block once per instruction set and runs the copy for the selected one
/// ([`isa::run`](crate::engine::isa::run)). The block is a closure body: `return` leaves
/// the block, not the enclosing function.
///
/// `simd!(registers { ... })` is for blocks on `simd::V8` registers: on x86-64 they are
/// compiled only for AVX2 and AVX-512 ([`isa::run_registers`](crate::engine::isa::run_registers)).
/// `simd!(registers wide => { ... })` also names a `bool`, true in the AVX-512 copy.
#[macro_export]
#[doc(hidden)]
macro_rules! simd {
    (registers $wide:ident => $body:block) => {
        $crate::engine::isa::run_registers(
            #[inline(always)]
            |$wide: bool| $body,
        )
    };
    (registers $body:block) => {
        $crate::engine::isa::run_registers(
            #[inline(always)]
            |_| $body,
        )
    };
    ($body:block) => {
        $crate::engine::isa::run(
            #[inline(always)]
            || $body,
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        assert_eq!(Isa::parse(" AVX2 "), Ok(Isa::Avx2));
        assert!(Isa::parse("sse9").unwrap_err().contains("sse9"));
    }

    #[test]
    fn the_detected_set_is_available_and_portable_always_is() {
        let available = Isa::available();
        assert_eq!(available[0], Isa::Portable);
        assert_eq!(*available.last().unwrap(), Isa::detected());
        // (Selecting one that exists would change the set under the other tests.)
        if Isa::detected() < Isa::Avx512 {
            assert!(select(Isa::Avx512).unwrap_err().contains("not avx512"));
        }
    }
}
