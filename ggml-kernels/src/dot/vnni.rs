//! AVX-512 VNNI kernels: the int8 products of the AVX2 kernels with `vpdpbusd` (four unsigned x
//! signed byte products summed into each i32 lane, accumulating) and `vpdpwssd` (pairs of i16
//! products summed into i32, accumulating) on 256-bit registers.
//!
//! One `vpdpbusd` replaces `vpmaddubsw` + `vpmaddwd` (+ `vpaddd`), and it cannot saturate, so
//! signed weights need no sign trick: they are offset by 128 to make them unsigned and
//! `128 * sum(y)` is taken out through the activation block sums. One `vpdpwssd` replaces the
//! `vpmaddwd` + `vpaddd` that apply the K-quants' group scales.
//!
//! On CPUs that also have AVX-512 VBMI, Q5_0's fifth bits are gathered with `vpmultishiftqb`
//! (which moves any bit of a qword to any position of each output byte) and merged into the
//! nibbles with `vpternlogd`, a third of the work of the AVX2 spread-and-compare; the decode
//! kernel also takes the block scales out of the gather's source registers and folds the offset
//! correction into one FMA ([`matvec_q5_0_vbmi_fold`]).
//!
//! The instructions are emitted with inline assembly rather than the AVX-512 intrinsics, which
//! need a newer Rust than the workspace's MSRV. The functions carry the AVX2 target features
//! only; they are installed solely in the `Isa::Avx512Vnni` table, which is handed out only when
//! AVX-512 F, VL and VNNI are detected, as the EVEX encodings require (the VBMI kernels only when
//! VBMI is detected too).

use std::arch::asm;
use std::arch::x86_64::*;

use super::avx2::{
    blocks32_x4, f16x4, hsum_ps, hsum_ps128, store_rows, k4_min_products, k4_scales_mins, lane_byte_ctrl, load128, load256, load_f16, load_f32,
    nibbles, q4_k_row, q4_kx8_min_pairs, q4_kx8_scales_mins, q5_quants, q6_k_row, scale_shuffle_16, scale_shuffle_k4, Q4_0, Q4_K, Q5_0, Q6_K, Q8K_BSUMS, Q8K_QS, Q8_0,
    Q8_K,
};
use super::avx2_gemm::{matvec4_pairs, q4_0_pair, q5_0_pair, q8_0_pair, tile32_pairs, tile_q4_k_kernel, tile_q6_k_kernel};
use super::{Isa, Kernels, Tile};
use crate::quants::iq4_nl::KVALUES_IQ4NL;
use crate::repack::{Layout, Q5_0X8_BLOCK, Q5_0X8_SCALES};
use crate::types::GgmlType;

/// Puts this module's kernels into `k` (over the AVX2 ones).
pub(super) fn install(k: &mut Kernels) {
    use GgmlType as T;
    let isa = Isa::Avx512Vnni;
    k.set_dot(T::Q4_0, isa, dot_q4_0);
    k.set_dot(T::Q5_0, isa, dot_q5_0);
    k.set_dot(T::Q8_0, isa, dot_q8_0);
    k.set_dot(T::IQ4_NL, isa, dot_iq4_nl);
    k.set_dot(T::Q4_K, isa, dot_q4_k);
    k.set_dot(T::Q6_K, isa, dot_q6_k);
    k.set_tile(T::Q4_0, isa, tile_q4_0);
    k.set_tile(T::Q5_0, isa, tile_q5_0);
    k.set_tile(T::Q8_0, isa, tile_q8_0);
    k.set_tile(T::IQ4_NL, isa, tile_iq4_nl);
    k.set_tile(T::Q4_K, isa, tile_q4_k);
    k.set_tile(T::Q6_K, isa, tile_q6_k);
    k.set_matvec(T::Q4_0, isa, matvec_q4_0);
    k.set_matvec(T::Q5_0, isa, matvec_q5_0);
    k.set_matvec(T::IQ4_NL, isa, matvec_iq4_nl);
    // Q5_0's fifth bits with VBMI's bit gather where the CPU has it (all AVX-512 CPUs with VNNI
    // since Ice Lake and Zen 4; not Cascade Lake).
    if std::is_x86_feature_detected!("avx512vbmi") {
        k.set_matvec(T::Q5_0, isa, matvec_q5_0_vbmi_fold);
        k.set_tile(T::Q5_0, isa, tile_q5_0_vbmi);
    }
    // Q5_0 rebuilt for decode: byte-masked adds (AVX-512 BW, all AVX-512 CPUs with VNNI).
    if std::is_x86_feature_detected!("avx512bw") {
        k.set_packed(Layout::Q5_0x8, isa, matvec_q5_0x8);
    }
    k.set_packed(Layout::Q4_Kx8, isa, matvec_q4_kx8);
    k.set_packed(Layout::Q6_Kx8, isa, matvec_q6_kx8);
    k.set_packed(Layout::Q4_0x8, isa, matvec_q4_0x8);
    k.set_packed(Layout::Q8_0x8, isa, matvec_q8_0x8);
}

