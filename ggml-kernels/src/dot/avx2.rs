//! AVX2 + FMA + F16C dot products for every weight type, and bit-exact activation quantizers.
//!
//! The integer core is `vpmaddubsw` (unsigned x signed bytes, pairs summed to i16) followed by
//! `vpmaddwd` (pairs of i16 summed to i32, or multiplied by a group scale first). Signed weights
//! use the sign trick: `|x| * (y * sign(x))`, exact because activation quants never reach -128
//! (every Q8 quantizer here maps the block maximum to ±127), so no pair sum exceeds
//! `2 * 128 * 127` and `vpmaddubsw` never saturates. Block scales are applied in `f32`, one FMA
//! per block (per super-block for the K-quants, whose group scales are integers folded into the
//! `vpmaddwd`).
//!
//! Every function here is `unsafe` with `#[target_feature(enable = "avx2,fma,f16c")]`: calling
//! one on a CPU without those features is undefined behaviour. The table installs them only in
//! tables handed out after `Isa::Avx2` was detected.

use std::arch::x86_64::*;
use std::ptr::read_unaligned;

use super::{Isa, Kernels, VecDotType};
use crate::quants::iq4_nl::KVALUES_IQ4NL;
use crate::types::GgmlType;

/// Puts this module's kernels into `k`.
pub(super) fn install(k: &mut Kernels) {
    use GgmlType as T;
    let isa = Isa::Avx2;
    k.set_packed(crate::repack::Layout::Q5_0x8, isa, matvec_q5_0x8);
    k.set_packed(crate::repack::Layout::Q4_Kx8, isa, matvec_q4_kx8);
    k.set_packed(crate::repack::Layout::Q4_0x8, isa, matvec_q4_0x8);
    k.set_packed(crate::repack::Layout::Q6_Kx8, isa, matvec_q6_kx8);
    k.set_dot(T::F32, isa, dot_f32);
    k.set_dot(T::F16, isa, dot_f16);
    k.set_dot(T::BF16, isa, dot_bf16);
    k.set_dot(T::Q4_0, isa, dot_q4_0);
    k.set_dot(T::Q4_1, isa, dot_q4_1);
    k.set_dot(T::Q5_0, isa, dot_q5_0);
    k.set_dot(T::Q5_1, isa, dot_q5_1);
    k.set_dot(T::Q8_0, isa, dot_q8_0);
    k.set_dot(T::IQ4_NL, isa, dot_iq4_nl);
    k.set_dot(T::Q2_K, isa, dot_q2_k);
    k.set_dot(T::Q3_K, isa, dot_q3_k);
    k.set_dot(T::Q4_K, isa, dot_q4_k);
    k.set_dot(T::Q5_K, isa, dot_q5_k);
    k.set_dot(T::Q6_K, isa, dot_q6_k);
    k.set_dot(T::IQ4_XS, isa, dot_iq4_xs);
    k.set_quant(VecDotType::Q8_0, isa, quantize_q8_0);
    k.set_quant(VecDotType::Q8_1, isa, quantize_q8_1);
    k.set_quant(VecDotType::Q8_K, isa, quantize_q8_k);
    super::avx2_gemm::install(k);
}

// ---------------------------------------------------------------------------------------------
// Helpers. All are `#[inline]` with the same features as their callers, so they inline.

/// Reads an IEEE half at `p` (unaligned) as `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load_f16(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at `p`.
    let h = unsafe { read_unaligned(p.cast::<u16>()) };
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Reads an `f32` at `p` (unaligned).
#[inline]
pub(super) unsafe fn load_f32(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees four readable bytes at `p`.
    unsafe { read_unaligned(p.cast::<f32>()) }
}

/// Reads a `u32` at `p` (unaligned, little-endian).
#[inline]
pub(super) unsafe fn load_u32(p: *const u8) -> u32 {
    // SAFETY: the caller guarantees four readable bytes at `p`.
    unsafe { read_unaligned(p.cast::<u32>()) }
}

/// Loads 32 bytes at `p` (unaligned).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load256(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 32 readable bytes at `p`; `loadu` needs no alignment.
    unsafe { _mm256_loadu_si256(p.cast::<__m256i>()) }
}

/// Writes the first `t.mr` lanes of `v`, one per row of an eight-row group, to the tile's output:
/// the end of each eight-row kernel.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn store_rows(t: &super::Tile, v: __m256) {
    let mut lanes = [0f32; 8];
    // SAFETY: `lanes` holds 8 floats; `storeu` needs no alignment.
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
    for (r, &x) in lanes.iter().enumerate().take(t.mr) {
        // SAFETY: the kernel's contract: `t.mr` floats writable at `t.out`.
        unsafe { *t.out.add(r) = x };
    }
}

/// Loads 16 bytes at `p` (unaligned).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn load128(p: *const u8) -> __m128i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    unsafe { _mm_loadu_si128(p.cast::<__m128i>()) }
}

/// Sum of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_ps(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    hsum_ps128(s)
}

/// Sum of the four lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn hsum_ps128(s: __m128) -> f32 {
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Sum of the eight i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hsum_epi32(v: __m256i) -> i32 {
    let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let s = _mm_add_epi32(s, _mm_unpackhi_epi64(s, s));
    let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01>(s));
    _mm_cvtsi128_si32(s)
}

/// 16 bytes of nibbles at `p` as 32 bytes: the low nibbles in bytes 0..16, the high nibbles
/// in bytes 16..32 (element order of Q4_0, Q4_1, Q5_x and IQ4 blocks).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn nibbles(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees 16 readable bytes at `p`.
    let t = unsafe { load128(p) };
    let v = _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(t), _mm_srli_epi16::<4>(t));
    _mm256_and_si256(v, _mm256_set1_epi8(0x0F))
}

/// The 32 bits at `p` as 32 bytes: byte `j` is 0xFF if bit `j` is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn bits_to_bytes(p: *const u8) -> __m256i {
    // SAFETY: the caller guarantees four readable bytes at `p`.
    let x = unsafe { load_u32(p) };
    // Byte j of the result takes byte j / 8 of `x` ...
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(x as i32),
        _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0101_0101_0101_0101, 0),
    );
    // ... and is all ones exactly when bit j % 8 is set: OR in every other bit, compare.
    let others = _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_cmpeq_epi8(others, _mm256_set1_epi64x(-1))
}

/// Sums of four products of signed bytes, as eight i32 lanes. Precondition: no byte of `y` is
/// -128 (so `y * sign(x)` cannot overflow).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_i8(x: __m256i, y: __m256i) -> __m256i {
    let ax = _mm256_sign_epi8(x, x);
    let sy = _mm256_sign_epi8(y, x);
    _mm256_madd_epi16(_mm256_maddubs_epi16(ax, sy), _mm256_set1_epi16(1))
}

/// Sums of four products of unsigned `x` and signed `y` bytes, as eight i32 lanes.
/// Precondition: every pair sum fits in i16 (true when `x <= 127`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_u8(x: __m256i, y: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(x, y), _mm256_set1_epi16(1))
}

