//! llama.cpp's numerics on an x86 CPU with AVX2 (ggml's CPU backend, `GGML_USE_LLAMAFILE` and
//! `GGML_USE_CPU_REPACK` on, as llama-cpp-python builds it), reproduced operation for operation so
//! that a forward pass gives the same floats, bit for bit, as llama.cpp on the same machine.
//!
//! Floating-point sums depend on their order. Our fast kernels sum in the order that is fastest
//! here; their logits stand as far from llama.cpp's as llama.cpp's own stand from themselves when
//! only its batching changes, and greedy decoding parts from llama.cpp's wherever two tokens are
//! within a few hundredths. These functions instead keep every order that llama.cpp's kernels
//! keep: how many partial sums a dot product carries (the lanes of a 256-bit register), which
//! products are fused multiply-adds, how the lanes are added at the end, which sums are kept in
//! double precision, and where values are rounded to f16. Integer parts of the quantized products
//! are exact in any order, so only their grouping into lanes is kept.
//!
//! What each function reproduces (the ggml sources, October 2026):
//! - [`rms_norm`]: `ggml_compute_forward_rms_norm_f32` (squares summed in double, one by one).
//! - [`matmul`]: the activations quantized as `quantize_row_q8_0` (AVX2) or
//!   `quantize_row_q8_K` (reference) do; then per weight type
//!   - Q4_0 is not covered (llama.cpp repacks it and sums per 8 rows);
//!   - Q5_0, Q8_0: eight lane sums of `fma(d_w * d_a, lane, acc)` over the blocks, one lane per
//!     four consecutive products, added as `hsum_float_8` does (`ggml_vec_dot_q5_0_q8_0` and
//!     `_q8_0_q8_0` for one token, llamafile's `tinyBLAS_Q0_AVX` for more: the same floats);
//!   - Q4_K: the repacked 8x8 kernels (`ggml_gemv_q4_K_8x8_q8_K`, `ggml_gemm_..`): one integer
//!     per super-block for the scales and one for the mins, each folded into its own float sum
//!     by a fused multiply-add, the two subtracted at the end;
//!   - Q6_K: below 8 tokens `ggml_vec_dot_q6_K_q8_K` (eight integer lanes per super-block, the
//!     mins subtracted per lane, folded by fused multiply-adds, `hsum_float_8`); from 8 tokens
//!     ggml's tiled K-quant product (one integer per super-block, scaled, then folded).
//! - [`attention`]: the non-flash path of llama.cpp's graph (`kq = K q`, `soft_max_ext`,
//!   `kqv = V^T softmax`) over an f16 cache: the query and the softmax weights rounded to f16;
//!   for one token `ggml_vec_dot_f16` (four registers of eight lanes, reduced pairwise), for more
//!   llamafile's f16 `tinyBLAS` (one register of eight lanes); the softmax's exponentials by
//!   `ggml_v_expf`'s polynomial, summed eight at a time into a double.
//!
//! Everything here is plain scalar Rust; `f32::mul_add` is the fused multiply-add, exact whatever
//! the CPU (the hot loops are compiled for FMA where the CPU has it, which changes their speed,
//! not their results).

use half::f16;
use rayon::prelude::*;

use crate::attention::{AttnMask, AttnShape, KvView};
use crate::matmul::{MatError, QMatrix};
use crate::quants::{q8_0, q8_k, BlockQ4K, BlockQ5_0, BlockQ6K, BlockQ8K, BlockQ8_0, Block, QK_K};
use crate::GgmlType;

/// Whether [`matmul`] reproduces llama.cpp's products for weights of type `ty`.
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K | GgmlType::Q6_K)
}

/// RMSNorm of each row of `x` (rows of `w.len()` elements) times `w`, into `out`, as ggml:
/// the squares (each rounded to f32) summed in double in order, the mean rounded to f32,
/// `scale = 1 / sqrtf(mean + eps)`, each element `(x * scale) * w`.
pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
    out.copy_from_slice(x);
    rms_norm_inplace(out, w, eps);
}