/// `acc + sum of four u8 x i8 products` per i32 lane (`vpdpbusd`).
///
/// # Safety
///
/// The CPU must have AVX-512 VL and VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dpbusd(acc: __m256i, u: __m256i, s: __m256i) -> __m256i {
    let mut acc = acc;
    // SAFETY: register-only instruction; the caller guarantees the CPU runs it.
    unsafe {
        asm!("vpdpbusd {acc}, {u}, {s}", acc = inout(ymm_reg) acc, u = in(ymm_reg) u, s = in(ymm_reg) s,
            options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// `acc + sum of two i16 x i16 products` per i32 lane (`vpdpwssd`).
///
/// # Safety
///
/// The CPU must have AVX-512 VL and VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dpwssd(acc: __m256i, a: __m256i, b: __m256i) -> __m256i {
    let mut acc = acc;
    // SAFETY: register-only instruction; the caller guarantees the CPU runs it.
    unsafe {
        asm!("vpdpwssd {acc}, {a}, {b}", acc = inout(ymm_reg) acc, a = in(ymm_reg) a, b = in(ymm_reg) b,
            options(pure, nomem, nostack, preserves_flags));
    }
    acc
}

/// Four byte products per lane from zero.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_u8_vnni(u: __m256i, s: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU runs VNNI.
    unsafe { dpbusd(_mm256_setzero_si256(), u, s) }
}

/// Signed bytes offset by 128 (unsigned).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn offset128(v: __m256i) -> __m256i {
    _mm256_xor_si256(v, _mm256_set1_epi8(-128))
}

/// The IQ4_NL levels plus 128 (all in 1..=241), in both halves, for `vpshufb`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4nl_table_u8() -> __m256i {
    // SAFETY: the table is 16 bytes.
    let t = unsafe { load128(KVALUES_IQ4NL.as_ptr().cast::<u8>()) };
    offset128(_mm256_broadcastsi128_si256(t))
}

/// Q4_0 x Q8_0.
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA, F16C, AVX-512 VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_0(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: blocks `< nb` of both rows and `2 * nb` side floats are readable; the CPU has VNNI.
    unsafe { blocks32_x4!(nb, w, Q4_0, a, Q8_0, aux, corr = Some((0, -8.0)), |x, y| dot_u8_vnni(nibbles(x.add(2)), load256(y.add(2)))) }
}

/// Q5_0 x Q8_0.
///
/// # Safety
///
/// As [`dot_q4_0`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q5_0(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_0`.
    unsafe { blocks32_x4!(nb, w, Q5_0, a, Q8_0, aux, corr = Some((0, -16.0)), |x, y| dot_u8_vnni(q5_quants(x, 2, 6), load256(y.add(2)))) }
}

/// Q8_0 x Q8_0: weights offset by 128, `128 * dx * dy * sum(y)` subtracted.
///
/// # Safety
///
/// As [`dot_q4_0`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q8_0(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_0`.
    unsafe {
        blocks32_x4!(nb, w, Q8_0, a, Q8_0, aux, corr = Some((0, -128.0)), |x, y| dot_u8_vnni(offset128(load256(x.add(2))), load256(y.add(2))))
    }
}

/// IQ4_NL x Q8_0: levels offset by 128, `128 * dx * dy * sum(y)` subtracted.
///
/// # Safety
///
/// As [`dot_q4_0`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_iq4_nl(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    let table = iq4nl_table_u8();
    // SAFETY: as `dot_q4_0`.
    unsafe {
        blocks32_x4!(nb, w, Q4_0, a, Q8_0, aux, corr = Some((0, -128.0)), |x, y| dot_u8_vnni(_mm256_shuffle_epi8(table, nibbles(x.add(2))), load256(y.add(2))))
    }
}

/// Q4_K x Q8_K: group scales applied with `vpdpwssd`.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA, F16C, AVX-512 VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q4_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: super-blocks `< nb` of both rows are readable; the CPU has VNNI.
    unsafe { q4_k_row!(nb, w, a, sum = |acc, p, s| dpwssd(acc, p, s)) }
}

/// Q6_K x Q8_K: group scales applied with `vpdpwssd`.
///
/// # Safety
///
/// As [`dot_q4_k`].
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_q6_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_k`.
    unsafe { q6_k_row!(nb, w, a, sum = |acc, p, s| dpwssd(acc, p, s)) }
}

/// Both halves of a paired tile: `dpbusd(dpbusd(0, lo, ylo), hi, yhi)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pair_vnni(lo: __m256i, hi: __m256i, ylo: __m256i, yhi: __m256i) -> __m256i {
    // SAFETY: the caller guarantees the CPU runs VNNI.
    unsafe { dpbusd(dpbusd(_mm256_setzero_si256(), lo, ylo), hi, yhi) }
}

