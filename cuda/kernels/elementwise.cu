// Element-wise ops of the forward pass. CPU reference: ggml_kernels::ops::add_assign.

// Grid-stride: x[i] += y[i] (the residual connection).
extern "C" __global__ void add_f32(float* x, const float* __restrict__ y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] += y[i];
}

// Grid-stride: x[i] += b[i % m] (a bias added to every row of m).
extern "C" __global__ void add_bias_f32(float* x, const float* __restrict__ b, long long n, int m) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        x[i] += b[i % m];
}