/// Bytes of a 32-element block: shuffle control that repeats 16-bit lane `k` of each 128-bit
/// half (a group scale) across that half.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_shuffle_k4(k: usize) -> __m256i {
    let lo = (2 * k) as i16;
    _mm256_set1_epi16(lo | ((lo + 1) << 8))
}

/// Shuffle control for a 128-bit vector of 16 byte scales: eight copies of byte `2c`, then eight
/// of byte `2c + 1` (the two 16-element groups of a 32-element chunk).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn scale_shuffle_16(c: usize) -> __m128i {
    let a = (2 * c) as i64 * 0x0101_0101_0101_0101;
    _mm_set_epi64x(a + 0x0101_0101_0101_0101, a)
}

/// Q4_K/Q5_K packed scales and mins as (scales, mins), each eight u8 in the low 64 bits of the
/// result, widened to i16: `(8 x i16 scales, 8 x i16 mins)`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k4_scales_mins(p: *const u8) -> (__m128i, __m128i) {
    const K1: u32 = 0x3f3f_3f3f;
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    // SAFETY: the caller guarantees 12 readable bytes at `p`.
    let (s0, s1, s2) = unsafe { (load_u32(p), load_u32(p.add(4)), load_u32(p.add(8))) };
    let sc_lo = s0 & K1;
    let m_lo = s1 & K1;
    let sc_hi = (s2 & K2) | (((s0 >> 6) & K3) << 4);
    let m_hi = ((s2 >> 4) & K2) | (((s1 >> 6) & K3) << 4);
    let v = _mm_set_epi32(m_hi as i32, m_lo as i32, sc_hi as i32, sc_lo as i32);
    (_mm_cvtepu8_epi16(v), _mm_cvtepu8_epi16(_mm_unpackhi_epi64(v, v)))
}

/// The sixteen Q3_K scales less 32, as signed bytes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q3_k_scales(p: *const u8) -> __m128i {
    const K2: u32 = 0x0f0f_0f0f;
    const K3: u32 = 0x0303_0303;
    // SAFETY: the caller guarantees 12 readable bytes at `p`.
    let (a0, a1, a2) = unsafe { (load_u32(p), load_u32(p.add(4)), load_u32(p.add(8))) };
    let w0 = (a0 & K2) | ((a2 & K3) << 4);
    let w1 = (a1 & K2) | (((a2 >> 2) & K3) << 4);
    let w2 = ((a0 >> 4) & K2) | (((a2 >> 4) & K3) << 4);
    let w3 = ((a1 >> 4) & K2) | (((a2 >> 6) & K3) << 4);
    _mm_sub_epi8(_mm_set_epi32(w3 as i32, w2 as i32, w1 as i32, w0 as i32), _mm_set1_epi8(32))
}

// Block sizes in bytes.
pub(super) const Q4_0: usize = 18;
pub(super) const Q4_1: usize = 20;
pub(super) const Q5_0: usize = 22;
pub(super) const Q5_1: usize = 24;
pub(super) const Q8_0: usize = 34;
pub(super) const Q8_1: usize = 36;
pub(super) const Q8_K: usize = 292;
pub(super) const Q2_K: usize = 84;
pub(super) const Q3_K: usize = 110;
pub(super) const Q4_K: usize = 144;
pub(super) const Q5_K: usize = 176;
pub(super) const Q6_K: usize = 210;
pub(super) const IQ4_XS: usize = 136;

/// Offsets inside a Q8_K block.
pub(super) const Q8K_QS: usize = 4;
pub(super) const Q8K_BSUMS: usize = 260;

// ---------------------------------------------------------------------------------------------
// Blocks of 32 against Q8_0 / Q8_1

/// Four IEEE halves at `p`, `p + stride`, `p + 2 * stride`, `p + 3 * stride`, as `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16x4(p: *const u8, stride: usize) -> __m128 {
    // SAFETY: the caller guarantees two readable bytes at each of the four addresses.
    let h = unsafe {
        [
            u64::from(read_unaligned(p.cast::<u16>())),
            u64::from(read_unaligned(p.add(stride).cast::<u16>())),
            u64::from(read_unaligned(p.add(2 * stride).cast::<u16>())),
            u64::from(read_unaligned(p.add(3 * stride).cast::<u16>())),
        ]
    };
    let packed = h[0] | (h[1] << 16) | (h[2] << 32) | (h[3] << 48);
    _mm_cvtph_ps(_mm_cvtsi64_si128(packed as i64))
}

/// The row loop of the 32-element block types, four blocks per step.
///
/// `$ints` gives, for the weight block at `$x` and the activation block at `$y`, eight i32 lanes
/// that sum to the block's integer dot product. Four blocks' lanes are reduced to four sums with
/// one `vphaddd` tree, converted once and scaled by a vector of `dx * dy` (the `dy` as `f32` from
/// the side data), so the float work per block is a quarter of a block-at-a-time loop.
///
/// With `corr = (offset, factor)` the result also gets `factor * sum(h * c)` where `h` is the f16
/// at `offset` in each weight block and `c` the side-data sum of the activation block: the offset
/// correction of unsigned quants (`-8 * dx * dy * sum(y)` for Q4_0) or the `m * s` term of
/// Q4_1/Q5_1.
macro_rules! blocks32_x4 {
    ($nb:expr, $w:expr, $wsize:expr, $a:expr, $asize:expr, $aux:expr, corr = $corr:expr, |$x:ident, $y:ident| $ints:expr) => {{
        let (nb, w, a, aux): (usize, *const u8, *const u8, *const f32) = ($nb, $w, $a, $aux);
        let corr: Option<(usize, f32)> = $corr;
        let (dys, cys) = (aux, aux.add(nb));
        let mut acc = _mm256_setzero_ps();
        let mut cacc = _mm_setzero_ps();
        let mut i = 0;
        while i + 4 <= nb {
            let i0 = { let ($x, $y) = (w.add(i * $wsize), a.add(i * $asize)); $ints };
            let i1 = { let ($x, $y) = (w.add((i + 1) * $wsize), a.add((i + 1) * $asize)); $ints };
            let i2 = { let ($x, $y) = (w.add((i + 2) * $wsize), a.add((i + 2) * $asize)); $ints };
            let i3 = { let ($x, $y) = (w.add((i + 3) * $wsize), a.add((i + 3) * $asize)); $ints };
            // Lanes k and k + 4 of `h` hold the two halves of block i + k's sum.
            let h = _mm256_hadd_epi32(_mm256_hadd_epi32(i0, i1), _mm256_hadd_epi32(i2, i3));
            let dx = f16x4(w.add(i * $wsize), $wsize);
            let d = _mm_mul_ps(dx, _mm_loadu_ps(dys.add(i)));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_set_m128(d, d), acc);
            if let Some((off, _)) = corr {
                let hx = if off == 0 { dx } else { f16x4(w.add(i * $wsize + off), $wsize) };
                cacc = _mm_fmadd_ps(hx, _mm_loadu_ps(cys.add(i)), cacc);
            }
            i += 4;
        }
        let mut tail = 0.0f32;
        let mut ctail = 0.0f32;
        while i < nb {
            let lanes = { let ($x, $y) = (w.add(i * $wsize), a.add(i * $asize)); $ints };
            let dx = load_f16(w.add(i * $wsize));
            tail += hsum_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(lanes), _mm256_set1_ps(dx * *dys.add(i))));
            if let Some((off, _)) = corr {
                ctail += load_f16(w.add(i * $wsize + off)) * *cys.add(i);
            }
            i += 1;
        }
        let main = hsum_ps(acc) + tail;
        match corr {
            Some((_, factor)) => main + factor * (hsum_ps128(cacc) + ctail),
            None => main,
        }
    }};
}

