//! A batch of activation rows gets, row for row, what each row gets alone: the decode kernels
//! over a few rows (`n` up to 4, or 8 for Q8_0), the GEMM tiles (more rows) and the
//! matrix-vector kernels (`n == 1`) quantize the activations the same way and differ only in the
//! order of their f32 sums. Batched decode of several sequences relies on it.

use ggml_kernels::matmul::{matmul, QMatrix};
use ggml_kernels::quants::quantize;
use ggml_kernels::GgmlType;

/// A small deterministic generator (xorshift), values in [-1, 1).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
}

#[test]
fn gemm_rows_equal_matvec_rows() {
    let (cols, rows) = (512usize, 72usize);
    let mut g = Gen(0x9e37_79b9_7f4a_7c15);
    for n in [2usize, 3, 5, 8, 12] {
        for ty in [
            GgmlType::Q4_0,
            GgmlType::Q5_0,
            GgmlType::Q8_0,
            GgmlType::Q4_K,
            GgmlType::Q5_K,
            GgmlType::Q6_K,
            GgmlType::Q2_K,
            GgmlType::Q3_K,
            GgmlType::IQ4_NL,
            GgmlType::IQ4_XS,
            GgmlType::F16,
        ] {
            let w: Vec<f32> = (0..rows * cols).map(|_| g.next()).collect();
            let mut data =
                vec![0u8; ty.tensor_nbytes(&[cols as u64, rows as u64]).unwrap() as usize];
            quantize(ty, &w, &mut data).unwrap();
            let m = QMatrix::new(ty, cols, rows, &data).unwrap();
            let x: Vec<f32> = (0..n * cols).map(|_| g.next() * 3.0).collect();
            let mut batched = vec![0f32; n * rows];
            matmul(&m, &x, n, &mut batched).unwrap();
            let mut worst = 0f32;
            for t in 0..n {
                let mut alone = vec![0f32; rows];
                matmul(&m, &x[t * cols..(t + 1) * cols], 1, &mut alone).unwrap();
                for (a, b) in alone.iter().zip(&batched[t * rows..(t + 1) * rows]) {
                    worst = worst.max((a - b).abs() / a.abs().max(1.0));
                }
            }
            assert!(worst <= 5e-5, "{ty:?}, {n} rows: a batched row differs from the same row alone by {worst} (relative)");
        }
    }
}
