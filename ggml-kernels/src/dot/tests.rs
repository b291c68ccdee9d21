//! Tests of the dot products, quantizers and tiles.
//!
//! - The scalar references against an `f64` dot product of the dequantized weights and
//!   dequantized activations.
//! - Every SIMD kernel of every table this CPU supports against the scalar reference, on random
//!   weights (random bytes with chosen scales, so every quant bit pattern occurs), odd block
//!   counts, misaligned rows and extreme scales.
//! - The activation quantizers byte for byte against the references.
//!
//! Tolerances. Kernels and references form the same integer sum per block, so they differ only
//! in how the per-block `f32` terms are rounded and added. Each result is within
//! `(k + 16) * eps * M` of the exact sum of its terms, where `k` is the number of terms and `M`
//! the sum of their magnitudes, bounded here by `sum |w_i| |a_i|` plus, for types whose kernels
//! split a block into two parts that can cancel (a subtracted minimum, or an offset taken out of
//! unsigned quants), twice the second part's share. Two such results differ by at most twice
//! that; the tests allow `4 * (k + 16) * eps * M`.

use super::*;
use crate::quants::{self, dequantize};

/// xorshift64*: small, deterministic, good enough for test data.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [0, 1).
    pub(crate) fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
    /// Uniform in [-1, 1).
    pub(crate) fn sym(&mut self) -> f32 {
        2.0 * self.f32() - 1.0
    }
    pub(crate) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

/// How large the weight scales are.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scales {
    /// Typical model weights.
    Normal,
    /// Down to f16 subnormals.
    Tiny,
    /// Up to the largest finite f16.
    Huge,
    /// A mix of the above and zeros, block by block.
    Mixed,
}

/// A random finite f16 of magnitude about `mag`, either sign.
fn f16_near(rng: &mut Rng, mag: f32) -> u16 {
    let v = mag * (0.5 + rng.f32()) * if rng.below(2) == 0 { 1.0 } else { -1.0 };
    half::f16::from_f32(v.clamp(-65504.0, 65504.0)).to_bits()
}

fn scale_value(rng: &mut Rng, s: Scales) -> u16 {
    match s {
        Scales::Normal => f16_near(rng, 0.01),
        Scales::Tiny => {
            let mag = if rng.below(2) == 0 { 1e-7 } else { 1e-5 };
            f16_near(rng, mag)
        }
        Scales::Huge => {
            let mag = if rng.below(2) == 0 { 40000.0 } else { 1000.0 };
            f16_near(rng, mag)
        }
        Scales::Mixed => match rng.below(5) {
            0 => 0,
            1 => scale_value(rng, Scales::Tiny),
            2 => scale_value(rng, Scales::Huge),
            _ => scale_value(rng, Scales::Normal),
        },
    }
}

/// Byte offsets of each block's f16 scale fields.
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType as T;
    match ty {
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL | T::IQ4_XS => &[0],
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => &[0, 2],
        T::Q2_K => &[80, 82],
        T::Q3_K => &[108],
        T::Q6_K => &[208],
        _ => &[],
    }
}

/// Byte range of each block's quants, for the types whose kernels split a block's sum into two
/// parts that can cancel: a subtracted minimum (Q4_1, Q5_1, Q2_K, Q4_K, Q5_K) or an offset taken
/// out of unsigned quants (Q4_0, Q5_0, Q3_K, Q6_K). Dequantizing a block with these bytes zeroed
/// gives that second part.
fn quant_bytes(ty: GgmlType) -> Option<std::ops::Range<usize>> {
    use GgmlType as T;
    match ty {
        T::Q4_0 => Some(2..18),
        T::Q5_0 => Some(2..22),
        T::Q4_1 => Some(4..20),
        T::Q5_1 => Some(4..24),
        T::Q2_K => Some(16..80),
        T::Q3_K => Some(0..96),
        T::Q4_K => Some(16..144),
        T::Q5_K => Some(16..176),
        T::Q6_K => Some(0..192),
        _ => None,
    }
}

