//! The CUDA backend.
//!
//! It will hold the GPU twin of every kernel in `ggml-kernels`, compiled at run time with NVRTC
//! and loaded through cudarc's dynamic loading, so that the workspace builds and tests on a
//! machine with no CUDA installed. Until those kernels land, [`probe`] answers honestly that no
//! GPU backend is available, and callers fall back to the CPU.

use std::fmt;

/// Why the CUDA backend cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// This build has no CUDA kernels yet.
    NotBuilt,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotBuilt => f.write_str("this build has no CUDA backend yet; running on the CPU"),
        }
    }
}

impl std::error::Error for Unavailable {}

/// A GPU the backend can run on.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    pub total_memory: u64,
}

/// Looks for a usable GPU.
pub fn probe() -> Result<Vec<DeviceInfo>, Unavailable> {
    Err(Unavailable::NotBuilt)
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_reports_why_no_gpu_is_used() {
        let err = super::probe().unwrap_err();
        assert!(err.to_string().contains("CPU"));
    }
}
