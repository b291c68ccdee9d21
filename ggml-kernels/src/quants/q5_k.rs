//! Q5_K: super-blocks of 256 weights in 8 groups of 32, `x = d * sc * q - dmin * m` with 5-bit
//! quants and a 6-bit scale and 6-bit min per group; 5.5 bits per weight.
//!
//! Layout (176 bytes): `d: f16`, `dmin: f16`, `scales: [u8; 12]` (packed as in Q4_K),
//! `qh: [u8; 32]`, `qs: [u8; 128]`. Element `e = 64 * c + 32 * k + l` (`c` < 4, `k` < 2,
//! `l` < 32) has its low four bits in the low (`k = 0`) or high (`k = 1`) nibble of
//! `qs[32 * c + l]` and its fifth bit at bit `2c + k` of `qh[l]`; it is in group `2c + k`.

use half::f16;

use super::q4_k::K_SCALE_SIZE;
use super::search::{get_scale_min_k4, quantize_k4_superblock, Qkx2Search};
use super::{impl_block, impl_quantize, QK_K};

/// One Q5_K super-block, as ggml's `block_q5_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5K {
    /// Super-block scale of the group scales.
    pub d: f16,
    /// Super-block scale of the group mins.
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed.
    pub scales: [u8; K_SCALE_SIZE],
    /// Fifth bit of each quant.
    pub qh: [u8; QK_K / 8],
    /// Low four bits of each quant.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5K>() == 176);
const _: () = assert!(std::mem::size_of::<BlockQ5K>() == super::type_size_of(crate::GgmlType::Q5_K));

impl_block!(
    BlockQ5K,
    Q5_K,
    QK_K,
    BlockQ5K {
        d: f16::ZERO,
        dmin: f16::ZERO,
        scales: [0; K_SCALE_SIZE],
        qh: [0; QK_K / 8],
        qs: [0; QK_K / 2]
    }
);
impl_quantize!(BlockQ5K);

/// Reference dequantization (ggml's `dequantize_row_q5_K`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ5K], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        let min = b.dmin.to_f32();
        for (c, (yc, ql)) in y.chunks_exact_mut(64).zip(b.qs.chunks_exact(32)).enumerate() {
            let (sc1, m1) = get_scale_min_k4(2 * c, &b.scales);
            let (sc2, m2) = get_scale_min_k4(2 * c + 1, &b.scales);
            let (d1, m1) = (d * f32::from(sc1), min * f32::from(m1));
            let (d2, m2) = (d * f32::from(sc2), min * f32::from(m2));
            let (u1, u2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (lo, hi) = yc.split_at_mut(32);
            for (((y0, y1), &ql), &qh) in lo.iter_mut().zip(hi).zip(ql).zip(&b.qh) {
                let h0 = if qh & u1 != 0 { 16 } else { 0 };
                let h1 = if qh & u2 != 0 { 16 } else { 0 };
                *y0 = d1 * f32::from((ql & 0xF) + h0) - m1;
                *y1 = d2 * f32::from((ql >> 4) + h1) - m2;
            }
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q5_K_ref`): as Q4_K with 32 levels and a
/// narrower scale search.
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    let search = Qkx2Search { nmax: 31, rmin: -0.5, rdelta: 0.1, nstep: 15, use_mad: false };
    let mut levels = [0u8; QK_K];
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        (b.d, b.dmin, b.scales) = quantize_k4_superblock(xs, search, &mut levels);
        b.qh = [0; QK_K / 8];
        for (c, (q, lc)) in b.qs.chunks_exact_mut(32).zip(levels.chunks_exact(64)).enumerate() {
            let (m1, m2) = (1u8 << (2 * c), 2u8 << (2 * c));
            let (lo, hi) = lc.split_at(32);
            for (((q, qh), &l1), &l2) in q.iter_mut().zip(b.qh.iter_mut()).zip(lo).zip(hi) {
                let (mut l1, mut l2) = (l1, l2);
                if l1 > 15 {
                    l1 -= 16;
                    *qh |= m1;
                }
                if l2 > 15 {
                    l2 -= 16;
                    *qh |= m2;
                }
                *q = l1 | (l2 << 4);
            }
        }
    }
}
