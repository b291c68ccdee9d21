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
extern "C" __global__ void add_rms_norm_q8_1(float* x, const float* __restrict__ y, const float* __restrict__ w,
                                             block_q8_1* __restrict__ out, int n, float eps) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    float* xr = x + row * n;
    float ss = 0.0f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
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
    for (int b = warp; b < n / 32; b += nwarps) {
        const int i = b * 32 + lane;
        const float v = xr[i] * scale * w[i];
        const float amax = warp_max(fabsf(v));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        const int q = (int)roundf(v * id);
        const int sum = warp_sum_int(q);
        o[b].qs[lane] = (i8)q;
        if (lane == 0) {
            o[b].d = f2h(d);
            o[b].s = f2h((float)sum * d);
        }
    }
}