#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use blocks32_x4;

/// Q4_0 x Q8_0: unsigned nibbles against the activations, `8 * dx * dy * sum(y)` subtracted.
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_0(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: blocks `< nb` of both rows and `2 * nb` side floats are readable (the caller's
    // contract); every address the macro forms is inside them.
    unsafe { blocks32_x4!(nb, w, Q4_0, a, Q8_0, aux, corr = Some((0, -8.0)), |x, y| dot_u8(nibbles(x.add(2)), load256(y.add(2)))) }
}

/// Q4_1 x Q8_1: unsigned nibbles, plus `m * s` per block.
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_1(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_0`.
    unsafe { blocks32_x4!(nb, w, Q4_1, a, Q8_1, aux, corr = Some((2, 1.0)), |x, y| dot_u8(nibbles(x.add(4)), load256(y.add(4)))) }
}

/// The five-bit quants of a Q5_0/Q5_1 block (`qh` at `x + qh`, nibbles at `x + qs`), unsigned.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_quants(x: *const u8, qh: usize, qs: usize) -> __m256i {
    // SAFETY: the caller guarantees a readable block at `x`.
    unsafe { _mm256_or_si256(nibbles(x.add(qs)), _mm256_and_si256(bits_to_bytes(x.add(qh)), _mm256_set1_epi8(0x10))) }
}

/// Q5_0 x Q8_0: unsigned five-bit quants, `16 * dx * dy * sum(y)` subtracted.
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_0(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_0`.
    unsafe { blocks32_x4!(nb, w, Q5_0, a, Q8_0, aux, corr = Some((0, -16.0)), |x, y| dot_u8(q5_quants(x, 2, 6), load256(y.add(2)))) }
}

/// Q5_1 x Q8_1: unsigned five-bit quants, plus `m * s` per block.
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_1(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_0`.
    unsafe { blocks32_x4!(nb, w, Q5_1, a, Q8_1, aux, corr = Some((2, 1.0)), |x, y| dot_u8(q5_quants(x, 4, 8), load256(y.add(4)))) }
}

/// Q8_0 x Q8_0 (sign trick: the weights are signed).
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q8_0(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    // SAFETY: as `dot_q4_0`.
    unsafe { blocks32_x4!(nb, w, Q8_0, a, Q8_0, aux, corr = None, |x, y| dot_i8(load256(x.add(2)), load256(y.add(2)))) }
}

/// The IQ4_NL levels in both 128-bit halves, for `vpshufb` lookups.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn iq4nl_table() -> __m256i {
    // SAFETY: the table is 16 bytes.
    let t = unsafe { load128(KVALUES_IQ4NL.as_ptr().cast::<u8>()) };
    _mm256_broadcastsi128_si256(t)
}

/// IQ4_NL x Q8_0 (table lookup with `vpshufb`, sign trick).
///
/// # Safety
///
/// As [`super::DotFn`] (reads `aux`); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_nl(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32 {
    let table = iq4nl_table();
    // SAFETY: as `dot_q4_0`.
    unsafe {
        blocks32_x4!(nb, w, Q4_0, a, Q8_0, aux, corr = None, |x, y| dot_i8(_mm256_shuffle_epi8(table, nibbles(x.add(2))), load256(y.add(2))))
    }
}

// ---------------------------------------------------------------------------------------------
// Super-blocks of 256 against Q8_K

/// Q2_K x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q2_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm_set1_epi8(0xF);
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block `i < nb` of both rows is readable; every offset below is inside it.
        unsafe {
            let (x, y) = (w.add(i * Q2_K), a.add(i * Q8_K));
            let dy = load_f32(y);
            let d = dy * load_f16(x.add(80));
            let dmin = -dy * load_f16(x.add(82));
            let sc8 = load128(x);
            let scales = _mm_and_si128(sc8, m4);
            let mins = _mm_and_si128(_mm_srli_epi16::<4>(sc8), m4);
            let prod = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins), load256(y.add(Q8K_BSUMS)));
            accm = _mm256_fmadd_ps(_mm256_set1_ps(dmin), _mm256_cvtepi32_ps(prod), accm);
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let mut q = load256(x.add(16 + 32 * h));
                for s in 0..4 {
                    let c = 4 * h + s;
                    let qs = _mm256_and_si256(q, m3);
                    q = _mm256_srli_epi16::<2>(q);
                    let p = _mm256_maddubs_epi16(qs, load256(y.add(Q8K_QS + 32 * c)));
                    let sc = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(scales, scale_shuffle_16(c)));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
                }
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
    }
    hsum_ps(_mm256_add_ps(acc, accm))
}

/// Q3_K x Q8_K. Each quant is taken as `q + 4` (0..8, unsigned) and `4 * sum(sc * ysum)` is
/// subtracted per super-block, from the Q8_K group sums.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q3_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let m3 = _mm256_set1_epi8(3);
    let m4 = _mm256_set1_epi8(4);
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block `i < nb` of both rows is readable; every offset below is inside it.
        unsafe {
            let (x, y) = (w.add(i * Q3_K), a.add(i * Q8_K));
            let d = load_f32(y) * load_f16(x.add(108));
            let sc8 = q3_k_scales(x.add(96));
            let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load256(y.add(Q8K_BSUMS)));
            let mut hm = load256(x);
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let mut q = load256(x.add(32 + 32 * h));
                for s in 0..4 {
                    let c = 4 * h + s;
                    let low = _mm256_and_si256(q, m3);
                    q = _mm256_srli_epi16::<2>(q);
                    // Bit `c` of each hmask byte, moved to bit 2.
                    let high = _mm256_and_si256(_mm256_slli_epi16::<2>(hm), m4);
                    hm = _mm256_srli_epi16::<1>(hm);
                    let p = _mm256_maddubs_epi16(_mm256_or_si256(low, high), load256(y.add(Q8K_QS + 32 * c)));
                    let sc = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, scale_shuffle_16(c)));
                    sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, sc));
                }
            }
            sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<2>(corr));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
    }
    hsum_ps(acc)
}

/// The `min * ysum` part of a Q4_K/Q5_K super-block: the mins (8 x i16) dotted with the Q8_K
/// sums of each group of 32, as four i32 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn k4_min_products(mins: __m128i, y: *const u8) -> __m128i {
    // SAFETY: the caller guarantees a readable Q8_K block at `y`.
    let bs = unsafe { load256(y.add(Q8K_BSUMS)) };
    let ysum = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256::<1>(bs));
    _mm_madd_epi16(mins, ysum)
}

/// The Q4_K row loop; `$sum(acc, p, s)` adds the i16 pair sums `p` of one group, weighted by
/// its scale `s` (i16 lanes), to the i32 lanes of `acc`.
macro_rules! q4_k_row {
    ($nb:expr, $w:expr, $a:expr, sum = |$acc:ident, $p:ident, $s:ident| $sum:expr) => {{
        let (nb, w, a): (usize, *const u8, *const u8) = ($nb, $w, $a);
        let m4 = _mm256_set1_epi8(0xF);
        let mut acc = _mm256_setzero_ps();
        let mut accm = _mm_setzero_ps();
        for i in 0..nb {
            let (x, y) = (w.add(i * Q4_K), a.add(i * Q8_K));
            let dy = load_f32(y);
            let d = dy * load_f16(x);
            let dmin = -dy * load_f16(x.add(2));
            let (sc, mins) = k4_scales_mins(x.add(4));
            accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(k4_min_products(mins, y)), accm);
            let scales = _mm256_broadcastsi128_si256(sc);
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q = load256(x.add(16 + 32 * c));
                let ql = _mm256_and_si256(q, m4);
                let qh = _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4);
                let ($acc, $p, $s) = (sumi, _mm256_maddubs_epi16(ql, load256(y.add(Q8K_QS + 64 * c))), _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * c)));
                sumi = $sum;
                let ($acc, $p, $s) = (sumi, _mm256_maddubs_epi16(qh, load256(y.add(Q8K_QS + 64 * c + 32))), _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * c + 1)));
                sumi = $sum;
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
        hsum_ps(acc) + hsum_ps128(accm)
    }};
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use q4_k_row;

/// Q4_K x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q4_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: super-blocks `< nb` of both rows are readable (the caller's contract); every
    // offset the macro forms is inside them.
    unsafe { q4_k_row!(nb, w, a, sum = |acc, p, s| _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))) }
}

/// Q5_K x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q5_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let m4 = _mm256_set1_epi8(0xF);
    let bit4 = _mm256_set1_epi8(0x10);
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm_setzero_ps();
    for i in 0..nb {
        // SAFETY: block `i < nb` of both rows is readable; every offset below is inside it.
        unsafe {
            let (x, y) = (w.add(i * Q5_K), a.add(i * Q8_K));
            let dy = load_f32(y);
            let d = dy * load_f16(x);
            let dmin = -dy * load_f16(x.add(2));
            let (sc, mins) = k4_scales_mins(x.add(4));
            accm = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(k4_min_products(mins, y)), accm);
            let scales = _mm256_broadcastsi128_si256(sc);
            let mut hb = load256(x.add(16));
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let q = load256(x.add(48 + 32 * c));
                // Bits 2c and 2c + 1 of each qh byte (at bits 0 and 1 of `hb`) become bit 4.
                let ql = _mm256_or_si256(_mm256_and_si256(q, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(hb), bit4));
                let qh = _mm256_or_si256(
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), m4),
                    _mm256_and_si256(_mm256_slli_epi16::<3>(hb), bit4),
                );
                hb = _mm256_srli_epi16::<2>(hb);
                let pl = _mm256_maddubs_epi16(ql, load256(y.add(Q8K_QS + 64 * c)));
                let ph = _mm256_maddubs_epi16(qh, load256(y.add(Q8K_QS + 64 * c + 32)));
                let pl = _mm256_madd_epi16(pl, _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * c)));
                let ph = _mm256_madd_epi16(ph, _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * c + 1)));
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
    }
    hsum_ps(acc) + hsum_ps128(accm)
}

/// The Q6_K row loop (quants taken unsigned, `32 * sum(sc * ysum)` subtracted per super-block
/// from the Q8_K group sums); `$sum(acc, p, s)` as in [`q4_k_row`].
macro_rules! q6_k_row {
    ($nb:expr, $w:expr, $a:expr, sum = |$acc:ident, $p:ident, $s:ident| $sum:expr) => {{
        let (nb, w, a): (usize, *const u8, *const u8) = ($nb, $w, $a);
        let m4 = _mm256_set1_epi8(0xF);
        let m30 = _mm256_set1_epi8(0x30);
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        for i in 0..nb {
            let (x, y) = (w.add(i * Q6_K), a.add(i * Q8_K));
            let d = load_f32(y) * load_f16(x.add(208));
            let sc8 = load128(x.add(192));
            let corr = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), load256(y.add(Q8K_BSUMS)));
            let mut sumi = _mm256_setzero_si256();
            for h in 0..2 {
                let ql1 = load256(x.add(64 * h));
                let ql2 = load256(x.add(64 * h + 32));
                let qh = load256(x.add(128 + 32 * h));
                let q = [
                    _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30)),
                    _mm256_or_si256(_mm256_and_si256(ql2, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30)),
                    _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), _mm256_and_si256(qh, m30)),
                    _mm256_or_si256(
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                    ),
                ];
                for (s, &qs) in q.iter().enumerate() {
                    let c = 4 * h + s;
                    let ($acc, $p, $s) = (
                        sumi,
                        _mm256_maddubs_epi16(qs, load256(y.add(Q8K_QS + 32 * c))),
                        _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, scale_shuffle_16(c))),
                    );
                    sumi = $sum;
                }
            }
            sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(corr));
            if i % 2 == 0 {
                acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc0);
            } else {
                acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc1);
            }
        }
        hsum_ps(_mm256_add_ps(acc0, acc1))
    }};
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use q6_k_row;

/// Q6_K x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_q6_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: super-blocks `< nb` of both rows are readable (the caller's contract); every
    // offset the macro forms is inside them.
    unsafe { q6_k_row!(nb, w, a, sum = |acc, p, s| _mm256_add_epi32(acc, _mm256_madd_epi16(p, s))) }
}

/// IQ4_XS x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_iq4_xs(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let table = iq4nl_table();
    let mut acc = _mm256_setzero_ps();
    for i in 0..nb {
        // SAFETY: block `i < nb` of both rows is readable; every offset below is inside it.
        unsafe {
            let (x, y) = (w.add(i * IQ4_XS), a.add(i * Q8_K));
            let d = load_f32(y) * load_f16(x);
            let sh = u32::from(read_unaligned(x.add(2).cast::<u16>()));
            let sl = load_u32(x.add(4));
            let mut sumi = _mm256_setzero_si256();
            for ib in 0..8 {
                let ls = ((sl >> (4 * ib)) & 0xF) | (((sh >> (2 * ib)) & 3) << 4);
                let qx = _mm256_shuffle_epi8(table, nibbles(x.add(8 + 16 * ib)));
                let qy = load256(y.add(Q8K_QS + 32 * ib));
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, _mm256_set1_epi16(ls as i16 - 32)));
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
        }
    }
    hsum_ps(acc)
}

// ---------------------------------------------------------------------------------------------
// Float weights against f32

/// The `f32` tail of a float dot product, elements `from..n`.
///
/// # Safety
///
/// As the callers: `n` weights of `wsize` bytes at `w` and `n` floats at `a`.
#[inline]
unsafe fn float_tail(from: usize, n: usize, w: *const u8, a: *const u8, load: impl Fn(*const u8) -> f32, wsize: usize) -> f32 {
    let mut s = 0.0f32;
    for i in from..n {
        // SAFETY: `i < n`.
        s += load(unsafe { w.add(i * wsize) }) * unsafe { load_f32(a.add(4 * i)) };
    }
    s
}

/// F32 x F32 with four accumulators of eight lanes.
///
/// # Safety
///
/// As [`super::DotFn`] (`nb` is the element count); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f32(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let (w, x) = (w.cast::<f32>(), a.cast::<f32>());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load is of elements below `n`.
    unsafe {
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *acc = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(j)), _mm256_loadu_ps(x.add(j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(w.add(i)), _mm256_loadu_ps(x.add(i)), acc[0]);
            i += 8;
        }
        let s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        s + float_tail(i, n, w.cast(), a, |p| load_f32(p), 4)
    }
}

/// F16 x F32: halves widened with `vcvtph2ps`.
///
/// # Safety
///
/// As [`super::DotFn`] (`nb` is the element count); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let x = a.cast::<f32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load is of elements below `n`.
    unsafe {
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                let wv = _mm256_cvtph_ps(load128(w.add(2 * j)));
                *acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.add(j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(_mm256_cvtph_ps(load128(w.add(2 * i))), _mm256_loadu_ps(x.add(i)), acc[0]);
            i += 8;
        }
        let s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        s + float_tail(i, n, w, a, |p| crate::quants::float16::f16_to_f32(read_unaligned(p.cast::<u16>())), 2)
    }
}

/// Widens eight bfloat16 at `p` to `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn bf16x8(p: *const u8) -> __m256 {
    // SAFETY: the caller guarantees 16 readable bytes.
    let v = unsafe { load128(p) };
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(v)))
}