tile32_pairs!(tile_q4_0, tile_q4_0_mn, feat = "avx2,fma,f16c", wsize = 18, corr = Some(-8.0),
    prep = |x0, x1| q4_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

tile32_pairs!(tile_q5_0, tile_q5_0_mn, feat = "avx2,fma,f16c", wsize = 22, corr = Some(-16.0),
    prep = |x0, x1| q5_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

tile32_pairs!(tile_q8_0, tile_q8_0_mn, feat = "avx2,fma,f16c", wsize = 34, corr = Some(-128.0),
    prep = |x0, x1| { let (lo, hi) = q8_0_pair(x0, x1); (offset128(lo), offset128(hi)) },
    pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

tile32_pairs!(tile_iq4_nl, tile_iq4_nl_mn, feat = "avx2,fma,f16c", wsize = 18, corr = Some(-128.0),
    prep = |x0, x1| {
        let (lo, hi) = q4_0_pair(x0, x1);
        let table = iq4nl_table_u8();
        (_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi))
    },
    pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

tile_q4_k_kernel!(tile_q4_k, tile_q4_k_mn, feat = "avx2,fma,f16c",
    sum = |acc, q, y, s| dpwssd(acc, _mm256_maddubs_epi16(q, y), s));

tile_q6_k_kernel!(tile_q6_k, tile_q6_k_mn, feat = "avx2,fma,f16c",
    sum = |acc, q, y, s| dpwssd(acc, _mm256_maddubs_epi16(q, y), s));

matvec4_pairs!(matvec_q4_0, matvec_q4_0_m, feat = "avx2,fma,f16c", wsize = 18, corr = Some(-8.0),
    prep = |x0, x1| q4_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

matvec4_pairs!(matvec_q5_0, matvec_q5_0_m, feat = "avx2,fma,f16c", wsize = 22, corr = Some(-16.0),
    prep = |x0, x1| q5_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

matvec4_pairs!(matvec_iq4_nl, matvec_iq4_nl_m, feat = "avx2,fma,f16c", wsize = 18, corr = Some(-128.0),
    prep = |x0, x1| {
        let (lo, hi) = q4_0_pair(x0, x1);
        let table = iq4nl_table_u8();
        (_mm256_shuffle_epi8(table, lo), _mm256_shuffle_epi8(table, hi))
    },
    pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

/// Bytes of `src`'s qwords picked by `ctrl` (`vpmultishiftqb`): output byte `k` of qword `q` is
/// bits `ctrl[k]..ctrl[k] + 8` (mod 64) of qword `q` of `src`.
///
/// # Safety
///
/// The CPU must have AVX-512 VL and VBMI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn multishift(ctrl: __m256i, src: __m256i) -> __m256i {
    let out: __m256i;
    // SAFETY: register-only instruction; the caller guarantees the CPU runs it.
    unsafe {
        asm!("vpmultishiftqb {out}, {ctrl}, {src}", out = lateout(ymm_reg) out, ctrl = in(ymm_reg) ctrl, src = in(ymm_reg) src,
            options(pure, nomem, nostack, preserves_flags));
    }
    out
}

/// `a | (b & c)` bitwise in one instruction (`vpternlogd` with table 0xF8).
///
/// # Safety
///
/// The CPU must have AVX-512 F and VL.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn or_and(a: __m256i, b: __m256i, c: __m256i) -> __m256i {
    let mut a = a;
    // SAFETY: register-only instruction; the caller guarantees the CPU runs it.
    unsafe {
        asm!("vpternlogd {a}, {b}, {c}, 0xF8", a = inout(ymm_reg) a, b = in(ymm_reg) b, c = in(ymm_reg) c,
            options(pure, nomem, nostack, preserves_flags));
    }
    a
}

/// Q5_0 weight rows `x0`, `x1` paired as [`q5_0_pair`] returns them, with the fifth bits
/// gathered by `vpmultishiftqb`: the control puts bit `e` of a row's `qh` (element `e`) at bit 4
/// of output byte `e` (elements 0..16 in `lo`, 16..32 in `hi`); the other bits are masked off.
///
/// # Safety
///
/// A readable block at each pointer; the CPU must have AVX-512 F, VL and VBMI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q5_0_pair_vbmi(x0: *const u8, x1: *const u8) -> (__m256i, __m256i) {
    // Control bytes: element e of a half takes bits e - 4 .. e + 4 of the qword (mod 64).
    const CTRL_LO: i64 = 0x0302_0100_3F3E_3D3C;
    const CTRL_LO2: i64 = 0x0B0A_0908_0706_0504;
    const CTRL_HI: i64 = 0x1312_1110_0F0E_0D0C;
    const CTRL_HI2: i64 = 0x1B1A_1918_1716_1514;
    // SAFETY: the caller guarantees a readable block (22 bytes) at each pointer; the eight bytes
    // at offset 2 are `qh` and the first four nibble bytes, whose bits the controls never keep.
    unsafe {
        let v = super::avx2_gemm::combine(load128(x0.add(6)), load128(x1.add(6)));
        let q0 = std::ptr::read_unaligned(x0.add(2).cast::<i64>());
        let q1 = std::ptr::read_unaligned(x1.add(2).cast::<i64>());
        let src = _mm256_set_epi64x(q1, q1, q0, q0);
        let lo_bits = multishift(_mm256_set_epi64x(CTRL_LO2, CTRL_LO, CTRL_LO2, CTRL_LO), src);
        let hi_bits = multishift(_mm256_set_epi64x(CTRL_HI2, CTRL_HI, CTRL_HI2, CTRL_HI), src);
        let m4 = _mm256_set1_epi8(0xF);
        let bit4 = _mm256_set1_epi8(0x10);
        (
            or_and(_mm256_and_si256(v, m4), lo_bits, bit4),
            or_and(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), hi_bits, bit4),
        )
    }
}

tile32_pairs!(tile_q5_0_vbmi, tile_q5_0_vbmi_mn, feat = "avx2,fma,f16c", wsize = 22, corr = Some(-16.0),
    prep = |x0, x1| q5_0_pair_vbmi(x0, x1), pair = |lo, hi, ylo, yhi| pair_vnni(lo, hi, ylo, yhi));

/// Q5_0 decode over up to four rows (two per register, as [`matvec4_pairs`] pairs them), with
/// the fifth bits gathered by `vpmultishiftqb` as in [`q5_0_pair_vbmi`], and less work around
/// them than the generic four-row loop:
///
/// - each block's first eight bytes (`d`, `qh` and two nibble bytes) are loaded once, as the
///   bit-gather's source, and the four blocks' scales of both rows of a pair are then picked out
///   of those registers with three unpacks and a permute into one vector of eight `f16`
///   (instead of eight scalar loads, shifts and inserts per pair and step);
/// - the Q8_0 offset correction is folded: `acc += dx * (sum * dy + (-16) * cy)`, one FMA less
///   per pair and step, with `-16 * cy` computed once per step for both pairs.
///
/// # Safety
///
/// As [`super::TileFn`] with `nr == 1`; the CPU must have AVX2, FMA, F16C and AVX-512 F, VL,
/// VNNI and VBMI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_q5_0_vbmi_fold_m<const MR: usize>(t: &Tile) {
    const WS: usize = 22;
    // Control bytes: element e of a half takes bits 16 + e - 4 .. 16 + e + 4 of the qword that
    // starts at the block (`qh` is bits 16..48), so that its bit `e` lands at bit 4.
    const CTRL_LO: i64 = 0x1312_1110_0F0E_0D0C;
    const CTRL_LO2: i64 = 0x1B1A_1918_1716_1514;
    const CTRL_HI: i64 = 0x2322_2120_1F1E_1D1C;
    const CTRL_HI2: i64 = 0x2B2A_2928_2726_2524;
    let (dys, cys) = (t.aux, t.aux.add(t.nb));
    let npairs = MR.div_ceil(2);
    let mut acc = [_mm256_setzero_ps(); 2];
    let ctrl_lo = _mm256_set_epi64x(CTRL_LO2, CTRL_LO, CTRL_LO2, CTRL_LO);
    let ctrl_hi = _mm256_set_epi64x(CTRL_HI2, CTRL_HI, CTRL_HI2, CTRL_HI);
    let m4 = _mm256_set1_epi8(0xF);
    let bit4 = _mm256_set1_epi8(0x10);
    let minus16 = _mm256_set1_ps(-16.0);
    // SAFETY: blocks `< nb` of rows `< MR` and of the activation row with its side data are
    // readable (the caller's contract); a missing partner row is replaced by row 0, whose
    // results land in lanes that are never stored.
    unsafe {
        let row = |i: usize| if i < MR { t.w.add(i * t.ldw) } else { t.w };
        let mut b = 0;
        let mut prefetch = super::avx2_gemm::PrefetchNext::new(t.w.wrapping_add(MR * t.ldw), MR * t.ldw, t.nb / 4);
        while b + 4 <= t.nb {
            prefetch.step();
            let mut ylo = [_mm256_setzero_si256(); 4];
            let mut yhi = [_mm256_setzero_si256(); 4];
            for k in 0..4 {
                let y = t.a.add((b + k) * 34 + 2);
                ylo[k] = _mm256_broadcastsi128_si256(load128(y));
                yhi[k] = _mm256_broadcastsi128_si256(load128(y.add(16)));
            }
            let dy4 = _mm_loadu_ps(dys.add(b));
            let dy = _mm256_set_m128(dy4, dy4);
            let cy4 = _mm_loadu_ps(cys.add(b));
            let cy = _mm256_mul_ps(_mm256_set_m128(cy4, cy4), minus16);
            for (p, acc) in acc.iter_mut().enumerate().take(npairs) {
                let (r0, r1) = (row(2 * p), row(2 * p + 1));
                let mut r = [_mm256_setzero_si256(); 4];
                let mut src = [_mm256_setzero_si256(); 4];
                for k in 0..4 {
                    let (x0, x1) = (r0.add((b + k) * WS), r1.add((b + k) * WS));
                    let v = super::avx2_gemm::combine(load128(x0.add(6)), load128(x1.add(6)));
                    let q0 = std::ptr::read_unaligned(x0.cast::<i64>());
                    let q1 = std::ptr::read_unaligned(x1.cast::<i64>());
                    src[k] = _mm256_set_epi64x(q1, q1, q0, q0);
                    let lo = or_and(_mm256_and_si256(v, m4), multishift(ctrl_lo, src[k]), bit4);
                    let hi = or_and(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), multishift(ctrl_hi, src[k]), bit4);
                    r[k] = pair_vnni(lo, hi, ylo[k], yhi[k]);
                }
                // Lanes 0..4: row 2p, blocks b..b+4; lanes 4..8: row 2p + 1.
                let h = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
                // The scales: word 0 of qwords 0 (row 2p) and 2 (row 2p + 1) of each source.
                let d01 = _mm256_unpacklo_epi16(src[0], src[1]);
                let d23 = _mm256_unpacklo_epi16(src[2], src[3]);
                let d = _mm256_permute4x64_epi64::<0b1000>(_mm256_unpacklo_epi32(d01, d23));
                let dx = _mm256_cvtph_ps(_mm256_castsi256_si128(d));
                *acc = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), dy, cy), *acc);
            }
            b += 4;
        }
        // The last blocks one at a time: lanes 0..4 and 4..8 hold parts of the two rows' sums.
        let mut tacc = [_mm256_setzero_ps(); 2];
        let first = _mm256_setr_ps(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0);
        while b < t.nb {
            let y = t.a.add(b * 34 + 2);
            let (ylo, yhi) = (_mm256_broadcastsi128_si256(load128(y)), _mm256_broadcastsi128_si256(load128(y.add(16))));
            for (p, tacc) in tacc.iter_mut().enumerate().take(npairs) {
                let (x0, x1) = (row(2 * p).add(b * WS), row(2 * p + 1).add(b * WS));
                let (lo, hi) = q5_0_pair_vbmi(x0, x1);
                let r = pair_vnni(lo, hi, ylo, yhi);
                let dx = _mm256_set_m128(_mm_set1_ps(load_f16(x1)), _mm_set1_ps(load_f16(x0)));
                let c = _mm256_mul_ps(_mm256_set1_ps(-16.0 * *cys.add(b)), first);
                *tacc = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(_mm256_cvtepi32_ps(r), _mm256_set1_ps(*dys.add(b)), c), *tacc);
            }
            b += 1;
        }
        for p in 0..npairs {
            let v = _mm256_add_ps(acc[p], tacc[p]);
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            for k in 0..2 {
                let i = 2 * p + k;
                if i < MR {
                    let s = &lanes[4 * k..4 * k + 4];
                    *t.out.add(i) = (s[0] + s[1]) + (s[2] + s[3]);
                }
            }
        }
    }
}

