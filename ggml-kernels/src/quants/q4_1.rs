//! Q4_1: blocks of 32 weights, an f16 scale and an f16 minimum, and 32 unsigned 4-bit quants;
//! 5 bits per weight.
//!
//! Layout (20 bytes): `d: f16`, `m: f16`, then `qs: [u8; 16]`. Byte `j` holds element `j` in its
//! low nibble and element `j + 16` in its high nibble; a nibble `q` decodes to `q * d + m`.

use half::f16;

use super::{impl_block, impl_quantize};

/// Elements per Q4_1 block.
pub const QK4_1: usize = 32;

/// One Q4_1 block, as ggml's `block_q4_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_1 {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of level 0).
    pub m: f16,
    /// Nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK4_1 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);
const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == super::type_size_of(crate::GgmlType::Q4_1));

impl_block!(BlockQ4_1, Q4_1, QK4_1, BlockQ4_1 { d: f16::ZERO, m: f16::ZERO, qs: [0; QK4_1 / 2] });
impl_quantize!(BlockQ4_1);

/// Reference dequantization (ggml's `dequantize_row_q4_1`).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ4_1], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK4_1);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK4_1)) {
        let d = b.d.to_f32();
        let m = b.m.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_1 / 2);
        for ((&q, y0), y1) in b.qs.iter().zip(lo).zip(hi) {
            *y0 = f32::from(q & 0x0F) * d + m;
            *y1 = f32::from(q >> 4) * d + m;
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q4_1_ref`): 16 levels spread evenly from the
/// block's minimum to its maximum, each element rounded to the nearest.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4_1]) {
    debug_assert_eq!(x.len(), out.len() * QK4_1);
    for (xb, b) in x.chunks_exact(QK4_1).zip(out.iter_mut()) {
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
        let d = (max - min) / 15.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        b.m = f16::from_f32(min);
        let (lo, hi) = xb.split_at(QK4_1 / 2);
        for ((q, &x0), &x1) in b.qs.iter_mut().zip(lo).zip(hi) {
            let q0 = (((x0 - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            let q1 = (((x1 - min) * id + 0.5) as i32).clamp(0, 15) as u8;
            *q = q0 | (q1 << 4);
        }
    }
}