/// BF16 x F32: bfloat16 widened by a 16-bit shift.
///
/// # Safety
///
/// As [`super::DotFn`] (`nb` is the element count); the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_bf16(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let x = a.cast::<f32>();
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // SAFETY: every load is of elements below `n`.
    unsafe {
        while i + 32 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                let j = i + 8 * k;
                *acc = _mm256_fmadd_ps(bf16x8(w.add(2 * j)), _mm256_loadu_ps(x.add(j)), *acc);
            }
            i += 32;
        }
        while i + 8 <= n {
            acc[0] = _mm256_fmadd_ps(bf16x8(w.add(2 * i)), _mm256_loadu_ps(x.add(i)), acc[0]);
            i += 8;
        }
        let s = hsum_ps(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])));
        let bf = |p: *const u8| f32::from_bits(u32::from(read_unaligned(p.cast::<u16>())) << 16);
        s + float_tail(i, n, w, a, bf, 2)
    }
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers, bit-exact with the references in `crate::quants`

/// Largest `|x|` of the 32 floats at `x`, and the four vectors.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn load32_amax(x: *const f32) -> ([__m256; 4], f32) {
    // SAFETY: the caller guarantees 32 readable floats.
    let v = unsafe { [_mm256_loadu_ps(x), _mm256_loadu_ps(x.add(8)), _mm256_loadu_ps(x.add(16)), _mm256_loadu_ps(x.add(24))] };
    let sign = _mm256_set1_ps(-0.0);
    let m = _mm256_max_ps(
        _mm256_max_ps(_mm256_andnot_ps(sign, v[0]), _mm256_andnot_ps(sign, v[1])),
        _mm256_max_ps(_mm256_andnot_ps(sign, v[2]), _mm256_andnot_ps(sign, v[3])),
    );
    (v, hmax_ps(m))
}