/// [`rms_norm`] in place.
pub fn rms_norm_inplace(x: &mut [f32], w: &[f32], eps: f32) {
    let n = w.len();
    debug_assert!(n > 0 && x.len() % n == 0);
    for xr in x.chunks_exact_mut(n) {
        let scale = rms_scale(xr, eps);
        for (v, &g) in xr.iter_mut().zip(w) {
            *v = *v * scale * g;
        }
    }
}

fn rms_scale(x: &[f32], eps: f32) -> f32 {
    let mut sum = 0f64;
    for &v in x {
        sum += f64::from(v * v);
    }
    let mean = (sum / x.len() as f64) as f32;
    1.0 / (mean + eps).sqrt()
}

/// `ggml_vec_geglu_f32` with `GGML_GELU_FP16`: `gate[i] = gelu(gate[i]) * up[i]` by ggml's f16
/// table ([`crate::ops::gelu_tanh_f16`]), except that a gate at or below -10 gives +0 whatever
/// `up` is (not `0 * up`, which is -0 for a negative `up`).
pub fn geglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = if *g <= -10.0 { 0.0 } else { crate::ops::gelu_tanh_f16(*g) * u };
    }
}

/// `hsum_float_8` (and llamafile's `hsum` of a 256-bit register): the upper four lanes added to
/// the lower four, then lanes 0+2 and 1+3, then those two.
#[inline(always)]
fn hsum8(a: &[f32; 8]) -> f32 {
    let r = [a[4] + a[0], a[5] + a[1], a[6] + a[2], a[7] + a[3]];
    (r[0] + r[2]) + (r[1] + r[3])
}

/// The eight lane sums of `_mm256_madd_epi16(1, _mm256_maddubs_epi16(|w|, sign(a, w)))`: lane
/// `l` holds the products of elements `4l..4l+4`, each pair saturated to i16 as `maddubs` does.
/// (`sign(a, w)` of an activation -128 would wrap; Q8_0 activations are within ±127.)
#[inline(always)]
fn lanes_i8(w: &[i8; 32], a: &[i8; 32]) -> [i32; 8] {
    let mut out = [0i32; 8];
    for (l, o) in out.iter_mut().enumerate() {
        let pair = |i: usize| (i32::from(w[i]) * i32::from(a[i]) + i32::from(w[i + 1]) * i32::from(a[i + 1])).clamp(-32768, 32767);
        *o = pair(4 * l) + pair(4 * l + 2);
    }
    out
}

