//! Probes of the machine's limits, so kernel speeds can be quoted as a fraction of them: memory
//! read bandwidth (a plain SIMD sum over a buffer much larger than the caches) and the peak
//! throughput of the instructions the kernels are built on (register-only loops).
//!
//! The peak loops are inline assembly so the compiler can neither fold nor reorder them: each
//! runs 12 independent accumulator chains, enough to cover the latency of the instruction on
//! current x86 cores, so the loop is bound by issue throughput alone.

/// Wrapping sum of `buf`, read once front to back with the widest loads this CPU has.
pub fn sum_u64(buf: &[u64]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 was detected just now.
        return unsafe { sum_u64_avx2(buf) };
    }
    buf.iter().fold(0u64, |s, &v| s.wrapping_add(v))
}

/// [`sum_u64`] with `threads` threads, each reading one contiguous part; the parts' sums are
/// added. This is the read pattern of a threaded matrix-vector product.
pub fn sum_u64_threads(buf: &[u64], threads: usize) -> u64 {
    let part = buf.len().div_ceil(threads.max(1)).max(1);
    std::thread::scope(|s| {
        let handles: Vec<_> = buf.chunks(part).map(|c| s.spawn(move || sum_u64(c))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
    })
}

/// AVX2 body of [`sum_u64`]: four independent 256-bit accumulators.
///
/// # Safety
///
/// The CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn sum_u64_avx2(buf: &[u64]) -> u64 {
    use std::arch::x86_64::*;
    let chunks = buf.chunks_exact(16);
    let rest: u64 = chunks.remainder().iter().fold(0u64, |s, &v| s.wrapping_add(v));
    let mut acc = [_mm256_setzero_si256(); 4];
    for c in chunks {
        let p = c.as_ptr().cast::<__m256i>();
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 16 u64s, so `p.add(k)` for k < 4 reads inside it.
            *a = _mm256_add_epi64(*a, unsafe { _mm256_loadu_si256(p.add(k)) });
        }
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast::<__m256i>(), s) };
    lanes.iter().fold(rest, |s, &v| s.wrapping_add(v))
}

/// An instruction sequence whose peak throughput [`peak_loop`] measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeakOp {
    /// AVX2 int8 multiply-add as the AVX2 kernels use it: `vpmaddubsw`, `vpmaddwd` (by ones),
    /// `vpaddd` into an accumulator; 32 multiply-adds per sequence.
    Maddubs,
    /// AVX-512 VNNI `vpdpbusd` on 256-bit registers: 32 int8 multiply-adds per instruction.
    Vpdpbusd,
    /// AVX2 `vfmadd231ps`: 8 `f32` multiply-adds per instruction.
    Fma,
}

impl PeakOp {
    /// Multiply-adds per sequence (two operations each when quoting FLOP or OP rates).
    pub fn macs_per_seq(self) -> u64 {
        match self {
            PeakOp::Maddubs | PeakOp::Vpdpbusd => 32,
            PeakOp::Fma => 8,
        }
    }

    /// True if this CPU can run the loop.
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            match self {
                PeakOp::Maddubs | PeakOp::Fma => avx2,
                PeakOp::Vpdpbusd => {
                    avx2 && std::is_x86_feature_detected!("avx512vl") && std::is_x86_feature_detected!("avx512vnni")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = self;
            false
        }
    }
}

/// Sequences per loop iteration (the independent chains).
pub const PEAK_CHAINS: u64 = 12;

/// Runs `iters` iterations of the register-only loop of `op` ([`PEAK_CHAINS`] sequences each) on
/// the calling thread and returns the multiply-adds done, or `None` if the CPU lacks `op`.
pub fn peak_loop(op: PeakOp, iters: u64) -> Option<u64> {
    if !op.is_available() || iters == 0 {
        return if op.is_available() { Some(0) } else { None };
    }
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: the features `op` needs were detected above; the loops touch only registers
        // they declare as clobbered, and `iters` is non-zero.
        unsafe {
            match op {
                PeakOp::Maddubs => x86_peak::maddubs(iters),
                PeakOp::Vpdpbusd => x86_peak::vpdpbusd(iters),
                PeakOp::Fma => x86_peak::fma(iters),
            }
        }
        Some(iters * PEAK_CHAINS * op.macs_per_seq())
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// [`peak_loop`] on `threads` threads at once; returns the total multiply-adds.
pub fn peak_loop_threads(op: PeakOp, iters: u64, threads: usize) -> Option<u64> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(move || peak_loop(op, iters))).collect();
        handles.into_iter().map(|h| h.join().ok().flatten()).sum()
    })
}

#[cfg(target_arch = "x86_64")]
mod x86_peak {
    use std::arch::asm;

