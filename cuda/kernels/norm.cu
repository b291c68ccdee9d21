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

// Decode, fused: optionally x += y (the residual connection, written back to x), then the
// RMSNorm of each row of x times w, quantized to Q8_1 blocks. Computes the same floats as
// add_f32, rms_norm_f32 and quantize_q8_1 in sequence (same expressions, same reduction order
// for the same block size), so the bytes equal theirs. One block per row; n a multiple of 32.
// Thread i takes elements i, i + blockDim.x, ...: the first NORM_CACHED of them stay in registers
// with their weights (loaded before the reduction), so the quantization re-reads nothing; warp w's
// k-th element run is then Q8_1 block w + k * (blockDim.x / 32).
#define NORM_CACHED 8
extern "C" __global__ void add_rms_norm_q8_1(float* x, const float* __restrict__ y, const float* __restrict__ w,
                                             block_q8_1* __restrict__ out, int n, float eps) {
    __shared__ float scratch[32];
    pdl_enter();
    const long long row = blockIdx.x;
    float* xr = x + row * n;
    float vals[NORM_CACHED], ws[NORM_CACHED];
    float ss = 0.0f;
    // Every load of the cached elements first, then the additions and stores: x may alias
    // nothing here, but the compiler cannot know, and a store to x between two loads of it would
    // keep it from issuing them together (one L2 round trip per element instead of one in all).
#pragma unroll
    for (int k = 0; k < NORM_CACHED; ++k) {
        const int i = threadIdx.x + k * blockDim.x;
        vals[k] = i < n ? xr[i] : 0.0f;
        ws[k] = i < n ? w[i] : 0.0f;
    }
    if (y != nullptr) {
        float ys[NORM_CACHED];
#pragma unroll
        for (int k = 0; k < NORM_CACHED; ++k) {
            const int i = threadIdx.x + k * blockDim.x;
            ys[k] = i < n ? y[row * n + i] : 0.0f;
        }
#pragma unroll
        for (int k = 0; k < NORM_CACHED; ++k) {
            const int i = threadIdx.x + k * blockDim.x;
            vals[k] += ys[k];
            if (i < n) xr[i] = vals[k];
        }
    }
#pragma unroll
    for (int k = 0; k < NORM_CACHED; ++k) ss += vals[k] * vals[k];
    for (int i = threadIdx.x + NORM_CACHED * blockDim.x; i < n; i += blockDim.x) {
        float v = xr[i];
        if (y != nullptr) {
            v += y[row * n + i];
            xr[i] = v;
        }
        ss += v * v;
    }
    ss = block_sum(ss, scratch);  // its barriers also make the block's writes to x visible
    const float scale = 1.0f / sqrtf(ss / (float)n + eps);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE, nwarps = blockDim.x / WARP_SIZE;
    block_q8_1* o = out + row * (n / 32);
#pragma unroll
    for (int k = 0; k < NORM_CACHED; ++k) {
        const int b = warp + k * nwarps;
        if (b < n / 32) quantize_q8_1_warp(vals[k] * scale * ws[k], o + b);
    }
    for (int b = warp + NORM_CACHED * nwarps; b < n / 32; b += nwarps) {
        const int i = b * 32 + lane;
        quantize_q8_1_warp(xr[i] * scale * w[i], o + b);
    }
}
