//! Q4_K: super-blocks of 256 weights in 8 groups of 32, `x = d * sc * q - dmin * m` with 4-bit
//! quants and a 6-bit scale and 6-bit min per group; 4.5 bits per weight.
//!
//! Layout (144 bytes): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (eight scales and eight mins of
//! 6 bits, packed as described at `get_scale_min_k4`), `qs: [u8; 128]`. Element
//! `e = 64 * c + 32 * k + l` (`c` < 4, `k` < 2, `l` < 32) is the low (`k = 0`) or high (`k = 1`)
//! nibble of `qs[32 * c + l]`, in group `2 * c + k`.

use half::f16;

use super::search::{get_scale_min_k4, quantize_k4_superblock, Qkx2Search};
use super::{impl_block, impl_quantize, QK_K};

/// Bytes of packed 6-bit scales and mins in Q4_K and Q5_K.
pub const K_SCALE_SIZE: usize = 12;

/// One Q4_K super-block, as ggml's `block_q4_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4K {
    /// Super-block scale of the group scales.
    pub d: f16,
    /// Super-block scale of the group mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed.
    pub scales: [u8; K_SCALE_SIZE],
    /// 4-bit quants.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4K>() == 144);
const _: () = assert!(std::mem::size_of::<BlockQ4K>() == super::type_size_of(crate::GgmlType::Q4_K));

impl_block!(
    BlockQ4K,
    Q4_K,
    QK_K,
    BlockQ4K { d: f16::ZERO, dmin: f16::ZERO, scales: [0; K_SCALE_SIZE], qs: [0; QK_K / 2] }
);
impl_quantize!(BlockQ4K);

/// Reference dequantization (ggml's `dequantize_row_q4_K`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ4K], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for (c, (yc, q)) in y.chunks_exact_mut(64).zip(b.qs.chunks_exact(32)).enumerate() {
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (lo, hi) = yc.split_at_mut(32);
            for ((y0, y1), &q) in lo.iter_mut().zip(hi).zip(q) {
                *y0 = d1 * f32::from(q & 0xF) - m1;
                *y1 = d2 * f32::from(q >> 4) - m2;
            }
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q4_K_ref`): each group's scale and min come from
/// a search weighted by `rms(group) + |x|`, are quantized to 6 bits against the largest of each,
/// and the groups are requantized with the stored values.
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    let search = Qkx2Search { nmax: 15, rmin: -1.0, rdelta: 0.1, nstep: 20, use_mad: false };
    let mut levels = [0u8; QK_K];
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        (b.d, b.dmin, b.scales) = quantize_k4_superblock(xs, search, &mut levels);
        for (q, lc) in b.qs.chunks_exact_mut(32).zip(levels.chunks_exact(64)) {
            let (lo, hi) = lc.split_at(32);
            for ((q, &l0), &l1) in q.iter_mut().zip(lo).zip(hi) {
                *q = l0 | (l1 << 4);
            }
        }
    }
}
