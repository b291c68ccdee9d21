//! Q8_0: blocks of 32 weights, one f16 scale and 32 signed 8-bit quants; 8.5 bits per weight.
//!
//! Layout (34 bytes): `d: f16`, then `qs: [i8; 32]`; element `j` decodes to `qs[j] * d`. Used
//! both for weights and as the activation format that Q4_0, Q4_1 (via Q8_1), Q5_x, Q8_0 and
//! IQ4_NL dot products pair with.

use half::f16;

use super::{impl_block, impl_quantize};

/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;

/// One Q8_0 block, as ggml's `block_q8_0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants.
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == super::type_size_of(crate::GgmlType::Q8_0));

impl_block!(BlockQ8_0, Q8_0, QK8_0, BlockQ8_0 { d: f16::ZERO, qs: [0; QK8_0] });
impl_quantize!(BlockQ8_0);

/// Reference dequantization (ggml's `dequantize_row_q8_0`).
///
/// Precondition: `out.len() == blocks.len() * 32` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ8_0], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK8_0);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK8_0)) {
        let d = b.d.to_f32();
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = f32::from(q) * d;
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q8_0_ref`): `d = max|x| / 127`, each element
/// rounded half away from zero.
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), out.len() * QK8_0);
    for (xb, b) in x.chunks_exact(QK8_0).zip(out.iter_mut()) {
        b.d = f16::from_f32(quantize_block(xb, Rule::Reference, &mut b.qs));
    }
}

/// The activation quantizer of ggml's x86 CPU backend (`quantize_row_q8_0` with AVX, AVX2 or
/// AVX-512, what llama.cpp runs on x86): the same scale `d = max|x| / 127`, but each element is
/// multiplied by `127 / max|x|` (not `1 / d`) and rounded to nearest, ties to even. The two rules
/// give different quants for about one element in a few hundred, enough to move Gemma 3's logits
/// by a few hundredths; our products quantize their activations this way so that they compute
/// what llama.cpp computes. Weights keep the reference rule ([`quantize_row`], llama-quantize's).
///
/// Precondition: `x.len() == out.len() * 32` (debug-asserted).
pub fn quantize_row_act(x: &[f32], out: &mut [BlockQ8_0]) {
    debug_assert_eq!(x.len(), out.len() * QK8_0);
    for (xb, b) in x.chunks_exact(QK8_0).zip(out.iter_mut()) {
        b.d = f16::from_f32(quantize_block(xb, Rule::Activations, &mut b.qs));
    }
}

/// The two ways a block of 32 floats becomes 8-bit quants (Q8_0 and Q8_1 alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// ggml's `_ref` quantizers (and llama-quantize's): multiplied by `1 / d`, rounded half away
    /// from zero ([`scale_of`]).
    Reference,
    /// ggml's x86 activation quantizers: multiplied by `127 / max|x|`, rounded ties to even
    /// ([`act_scale_of`]).
    Activations,
}

/// Quantizes one block `xb` (32 floats) into `qs` by `rule`; returns the scale `d`.
#[inline]
pub(crate) fn quantize_block(xb: &[f32], rule: Rule, qs: &mut [i8; QK8_0]) -> f32 {
    let (d, id) = match rule {
        Rule::Reference => scale_of(xb),
        Rule::Activations => act_scale_of(xb),
    };
    for (q, &v) in qs.iter_mut().zip(xb) {
        let x = v * id;
        *q = match rule {
            Rule::Reference => x.round(),
            Rule::Activations => x.round_ties_even(),
        } as i8;
    }
    d
}

/// The scale `max|x| / 127` of a block and the multiplier `127 / max|x|` (0 for an all-zero
/// block), as ggml's x86 Q8_0 and Q8_1 activation quantizers compute them. A block holding a NaN
/// gets the scale NaN and the multiplier 0 (all quants 0), so that every product reading it is
/// NaN: the maximum skips a NaN, and ggml's rule would quantize the block as if it were not
/// there, turning a model that went wrong into finite output.
pub(crate) fn act_scale_of(xb: &[f32]) -> (f32, f32) {
    if xb.iter().any(|v| v.is_nan()) {
        return (f32::NAN, 0.0);
    }
    let amax = xb.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
    (amax / 127.0, if amax != 0.0 { 127.0 / amax } else { 0.0 })
}

/// The scale `max|x| / 127` of a block and its inverse (0 for an all-zero block), computed as
/// ggml's Q8_0 and Q8_1 reference quantizers do.
pub(crate) fn scale_of(xb: &[f32]) -> (f32, f32) {
    let mut amax = 0.0f32;
    for &v in xb {
        // ggml's MAX(amax, fabsf(v)), kept in that form.
        let a = v.abs();
        amax = if amax > a { amax } else { a };
    }
    let d = amax / 127.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    (d, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activation_rule_rounds_ties_to_even_with_127_over_max() {
        // max|x| = 127: d = 1, both rules multiply by 1; the ties tell them apart.
        let mut x = [0.0f32; QK8_0];
        x[..6].copy_from_slice(&[127.0, 0.5, 1.5, 2.5, -0.5, -3.5]);
        let (mut act, mut reference) = ([BlockQ8_0 { d: f16::ZERO, qs: [0; QK8_0] }], [BlockQ8_0 { d: f16::ZERO, qs: [0; QK8_0] }]);
        quantize_row_act(&x, &mut act);
        quantize_row(&x, &mut reference);
        assert_eq!(act[0].d, f16::ONE);
        assert_eq!(act[0].qs[..6], [127, 0, 2, 2, 0, -4]);
        assert_eq!(reference[0].qs[..6], [127, 1, 2, 3, -1, -4]);
        // The multiplier is 127 / max|x| (not 1 / d): the largest element maps to 127 exactly.
        let y: Vec<f32> = (0..QK8_0).map(|i| 0.37 * (i as f32 - 15.3)).collect();
        quantize_row_act(&y, &mut act);
        let id = 127.0 / y.iter().fold(0f32, |m, v| m.max(v.abs()));
        assert!(act[0].qs.iter().zip(&y).all(|(&q, &v)| f32::from(q) == (v * id).round_ties_even()));
    }
}
