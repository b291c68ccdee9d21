//! AVX-512 VNNI kernels (placeholder).

use super::Kernels;

pub(super) fn install(_k: &mut Kernels) {}
