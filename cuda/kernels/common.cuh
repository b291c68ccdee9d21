// Shared helpers, prepended to every kernel file before NVRTC compiles it. No headers are
// included: NVRTC provides the built-in device functions (warp shuffles, math), and the few
// conversions below are written in PTX so that nothing depends on the toolkit's header files.

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;

#define WARP_SIZE 32
#define FULL_MASK 0xffffffffu

__device__ __forceinline__ float neg_inf() { return __int_as_float(0xff800000); }

// IEEE half <-> float (round to nearest even, as half::f16::from_f32 and ggml do).
__device__ __forceinline__ float h2f(u16 h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
}
__device__ __forceinline__ u16 f2h(float f) {
    u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
}

// Four signed byte products summed into c: sum(a.i8[k] * b.i8[k]) + c.
__device__ __forceinline__ int dp4a(int a, int b, int c) {
    int r;
    asm("dp4a.s32.s32 %0, %1, %2, %3;" : "=r"(r) : "r"(a), "r"(b), "r"(c));
    return r;
}

// The i-th 32-bit word at p, where p is only 2-byte aligned (Q4_0, Q5_0, Q8_0, Q6_K blocks).
// Bytes of a Q6_K block on the device: the file's 210 bytes and two of padding (zeros), so that
// every block, and with it the quant words, is 4-byte aligned (CudaBackend::upload_matrix pads).
#define Q6K_DEV_TS 212

__device__ __forceinline__ int load_int_b2(const void* p, int i) {
    const u16* x = (const u16*)p;
    return (int)((u32)x[2 * i] | ((u32)x[2 * i + 1] << 16));
}
// The i-th 32-bit word at p, 4-byte aligned.
__device__ __forceinline__ int load_int_b4(const void* p, int i) {
    return ((const int*)p)[i];
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP_SIZE / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over a block of blockDim.x threads (a multiple of 32, at most 1024); every thread gets the
// result. `scratch` holds 32 floats of shared memory.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const int nwarps = blockDim.x / WARP_SIZE;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < nwarps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

// ggml's Q8_1 block: scale, scale * sum of quants (both f16), 32 quants. 36 bytes, 4-byte aligned.
struct block_q8_1 {
    u16 d;
    u16 s;
    i8 qs[32];
};

// NaN as a float.
__device__ __forceinline__ float nan_f32() { return __int_as_float(0x7fc00000); }

// One Q8_1 block from a warp, lane i giving element i: d = max|x| / 127, q = round(x / d) half
// away from zero (0 for an all-zero block), s = d * sum(q); the same f32 operations in the same
// order as the CPU reference quantizer (ggml_kernels::quants::q8_1::quantize_row), so the bytes
// match. A block holding a NaN gets d = s = NaN and quants 0, as the CPU's activation quantizers
// (q8_0::act_scale_of), so that every product reading it is NaN: the maximum skips a NaN, and
// the block would otherwise be quantized as if the NaN were not there, a model that went wrong
// giving finite logits. Every lane of the warp must call it.
// The scale d of a Q8 block held one element per lane, and the lane's quant: what
// quantize_q8_1_warp and quantize_q8_0 share. Every lane of the warp must call it.
__device__ __forceinline__ int q8_warp_quant(float v, float& d) {
    const float amax = warp_max(fabsf(v));
    const bool nan = __any_sync(FULL_MASK, isnan(v));
    d = nan ? nan_f32() : amax / 127.0f;
    const float id = !nan && d != 0.0f ? 1.0f / d : 0.0f;
    return (int)roundf(v * id);
}

__device__ __forceinline__ void quantize_q8_1_warp(float v, block_q8_1* __restrict__ out) {
    const int lane = threadIdx.x % WARP_SIZE;
    float d;
    const int q = q8_warp_quant(v, d);
    const int sum = warp_sum_int(q);
    out->qs[lane] = (i8)q;
    if (lane == 0) {
        out->d = f2h(d);
        out->s = f2h((float)sum * d);
    }
}

// The activations of gated FFNs (CPU reference: ggml_kernels::ops::{gelu_tanh, silu}).
__device__ __forceinline__ float gelu_tanh(float x) {
    const float SQRT_2_OVER_PI = 0.7978846f;
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * (1.0f + 0.044715f * x * x)));
}

__device__ __forceinline__ float silu(float x) {
    return x / (1.0f + expf(-x));
}

// act 0 = GELU-tanh, 1 = SiLU: act(g) * u.
__device__ __forceinline__ float gated(int act, float g, float u) {
    return (act == 0 ? gelu_tanh(g) : silu(g)) * u;
}

// Programmatic dependent launch (sm_90 and later). A kernel the host launches with the
// programmatic-serialization attribute (CudaBackend's decode launches) may start while the
// kernel before it in the stream is still running; pdl_enter(), called before any memory access, waits until
// that kernel has finished and its writes are visible, then lets the next kernel start early. So
// at most the next kernel's launch overlaps a kernel. A no-op for a launch without the
// attribute, and on older GPUs. (Reading the weights before the wait, to prefetch them into L2,
// cost 4% of decode on an H200 and was dropped: docs/PERFORMANCE.md.)
__device__ __forceinline__ void pdl_enter() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// Publishing values to another block of the same grid (the last-arriving block pattern): the
// writers' stores, then one atomic with release semantics (MEMBAR, no L1 invalidation: a
// __threadfence() is a full fence that also invalidates the multiprocessor's L1, which holds the
// activations every resident block reads); the block that sees the final count then takes an
// acquire fence (invalidating L1 once) before it reads what the others wrote. Release is
// cumulative: stores of other threads of the block ordered before the atomic by a barrier are
// published with it.
__device__ __forceinline__ unsigned int atomic_add_release_gpu(unsigned int* p, unsigned int v) {
    unsigned int old;
    asm volatile("atom.release.gpu.global.add.u32 %0, [%1], %2;" : "=r"(old) : "l"(p), "r"(v) : "memory");
    return old;
}
__device__ __forceinline__ void fence_acquire_gpu() {
    asm volatile("fence.acq_rel.gpu;" ::: "memory");
}

