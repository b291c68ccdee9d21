//! The backend's error type.

use ggml_kernels::GgmlType;

use crate::Unavailable;

/// Why a CUDA call failed. CUDA errors carry the driver's name for them
/// (`CUDA_ERROR_OUT_OF_MEMORY`), so a log line says what happened without a lookup.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// No usable driver, device or NVRTC.
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// A driver call failed.
    #[error("CUDA error in {op}: {name}")]
    Driver { op: &'static str, name: String },
    /// An NVRTC call other than the compilation failed.
    #[error("NVRTC error in {op}: {name}")]
    Nvrtc { op: &'static str, name: String },
    /// NVRTC rejected a kernel file.
    #[error("NVRTC could not compile {file} for {target} ({name}):\n{log}")]
    Compile { file: &'static str, target: String, name: String, log: String },
    /// The device's architecture is older than every one NVRTC can target.
    #[error("NVRTC {nvrtc} cannot target compute capability {major}.{minor}")]
    UnsupportedArch { major: u32, minor: u32, nvrtc: String },
    /// A buffer's length does not match the operation's shape.
    #[error("{what}: expected {expected} elements, got {got}")]
    Shape { what: &'static str, expected: usize, got: usize },
    /// An argument outside what the kernels handle.
    #[error("{0}")]
    Invalid(String),
    /// No matrix-vector kernel for this weight type.
    #[error("{0} weights have no CUDA matrix-vector kernel (supported: Q8_0, Q4_0, Q5_0, Q4_K, Q6_K)")]
    UnsupportedType(GgmlType),
    /// The CUDA bindings panicked (a symbol missing from an old driver, say); caught and reported.
    #[error("the CUDA bindings failed in {op}: {msg}")]
    Panic { op: &'static str, msg: String },
}

/// Maps a driver error to [`CudaError::Driver`], naming the operation.
pub(crate) fn driver(op: &'static str) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver { op, name: driver_error_name(&e) }
}

/// The driver's name for an error (`CUDA_ERROR_NO_DEVICE`).
pub(crate) fn driver_error_name(e: &cudarc::driver::DriverError) -> String {
    format!("{:?}", e.0)
}

/// Maps an NVRTC error to [`CudaError::Nvrtc`].
pub(crate) fn nvrtc(op: &'static str) -> impl FnOnce(cudarc::nvrtc::result::NvrtcError) -> CudaError {
    move |e| CudaError::Nvrtc { op, name: format!("{:?}", e.0) }
}

/// Runs `f`, turning a panic inside the CUDA bindings into [`CudaError::Panic`].
pub(crate) fn guarded<T>(op: &'static str, f: impl FnOnce() -> Result<T, CudaError>) -> Result<T, CudaError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".to_string());
            Err(CudaError::Panic { op, msg })
        }
    }
}