/// [`matvec_q5_0_vbmi_fold_m`] for `t.mr` rows.
///
/// # Safety
///
/// As [`matvec_q5_0_vbmi_fold_m`].
unsafe fn matvec_q5_0_vbmi_fold(t: &Tile) {
    debug_assert_eq!(t.nr, 1);
    // SAFETY: the caller's contract is the inner function's.
    unsafe {
        match t.mr {
            4 => matvec_q5_0_vbmi_fold_m::<4>(t),
            3 => matvec_q5_0_vbmi_fold_m::<3>(t),
            2 => matvec_q5_0_vbmi_fold_m::<2>(t),
            _ => matvec_q5_0_vbmi_fold_m::<1>(t),
        }
    }
}

/// Q5_0 in [`Layout::Q5_0x8`] x Q8_0: one group of eight rows, each row's sums in its own 32-bit
/// lane (see [`crate::repack`]). Per group block and step of four elements: one 32-byte load
/// of nibbles, the low and high nibbles split (three operations), the fifth bits added under
/// the step's two ready-made byte masks (`kmovd` from memory and a masked `vpaddb` each), and
/// two `vpdpbusd` against four activation bytes broadcast to every lane; then one conversion
/// and two FMAs apply the eight rows' scales (one `vcvtph2ps` of the stored vector), the
/// activation scale and the offset correction `-16 * cy` to the eight lanes at once. About
/// 7 vector operations per pair of rows and block, against about 15 in ggml's layout
/// ([`matvec_q5_0_vbmi_fold`]), and no horizontal sums.
///
/// A row's blocks are summed as [`matvec_q5_0_vbmi_fold`] sums them (block `b` into
/// accumulator `b % 4` as `dx * (s * dy - 16 * cy)`, then `(a0 + a1) + (a2 + a3)`), so where the
/// row length is a multiple of four blocks the results are bit-identical to it (the last
/// `nb % 4` blocks, where there are any, are summed otherwise).
///
/// # Safety
///
/// As [`crate::dot::scalar::matvec_q5_0x8`]; the CPU must have AVX2, FMA, F16C and AVX-512 F,
/// VL, BW and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_q5_0x8(t: &Tile) {
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0xF);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut acc = [_mm256_setzero_ps(); 4];
    // SAFETY: the group's `nb` blocks, the activation row's `nb` blocks and its side data are
    // readable (the caller's contract); the instructions run on this CPU (the table is handed
    // out only then). `k1` is declared clobbered; nothing else outside the named operands is
    // touched, and only through reads.
    unsafe {
        for b in 0..t.nb {
            let gb = t.w.add(b * Q5_0X8_BLOCK);
            let y = t.a.add(b * 34 + 2);
            let mut s0 = _mm256_setzero_si256();
            let mut s1 = _mm256_setzero_si256();
            asm!(
            // Step 0: elements 0..4 (low nibbles) and 16..20 (high).
            "vmovdqu {v}, ymmword ptr [{w} + 48]",
            "vpsrlw {h}, {v}, 4",
            "vpand {v}, {v}, {m4}",
            "vpand {h}, {h}, {m4}",
            "kmovd k1, dword ptr [{w} + 16]",
            "vpaddb {v} {{k1}}, {v}, {b4}",
            "kmovd k1, dword ptr [{w} + 20]",
            "vpaddb {h} {{k1}}, {h}, {b4}",
            "vpbroadcastd {y}, dword ptr [{a} + 0]",
            "vpdpbusd {s0}, {v}, {y}",
            "vpbroadcastd {y}, dword ptr [{a} + 16]",
            "vpdpbusd {s1}, {h}, {y}",
            // Step 1: elements 4..8 (low nibbles) and 20..24 (high).
            "vmovdqu {v}, ymmword ptr [{w} + 80]",
            "vpsrlw {h}, {v}, 4",
            "vpand {v}, {v}, {m4}",
            "vpand {h}, {h}, {m4}",
            "kmovd k1, dword ptr [{w} + 24]",
            "vpaddb {v} {{k1}}, {v}, {b4}",
            "kmovd k1, dword ptr [{w} + 28]",
            "vpaddb {h} {{k1}}, {h}, {b4}",
            "vpbroadcastd {y}, dword ptr [{a} + 4]",
            "vpdpbusd {s0}, {v}, {y}",
            "vpbroadcastd {y}, dword ptr [{a} + 20]",
            "vpdpbusd {s1}, {h}, {y}",
            // Step 2: elements 8..12 (low nibbles) and 24..28 (high).
            "vmovdqu {v}, ymmword ptr [{w} + 112]",
            "vpsrlw {h}, {v}, 4",
            "vpand {v}, {v}, {m4}",
            "vpand {h}, {h}, {m4}",
            "kmovd k1, dword ptr [{w} + 32]",
            "vpaddb {v} {{k1}}, {v}, {b4}",
            "kmovd k1, dword ptr [{w} + 36]",
            "vpaddb {h} {{k1}}, {h}, {b4}",
            "vpbroadcastd {y}, dword ptr [{a} + 8]",
            "vpdpbusd {s0}, {v}, {y}",
            "vpbroadcastd {y}, dword ptr [{a} + 24]",
            "vpdpbusd {s1}, {h}, {y}",
            // Step 3: elements 12..16 (low nibbles) and 28..32 (high).
            "vmovdqu {v}, ymmword ptr [{w} + 144]",
            "vpsrlw {h}, {v}, 4",
            "vpand {v}, {v}, {m4}",
            "vpand {h}, {h}, {m4}",
            "kmovd k1, dword ptr [{w} + 40]",
            "vpaddb {v} {{k1}}, {v}, {b4}",
            "kmovd k1, dword ptr [{w} + 44]",
            "vpaddb {h} {{k1}}, {h}, {b4}",
            "vpbroadcastd {y}, dword ptr [{a} + 12]",
            "vpdpbusd {s0}, {v}, {y}",
            "vpbroadcastd {y}, dword ptr [{a} + 28]",
            "vpdpbusd {s1}, {h}, {y}",
                w = in(reg) gb,
                a = in(reg) y,
                m4 = in(ymm_reg) m4,
                b4 = in(ymm_reg) bit4,
                s0 = inout(ymm_reg) s0,
                s1 = inout(ymm_reg) s1,
                v = out(ymm_reg) _,
                h = out(ymm_reg) _,
                y = out(ymm_reg) _,
                out("k1") _,
                options(readonly, nostack, preserves_flags),
            );
            let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
            let dx = _mm256_cvtph_ps(load128(gb.add(Q5_0X8_SCALES)));
            let dy = _mm256_set1_ps(*t.aux.add(b));
            let cy = _mm256_set1_ps(-16.0 * *t.aux.add(t.nb + b));
            acc[b % 4] = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(s, dy, cy), acc[b % 4]);
        }
        let mut lanes = [[0f32; 8]; 4];
        for (l, a) in lanes.iter_mut().zip(acc) {
            _mm256_storeu_ps(l.as_mut_ptr(), a);
        }
        for r in 0..t.mr {
            *t.out.add(r) = (lanes[0][r] + lanes[1][r]) + (lanes[2][r] + lanes[3][r]);
        }
    }
}

