// RMSNorm of rows: out = x / sqrt(mean(x^2) + eps) * w.
// CPU reference: ggml_kernels::ops::rms_norm (which accumulates the squares in f64; here each
// thread sums in f32 and the block reduces in f32, well inside the parity bound).

// One block per row of n elements; any block size that is a multiple of 32. out may equal x.
extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* out, int n, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const float* xr = x + row * n;
    float* yr = out + row * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        const float v = xr[i];
        ss += v * v;
    }
    ss = block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        yr[i] = xr[i] * scale * w[i];
    }
}
