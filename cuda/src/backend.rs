//! [`CudaBackend`]: one device, one stream, the compiled kernels, and one method per op.
//!
//! Every method checks its buffers' lengths against the op's shape and returns a
//! [`CudaError`] rather than launching a kernel that would read or write out of bounds. Launches
//! are asynchronous on the backend's stream; [`CudaBackend::download`] and
//! [`CudaBackend::synchronize`] wait for them and report any error a kernel raised.

use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use ggml_kernels::attention::{AttnMask, AttnShape};
use ggml_kernels::matmul::QMatrix;
use ggml_kernels::ops::RopeKind;
use ggml_kernels::GgmlType;
use half::f16;

use crate::error::{driver, guarded, CudaError};
use crate::nvrtc::{self, ModuleImage, FILES};
use crate::DeviceInfo;

mod fused;
mod launch;
mod model_ops;
pub use fused::QkvExtras;
pub use model_ops::{DeviceGraph, MatmulScratch, DEQUANT_TYPES, GEMM_MIN_TOKENS};

mod sealed {
    pub trait Sealed {}
}

/// An element type a [`DeviceBuffer`] can hold.
pub trait DeviceElem:
    sealed::Sealed + cudarc::driver::DeviceRepr + cudarc::driver::ValidAsZeroBits + Copy + Default + Unpin + 'static
{
}

macro_rules! device_elem {
    ($($t:ty),*) => {$(
        impl sealed::Sealed for $t {}
        impl DeviceElem for $t {}
    )*};
}
device_elem!(f32, f16, i32, u8, u16, u32);

/// Errors unless the attention kernels can run this shape (whole GQA groups, head sizes the
/// kernels' shared memory holds).
pub(crate) fn check_attn_shape(s: &AttnShape) -> Result<(), CudaError> {
    if s.n_head_kv == 0 || s.n_head % s.n_head_kv != 0 {
        return Err(CudaError::Invalid(format!("attention: n_head {} is not a multiple of n_head_kv {}", s.n_head, s.n_head_kv)));
    }
    for (what, d) in [("head_dim", s.head_dim), ("head_dim_v", s.head_dim_v)] {
        if d == 0 || d > ATT_MAX_HEAD_DIM {
            return Err(CudaError::Invalid(format!("attention: {what} {d} is outside 1..={ATT_MAX_HEAD_DIM}")));
        }
    }
    Ok(())
}

/// The launch of `rms_norm_f32` over `x_len` floats in rows of `n` (one block per row, a warp
/// multiple of threads up to 1024) and the row length as the kernel takes it; `None` when there
/// are no rows. Errors unless `x_len` is whole rows.
pub(crate) fn rms_norm_launch(x_len: usize, n: usize) -> Result<Option<(LaunchConfig, i32)>, CudaError> {
    if n == 0 || x_len % n != 0 {
        return Err(CudaError::Invalid(format!("rms_norm: {x_len} elements are not rows of {n}")));
    }
    let rows = x_len / n;
    if rows == 0 {
        return Ok(None);
    }
    let threads = n.div_ceil(32).clamp(1, 32) as u32 * 32;
    Ok(Some((cfg((as_u32("rows", rows)?, 1), threads), as_i32("rms_norm row length", n)?)))
}

/// Memory on the device: `len` elements of `T`.
pub struct DeviceBuffer<T> {
    inner: CudaSlice<T>,
}

impl<T> DeviceBuffer<T> {
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }
}

/// Page-locked host memory of `len` elements of `T`, the target of downloads that must run at
/// the link's full speed (a pageable download goes through a staging copy). Cached, not
/// write-combined: the host reads it.
pub struct HostBuffer<T> {
    inner: cudarc::driver::PinnedHostSlice<T>,
}

impl<T: DeviceElem> HostBuffer<T> {
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.len() == 0
    }

    /// The contents, once every copy into them has completed.
    pub fn as_slice(&self) -> Result<&[T], CudaError> {
        self.inner.as_slice().map_err(driver("cuEventSynchronize"))
    }

    /// The contents to write, once every copy from or into them has completed.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T], CudaError> {
        self.inner.as_mut_slice().map_err(driver("cuEventSynchronize"))
    }
}

impl<T> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceBuffer<{}>[{}]", std::any::type_name::<T>(), self.inner.len())
    }
}

/// A weight matrix on the device, laid out as in GGUF: `rows` rows of `cols` elements, each row a
/// run of blocks of `ty`.
#[derive(Debug)]
pub struct DeviceMatrix {
    pub ty: GgmlType,
    pub cols: usize,
    pub rows: usize,
    data: DeviceBuffer<u8>,
}

impl DeviceMatrix {
    /// Bytes of weight data.
    pub fn nbytes(&self) -> usize {
        self.data.len()
    }
}

/// The activation of a gated FFN (`gate = act(gate) * up`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GatedAct {
    /// GELU, tanh approximation (Gemma).
    GeluTanh,
    /// SiLU (Llama, Mistral, Qwen 2).
    Silu,
}

/// RoPE over `n_head` heads of `head_dim` per token (as `ggml_kernels::ops::RopeTable`).
#[derive(Clone, Copy, Debug)]
pub struct RopeParams {
    pub kind: RopeKind,
    pub n_head: usize,
    pub head_dim: usize,
    /// Rotated dimensions per head (even, at most `head_dim`).
    pub n_rot: usize,
    pub base: f32,
    pub freq_scale: f32,
}

impl RopeParams {
    /// `base^(-2 / n_rot)` in f64, the ratio of consecutive pairs' frequencies: the kernels
    /// raise it to the pair index by repeated squaring instead of a pow per thread (rope.cu).
    fn step(&self) -> f64 {
        (self.base as f64).powf(-2.0 / self.n_rot as f64)
    }
}

/// Bytes of a Q8_0 block (32 activations).
pub const Q8_0_BYTES: usize = 34;
/// Bytes of a Q8_1 block (32 activations).
pub const Q8_1_BYTES: usize = 36;

/// Threads per block of the version 1 matrix-vector kernels (`MV_THREADS` in matvec.cu).
const MV_THREADS: u32 = 128;
/// Warps per block of the version 2 kernels (`MV2_WARPS`).
const MV2_WARPS: usize = 4;
/// [`CudaBackend::auto_matvec`]'s bound on the passes per warp below which it halves the warps
/// per row of a matrix with more rows than stay resident: the kernels' unrolled group was 4
/// passes when it was tuned. The kernels now unroll 2 (`MV2_UNROLL` in matvec.cu, measured with
/// this bound unchanged).
const WPR_PASSES: usize = 4;

/// Which matrix-vector kernel runs (matvec.cu keeps both versions, benchmarked against each
/// other by `examples/matvec_bw.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MatvecKernel {
    /// Version 1: one block of 128 threads per row and a block-wide reduction (the shape of
    /// llama.cpp's mmvq).
    BlockPerRow,
    /// Version 2 with 1, 2 or 4 warps per row: no block-wide barrier for one warp per row,
    /// unrolled straight-line passes, and 16-byte quant loads for Q4_K.
    WarpsPerRow(u32),
    /// Version 2 with the warps per row [`CudaBackend::auto_matvec`] picks for the shape.
    Auto,
}