/// Q4_K in [`Layout::Q4_Kx8`] x Q8_K: one group of eight rows, each row's sums in its own
/// 32-bit lane (see [`crate::repack`]). Per group of 32 elements and step of four: one 32-byte
/// load of the eight rows' nibbles serves the group of the low nibbles and the group of the high
/// ones; the low nibbles are masked (`& 0x0F`), the high ones only masked too (`& 0xF0`, sixteen
/// times their value: the group's sum is divided by 16 once, exactly), and each goes through one
/// `vpdpbusd` against four activation bytes broadcast to every lane. A group's sums are then
/// multiplied by the group scale of each lane's row (`vpmulld` with the scale byte picked by
/// one `vpshufb`); the mins are four `vpdpwssd` ([`q4_kx8_min_pairs`]); `d` and `dmin` of the
/// eight rows are one vector of `f16` each. No horizontal sums.
///
/// # Safety
///
/// As [`crate::dot::scalar::matvec_q4_kx8`]; the CPU must have AVX2, FMA, F16C and AVX-512 F,
/// VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_q4_kx8(t: &Tile) {
    use crate::repack::{Q4_KX8_BLOCK, Q4_KX8_D, Q4_KX8_DMIN, Q4_KX8_QS, Q4_KX8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0x0F);
    let mf0 = _mm256_set1_epi8(0xF0u8 as i8);
    let sc_ctrl = [lane_byte_ctrl(0, false), lane_byte_ctrl(1, false), lane_byte_ctrl(2, false), lane_byte_ctrl(3, false)];
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    // SAFETY: the group's `nb` super-blocks and the activation row's are readable (the caller's
    // contract); `read_unaligned` needs no alignment; the CPU runs VNNI (the table is handed out
    // only then).
    unsafe {
        for b in 0..t.nb {
            let gb = t.w.add(b * Q4_KX8_BLOCK);
            let y = t.a.add(b * Q8_K);
            let sc = gb.add(Q4_KX8_SCALES);
            let [sc_lo, sc_hi, mn_lo, mn_hi] = q4_kx8_scales_mins(load256(sc), load256(sc.add(32)), load256(sc.add(64)));
            // Low groups' scaled sums, and the high groups' times 16.
            let mut sum_lo = _mm256_setzero_si256();
            let mut sum_hi = _mm256_setzero_si256();
            for c in 0..4 {
                let mut sl = _mm256_setzero_si256();
                let mut sh = _mm256_setzero_si256();
                for j in 0..8 {
                    let v = load256(gb.add(Q4_KX8_QS + 32 * (8 * c + j)));
                    let yl = _mm256_set1_epi32(std::ptr::read_unaligned(y.add(Q8K_QS + 64 * c + 4 * j).cast::<i32>()));
                    let yh = _mm256_set1_epi32(std::ptr::read_unaligned(y.add(Q8K_QS + 64 * c + 32 + 4 * j).cast::<i32>()));
                    sl = dpbusd(sl, _mm256_and_si256(v, m4), yl);
                    sh = dpbusd(sh, _mm256_and_si256(v, mf0), yh);
                }
                let scv = if c < 2 { sc_lo } else { sc_hi };
                sum_lo = _mm256_add_epi32(sum_lo, _mm256_mullo_epi32(sl, _mm256_shuffle_epi8(scv, sc_ctrl[(2 * c) % 4])));
                sum_hi = _mm256_add_epi32(sum_hi, _mm256_mullo_epi32(sh, _mm256_shuffle_epi8(scv, sc_ctrl[(2 * c + 1) % 4])));
            }
            let sumi = _mm256_add_epi32(sum_lo, _mm256_srai_epi32::<4>(sum_hi));
            let mut summ = _mm256_setzero_si256();
            for (m, bsum) in q4_kx8_min_pairs(mn_lo, mn_hi, y) {
                summ = dpwssd(summ, m, bsum);
            }
            let dy = _mm256_set1_ps(load_f32(y));
            let d = _mm256_mul_ps(_mm256_cvtph_ps(load128(gb.add(Q4_KX8_D))), dy);
            let dmin = _mm256_mul_ps(_mm256_cvtph_ps(load128(gb.add(Q4_KX8_DMIN))), dy);
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
            accm = _mm256_fmadd_ps(dmin, _mm256_cvtepi32_ps(summ), accm);
        }
        store_rows(t, _mm256_sub_ps(acc, accm));
    }
}

