//! IQ4_NL: blocks of 32 weights, one f16 scale and 32 4-bit indices into a fixed non-linear
//! table of 16 levels ([`KVALUES_IQ4NL`]); 4.5 bits per weight.
//!
//! Layout (18 bytes): `d: f16`, then `qs: [u8; 16]`. Byte `j` holds the index of element `j` in
//! its low nibble and of element `j + 16` in its high nibble; index `i` decodes to
//! `d * KVALUES_IQ4NL[i]`.

use half::f16;

use super::search::{nearest_int, GROUP_MAX_EPS};
use super::{impl_block, impl_quantize};

/// Elements per IQ4_NL block.
pub const QK4_NL: usize = 32;

/// The 16 levels of IQ4_NL and IQ4_XS, ascending.
pub const KVALUES_IQ4NL: [i8; 16] =
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// One IQ4_NL block, as ggml's `block_iq4_nl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4NL {
    /// Scale.
    pub d: f16,
    /// Table indices: element `j` low nibble, element `j + 16` high nibble.
    pub qs: [u8; QK4_NL / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == 18);
const _: () = assert!(std::mem::size_of::<BlockIQ4NL>() == super::type_size_of(crate::GgmlType::IQ4_NL));

impl_block!(BlockIQ4NL, IQ4_NL, QK4_NL, BlockIQ4NL { d: f16::ZERO, qs: [0; QK4_NL / 2] });
impl_quantize!(BlockIQ4NL);

/// Reference dequantization (ggml's `dequantize_row_iq4_nl`).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockIQ4NL], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK4_NL);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK4_NL)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_NL / 2);
        for ((&q, y0), y1) in b.qs.iter().zip(lo).zip(hi) {
            *y0 = d * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
            *y1 = d * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
        }
    }
}

/// Quantization with ggml's best-scale search (`quantize_iq4_nl` without importance weights,
/// which is what `llama-quantize` writes): for each block, 15 trial scales around
/// `max / -127`, each giving the nearest table level per element and an x²-weighted
/// least-squares scale; the best fit wins.
///
/// ggml's `quantize_row_iq4_nl_ref` is the quicker variant without the trials; it is
/// [`quantize_row_no_search`].
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockIQ4NL]) {
    quantize_row_with(x, out, 7);
}

/// ggml's `quantize_row_iq4_nl_ref`: one x²-weighted least-squares scale per block, no trials.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row_no_search(x: &[f32], out: &mut [BlockIQ4NL]) {
    quantize_row_with(x, out, -1);
}

fn quantize_row_with(x: &[f32], out: &mut [BlockIQ4NL], ntry: i32) {
    debug_assert_eq!(x.len(), out.len() * QK4_NL);
    for (xb, b) in x.chunks_exact(QK4_NL).zip(out.iter_mut()) {
        let sb = quantize_superblock(xb, ntry);
        b.d = sb.d;
        b.qs.copy_from_slice(&sb.qs[..QK4_NL / 2]);
    }
}

/// The index of the table level nearest to `x`; exact midpoints go to the upper level. ggml's
/// `best_index_int8` makes the same choice, comparing `2x` with the sum of neighbouring levels.
#[inline]
pub(crate) fn best_index(x: f32) -> u8 {
    let x2 = x + x;
    let mut idx = 0usize;
    let mut step = KVALUES_IQ4NL.len() / 2;
    while step > 0 {
        let j = idx + step;
        if x2 >= f32::from(KVALUES_IQ4NL[j - 1]) + f32::from(KVALUES_IQ4NL[j]) {
            idx = j;
        }
        step /= 2;
    }
    idx as u8
}

/// One quantized IQ4_NL block (`x.len() == 32`) or IQ4_XS super-block (`x.len() == 256`).
pub(crate) struct Iq4Superblock {
    pub d: f16,
    /// Packed indices, 16 bytes per 32 elements (only the first `x.len() / 2` are used).
    pub qs: [u8; 128],
    /// IQ4_XS only: top two bits of the eight 6-bit block scales (offset by 32).
    pub scales_h: u16,
    /// IQ4_XS only: low four bits of the block scales, two per byte.
    pub scales_l: [u8; 4],
}

