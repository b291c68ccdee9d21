// The gated FFN's middle, element-wise and in place: gate = act(gate) * up.
// CPU reference: ggml_kernels::ops::{gated_act, gelu_tanh, silu}.

__device__ __forceinline__ float gelu_tanh(float x) {
    const float SQRT_2_OVER_PI = 0.7978846f;
    return 0.5f * x * (1.0f + tanhf(SQRT_2_OVER_PI * x * (1.0f + 0.044715f * x * x)));
}

__device__ __forceinline__ float silu(float x) {
    return x / (1.0f + expf(-x));
}

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