/// Q6_K in [`Layout::Q6_Kx8`] x Q8_K: one group of eight rows, each row's sums in its own
/// 32-bit lane (see [`crate::repack`]), the group super-block read in order. Per half
/// super-block (128 elements) and step `j` of four elements: the step's two 32-byte vectors of
/// low bits and one of top bits serve four groups; each of the
/// four 6-bit quants is one mask and one `vpternlogd` merge (after a shift for three of them),
/// then one `vpdpbusd` against four activation bytes broadcast to every lane, into that group's
/// accumulator. The accumulators start at `-32 * bsum` of their group (the quants' offset, taken
/// out through the activation block sums), so a group costs one `vpmulld` by its scale (picked
/// and sign-extended by `vpshufb` and a shift) once its four steps are summed; the eight rows'
/// `d` are one vector of `f16`. No horizontal sums.
///
/// # Safety
///
/// As [`crate::dot::scalar::matvec_q6_kx8`]; the CPU must have AVX2, FMA, F16C and AVX-512 F,
/// VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_q6_kx8(t: &Tile) {
    use crate::repack::{Q6_KX8_BLOCK, Q6_KX8_D, Q6_KX8_QS, Q6_KX8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    // Byte `k` of each 32-bit lane moved to the lane's top byte, the rest zero.
    let top = |k: i8| {
        let c = _mm_setr_epi8(-128, -128, -128, k, -128, -128, -128, 4 + k, -128, -128, -128, 8 + k, -128, -128, -128, 12 + k);
        _mm256_broadcastsi128_si256(c)
    };
    let tops = [top(0), top(1), top(2), top(3)];
    let mut acc = _mm256_setzero_ps();
    // SAFETY: the group's `nb` super-blocks and the activation row's are readable (the caller's
    // contract); `read_unaligned` needs no alignment; the CPU runs VNNI and AVX-512 VL (the table
    // is handed out only then).
    unsafe {
        let bcast = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()));
        for b in 0..t.nb {
            let gb = t.w.add(b * Q6_KX8_BLOCK);
            let y = t.a.add(b * Q8_K);
            // `-32 * bsum` of the sixteen groups of sixteen activations.
            let mut corr = [0i32; 16];
            for (i, c) in corr.chunks_exact_mut(8).enumerate() {
                let s = _mm256_slli_epi32::<5>(_mm256_cvtepi16_epi32(load128(y.add(Q8K_BSUMS + 16 * i))));
                _mm256_storeu_si256(c.as_mut_ptr().cast::<__m256i>(), _mm256_sub_epi32(_mm256_setzero_si256(), s));
            }
            let mut sumi = _mm256_setzero_si256();
            for hh in 0..4 {
                // Elements 128h + 32s + 16half .. + 16, in groups g(s) = 8h + 2s + half: one
                // accumulator per `s`.
                let (h, half) = (hh / 2, hh % 2);
                let mut a0 = _mm256_set1_epi32(corr[8 * h + half]);
                let mut a1 = _mm256_set1_epi32(corr[8 * h + 2 + half]);
                let mut a2 = _mm256_set1_epi32(corr[8 * h + 4 + half]);
                let mut a3 = _mm256_set1_epi32(corr[8 * h + 6 + half]);
                for jj in 0..4 {
                    let j = 4 * half + jj;
                    let step = gb.add(Q6_KX8_QS + 96 * (8 * h + j));
                    let (qa, qb, hv) = (load256(step), load256(step.add(32)), load256(step.add(64)));
                    let q0 = or_and(_mm256_and_si256(qa, m4), _mm256_slli_epi16::<4>(hv), m30);
                    let q1 = or_and(_mm256_and_si256(qb, m4), _mm256_slli_epi16::<2>(hv), m30);
                    let q2 = or_and(_mm256_and_si256(_mm256_srli_epi16::<4>(qa), m4), hv, m30);
                    let q3 = or_and(_mm256_and_si256(_mm256_srli_epi16::<4>(qb), m4), _mm256_srli_epi16::<2>(hv), m30);
                    let ys = y.add(Q8K_QS + 128 * h + 4 * j);
                    a0 = dpbusd(a0, q0, bcast(ys));
                    a1 = dpbusd(a1, q1, bcast(ys.add(32)));
                    a2 = dpbusd(a2, q2, bcast(ys.add(64)));
                    a3 = dpbusd(a3, q3, bcast(ys.add(96)));
                }
                for (s, a) in [a0, a1, a2, a3].into_iter().enumerate() {
                    let g = 8 * h + 2 * s + half;
                    let sc = _mm256_srai_epi32::<24>(_mm256_shuffle_epi8(load256(gb.add(Q6_KX8_SCALES + 32 * (g / 4))), tops[g % 4]));
                    sumi = _mm256_add_epi32(sumi, _mm256_mullo_epi32(a, sc));
                }
            }
            let d = _mm256_mul_ps(_mm256_cvtph_ps(load128(gb.add(Q6_KX8_D))), _mm256_set1_ps(load_f32(y)));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        store_rows(t, acc);
    }
}