/// `nb` random blocks of `ty` (elements for float types).
pub(crate) fn random_weights(ty: GgmlType, nb: usize, rng: &mut Rng, s: Scales) -> Vec<u8> {
    use GgmlType as T;
    match ty {
        T::F32 => (0..nb).flat_map(|_| (rng.sym() * 2.0).to_le_bytes()).collect(),
        T::F16 => (0..nb).flat_map(|_| scale_value(rng, s).to_le_bytes()).collect(),
        T::BF16 => (0..nb)
            .flat_map(|_| {
                let v = quants::float16::f16_to_f32(scale_value(rng, s));
                quants::float16::f32_to_bf16(v).to_le_bytes()
            })
            .collect(),
        _ => {
            let ts = ty.type_size();
            let mut w = rng.bytes(nb * ts);
            for b in w.chunks_exact_mut(ts) {
                for &off in scale_fields(ty) {
                    b[off..off + 2].copy_from_slice(&scale_value(rng, s).to_le_bytes());
                }
            }
            w
        }
    }
}

/// How the activations look.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Acts {
    Normal,
    /// Spikes of 1e4 among small values.
    Spiky,
    /// Magnitudes around 1e-6.
    Tiny,
    /// Values on exact rounding ties of the Q8 scales, and blocks of zeros.
    Ties,
}

pub(crate) fn random_acts(n: usize, rng: &mut Rng, a: Acts) -> Vec<f32> {
    (0..n)
        .map(|i| match a {
            Acts::Normal => rng.sym() * 3.0,
            Acts::Spiky => {
                if rng.below(50) == 0 {
                    1e4 * rng.sym()
                } else {
                    rng.sym()
                }
            }
            Acts::Tiny => 1e-6 * rng.sym(),
            Acts::Ties => {
                if (i / 32) % 5 == 4 {
                    0.0
                } else if i % 32 == 0 {
                    -127.0
                } else {
                    (rng.below(255) as f32 - 127.0) + 0.5 * rng.below(2) as f32
                }
            }
        })
        .collect()
}

fn encoded_len(vdt: VecDotType, elems: usize) -> usize {
    elems / vdt.block_size() * vdt.type_size()
}

/// Quantizes with the scalar table.
pub(crate) fn quantize_ref(vdt: VecDotType, x: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; encoded_len(vdt, x.len())];
    Kernels::for_isa(Isa::Scalar).unwrap().quantize(vdt, x, &mut out).unwrap();
    out
}

pub(crate) fn dequant(ty: GgmlType, bytes: &[u8], elems: usize) -> Vec<f32> {
    let mut out = vec![0f32; elems];
    dequantize(ty, bytes, &mut out).unwrap();
    out
}

/// `M` of the module comment: the magnitude the rounding error of a row dot is relative to.
pub(crate) fn magnitude(ty: GgmlType, w: &[u8], a: &[u8], elems: usize) -> f64 {
    let vdt = VecDotType::for_weight(ty).unwrap();
    let wd = dequant(ty, w, elems);
    let ad = dequant(vdt.ggml_type(), a, elems);
    let mut m: f64 = wd.iter().zip(&ad).map(|(&x, &y)| f64::from(x).abs() * f64::from(y).abs()).sum();
    if let Some(r) = quant_bytes(ty) {
        let mut zeroed = w.to_vec();
        for b in zeroed.chunks_exact_mut(ty.type_size()) {
            b[r.clone()].fill(0);
        }
        let mins = dequant(ty, &zeroed, elems);
        m += 2.0 * mins.iter().zip(&ad).map(|(&x, &y)| f64::from(x).abs() * f64::from(y).abs()).sum::<f64>();
    }
    if vdt == VecDotType::Q8_1 {
        // The `m * s` term, with `s` as stored.
        for (wb, ab) in w.chunks_exact(ty.type_size()).zip(a.chunks_exact(vdt.type_size())) {
            let mx = quants::float16::f16_to_f32(u16::from_le_bytes([wb[2], wb[3]]));
            let s = quants::float16::f16_to_f32(u16::from_le_bytes([ab[2], ab[3]]));
            m += f64::from((mx * s).abs());
        }
    }
    m
}

