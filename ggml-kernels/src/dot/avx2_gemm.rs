//! AVX2 GEMM tiles (placeholder).

use super::Kernels;

pub(super) fn install(_k: &mut Kernels) {}