/// Q4_0 in [`Layout::Q4_0x8`] x Q8_0: one group of eight rows, each row's sums in its own
/// 32-bit lane (see [`crate::repack`]). Per group block and step of four elements: one 32-byte
/// load of the eight rows' nibbles, the low nibbles masked (`& 0x0F`) and the high ones masked
/// in place (`& 0xF0`, sixteen times their value: the block's sum is divided by 16 once,
/// exactly), each through one `vpdpbusd` against four activation bytes broadcast to every lane;
/// then one conversion and two FMAs apply the eight rows' scales (one `vcvtph2ps`), the
/// activation scale and the offset correction `-8 * cy`.
///
/// # Safety
///
/// As [`crate::dot::scalar::matvec_q4_0x8`]; the CPU must have AVX2, FMA, F16C and AVX-512 F,
/// VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_q4_0x8(t: &Tile) {
    use crate::repack::{Q4_0X8_BLOCK, Q4_0X8_NIBBLES, Q4_0X8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0x0F);
    let mf0 = _mm256_set1_epi8(0xF0u8 as i8);
    let mut acc = [_mm256_setzero_ps(); 2];
    // SAFETY: the group's `nb` blocks, the activation row's `nb` blocks and its side data are
    // readable (the caller's contract); the CPU runs VNNI (the table is handed out only then).
    unsafe {
        let bcast = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()));
        for b in 0..t.nb {
            let gb = t.w.add(b * Q4_0X8_BLOCK);
            let y = t.a.add(b * Q8_0 + 2);
            let mut lo = _mm256_setzero_si256();
            let mut hi = _mm256_setzero_si256();
            for j in 0..4 {
                let v = load256(gb.add(Q4_0X8_NIBBLES + 32 * j));
                lo = dpbusd(lo, _mm256_and_si256(v, m4), bcast(y.add(4 * j)));
                hi = dpbusd(hi, _mm256_and_si256(v, mf0), bcast(y.add(16 + 4 * j)));
            }
            let s = _mm256_cvtepi32_ps(_mm256_add_epi32(lo, _mm256_srai_epi32::<4>(hi)));
            let dx = _mm256_cvtph_ps(load128(gb.add(Q4_0X8_SCALES)));
            let dy = _mm256_set1_ps(*t.aux.add(b));
            let cy = _mm256_set1_ps(-8.0 * *t.aux.add(t.nb + b));
            acc[b % 2] = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(s, dy, cy), acc[b % 2]);
        }
        store_rows(t, _mm256_add_ps(acc[0], acc[1]));
    }
}

