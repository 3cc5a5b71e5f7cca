//! The bf16 product on AMX: C in 16×16 f32 tiles, two rows × two columns of them
//! (32 rows × 2 strips) per pass, each step of 32 along k one `tdpbf16ps` per tile.
//!
//! Rust has no stable AMX intrinsics, so the tile instructions are inline assembly. The
//! compiler never uses the tile registers itself, so they may hold values between
//! `asm!` blocks: the accumulators live in tmm0–3, A's two tiles in tmm4–5, B's in
//! tmm6–7. Linux hands a process the tile state only on request (`arch_prctl`,
//! [`usable`]), and each thread loads the tiles' shapes before use ([`Tiles`]).

use super::{Block, RoundedRows, STRIP};
use std::arch::asm;

/// Whether the CPU has AMX with bf16 and the operating system lets this process use it
/// (asked once).
pub(super) fn usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let edx = std::arch::x86_64::__cpuid_count(7, 0).edx;
        edx & (1 << 22) != 0 && edx & (1 << 24) != 0 && request_tile_data()
    })
}

/// Asks Linux for the right to use the tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`); false where it refuses, or elsewhere.
fn request_tile_data() -> bool {
    #[cfg(target_os = "linux")]
    {
        const SYS_ARCH_PRCTL: i64 = 158;
        const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
        const XFEATURE_XTILEDATA: i64 = 18;
        let ret: i64;
        // SAFETY: arch_prctl with these arguments only changes the process's permissions;
        // the syscall clobbers rcx and r11 and touches no memory of ours.
        unsafe {
            asm!("syscall", inlateout("rax") SYS_ARCH_PRCTL => ret, in("rdi") ARCH_REQ_XCOMP_PERM,
                 in("rsi") XFEATURE_XTILEDATA, lateout("rcx") _, lateout("r11") _, options(nostack));
        }
        ret == 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// The calling thread's tiles configured for the kernel (eight tiles of 16 rows of 64
/// bytes) while this lives; released after, so that the thread's switches do not save
/// them.
pub(super) struct Tiles(());

impl Tiles {
    pub(super) fn configure() -> Tiles {
        #[repr(C, align(64))]
        struct Config([u8; 64]);
        let mut config = Config([0; 64]);
        config.0[0] = 1; // palette 1
        for tile in 0..8 {
            config.0[16 + 2 * tile] = 64; // bytes per row
            config.0[48 + tile] = 16; // rows
        }
        assert!(usable(), "AMX tiles configured on a CPU or system without them");
        // SAFETY: AMX is usable (above); the configuration is valid for palette 1.
        unsafe { asm!("ldtilecfg [{}]", in(reg) config.0.as_ptr(), options(nostack, readonly)) };
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: the tiles were configured by `configure`.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}

/// C's block: A's rows (a multiple of 16 rows), B's packed strips. Runs while a
/// [`Tiles`] lives on this thread.
pub(super) fn product(block: Block, a: RoundedRows, b: &[u16]) {
    let rows = block.m.next_multiple_of(16);
    assert!(a.a.len() >= rows * a.kp && a.kp.is_multiple_of(super::K_STEP));
    // SAFETY: AMX is configured (caller) and AVX-512 present (the path is AMX only on an
    // AVX-512 kernel set); sizes checked above and by `bf16::product`.
    unsafe { product_avx512(block, a, b) }
}

#[target_feature(enable = "avx2,fma,avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn product_avx512(mut block: Block, a: RoundedRows, b: &[u16]) {
    let RoundedRows { a, kp } = a;
    let strips = b.len() / (STRIP * kp);
    let groups = block.m.div_ceil(16);
    // Tiles of C, stored as 32 rows of 32 floats.
    let mut values = [0f32; 32 * 32];
    let a_stride = 2 * kp;
    let mut g = 0;
    while g < groups {
        let two_rows = g + 1 < groups;
        let a0 = a[g * 16 * kp..].as_ptr();
        let a1 = if two_rows { a[(g + 1) * 16 * kp..].as_ptr() } else { a0 };
        for j in (0..strips).step_by(2) {
            let pair = (strips - j).min(2);
            let b0 = b[j * STRIP * kp..].as_ptr();
            let b1 = if pair == 2 { b[(j + 1) * STRIP * kp..].as_ptr() } else { std::ptr::null() };
            // SAFETY: each step reads A's tiles at k 32q (16 rows of 64 bytes, a_stride
            // apart, inside the rows), B's at pair-row 16q (1 KB inside the strip), and
            // the stores write the 32×32 floats of `values`.
            unsafe { tiles(|q| a0.add(32 * q), kp / super::K_STEP, a_stride, a1.offset_from(a0), b0, b1, &mut values) };
            let rows = if two_rows { 32 } else { 16 };
            block.store(&values, 32, g * 16, rows, j, pair);
        }
        g += if two_rows { 2 } else { 1 };
    }
}

/// The tiles of 32 rows × 2 strips of C: for each of the `steps` steps q of 32 along k,
/// A's rows 0–15 at `a_at(q)` and 16–31 `second` u16 further on, `a_stride` bytes apart,
/// and B's pair-rows at `b0`/`b1` + 512q (`b1` null: one strip, half the work). Stores C
/// as 32 rows of 32 floats in `values` (of 16 columns for one strip).
/// `a_at` makes the same kernel the GEMM's (A's rows in a block) and `conv3x3`'s
/// implicit GEMM (the padded input read in place).
///
/// # Safety
/// Tiles configured on this thread ([`Tiles`]); every A row read (16 rows of 64 bytes
/// from each `a_at(q)` and from `+ second`) and B's `steps` KB per strip lie in bounds.
#[inline(always)]
pub(super) unsafe fn tiles(
    a_at: impl Fn(usize) -> *const u16,
    steps: usize,
    a_stride: usize,
    second: isize,
    b0: *const u16,
    b1: *const u16,
    values: &mut [f32; 32 * 32],
) {
    // SAFETY: the caller's.
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        if b1.is_null() {
            for q in 0..steps {
                let a0 = a_at(q);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.offset(second),
                    b0 = in(reg) b0.add(512 * q),
                    sa = in(reg) a_stride,
                    sb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        } else {
            for q in 0..steps {
                let a0 = a_at(q);
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0,
                    a1 = in(reg) a0.offset(second),
                    b0 = in(reg) b0.add(512 * q),
                    b1 = in(reg) b1.add(512 * q),
                    sa = in(reg) a_stride,
                    sb = in(reg) 64usize,
                    options(nostack, readonly),
                );
            }
        }
        let v = values.as_mut_ptr();
        asm!(
            "tilestored [{c00} + {sc}*1], tmm0",
            "tilestored [{c01} + {sc}*1], tmm1",
            "tilestored [{c10} + {sc}*1], tmm2",
            "tilestored [{c11} + {sc}*1], tmm3",
            c00 = in(reg) v,
            c01 = in(reg) v.add(16),
            c10 = in(reg) v.add(16 * 32),
            c11 = in(reg) v.add(16 * 32 + 16),
            sc = in(reg) 128usize,
            options(nostack),
        );
    }
}

/// `steps` rounds of four independent `tdpbf16ps` on tiles that stay in place (the
/// arithmetic peak: nothing read but the first A and B); returns the operations done.
///
/// # Safety
/// Tiles configured on this thread ([`Tiles`]).
pub(super) unsafe fn peak(steps: usize) -> usize {
    let zeros = [0u16; 16 * 32];
    // SAFETY: A and B load 16 rows of 64 bytes from `zeros` (1 KB).
    unsafe {
        asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
        asm!(
            "tileloadd tmm4, [{z} + {s}*1]",
            "tileloadd tmm5, [{z} + {s}*1]",
            "tileloadd tmm6, [{z} + {s}*1]",
            "tileloadd tmm7, [{z} + {s}*1]",
            z = in(reg) zeros.as_ptr(), s = in(reg) 64usize, options(nostack, readonly),
        );
        for _ in 0..steps {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm6",
                "tdpbf16ps tmm1, tmm4, tmm7",
                "tdpbf16ps tmm2, tmm5, tmm6",
                "tdpbf16ps tmm3, tmm5, tmm7",
                options(nostack, nomem),
            );
        }
    }
    // Each: 16 × 16 sums of 32 products, a multiply and an add.
    steps * 4 * 16 * 16 * 32 * 2
}
