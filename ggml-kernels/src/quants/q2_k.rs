//! Q2_K: super-blocks of 256 weights in 16 groups of 16, `x = d * sc * q - dmin * m` with 2-bit
//! quants and a 4-bit scale and 4-bit min per group; 2.625 bits per weight.
//!
//! Layout (84 bytes): `scales: [u8; 16]` (group `g`: scale in the low nibble, min in the high),
//! `qs: [u8; 64]`, `d: f16`, `dmin: f16`. Element `e = 128 * h + 32 * s + l` (half `h` < 2,
//! shift `s` < 4, `l` < 32) is bits `2s..2s+2` of `qs[32 * h + l]`, in group `e / 16`.

use half::f16;

use super::search::{make_qkx2_quants, nearest_int, Qkx2Search};
use super::{impl_block, impl_quantize, QK_K};

/// One Q2_K super-block, as ggml's `block_q2_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ2K {
    /// Per-group 4-bit scale (low nibble) and 4-bit min (high nibble).
    pub scales: [u8; QK_K / 16],
    /// 2-bit quants, four per byte.
    pub qs: [u8; QK_K / 4],
    /// Super-block scale of the group scales.
    pub d: f16,
    /// Super-block scale of the group mins.
    pub dmin: f16,
}

const _: () = assert!(std::mem::size_of::<BlockQ2K>() == 84);
const _: () = assert!(std::mem::size_of::<BlockQ2K>() == super::type_size_of(crate::GgmlType::Q2_K));

impl_block!(
    BlockQ2K,
    Q2_K,
    QK_K,
    BlockQ2K { scales: [0; QK_K / 16], qs: [0; QK_K / 4], d: f16::ZERO, dmin: f16::ZERO }
);
impl_quantize!(BlockQ2K);

/// Reference dequantization (ggml's `dequantize_row_q2_K`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ2K], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        // Each 16-element group reads 16 bytes of qs at one shift.
        for (g, (yg, &sc)) in y.chunks_exact_mut(16).zip(&b.scales).enumerate() {
            let q = &b.qs[32 * (g / 8) + 16 * (g % 2)..][..16];
            let shift = 2 * ((g / 2) % 4);
            let dl = d * f32::from(sc & 0xF);
            let ml = min * f32::from(sc >> 4);
            for (y, &q) in yg.iter_mut().zip(q) {
                *y = dl * f32::from((q >> shift) & 3) - ml;
            }
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q2_K_ref`): each group's scale and min come from
/// a search weighted by |x| minimising absolute error, then are quantized to 4 bits against the
/// largest of each, and the group is requantized with the stored values.
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ2K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    const Q4SCALE: f32 = 15.0;
    let search = Qkx2Search { nmax: 3, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: true };
    let mut levels = [0u8; QK_K];
    let mut aux = [0u8; 16];
    let mut weights = [0.0f32; 16];
    let mut scales = [0.0f32; QK_K / 16];
    let mut mins = [0.0f32; QK_K / 16];
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // As the min is subtracted, scales are never negative.
        let mut max_scale = 0.0f32;
        let mut max_min = 0.0f32;
        for (j, (xg, lg)) in xs.chunks_exact(16).zip(levels.chunks_exact_mut(16)).enumerate() {
            for (w, &v) in weights.iter_mut().zip(xg) {
                *w = v.abs();
            }
            (scales[j], mins[j]) = make_qkx2_quants(search, xg, &weights, lg, &mut aux);
            if scales[j] > max_scale {
                max_scale = scales[j];
            }
            if mins[j] > max_min {
                max_min = mins[j];
            }
        }

        // ggml assigns the rounded int to a uint8_t; `as u8` wraps the same way.
        if max_scale > 0.0 {
            let iscale = Q4SCALE / max_scale;
            for (sc, &s) in b.scales.iter_mut().zip(&scales) {
                *sc = nearest_int(iscale * s) as u8;
            }
            b.d = f16::from_f32(max_scale / Q4SCALE);
        } else {
            b.scales = [0; QK_K / 16];
            b.d = f16::ZERO;
        }
        if max_min > 0.0 {
            let iscale = Q4SCALE / max_min;
            for (sc, &m) in b.scales.iter_mut().zip(&mins) {
                *sc |= (nearest_int(iscale * m) << 4) as u8;
            }
            b.dmin = f16::from_f32(max_min / Q4SCALE);
        } else {
            b.dmin = f16::ZERO;
        }

        for ((xg, lg), &sc) in xs.chunks_exact(16).zip(levels.chunks_exact_mut(16)).zip(&b.scales) {
            let d = b.d.to_f32() * f32::from(sc & 0xF);
            if d == 0.0 {
                continue;
            }
            let dm = b.dmin.to_f32() * f32::from(sc >> 4);
            for (l, &v) in lg.iter_mut().zip(xg) {
                *l = nearest_int((v + dm) / d).clamp(0, 3) as u8;
            }
        }

        for (h, qh) in b.qs.chunks_exact_mut(32).enumerate() {
            let lh = &levels[128 * h..][..128];
            for (l, q) in qh.iter_mut().enumerate() {
                *q = lh[l] | (lh[l + 32] << 2) | (lh[l + 64] << 4) | (lh[l + 96] << 6);
            }
        }
    }
}
