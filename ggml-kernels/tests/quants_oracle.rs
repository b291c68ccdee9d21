//! The block formats against an independent oracle: the numpy (de)quantizers of the PyPI `gguf`
//! package (gguf-py), through fixtures written by `tests/scripts/make_quant_fixtures.py`.
//!
//! - Dequantization must match the oracle bit for bit (NaN compares equal to NaN) for every type
//!   the oracle decodes: F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
//!   IQ4_NL, IQ4_XS.
//! - Quantization must match the oracle byte for byte where the oracle encodes: F16, BF16, Q4_0,
//!   Q4_1, Q5_0, Q5_1, Q8_0.
//! - Every quantizer (including those, and Q8_1, Q2_K..Q6_K, Q8_K, IQ4_NL, IQ4_XS, which the
//!   oracle cannot encode) must keep the round-trip error within the budget llama.cpp's
//!   `tests/test-quantize-fns.cpp` sets for it, measured as that test measures it (see
//!   [`ggml_total_error`]).
//!
//! Run with `--nocapture` to see the measured errors.

use ggml_kernels::quants::{self, Block, BlockQ8K, BlockQ8_0, BlockQ8_1, QuantError, QuantOp};
use ggml_kernels::GgmlType;

// ---------------------------------------------------------------------------------------------
// Fixtures

/// One record of a fixture file: `n_rows` rows of `n_per_row` elements, as raw bytes.
struct Record {
    n_rows: usize,
    n_per_row: usize,
    data: Vec<u8>,
}

impl Record {
    fn f32s(&self) -> Vec<f32> {
        assert_eq!(self.data.len(), 4 * self.n_rows * self.n_per_row);
        self.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// The records of `tests/fixtures/quants/<TYPE>.bin` (format described in the generator script).
struct Fixture {
    q_in: Record,
    q_out: Option<Record>,
    dq_in: Record,
    dq_out: Option<Record>,
}

fn load(ty: GgmlType) -> Fixture {
    let path = format!("{}/../tests/fixtures/quants/{}.bin", env!("CARGO_MANIFEST_DIR"), ty.name());
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
    assert_eq!(&bytes[..4], b"QFX1", "{path}");
    assert_eq!(u32_at(4), ty.id() as usize, "{path}");
    let count = u32_at(8);
    let mut at = 12;
    let (mut q_in, mut q_out, mut dq_in, mut dq_out) = (None, None, None, None);
    for _ in 0..count {
        let tag = std::str::from_utf8(&bytes[at..at + 8]).unwrap().trim_end_matches('\0').to_string();
        let (n_rows, n_per_row, n_bytes) = (u32_at(at + 8), u32_at(at + 12), u32_at(at + 16));
        at += 20;
        let rec = Record { n_rows, n_per_row, data: bytes[at..at + n_bytes].to_vec() };
        at += n_bytes;
        match tag.as_str() {
            "q_in" => q_in = Some(rec),
            "q_out" => q_out = Some(rec),
            "dq_in" => dq_in = Some(rec),
            "dq_out" => dq_out = Some(rec),
            other => panic!("{path}: unknown record {other}"),
        }
    }
    assert_eq!(at, bytes.len(), "{path}: trailing bytes");
    Fixture { q_in: q_in.expect("q_in"), q_out, dq_in: dq_in.expect("dq_in"), dq_out }
}

/// Bytes of one encoded row of `n` elements.
fn row_bytes(ty: GgmlType, n: usize) -> usize {
    n / ty.block_size() * ty.type_size()
}

/// Bit-for-bit comparison of two f32 slices, treating any NaN as equal to any NaN. Returns the
/// index and values of the first difference.
fn first_bit_difference(got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| !(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())))
        .map(|(i, (&g, &w))| (i, g, w))
}

// ---------------------------------------------------------------------------------------------
// Dequantization: bit-exact against the oracle