fn elems_of(ty: GgmlType, nb: usize) -> usize {
    nb * ty.block_size()
}

pub(crate) fn tolerance(terms: usize, mag: f64) -> f64 {
    4.0 * (terms as f64 + 16.0) * f64::from(f32::EPSILON) * mag + 1e-30
}

/// Block counts to try: odd, even, one, and not multiples of the unroll factors.
const BLOCK_COUNTS: [usize; 8] = [1, 2, 3, 5, 8, 9, 16, 33];

#[test]
fn scalar_references_match_the_dequantized_dot() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    let mut rng = Rng::new(1);
    for ty in WEIGHT_TYPES {
        let vdt = VecDotType::for_weight(ty).unwrap();
        for &nb in &[1usize, 3, 8] {
            for s in [Scales::Normal, Scales::Tiny, Scales::Huge, Scales::Mixed] {
                let elems = elems_of(ty, nb);
                let w = random_weights(ty, nb, &mut rng, s);
                let x = random_acts(elems, &mut rng, Acts::Normal);
                let a = quantize_ref(vdt, &x);
                let got = scalar.dot(ty, &w, &a).unwrap();
                let wd = dequant(ty, &w, elems);
                let ad = dequant(vdt.ggml_type(), &a, elems);
                let exact: f64 = wd.iter().zip(&ad).map(|(&p, &q)| f64::from(p) * f64::from(q)).sum();
                let mag = magnitude(ty, &w, &a, elems);
                // Q8_1 stores its sum as f16: the `m * s` term carries a relative error of 2^-11.
                let extra = if vdt == VecDotType::Q8_1 { 1e-3 * mag } else { 0.0 };
                let tol = tolerance(elems, mag) + extra;
                assert!(
                    (f64::from(got) - exact).abs() <= tol,
                    "{ty} nb {nb} {s:?}: reference {got}, dequantized dot {exact}, tolerance {tol}"
                );
            }
        }
    }
}

#[test]
fn every_simd_kernel_matches_the_scalar_reference() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    let mut checked = 0;
    for k in Kernels::available().iter().filter(|k| k.isa() != Isa::Scalar) {
        let mut rng = Rng::new(7);
        for ty in WEIGHT_TYPES {
            if k.dot_isa(ty) == Some(Isa::Scalar) {
                continue;
            }
            let vdt = VecDotType::for_weight(ty).unwrap();
            // Float types count elements: try lengths around the unroll widths too.
            let counts: Vec<usize> =
                if ty.block_size() == 1 { vec![1, 7, 8, 31, 32, 33, 100, 256] } else { BLOCK_COUNTS.to_vec() };
            for &nb in &counts {
                for s in [Scales::Normal, Scales::Tiny, Scales::Huge, Scales::Mixed] {
                    for acts in [Acts::Normal, Acts::Spiky, Acts::Tiny, Acts::Ties] {
                        let elems = elems_of(ty, nb);
                        let w = random_weights(ty, nb, &mut rng, s);
                        let x = random_acts(elems, &mut rng, acts);
                        let a = quantize_ref(vdt, &x);
                        // A misaligned copy of the weights: kernels must not assume alignment.
                        let mut shifted = vec![0u8; w.len() + 1];
                        shifted[1..].copy_from_slice(&w);
                        let want = scalar.dot(ty, &w, &a).unwrap();
                        let got = k.dot(ty, &w, &a).unwrap();
                        let got_shifted = k.dot(ty, &shifted[1..], &a).unwrap();
                        assert_eq!(got.to_bits(), got_shifted.to_bits(), "{} {ty}: alignment changed the result", k.isa());
                        let tol = tolerance(elems, magnitude(ty, &w, &a, elems));
                        assert!(
                            (f64::from(got) - f64::from(want)).abs() <= tol,
                            "{} {ty} nb {nb} {s:?} {acts:?}: kernel {got}, reference {want}, tolerance {tol}",
                            k.isa()
                        );
                        checked += 1;
                    }
                }
            }
        }
    }
    // On a CPU with no SIMD table there is nothing to check; say so in the output.
    println!("checked {checked} SIMD dot products");
}

