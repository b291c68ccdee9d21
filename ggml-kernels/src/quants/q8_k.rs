//! Q8_K: super-blocks of 256 signed 8-bit quants with an `f32` scale and the sums of each group
//! of 16; the activation format that K-quant and IQ4_XS dot products pair with. 9.125 bits per
//! weight.
//!
//! Layout (292 bytes, 4-byte aligned): `d: f32`, `qs: [i8; 256]`, `bsums: [i16; 16]`; element
//! `j` decodes to `d * qs[j]`.

use super::search::nearest_int;
use super::{impl_block, impl_quantize, QK_K};

/// One Q8_K super-block, as ggml's `block_q8_K`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8K {
    /// Scale.
    pub d: f32,
    /// Quants.
    pub qs: [i8; QK_K],
    /// Sum of each group of 16 quants.
    pub bsums: [i16; QK_K / 16],
}

const _: () = assert!(std::mem::size_of::<BlockQ8K>() == 292);
const _: () = assert!(std::mem::size_of::<BlockQ8K>() == super::type_size_of(crate::GgmlType::Q8_K));

impl_block!(BlockQ8K, Q8_K, QK_K, BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] });
impl_quantize!(BlockQ8K);

/// Reference dequantization (ggml's `dequantize_row_q8_K`).
///
/// Precondition: `out.len() == blocks.len() * 256` (debug-asserted).
pub fn dequantize_row(blocks: &[BlockQ8K], out: &mut [f32]) {
    debug_assert_eq!(out.len(), blocks.len() * QK_K);
    for (b, y) in blocks.iter().zip(out.chunks_exact_mut(QK_K)) {
        for (y, &q) in y.iter_mut().zip(&b.qs) {
            *y = b.d * f32::from(q);
        }
    }
}

/// Reference quantization (ggml's `quantize_row_q8_K_ref`): the element of largest magnitude
/// maps to -127 (the sign of `d` absorbs its sign), each element rounded to nearest, ties to
/// even. An all-zero block is stored as all zeros (ggml leaves its `bsums` untouched).
///
/// Precondition: `x.len() == out.len() * 256` (debug-asserted).
pub fn quantize_row(x: &[f32], out: &mut [BlockQ8K]) {
    debug_assert_eq!(x.len(), out.len() * QK_K);
    for (xs, b) in x.chunks_exact(QK_K).zip(out.iter_mut()) {
        // A NaN: scale NaN, quants 0, so that the products reading the block are NaN (the
        // maximum below would skip it; see `q8_0::act_scale_of`).
        if xs.iter().any(|v| v.is_nan()) {
            *b = BlockQ8K { d: f32::NAN, qs: [0; QK_K], bsums: [0; QK_K / 16] };
            continue;
        }
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &v in xs {
            let ax = v.abs();
            if ax > amax {
                amax = ax;
                max = v;
            }
        }
        if amax == 0.0 {
            *b = BlockQ8K { d: 0.0, qs: [0; QK_K], bsums: [0; QK_K / 16] };
            continue;
        }
        let iscale = -127.0 / max;
        for (q, &v) in b.qs.iter_mut().zip(xs) {
            *q = nearest_int(iscale * v).min(127) as i8;
        }
        for (s, qg) in b.bsums.iter_mut().zip(b.qs.chunks_exact(16)) {
            *s = qg.iter().map(|&q| i16::from(q)).sum();
        }
        b.d = 1.0 / iscale;
    }
}