fn check_dequantize_bit_exact(ty: GgmlType) {
    let fx = load(ty);
    let want =
        fx.dq_out.as_ref().unwrap_or_else(|| panic!("the oracle has no dequantization of {ty}")).f32s();
    let n = fx.dq_in.n_rows * fx.dq_in.n_per_row;
    assert_eq!(fx.dq_in.data.len(), row_bytes(ty, n));

    let mut got = vec![f32::NAN; n];
    quants::dequantize(ty, &fx.dq_in.data, &mut got).unwrap();
    if let Some((i, g, w)) = first_bit_difference(&got, &want) {
        panic!(
            "{ty}: element {i} (block {}) is {g:e} ({:#010x}), oracle {w:e} ({:#010x})",
            i / ty.block_size(),
            g.to_bits(),
            w.to_bits()
        );
    }

    // The same through a misaligned copy (the copying fallback) and row by row.
    let mut shifted = vec![0u8; fx.dq_in.data.len() + 1];
    shifted[1..].copy_from_slice(&fx.dq_in.data);
    let mut got2 = vec![f32::NAN; n];
    quants::dequantize(ty, &shifted[1..], &mut got2).unwrap();
    assert_eq!(first_bit_difference(&got2, &want), None, "{ty}: misaligned input");

    let rb = row_bytes(ty, fx.dq_in.n_per_row);
    for (r, (src, want_row)) in fx.dq_in.data.chunks(rb).zip(want.chunks(fx.dq_in.n_per_row)).enumerate() {
        let mut row = vec![f32::NAN; fx.dq_in.n_per_row];
        quants::dequantize(ty, src, &mut row).unwrap();
        assert_eq!(first_bit_difference(&row, want_row), None, "{ty}: row {r}");
    }
}

macro_rules! dequantize_bit_exact {
    ($($test:ident: $ty:ident;)*) => {$(
        #[test]
        fn $test() {
            check_dequantize_bit_exact(GgmlType::$ty);
        }
    )*};
}

dequantize_bit_exact! {
    dequantize_f16_bit_exact: F16;
    dequantize_bf16_bit_exact: BF16;
    dequantize_q4_0_bit_exact: Q4_0;
    dequantize_q4_1_bit_exact: Q4_1;
    dequantize_q5_0_bit_exact: Q5_0;
    dequantize_q5_1_bit_exact: Q5_1;
    dequantize_q8_0_bit_exact: Q8_0;
    dequantize_q2_k_bit_exact: Q2_K;
    dequantize_q3_k_bit_exact: Q3_K;
    dequantize_q4_k_bit_exact: Q4_K;
    dequantize_q5_k_bit_exact: Q5_K;
    dequantize_q6_k_bit_exact: Q6_K;
    dequantize_iq4_nl_bit_exact: IQ4_NL;
    dequantize_iq4_xs_bit_exact: IQ4_XS;
}