#[test]
fn extreme_quants_are_exact() {
    // Weights at their extreme codes and activations at ±127 everywhere: the integer sums are at
    // their largest, where a saturating or overflowing step would show.
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    for k in Kernels::available() {
        for ty in WEIGHT_TYPES.into_iter().filter(|t| t.block_size() > 1) {
            let vdt = VecDotType::for_weight(ty).unwrap();
            for fill in [0x00u8, 0xFF, 0x80, 0x7F, 0x88] {
                for sign in [1.0f32, -1.0] {
                    let nb = 3;
                    let mut w = vec![fill; nb * ty.type_size()];
                    for b in w.chunks_exact_mut(ty.type_size()) {
                        for &off in scale_fields(ty) {
                            b[off..off + 2].copy_from_slice(&half::f16::from_f32(0.5).to_bits().to_le_bytes());
                        }
                    }
                    let x: Vec<f32> = (0..elems_of(ty, nb)).map(|i| if i % 3 == 0 { -sign } else { sign }).collect();
                    let a = quantize_ref(vdt, &x);
                    let want = scalar.dot(ty, &w, &a).unwrap();
                    let got = k.dot(ty, &w, &a).unwrap();
                    let tol = tolerance(elems_of(ty, nb), magnitude(ty, &w, &a, elems_of(ty, nb)));
                    assert!(
                        (f64::from(got) - f64::from(want)).abs() <= tol,
                        "{} {ty} fill {fill:#x}: kernel {got}, reference {want}",
                        k.isa()
                    );
                }
            }
        }
    }
}

#[test]
fn quantizers_are_bit_exact_with_the_references() {
    let mut rng = Rng::new(3);
    for k in Kernels::available() {
        for vdt in [VecDotType::Q8_0, VecDotType::Q8_1, VecDotType::Q8_K] {
            for acts in [Acts::Normal, Acts::Spiky, Acts::Tiny, Acts::Ties] {
                for nb in [1usize, 2, 5] {
                    let mut x = random_acts(nb * vdt.block_size(), &mut rng, acts);
                    // Equal magnitudes of both signs: Q8_K keeps the first one's sign.
                    x[3] = 9.0;
                    x[1] = -9.0;
                    let want = quantize_ref(vdt, &x);
                    let mut got = vec![0u8; want.len()];
                    k.quantize(vdt, &x, &mut got).unwrap();
                    assert_eq!(got, want, "{} {vdt:?} {acts:?} nb {nb}", k.isa());
                }
            }
        }
    }
}

#[test]
fn the_table_picks_the_best_available_kernels() {
    let best = Kernels::best();
    let top = Isa::ALL.into_iter().filter(|i| i.is_available()).max().unwrap();
    assert_eq!(best.isa(), top);
    for k in Kernels::available() {
        assert!(k.isa().is_available());
        for ty in WEIGHT_TYPES {
            let isa = k.dot_isa(ty).unwrap();
            assert!(isa <= k.isa() && isa.is_available(), "{} {ty}: {isa}", k.isa());
        }
    }
    #[cfg(target_arch = "x86_64")]
    if Isa::Avx2.is_available() {
        for ty in WEIGHT_TYPES {
            assert_ne!(best.dot_isa(ty), Some(Isa::Scalar), "{ty} has an AVX2 kernel");
        }
        for vdt in [VecDotType::Q8_0, VecDotType::Q8_1, VecDotType::Q8_K] {
            assert_ne!(best.quant_isa(vdt), Isa::Scalar);
        }
    }
    #[cfg(target_arch = "aarch64")]
    for ty in [GgmlType::Q4_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        assert_eq!(best.dot_isa(ty), Some(Isa::Neon), "{ty}");
    }
}

