//! Products of a quantized weight matrix with f32 activations.
//!
//! A weight matrix is stored as ggml stores it: `rows` rows of `cols` elements, each row a run of
//! blocks (`ne[0] = cols`, `ne[1] = rows`). `y = W x` computes, for each of `n` input vectors,
//! one output per weight row.
//!
//! This is the reference path: each weight row is dequantized to f32 once and dotted with every
//! input vector. Work is split over weight rows with rayon. Faster kernels (activations quantized
//! to Q8, integer SIMD dot products) replace it type by type and are checked against it.

use rayon::prelude::*;

use crate::quants::{dequantize, QuantError};
use crate::types::GgmlType;

/// A borrowed weight matrix.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    /// Elements per row (`ne[0]`).
    pub cols: usize,
    /// Number of rows (`ne[1]`).
    pub rows: usize,
    pub data: &'a [u8],
}

/// Why a matrix or a product is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatError {
    /// The data is not `rows` rows of `cols` elements of the type.
    DataSize { ty: GgmlType, cols: usize, rows: usize, expected: Option<u64>, got: usize },
    /// Activation or output lengths disagree with the matrix.
    Shape { what: &'static str, expected: usize, got: usize },
    /// No dequantizer for this type.
    Quant(QuantError),
}

impl std::fmt::Display for MatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatError::DataSize { ty, cols, rows, expected: Some(e), got } => {
                write!(f, "{ty} matrix {cols}x{rows} needs {e} bytes, got {got}")
            }
            MatError::DataSize { ty, cols, rows, expected: None, got } => {
                write!(f, "{ty} matrix {cols}x{rows} has no valid size ({got} bytes given)")
            }
            MatError::Shape { what, expected, got } => write!(f, "{what}: expected {expected} elements, got {got}"),
            MatError::Quant(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for MatError {}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: GgmlType, cols: usize, rows: usize, data: &'a [u8]) -> Result<Self, MatError> {
        let expected = ty.tensor_nbytes(&[cols as u64, rows as u64]).ok();
        if expected != Some(data.len() as u64) {
            return Err(MatError::DataSize { ty, cols, rows, expected, got: data.len() });
        }
        Ok(QMatrix { ty, cols, rows, data })
    }

    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// The encoded bytes of row `r`.
    pub fn row(&self, r: usize) -> &'a [u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Dequantizes row `r` into `out` (`cols` elements).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), MatError> {
        dequantize(self.ty, self.row(r), out).map_err(MatError::Quant)
    }
}

/// Weight rows per parallel task: enough work to amortise scheduling, few enough to balance.
const ROWS_PER_TASK: usize = 16;

/// `out[t][r] = sum_c W[r][c] * x[t][c]` for `n` input vectors `x` (`n * cols`) into `out`
/// (`n * rows`).
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), MatError> {
    if x.len() != n * w.cols {
        return Err(MatError::Shape { what: "matmul input", expected: n * w.cols, got: x.len() });
    }
    if out.len() != n * w.rows {
        return Err(MatError::Shape { what: "matmul output", expected: n * w.rows, got: out.len() });
    }
    // Each task computes a block of weight rows for every input, transposed: [rows_in_task][n].
    let blocks: Vec<Result<Vec<f32>, MatError>> = (0..w.rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(w.rows);
            let mut row = vec![0f32; w.cols];
            let mut acc = vec![0f32; (r1 - r0) * n];
            for r in r0..r1 {
                w.dequantize_row(r, &mut row)?;
                for t in 0..n {
                    acc[(r - r0) * n + t] = dot_f32(&row, &x[t * w.cols..(t + 1) * w.cols]);
                }
            }
            Ok(acc)
        })
        .collect();
    for (task, block) in blocks.into_iter().enumerate() {
        let block = block?;
        let r0 = task * ROWS_PER_TASK;
        let nr = block.len() / n.max(1);
        for i in 0..nr {
            for t in 0..n {
                out[t * w.rows + r0 + i] = block[i * n + t];
            }
        }
    }
    Ok(())
}

/// Dot product with eight independent accumulators (lets the compiler vectorise it).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_matmul_matches_naive() {
        let (cols, rows, n) = (64, 37, 3);
        let w: Vec<f32> = (0..cols * rows).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let x: Vec<f32> = (0..cols * n).map(|i| ((i * 104729) % 89) as f32 / 40.0 - 1.0).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = QMatrix::new(GgmlType::F32, cols, rows, &bytes).unwrap();
        let mut out = vec![0f32; rows * n];
        matmul(&m, &x, n, &mut out).unwrap();
        for t in 0..n {
            for r in 0..rows {
                let expect: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                assert!((out[t * rows + r] - expect).abs() < 1e-4, "t{t} r{r}");
            }
        }
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(QMatrix::new(GgmlType::Q4_0, 64, 2, &[0u8; 71]).is_err());
        assert!(QMatrix::new(GgmlType::Q4_K, 100, 1, &[0u8; 144]).is_err());
        let m = QMatrix::new(GgmlType::F32, 2, 1, &[0u8; 8]).unwrap();
        assert!(matmul(&m, &[0.0; 3], 1, &mut [0.0; 1]).is_err());
    }
}
