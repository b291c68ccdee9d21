//! Half-precision scalars: IEEE binary16 (`F16`, via the `half` crate) and bfloat16 (`BF16`).
//!
//! Widening to `f32` is exact for both. Narrowing rounds to nearest, ties to even, as ggml does
//! (`GGML_FP32_TO_FP16` on x86 uses F16C with that rounding; `ggml_compute_fp32_to_bf16` is
//! written out in [`f32_to_bf16`]). Byte buffers are little-endian and need no alignment.

use half::f16;

/// Widens an IEEE half (given as its bits) to `f32`; exact.
#[inline]
pub fn f16_to_f32(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

/// Narrows `f32` to IEEE half bits, round to nearest even; overflow gives infinity.
#[inline]
pub fn f32_to_f16(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

/// Widens bfloat16 bits to `f32`: the bits become the top half of the `f32`; exact.
#[inline]
pub fn bf16_to_f32(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Narrows `f32` to bfloat16 bits as ggml does: NaN keeps its top bits and is made quiet,
/// everything else rounds to nearest, ties to even.
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if u & 0x7fff_ffff > 0x7f80_0000 {
        return ((u >> 16) | 0x40) as u16;
    }
    // No overflow: the largest non-NaN pattern is 0xff80_0000 (negative infinity).
    (u.wrapping_add(0x7fff + ((u >> 16) & 1)) >> 16) as u16
}

/// Widens a row of IEEE halves to `f32`. Precondition: equal lengths (debug-asserted).
pub fn f16_row_to_f32(x: &[f16], out: &mut [f32]) {
    debug_assert_eq!(x.len(), out.len());
    for (y, h) in out.iter_mut().zip(x) {
        *y = h.to_f32();
    }
}

/// Narrows a row of `f32` to IEEE halves. Precondition: equal lengths (debug-asserted).
pub fn f32_row_to_f16(x: &[f32], out: &mut [f16]) {
    debug_assert_eq!(x.len(), out.len());
    for (h, &v) in out.iter_mut().zip(x) {
        *h = f16::from_f32(v);
    }
}

/// Widens little-endian F16 bytes to `f32`. Precondition: `bytes.len() == 2 * out.len()`.
pub fn f16_bytes_to_f32(bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), 2 * out.len());
    for (y, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *y = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Widens little-endian BF16 bytes to `f32`. Precondition: `bytes.len() == 2 * out.len()`.
pub fn bf16_bytes_to_f32(bytes: &[u8], out: &mut [f32]) {
    debug_assert_eq!(bytes.len(), 2 * out.len());
    for (y, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *y = bf16_to_f32(u16::from_le_bytes([b[0], b[1]]));
    }
}

/// Narrows `f32` to little-endian F16 bytes. Precondition: `out.len() == 2 * x.len()`.
pub fn f32_to_f16_bytes(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * x.len());
    for (b, &v) in out.chunks_exact_mut(2).zip(x) {
        b.copy_from_slice(&f32_to_f16(v).to_le_bytes());
    }
}

/// Narrows `f32` to little-endian BF16 bytes. Precondition: `out.len() == 2 * x.len()`.
pub fn f32_to_bf16_bytes(x: &[f32], out: &mut [u8]) {
    debug_assert_eq!(out.len(), 2 * x.len());
    for (b, &v) in out.chunks_exact_mut(2).zip(x) {
        b.copy_from_slice(&f32_to_bf16(v).to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(f32_to_bf16(1.0), 0x3f80);
        // Exactly halfway between 0x3f80 and 0x3f81: ties go to the even one.
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(f32_to_bf16(f32::from_bits(0x3f80_8001)), 0x3f81);
        assert_eq!(f32_to_bf16(f32::INFINITY), 0x7f80);
        assert_eq!(f32_to_bf16(f32::NEG_INFINITY), 0xff80);
        // A signalling NaN whose payload lives only in the low bits must stay a NaN.
        assert_eq!(f32_to_bf16(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(f32_to_bf16(f32::from_bits(0xffff_ffff)), 0xffff);
        assert_eq!(f32_to_bf16(f32::MAX), 0x7f80);
        for bits in [0u16, 0x8000, 0x0001, 0x3f80, 0x7f7f, 0xc2f7] {
            assert_eq!(f32_to_bf16(bf16_to_f32(bits)), bits);
        }
    }

    #[test]
    fn f16_round_trips_every_finite_value() {
        for bits in 0..=u16::MAX {
            let x = f16_to_f32(bits);
            if x.is_nan() {
                assert!(f16_to_f32(f32_to_f16(x)).is_nan());
            } else {
                assert_eq!(f32_to_f16(x), bits);
            }
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up past the largest finite half
        assert_eq!(f32_to_f16(65519.0), 0x7bff);
    }
}
