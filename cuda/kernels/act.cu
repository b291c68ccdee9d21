// The gated FFN's middle, element-wise and in place: gate = act(gate) * up.
// CPU reference: ggml_kernels::ops::{gated_act, gelu_tanh, silu}.

// (gelu_tanh, silu and gated are in common.cuh: the fused gate/up product applies them too.)

extern "C" __global__ void gelu_tanh_mul_f32(float* gate, const float* __restrict__ up, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        gate[i] = gelu_tanh(gate[i]) * up[i];
    }
}

extern "C" __global__ void silu_mul_f32(float* gate, const float* __restrict__ up, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        gate[i] = silu(gate[i]) * up[i];
    }
}

// Decode, fused: act(gate) * up quantized to Q8_1 blocks (the bytes of gelu_tanh_mul_f32 or
// silu_mul_f32 followed by quantize_q8_1). One warp per block of 32; act 0 = GELU-tanh, 1 = SiLU.
extern "C" __global__ void gated_act_q8_1(const float* __restrict__ gate, const float* __restrict__ up,
                                          block_q8_1* __restrict__ out, long long n_blocks, int act) {
    const long long b = ((long long)blockIdx.x * blockDim.x + threadIdx.x) / WARP_SIZE;
    if (b >= n_blocks) return;  // whole warps leave together
    const int lane = threadIdx.x % WARP_SIZE;
    const long long i = b * 32 + lane;
    quantize_q8_1_warp(gated(act, gate[i], up[i]), out + b);
}