impl MatvecKernel {
    /// Every explicit kernel (the parity tests run each).
    pub const ALL: [MatvecKernel; 4] =
        [MatvecKernel::BlockPerRow, MatvecKernel::WarpsPerRow(1), MatvecKernel::WarpsPerRow(2), MatvecKernel::WarpsPerRow(4)];
}

/// Decode attention (attention.cu): slots per tile (= threads per block), query heads per block
/// of each kernel variant (`attn_decode_g1` .. `attn_decode_g8`), the blocks per call the split
/// aims at, the most splits aimed at (the kernel holds twice as many, `AD_MAX_SPLITS`), the
/// fewest slots per split (a warp), and the threads of the merge kernel (`AD_MERGE_THREADS`).
/// The block target is two per multiprocessor of an H100/H200 (the 4-head kernel keeps three
/// resident, so one wave of blocks each walking a few tiles): on an H200, Llama-3-8B shape, it
/// gave 246.4 t/s at depth 8,192 and 183.4 at 32,768 against 233.0 and 169.4 with 512 blocks
/// and 220.2 at 8,192 with 1,024 (docs/PERFORMANCE.md). `AD_TARGET_BLOCKS`,
/// `AD_SPLIT_SLOTS_MAX` and `AD_SPLIT_MIN` can be overridden through `ENGINE_CUDA_DEFINES` for
/// tuning.
const AD_TILE: usize = 128;
const AD_GROUPS: [usize; 4] = [1, 2, 4, 8];
const AD_TARGET_BLOCKS: usize = 264;
const AD_WANT_SPLITS_MAX: usize = 128;
const AD_SPLIT_MIN: usize = 32;
/// The longest split aimed at: with many tokens (sequences) per call the blocks already fill the
/// GPU, and splits of a whole cache each left a few long blocks as the last wave.
const AD_SPLIT_SLOTS_MAX: usize = 2048;
const AD_MERGE_THREADS: u32 = 256;

/// Query heads per block of decode attention for a GQA group of `group` heads: the smallest
/// kernel variant holding the group, else the largest (several blocks per KV head).
fn decode_heads_per_block(group: usize) -> usize {
    AD_GROUPS.iter().copied().find(|&g| g >= group).unwrap_or(AD_GROUPS[AD_GROUPS.len() - 1])
}

/// The splits decode attention aims at for `n` tokens over `n_slots` slots: enough blocks (KV
/// heads x head chunks x splits x tokens) to fill the GPU, and splits of at most
/// [`AD_SPLIT_SLOTS_MAX`] slots, at most [`AD_WANT_SPLITS_MAX`] (non-decreasing in `n_slots`).
fn decode_want_splits(s: &AttnShape, n_slots: usize, n: usize) -> usize {
    let group = s.n_head / s.n_head_kv.max(1);
    let per_split = s.n_head_kv * group.div_ceil(decode_heads_per_block(group)) * n.max(1);
    let (target, longest, _) = decode_split_targets();
    (target / per_split.max(1)).max(n_slots.div_ceil(longest)).clamp(1, AD_WANT_SPLITS_MAX)
}

/// [`AD_TARGET_BLOCKS`], [`AD_SPLIT_SLOTS_MAX`] and [`AD_SPLIT_MIN`], or their overrides in
/// `ENGINE_CUDA_DEFINES` (positive integers; the shortest split rounded up to a multiple of 32,
/// and past one tile to a multiple of a tile, so that [`decode_split`] keeps it), read once per
/// process.
fn decode_split_targets() -> (usize, usize, usize) {
    static TARGETS: std::sync::OnceLock<(usize, usize, usize)> = std::sync::OnceLock::new();
    *TARGETS.get_or_init(|| {
        let tuned = |name: &str, default: usize| {
            nvrtc::tuning_value(name).and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0).unwrap_or(default)
        };
        let min = tuned("AD_SPLIT_MIN", AD_SPLIT_MIN).div_ceil(32) * 32;
        let min = if min > AD_TILE { min.div_ceil(AD_TILE) * AD_TILE } else { min };
        (tuned("AD_TARGET_BLOCKS", AD_TARGET_BLOCKS), tuned("AD_SPLIT_SLOTS_MAX", AD_SPLIT_SLOTS_MAX), min)
    })
}

/// Slots per split and the number of splits of decode attention over `n_slots` slots: the
/// wanted number of splits, each a multiple of 32 slots, or of a whole tile (128) once a split
/// is longer than one (so no split ends in a short tile: 8,320 slots are 65 splits of 128, not
/// 52 of 160), which makes at most twice the splits wanted.
fn decode_split(s: &AttnShape, n_slots: usize, n: usize) -> (usize, usize) {
    let want = decode_want_splits(s, n_slots, n);
    let min = decode_split_targets().2;
    let mut split = n_slots.div_ceil(want).div_ceil(min).max(1) * min;
    if split > AD_TILE {
        split = split / AD_TILE * AD_TILE;
    }
    (split, n_slots.div_ceil(split).max(1))
}

/// A bound on the splits of [`decode_split`], non-decreasing in `n_slots` (a partials buffer
/// sized for the largest layer serves the smaller ones): splits have at least the shortest
/// split's slots (32 unless `AD_SPLIT_MIN` overrides it) and, past one tile, at least half the
/// slots per wanted split.
fn decode_max_splits(s: &AttnShape, n_slots: usize, n: usize) -> usize {
    (2 * decode_want_splits(s, n_slots, n)).min(n_slots.div_ceil(decode_split_targets().2).max(1))
}

/// Floats of the partials one decode attention call over `n` tokens and `n_slots` slots writes
/// at most.
fn decode_partials(s: &AttnShape, n_slots: usize, n: usize) -> usize {
    n * s.n_head * decode_max_splits(s, n_slots, n) * (2 + s.head_dim_v)
}

/// Bytes of a Q6_K block in the file and on the device (`Q6K_DEV_TS` in the kernels): two zero
/// bytes after each block keep every block 4-byte aligned, so the kernels read the quants in
/// 32-bit words. 1% more bytes for those matrices.
const Q6_K_BYTES: usize = 210;
const Q6_K_DEVICE_BYTES: usize = 212;

/// Q6_K blocks in the device layout: each block followed by `Q6_K_DEVICE_BYTES - Q6_K_BYTES` zeros.
fn pad_q6_k(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / Q6_K_BYTES * Q6_K_DEVICE_BYTES);
    for block in data.chunks_exact(Q6_K_BYTES) {
        out.extend_from_slice(block);
        out.extend_from_slice(&[0; Q6_K_DEVICE_BYTES - Q6_K_BYTES]);
    }
    out
}

/// The largest head dimension of the attention kernels (`ATT_MAX_D`).
pub const ATT_MAX_HEAD_DIM: usize = 256;

/// The kernel [`CudaBackend::matvec`] uses.
pub const DEFAULT_MATVEC: MatvecKernel = MatvecKernel::Auto;

