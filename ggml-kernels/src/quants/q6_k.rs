//! Q6_K: super-blocks of 256 weights in 16 groups of 16, `x = d * sc * (q - 32)` with 6-bit
//! quants and a signed 8-bit scale per group; 6.5625 bits per weight.
//!
//! Layout (210 bytes): `ql: [u8; 128]`, `qh: [u8; 64]`, `scales: [i8; 16]`, `d: f16`. Element
//! `e = 128 * h + 32 * s + l` (`h` < 2, `s` < 4, `l` < 32) has its low four bits in the low
//! (`s` < 2) or high (`s` >= 2) nibble of `ql[64 * h + 32 * (s % 2) + l]` and its top two bits
//! at bits `2s..2s+2` of `qh[32 * h + l]`; it is in group `e / 16`.

use half::f16;

use super::search::{make_qx_quants, nearest_int, GROUP_MAX_EPS};
use super::{impl_block, impl_quantize, QK_K};

/// One Q6_K super-block, as ggml's `block_q6_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ6K {
    /// Low four bits of each quant.
    pub ql: [u8; QK_K / 2],
    /// Top two bits of each quant.
    pub qh: [u8; QK_K / 4],
    /// Per-group scales.
    pub scales: [i8; QK_K / 16],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ6K>() == 210);
const _: () = assert!(std::mem::size_of::<BlockQ6K>() == super::type_size_of(crate::GgmlType::Q6_K));

const ZERO: BlockQ6K =
    BlockQ6K { ql: [0; QK_K / 2], qh: [0; QK_K / 4], scales: [0; QK_K / 16], d: f16::ZERO };

impl_block!(BlockQ6K, Q6_K, QK_K, ZERO);
impl_quantize!(BlockQ6K);

/// Reference dequantization (ggml's `dequantize_row_q6_K`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ6K], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (h, yh) in y.chunks_exact_mut(128).enumerate() {
            let ql = &b.ql[64 * h..][..64];
            let qh = &b.qh[32 * h..][..32];
            let sc = &b.scales[8 * h..][..8];
            for l in 0..32 {
                let is = l / 16;
                let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
                let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
                let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
                yh[l] = d * f32::from(sc[is]) * f32::from(q1);
                yh[l + 32] = d * f32::from(sc[is + 2]) * f32::from(q2);
                yh[l + 64] = d * f32::from(sc[is + 4]) * f32::from(q3);
                yh[l + 96] = d * f32::from(sc[is + 6]) * f32::from(q4);
            }
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q6_K_ref`): each group's scale comes from the
/// x²-weighted search of `make_qx_quants`, the scales are quantized to 8 bits against the one
/// of largest magnitude, and the groups are requantized with the stored scales.
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ6K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut max_abs_scale = 0.0f32;
        for (j, (xg, lg)) in xs.chunks_exact(16).zip(levels.chunks_exact_mut(16)).enumerate() {
            scales[j] = make_qx_quants(32, xg, lg);
            let abs_scale = scales[j].abs();
            if abs_scale > max_abs_scale {
                max_abs_scale = abs_scale;
                max_scale = scales[j];
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            *b = ZERO;
            continue;
        }

        let iscale = -128.0 / max_scale;
        b.d = f16::from_f32(1.0 / iscale);
        for (sc, &s) in b.scales.iter_mut().zip(&scales) {
            // ggml assigns the clamped int to an int8_t; `as i8` wraps alike.
            *sc = nearest_int(iscale * s).min(127) as i8;
        }

        for ((xg, lg), &sc) in xs.chunks_exact(16).zip(levels.chunks_exact_mut(16)).zip(&b.scales) {
            let d = b.d.to_f32() * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for (l, &v) in lg.iter_mut().zip(xg) {
                *l = (nearest_int(v / d).clamp(-32, 31) + 32) as i8;
            }
        }

        // Levels are 0..64.
        for (h, lh) in levels.chunks_exact(128).enumerate() {
            let ql = &mut b.ql[64 * h..][..64];
            let qh = &mut b.qh[32 * h..][..32];
            for l in 0..32 {
                let at = |k: usize| lh[l + 32 * k] as u8;
                ql[l] = (at(0) & 0xF) | ((at(2) & 0xF) << 4);
                ql[l + 32] = (at(1) & 0xF) | ((at(3) & 0xF) << 4);
                qh[l] = (at(0) >> 4) | ((at(1) >> 4) << 2) | ((at(2) >> 4) << 4) | ((at(3) >> 4) << 6);
            }
        }
    }
}