#[test]
fn checked_entry_points_reject_bad_lengths() {
    let k = Kernels::best();
    assert_eq!(k.dot(GgmlType::Q8_1, &[0; 36], &[0; 36]), Err(DotError::Unsupported(GgmlType::Q8_1)));
    assert!(matches!(k.dot(GgmlType::Q4_0, &[0; 17], &[0; 34]), Err(DotError::Length { .. })));
    assert!(matches!(k.dot(GgmlType::Q4_0, &[0; 18], &[0; 33]), Err(DotError::Length { .. })));
    assert!(matches!(k.dot(GgmlType::F32, &[0; 8], &[0; 4]), Err(DotError::Length { .. })));
    assert_eq!(k.dot(GgmlType::Q4_K, &[], &[]), Ok(0.0));
    assert!(matches!(k.quantize(VecDotType::Q8_0, &[0.0; 31], &mut [0; 34]), Err(DotError::Length { .. })));
    assert!(matches!(k.quantize(VecDotType::Q8_K, &[0.0; 256], &mut [0; 291]), Err(DotError::Length { .. })));
    assert!(QuantizedActs::new(k, VecDotType::Q8_0, &[0.0; 64], 2, 33).is_err());
    assert!(QuantizedActs::new(k, VecDotType::Q8_0, &[0.0; 64], 3, 32).is_err());
}

