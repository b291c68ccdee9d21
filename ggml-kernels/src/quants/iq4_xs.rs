//! IQ4_XS: super-blocks of 256 weights in 8 blocks of 32, indices into the IQ4_NL table with a
//! 6-bit scale per block; 4.25 bits per weight.
//!
//! Layout (136 bytes): `d: f16`, `scales_h: u16`, `scales_l: [u8; 4]`, `qs: [u8; 128]`. Block
//! `ib` has scale `ls - 32` where `ls` takes its low four bits from nibble `ib % 2` of
//! `scales_l[ib / 2]` and its top two bits from bits `2ib..2ib+2` of `scales_h`; its 32 indices
//! are packed in `qs[16 * ib..16 * ib + 16]` as in IQ4_NL. Element decodes to
//! `d * (ls - 32) * KVALUES_IQ4NL[index]`.

use half::f16;

use super::iq4_nl::{quantize_superblock, KVALUES_IQ4NL};
use super::{impl_block, impl_quantize, QK_K};

/// One IQ4_XS super-block, as ggml's `block_iq4_xs`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockIQ4XS {
    /// Super-block scale.
    pub d: f16,
    /// Top two bits of each block's 6-bit scale.
    pub scales_h: u16,
    /// Low four bits of each block's 6-bit scale, two per byte.
    pub scales_l: [u8; QK_K / 64],
    /// Table indices, two per byte.
    pub qs: [u8; QK_K / 2],
}

const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == 136);
const _: () = assert!(std::mem::size_of::<BlockIQ4XS>() == super::type_size_of(crate::GgmlType::IQ4_XS));

impl_block!(
    BlockIQ4XS,
    IQ4_XS,
    QK_K,
    BlockIQ4XS { d: f16::ZERO, scales_h: 0, scales_l: [0; QK_K / 64], qs: [0; QK_K / 2] }
);
impl_quantize!(BlockIQ4XS);

/// Reference dequantization (ggml's `dequantize_row_iq4_xs`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockIQ4XS], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        let d = b.d.to_f32();
        for (ib, (yb, qs)) in y.chunks_exact_mut(32).zip(b.qs.chunks_exact(16)).enumerate() {
            let ls = ((b.scales_l[ib / 2] >> (4 * (ib % 2))) & 0xF)
                | ((((b.scales_h >> (2 * ib)) & 3) as u8) << 4);
            let dl = d * (i32::from(ls) - 32) as f32;
            let (lo, hi) = yb.split_at_mut(16);
            for ((&q, y0), y1) in qs.iter().zip(lo).zip(hi) {
                *y0 = dl * f32::from(KVALUES_IQ4NL[usize::from(q & 0xF)]);
                *y1 = dl * f32::from(KVALUES_IQ4NL[usize::from(q >> 4)]);
            }
        }
    }
}

/// Reference quantization (ggml's `quantize_row_iq4_xs_ref`, i.e. `quantize_iq4_xs` without
/// importance weights): the IQ4_NL best-scale search per block, then the block scales quantized
/// to 6 bits against the largest and each block requantized with its stored scale.
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockIQ4XS]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        let sb = quantize_superblock(xs, 7);
        *b = BlockIQ4XS { d: sb.d, scales_h: sb.scales_h, scales_l: sb.scales_l, qs: sb.qs };
    }
}
