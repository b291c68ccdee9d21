//! Scalar references: one dot product per weight type, written as ggml's generic
//! `ggml_vec_dot_*` are, with every block's products summed exactly in integers and the block
//! scales applied once per block (or super-block) in `f32`.
//!
//! These are the twins every SIMD kernel is tested against, and what the table falls back to on
//! CPUs without a faster kernel. They also quantize activations, with the reference quantizers of
//! [`crate::quants`].
//!
//! The row functions take raw pointers because weight data need not be aligned for the block
//! structs (it is read with unaligned loads), and because the same signature serves the table;
//! the typed per-block functions beside them are safe.

use std::ptr::read_unaligned;

use crate::quants::float16::{bf16_to_f32, f16_to_f32};
use crate::quants::iq4_nl::KVALUES_IQ4NL;
use crate::quants::{
    BlockIQ4NL, BlockIQ4XS, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ4_0, BlockQ4_1, BlockQ5K, BlockQ5_0,
    BlockQ5_1, BlockQ6K, BlockQ8K, BlockQ8_0, BlockQ8_1, Quantize,
};

// ---------------------------------------------------------------------------------------------
// Per-block references (safe, typed)

/// Q4_0 x Q8_0: `dx * dy * sum((q - 8) * y)`.
pub fn block_q4_0(x: &BlockQ4_0, y: &BlockQ8_0) -> f32 {
    let mut sumi = 0i32;
    for j in 0..16 {
        let v0 = i32::from(x.qs[j] & 0xF) - 8;
        let v1 = i32::from(x.qs[j] >> 4) - 8;
        sumi += v0 * i32::from(y.qs[j]) + v1 * i32::from(y.qs[j + 16]);
    }
    sumi as f32 * (x.d.to_f32() * y.d.to_f32())
}

/// Q4_1 x Q8_1: `dx * dy * sum(q * y) + mx * sy`.
pub fn block_q4_1(x: &BlockQ4_1, y: &BlockQ8_1) -> f32 {
    let mut sumi = 0i32;
    for j in 0..16 {
        sumi += i32::from(x.qs[j] & 0xF) * i32::from(y.qs[j]) + i32::from(x.qs[j] >> 4) * i32::from(y.qs[j + 16]);
    }
    (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32()
}

/// Q5_0 x Q8_0: `dx * dy * sum((q - 16) * y)`.
pub fn block_q5_0(x: &BlockQ5_0, y: &BlockQ8_0) -> f32 {
    let qh = u32::from_le_bytes(x.qh);
    let mut sumi = 0i32;
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let v0 = (u32::from(x.qs[j] & 0xF) | h0) as i32 - 16;
        let v1 = (u32::from(x.qs[j] >> 4) | h1) as i32 - 16;
        sumi += v0 * i32::from(y.qs[j]) + v1 * i32::from(y.qs[j + 16]);
    }
    sumi as f32 * (x.d.to_f32() * y.d.to_f32())
}

/// Q5_1 x Q8_1: `dx * dy * sum(q * y) + mx * sy`.
pub fn block_q5_1(x: &BlockQ5_1, y: &BlockQ8_1) -> f32 {
    let qh = u32::from_le_bytes(x.qh);
    let mut sumi = 0i32;
    for j in 0..16 {
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        let v0 = (u32::from(x.qs[j] & 0xF) | h0) as i32;
        let v1 = (u32::from(x.qs[j] >> 4) | h1) as i32;
        sumi += v0 * i32::from(y.qs[j]) + v1 * i32::from(y.qs[j + 16]);
    }
    (x.d.to_f32() * y.d.to_f32()) * sumi as f32 + x.m.to_f32() * y.s.to_f32()
}

/// Q8_0 x Q8_0: `dx * dy * sum(x * y)`.
pub fn block_q8_0(x: &BlockQ8_0, y: &BlockQ8_0) -> f32 {
    let sumi: i32 = x.qs.iter().zip(&y.qs).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
    sumi as f32 * (x.d.to_f32() * y.d.to_f32())
}