/// Q8_0 in [`Layout::Q8_0x8`] x Q8_0: one group of eight rows, each row's sums in its own 32-bit
/// lane (see [`crate::repack`]). Per group block and step of four elements: one 32-byte load of
/// the eight rows' quants, offset by 128 to make them unsigned (one `vpxor`), one `vpdpbusd`
/// against four activation bytes broadcast to every lane; then one conversion and two FMAs apply
/// the eight rows' scales (one `vcvtph2ps`), the activation scale and the offset correction
/// `-128 * cy`. About 38 vector operations per eight rows and block, against about 48 in ggml's
/// layout, and no horizontal sums.
///
/// # Safety
///
/// As [`crate::dot::scalar::matvec_q8_0x8`]; the CPU must have AVX2, FMA, F16C and AVX-512 F,
/// VL and VNNI.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn matvec_q8_0x8(t: &Tile) {
    use crate::repack::{Q8_0X8_BLOCK, Q8_0X8_QS, Q8_0X8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let mut acc = [_mm256_setzero_ps(); 2];
    // SAFETY: the group's `nb` blocks, the activation row's `nb` blocks and its side data are
    // readable (the caller's contract); the CPU runs VNNI (the table is handed out only then).
    unsafe {
        let bcast = |p: *const u8| _mm256_set1_epi32(std::ptr::read_unaligned(p.cast::<i32>()));
        for b in 0..t.nb {
            let gb = t.w.add(b * Q8_0X8_BLOCK);
            let y = t.a.add(b * Q8_0 + 2);
            let mut s0 = _mm256_setzero_si256();
            let mut s1 = _mm256_setzero_si256();
            for j in (0..8).step_by(2) {
                s0 = dpbusd(s0, offset128(load256(gb.add(Q8_0X8_QS + 32 * j))), bcast(y.add(4 * j)));
                s1 = dpbusd(s1, offset128(load256(gb.add(Q8_0X8_QS + 32 * j + 32))), bcast(y.add(4 * j + 4)));
            }
            let s = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
            let dx = _mm256_cvtph_ps(load128(gb.add(Q8_0X8_SCALES)));
            let dy = _mm256_set1_ps(*t.aux.add(b));
            let cy = _mm256_set1_ps(-128.0 * *t.aux.add(t.nb + b));
            acc[b % 2] = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(s, dy, cy), acc[b % 2]);
        }
        store_rows(t, _mm256_add_ps(acc[0], acc[1]));
    }
}
