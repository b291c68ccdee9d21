// Activation quantization to ggml's Q8_0 (34-byte blocks: f16 d, 32 x i8) and Q8_1 (36-byte blocks:
// f16 d, f16 d * sum(q), 32 x i8), computed with the same f32 operations in the same order as the
// CPU reference quantizers (ggml_kernels::quants::{q8_0, q8_1}::quantize_row), so the bytes match:
// d = max|x| / 127, id = 1 / d (0 for an all-zero block), q = round(x * id) half away from zero.

// One warp per block of 32 elements, one element per lane; n_blocks = n / 32.
__device__ __forceinline__ void q8_block(const float* __restrict__ x, long long b, float& d, int& q) {
    q = q8_warp_quant(x[b * 32 + threadIdx.x % WARP_SIZE], d);
}

extern "C" __global__ void quantize_q8_0(const float* __restrict__ x, u8* __restrict__ out, long long n_blocks) {
    pdl_enter();
    const long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;
    if (b >= n_blocks) return;  // whole warps leave together
    const int lane = threadIdx.x % WARP_SIZE;
    float d;
    int q;
    q8_block(x, b, d, q);
    u8* blk = out + b * 34;
    blk[2 + lane] = (u8)(i8)q;
    if (lane == 0) *(u16*)blk = f2h(d);
}

extern "C" __global__ void quantize_q8_1(const float* __restrict__ x, block_q8_1* __restrict__ out, long long n_blocks) {
    pdl_enter();
    const long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;
    if (b >= n_blocks) return;
    quantize_q8_1_warp(x[b * 32 + threadIdx.x % WARP_SIZE], out + b);
}