/// The weight types [`CudaBackend::matvec`] handles.
pub const MATVEC_TYPES: [GgmlType; 5] = [GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K];

/// Every kernel, loaded.
struct Kernels {
    rms_norm: CudaFunction,
    rope: CudaFunction,
    gelu_mul: CudaFunction,
    silu_mul: CudaFunction,
    quantize_q8_0: CudaFunction,
    quantize_q8_1: CudaFunction,
    /// Version 1, per type of [`MATVEC_TYPES`].
    matvec1: Vec<CudaFunction>,
    /// Version 2 with 1, 2 and 4 warps per row, per type of [`MATVEC_TYPES`].
    matvec2: Vec<[CudaFunction; 3]>,
    /// Decode attention with 1, 2, 4 and 8 query heads per block ([`AD_GROUPS`]).
    attn_decode: [CudaFunction; 4],
    /// The same for head dimensions that are not multiples of 8.
    attn_decode_any: [CudaFunction; 4],
    /// Multiples of 8 with less code, for short splits (`attn_decode_g<G>_short`).
    attn_decode_short: [CudaFunction; 4],
    attn_merge: CudaFunction,
}

/// The CUDA backend on one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    info: DeviceInfo,
    multiprocessors: usize,
    modules: Vec<ModuleImage>,
    k: Kernels,
    mk: model_ops::ModelKernels,
    fk: fused::FusedKernels,
    /// cuBLAS for prefill GEMMs, or why it could not be loaded.
    blas: Result<cudarc::cublas::CudaBlas, String>,
    /// Decode launches use programmatic dependent launch (see `launch.rs`).
    pdl: bool,
    /// Decode attention splits of at most this many slots take the short kernels
    /// ([`CudaBackend::set_attention_short_split`]).
    attn_short_split: std::sync::atomic::AtomicUsize,
}

/// The type's name in kernel names (`q4_k`).
fn kernel_type_name(t: GgmlType) -> String {
    t.to_string().to_lowercase()
}

/// Checks a length.
fn expect_len(what: &'static str, expected: usize, got: usize) -> Result<(), CudaError> {
    if expected == got {
        Ok(())
    } else {
        Err(CudaError::Shape { what, expected, got })
    }
}

/// A dimension as the `int` a kernel takes.
fn as_i32(what: &str, v: usize) -> Result<i32, CudaError> {
    i32::try_from(v).map_err(|_| CudaError::Invalid(format!("{what} = {v} exceeds the kernels' 32-bit range")))
}

fn as_u32(what: &str, v: usize) -> Result<u32, CudaError> {
    u32::try_from(v).map_err(|_| CudaError::Invalid(format!("{what} = {v} exceeds a grid dimension")))
}

fn cfg(grid: (u32, u32), threads: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (grid.0, grid.1, 1), block_dim: (threads, 1, 1), shared_mem_bytes: 0 }
}

impl CudaBackend {
    /// Opens device `ordinal`: creates its context and stream, and compiles (or reads from the
    /// cache) every kernel for its architecture.
    pub fn new(ordinal: usize) -> Result<CudaBackend, CudaError> {
        guarded("CudaBackend::new", || Self::open(ordinal))
    }

