//! Q8_1: Q8_0 plus the block sum; the activation format paired with Q4_1 and Q5_1 in dot
//! products. 9 bits per weight.
//!
//! Layout (36 bytes): `d: f16`, `s: f16` (= `d * sum(qs)`), then `qs: [i8; 32]`; element `j`
//! decodes to `qs[j] * d`. ggml has no dequantizer for Q8_1; [`dequantize_row`] decodes the
//! quants the same way as Q8_0 and ignores `s`.

use half::f16;

use super::q8_0::{quantize_block, Rule};
use super::{impl_block, impl_quantize};

/// Elements per Q8_1 block.
pub const QK8_1: usize = 32;

/// One Q8_1 block, as ggml's `block_q8_1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_1 {
    /// Scale.
    pub d: f16,
    /// `d * sum(qs)`.
    pub s: f16,
    /// Quants.
    pub qs: [i8; QK8_1],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == 36);
const _: () = assert!(std::mem::size_of::<BlockQ8_1>() == super::type_size_of(crate::GgmlType::Q8_1));

impl_block!(BlockQ8_1, Q8_1, QK8_1, BlockQ8_1 { d: f16::ZERO, s: f16::ZERO, qs: [0; QK8_1] });
impl_quantize!(BlockQ8_1);

/// Dequantization: `qs[j] * d` (ggml defines none for this type).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ8_1], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK8_1);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK8_1)) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q8_1_ref`): as Q8_0, plus `s = sum(qs) * d`.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8_1]) {
    quantize_row_by(x, out, Rule::Reference);
}

/// The activation quantizer of ggml's x86 CPU backend (`quantize_row_q8_1`), as
/// [`super::q8_0::quantize_row_act`] plus `s = sum(qs) * d`.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row_act(x: &[f32], out: &mut [BlockQ8_1]) {
    quantize_row_by(x, out, Rule::Activations);
}

/// Q8_0's block quantization by `rule`, plus `s = sum(qs) * d`.
#[inline]
fn quantize_row_by(x: &[f32], out: &mut [BlockQ8_1], rule: Rule) {
    debug_assert_eq!(x.len(), out.len() * QK8_1);
    for (xb, b) in x.chunks_exact(QK8_1).zip(out.iter_mut()) {
        let d = quantize_block(xb, rule, &mut b.qs);
        b.d = f16::from_f32(d);
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        b.s = f16::from_f32(sum as f32 * d);
    }
}
