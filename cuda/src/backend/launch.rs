//! Kernel launches through `cuLaunchKernelEx`, so that the decode kernels can be launched with
//! programmatic dependent launch (PDL, compute capability 9.0 and later).
//!
//! With PDL a kernel may start while the kernel before it in the stream is still running; the
//! kernels launched this way (the decode path's: products, norms, RoPE and KV write, attention,
//! quantization) wait in `pdl_enter()` (common.cuh), before any memory access, until the
//! previous kernel has finished, so a decode step's ~10 launches per layer overlap each kernel's
//! launch with the tail of the one before. In a CUDA graph the launches
//! become programmatic edges. `ENGINE_CUDA_PDL=0` turns it off (every launch then fully
//! serialized, as cudarc's own launcher does).

use std::ffi::c_void;

use cudarc::driver::{sys, CudaFunction, CudaSlice, CudaStream, CudaView, CudaViewMut, DevicePtr, DevicePtrMut, DriverError, LaunchConfig};

/// One kernel argument, as the bytes of a 64-bit slot (the kernel reads its parameter's size
/// from the slot's start; little-endian hosts only, as every CUDA host is).
pub(crate) trait KernelArg {
    fn bits(self, stream: &CudaStream) -> u64;
}

impl<T> KernelArg for &CudaSlice<T> {
    fn bits(self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}
impl<T> KernelArg for &mut CudaSlice<T> {
    fn bits(self, stream: &CudaStream) -> u64 {
        self.device_ptr_mut(stream).0
    }
}
impl<T> KernelArg for &CudaView<'_, T> {
    fn bits(self, stream: &CudaStream) -> u64 {
        self.device_ptr(stream).0
    }
}
impl<T> KernelArg for &mut CudaViewMut<'_, T> {
    fn bits(self, stream: &CudaStream) -> u64 {
        self.device_ptr_mut(stream).0
    }
}
impl KernelArg for &i32 {
    fn bits(self, _: &CudaStream) -> u64 {
        u64::from(*self as u32)
    }
}
impl KernelArg for &u32 {
    fn bits(self, _: &CudaStream) -> u64 {
        u64::from(*self)
    }
}
impl KernelArg for &f32 {
    fn bits(self, _: &CudaStream) -> u64 {
        u64::from(self.to_bits())
    }
}
impl KernelArg for &f64 {
    fn bits(self, _: &CudaStream) -> u64 {
        self.to_bits()
    }
}
impl KernelArg for &i64 {
    fn bits(self, _: &CudaStream) -> u64 {
        *self as u64
    }
}
impl KernelArg for &u64 {
    fn bits(self, _: &CudaStream) -> u64 {
        *self
    }
}

/// A launch being built: the function, its arguments, and whether it may start early (PDL).
pub(crate) struct Launch<'a> {
    stream: &'a CudaStream,
    func: &'a CudaFunction,
    pdl: bool,
    vals: Vec<u64>,
}

impl<'a> Launch<'a> {
    pub(crate) fn new(stream: &'a CudaStream, func: &'a CudaFunction, pdl: bool) -> Launch<'a> {
        Launch { stream, func, pdl, vals: Vec::with_capacity(24) }
    }

    pub(crate) fn arg(&mut self, a: impl KernelArg) -> &mut Self {
        let v = a.bits(self.stream);
        self.vals.push(v);
        self
    }

    /// Submits the kernel on the stream.
    ///
    /// # Safety
    /// The arguments must be the kernel's parameters, in order and of their sizes, and the
    /// kernel must stay within the buffers it is given (as for cudarc's `launch`). With PDL the
    /// kernel must call `pdl_enter()` before it touches memory.
    pub(crate) unsafe fn launch(&mut self, cfg: LaunchConfig) -> Result<(), DriverError> {
        self.stream.context().bind_to_thread()?;
        let mut params: Vec<*mut c_void> = self.vals.iter_mut().map(|v| (v as *mut u64).cast::<c_void>()).collect();
        // SAFETY: an all-zero launch attribute is a valid (ignored) value; the fields set below
        // are the id and the matching union member.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: cfg.grid_dim.0,
            gridDimY: cfg.grid_dim.1,
            gridDimZ: cfg.grid_dim.2,
            blockDimX: cfg.block_dim.0,
            blockDimY: cfg.block_dim.1,
            blockDimZ: cfg.block_dim.2,
            sharedMemBytes: cfg.shared_mem_bytes,
            hStream: self.stream.cu_stream(),
            attrs: if self.pdl { &mut attr } else { std::ptr::null_mut() },
            numAttrs: u32::from(self.pdl),
        };
        // SAFETY: `params` points at one live slot per argument (the caller vouches for their
        // number and sizes); the config and attribute outlive the call, which copies them.
        unsafe { sys::cuLaunchKernelEx(&config, self.func.cu_function(), params.as_mut_ptr(), std::ptr::null_mut()) }.result()
    }
}

/// Whether decode launches use PDL on a device of compute capability `major.minor`: from 9.0
/// on, unless `ENGINE_CUDA_PDL=0`.
pub(crate) fn pdl_enabled(major: u32) -> bool {
    major >= 9 && std::env::var("ENGINE_CUDA_PDL").map_or(true, |v| v != "0")
}