    fn open(ordinal: usize) -> Result<CudaBackend, CudaError> {
        let devices = crate::probe()?;
        let info =
            devices.into_iter().find(|d| d.ordinal == ordinal).ok_or_else(|| CudaError::Invalid(format!("no CUDA device {ordinal}")))?;
        let ctx = CudaContext::new(ordinal).map_err(driver("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: the backend uses one stream for everything, so no buffer is used on one stream
        // while another still works on it; cudarc's cross-stream event tracking is not needed.
        unsafe { ctx.disable_event_tracking() };
        // A stream of its own (not the legacy default stream, which cannot be captured into a
        // CUDA graph).
        let stream = ctx.new_stream().map_err(driver("cuStreamCreate"))?;
        let multiprocessors = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver("cuDeviceGetAttribute"))?
            .max(1) as usize;
        let (major, minor) = info.compute_capability;
        let modules = nvrtc::build_all(major, minor)?;
        let mut loaded: Vec<Arc<CudaModule>> = Vec::with_capacity(modules.len());
        for m in &modules {
            loaded.push(ctx.load_module(Ptx::from_binary(m.image.to_vec())).map_err(driver("cuModuleLoadData"))?);
        }
        let func = |name: &str| -> Result<CudaFunction, CudaError> {
            let file = FILES
                .iter()
                .position(|f| f.functions.contains(&name))
                .ok_or_else(|| CudaError::Invalid(format!("no kernel file defines {name}")))?;
            loaded[file].load_function(name).map_err(driver("cuModuleGetFunction"))
        };
        let k = Kernels {
            rms_norm: func("rms_norm_f32")?,
            rope: func("rope_f32")?,
            gelu_mul: func("gelu_tanh_mul_f32")?,
            silu_mul: func("silu_mul_f32")?,
            quantize_q8_0: func("quantize_q8_0")?,
            quantize_q8_1: func("quantize_q8_1")?,
            matvec1: MATVEC_TYPES.iter().map(|t| func(&format!("matvec_{}", kernel_type_name(*t)))).collect::<Result<_, _>>()?,
            matvec2: MATVEC_TYPES
                .iter()
                .map(|t| {
                    let n = kernel_type_name(*t);
                    Ok([func(&format!("matvec2_{n}_w1"))?, func(&format!("matvec2_{n}_w2"))?, func(&format!("matvec2_{n}_w4"))?])
                })
                .collect::<Result<_, CudaError>>()?,
            attn_decode: [func("attn_decode_g1")?, func("attn_decode_g2")?, func("attn_decode_g4")?, func("attn_decode_g8")?],
            attn_decode_any: [
                func("attn_decode_g1_any")?,
                func("attn_decode_g2_any")?,
                func("attn_decode_g4_any")?,
                func("attn_decode_g8_any")?,
            ],
            attn_decode_short: [
                func("attn_decode_g1_short")?,
                func("attn_decode_g2_short")?,
                func("attn_decode_g4_short")?,
                func("attn_decode_g8_short")?,
            ],
            attn_merge: func("attn_decode_merge")?,
        };
        let mk = model_ops::ModelKernels::load(&func)?;
        let fk = fused::FusedKernels::load(&func)?;
        let blas = model_ops::open_blas(&stream);
        let pdl = launch::pdl_enabled(major);
        let short = nvrtc::tuning_value("AD_SHORT_SPLIT").and_then(|v| usize::try_from(v).ok()).unwrap_or(0);
        let attn_short_split = std::sync::atomic::AtomicUsize::new(short);
        Ok(CudaBackend { ctx, stream, info, multiprocessors, modules, k, mk, fk, blas, pdl, attn_short_split })
    }

    /// A launch of `f` that may start before the previous kernel ends (PDL, when enabled): for
    /// kernels that call `pdl_enter()` before touching memory.
    fn launch_pdl<'a>(&'a self, f: &'a CudaFunction) -> launch::Launch<'a> {
        launch::Launch::new(&self.stream, f, self.pdl)
    }

    /// Whether decode launches use programmatic dependent launch.
    pub fn uses_pdl(&self) -> bool {
        self.pdl
    }

    /// Decode attention runs splits of at most `slots` slots (head dimensions multiples of 8)
    /// with `attn_decode_g<G>_short`, the kernel with a quarter of the unrolled code
    /// (`AD_SHORT_INFLIGHT` pieces in flight, 128 registers instead of 254): the same floats,
    /// possibly faster where a launch over a few slots waits on fetching instructions. 0 (the
    /// default, or `AD_SHORT_SPLIT` in `ENGINE_CUDA_DEFINES`): never. Applies to later launches
    /// (a captured graph keeps its kernels).
    pub fn set_attention_short_split(&self, slots: usize) {
        self.attn_short_split.store(slots, std::sync::atomic::Ordering::Relaxed);
    }

    /// The device.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }

    /// Streaming multiprocessors of the device.
    pub fn multiprocessors(&self) -> usize {
        self.multiprocessors
    }

    /// The kernel [`MatvecKernel::Auto`] picks for `rows` rows of `cols` columns of `ty`: version 2
    /// with one warp per row when the rows give every multiprocessor its 64 warps, else four
    /// warps per row; Q4_K and Q5_0 keep one warp per row down to 16 warps per multiprocessor. On
    /// an H200 this is within 10% of the best of the four kernels for every Llama-3-8B shape
    /// measured (the table in docs/PERFORMANCE.md). Two corrections for short rows (Llama-3.2-1B's
    /// 2048 columns): no warp of a row is left without a pass, and the warps per row are halved
    /// while the rows' warps exceed what the multiprocessors hold at once (32 warps each) and
    /// each warp still has at most one unrolled group of passes. Of the Llama-3-8B shapes this
    /// changes only Q4_0's 4096 x 4096 (four warps to two, the best of the table).
    pub fn auto_matvec(&self, ty: GgmlType, rows: usize, cols: usize) -> MatvecKernel {
        let one_warp_from = match ty {
            GgmlType::Q4_K | GgmlType::Q5_0 => 16 * self.multiprocessors,
            _ => 64 * self.multiprocessors,
        };
        let mut wpr = if rows >= one_warp_from { 1 } else { 4 };
        // Blocks of the type one pass of a warp covers (32 / threads per block).
        let per_pass = match ty {
            GgmlType::Q8_0 => 8,
            GgmlType::Q4_0 | GgmlType::Q5_0 => 16,
            GgmlType::Q4_K => 4,
            _ => 1,
        };
        let nb = cols / ty.block_size().max(1);
        while wpr > 1 && nb < per_pass * wpr {
            wpr /= 2;
        }
        let resident = 32 * self.multiprocessors;
        while wpr > 1 && rows * wpr > resident && nb <= per_pass * (wpr / 2) * WPR_PASSES {
            wpr /= 2;
        }
        MatvecKernel::WarpsPerRow(wpr as u32)
    }

    /// The compiled kernel files: target, size, and whether they came from NVRTC or a cache.
    pub fn modules(&self) -> &[ModuleImage] {
        &self.modules
    }

    /// `len` zeroed elements.
    pub fn alloc<T: DeviceElem>(&self, len: usize) -> Result<DeviceBuffer<T>, CudaError> {
        let inner = self.stream.alloc_zeros::<T>(len).map_err(driver("cuMemAlloc"))?;
        Ok(DeviceBuffer { inner })
    }

    /// A copy of `host` on the device.
    pub fn upload<T: DeviceElem>(&self, host: &[T]) -> Result<DeviceBuffer<T>, CudaError> {
        let inner = self.stream.clone_htod(host).map_err(driver("cuMemcpyHtoD"))?;
        Ok(DeviceBuffer { inner })
    }

    /// Copies `host` into `dst` (same length).
    pub fn upload_into<T: DeviceElem>(&self, host: &[T], dst: &mut DeviceBuffer<T>) -> Result<(), CudaError> {
        expect_len("upload", dst.len(), host.len())?;
        self.stream.memcpy_htod(host, &mut dst.inner).map_err(driver("cuMemcpyHtoD"))
    }

    /// Queues a copy of the page-locked `src` into `dst` (same length) on the stream: the host
    /// does not wait (a pageable upload waits for the stream), and writing `src` again through
    /// [`HostBuffer::as_mut_slice`] waits for this copy.
    pub fn upload_pinned<T: DeviceElem>(&self, src: &HostBuffer<T>, dst: &mut DeviceBuffer<T>) -> Result<(), CudaError> {
        expect_len("upload", dst.len(), src.len())?;
        self.stream.memcpy_htod(&src.inner, &mut dst.inner).map_err(driver("cuMemcpyHtoDAsync"))
    }

    /// `len` zeroed elements of page-locked host memory.
    pub fn alloc_host<T: DeviceElem>(&self, len: usize) -> Result<HostBuffer<T>, CudaError> {
        // SAFETY: the memory is written (zeroed) before anything reads it; flags 0: cached host
        // memory, not write-combined (the host reads it).
        let mut inner = unsafe { self.ctx.alloc_pinned_with_flags::<T>(len, 0) }.map_err(driver("cuMemHostAlloc"))?;
        // SAFETY: `len` elements of T, which is valid as zero bits (DeviceElem).
        unsafe { std::ptr::write_bytes(inner.as_mut_ptr().map_err(driver("cuEventSynchronize"))?, 0, len) };
        Ok(HostBuffer { inner })
    }

    /// Waits for the stream and copies `src` into the page-locked `dst` (same length); returns
    /// the copy.
    pub fn download_pinned<'h, T: DeviceElem>(&self, src: &DeviceBuffer<T>, dst: &'h mut HostBuffer<T>) -> Result<&'h [T], CudaError> {
        self.download_pinned_queued(src, dst)?;
        self.synchronize()?;
        dst.as_slice()
    }

    /// Queues a copy of `src` into the page-locked `dst` (same length) on the stream, without
    /// waiting: several downloads then share one [`CudaBackend::synchronize`], after which
    /// [`HostBuffer::as_slice`] reads the copy.
    pub fn download_pinned_queued<T: DeviceElem>(&self, src: &DeviceBuffer<T>, dst: &mut HostBuffer<T>) -> Result<(), CudaError> {
        expect_len("download", dst.len(), src.len())?;
        self.stream.memcpy_dtoh(&src.inner, &mut dst.inner).map_err(driver("cuMemcpyDtoHAsync"))
    }

    /// Waits for the stream and copies `src` to the host.
    pub fn download<T: DeviceElem>(&self, src: &DeviceBuffer<T>) -> Result<Vec<T>, CudaError> {
        let mut host = vec![T::default(); src.len()];
        self.stream.memcpy_dtoh(&src.inner, &mut host).map_err(driver("cuMemcpyDtoH"))?;
        self.synchronize()?;
        Ok(host)
    }

    /// Waits for every launch so far; reports the first error a kernel raised.
    pub fn synchronize(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver("cuStreamSynchronize"))?;
        self.ctx.check_err().map_err(driver("an earlier asynchronous call"))
    }

    /// Device-to-device copy of `src` into `dst` (same length).
    pub fn copy<T: DeviceElem>(&self, src: &DeviceBuffer<T>, dst: &mut DeviceBuffer<T>) -> Result<(), CudaError> {
        expect_len("copy", dst.len(), src.len())?;
        self.stream.memcpy_dtod(&src.inner, &mut dst.inner).map_err(driver("cuMemcpyDtoD"))
    }

    /// Milliseconds of device time the work that `f` launches takes, measured with CUDA events
    /// around it on the stream.
    pub fn time_ms(&self, f: impl FnOnce() -> Result<(), CudaError>) -> Result<f32, CudaError> {
        use cudarc::driver::sys::CUevent_flags::CU_EVENT_DEFAULT;
        let start = self.stream.record_event(Some(CU_EVENT_DEFAULT)).map_err(driver("cuEventRecord"))?;
        f()?;
        let end = self.stream.record_event(Some(CU_EVENT_DEFAULT)).map_err(driver("cuEventRecord"))?;
        end.synchronize().map_err(driver("cuEventSynchronize"))?;
        start.elapsed_ms(&end).map_err(driver("cuEventElapsedTime"))
    }

    /// Uploads a weight matrix whose type has a matrix-vector kernel or a dequantizer
    /// ([`DEQUANT_TYPES`]: embeddings may be F16 or F32).
    pub fn upload_matrix(&self, w: &QMatrix<'_>) -> Result<DeviceMatrix, CudaError> {
        if !MATVEC_TYPES.contains(&w.ty) && !DEQUANT_TYPES.contains(&w.ty) {
            return Err(CudaError::UnsupportedType(w.ty));
        }
        let expected = w.ty.tensor_nbytes(&[w.cols as u64, w.rows as u64]).ok();
        if expected != Some(w.data.len() as u64) {
            return Err(CudaError::Invalid(format!(
                "{} matrix {}x{}: {} bytes of data, expected {expected:?}",
                w.ty,
                w.cols,
                w.rows,
                w.data.len()
            )));
        }
        as_i32("matrix columns", w.cols)?;
        as_u32("matrix rows", w.rows)?;
        let data = if w.ty == GgmlType::Q6_K { self.upload(&pad_q6_k(w.data))? } else { self.upload(w.data)? };
        Ok(DeviceMatrix { ty: w.ty, cols: w.cols, rows: w.rows, data })
    }

    /// RMSNorm of each row of `x` (rows of `w.len()` elements) times `w`, into `out`.
    pub fn rms_norm(&self, x: &DeviceBuffer<f32>, w: &DeviceBuffer<f32>, eps: f32, out: &mut DeviceBuffer<f32>) -> Result<(), CudaError> {
        let launch = rms_norm_launch(x.len(), w.len())?;
        expect_len("rms_norm output", x.len(), out.len())?;
        let Some((grid, n32)) = launch else { return Ok(()) };
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        b.arg(&x.inner).arg(&w.inner).arg(&mut out.inner).arg(&n32).arg(&eps);
        // SAFETY: rms_norm_f32(x, w, out, n, eps) reads rows * n floats of x, n of w, and writes
        // rows * n of out; the lengths were checked above.
        unsafe { b.launch(grid) }.map_err(driver("launch rms_norm_f32"))?;
        Ok(())
    }

    /// RoPE in place on `x` (`[pos.len()][n_head][head_dim]`), token `t` rotated to `pos[t]`.
    pub fn rope(&self, x: &mut DeviceBuffer<f32>, pos: &DeviceBuffer<i32>, p: &RopeParams) -> Result<(), CudaError> {
        if p.n_rot % 2 != 0 || p.n_rot > p.head_dim || p.n_rot == 0 {
            return Err(CudaError::Invalid(format!("rope: n_rot {} must be even, positive and at most head_dim {}", p.n_rot, p.head_dim)));
        }
        expect_len("rope input", pos.len() * p.n_head * p.head_dim, x.len())?;
        let pairs = pos.len() * p.n_head * (p.n_rot / 2);
        if pairs == 0 {
            return Ok(());
        }
        let n_tokens = as_i32("rope tokens", pos.len())?;
        let n_head = as_i32("n_head", p.n_head)?;
        let head_dim = as_i32("head_dim", p.head_dim)?;
        let n_rot = as_i32("n_rot", p.n_rot)?;
        let mode: i32 = match p.kind {
            RopeKind::Norm => 0,
            RopeKind::Neox => 1,
        };
        let mut b = self.stream.launch_builder(&self.k.rope);
        b.arg(&mut x.inner).arg(&pos.inner).arg(&n_tokens).arg(&n_head).arg(&head_dim).arg(&n_rot);
        let step = p.step();
        b.arg(&step).arg(&p.freq_scale).arg(&mode);
        // SAFETY: rope_f32 touches x[t][h][0..n_rot] for t < n_tokens, h < n_head, reads pos[t];
        // the lengths were checked above, and threads past the last pair return.
        unsafe { b.launch(cfg((as_u32("rope blocks", pairs.div_ceil(256))?, 1), 256)) }.map_err(driver("launch rope_f32"))?;
        Ok(())
    }

    /// `gate = act(gate) * up`, element-wise.
    pub fn gated_act(&self, gate: &mut DeviceBuffer<f32>, up: &DeviceBuffer<f32>, act: GatedAct) -> Result<(), CudaError> {
        expect_len("gated activation", gate.len(), up.len())?;
        let n = gate.len() as i64;
        if n == 0 {
            return Ok(());
        }
        let f = match act {
            GatedAct::GeluTanh => &self.k.gelu_mul,
            GatedAct::Silu => &self.k.silu_mul,
        };
        let blocks = (gate.len().div_ceil(256)).min(65_536) as u32;
        let mut b = self.stream.launch_builder(f);
        b.arg(&mut gate.inner).arg(&up.inner).arg(&n);
        // SAFETY: a grid-stride loop over i < n of gate and up, both n long.
        unsafe { b.launch(cfg((blocks, 1), 256)) }.map_err(driver("launch gated activation"))?;
        Ok(())
    }

    fn quantize(&self, f: &CudaFunction, block_bytes: usize, x: &DeviceBuffer<f32>, out: &mut DeviceBuffer<u8>) -> Result<(), CudaError> {
        if x.len() % 32 != 0 {
            return Err(CudaError::Invalid(format!("quantize: {} activations are not whole blocks of 32", x.len())));
        }
        let n_blocks = x.len() / 32;
        expect_len("quantized activations (bytes)", n_blocks * block_bytes, out.len())?;
        if n_blocks == 0 {
            return Ok(());
        }
        let nb = n_blocks as i64;
        let mut b = self.launch_pdl(f);
        b.arg(&x.inner).arg(&mut out.inner).arg(&nb);
        // SAFETY: one warp per block b < n_blocks reads x[32b..32b+32] and writes block b of out;
        // the lengths were checked above.
        unsafe { b.launch(cfg((as_u32("quantize blocks", n_blocks.div_ceil(8))?, 1), 256)) }.map_err(driver("launch quantize"))?;
        Ok(())
    }

    /// Quantizes `x` (a multiple of 32 long) to Q8_0 blocks, as ggml's reference quantizer does.
    pub fn quantize_q8_0(&self, x: &DeviceBuffer<f32>, out: &mut DeviceBuffer<u8>) -> Result<(), CudaError> {
        self.quantize(&self.k.quantize_q8_0, Q8_0_BYTES, x, out)
    }

    /// Quantizes `x` (a multiple of 32 long) to Q8_1 blocks, the activation format of
    /// [`CudaBackend::matvec`].
    pub fn quantize_q8_1(&self, x: &DeviceBuffer<f32>, out: &mut DeviceBuffer<u8>) -> Result<(), CudaError> {
        self.quantize(&self.k.quantize_q8_1, Q8_1_BYTES, x, out)
    }

    /// `out[r] = sum_c W[r][c] * x[c]`, with `x` given as `w.cols / 32` Q8_1 blocks
    /// (from [`CudaBackend::quantize_q8_1`]), with the default kernel.
    pub fn matvec(&self, w: &DeviceMatrix, x_q8_1: &DeviceBuffer<u8>, out: &mut DeviceBuffer<f32>) -> Result<(), CudaError> {
        self.matvec_with(DEFAULT_MATVEC, w, x_q8_1, out)
    }

    /// [`CudaBackend::matvec`] with a chosen kernel version (tests and benchmarks run both).
    pub fn matvec_with(
        &self,
        kernel: MatvecKernel,
        w: &DeviceMatrix,
        x_q8_1: &DeviceBuffer<u8>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        self.matvec_flagged(kernel, w, x_q8_1, out, None)
    }

    /// [`CudaBackend::matvec`] that also sets `nonfinite[0]` to 1 when some output is NaN or
    /// infinite, and otherwise leaves it as it was (the caller clears it after reading it set):
    /// the decode graph's logits, checked on the device instead of scanned on the host.
    pub fn matvec_checked(
        &self,
        w: &DeviceMatrix,
        x_q8_1: &DeviceBuffer<u8>,
        out: &mut DeviceBuffer<f32>,
        nonfinite: &mut DeviceBuffer<u32>,
    ) -> Result<(), CudaError> {
        expect_len("matvec non-finite flag", 1, nonfinite.len())?;
        self.matvec_flagged(DEFAULT_MATVEC, w, x_q8_1, out, Some(&mut nonfinite.inner))
    }

    /// [`CudaBackend::matvec_with`], with the non-finite flag of [`CudaBackend::matvec_checked`]
    /// when given.
    fn matvec_flagged(
        &self,
        kernel: MatvecKernel,
        w: &DeviceMatrix,
        x_q8_1: &DeviceBuffer<u8>,
        out: &mut DeviceBuffer<f32>,
        nonfinite: Option<&mut CudaSlice<u32>>,
    ) -> Result<(), CudaError> {
        expect_len("matvec activations (Q8_1 bytes)", w.cols / 32 * Q8_1_BYTES, x_q8_1.len())?;
        expect_len("matvec output", w.rows, out.len())?;
        if w.rows == 0 {
            return Ok(());
        }
        let kernel = match kernel {
            MatvecKernel::Auto => self.auto_matvec(w.ty, w.rows, w.cols),
            k => k,
        };
        if let MatvecKernel::WarpsPerRow(n) = kernel {
            if ![1, 2, 4].contains(&n) {
                return Err(CudaError::Invalid(format!("matvec: {n} warps per row (1, 2 or 4)")));
            }
        }
        self.launch_matvec(kernel, w, &x_q8_1.inner.slice(..), &mut out.inner.slice_mut(..), nonfinite)
    }

    /// Launches a matrix-vector kernel (not `Auto`) on views of checked lengths; `nonfinite`
    /// (one element; version 2 kernels only) is set to 1 when some output is not finite.
    fn launch_matvec(
        &self,
        kernel: MatvecKernel,
        w: &DeviceMatrix,
        x_q8_1: &cudarc::driver::CudaView<'_, u8>,
        out: &mut cudarc::driver::CudaViewMut<'_, f32>,
        nonfinite: Option<&mut CudaSlice<u32>>,
    ) -> Result<(), CudaError> {
        expect_len("matvec activations (Q8_1 bytes)", w.cols / 32 * Q8_1_BYTES, x_q8_1.len())?;
        expect_len("matvec output", w.rows, out.len())?;
        let ti = MATVEC_TYPES.iter().position(|&t| t == w.ty).ok_or(CudaError::UnsupportedType(w.ty))?;
        let cols = as_i32("matrix columns", w.cols)?;
        let rows = as_i32("matrix rows", w.rows)?;
        let (f, grid, threads) = match kernel {
            MatvecKernel::WarpsPerRow(n) => {
                let f = &self.k.matvec2[ti][n.trailing_zeros() as usize];
                (f, as_u32("matrix rows", w.rows.div_ceil(MV2_WARPS / n as usize))?, 32 * MV2_WARPS as u32)
            }
            _ if nonfinite.is_some() => return Err(CudaError::Invalid("matvec: the non-finite flag needs a version 2 kernel".into())),
            _ => (&self.k.matvec1[ti], as_u32("matrix rows", w.rows)?, MV_THREADS),
        };
        let mut b = self.launch_pdl(f);
        b.arg(&w.data.inner).arg(x_q8_1).arg(out).arg(&cols);
        let no_flag: u64 = 0;
        if let MatvecKernel::WarpsPerRow(_) = kernel {
            b.arg(&rows);
            match nonfinite {
                Some(flag) => b.arg(flag),
                None => b.arg(&no_flag),
            };
        }
        // SAFETY: each row r < rows is read by one block (version 1) or wpr warps (version 2)
        // from w (checked at upload to be rows x cols of its type) with the cols / 32 activation
        // blocks, and written to out[r]; warps past the last row skip the reads; the lengths were
        // checked above; the flag, when given, is one u32 (checked by the caller).
        unsafe { b.launch(cfg((grid, 1), threads)) }.map_err(driver("launch matvec"))?;
        Ok(())
    }

    /// [`CudaBackend::quantize_q8_1`] of `x` into `scratch`, then [`CudaBackend::matvec`].
    pub fn matvec_f32(
        &self,
        w: &DeviceMatrix,
        x: &DeviceBuffer<f32>,
        scratch: &mut DeviceBuffer<u8>,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        expect_len("matvec input", w.cols, x.len())?;
        self.quantize_q8_1(x, scratch)?;
        self.matvec(w, scratch, out)
    }


    /// Attention of one query (`q`: `[n_head][head_dim]`, at position `qpos`) over the cache
    /// slots (`k`: `[slot][n_head_kv][head_dim]`, `v`: `[slot][n_head_kv][head_dim_v]`, f16,
    /// positions `kpos`, negative when empty), into `out` (`[n_head][head_dim_v]`) and `lse`
    /// (`[n_head]`: the log-sum-exp of the scaled, masked scores; `-inf` and a zero output for a
    /// head that sees no slot). Same contract as `ggml_kernels::attention::attention` with one
    /// query; head dimensions up to [`ATT_MAX_HEAD_DIM`]. Allocates its partials and uploads the
    /// position: [`CudaBackend::attention_decode_dev`] is the capturable form.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode(
        &self,
        s: &AttnShape,
        q: &DeviceBuffer<f32>,
        qpos: i64,
        k: &DeviceBuffer<f16>,
        v: &DeviceBuffer<f16>,
        kpos: &DeviceBuffer<i32>,
        mask: AttnMask,
        out: &mut DeviceBuffer<f32>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        check_attn_shape(s)?;
        let qpos = i32::try_from(qpos).map_err(|_| CudaError::Invalid(format!("attention: position {qpos} exceeds 32 bits")))?;
        let n_slots = kpos.len();
        let qpos_dev = self.upload(&[qpos])?;
        let mut part = self.alloc::<f32>(Self::attention_partials(s, n_slots))?;
        self.attention_decode_launch(s, q, &qpos_dev, None, n_slots, k, v, kpos, mask, false, &mut part, out, lse, None)
    }

    /// [`CudaBackend::attention_decode`] with the query position read from `qpos` on the device
    /// and the partials in `part` (at least [`CudaBackend::attention_partials`] floats), so that
    /// the launches allocate nothing and can be captured into a CUDA graph. A mask with a `span`
    /// runs only where it reduces to `window` and `sink` at every position.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode_dev(
        &self,
        s: &AttnShape,
        q: &DeviceBuffer<f32>,
        qpos: &DeviceBuffer<i32>,
        k: &DeviceBuffer<f16>,
        v: &DeviceBuffer<f16>,
        kpos: &DeviceBuffer<i32>,
        mask: AttnMask,
        part: &mut DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
        lse: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        expect_len("attention query position", 1, qpos.len())?;
        self.attention_decode_launch(s, q, qpos, None, kpos.len(), k, v, kpos, mask, false, part, out, lse, None)
    }

    /// Floats of the partials of one decode attention over `n_slots` slots (non-decreasing in
    /// `n_slots`).
    pub fn attention_partials(s: &AttnShape, n_slots: usize) -> usize {
        Self::attention_partials_batch(s, n_slots, 1)
    }

    /// Floats of the partials of [`CudaBackend::attention_decode_batch`] for `n` tokens over
    /// `n_slots` slots each (non-decreasing in `n_slots`).
    pub fn attention_partials_batch(s: &AttnShape, n_slots: usize, n: usize) -> usize {
        // The most over every token count up to n: fewer tokens take more splits each, so a
        // buffer sized for n sequences serves a call over some of them.
        (1..=n.max(1)).map(|t| decode_partials(s, n_slots, t)).max().unwrap_or(0)
    }

    /// Per decode attention kernel (query heads per block): registers per thread, local memory
    /// bytes per thread (spills) and resident blocks per multiprocessor.
    pub fn attention_decode_occupancy(&self) -> Result<Vec<(usize, i32, i32, u32)>, CudaError> {
        let mut r = Vec::with_capacity(AD_GROUPS.len());
        for (g, f) in AD_GROUPS.iter().zip(&self.k.attn_decode) {
            let regs = f.num_regs().map_err(driver("cuFuncGetAttribute"))?;
            let local = f.local_size_bytes().map_err(driver("cuFuncGetAttribute"))?;
            let blocks = f.occupancy_max_active_blocks_per_multiprocessor(AD_TILE as u32, 0, None).map_err(driver("cuOccupancyMaxActiveBlocksPerMultiprocessor"))?;
            r.push((*g, regs, local, blocks));
        }
        Ok(r)
    }

    /// Decode attention of `n = qpos.len()` tokens, each of its own sequence (or several of one):
    /// token `t` (`q`: `[n][n_head][head_dim]`, at position `qpos[t]`) attends to the `n_slots`
    /// cache slots `base[t] .. base[t] + n_slots` (`k`: `[slot][n_head_kv][head_dim]`, `v`:
    /// `[slot][n_head_kv][head_dim_v]`, f16, positions `kpos`, negative when empty; the caches
    /// hold `kpos.len()` slots, e.g. `n_seq * n_slots`) with `mask`, into `out`
    /// (`[n][n_head][head_dim_v]`) and `lse` (`[n][n_head]`), as
    /// [`CudaBackend::attention_decode`] does for each token. Positions and bases are read on the
    /// device and the partials go to `part` (at least [`CudaBackend::attention_partials_batch`]
    /// floats): nothing is allocated or synchronized, so the launches can be captured into a
    /// CUDA graph. A token whose slots `base[t] .. base[t] + n_slots` do not lie within the
    /// caches sees no slot (zero output, `-inf` log-sum-exp). A mask with a `span` runs only where
    /// it reduces to `window` and `sink` at every position. `positional` promises that slot `i`
    /// of a run never holds a position below `i` (true of the engine's caches, whose layer
    /// layouts put position `p` at `kv_cache::slot_of(p) <= p`); the kernel then skips the
    /// splits that start past a token's position without reading them (same results). With
    /// `outq` (value head dimension a multiple of 32), the output is also written quantized to
    /// Q8_1 (`[n][n_head * head_dim_v / 32]` blocks, the bytes of
    /// [`CudaBackend::quantize_q8_1`] on `out`), for the output projection.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_decode_batch(
        &self,
        s: &AttnShape,
        q: &DeviceBuffer<f32>,
        qpos: &DeviceBuffer<i32>,
        base: &DeviceBuffer<i32>,
        n_slots: usize,
        k: &DeviceBuffer<f16>,
        v: &DeviceBuffer<f16>,
        kpos: &DeviceBuffer<i32>,
        mask: AttnMask,
        positional: bool,
        part: &mut DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
        lse: &mut DeviceBuffer<f32>,
        outq: Option<&mut DeviceBuffer<u8>>,
    ) -> Result<(), CudaError> {
        expect_len("attention sequence bases", qpos.len(), base.len())?;
        self.attention_decode_launch(s, q, qpos, Some(base), n_slots, k, v, kpos, mask, positional, part, out, lse, outq)
    }

    /// Checks the shapes and launches decode attention (`attn_decode_g*` then `attn_decode_merge`);
    /// `base` `None`: every token at slot 0.
    #[allow(clippy::too_many_arguments)]
    fn attention_decode_launch(
        &self,
        s: &AttnShape,
        q: &DeviceBuffer<f32>,
        qpos: &DeviceBuffer<i32>,
        base: Option<&DeviceBuffer<i32>>,
        n_slots: usize,
        k: &DeviceBuffer<f16>,
        v: &DeviceBuffer<f16>,
        kpos: &DeviceBuffer<i32>,
        mask: AttnMask,
        positional: bool,
        part: &mut DeviceBuffer<f32>,
        out: &mut DeviceBuffer<f32>,
        lse: &mut DeviceBuffer<f32>,
        outq: Option<&mut DeviceBuffer<u8>>,
    ) -> Result<(), CudaError> {
        check_attn_shape(s)?;
        let n = qpos.len();
        if let Some(oq) = &outq {
            if s.head_dim_v % 32 != 0 {
                return Err(CudaError::Invalid(format!("attention: a Q8_1 output needs a value head dimension divisible by 32, not {}", s.head_dim_v)));
            }
            expect_len("attention output (Q8_1 bytes)", n * s.n_head * s.head_dim_v / 32 * Q8_1_BYTES, oq.len())?;
        }
        let total = kpos.len();
        expect_len("attention queries", n * s.n_head * s.head_dim, q.len())?;
        if n_slots > total {
            return Err(CudaError::Invalid(format!("attention: {n_slots} slots per sequence in caches of {total} slots")));
        }
        if k.len() < total * s.n_head_kv * s.head_dim {
            return Err(CudaError::Shape { what: "attention keys (at least)", expected: total * s.n_head_kv * s.head_dim, got: k.len() });
        }
        if v.len() < total * s.n_head_kv * s.head_dim_v {
            return Err(CudaError::Shape { what: "attention values (at least)", expected: total * s.n_head_kv * s.head_dim_v, got: v.len() });
        }
        expect_len("attention output", n * s.n_head * s.head_dim_v, out.len())?;
        expect_len("attention lse", n * s.n_head, lse.len())?;
        // (What this call needs: the allocation bound above also covers fewer tokens.)
        let n_part = decode_partials(s, n_slots, n);
        if part.len() < n_part {
            return Err(CudaError::Shape { what: "attention partials (at least)", expected: n_part, got: part.len() });
        }
        if n == 0 || s.n_head == 0 {
            return Ok(());
        }
        if n > 65_535 {
            return Err(CudaError::Invalid(format!("attention: {n} tokens in one decode call (at most 65,535)")));
        }
        let window: i32 = match mask.window {
            None => -1,
            Some(w) => i32::try_from(w).unwrap_or(i32::MAX),
        };
        let sink = i32::try_from(mask.sink).unwrap_or(i32::MAX);
        let span: i32 = mask.span.map_or(-1, |w| i32::try_from(w).unwrap_or(i32::MAX));
        let (split, n_splits) = decode_split(s, n_slots, n);
        let group = s.n_head / s.n_head_kv;
        let heads = decode_heads_per_block(group);
        // (Head dimensions that are not whole 16-byte pieces take the kernels with the
        // element-wise fallback.)
        let vec = s.head_dim % 8 == 0 && s.head_dim_v % 8 == 0;
        let kernels = if !vec {
            &self.k.attn_decode_any
        } else if split <= self.attn_short_split.load(std::sync::atomic::Ordering::Relaxed) {
            &self.k.attn_decode_short
        } else {
            &self.k.attn_decode
        };
        let f = &kernels[AD_GROUPS.iter().position(|&g| g == heads).unwrap_or(AD_GROUPS.len() - 1)];
        let grid_x = as_u32("attention blocks per token", s.n_head_kv * group.div_ceil(heads))?;
        let (n_slots32, total32, split32) = (as_i32("slots", n_slots)?, as_i32("cache slots", total)?, as_i32("split", split)?);
        let (n_head, n_head_kv) = (as_i32("n_head", s.n_head)?, as_i32("n_head_kv", s.n_head_kv)?);
        let (d, dv, splits) = (s.head_dim as i32, s.head_dim_v as i32, as_i32("splits", n_splits)?);
        let no_base: u64 = 0;
        let positional32 = i32::from(positional);
        let mut b = self.launch_pdl(f);
        b.arg(&q.inner).arg(&k.inner).arg(&v.inner).arg(&kpos.inner).arg(&qpos.inner);
        match base {
            Some(p) => b.arg(&p.inner),
            None => b.arg(&no_base),
        };
        b.arg(&mut part.inner);
        b.arg(&n_slots32).arg(&total32).arg(&n_head).arg(&n_head_kv).arg(&d).arg(&dv).arg(&s.scale).arg(&window).arg(&sink).arg(&span).arg(&split32).arg(&positional32);
        debug_assert!(n_splits <= decode_max_splits(s, n_slots, n));
        let grid = LaunchConfig { grid_dim: (grid_x, as_u32("splits", n_splits)?, n as u32), block_dim: (AD_TILE as u32, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: block (kv head x head chunk, split, token t) reads qpos[t] and base[t] (n of
        // each, checked), the queries of its heads in token t (checked), and the keys, values
        // and positions of slots base[t] + (its split, < n_slots), only when base[t] .. base[t]
        // + n_slots lies within the total slots (tested in the kernel; k and v hold at least the
        // total, checked); it writes the partials of its heads and split for token t (n *
        // n_head * n_splits * (2 + Dv) <= part.len(), checked). Head dimensions are within the
        // kernel's shared arrays (check_attn_shape).
        unsafe { b.launch(grid) }.map_err(driver("launch attn_decode"))?;
        let mut b = self.launch_pdl(&self.k.attn_merge);
        b.arg(&part.inner).arg(&mut out.inner).arg(&mut lse.inner).arg(&n_head).arg(&splits).arg(&dv);
        match outq {
            Some(oq) => b.arg(&mut oq.inner),
            None => b.arg(&no_base),
        };
        let grid = LaunchConfig { grid_dim: (as_u32("n_head", s.n_head)?, n as u32, 1), block_dim: (AD_MERGE_THREADS, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: block (h, t) reads the n_splits (<= 2 * AD_WANT_SPLITS_MAX = AD_MAX_SPLITS)
        // partials of head h of token t and writes out[t][h][0..Dv] and lse[t][h], and when
        // given the Dv / 32 Q8_1 blocks of that row of outq (lengths checked).
        unsafe { b.launch(grid) }.map_err(driver("launch attn_decode_merge"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q6_k_device_blocks_are_the_file_blocks_padded_as_the_kernels_read_them() {
        let common = include_str!("../kernels/common.cuh");
        assert!(common.contains(&format!("#define Q6K_DEV_TS {Q6_K_DEVICE_BYTES}")), "the kernels' Q6_K stride differs from the upload's");
        assert_eq!(Q6_K_DEVICE_BYTES % 4, 0);
        let file: Vec<u8> = (0..3 * Q6_K_BYTES).map(|i| (i % 251) as u8 + 1).collect();
        let dev = pad_q6_k(&file);
        assert_eq!(dev.len(), 3 * Q6_K_DEVICE_BYTES);
        for (b, block) in file.chunks_exact(Q6_K_BYTES).enumerate() {
            let d = &dev[b * Q6_K_DEVICE_BYTES..(b + 1) * Q6_K_DEVICE_BYTES];
            assert_eq!(&d[..Q6_K_BYTES], block);
            assert!(d[Q6_K_BYTES..].iter().all(|&x| x == 0));
        }
    }
}