/// A Q5_0 block's 32 values (`-16..=15`), in element order.
#[inline(always)]
fn q5_0_values(b: &BlockQ5_0) -> [i8; 32] {
    let qh = u32::from_le_bytes(b.qh);
    let mut v = [0i8; 32];
    for j in 0..16 {
        let lo = (b.qs[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
        let hi = (b.qs[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        v[j] = lo as i8 - 16;
        v[j + 16] = hi as i8 - 16;
    }
    v
}

/// One row of a Q5_0 or Q8_0 matrix against Q8_0 activations.
#[inline(always)]
fn dot_q0(values: impl Fn(usize) -> (f32, [i8; 32]), a: &[BlockQ8_0]) -> f32 {
    let mut acc = [0f32; 8];
    for (i, ab) in a.iter().enumerate() {
        let (wd, wq) = values(i);
        let d = wd * ab.d.to_f32();
        let lanes = lanes_i8(&wq, &ab.qs);
        for (s, &l) in acc.iter_mut().zip(&lanes) {
            *s = d.mul_add(l as f32, *s);
        }
    }
    hsum8(&acc)
}

/// One row of a Q4_K matrix against Q8_K activations (the repacked 8x8 kernels). The GEMV
/// (`ggml_gemv_q4_K_8x8_q8_K`, one token) folds one integer per super-block into each float sum;
/// the GEMM (`ggml_gemm_..`, tokens four at a time: `per_chunk`) one per 64 elements.
#[inline(always)]
fn dot_q4_k(w: &[BlockQ4K], a: &[BlockQ8K], per_chunk: bool) -> f32 {
    let (mut acc, mut acc_min) = (0f32, 0f32);
    for (wb, ab) in w.iter().zip(a) {
        let (d, dmin) = (wb.d.to_f32() * ab.d, wb.dmin.to_f32() * ab.d);
        let (mut isum, mut imin) = (0i32, 0i32);
        for j in 0..8 {
            let (sc, m) = crate::quants::search::get_scale_min_k4(j, &wb.scales);
            let (c, hi) = (j / 2, j % 2 == 1);
            let mut dot = 0i32;
            for e in 0..32 {
                let byte = wb.qs[32 * c + e];
                let q = if hi { byte >> 4 } else { byte & 0x0F };
                dot += i32::from(q) * i32::from(ab.qs[64 * c + 32 * (j % 2) + e]);
            }
            isum += i32::from(sc) * dot;
            imin += i32::from(m) * (i32::from(ab.bsums[2 * j]) + i32::from(ab.bsums[2 * j + 1]));
            if per_chunk && j % 2 == 1 {
                acc = (isum as f32).mul_add(d, acc);
                acc_min = (imin as f32).mul_add(dmin, acc_min);
                (isum, imin) = (0, 0);
            }
        }
        if !per_chunk {
            acc = (isum as f32).mul_add(d, acc);
            acc_min = (imin as f32).mul_add(dmin, acc_min);
        }
    }
    acc - acc_min
}

/// A Q6_K block's 256 six-bit codes (`0..=63`; the value is `code - 32`), in element order.
#[inline(always)]
fn q6_k_codes(wb: &BlockQ6K) -> [u8; QK_K] {
    let mut codes = [0u8; QK_K];
    for half in 0..2 {
        let (ql, qh) = (&wb.ql[64 * half..], &wb.qh[32 * half..]);
        for k in 0..4 {
            for b in 0..32 {
                let low = if k % 2 == 0 { ql[b] } else { ql[32 + b] };
                let low = if k < 2 { low & 0x0F } else { low >> 4 };
                codes[128 * half + 32 * k + b] = low | (((qh[b] >> (2 * k)) & 3) << 4);
            }
        }
    }
    codes
}

/// One row of a Q6_K matrix against Q8_K activations (`ggml_vec_dot_q6_K_q8_K`, AVX2): lane `l`
/// of a super-block holds the products of elements `32m + 4l .. 32m + 4l + 4` of every 32 `m`,
/// less `32 * scale * bsum` of its two groups of 16 (elements `32l .. 32l + 32`).
#[inline(always)]
fn dot_q6_k(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = [0f32; 8];
    for (wb, ab) in w.iter().zip(a) {
        let d = ab.d * wb.d.to_f32();
        let codes = q6_k_codes(wb);
        let mut lanes = [0i32; 8];
        for (e, &u) in codes.iter().enumerate() {
            lanes[e % 32 / 4] += i32::from(u) * i32::from(ab.qs[e]) * i32::from(wb.scales[e / 16]);
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            let sub = i32::from(ab.bsums[2 * l]) * i32::from(wb.scales[2 * l]) + i32::from(ab.bsums[2 * l + 1]) * i32::from(wb.scales[2 * l + 1]);
            *lane -= sub << 5;
        }
        for (s, &l) in acc.iter_mut().zip(&lanes) {
            *s = d.mul_add(l as f32, *s);
        }
    }
    hsum8(&acc)
}

/// One row of a Q6_K matrix against Q8_K activations by ggml's tiled K-quant product
/// (`ggml_compute_forward_mul_mat_tiled`, taken for batches of 8 tokens or more): per
/// super-block the exact integer `sum(scale * (q - 32) * a)`, times the weight's scale, folded
/// into one float sum by a fused multiply-add with the activation's scale.
#[inline(always)]
fn dot_q6_k_tiled(w: &[BlockQ6K], a: &[BlockQ8K]) -> f32 {
    let mut acc = 0f32;
    for (wb, ab) in w.iter().zip(a) {
        let codes = q6_k_codes(wb);
        let mut sum = 0i32;
        for (e, &u) in codes.iter().enumerate() {
            sum += i32::from(wb.scales[e / 16]) * (i32::from(u) - 32) * i32::from(ab.qs[e]);
        }
        acc = (wb.d.to_f32() * sum as f32).mul_add(ab.d, acc);
    }
    acc
}

/// `out = W x` for `n` vectors (`x`: `[n][cols]`, `out`: `[n][rows]`) as llama.cpp computes it
/// on x86 with AVX2; for the weight types of [`supports`], read in ggml's row layout.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), MatError> {
    if x.len() != n * w.cols {
        return Err(MatError::Shape { what: "activations", expected: n * w.cols, got: x.len() });
    }
    if out.len() != n * w.rows {
        return Err(MatError::Shape { what: "output", expected: n * w.rows, got: out.len() });
    }
    if !supports(w.ty) {
        return Err(MatError::Unsupported { ty: w.ty, what: "llama.cpp's numerics" });
    }
    let row = |r: usize| w.row(r);
    match w.ty {
        GgmlType::Q5_0 | GgmlType::Q8_0 => {
            let nb = w.cols / 32;
            let mut acts = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; n * nb];
            for (xr, ar) in x.chunks_exact(w.cols).zip(acts.chunks_exact_mut(nb)) {
                q8_0::quantize_row_act(xr, ar);
            }
            let q5 = w.ty == GgmlType::Q5_0;
            for_rows(w.rows, n, out, |r, t| row_q0(q5, &row(r), &acts[t * nb..(t + 1) * nb]));
        }
        GgmlType::Q4_K | GgmlType::Q6_K => {
            let nb = w.cols / QK_K;
            let q4 = w.ty == GgmlType::Q4_K;
            // The repacked Q4_K product takes the tokens four at a time (GEMM), the rest one by one.
            let gemm_rows = if q4 { n - n % 4 } else { 0 };
            let mut acts = vec![BlockQ8K::ZERO; n * nb];
            for (t, (xr, ar)) in x.chunks_exact(w.cols).zip(acts.chunks_exact_mut(nb)).enumerate() {
                q8_k::quantize_row(xr, ar);
                if t < gemm_rows {
                    for (xs, b) in xr.chunks_exact(QK_K).zip(ar.iter_mut()) {
                        q8_k_4x8_sign(xs, b);
                    }
                }
            }
            for_rows(w.rows, n, out, |r, t| row_k(q4, t < gemm_rows, n >= 8, &row(r), &acts[t * nb..(t + 1) * nb]));
        }
        _ => unreachable!("checked by supports"),
    }
    Ok(())
}

/// One row of a Q5_0 (`q5`) or Q8_0 matrix (ggml's bytes) against Q8_0 activations.
#[inline(always)]
fn row_q0(q5: bool, bytes: &[u8], a: &[BlockQ8_0]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::attention::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked).
        return unsafe { avx2::row_q0(q5, bytes, a) };
    }
    row_q0_scalar(q5, bytes, a)
}