/// IQ4_NL x Q8_0: `dx * dy * sum(table[q] * y)`.
pub fn block_iq4_nl(x: &BlockIQ4NL, y: &BlockQ8_0) -> f32 {
    let mut sumi = 0i32;
    for j in 0..16 {
        sumi += i32::from(KVALUES_IQ4NL[usize::from(x.qs[j] & 0xF)]) * i32::from(y.qs[j])
            + i32::from(KVALUES_IQ4NL[usize::from(x.qs[j] >> 4)]) * i32::from(y.qs[j + 16]);
    }
    (x.d.to_f32() * y.d.to_f32()) * sumi as f32
}

/// Q2_K x Q8_K: `dx * dy * sum(sc_g * q * y) - dminx * dy * sum(m_g * ysum_g)` over 16 groups.
pub fn block_q2_k(x: &BlockQ2K, y: &BlockQ8K) -> f32 {
    let (mut sumi, mut summs) = (0i32, 0i32);
    for (g, &sc) in x.scales.iter().enumerate() {
        let q = &x.qs[32 * (g / 8) + 16 * (g % 2)..][..16];
        let shift = 2 * ((g / 2) % 4);
        let yq = &y.qs[16 * g..][..16];
        let isum: i32 = q.iter().zip(yq).map(|(&q, &v)| i32::from((q >> shift) & 3) * i32::from(v)).sum();
        sumi += i32::from(sc & 0xF) * isum;
        summs += i32::from(sc >> 4) * i32::from(y.bsums[g]);
    }
    let (d, dmin) = (y.d * x.d.to_f32(), y.d * x.dmin.to_f32());
    d * sumi as f32 - dmin * summs as f32
}

/// The sixteen 6-bit Q3_K scales, each less its offset of 32.
pub(super) fn q3_k_scales(scales: &[u8; 12]) -> [i8; 16] {
    let mut out = [0i8; 16];
    for (g, o) in out.iter_mut().enumerate() {
        let low = if g < 8 { scales[g] & 0xF } else { scales[g - 8] >> 4 };
        let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
        *o = (low | (high << 4)) as i8 - 32;
    }
    out
}

/// Q3_K x Q8_K: `dx * dy * sum((sc_g - 32) * q * y)` with `q` in -4..4, over 16 groups.
pub fn block_q3_k(x: &BlockQ3K, y: &BlockQ8K) -> f32 {
    let scales = q3_k_scales(&x.scales);
    let mut sumi = 0i32;
    for (g, &sc) in scales.iter().enumerate() {
        let (h, s, l0) = (g / 8, (g / 2) % 4, 16 * (g % 2));
        let m = 1u8 << (4 * h + s);
        let mut isum = 0i32;
        for l in l0..l0 + 16 {
            let low = i32::from((x.qs[32 * h + l] >> (2 * s)) & 3);
            let v = low - if x.hmask[l] & m != 0 { 0 } else { 4 };
            isum += v * i32::from(y.qs[16 * g + l - l0]);
        }
        sumi += i32::from(sc) * isum;
    }
    y.d * x.d.to_f32() * sumi as f32
}

/// The eight 6-bit scales and eight 6-bit mins of Q4_K and Q5_K.
pub(super) fn k4_scales_mins(q: &[u8; 12]) -> ([u8; 8], [u8; 8]) {
    let (mut sc, mut m) = ([0u8; 8], [0u8; 8]);
    for j in 0..8 {
        (sc[j], m[j]) = if j < 4 {
            (q[j] & 63, q[j + 4] & 63)
        } else {
            ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
        };
    }
    (sc, m)
}

/// Q4_K x Q8_K: `dx * dy * sum(sc_k * q * y) - dminx * dy * sum(m_k * ysum_k)` over 8 groups.
pub fn block_q4_k(x: &BlockQ4K, y: &BlockQ8K) -> f32 {
    let (sc, m) = k4_scales_mins(&x.scales);
    let (mut sumi, mut summs) = (0i32, 0i32);
    for k in 0..8 {
        let (c, hi) = (k / 2, k % 2 == 1);
        let q = &x.qs[32 * c..][..32];
        let yq = &y.qs[32 * k..][..32];
        let isum: i32 = q
            .iter()
            .zip(yq)
            .map(|(&q, &v)| i32::from(if hi { q >> 4 } else { q & 0xF }) * i32::from(v))
            .sum();
        sumi += i32::from(sc[k]) * isum;
        summs += i32::from(m[k]) * (i32::from(y.bsums[2 * k]) + i32::from(y.bsums[2 * k + 1]));
    }
    let (d, dmin) = (y.d * x.d.to_f32(), y.d * x.dmin.to_f32());
    d * sumi as f32 - dmin * summs as f32
}

