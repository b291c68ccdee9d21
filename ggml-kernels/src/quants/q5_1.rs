//! Q5_1: blocks of 32 weights, an f16 scale and an f16 minimum, and 32 unsigned 5-bit quants;
//! 6 bits per weight.
//!
//! Layout (24 bytes): `d: f16`, `m: f16`, `qh: [u8; 4]`, `qs: [u8; 16]`, the bits arranged as in
//! Q5_0. A 5-bit value `q` decodes to `q * d + m`.

use half::f16;

use super::{impl_block, impl_quantize};

/// Elements per Q5_1 block.
pub const QK5_1: usize = 32;

/// One Q5_1 block, as ggml's `block_q5_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of level 0).
    pub m: f16,
    /// Fifth bits: bit `j` of the little-endian `u32` belongs to element `j`.
    pub qh: [u8; 4],
    /// Low nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK5_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == 24);
const _: () = assert!(std::mem::size_of::<BlockQ5_1>() == super::type_size_of(crate::GgmlType::Q5_1));

impl_block!(BlockQ5_1, Q5_1, QK5_1, BlockQ5_1 { d: f16::ZERO, m: f16::ZERO, qh: [0; 4], qs: [0; QK5_1 / 2] });
impl_quantize!(BlockQ5_1);

/// Reference dequantization (ggml's `dequantize_row_q5_1`).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ5_1], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK5_1);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK5_1)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        let (lo, hi) = y.split_at_mut(QK5_1 / 2);
        for (j, ((&q, y0), y1)) in b.qs.iter().zip(lo).zip(hi).enumerate() {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            *y0 = (u32::from(q & 0x0F) | h0) as f32 * d + m;
            *y1 = (u32::from(q >> 4) | h1) as f32 * d + m;
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q5_1_ref`): 32 levels spread evenly from the
/// block's minimum to its maximum, each element rounded to the nearest.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5_1]) {
    debug_assert_eq!(x.len(), out.len() * QK5_1);
    for (xb, b) in x.chunks_exact(QK5_1).zip(out.iter_mut()) {
        let mut min = f32::MAX;
        let mut max = -f32::MAX;
        for &v in xb {
            if v < min {
                min = v;
            }
            if v > max {
                max = v;
            }
        }
        let d = (max - min) / 31.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        let mut qh = 0u32;
        let (lo, hi) = xb.split_at(QK5_1 / 2);
        for (j, ((q, &x0), &x1)) in b.qs.iter_mut().zip(lo).zip(hi).enumerate() {
            // ggml does not clamp here ((x - min) * id never exceeds 31 + rounding); the clamp
            // only guards against non-finite input.
            let q0 = (((x0 - min) * id + 0.5) as i32).clamp(0, 31) as u32;
            let q1 = (((x1 - min) * id + 0.5) as i32).clamp(0, 31) as u32;
            *q = ((q0 & 0x0F) | ((q1 & 0x0F) << 4)) as u8;
            qh |= ((q0 & 0x10) >> 4) << j;
            qh |= ((q1 & 0x10) >> 4) << (j + QK5_1 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}