#[test]
fn every_tile_matches_the_scalar_dot_products() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    let mut rng = Rng::new(11);
    let mut checked = 0;
    for k in Kernels::available() {
        for ty in WEIGHT_TYPES {
            if k.tile_isa(ty).is_none() {
                continue;
            }
            let vdt = VecDotType::for_weight(ty).unwrap();
            for &nb in &[1usize, 2, 3, 8] {
                for s in [Scales::Normal, Scales::Mixed, Scales::Huge] {
                    let cols = elems_of(ty, nb);
                    let n = 4;
                    let x = random_acts(n * cols, &mut rng, Acts::Spiky);
                    let acts = QuantizedActs::new(k, vdt, &x, n, cols).unwrap();
                    let w = random_weights(ty, 4 * nb, &mut rng, s);
                    let rb = nb * ty.type_size();
                    for mr in 1..=4 {
                        for nr in 1..=4 {
                            let t0 = n - nr;
                            let mut out = vec![0f32; mr * nr];
                            k.tile(ty, &w[..mr * rb], &acts, t0, &mut out).unwrap();
                            for j in 0..nr {
                                for i in 0..mr {
                                    let wr = &w[i * rb..(i + 1) * rb];
                                    let ar = acts.row(t0 + j);
                                    let want = scalar.dot(ty, wr, ar).unwrap();
                                    let got = out[j * mr + i];
                                    let tol = tolerance(cols, magnitude(ty, wr, ar, cols));
                                    assert!(
                                        (f64::from(got) - f64::from(want)).abs() <= tol,
                                        "{} {ty} tile {mr}x{nr} nb {nb} {s:?} (row {i}, act {j}): tile {got}, reference {want}",
                                        k.isa()
                                    );
                                    checked += 1;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    println!("checked {checked} tile outputs");
}

#[test]
fn every_multi_row_decode_kernel_matches_the_scalar_dot_products() {
    let scalar = Kernels::for_isa(Isa::Scalar).unwrap();
    let mut rng = Rng::new(13);
    let mut checked = 0;
    for k in Kernels::available() {
        for ty in WEIGHT_TYPES {
            if k.matvec_isa(ty).is_none() {
                continue;
            }
            let vdt = VecDotType::for_weight(ty).unwrap();
            // Block counts with and without a remainder after the four-block steps.
            for &nb in &[1usize, 2, 3, 4, 5, 8, 9, 11] {
                for s in [Scales::Normal, Scales::Mixed, Scales::Huge, Scales::Tiny] {
                    let cols = elems_of(ty, nb);
                    let x = random_acts(2 * cols, &mut rng, Acts::Spiky);
                    let acts = QuantizedActs::new(k, vdt, &x, 2, cols).unwrap();
                    let w = random_weights(ty, 4 * nb, &mut rng, s);
                    let rb = nb * ty.type_size();
                    for mr in 1..=4 {
                        let mut out = vec![f32::NAN; mr];
                        k.matvec_rows(ty, &w[..mr * rb], &acts, 1, &mut out).unwrap();
                        for (i, &got) in out.iter().enumerate() {
                            let (wr, ar) = (&w[i * rb..(i + 1) * rb], acts.row(1));
                            let want = scalar.dot(ty, wr, ar).unwrap();
                            let tol = tolerance(cols, magnitude(ty, wr, ar, cols));
                            assert!(
                                (f64::from(got) - f64::from(want)).abs() <= tol,
                                "{} {ty} rows {mr} nb {nb} {s:?} (row {i}): kernel {got}, reference {want}, tolerance {tol}",
                                k.isa()
                            );
                            checked += 1;
                        }
                    }
                }
            }
        }
    }
    println!("checked {checked} multi-row decode outputs");
}

/// A NaN among the activations is never quantized away: the block holding it gets the scale
/// NaN (quants 0) from every table's quantizers, so every dot product and every row of a
/// product over that input is NaN, for every weight type, through `matmul_with` (one token, and
/// several with the NaN in one of them only: the others stay finite).
#[test]
fn nan_activations_make_nan_products() {
    use crate::matmul::{matmul_with, QMatrix};
    let mut rng = Rng::new(77);
    for k in Kernels::available() {
        for vdt in [VecDotType::Q8_0, VecDotType::Q8_1, VecDotType::Q8_K] {
            let mut x = random_acts(512, &mut rng, Acts::Normal);
            x[300] = f32::NAN;
            let mut a = vec![0u8; encoded_len(vdt, x.len())];
            k.quantize(vdt, &x, &mut a).unwrap();
            let y = dequant(vdt.ggml_type(), &a, x.len());
            let bs = vdt.block_size();
            let bad = 300 / bs;
            for (b, block) in y.chunks_exact(bs).enumerate() {
                if b == bad {
                    assert!(block.iter().all(|v| v.is_nan()), "{:?} {vdt:?}: the NaN's block decodes {:?}", k.isa(), &block[..4]);
                } else {
                    assert!(block.iter().all(|v| v.is_finite()), "{:?} {vdt:?}: block {b} not finite", k.isa());
                }
            }
        }
        for ty in WEIGHT_TYPES {
            let (cols, rows) = (512usize, 24usize);
            let nb = cols / ty.block_size();
            let w: Vec<u8> = (0..rows).flat_map(|_| random_weights(ty, nb, &mut rng, Scales::Normal)).collect();
            let m = QMatrix::new(ty, cols, rows, &w).unwrap();
            for n in [1usize, 4] {
                let mut x = random_acts(n * cols, &mut rng, Acts::Normal);
                let t_bad = n - 1;
                x[t_bad * cols + 300] = f32::NAN;
                let mut out = vec![0f32; n * rows];
                matmul_with(k, &m, &x, n, &mut out).unwrap();
                for (t, row) in out.chunks_exact(rows).enumerate() {
                    if t == t_bad {
                        assert!(row.iter().all(|v| v.is_nan()), "{:?} {ty} n {n}: token {t} {row:?}", k.isa());
                    } else {
                        assert!(row.iter().all(|v| v.is_finite()), "{:?} {ty} n {n}: token {t} {row:?}", k.isa());
                    }
                }
            }
        }
    }
}