/// Largest of the eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn hmax_ps(m: __m256) -> f32 {
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let m = _mm_max_ss(m, _mm_movehdup_ps(m));
    _mm_cvtss_f32(m)
}

/// Packs four vectors of eight i32 (each in -128..=127) into 32 bytes in order.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn pack_i32x32(i: [__m256i; 4]) -> __m256i {
    let a = _mm256_packs_epi32(i[0], i[1]);
    let b = _mm256_packs_epi32(i[2], i[3]);
    // The packs work within 128-bit halves; this puts the dwords back in order.
    _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))
}

/// `f32` to IEEE half bits, round to nearest even (as `half::f16::from_f32`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f32_to_f16_bits(v: f32) -> u16 {
    _mm_extract_epi16::<0>(_mm_cvtps_ph::<{ _MM_FROUND_TO_NEAREST_INT }>(_mm_set_ss(v))) as u16
}

/// Quantizes one block of 32 as ggml's x86 Q8_0 activation quantizer does (times
/// `127 / max|x|`, ties to even); returns (d, quants as i32 vectors).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn q8_block(x: *const f32) -> (f32, [__m256i; 4]) {
    // SAFETY: the caller guarantees 32 readable floats.
    let (v, amax) = unsafe { load32_amax(x) };
    // A NaN: scale NaN, quants 0 (`quants::q8_0::act_scale_of`).
    let nan = _mm256_or_ps(
        _mm256_or_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v[0], v[0]), _mm256_cmp_ps::<_CMP_UNORD_Q>(v[1], v[1])),
        _mm256_or_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(v[2], v[2]), _mm256_cmp_ps::<_CMP_UNORD_Q>(v[3], v[3])),
    );
    if _mm256_movemask_ps(nan) != 0 {
        return (f32::NAN, [_mm256_setzero_si256(); 4]);
    }
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    // Loops, not closures: closures do not inherit target features on every supported Rust.
    let mut q = [_mm256_setzero_si256(); 4];
    for (q, &v) in q.iter_mut().zip(&v) {
        *q = _mm256_cvtps_epi32(_mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(v, id)));
    }
    (d, q)
}

/// Q8_0 activation quantizer, bit-exact with `quants::q8_0::quantize_row_act`.
///
/// # Safety
///
/// As [`super::QuantFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_0(x: *const f32, nb: usize, out: *mut u8) {
    for b in 0..nb {
        // SAFETY: block `b < nb` of both buffers is in range (the caller's contract).
        unsafe {
            let (d, q) = q8_block(x.add(32 * b));
            let o = out.add(Q8_0 * b);
            o.cast::<u16>().write_unaligned(f32_to_f16_bits(d));
            _mm256_storeu_si256(o.add(2).cast::<__m256i>(), pack_i32x32(q));
        }
    }
}

/// Q8_1 activation quantizer, bit-exact with `quants::q8_1::quantize_row_act`.
///
/// # Safety
///
/// As [`super::QuantFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_1(x: *const f32, nb: usize, out: *mut u8) {
    for b in 0..nb {
        // SAFETY: block `b < nb` of both buffers is in range.
        unsafe {
            let (d, q) = q8_block(x.add(32 * b));
            let sum = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
            let o = out.add(Q8_1 * b);
            o.cast::<u16>().write_unaligned(f32_to_f16_bits(d));
            o.add(2).cast::<u16>().write_unaligned(f32_to_f16_bits(sum as f32 * d));
            _mm256_storeu_si256(o.add(4).cast::<__m256i>(), pack_i32x32(q));
        }
    }
}

