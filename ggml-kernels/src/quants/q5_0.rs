//! Q5_0: blocks of 32 weights, one f16 scale and 32 signed 5-bit quants; 5.5 bits per weight.
//!
//! Layout (22 bytes): `d: f16`, `qh: [u8; 4]`, `qs: [u8; 16]`. The low four bits of element `j`
//! are the low nibble of `qs[j]` (`j < 16`) or the high nibble of `qs[j - 16]`; its fifth bit is
//! bit `j` of `qh` read as a little-endian `u32`. A 5-bit value `q` decodes to `(q - 16) * d`.

use half::f16;

use super::{impl_block, impl_quantize};

/// Elements per Q5_0 block.
pub const QK5_0: usize = 32;

/// One Q5_0 block, as ggml's `block_q5_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ5_0 {
    /// Scale.
    pub d: f16,
    /// Fifth bits: bit `j` of the little-endian `u32` belongs to element `j`.
    pub qh: [u8; 4],
    /// Low nibbles: element `j` low, element `j + 16` high.
    pub qs: [u8; QK5_0 / 2],
}

const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == 22);
const _: () = assert!(std::mem::size_of::<BlockQ5_0>() == super::type_size_of(crate::GgmlType::Q5_0));

impl_block!(BlockQ5_0, Q5_0, QK5_0, BlockQ5_0 { d: f16::ZERO, qh: [0; 4], qs: [0; QK5_0 / 2] });
impl_quantize!(BlockQ5_0);

/// Reference dequantization (ggml's `dequantize_row_q5_0`).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ5_0], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK5_0);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK5_0)) {
        let d = b.d.to_f32();
        let qh = u32::from_le_bytes(b.qh);
        let (lo, hi) = y.split_at_mut(QK5_0 / 2);
        for (j, ((&q, y0), y1)) in b.qs.iter().zip(lo).zip(hi).enumerate() {
            let h0 = ((qh >> j) << 4) & 0x10;
            let h1 = (qh >> (j + 12)) & 0x10;
            *y0 = ((u32::from(q & 0x0F) | h0) as i32 - 16) as f32 * d;
            *y1 = ((u32::from(q >> 4) | h1) as i32 - 16) as f32 * d;
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q5_0_ref`): the scale maps the element of
/// largest magnitude to -16, and each element is rounded to the nearest of the 32 levels.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ5_0]) {
    debug_assert_eq!(x.len(), out.len() * QK5_0);
    for (xb, b) in x.chunks_exact(QK5_0).zip(out.iter_mut()) {
        let mut amax = 0.0f32;
        let mut max = 0.0f32;
        for &v in xb {
            if amax < v.abs() {
                amax = v.abs();
                max = v;
            }
        }
        let d = max / -16.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        b.d = f16::from_f32(d);
        let mut qh = 0u32;
        let (lo, hi) = xb.split_at(QK5_0 / 2);
        for (j, ((q, &x0), &x1)) in b.qs.iter_mut().zip(lo).zip(hi).enumerate() {
            let q0 = ((x0 * id + 16.5) as i32).clamp(0, 31) as u32;
            let q1 = ((x1 * id + 16.5) as i32).clamp(0, 31) as u32;
            *q = ((q0 & 0x0F) | ((q1 & 0x0F) << 4)) as u8;
            qh |= ((q0 & 0x10) >> 4) << j;
            qh |= ((q1 & 0x10) >> 4) << (j + QK5_0 / 2);
        }
        b.qh = qh.to_le_bytes();
    }
}