    /// # Safety
    ///
    /// The CPU must have AVX2; `iters > 0`.
    pub(super) unsafe fn maddubs(iters: u64) {
        // SAFETY: register-only AVX2 code; the loop counter and every vector register used are
        // declared.
        unsafe {
            asm!(
                "vpcmpeqb ymm14, ymm14, ymm14",
                "vpabsb ymm14, ymm14",
                "vpsllw ymm15, ymm14, 1",
                "vpabsw ymm13, ymm14",
                "2:",
                "vpmaddubsw ymm6, ymm14, ymm15", "vpmaddwd ymm6, ymm6, ymm13", "vpaddd ymm0, ymm0, ymm6",
                "vpmaddubsw ymm7, ymm14, ymm15", "vpmaddwd ymm7, ymm7, ymm13", "vpaddd ymm1, ymm1, ymm7",
                "vpmaddubsw ymm8, ymm14, ymm15", "vpmaddwd ymm8, ymm8, ymm13", "vpaddd ymm2, ymm2, ymm8",
                "vpmaddubsw ymm9, ymm14, ymm15", "vpmaddwd ymm9, ymm9, ymm13", "vpaddd ymm3, ymm3, ymm9",
                "vpmaddubsw ymm10, ymm14, ymm15", "vpmaddwd ymm10, ymm10, ymm13", "vpaddd ymm4, ymm4, ymm10",
                "vpmaddubsw ymm11, ymm14, ymm15", "vpmaddwd ymm11, ymm11, ymm13", "vpaddd ymm5, ymm5, ymm11",
                "vpmaddubsw ymm6, ymm14, ymm15", "vpmaddwd ymm6, ymm6, ymm13", "vpaddd ymm0, ymm0, ymm6",
                "vpmaddubsw ymm7, ymm14, ymm15", "vpmaddwd ymm7, ymm7, ymm13", "vpaddd ymm1, ymm1, ymm7",
                "vpmaddubsw ymm8, ymm14, ymm15", "vpmaddwd ymm8, ymm8, ymm13", "vpaddd ymm2, ymm2, ymm8",
                "vpmaddubsw ymm9, ymm14, ymm15", "vpmaddwd ymm9, ymm9, ymm13", "vpaddd ymm3, ymm3, ymm9",
                "vpmaddubsw ymm10, ymm14, ymm15", "vpmaddwd ymm10, ymm10, ymm13", "vpaddd ymm4, ymm4, ymm10",
                "vpmaddubsw ymm11, ymm14, ymm15", "vpmaddwd ymm11, ymm11, ymm13", "vpaddd ymm5, ymm5, ymm11",
                "dec {n}",
                "jnz 2b",
                "vzeroupper",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm13") _, out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            );
        }
    }

    /// # Safety
    ///
    /// The CPU must have AVX-512 VL and VNNI; `iters > 0`.
    pub(super) unsafe fn vpdpbusd(iters: u64) {
        // SAFETY: register-only code; the loop counter and every register used are declared.
        unsafe {
            asm!(
                "vpcmpeqb ymm14, ymm14, ymm14",
                "vpabsb ymm14, ymm14",
                "vpsllw ymm15, ymm14, 1",
                "2:",
                "vpdpbusd ymm0, ymm14, ymm15", "vpdpbusd ymm1, ymm14, ymm15", "vpdpbusd ymm2, ymm14, ymm15",
                "vpdpbusd ymm3, ymm14, ymm15", "vpdpbusd ymm4, ymm14, ymm15", "vpdpbusd ymm5, ymm14, ymm15",
                "vpdpbusd ymm6, ymm14, ymm15", "vpdpbusd ymm7, ymm14, ymm15", "vpdpbusd ymm8, ymm14, ymm15",
                "vpdpbusd ymm9, ymm14, ymm15", "vpdpbusd ymm10, ymm14, ymm15", "vpdpbusd ymm11, ymm14, ymm15",
                "dec {n}",
                "jnz 2b",
                "vzeroupper",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            );
        }
    }

    /// # Safety
    ///
    /// The CPU must have AVX2 and FMA; `iters > 0`.
    pub(super) unsafe fn fma(iters: u64) {
        // SAFETY: register-only code; the loop counter and every register used are declared.
        unsafe {
            asm!(
                "vxorps ymm0, ymm0, ymm0", "vxorps ymm1, ymm1, ymm1", "vxorps ymm2, ymm2, ymm2",
                "vxorps ymm3, ymm3, ymm3", "vxorps ymm4, ymm4, ymm4", "vxorps ymm5, ymm5, ymm5",
                "vxorps ymm6, ymm6, ymm6", "vxorps ymm7, ymm7, ymm7", "vxorps ymm8, ymm8, ymm8",
                "vxorps ymm9, ymm9, ymm9", "vxorps ymm10, ymm10, ymm10", "vxorps ymm11, ymm11, ymm11",
                "vxorps ymm14, ymm14, ymm14", "vxorps ymm15, ymm15, ymm15",
                "2:",
                "vfmadd231ps ymm0, ymm14, ymm15", "vfmadd231ps ymm1, ymm14, ymm15", "vfmadd231ps ymm2, ymm14, ymm15",
                "vfmadd231ps ymm3, ymm14, ymm15", "vfmadd231ps ymm4, ymm14, ymm15", "vfmadd231ps ymm5, ymm14, ymm15",
                "vfmadd231ps ymm6, ymm14, ymm15", "vfmadd231ps ymm7, ymm14, ymm15", "vfmadd231ps ymm8, ymm14, ymm15",
                "vfmadd231ps ymm9, ymm14, ymm15", "vfmadd231ps ymm10, ymm14, ymm15", "vfmadd231ps ymm11, ymm14, ymm15",
                "dec {n}",
                "jnz 2b",
                "vzeroupper",
                n = inout(reg) iters => _,
                out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _, out("ymm4") _, out("ymm5") _,
                out("ymm6") _, out("ymm7") _, out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
                out("ymm14") _, out("ymm15") _,
                options(nostack, nomem),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_agree_across_thread_counts() {
        let buf: Vec<u64> = (0..10_007u64).map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15)).collect();
        let want = buf.iter().fold(0u64, |s, &v| s.wrapping_add(v));
        assert_eq!(sum_u64(&buf), want);
        for t in 1..=3 {
            assert_eq!(sum_u64_threads(&buf, t), want);
        }
    }

    #[test]
    fn peak_loops_run_where_available() {
        for op in [PeakOp::Maddubs, PeakOp::Vpdpbusd, PeakOp::Fma] {
            let r = peak_loop(op, 1000);
            assert_eq!(r.is_some(), op.is_available(), "{op:?}");
            if let Some(macs) = r {
                assert_eq!(macs, 1000 * PEAK_CHAINS * op.macs_per_seq());
            }
        }
    }
}