/// Q8_K activation quantizer, bit-exact with `quants::q8_k::quantize_row`: the first element of
/// largest magnitude maps to -127, rounding is to nearest even.
///
/// # Safety
///
/// As [`super::QuantFn`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_k(x: *const f32, nb: usize, out: *mut u8) {
    let sign = _mm256_set1_ps(-0.0);
    for b in 0..nb {
        // SAFETY: block `b < nb` of both buffers is in range; every access below is inside it.
        unsafe {
            let xb = x.add(256 * b);
            let o = out.add(Q8_K * b);
            let mut m = _mm256_setzero_ps();
            let mut nan = _mm256_setzero_ps();
            for c in 0..32 {
                let v = _mm256_loadu_ps(xb.add(8 * c));
                m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v));
                nan = _mm256_or_ps(nan, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
            }
            let amax = hmax_ps(m);
            if amax == 0.0 || _mm256_movemask_ps(nan) != 0 {
                // All zero; or a NaN: scale NaN, quants 0 (`quants::q8_k::quantize_row`).
                std::ptr::write_bytes(o, 0, Q8_K);
                if _mm256_movemask_ps(nan) != 0 {
                    o.cast::<f32>().write_unaligned(f32::NAN);
                }
                continue;
            }
            // The reference keeps the first element of largest magnitude, with its sign.
            let target = _mm256_set1_ps(amax);
            let mut max = amax;
            for c in 0..32 {
                let eq = _mm256_cmp_ps::<_CMP_EQ_OQ>(_mm256_andnot_ps(sign, _mm256_loadu_ps(xb.add(8 * c))), target);
                let bits = _mm256_movemask_ps(eq);
                if bits != 0 {
                    max = *xb.add(8 * c + bits.trailing_zeros() as usize);
                    break;
                }
            }
            let iscale = -127.0 / max;
            let vs = _mm256_set1_ps(iscale);
            let cap = _mm256_set1_epi32(127);
            let ones = _mm256_set1_epi16(1);
            for c in 0..8 {
                let mut q = [_mm256_setzero_si256(); 4];
                for (k, q) in q.iter_mut().enumerate() {
                    let v = _mm256_mul_ps(vs, _mm256_loadu_ps(xb.add(32 * c + 8 * k)));
                    let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                    *q = _mm256_min_epi32(_mm256_cvtps_epi32(r), cap);
                }
                let packed = pack_i32x32(q);
                _mm256_storeu_si256(o.add(Q8K_QS + 32 * c).cast::<__m256i>(), packed);
                // Group sums: pairs, then quads, then the two groups of 16 of this chunk.
                let quads = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi8(1), packed), ones);
                let h = _mm256_hadd_epi32(quads, quads);
                let h = _mm256_hadd_epi32(h, h);
                let s0 = _mm256_extract_epi32::<0>(h) as i16;
                let s1 = _mm256_extract_epi32::<4>(h) as i16;
                o.add(Q8K_BSUMS + 4 * c).cast::<i16>().write_unaligned(s0);
                o.add(Q8K_BSUMS + 4 * c + 2).cast::<i16>().write_unaligned(s1);
            }
            o.cast::<f32>().write_unaligned(1.0 / iscale);
        }
    }
}

/// Q5_0 in [`crate::repack::Layout::Q5_0x8`] x Q8_0 with AVX2: one group of eight rows, each
/// row's sums in its own 32-bit lane, as the VNNI kernel; the fifth bits are spread from each
/// ready-made mask with `vpshufb`, a bit test and a compare, and the products go through
/// `vpmaddubsw` (two steps summed in 16 bits, at most `4 * 31 * 128` each, then `vpmaddwd`).
///
/// # Safety
///
/// As [`super::scalar::matvec_q5_0x8`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matvec_q5_0x8(t: &super::Tile) {
    use crate::repack::{Q5_0X8_BLOCK, Q5_0X8_MASKS, Q5_0X8_NIBBLES, Q5_0X8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0xF);
    let bit4 = _mm256_set1_epi8(0x10);
    // Byte `k` of a vector takes byte `k / 8` of the broadcast mask (`vpshufb` stays within
    // 128-bit halves, which hold the same four bytes), then bit `k % 8` of it is tested.
    let spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    let sel = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    // SAFETY: the group's `nb` blocks, the activation row's `nb` blocks and its side data are
    // readable (the caller's contract); `read_unaligned` needs no alignment.
    unsafe {
        let fifth = |m: *const u8| {
            let v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32(read_unaligned(m.cast::<i32>())), spread), sel);
            _mm256_and_si256(_mm256_cmpeq_epi8(v, sel), bit4)
        };
        for b in 0..t.nb {
            let gb = t.w.add(b * Q5_0X8_BLOCK);
            let y = t.a.add(b * 34 + 2);
            let mut s = _mm256_setzero_si256();
            let mut pair = _mm256_setzero_si256();
            for j in 0..4 {
                let v = load256(gb.add(Q5_0X8_NIBBLES + 32 * j));
                let lo = _mm256_or_si256(_mm256_and_si256(v, m4), fifth(gb.add(Q5_0X8_MASKS + 8 * j)));
                let hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), fifth(gb.add(Q5_0X8_MASKS + 8 * j + 4)));
                let yl = _mm256_set1_epi32(read_unaligned(y.add(4 * j).cast::<i32>()));
                let yh = _mm256_set1_epi32(read_unaligned(y.add(16 + 4 * j).cast::<i32>()));
                let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, yl), _mm256_maddubs_epi16(hi, yh));
                if j % 2 == 0 {
                    pair = p;
                } else {
                    s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_add_epi16(pair, p), ones));
                }
            }
            let sf = _mm256_cvtepi32_ps(s);
            let dx = _mm256_cvtph_ps(load128(gb.add(Q5_0X8_SCALES)));
            let dy = _mm256_set1_ps(*t.aux.add(b));
            let cy = _mm256_set1_ps(-16.0 * *t.aux.add(t.nb + b));
            acc[b % 4] = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(sf, dy, cy), acc[b % 4]);
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

/// The eight rows' scales and mins of a [`crate::repack::Layout::Q4_Kx8`] group super-block,
/// unpacked from its three vectors of scale words (`u0`, `u1`, `u2`: bytes 0..4, 4..8 and 8..12
/// of each row's packed scales, one row per 32-bit lane), as `k4_scales_mins` unpacks one row:
/// per lane, the bytes of scales 0..4, scales 4..8, mins 0..4 and mins 4..8.
///
/// # Safety
///
/// The CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_kx8_scales_mins(u0: __m256i, u1: __m256i, u2: __m256i) -> [__m256i; 4] {
    let m6 = _mm256_set1_epi8(0x3F);
    let m4 = _mm256_set1_epi8(0x0F);
    let m2 = _mm256_set1_epi8(0x03);
    // Bits 6 and 7 of each byte of `u`, moved to bits 4 and 5.
    let top = |u: __m256i| _mm256_slli_epi32::<4>(_mm256_and_si256(_mm256_srli_epi32::<6>(u), m2));
    [
        _mm256_and_si256(u0, m6),
        _mm256_or_si256(_mm256_and_si256(u2, m4), top(u0)),
        _mm256_and_si256(u1, m6),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32::<4>(u2), m4), top(u1)),
    ]
}