/// [`row_q0`] with ggml's own AVX2 instructions (`ggml_vec_dot_q8_0_q8_0`, `_q5_0_q8_0`): the
/// same lanes, saturations and fused multiply-adds as the scalar form, and faster where most of
/// a token's work is (the output projection over a 262,144-token vocabulary): generation went
/// from 4.9 to 9.1 tokens/s on the dev machine.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{hsum8, q5_0_values, BlockQ5_0, BlockQ8_0};
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_q0(q5: bool, bytes: &[u8], a: &[BlockQ8_0]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        // One block: the weight's scale and its 32 values as bytes.
        let mut step = |i: usize, wd: f32, qx: __m256i| {
            let ab = &a[i];
            let d = _mm256_set1_ps(wd * ab.d.to_f32());
            let qy = _mm256_loadu_si256(ab.qs.as_ptr() as *const __m256i);
            let dot = _mm256_maddubs_epi16(_mm256_sign_epi8(qx, qx), _mm256_sign_epi8(qy, qx));
            let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_set1_epi16(1), dot));
            acc = _mm256_fmadd_ps(d, q, acc);
        };
        if q5 {
            let wb: &[BlockQ5_0] = crate::quants::blocks(bytes).expect("whole Q5_0 blocks");
            for (i, b) in wb.iter().enumerate().take(a.len()) {
                let v = q5_0_values(b);
                step(i, b.d.to_f32(), _mm256_loadu_si256(v.as_ptr() as *const __m256i));
            }
        } else {
            let wb: &[BlockQ8_0] = crate::quants::blocks(bytes).expect("whole Q8_0 blocks");
            for (i, b) in wb.iter().enumerate().take(a.len()) {
                step(i, b.d.to_f32(), _mm256_loadu_si256(b.qs.as_ptr() as *const __m256i));
            }
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        hsum8(&lanes)
    }
}