/// Q5_K x Q8_K: as Q4_K with a fifth bit from `qh`.
pub fn block_q5_k(x: &BlockQ5K, y: &BlockQ8K) -> f32 {
    let (sc, m) = k4_scales_mins(&x.scales);
    let (mut sumi, mut summs) = (0i32, 0i32);
    for k in 0..8 {
        let (c, hi) = (k / 2, k % 2 == 1);
        let q = &x.qs[32 * c..][..32];
        let yq = &y.qs[32 * k..][..32];
        let mut isum = 0i32;
        for l in 0..32 {
            let low = if hi { q[l] >> 4 } else { q[l] & 0xF };
            let h = if x.qh[l] & (1 << k) != 0 { 16 } else { 0 };
            isum += i32::from(low + h) * i32::from(yq[l]);
        }
        sumi += i32::from(sc[k]) * isum;
        summs += i32::from(m[k]) * (i32::from(y.bsums[2 * k]) + i32::from(y.bsums[2 * k + 1]));
    }
    let (d, dmin) = (y.d * x.d.to_f32(), y.d * x.dmin.to_f32());
    d * sumi as f32 - dmin * summs as f32
}

/// Q6_K x Q8_K: `dx * dy * sum(sc_g * (q - 32) * y)` over 16 groups.
pub fn block_q6_k(x: &BlockQ6K, y: &BlockQ8K) -> f32 {
    let mut sumi = 0i32;
    for h in 0..2 {
        let ql = &x.ql[64 * h..][..64];
        let qh = &x.qh[32 * h..][..32];
        for s in 0..4 {
            for half in 0..2 {
                let g = 8 * h + 2 * s + half;
                let mut isum = 0i32;
                for l in 16 * half..16 * half + 16 {
                    let low = ql[32 * (s % 2) + l] >> (4 * (s / 2)) & 0xF;
                    let high = (qh[l] >> (2 * s)) & 3;
                    let v = i32::from(low | (high << 4)) - 32;
                    isum += v * i32::from(y.qs[128 * h + 32 * s + l]);
                }
                sumi += i32::from(x.scales[g]) * isum;
            }
        }
    }
    y.d * x.d.to_f32() * sumi as f32
}

