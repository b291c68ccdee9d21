//! Whether a tensor's encoded data can only produce finite values: every element of a float
//! tensor, and every scale of a quantized one (a block's values are small integers times its
//! scales, so finite scales give finite weights). A NaN or infinite weight in a quantized matrix
//! does not always reach the logits as NaN: the products quantize their activations, and a
//! quantizer given a NaN takes no maximum from it and writes zeros, so the model would go on
//! with silent garbage. Loaders check the data once instead (llama.cpp's `--check-tensors`
//! checks the same, on request).

use std::fmt;
use std::mem::{offset_of, size_of};

use half::f16;

use super::*;
use crate::GgmlType;

/// The first value a tensor's data cannot hold finite.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NonFinite {
    /// Element `index` of a float tensor.
    Element { index: usize, value: f32 },
    /// A scale of block `block` of a quantized tensor.
    Scale { block: usize, value: f32 },
}

impl fmt::Display for NonFinite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NonFinite::Element { index, value } => write!(f, "element {index} is {value}"),
            NonFinite::Scale { block, value } => write!(f, "block {block} has a scale of {value}"),
        }
    }
}

/// Byte size and f16 scale offsets (`d`, and `dmin` or `m` where the format has one) of a
/// quantized block type; `None` for the others.
fn f16_scales(ty: GgmlType) -> Option<(usize, &'static [usize])> {
    use GgmlType as T;
    macro_rules! scales {
        ($b:ty, $($field:ident),+) => {{
            const OFFSETS: &[usize] = &[$(offset_of!($b, $field)),+];
            Some((size_of::<$b>(), OFFSETS))
        }};
    }
    match ty {
        T::Q4_0 => scales!(BlockQ4_0, d),
        T::Q4_1 => scales!(BlockQ4_1, d, m),
        T::Q5_0 => scales!(BlockQ5_0, d),
        T::Q5_1 => scales!(BlockQ5_1, d, m),
        T::Q8_0 => scales!(BlockQ8_0, d),
        T::Q8_1 => scales!(BlockQ8_1, d),
        T::Q2_K => scales!(BlockQ2K, d, dmin),
        T::Q3_K => scales!(BlockQ3K, d),
        T::Q4_K => scales!(BlockQ4K, d, dmin),
        T::Q5_K => scales!(BlockQ5K, d, dmin),
        T::Q6_K => scales!(BlockQ6K, d),
        T::IQ4_NL => scales!(BlockIQ4NL, d),
        T::IQ4_XS => scales!(BlockIQ4XS, d),
        _ => None,
    }
}

