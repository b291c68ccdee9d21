//! Q4_0: blocks of 32 weights, one f16 scale and 32 signed 4-bit quants; 4.5 bits per weight.
//!
//! Layout (18 bytes): `d: f16`, then `qs: [u8; 16]`. Byte `j` holds element `j` in its low
//! nibble and element `j + 16` in its high nibble; a nibble `q` decodes to `(q - 8) * d`.

use half::f16;

use super::{impl_block, impl_quantize};

/// Elements per Q4_0 block.
pub const QK4_0: usize = 32;

/// One Q4_0 block, as ggml's `block_q4_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ4_0 {
    /// Scale.
    pub d: f16,
    /// Nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK4_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == super::type_size_of(crate::GgmlType::Q4_0));

impl_block!(BlockQ4_0, Q4_0, QK4_0, BlockQ4_0 { d: f16::ZERO, qs: [0; QK4_0 / 2] });
impl_quantize!(BlockQ4_0);

/// Reference dequantization (ggml's `dequantize_row_q4_0`).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ4_0], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK4_0);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK4_0)) {
        let d = b.d.to_f32();
        let (lo, hi) = y.split_at_mut(QK4_0 / 2);
        for ((&q, y0), y1) in b.qs.iter().zip(lo).zip(hi) {
            *y0 = (i32::from(q & 0x0F) - 8) as f32 * d;
            *y1 = (i32::from(q >> 4) - 8) as f32 * d;
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q4_0_ref`): the scale maps the element of
/// largest magnitude to -8, and each element is rounded to the nearest of the 16 levels.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ4_0]) {
    debug_assert_eq!(x.len(), out.len() * QK4_0);
    for (xb, b) in x.chunks_exact(QK4_0).zip(out.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -8.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let (lo, hi) = xb.split_at(QK4_0 / 2);
        for ((q, &x0), &x1) in b.qs.iter_mut().zip(lo).zip(hi) {
            // x * id lies in [-8, 8], so x * id + 8.5 truncates to 0..=16; 16 becomes 15.
            let q0 = ((x0 * id + 8.5) as i32).clamp(0, 15) as u8;
            let q1 = ((x1 * id + 8.5) as i32).clamp(0, 15) as u8;
            *q = q0 | (q1 << 4);
        }
    }
}