/// The eight IQ4_XS block scales, each less its offset of 32.
pub(super) fn iq4_xs_scales(x: &BlockIQ4XS) -> [i8; 8] {
    let mut out = [0i8; 8];
    for (ib, o) in out.iter_mut().enumerate() {
        let ls = ((x.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF) | ((((x.scales_h >> (2 * ib)) & 3) as u8) << 4);
        *o = ls as i8 - 32;
    }
    out
}

/// IQ4_XS x Q8_K: `dx * dy * sum((ls_b - 32) * table[q] * y)` over 8 blocks of 32.
pub fn block_iq4_xs(x: &BlockIQ4XS, y: &BlockQ8K) -> f32 {
    let scales = iq4_xs_scales(x);
    let mut sumi = 0i32;
    for (ib, &ls) in scales.iter().enumerate() {
        let qs = &x.qs[16 * ib..][..16];
        let yq = &y.qs[32 * ib..][..32];
        let mut isum = 0i32;
        for j in 0..16 {
            isum += i32::from(KVALUES_IQ4NL[usize::from(qs[j] & 0xF)]) * i32::from(yq[j])
                + i32::from(KVALUES_IQ4NL[usize::from(qs[j] >> 4)]) * i32::from(yq[j + 16]);
        }
        sumi += i32::from(ls) * isum;
    }
    x.d.to_f32() * y.d * sumi as f32
}

// ---------------------------------------------------------------------------------------------
// Row kernels for the table

/// A row dot product from a per-block function: reads each block unaligned and sums the block
/// results in order.
macro_rules! row_kernel {
    ($name:ident, $wb:ty, $ab:ty, $block:ident) => {
        /// # Safety
        ///
        /// `w` must point to `nb` readable weight blocks and `a` to `nb` readable activation
        /// blocks; neither needs alignment. `_aux` is not read.
        pub unsafe fn $name(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
            let (ws, as_) = (std::mem::size_of::<$wb>(), std::mem::size_of::<$ab>());
            let mut sum = 0.0f32;
            for i in 0..nb {
                // SAFETY: block `i < nb` of each row is readable (the caller's contract), and
                // `read_unaligned` needs no alignment; both types accept every bit pattern.
                let (x, y) = unsafe {
                    (read_unaligned(w.add(i * ws).cast::<$wb>()), read_unaligned(a.add(i * as_).cast::<$ab>()))
                };
                sum += $block(&x, &y);
            }
            sum
        }
    };
}

row_kernel!(dot_q4_0, BlockQ4_0, BlockQ8_0, block_q4_0);
row_kernel!(dot_q4_1, BlockQ4_1, BlockQ8_1, block_q4_1);
row_kernel!(dot_q5_0, BlockQ5_0, BlockQ8_0, block_q5_0);
row_kernel!(dot_q5_1, BlockQ5_1, BlockQ8_1, block_q5_1);
row_kernel!(dot_q8_0, BlockQ8_0, BlockQ8_0, block_q8_0);
row_kernel!(dot_iq4_nl, BlockIQ4NL, BlockQ8_0, block_iq4_nl);
row_kernel!(dot_q2_k, BlockQ2K, BlockQ8K, block_q2_k);
row_kernel!(dot_q3_k, BlockQ3K, BlockQ8K, block_q3_k);
row_kernel!(dot_q4_k, BlockQ4K, BlockQ8K, block_q4_k);
row_kernel!(dot_q5_k, BlockQ5K, BlockQ8K, block_q5_k);
row_kernel!(dot_q6_k, BlockQ6K, BlockQ8K, block_q6_k);
row_kernel!(dot_iq4_xs, BlockIQ4XS, BlockQ8K, block_iq4_xs);

/// Reads the `i`-th little-endian `u16` at `p`.
///
/// # Safety
///
/// Bytes `2i..2i+2` behind `p` must be readable.
#[inline]
unsafe fn u16_at(p: *const u8, i: usize) -> u16 {
    // SAFETY: the caller's contract; no alignment is needed.
    unsafe { read_unaligned(p.add(2 * i).cast::<u16>()) }
}

/// Reads the `i`-th `f32` at `p`.
///
/// # Safety
///
/// Bytes `4i..4i+4` behind `p` must be readable.
#[inline]
unsafe fn f32_at(p: *const u8, i: usize) -> f32 {
    // SAFETY: the caller's contract; no alignment is needed.
    unsafe { read_unaligned(p.add(4 * i).cast::<f32>()) }
}

/// F32 x F32, summed in order in `f32`.
///
/// # Safety
///
/// `w` and `a` must each point to `n` readable `f32`s; no alignment is needed.
pub unsafe fn dot_f32(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let mut sum = 0.0f32;
    for i in 0..n {
        // SAFETY: `i < n`.
        sum += unsafe { f32_at(w, i) * f32_at(a, i) };
    }
    sum
}

/// F16 x F32: each weight widened exactly, summed in order in `f32`.
///
/// # Safety
///
/// `w` must point to `n` readable halves and `a` to `n` readable `f32`s.
pub unsafe fn dot_f16(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let mut sum = 0.0f32;
    for i in 0..n {
        // SAFETY: `i < n`.
        sum += unsafe { f16_to_f32(u16_at(w, i)) * f32_at(a, i) };
    }
    sum
}

/// BF16 x F32: each weight widened exactly, summed in order in `f32`.
///
/// # Safety
///
/// `w` must point to `n` readable bfloat16s and `a` to `n` readable `f32`s.
pub unsafe fn dot_bf16(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let mut sum = 0.0f32;
    for i in 0..n {
        // SAFETY: `i < n`.
        sum += unsafe { bf16_to_f32(u16_at(w, i)) * f32_at(a, i) };
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// Activation quantizers

/// Quantizes `nb` blocks with `quantize` (a block type's row quantizer), through an aligned buffer.
///
/// # Safety
///
/// `x` must point to `nb * B::BLOCK_SIZE` readable `f32`s and `out` to `nb` writable blocks;
/// `out` needs no alignment.
unsafe fn quantize_via<B: Quantize>(x: *const f32, nb: usize, out: *mut u8, quantize: fn(&[f32], &mut [B])) {
    const CHUNK: usize = 16;
    let mut tmp = [B::ZERO; CHUNK];
    let mut done = 0;
    while done < nb {
        let k = CHUNK.min(nb - done);
        // SAFETY: elements `done * BLOCK_SIZE..(done + k) * BLOCK_SIZE` are in the caller's range.
        let xs = unsafe { std::slice::from_raw_parts(x.add(done * B::BLOCK_SIZE), k * B::BLOCK_SIZE) };
        quantize(xs, &mut tmp[..k]);
        let bytes = crate::quants::as_bytes(&tmp[..k]);
        // SAFETY: blocks `done..done + k` of `out` are writable; the source is a local buffer.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.add(done * std::mem::size_of::<B>()), bytes.len()) };
        done += k;
    }
}

/// Q8_0 activation quantizer (ggml's x86 `quantize_row_q8_0`: `crate::quants::q8_0::quantize_row_act`).
///
/// # Safety
///
/// `x` must point to `32 * nb` readable `f32`s and `out` to `34 * nb` writable bytes.
pub unsafe fn quantize_q8_0(x: *const f32, nb: usize, out: *mut u8) {
    // SAFETY: the caller's contract is `quantize_via`'s.
    unsafe { quantize_via::<BlockQ8_0>(x, nb, out, crate::quants::q8_0::quantize_row_act) }
}

/// Q8_1 activation quantizer (ggml's x86 `quantize_row_q8_1`: `crate::quants::q8_1::quantize_row_act`).
///
/// # Safety
///
/// `x` must point to `32 * nb` readable `f32`s and `out` to `36 * nb` writable bytes.
pub unsafe fn quantize_q8_1(x: *const f32, nb: usize, out: *mut u8) {
    // SAFETY: the caller's contract is `quantize_via`'s.
    unsafe { quantize_via::<BlockQ8_1>(x, nb, out, crate::quants::q8_1::quantize_row_act) }
}

/// Reference Q8_K activation quantizer (ggml's `quantize_row_q8_K_ref`).
///
/// # Safety
///
/// `x` must point to `256 * nb` readable `f32`s and `out` to `292 * nb` writable bytes.
pub unsafe fn quantize_q8_k(x: *const f32, nb: usize, out: *mut u8) {
    // SAFETY: the caller's contract is `quantize_via`'s.
    unsafe { quantize_via::<BlockQ8K>(x, nb, out, crate::quants::q8_k::quantize_row) }
}

/// Copies `n` activations unchanged (the F32 "quantizer" of float weight types).
///
/// # Safety
///
/// `x` must point to `n` readable `f32`s and `out` to `4 * n` writable bytes.
pub unsafe fn quantize_f32(x: *const f32, n: usize, out: *mut u8) {
    // SAFETY: the caller's contract; the regions belong to different allocations.
    unsafe { std::ptr::copy_nonoverlapping(x.cast::<u8>(), out, 4 * n) }
}

/// The `mr` (1..=8) rows of one group of a packed `layout` times an activation row: each row's
/// blocks restored to ggml's (`X`, as [`crate::repack::unpack_block`] writes them) and summed in
/// order by `block` (the ggml layout's block product against `Y`), so the results are
/// bit-identical to the ggml layout's row product.
///
/// # Safety
///
/// `t.w` must point to a whole group (`t.nb` group blocks of `layout`), `t.a` to `t.nb`
/// activation blocks `Y` and `t.out` to `t.mr` writable floats (`t.mr <= 8`, `t.nr == 1`); `X`
/// must be the layout's ggml block type.
unsafe fn matvec_packed<X, Y>(t: &super::Tile, layout: crate::repack::Layout, block: fn(&X, &Y) -> f32) {
    debug_assert!(t.nr == 1 && (1..=8).contains(&t.mr));
    let xb = size_of::<X>();
    let gbytes = 8 * xb;
    // SAFETY: the caller's contract: the group's `nb` blocks and the activation row are readable.
    let (group, acts) =
        unsafe { (std::slice::from_raw_parts(t.w, t.nb * gbytes), std::slice::from_raw_parts(t.a, t.nb * size_of::<Y>())) };
    let mut sums = [0f32; 8];
    let mut blk = [0u8; 256];
    let blk = &mut blk[..xb];
    for (b, gb) in group.chunks_exact(gbytes).enumerate() {
        // SAFETY: block `b < nb` of the activation row; `read_unaligned` needs no alignment and
        // the block types accept every bit pattern.
        let y = unsafe { read_unaligned(acts[b * size_of::<Y>()..].as_ptr().cast::<Y>()) };
        for (r, sum) in sums.iter_mut().enumerate().take(t.mr) {
            crate::repack::unpack_block(layout, gb, r, blk);
            // SAFETY: as above, one whole block of `X`.
            let x = unsafe { read_unaligned(blk.as_ptr().cast::<X>()) };
            *sum += block(&x, &y);
        }
    }
    for (r, &v) in sums.iter().enumerate().take(t.mr) {
        // SAFETY: `mr` writable outputs.
        unsafe { *t.out.add(r) = v };
    }
}

/// Q5_0 in [`crate::repack::Layout::Q5_0x8`] x Q8_0 ([`matvec_packed`]; bit-identical to
/// [`dot_q5_0`]).
///
/// # Safety
///
/// As [`matvec_packed`].
pub(crate) unsafe fn matvec_q5_0x8(t: &super::Tile) {
    // SAFETY: the caller's contract; BlockQ5_0 is the layout's block.
    unsafe { matvec_packed(t, crate::repack::Layout::Q5_0x8, block_q5_0) }
}

/// Q4_K in [`crate::repack::Layout::Q4_Kx8`] x Q8_K ([`matvec_packed`]; bit-identical to
/// [`dot_q4_k`]).
///
/// # Safety
///
/// As [`matvec_packed`].
pub(crate) unsafe fn matvec_q4_kx8(t: &super::Tile) {
    // SAFETY: the caller's contract; BlockQ4K is the layout's block.
    unsafe { matvec_packed(t, crate::repack::Layout::Q4_Kx8, block_q4_k) }
}

/// Q6_K in [`crate::repack::Layout::Q6_Kx8`] x Q8_K ([`matvec_packed`]; bit-identical to
/// [`dot_q6_k`]).
///
/// # Safety
///
/// As [`matvec_packed`].
pub(crate) unsafe fn matvec_q6_kx8(t: &super::Tile) {
    // SAFETY: the caller's contract; BlockQ6K is the layout's block.
    unsafe { matvec_packed(t, crate::repack::Layout::Q6_Kx8, block_q6_k) }
}

/// Q4_0 in [`crate::repack::Layout::Q4_0x8`] x Q8_0 ([`matvec_packed`]; bit-identical to
/// [`dot_q4_0`]).
///
/// # Safety
///
/// As [`matvec_packed`].
pub(crate) unsafe fn matvec_q4_0x8(t: &super::Tile) {
    // SAFETY: the caller's contract; BlockQ4_0 is the layout's block.
    unsafe { matvec_packed(t, crate::repack::Layout::Q4_0x8, block_q4_0) }
}

/// Q8_0 in [`crate::repack::Layout::Q8_0x8`] x Q8_0 ([`matvec_packed`]; bit-identical to
/// [`dot_q8_0`]).
///
/// # Safety
///
/// As [`matvec_packed`].
pub(crate) unsafe fn matvec_q8_0x8(t: &super::Tile) {
    // SAFETY: the caller's contract; BlockQ8_0 is the layout's block.
    unsafe { matvec_packed(t, crate::repack::Layout::Q8_0x8, block_q8_0) }
}