/// `vpshufb` control that puts byte `k` of each 32-bit lane in both 16-bit halves of the lane
/// (`words`) or only in the low byte (else), the rest zero.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn lane_byte_ctrl(k: usize, words: bool) -> __m256i {
    let mut c = [0x80u8; 32];
    for lane in 0..8 {
        let base = (4 * lane % 16) as u8;
        c[4 * lane] = base + k as u8;
        if words {
            c[4 * lane + 2] = base + k as u8;
        }
    }
    // SAFETY: 32 readable bytes.
    unsafe { load256(c.as_ptr()) }
}

/// The operands of the eight rows' `sum_k m_k * (bsums[2k] + bsums[2k + 1])` of a Q4_Kx8
/// group super-block (mins 0..4 and 4..8 as bytes per lane, `mn_lo`, `mn_hi`) against Q8_K
/// super-block `y`: four pairs of vectors whose 16-bit products, summed pairwise into 32-bit
/// lanes (`vpmaddwd`, `vpdpwssd`) and over the pairs, give each row's sum in its lane. In each
/// pair the first holds two mins of the lane's row as i16, the second the two matching
/// activation group sums (at most `32 * 128` in magnitude) broadcast.
///
/// # Safety
///
/// `y` must point to a readable Q8_K super-block; the CPU must have AVX2.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_kx8_min_pairs(mn_lo: __m256i, mn_hi: __m256i, y: *const u8) -> [(__m256i, __m256i); 4] {
    // Mins (m0, m1) and (m2, m3) of each lane's four as i16 (and so for `mn_hi`).
    let c01 = _mm256_setr_epi8(0, -128, 1, -128, 4, -128, 5, -128, 8, -128, 9, -128, 12, -128, 13, -128,
        0, -128, 1, -128, 4, -128, 5, -128, 8, -128, 9, -128, 12, -128, 13, -128);
    let c23 = _mm256_setr_epi8(2, -128, 3, -128, 6, -128, 7, -128, 10, -128, 11, -128, 14, -128, 15, -128,
        2, -128, 3, -128, 6, -128, 7, -128, 10, -128, 11, -128, 14, -128, 15, -128);
    // SAFETY: the 32 bytes of block sums lie in the super-block (the caller's contract).
    let bs = unsafe { _mm_hadd_epi16(load128(y.add(Q8K_BSUMS)), load128(y.add(Q8K_BSUMS + 16))) };
    // 32-bit word `d` of `bs` holds the sums of groups 2d and 2d + 1.
    let w = [_mm_cvtsi128_si32(bs), _mm_extract_epi32::<1>(bs), _mm_extract_epi32::<2>(bs), _mm_extract_epi32::<3>(bs)];
    [
        (_mm256_shuffle_epi8(mn_lo, c01), _mm256_set1_epi32(w[0])),
        (_mm256_shuffle_epi8(mn_lo, c23), _mm256_set1_epi32(w[1])),
        (_mm256_shuffle_epi8(mn_hi, c01), _mm256_set1_epi32(w[2])),
        (_mm256_shuffle_epi8(mn_hi, c23), _mm256_set1_epi32(w[3])),
    ]
}

/// Q4_K in [`crate::repack::Layout::Q4_Kx8`] x Q8_K with AVX2: one group of eight rows, each
/// row's sums in its own 32-bit lane. Per group of 32 elements, eight steps of four: the step's
/// nibbles of the eight rows (one 32-byte load serves the low group and the high one), four
/// activation bytes broadcast, `vpmaddubsw` into 16-bit sums (eight steps reach at most
/// `8 * 2 * 15 * 128`, no saturation), then one `vpmaddwd` with the group scale of each lane's
/// row in both halves of the lane. The mins as [`q4_kx8_min_pairs`]; `d` and `dmin` of the
/// eight rows as two vectors of `f16`.
///
/// # Safety
///
/// As [`super::scalar::matvec_q4_kx8`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matvec_q4_kx8(t: &super::Tile) {
    use crate::repack::{Q4_KX8_BLOCK, Q4_KX8_D, Q4_KX8_DMIN, Q4_KX8_QS, Q4_KX8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0xF);
    let sc_ctrl = [lane_byte_ctrl(0, true), lane_byte_ctrl(1, true), lane_byte_ctrl(2, true), lane_byte_ctrl(3, true)];
    let mut acc = _mm256_setzero_ps();
    let mut accm = _mm256_setzero_ps();
    // SAFETY: the group's `nb` super-blocks and the activation row's are readable (the caller's
    // contract); `read_unaligned` needs no alignment.
    unsafe {
        for b in 0..t.nb {
            let gb = t.w.add(b * Q4_KX8_BLOCK);
            let y = t.a.add(b * Q8_K);
            let sc = gb.add(Q4_KX8_SCALES);
            let [sc_lo, sc_hi, mn_lo, mn_hi] = q4_kx8_scales_mins(load256(sc), load256(sc.add(32)), load256(sc.add(64)));
            let mut sumi = _mm256_setzero_si256();
            for c in 0..4 {
                let mut pl = _mm256_setzero_si256();
                let mut ph = _mm256_setzero_si256();
                for j in 0..8 {
                    let v = load256(gb.add(Q4_KX8_QS + 32 * (8 * c + j)));
                    let yl = _mm256_set1_epi32(read_unaligned(y.add(Q8K_QS + 64 * c + 4 * j).cast::<i32>()));
                    let yh = _mm256_set1_epi32(read_unaligned(y.add(Q8K_QS + 64 * c + 32 + 4 * j).cast::<i32>()));
                    pl = _mm256_add_epi16(pl, _mm256_maddubs_epi16(_mm256_and_si256(v, m4), yl));
                    ph = _mm256_add_epi16(ph, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), yh));
                }
                // Groups 2c and 2c + 1: bytes (2c, 2c + 1) % 4 of the scales of 0..4 or 4..8.
                let scv = if c < 2 { sc_lo } else { sc_hi };
                let sl = _mm256_shuffle_epi8(scv, sc_ctrl[(2 * c) % 4]);
                let sh = _mm256_shuffle_epi8(scv, sc_ctrl[(2 * c + 1) % 4]);
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_madd_epi16(pl, sl), _mm256_madd_epi16(ph, sh)));
            }
            let mut summ = _mm256_setzero_si256();
            for (m, bsum) in q4_kx8_min_pairs(mn_lo, mn_hi, y) {
                summ = _mm256_add_epi32(summ, _mm256_madd_epi16(m, bsum));
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

/// Q4_0 in [`crate::repack::Layout::Q4_0x8`] x Q8_0 with AVX2: one group of eight rows, each
/// row's sums in its own 32-bit lane, as the VNNI kernel; the products go through `vpmaddubsw`
/// (the four steps of a half summed in 16 bits, at most `4 * 2 * 15 * 128`), then `vpmaddwd`.
///
/// # Safety
///
/// As [`super::scalar::matvec_q4_0x8`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matvec_q4_0x8(t: &super::Tile) {
    use crate::repack::{Q4_0X8_BLOCK, Q4_0X8_NIBBLES, Q4_0X8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0xF);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 2];
    // SAFETY: the group's `nb` blocks, the activation row's `nb` blocks and its side data are
    // readable (the caller's contract); `read_unaligned` needs no alignment.
    unsafe {
        let bcast = |p: *const u8| _mm256_set1_epi32(read_unaligned(p.cast::<i32>()));
        for b in 0..t.nb {
            let gb = t.w.add(b * Q4_0X8_BLOCK);
            let y = t.a.add(b * Q8_0 + 2);
            let mut p = _mm256_setzero_si256();
            for j in 0..4 {
                let v = load256(gb.add(Q4_0X8_NIBBLES + 32 * j));
                let lo = _mm256_maddubs_epi16(_mm256_and_si256(v, m4), bcast(y.add(4 * j)));
                let hi = _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), bcast(y.add(16 + 4 * j)));
                p = _mm256_add_epi16(p, _mm256_add_epi16(lo, hi));
            }
            let s = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
            let dx = _mm256_cvtph_ps(load128(gb.add(Q4_0X8_SCALES)));
            let dy = _mm256_set1_ps(*t.aux.add(b));
            let cy = _mm256_set1_ps(-8.0 * *t.aux.add(t.nb + b));
            acc[b % 2] = _mm256_fmadd_ps(dx, _mm256_fmadd_ps(s, dy, cy), acc[b % 2]);
        }
        store_rows(t, _mm256_add_ps(acc[0], acc[1]));
    }
}