#[inline(always)]
fn row_q0_scalar(q5: bool, bytes: &[u8], a: &[BlockQ8_0]) -> f32 {
    if q5 {
        let wb: &[BlockQ5_0] = crate::quants::blocks(bytes).expect("whole Q5_0 blocks");
        dot_q0(|i| (wb[i].d.to_f32(), q5_0_values(&wb[i])), a)
    } else {
        let wb: &[BlockQ8_0] = crate::quants::blocks(bytes).expect("whole Q8_0 blocks");
        dot_q0(|i| (wb[i].d.to_f32(), wb[i].qs), a)
    }
}

/// One row of a Q4_K (`q4`: by the GEMM when `gemm`) or Q6_K matrix (tiled when `tiled`)
/// against Q8_K activations.
#[inline(always)]
fn row_k(q4: bool, gemm: bool, tiled: bool, bytes: &[u8], a: &[BlockQ8K]) -> f32 {
    if q4 {
        dot_q4_k(crate::quants::blocks(bytes).expect("whole Q4_K blocks"), a, gemm)
    } else if tiled {
        dot_q6_k_tiled(crate::quants::blocks(bytes).expect("whole Q6_K blocks"), a)
    } else {
        dot_q6_k(crate::quants::blocks(bytes).expect("whole Q6_K blocks"), a)
    }
}

/// `ggml_quantize_mat_q8_K_4x8` (AVX2), which quantizes the GEMM's tokens, differs from the
/// reference quantizer in one case: its largest magnitude maps to -127 when any element equals
/// `+max|x|` (the reference: when the first element of that magnitude is positive). Where both
/// signs hold the largest magnitude and the negative comes first, the block is requantized with
/// the other sign.
fn q8_k_4x8_sign(x: &[f32], b: &mut BlockQ8K) {
    let amax = x.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let first_negative = x.iter().find(|v| v.abs() == amax).is_some_and(|&v| v < 0.0);
    if amax == 0.0 || amax.is_nan() || !first_negative || !x.contains(&amax) {
        return;
    }
    let iscale = -127.0 / amax;
    for (q, &v) in b.qs.iter_mut().zip(x) {
        *q = (iscale * v).round_ties_even().min(127.0) as i8;
    }
    for (s, qg) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
        *s = qg.iter().map(|&q| i16::from(q)).sum();
    }
    b.d = 1.0 / iscale;
}

/// Fills `out` (`[n][rows]`) with `f(row, token)`, rows shared out among threads.
fn for_rows(rows: usize, n: usize, out: &mut [f32], f: impl Fn(usize, usize) -> f32 + Sync) {
    const CHUNK: usize = 64;
    let f = &f;
    out.par_chunks_mut(rows).enumerate().for_each(|(t, o)| {
        o.par_chunks_mut(CHUNK).enumerate().for_each(|(c, oc)| {
            for (i, y) in oc.iter_mut().enumerate() {
                *y = f(c * CHUNK + i, t);
            }
        });
    });
    debug_assert_eq!(out.len(), rows * n);
}

/// `ggml_vec_dot_f16` and `_f32` (AVX2): four registers of eight lanes take 32 elements at a time by fused
/// multiply-adds, are added pairwise (0+2, 1+3, then 0+1), and the eight lanes reduced by
/// `hadd`; a tail shorter than 32 is added in double.
fn dot_f16_one(x: &[f32], y: &[f32]) -> f32 {
    let n = x.len();
    let np = n & !31;
    let mut s = [[0f32; 8]; 4];
    for i in (0..np).step_by(32) {
        for (j, sj) in s.iter_mut().enumerate() {
            for (l, v) in sj.iter_mut().enumerate() {
                let e = i + 8 * j + l;
                *v = x[e].mul_add(y[e], *v);
            }
        }
    }
    let mut r = [0f32; 8];
    for l in 0..8 {
        r[l] = (s[0][l] + s[2][l]) + (s[1][l] + s[3][l]);
    }
    let t: [f32; 4] = std::array::from_fn(|i| r[i] + r[4 + i]);
    let mut sum = f64::from((t[0] + t[1]) + (t[2] + t[3]));
    for e in np..n {
        sum += f64::from(x[e] * y[e]);
    }
    sum as f32
}

