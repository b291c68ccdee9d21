//! The CUDA backend.
//!
//! The GPU twin of the decode kernels in `ggml-kernels`, written in CUDA C++ (`cuda/kernels/`, one
//! `.cu` file per op family), compiled at run time with NVRTC for the GPU found, cached on disk,
//! and loaded through cudarc's dynamic loading: `libcuda` and `libnvrtc` are opened when first
//! needed, so the workspace builds and tests on machines with no CUDA installed, where [`probe`]
//! says why no GPU is used and callers fall back to the CPU.
//!
//! - [`probe`]: the devices, or why there are none ([`Unavailable`]); never panics.
//! - [`CudaBackend`]: one device, its stream and kernels, device buffers, one method per op:
//!   RMSNorm, RoPE (normal and NeoX), GELU-tanh and SiLU gated products, activation quantization
//!   to Q8_0/Q8_1, matrix-vector products of Q8_0, Q4_0, Q5_0, Q4_K and Q6_K weights with Q8_1
//!   activations (integer `dp4a` dot products), and single-query attention over an f16 KV cache;
//!   for whole forward passes: embedding rows, residual and bias additions, KV-cache writes,
//!   prefill attention with the same masks, and batched products (`matmul`: per-token
//!   matrix-vector products, or weights dequantized to f16 and a cuBLAS GEMM, cuBLAS loaded
//!   dynamically like the driver).
//! - [`build_all`]: compiles every kernel file for an architecture (NVRTC only, no GPU needed),
//!   through the on-disk cache described in the `nvrtc` module.
//!
//! Every op is held to the CPU reference in `ggml-kernels` by `tests/parity.rs`.

mod backend;
mod error;
mod nvrtc;

use std::fmt;

pub use backend::{
    CudaBackend, DeviceBuffer, DeviceElem, DeviceGraph, DeviceMatrix, GatedAct, HostBuffer, MatmulScratch, MatvecKernel, QkvExtras, RopeParams,
    ATT_MAX_HEAD_DIM,
    DEFAULT_MATVEC, DEQUANT_TYPES, GEMM_MIN_TOKENS, MATVEC_TYPES, Q8_0_BYTES, Q8_1_BYTES,
};
pub use error::CudaError;
pub use nvrtc::{build_all, cache_dir, target_for, version as nvrtc_version, ImageOrigin, ModuleImage, Target};

/// Why the CUDA backend cannot be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unavailable {
    /// The driver library (`libcuda.so`) could not be loaded: no NVIDIA driver on this machine.
    NoDriver,
    /// The driver loaded but reports no device.
    NoDevice,
    /// The driver failed (the CUDA error's name, and the call that returned it).
    Driver { op: &'static str, name: String },
    /// NVRTC (`libnvrtc.so`) could not be loaded, so no kernel can be compiled.
    NoNvrtc,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NoDriver => f.write_str("no CUDA driver library (libcuda.so) could be loaded; running on the CPU"),
            Unavailable::NoDevice => f.write_str("the CUDA driver reports no device; running on the CPU"),
            Unavailable::Driver { op, name } => write!(f, "the CUDA driver failed in {op} ({name}); running on the CPU"),
            Unavailable::NoNvrtc => {
                f.write_str("NVRTC (libnvrtc.so) could not be loaded, so no CUDA kernel can be compiled; running on the CPU")
            }
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
    /// `(major, minor)`: 9.0 for Hopper (H100, H200).
    pub compute_capability: (u32, u32),
}

/// Looks for usable GPUs: a loadable driver with at least one device, and NVRTC.
pub fn probe() -> Result<Vec<DeviceInfo>, Unavailable> {
    match error::guarded("probe", || probe_inner().map_err(CudaError::from)) {
        Ok(v) => Ok(v),
        Err(CudaError::Unavailable(u)) => Err(u),
        Err(CudaError::Panic { msg, .. }) => Err(Unavailable::Driver { op: "probe", name: msg }),
        Err(e) => Err(Unavailable::Driver { op: "probe", name: e.to_string() }),
    }
}

fn probe_inner() -> Result<Vec<DeviceInfo>, Unavailable> {
    use cudarc::driver::{result, sys};
    // SAFETY: only tries to dlopen the driver library's candidate names.
    if !unsafe { sys::is_culib_present() } {
        return Err(Unavailable::NoDriver);
    }
    let drv = |op: &'static str| {
        move |e: cudarc::driver::DriverError| match e.0 {
            sys::CUresult::CUDA_ERROR_NO_DEVICE => Unavailable::NoDevice,
            _ => Unavailable::Driver { op, name: error::driver_error_name(&e) },
        }
    };
    result::init().map_err(drv("cuInit"))?;
    let n = result::device::get_count().map_err(drv("cuDeviceGetCount"))?;
    if n <= 0 {
        return Err(Unavailable::NoDevice);
    }
    if !nvrtc::is_available() {
        return Err(Unavailable::NoNvrtc);
    }
    let attr = |dev, a| {
        // SAFETY: `dev` is a device handle the driver returned.
        unsafe { result::device::get_attribute(dev, a) }.map_err(drv("cuDeviceGetAttribute"))
    };
    (0..n)
        .map(|i| {
            let dev = result::device::get(i).map_err(drv("cuDeviceGet"))?;
            let name = result::device::get_name(dev).map_err(drv("cuDeviceGetName"))?;
            // SAFETY: as above.
            let total_memory = unsafe { result::device::total_mem(dev) }.map_err(drv("cuDeviceTotalMem"))? as u64;
            let major = attr(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?;
            let minor = attr(dev, sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?;
            Ok(DeviceInfo { ordinal: i as usize, name, total_memory, compute_capability: (major as u32, minor as u32) })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_answers_without_panicking() {
        match super::probe() {
            Ok(devices) => {
                assert!(!devices.is_empty());
                for d in &devices {
                    println!(
                        "device {}: {} ({} MiB, cc {}.{})",
                        d.ordinal,
                        d.name,
                        d.total_memory >> 20,
                        d.compute_capability.0,
                        d.compute_capability.1
                    );
                }
            }
            Err(e) => {
                println!("no CUDA: {e}");
                assert!(e.to_string().contains("CPU"));
            }
        }
    }
}