/// The oracle knows neither Q8_1 nor Q8_K; their fixtures carry inputs only. Their decoders are
/// `d * q`, checked here on the fixture's random blocks against that formula directly.
#[test]
fn dequantize_q8_1_and_q8_k_are_scale_times_quant() {
    let fx = load(GgmlType::Q8_1);
    assert!(fx.dq_out.is_none() && fx.q_out.is_none(), "the oracle learnt Q8_1: compare with it");
    let mut got = vec![0.0; fx.dq_in.data.len() / 36 * 32];
    quants::dequantize(GgmlType::Q8_1, &fx.dq_in.data, &mut got).unwrap();
    for (c, y) in fx.dq_in.data.chunks(36).zip(got.chunks(32)) {
        let d = half::f16::from_le_bytes([c[0], c[1]]).to_f32();
        for (&q, &y) in c[4..].iter().zip(y) {
            assert_eq!(y.to_bits(), (f32::from(q as i8) * d).to_bits());
        }
    }

    let fx = load(GgmlType::Q8_K);
    assert!(fx.dq_out.is_none() && fx.q_out.is_none(), "the oracle learnt Q8_K: compare with it");
    let mut got = vec![0.0; fx.dq_in.data.len() / 292 * 256];
    quants::dequantize(GgmlType::Q8_K, &fx.dq_in.data, &mut got).unwrap();
    for (c, y) in fx.dq_in.data.chunks(292).zip(got.chunks(256)) {
        let d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        for (&q, &y) in c[4..260].iter().zip(y) {
            assert_eq!(y.to_bits(), (d * f32::from(q as i8)).to_bits());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Quantization: bit-exact against the oracle where it can quantize

fn check_quantize_bit_exact(ty: GgmlType) {
    let fx = load(ty);
    let want = fx.q_out.as_ref().unwrap_or_else(|| panic!("the oracle has no quantization of {ty}"));
    let x = fx.q_in.f32s();
    let rb = row_bytes(ty, fx.q_in.n_per_row);
    assert_eq!(want.data.len(), rb * fx.q_in.n_rows);

    let mut got = vec![0xAAu8; want.data.len()];
    quants::quantize(ty, &x, &mut got).unwrap();
    for (r, (g, w)) in got.chunks(rb).zip(want.data.chunks(rb)).enumerate() {
        if let Some(i) = g.iter().zip(w).position(|(a, b)| a != b) {
            let block = i / ty.type_size();
            let bs = ty.type_size();
            panic!(
                "{ty}: row {r}, block {block} differs at byte {}:\n ours   {:02x?}\n oracle {:02x?}",
                i % bs,
                &g[block * bs..][..bs],
                &w[block * bs..][..bs]
            );
        }
    }

    // The misaligned-output fallback gives the same bytes.
    let mut shifted = vec![0u8; want.data.len() + 1];
    quants::quantize(ty, &x, &mut shifted[1..]).unwrap();
    assert!(shifted[1..] == want.data[..], "{ty}: misaligned output");
}

macro_rules! quantize_bit_exact {
    ($($test:ident: $ty:ident;)*) => {$(
        #[test]
        fn $test() {
            check_quantize_bit_exact(GgmlType::$ty);
        }
    )*};
}

quantize_bit_exact! {
    quantize_f16_bit_exact: F16;
    quantize_bf16_bit_exact: BF16;
    quantize_q4_0_bit_exact: Q4_0;
    quantize_q4_1_bit_exact: Q4_1;
    quantize_q5_0_bit_exact: Q5_0;
    quantize_q5_1_bit_exact: Q5_1;
    quantize_q8_0_bit_exact: Q8_0;
}

/// Types whose fixtures have no oracle encoding. If gguf-py learns one, this fails as a
/// reminder to add it to the bit-exact list above.
#[test]
fn oracle_cannot_quantize_the_rest() {
    use GgmlType as T;
    for ty in [T::Q8_1, T::Q2_K, T::Q3_K, T::Q4_K, T::Q5_K, T::Q6_K, T::Q8_K, T::IQ4_NL, T::IQ4_XS] {
        assert!(load(ty).q_out.is_none(), "the oracle now quantizes {ty}: test it bit for bit");
    }
}

// ---------------------------------------------------------------------------------------------
// Round-trip error budgets, as llama.cpp's tests/test-quantize-fns.cpp

// The budgets of test-quantize-fns.cpp, for `total_quantization_error` (below):
/// MAX_QUANTIZATION_TOTAL_ERROR: every type not listed below.
const MAX_QUANTIZATION_TOTAL_ERROR: f32 = 0.002;
/// MAX_QUANTIZATION_TOTAL_ERROR_2BITS: Q2_K (and IQ2_S).
const MAX_QUANTIZATION_TOTAL_ERROR_2BITS: f32 = 0.0075;
/// MAX_QUANTIZATION_TOTAL_ERROR_3BITS: Q3_K (and IQ3_S).
const MAX_QUANTIZATION_TOTAL_ERROR_3BITS: f32 = 0.0040;

fn ggml_budget(ty: GgmlType) -> f32 {
    match ty {
        GgmlType::Q2_K => MAX_QUANTIZATION_TOTAL_ERROR_2BITS,
        GgmlType::Q3_K => MAX_QUANTIZATION_TOTAL_ERROR_3BITS,
        _ => MAX_QUANTIZATION_TOTAL_ERROR,
    }
}

/// test-quantize-fns.cpp's `generate_data(offset, n)`: `0.1 + 2 * cosf(i + offset)`, the cosine
/// in `float` and the sum in `double`, stored as `float`.
fn ggml_test_data(offset: f32, n: usize) -> Vec<f32> {
    (0..n).map(|i| (0.1f64 + f64::from(2.0 * (i as f32 + offset).cos())) as f32).collect()
}

/// test-quantize-fns.cpp's `array_rmse`: despite its name, `sqrt(sum of squared differences) / n`
/// (the differences in `float`, the sum in `double`, the root in `float`), i.e. the RMSE divided
/// by `sqrt(n)`.
fn ggml_array_rmse(a: &[f32], b: &[f32]) -> f32 {
    let sum: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x - y) * f64::from(x - y)).sum();
    (sum as f32).sqrt() / a.len() as f32
}

/// test-quantize-fns.cpp's `total_quantization_error`: quantize `32 * 128` elements of
/// `generate_data(0)`, dequantize, and take `array_rmse` against the input.
fn ggml_total_error(ty: GgmlType) -> f32 {
    let x = ggml_test_data(0.0, 32 * 128);
    round_trip_error(ty, &x, ggml_array_rmse)
}

fn round_trip(ty: GgmlType, x: &[f32]) -> Vec<f32> {
    let mut q = vec![0u8; row_bytes(ty, x.len())];
    quants::quantize(ty, x, &mut q).unwrap();
    let mut y = vec![f32::NAN; x.len()];
    quants::dequantize(ty, &q, &mut y).unwrap();
    y
}

fn round_trip_error(ty: GgmlType, x: &[f32], measure: fn(&[f32], &[f32]) -> f32) -> f32 {
    measure(x, &round_trip(ty, x))
}

/// Root-mean-square error relative to the input's root mean square.
fn relative_rmse(x: &[f32], y: &[f32]) -> f32 {
    let err: f64 = x.iter().zip(y).map(|(&a, &b)| f64::from(a - b).powi(2)).sum();
    let rms: f64 = x.iter().map(|&a| f64::from(a).powi(2)).sum();
    if rms == 0.0 {
        (err > 0.0) as u8 as f32
    } else {
        (err / rms).sqrt() as f32
    }
}

const QUANTIZABLE: [GgmlType; 16] = {
    use GgmlType as T;
    [
        T::F16,
        T::BF16,
        T::Q4_0,
        T::Q4_1,
        T::Q5_0,
        T::Q5_1,
        T::Q8_0,
        T::Q8_1,
        T::Q2_K,
        T::Q3_K,
        T::Q4_K,
        T::Q5_K,
        T::Q6_K,
        T::Q8_K,
        T::IQ4_NL,
        T::IQ4_XS,
    ]
};

/// Every quantizer stays within its test-quantize-fns budget. That test skips Q8_1 and Q8_K
/// (ggml has no dequantizer for them); here they get the default budget.
#[test]
fn round_trip_within_ggml_budgets() {
    let mut failures = Vec::new();
    println!("type     ggml total error   budget   (test-quantize-fns measure, 4096 x 0.1+2cos(i))");
    for ty in QUANTIZABLE {
        let err = ggml_total_error(ty);
        let budget = ggml_budget(ty);
        println!("{:8} {err:.6}           {budget}", ty.name());
        if err.is_nan() || err >= budget {
            failures.push(format!("{ty}: {err} >= {budget}"));
        }
    }
    assert!(failures.is_empty(), "over budget: {failures:?}");
}

/// Relative RMSE on the fixture rows, per type and row kind, with loose sanity ceilings (the
/// measure that matters is the ggml budget above; these catch gross breakage on hard inputs:
/// outliers, tiny values, constant rows). All-zero rows must come back exactly zero.
#[test]
fn round_trip_on_fixture_rows() {
    const ROWS: [&str; 13] = [
        "gauss",
        "outliers",
        "zeros",
        "tiny1e-6",
        "tiny1e-20",
        "positive",
        "negative",
        "scales",
        "ties",
        "constant",
        "cos",
        "sparse",
        "heavy-tail",
    ];
    // Ceiling on the relative RMSE of the Gaussian row, by type: about twice what the format's
    // bits give on N(0, 1) data.
    let ceiling = |ty: GgmlType| match ty {
        GgmlType::F16 | GgmlType::BF16 => 0.01,
        GgmlType::Q8_0 | GgmlType::Q8_1 | GgmlType::Q8_K => 0.02,
        GgmlType::Q6_K => 0.04,
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q5_K => 0.08,
        GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q4_K | GgmlType::IQ4_NL | GgmlType::IQ4_XS => 0.2,
        GgmlType::Q3_K => 0.4,
        _ => 0.6,
    };
    let x_all = load(GgmlType::Q4_0).q_in;
    let n = x_all.n_per_row;
    let x_all = x_all.f32s();
    print!("{:8}", "type");
    for name in ROWS {
        print!(" {name:>10}");
    }
    println!();
    for ty in QUANTIZABLE {
        print!("{:8}", ty.name());
        for (r, x) in x_all.chunks(n).enumerate() {
            let y = round_trip(ty, x);
            assert!(y.iter().all(|v| v.is_finite()), "{ty}: row {} decodes to non-finite values", ROWS[r]);
            let e = relative_rmse(x, &y);
            print!(" {e:10.5}");
            if ROWS[r] == "zeros" {
                assert!(y.iter().all(|&v| v == 0.0), "{ty}: zeros do not round-trip");
            }
            if ROWS[r] == "gauss" {
                assert!(e < ceiling(ty), "{ty}: relative RMSE {e} on Gaussian data");
            }
            // Rows where values are not degenerate for the format: same ceiling, doubled.
            if matches!(ROWS[r], "positive" | "negative" | "cos" | "heavy-tail")
                && !matches!(ty, GgmlType::Q2_K)
            {
                assert!(e < 2.0 * ceiling(ty), "{ty}: relative RMSE {e} on row {}", ROWS[r]);
            }
        }
        println!();
    }
}

// ---------------------------------------------------------------------------------------------
// The activation formats, which the oracle does not know

/// Q8_1's quants and scale are Q8_0's (which the oracle checks), and `s` is `d * sum(qs)`.
#[test]
fn q8_1_is_q8_0_plus_block_sum() {
    let x = load(GgmlType::Q8_1).q_in.f32s();
    let mut a = vec![BlockQ8_0::ZERO; x.len() / 32];
    let mut b = vec![BlockQ8_1::ZERO; x.len() / 32];
    quants::q8_0::quantize_row(&x, &mut a);
    quants::q8_1::quantize_row(&x, &mut b);
    for ((a, b), xs) in a.iter().zip(&b).zip(x.chunks(32)) {
        assert_eq!((a.d, a.qs), (b.d, b.qs));
        // `s` uses the scale before it is rounded to f16, as ggml does.
        let d = xs.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
        let sum: i32 = b.qs.iter().map(|&q| i32::from(q)).sum();
        assert_eq!(b.s, half::f16::from_f32(sum as f32 * d));
    }
}

/// Q8_K: the element of largest magnitude becomes -127, every quant is
/// `round_ties_even(x * -127 / max)`, and `bsums` are the group sums.
#[test]
fn q8_k_structure() {
    let x = load(GgmlType::Q8_K).q_in.f32s();
    let mut out = vec![BlockQ8K::ZERO; x.len() / 256];
    quants::q8_k::quantize_row(&x, &mut out);
    for (xs, b) in x.chunks(256).zip(&out) {
        let max = xs.iter().copied().fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        if max == 0.0 {
            assert_eq!(*b, BlockQ8K::ZERO);
            continue;
        }
        let iscale = -127.0 / max;
        assert_eq!(b.d, 1.0 / iscale);
        for (&q, &v) in b.qs.iter().zip(xs) {
            assert_eq!(i32::from(q), ((iscale * v).round_ties_even() as i32).min(127));
        }
        assert!(b.qs.contains(&-127));
        for (s, g) in b.bsums.iter().zip(b.qs.chunks(16)) {
            assert_eq!(i32::from(*s), g.iter().map(|&q| i32::from(q)).sum::<i32>());
        }
    }
}

/// The IQ4_NL trial-scale search (ggml's `quantize_iq4_nl`) never fits worse, summed over a row,
/// than ggml's quick reference without trials (`quantize_row_iq4_nl_ref`).
#[test]
fn iq4_nl_search_beats_no_search() {
    let x = ggml_test_data(0.0, 4096);
    let mut a = vec![quants::BlockIQ4NL::ZERO; x.len() / 32];
    let mut b = a.clone();
    quants::iq4_nl::quantize_row(&x, &mut a);
    quants::iq4_nl::quantize_row_no_search(&x, &mut b);
    let (mut ya, mut yb) = (vec![0.0; x.len()], vec![0.0; x.len()]);
    quants::iq4_nl::dequantize_row(&a, &mut ya);
    quants::iq4_nl::dequantize_row(&b, &mut yb);
    let (ea, eb) = (ggml_array_rmse(&x, &ya), ggml_array_rmse(&x, &yb));
    println!("IQ4_NL total error: search {ea:.6}, no search {eb:.6}");
    assert!(ea <= eb, "{ea} > {eb}");
}

// ---------------------------------------------------------------------------------------------
// Bad input: errors, never panics

#[test]
fn unsupported_types_are_errors() {
    for t in ggml_kernels::types::ALL_TYPES {
        let ty = t.ty;
        let n = t.block_size * 2;
        let mut out = vec![0.0f32; n];
        let bytes = vec![0u8; t.type_size * 2];
        let mut bytes_out = bytes.clone();
        let (dq, q) =
            (quants::dequantize(ty, &bytes, &mut out), quants::quantize(ty, &out.clone(), &mut bytes_out));
        if quants::can_dequantize(ty) {
            assert_eq!(dq, Ok(()), "{ty}");
            assert_eq!(q, Ok(()), "{ty}");
        } else {
            assert_eq!(dq, Err(QuantError::Unsupported { ty, op: QuantOp::Dequantize }));
            assert_eq!(q, Err(QuantError::Unsupported { ty, op: QuantOp::Quantize }));
        }
    }
}

#[test]
fn wrong_lengths_are_errors() {
    use GgmlType as T;
    for ty in QUANTIZABLE.into_iter().chain([T::F32]) {
        let (bs, ts) = (ty.block_size(), ty.type_size());
        // Not whole blocks of bytes.
        let mut out = vec![0.0f32; bs];
        assert!(
            matches!(
                quants::dequantize(ty, &vec![0; ts + 1], &mut out),
                Err(QuantError::NotWholeBlocks { .. })
            ),
            "{ty}"
        );
        // Not whole blocks of floats (only possible where a block has more than one element).
        if bs > 1 {
            let mut out = vec![0.0f32; bs + 1];
            assert!(
                matches!(
                    quants::dequantize(ty, &vec![0; ts], &mut out),
                    Err(QuantError::NotWholeElements { .. })
                ),
                "{ty}"
            );
            assert!(
                matches!(
                    quants::quantize(ty, &vec![0.0; bs - 1], &mut vec![0; ts]),
                    Err(QuantError::NotWholeElements { .. })
                ),
                "{ty}"
            );
        }
        // Whole blocks, but different counts.
        let mut out = vec![0.0f32; 2 * bs];
        assert_eq!(
            quants::dequantize(ty, &vec![0; ts], &mut out),
            Err(QuantError::LengthMismatch { ty, encoded_elements: bs, float_elements: 2 * bs })
        );
        assert!(
            matches!(
                quants::quantize(ty, &vec![0.0; bs], &mut vec![0; 3 * ts]),
                Err(QuantError::LengthMismatch { .. })
            ),
            "{ty}"
        );
        // Empty is fine.
        assert_eq!(quants::dequantize(ty, &[], &mut []), Ok(()));
        assert_eq!(quants::quantize(ty, &[], &mut []), Ok(()));
    }
}

/// Non-finite and extreme inputs must not panic any quantizer (debug builds included), and
/// arbitrary bytes must not panic any dequantizer.
#[test]
fn hostile_values_do_not_panic() {
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::MAX,
        -f32::MAX,
        f32::MIN_POSITIVE,
        1e-45,
        -0.0,
        0.0,
        1.0,
    ];
    for ty in QUANTIZABLE {
        for (i, &s) in specials.iter().enumerate() {
            let mut x = ggml_test_data(i as f32, 512);
            for v in x.iter_mut().skip(i).step_by(7) {
                *v = s;
            }
            let mut q = vec![0u8; row_bytes(ty, x.len())];
            quants::quantize(ty, &x, &mut q).unwrap();
            let mut y = vec![0.0; x.len()];
            quants::dequantize(ty, &q, &mut y).unwrap();
            x.fill(s);
            quants::quantize(ty, &x, &mut q).unwrap();
            quants::dequantize(ty, &q, &mut y).unwrap();
        }
        let junk: Vec<u8> = (0..row_bytes(ty, 512)).map(|i| (i * 151 + 7) as u8).collect();
        let mut y = vec![0.0; 512];
        quants::dequantize(ty, &junk, &mut y).unwrap();
        let all_ones = vec![0xFFu8; row_bytes(ty, 512)];
        quants::dequantize(ty, &all_ones, &mut y).unwrap();
    }
}