/// Q6_K in [`crate::repack::Layout::Q6_Kx8`] x Q8_K with AVX2: one group of eight rows, each
/// row's sums in its own 32-bit lane, as the VNNI kernel; the products go through `vpmaddubsw`
/// (two steps summed in 16 bits, at most `2 * 2 * 63 * 128`), then `vpmaddwd` with the group
/// scale of each lane's row in both halves of the lane; the quants' offset of 32 is taken out
/// once per super-block, `32 * sum_g scale_g * bsum_g`, with four more `vpmaddwd`.
///
/// # Safety
///
/// As [`super::scalar::matvec_q6_kx8`]; the CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn matvec_q6_kx8(t: &super::Tile) {
    use crate::repack::{Q6_KX8_BLOCK, Q6_KX8_D, Q6_KX8_QS, Q6_KX8_SCALES};
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let m4 = _mm256_set1_epi8(0x0F);
    let m30 = _mm256_set1_epi8(0x30);
    // Byte `k` of each 32-bit lane to the high byte of both of its words, and bytes (0, 1) or
    // (2, 3) to the high bytes of its two words: shifted down, signed words.
    let both = |k: i8| _mm256_broadcastsi128_si256(_mm_setr_epi8(-128, k, -128, k, -128, 4 + k, -128, 4 + k, -128, 8 + k, -128, 8 + k, -128, 12 + k, -128, 12 + k));
    let pair = |k: i8| _mm256_broadcastsi128_si256(_mm_setr_epi8(-128, k, -128, k + 1, -128, 4 + k, -128, 5 + k, -128, 8 + k, -128, 9 + k, -128, 12 + k, -128, 13 + k));
    let sc_ctrl = [both(0), both(1), both(2), both(3)];
    let pair_ctrl = [pair(0), pair(2)];
    let mut acc = _mm256_setzero_ps();
    // SAFETY: the group's `nb` super-blocks and the activation row's are readable (the caller's
    // contract); `read_unaligned` needs no alignment.
    unsafe {
        let bcast = |p: *const u8| _mm256_set1_epi32(read_unaligned(p.cast::<i32>()));
        // Low four bits from `lo`, the top two (already at bits 4 and 5) from `hi`.
        let six = |lo: __m256i, hi: __m256i| _mm256_or_si256(_mm256_and_si256(lo, m4), _mm256_and_si256(hi, m30));
        for b in 0..t.nb {
            let gb = t.w.add(b * Q6_KX8_BLOCK);
            let y = t.a.add(b * Q8_K);
            let scv = [0, 1, 2, 3].map(|i| load256(gb.add(Q6_KX8_SCALES + 32 * i)));
            let mut sumi = _mm256_setzero_si256();
            for hh in 0..4 {
                let (h, half) = (hh / 2, hh % 2);
                let mut p = [_mm256_setzero_si256(); 4];
                let mut s32 = [_mm256_setzero_si256(); 4];
                for jj in 0..4 {
                    let j = 4 * half + jj;
                    let step = gb.add(Q6_KX8_QS + 96 * (8 * h + j));
                    let (qa, qb, hv) = (load256(step), load256(step.add(32)), load256(step.add(64)));
                    let q = [
                        six(qa, _mm256_slli_epi16::<4>(hv)),
                        six(qb, _mm256_slli_epi16::<2>(hv)),
                        six(_mm256_srli_epi16::<4>(qa), hv),
                        six(_mm256_srli_epi16::<4>(qb), _mm256_srli_epi16::<2>(hv)),
                    ];
                    let ys = y.add(Q8K_QS + 128 * h + 4 * j);
                    for s in 0..4 {
                        p[s] = _mm256_add_epi16(p[s], _mm256_maddubs_epi16(q[s], bcast(ys.add(32 * s))));
                    }
                    if jj % 2 == 1 {
                        for s in 0..4 {
                            let g = 8 * h + 2 * s + half;
                            let sc = _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(scv[g / 4], sc_ctrl[g % 4]));
                            s32[s] = _mm256_add_epi32(s32[s], _mm256_madd_epi16(p[s], sc));
                            p[s] = _mm256_setzero_si256();
                        }
                    }
                }
                sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(s32[0], s32[1]), _mm256_add_epi32(s32[2], s32[3])));
            }
            // The offset: 32 * sum_g scale_g * bsum_g, pairs of groups per `vpmaddwd`.
            let bs = [load128(y.add(Q8K_BSUMS)), load128(y.add(Q8K_BSUMS + 16))];
            let mut corr = _mm256_setzero_si256();
            for g2 in 0..8 {
                // Groups 2 * g2 and 2 * g2 + 1: scale bytes (2 * g2) % 4 and + 1 of vector g2 / 2.
                let scp = _mm256_srai_epi16::<8>(_mm256_shuffle_epi8(scv[g2 / 2], pair_ctrl[g2 % 2]));
                let w = bs[g2 / 4];
                let bp = match g2 % 4 {
                    0 => _mm_cvtsi128_si32(w),
                    1 => _mm_extract_epi32::<1>(w),
                    2 => _mm_extract_epi32::<2>(w),
                    _ => _mm_extract_epi32::<3>(w),
                };
                corr = _mm256_add_epi32(corr, _mm256_madd_epi16(scp, _mm256_set1_epi32(bp)));
            }
            let sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32::<5>(corr));
            let d = _mm256_mul_ps(_mm256_cvtph_ps(load128(gb.add(Q6_KX8_D))), _mm256_set1_ps(load_f32(y)));
            acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(sumi), acc);
        }
        store_rows(t, acc);
    }
}