/// The shared body of ggml's `quantize_row_iq4_nl_impl` without importance weights: `x` is a
/// super-block of 32 (IQ4_NL) or 256 (IQ4_XS) elements in blocks of 32; `ntry > 0` enables the
/// trial-scale search with `2 * ntry + 1` trials.
pub(crate) fn quantize_superblock(x: &[f32], ntry: i32) -> Iq4Superblock {
    const BLOCK: usize = 32;
    debug_assert!(x.len() == 32 || x.len() == 256);
    let n_blocks = (x.len() / BLOCK).min(8);
    let mut sb = Iq4Superblock { d: f16::ZERO, qs: [0; 128], scales_h: 0, scales_l: [0; 4] };
    let mut levels = [0u8; 256];
    let mut scales = [0.0f32; 8];
    let mut weight = [0.0f32; BLOCK];

    let values0 = f32::from(KVALUES_IQ4NL[0]);
    let mut max_scale = 0.0f32;
    let mut amax_scale = 0.0f32;
    for (ib, (xb, lb)) in x.chunks_exact(BLOCK).zip(levels.chunks_exact_mut(BLOCK)).enumerate() {
        for (w, &v) in weight.iter_mut().zip(xb) {
            *w = v * v;
        }
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax < GROUP_MAX_EPS {
            // ggml leaves this block's indices as they were (stale); its scale is 0, so any
            // index decodes to 0. Here they stay 0.
            scales[ib] = 0.0;
            continue;
        }
        let mut d = if ntry > 0 { -max / values0 } else { max / values0 };
        let mut id = 1.0 / d;
        let mut sumqx = 0.0f32;
        let mut sumq2 = 0.0f32;
        for ((l, &v), &w) in lb.iter_mut().zip(xb).zip(&weight) {
            *l = best_index(id * v);
            let q = f32::from(KVALUES_IQ4NL[usize::from(*l)]);
            sumqx += w * q * v;
            sumq2 += w * q * q;
        }
        d = if sumq2 > 0.0 { sumqx / sumq2 } else { 0.0 };
        let mut best = d * sumqx;
        for itry in -ntry..=ntry {
            id = (itry as f32 + values0) / max;
            sumqx = 0.0;
            sumq2 = 0.0;
            for (&v, &w) in xb.iter().zip(&weight) {
                let q = f32::from(KVALUES_IQ4NL[usize::from(best_index(id * v))]);
                sumqx += w * q * v;
                sumq2 += w * q * q;
            }
            if sumq2 > 0.0 && sumqx * sumqx > best * sumq2 {
                d = sumqx / sumq2;
                best = d * sumqx;
            }
        }
        scales[ib] = d;
        let abs_d = d.abs();
        if abs_d > amax_scale {
            amax_scale = abs_d;
            max_scale = d;
        }
    }

    if n_blocks > 1 {
        // IQ4_XS: quantize the block scales to 6 bits and requantize each block with its own.
        let d = -max_scale / 32.0;
        sb.d = f16::from_f32(d);
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        for (ib, (xb, lb)) in x.chunks_exact(BLOCK).zip(levels.chunks_exact_mut(BLOCK)).enumerate() {
            let l = nearest_int(id * scales[ib]).clamp(-32, 31);
            let dl = d * l as f32;
            let idl = if dl != 0.0 { 1.0 / dl } else { 0.0 };
            for (lv, &v) in lb.iter_mut().zip(xb) {
                *lv = best_index(idl * v);
            }
            let l = (l + 32) as u8;
            if ib % 2 == 0 {
                sb.scales_l[ib / 2] = l & 0xF;
            } else {
                sb.scales_l[ib / 2] |= (l & 0xF) << 4;
            }
            sb.scales_h |= u16::from(l >> 4) << (2 * (ib % 8));
        }
    } else {
        sb.d = f16::from_f32(scales[0]);
        if ntry > 0 {
            let id = if scales[0] != 0.0 { 1.0 / scales[0] } else { 0.0 };
            for (l, &v) in levels.iter_mut().zip(x) {
                *l = best_index(id * v);
            }
        }
    }

    for (q, lb) in sb.qs.chunks_exact_mut(16).zip(levels.chunks_exact(BLOCK)).take(n_blocks) {
        let (lo, hi) = lb.split_at(16);
        for ((q, &l0), &l1) in q.iter_mut().zip(lo).zip(hi) {
            *q = l0 | (l1 << 4);
        }
    }
    sb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn best_index_picks_the_nearest_level_and_breaks_ties_upwards() {
        for (x, i) in [
            (-200.0f32, 0u8),
            (-127.0, 0),
            (-115.5, 1),
            (-115.6, 0),
            (0.0, 8),
            (-4.5, 8),
            (-4.51, 7),
            (113.0, 15),
            (1e9, 15),
        ] {
            assert_eq!(best_index(x), i, "{x}");
        }
        for (i, &k) in KVALUES_IQ4NL.iter().enumerate() {
            assert_eq!(usize::from(best_index(f32::from(k))), i);
        }
        assert_eq!(best_index(f32::NAN), 0);
    }
}
