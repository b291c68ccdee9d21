//! Q3_K: super-blocks of 256 weights in 16 groups of 16, `x = d * (sc - 32) * (q - 4)` with
//! 3-bit quants and a 6-bit signed scale per group; 3.4375 bits per weight.
//!
//! Layout (110 bytes): `hmask: [u8; 32]`, `qs: [u8; 64]`, `scales: [u8; 12]`, `d: f16`.
//! Element `e = 128 * h + 32 * s + l` (`h` < 2, `s` < 4, `l` < 32) has its low two bits at bits
//! `2s..2s+2` of `qs[32 * h + l]` and its third bit at bit `4h + s` of `hmask[l]`; a clear third
//! bit means 4 is subtracted. Group `g` keeps the low four bits of its scale in the low nibble
//! of `scales[g]` (`g` < 8) or the high nibble of `scales[g - 8]`, and its top two bits at bits
//! `2 * (g / 4)..` of `scales[8 + g % 4]`.

use half::f16;

use super::search::{make_q3_quants, nearest_int};
use super::{impl_block, impl_quantize, QK_K};

/// One Q3_K super-block, as ggml's `block_q3_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ3K {
    /// Third bit of each quant (set: no offset; clear: subtract 4).
    pub hmask: [u8; QK_K / 8],
    /// Low two bits of each quant, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Sixteen 6-bit scales, packed.
    pub scales: [u8; 12],
    /// Super-block scale.
    pub d: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ3K>() == 110);
const _: () = assert!(std::mem::size_of::<BlockQ3K>() == super::type_size_of(crate::GgmlType::Q3_K));

impl_block!(
    BlockQ3K,
    Q3_K,
    QK_K,
    BlockQ3K { hmask: [0; QK_K / 8], qs: [0; QK_K / 4], scales: [0; 12], d: f16::ZERO }
);
impl_quantize!(BlockQ3K);

/// The 6-bit scale of group `g` (0..16), without the offset of 32.
#[inline]
fn scale_of(scales: &[u8; 12], g: usize) -> u8 {
    let low = if g < 8 { scales[g] & 0xF } else { scales[g - 8] >> 4 };
    let high = (scales[8 + g % 4] >> (2 * (g / 4))) & 3;
    low | (high << 4)
}

/// Reference dequantization (ggml's `dequantize_row_q3_K`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ3K], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d_all = b.d.to_f32();
        for (g, yg) in y.chunks_exact_mut(16).enumerate() {
            let (h, s, l0) = (g / 8, (g / 2) % 4, 16 * (g % 2));
            let q = &b.qs[32 * h + l0..][..16];
            let hm = &b.hmask[l0..][..16];
            let m = 1u8 << (4 * h + s);
            let dl = d_all * f32::from(scale_of(&b.scales, g) as i8 - 32);
            for ((y, &q), &hm) in yg.iter_mut().zip(q).zip(hm) {
                let v = ((q >> (2 * s)) & 3) as i8 - if hm & m != 0 { 0 } else { 4 };
                *y = dl * f32::from(v);
            }
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q3_K_ref`): each group's scale comes from the
/// x²-weighted search of `make_q3_quants`, the scales are quantized to 6 bits against the one of
/// largest magnitude, and the groups are requantized with the stored scales.
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ3K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    let mut levels = [0i8; QK_K];
    let mut scales = [0.0f32; QK_K / 16];
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let mut max_scale = 0.0f32;
        let mut amax = 0.0f32;
        for (j, (xg, lg)) in xs.chunks_exact(16).zip(levels.chunks_exact_mut(16)).enumerate() {
            scales[j] = make_q3_quants(4, xg, lg);
            let scale = scales[j].abs();
            if scale > amax {
                amax = scale;
                max_scale = scales[j];
            }
        }

        b.scales = [0; 12];
        if max_scale != 0.0 {
            let iscale = -32.0 / max_scale;
            for (j, &s) in scales.iter().enumerate() {
                // ggml stores the rounded int in an int8_t before clamping; `as i8` wraps alike.
                let l = ((nearest_int(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
                if j < 8 {
                    b.scales[j] = l & 0xF;
                } else {
                    b.scales[j - 8] |= (l & 0xF) << 4;
                }
                b.scales[j % 4 + 8] |= (l >> 4) << (2 * (j / 4));
            }
            b.d = f16::from_f32(1.0 / iscale);
        } else {
            b.d = f16::ZERO;
        }

        for (g, (xg, lg)) in xs.chunks_exact(16).zip(levels.chunks_exact_mut(16)).enumerate() {
            let sc = scale_of(&b.scales, g) as i8 - 32;
            let d = b.d.to_f32() * f32::from(sc);
            if d == 0.0 {
                continue;
            }
            for (l, &v) in lg.iter_mut().zip(xg) {
                *l = (nearest_int(v / d).clamp(-4, 3) + 4) as i8;
            }
        }

        // Levels are 0..8; the third bit goes to hmask, the low two bits to qs.
        b.hmask = [0; QK_K / 8];
        for (e, l) in levels.iter_mut().enumerate() {
            if *l > 3 {
                b.hmask[e % 32] |= 1 << (e / 32);
                *l -= 4;
            }
        }
        for (h, qh) in b.qs.chunks_exact_mut(32).enumerate() {
            let lh = &levels[128 * h..][..128];
            for (l, q) in qh.iter_mut().enumerate() {
                let at = |k: usize| lh[l + 32 * k] as u8;
                *q = at(0) | (at(1) << 2) | (at(2) << 4) | (at(3) << 6);
            }
        }
    }
}