/// llamafile's f16 and f32 `tinyBLAS` (AVX2): one register of eight lanes takes eight elements at a
/// time by fused multiply-adds, reduced as `hsum_float_8`. `x.len()` is a multiple of 8.
fn dot_f16_many(x: &[f32], y: &[f32]) -> f32 {
    let mut c = [0f32; 8];
    for (xs, ys) in x.chunks_exact(8).zip(y.chunks_exact(8)) {
        for l in 0..8 {
            c[l] = xs[l].mul_add(ys[l], c[l]);
        }
    }
    hsum8(&c)
}

/// `ggml_v_expf` (AVX2) for one lane.
fn v_expf(x: f32) -> f32 {
    let c = f32::from_bits;
    let r = c(0x4b40_0000);
    let z = x.mul_add(c(0x3fb8_aa3b), r);
    let n = z - r;
    let b = (-n).mul_add(c(0x35bf_be8e), (-n).mul_add(c(0x3f31_7200), x));
    let e = z.to_bits() << 23;
    let k = f32::from_bits(e.wrapping_add(1f32.to_bits()));
    let big = n.abs() > 126.0;
    let u = b * b;
    let j = c(0x3c07_2010).mul_add(b, c(0x3d2b_9f17)).mul_add(u, c(0x3e2a_af33).mul_add(b, c(0x3eff_fedb))).mul_add(u, c(0x3f7f_fff6) * b);
    if !big {
        return j.mul_add(k, k);
    }
    let g: u32 = if n <= 0.0 { 0x8200_0000 } else { 0 };
    let s1 = f32::from_bits(g.wrapping_add(0x7f00_0000));
    let s2 = f32::from_bits(e.wrapping_sub(g));
    if n.abs() > 192.0 {
        s1 * s1
    } else {
        s2.mul_add(j, s2) * s1
    }
}

/// `ggml_compute_forward_soft_max_f32` on one row (scale 1, the mask already added): the
/// exponentials eight at a time (`ggml_v_expf`), each eight summed as `hsum_float_8` into a
/// double, a tail by `expf`; then every value times `(float)(1 / sum)`.
fn soft_max(row: &mut [f32]) {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
    let mut sum = 0f64;
    let n8 = row.len() & !7;
    for g in row[..n8].chunks_exact_mut(8) {
        let mut v = [0f32; 8];
        for (o, x) in v.iter_mut().zip(g.iter()) {
            *o = v_expf(x - max);
        }
        g.copy_from_slice(&v);
        sum += f64::from(hsum8(&v));
    }
    for x in &mut row[n8..] {
        *x = (*x - max).exp();
        sum += f64::from(*x);
    }
    let inv = (1.0 / sum) as f32;
    for x in row.iter_mut() {
        *x *= inv;
    }
}