/// The first NaN or infinity `bytes` (the data of a tensor of type `ty`) holds: an element of a
/// float tensor (F32, F16, BF16), or a scale of a quantized block (every type [`super::dequantize`]
/// decodes). Types this crate cannot decode are not checked (`Ok(None)`): nothing runs on them.
/// A scan of every byte for float types, of the scales for quantized ones.
pub fn first_non_finite(ty: GgmlType, bytes: &[u8]) -> Result<Option<NonFinite>, QuantError> {
    use GgmlType as T;
    let u16_at = |b: &[u8], i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    // An f16 whose exponent bits are all set is infinite or NaN.
    let f16_bad = |h: u16| h & 0x7c00 == 0x7c00;
    match ty {
        T::F32 => {
            check_lengths(ty, bytes.len(), bytes.len() / 4)?;
            Ok(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).enumerate().find_map(|(index, value)| {
                (!value.is_finite()).then_some(NonFinite::Element { index, value })
            }))
        }
        T::F16 => {
            check_lengths(ty, bytes.len(), bytes.len() / 2)?;
            Ok((0..bytes.len() / 2)
                .find(|&i| f16_bad(u16_at(bytes, 2 * i)))
                .map(|index| NonFinite::Element { index, value: f16::from_bits(u16_at(bytes, 2 * index)).to_f32() }))
        }
        T::BF16 => {
            check_lengths(ty, bytes.len(), bytes.len() / 2)?;
            Ok((0..bytes.len() / 2)
                .find(|&i| u16_at(bytes, 2 * i) & 0x7f80 == 0x7f80)
                .map(|index| NonFinite::Element { index, value: f32::from_bits(u32::from(u16_at(bytes, 2 * index)) << 16) }))
        }
        T::Q8_K => {
            // f32 d first.
            let size = size_of::<BlockQ8K>();
            if !is_multiple(bytes.len(), size) {
                return Err(QuantError::NotWholeBlocks { ty, len: bytes.len(), type_size: size });
            }
            let at = offset_of!(BlockQ8K, d);
            Ok(bytes.chunks_exact(size).enumerate().find_map(|(block, b)| {
                let value = f32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                (!value.is_finite()).then_some(NonFinite::Scale { block, value })
            }))
        }
        _ => {
            let Some((size, offsets)) = f16_scales(ty) else { return Ok(None) };
            if !is_multiple(bytes.len(), size) {
                return Err(QuantError::NotWholeBlocks { ty, len: bytes.len(), type_size: size });
            }
            Ok(bytes.chunks_exact(size).enumerate().find_map(|(block, b)| {
                offsets
                    .iter()
                    .map(|&o| u16_at(b, o))
                    .find(|&h| f16_bad(h))
                    .map(|h| NonFinite::Scale { block, value: f16::from_bits(h).to_f32() })
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clean tensor of every decodable type passes; one non-finite value (an element, or each
    /// scale field of a block) is found where it was put, and the scan agrees with decoding:
    /// the data decodes to a non-finite value exactly when a scale or element is.
    #[test]
    fn finds_the_first_non_finite_element_or_scale() {
        let x: Vec<f32> = (0..1024).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        // Every weight type with a product, and Q8_K (f32 scales).
        let types = crate::dot::WEIGHT_TYPES.into_iter().chain([GgmlType::Q8_K]);
        for ty in types {
            let mut q = vec![0u8; ty.tensor_nbytes(&[x.len() as u64]).unwrap() as usize];
            quantize(ty, &x, &mut q).unwrap();
            assert_eq!(first_non_finite(ty, &q).unwrap(), None, "{ty}: clean data");
            let decodes_finite = |q: &[u8]| {
                let mut y = vec![0f32; x.len()];
                dequantize(ty, q, &mut y).unwrap();
                y.iter().all(|v| v.is_finite())
            };
            match f16_scales(ty) {
                Some((size, offsets)) => {
                    for &o in offsets {
                        for bad in [f16::NAN, f16::INFINITY, f16::NEG_INFINITY] {
                            let mut b = q.clone();
                            b[size + o..size + o + 2].copy_from_slice(&bad.to_le_bytes());
                            let got = first_non_finite(ty, &b).unwrap();
                            assert!(matches!(got, Some(NonFinite::Scale { block: 1, .. })), "{ty} offset {o} {bad}: {got:?}");
                            // (A min scale of infinity times a zero minimum is still NaN.)
                            assert!(!decodes_finite(&b), "{ty} offset {o} {bad}: decodes finite");
                        }
                    }
                }
                None if ty == GgmlType::Q8_K => {
                    let mut b = q.clone();
                    let (size, at) = (size_of::<BlockQ8K>(), offset_of!(BlockQ8K, d));
                    b[2 * size + at..2 * size + at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
                    assert!(matches!(first_non_finite(ty, &b).unwrap(), Some(NonFinite::Scale { block: 2, .. })));
                }
                None => {
                    // Float types: element 300.
                    let w = ty.tensor_nbytes(&[1]).unwrap() as usize;
                    let mut b = q.clone();
                    let nan: Vec<u8> = match ty {
                        GgmlType::F32 => f32::INFINITY.to_le_bytes().to_vec(),
                        GgmlType::F16 => f16::NAN.to_le_bytes().to_vec(),
                        _ => (0x7f80u16).to_le_bytes().to_vec(), // BF16 +inf
                    };
                    b[300 * w..301 * w].copy_from_slice(&nan);
                    let got = first_non_finite(ty, &b).unwrap();
                    assert!(matches!(got, Some(NonFinite::Element { index: 300, value }) if !value.is_finite()), "{ty}: {got:?}");
                    assert!(!decodes_finite(&b));
                }
            }
        }
        assert!(first_non_finite(GgmlType::Q4_K, &[0u8; 145]).is_err());
    }
}