/// Attention as llama.cpp's graph computes it without flash attention: per query head, its dot
/// products with every cached key (positions `0..n_kv`, masked ones `-inf`), the softmax, and
/// the weights' dot products with every value column. Against an f16 cache (llama.cpp's
/// default) the products take f16 operands: the query (`q * scale`) and the softmax weights are
/// rounded to f16 first; against an f32 cache they stay f32. For one query the dot products are
/// `ggml_vec_dot_f16`'s (`_f32`'s: the same order), for several llamafile's `tinyBLAS`'s, as
/// llama.cpp picks by the batch's size. Shapes as [`crate::attention::attention`]; the cache
/// holds one sequence (positions `kpos`).
#[allow(clippy::too_many_arguments)]
pub fn attention(s: &AttnShape, q: &[f32], qpos: &[i64], k: KvView<'_>, v: KvView<'_>, kpos: &[i64], mask: AttnMask, out: &mut [f32]) {
    let (d, dv, group) = (s.head_dim, s.head_dim_v, s.n_head / s.n_head_kv);
    // Positions 0..n_kv as llama.cpp's cells (one sequence from position 0), padded to 32: the
    // padding adds only zero terms, which leave every sum as llama.cpp's longer padding does.
    let top = qpos.iter().chain(kpos.iter()).copied().max().unwrap_or(0).max(0) as usize + 1;
    let n_kv = top.div_ceil(32) * 32;
    // The cached keys by position (`[position][kv head][d]`, absent positions zero and masked)
    // and the values transposed (`[kv head][column][position]`, the rows `kqv`'s dot products
    // take), as f32; `k16`, `v16`: whether the products take f16 operands.
    let (kr, vr) = (s.n_head_kv * d, s.n_head_kv * dv);
    let (mut kc, mut present, mut vt) = (vec![0f32; n_kv * kr], vec![false; n_kv], vec![0f32; vr * n_kv]);
    let at = |view: KvView<'_>, i: usize| match view {
        KvView::F32(x) => x[i],
        KvView::F16(x) => x[i].to_f32(),
    };
    for (slot, &p) in kpos.iter().enumerate() {
        if p < 0 {
            continue;
        }
        let p = p as usize;
        present[p] = true;
        for (j, o) in kc[p * kr..(p + 1) * kr].iter_mut().enumerate() {
            *o = at(k, slot * kr + j);
        }
        for j in 0..vr {
            vt[j * n_kv + p] = at(v, slot * vr + j);
        }
    }
    let (k16, v16) = (matches!(k, KvView::F16(_)), matches!(v, KvView::F16(_)));
    let round = |x: f32, yes: bool| if yes { f16::from_f32(x).to_f32() } else { x };
    let dot = if qpos.len() > 1 { dot_f16_many } else { dot_f16_one };
    out.par_chunks_mut(dv).enumerate().for_each(|(task, o)| {
        let (t, h) = (task / s.n_head, task % s.n_head);
        let g = h / group;
        let qh: Vec<f32> = q[(t * s.n_head + h) * d..][..d].iter().map(|&x| round(x * s.scale, k16)).collect();
        let mut kq = vec![f32::NEG_INFINITY; n_kv];
        for (p, w) in kq.iter_mut().enumerate() {
            if present[p] && mask.visible(qpos[t], p as i64) {
                *w = dot(&kc[(p * s.n_head_kv + g) * d..][..d], &qh);
            }
        }
        soft_max(&mut kq);
        let wts: Vec<f32> = kq.iter().map(|&x| round(x, v16)).collect();
        for (c, y) in o.iter_mut().enumerate() {
            *y = dot(&vt[(g * dv + c) * n_kv..][..n_kv], &wts);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v_expf_is_close_to_exp_and_zero_at_minus_infinity() {
        for i in -2000..=800 {
            let x = i as f32 * 0.1;
            let (got, want) = (v_expf(x), x.exp());
            assert!(((got - want) / want.max(f32::MIN_POSITIVE)).abs() < 2e-6 || (want < 1e-37 && got < 1e-37), "{x}: {got} vs {want}");
        }
        assert_eq!(v_expf(f32::NEG_INFINITY), 0.0);
    }

    #[test]
    fn q0_rows_are_the_same_bits_with_avx2_and_without() {
        let mut seed = 7u64;
        let mut rnd = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) * 2.0 - 1.0
        };
        let x: Vec<f32> = (0..640).map(|_| rnd()).collect();
        let w: Vec<f32> = (0..640).map(|_| rnd() * 0.1).collect();
        let mut acts = vec![BlockQ8_0 { d: f16::ZERO, qs: [0; 32] }; 20];
        q8_0::quantize_row_act(&x, &mut acts);
        for ty in [GgmlType::Q5_0, GgmlType::Q8_0] {
            let mut bytes = vec![0u8; ty.tensor_nbytes(&[640]).unwrap() as usize];
            crate::quants::quantize(ty, &w, &mut bytes).unwrap();
            let scalar = row_q0_scalar(ty == GgmlType::Q5_0, &bytes, &acts);
            assert_eq!(row_q0(ty == GgmlType::Q5_0, &bytes, &acts).to_bits(), scalar.to_bits(), "{ty}");
        }
    }

    #[test]
    fn hsum8_adds_lanes_in_ggml_order() {
        // 1e8 + 1 - 1e8 depends on the order: (a4+a0) + ... as hsum_float_8.
        let a = [1e8f32, 0.0, -1e8, 0.0, 1.0, 0.0, 0.0, 0.0];
        assert_eq!(hsum8(&a), ((1.0 + 1e8) + -1e8f32) + 0.0);
    }
}
