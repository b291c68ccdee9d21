// Weights to floats: embedding rows by token id (get_rows, f32 out, scaled) and whole matrices to
// f16 for the tensor-core GEMM of prefill (dequant_f16); and f32 activations to f16.
// CPU reference: ggml_kernels::quants::dequantize (the layouts of ggml_kernels::quants::*).
//
// Each format gives the value of element e (< QK) of a block at b (TS bytes); a row of `cols`
// elements is cols / QK blocks. Blocks of Q8_0, Q4_0, Q5_0 and Q6_K are only 2-byte aligned, so
// they are read bytewise or as u16.

__device__ __forceinline__ float ld_h(const u8* p) { return h2f(*(const u16*)p); }

struct dq_f32 {
    static constexpr int QK = 1, TS = 4;
    static __device__ __forceinline__ float get(const u8* b, int) { return *(const float*)b; }
};
struct dq_f16 {
    static constexpr int QK = 1, TS = 2;
    static __device__ __forceinline__ float get(const u8* b, int) { return ld_h(b); }
};
// Q8_0: f16 d, 32 x i8; x = q * d.
struct dq_q8_0 {
    static constexpr int QK = 32, TS = 34;
    static __device__ __forceinline__ float get(const u8* b, int e) { return ld_h(b) * (float)(i8)b[2 + e]; }
};
// Q4_0: f16 d, 16 bytes (element j in the low nibble of byte j, element j + 16 in the high);
// x = (q - 8) * d.
struct dq_q4_0 {
    static constexpr int QK = 32, TS = 18;
    static __device__ __forceinline__ float get(const u8* b, int e) {
        const int q = e < 16 ? (b[2 + e] & 15) : (b[2 + e - 16] >> 4);
        return ld_h(b) * (float)(q - 8);
    }
};
// Q5_0: f16 d, 32 fifth bits (bit e for element e), nibbles as Q4_0; x = (q - 16) * d.
struct dq_q5_0 {
    static constexpr int QK = 32, TS = 22;
    static __device__ __forceinline__ float get(const u8* b, int e) {
        const int lo = e < 16 ? (b[6 + e] & 15) : (b[6 + e - 16] >> 4);
        const int hi = (b[2 + e / 8] >> (e % 8)) & 1;
        return ld_h(b) * (float)((lo | (hi << 4)) - 16);
    }
};
// Q4_K: f16 d, f16 dmin, 12 bytes of 6-bit scales and mins, 128 bytes of nibbles; element
// 64c + 32k + l is nibble k of qs[32c + l], in group 2c + k; x = d * sc * q - dmin * m.
struct dq_q4_k {
    static constexpr int QK = 256, TS = 144;
    static __device__ __forceinline__ float get(const u8* b, int e) {
        const int c = e / 64, k = (e / 32) & 1, l = e & 31;
        const int q = (b[16 + 32 * c + l] >> (4 * k)) & 15;
        const int j = 2 * c + k;
        const u8* s = b + 4;
        int sc, m;
        if (j < 4) {
            sc = s[j] & 63;
            m = s[j + 4] & 63;
        } else {
            sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
            m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
        }
        return ld_h(b) * (float)sc * (float)q - ld_h(b + 2) * (float)m;
    }
};
// Q6_K: ql[128], qh[64], i8 scales[16], f16 d; element 128h + 32s + l: low nibble s/2 of
// ql[64h + 32(s%2) + l], top bits 2s of qh[32h + l], scale 8h + 2s + l/16; x = d * sc * (q - 32).
struct dq_q6_k {
    static constexpr int QK = 256, TS = Q6K_DEV_TS;
    static __device__ __forceinline__ float get(const u8* b, int e) {
        const int h = e / 128, s = (e / 32) & 3, l = e & 31;
        const int lo = (b[64 * h + 32 * (s & 1) + l] >> (4 * (s >> 1))) & 15;
        const int hi = (b[128 + 32 * h + l] >> (2 * s)) & 3;
        const int sc = (i8)b[192 + 8 * h + 2 * s + l / 16];
        return ld_h(b + 208) * (float)sc * (float)((lo | (hi << 4)) - 32);
    }
};

// Launch: grid (n tokens), any block size. out[t][c] = W[ids[t]][c] * scale.
template <typename T>
__device__ __forceinline__ void get_rows(const u8* __restrict__ w, const int* __restrict__ ids, float* __restrict__ out,
                                         int cols, float scale) {
    const long long row_bytes = (long long)(cols / T::QK) * T::TS;
    const u8* row = w + (long long)ids[blockIdx.x] * row_bytes;
    float* o = out + (long long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = T::get(row + (c / T::QK) * T::TS, c % T::QK) * scale;
}

// Launch: grid (rows), any block size. out[r][c] = W[r][c] as f16.
template <typename T>
__device__ __forceinline__ void dequant_f16(const u8* __restrict__ w, u16* __restrict__ out, int cols) {
    const long long row_bytes = (long long)(cols / T::QK) * T::TS;
    const u8* row = w + (long long)blockIdx.x * row_bytes;
    u16* o = out + (long long)blockIdx.x * cols;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) o[c] = f2h(T::get(row + (c / T::QK) * T::TS, c % T::QK));
}

#define DEQUANT_KERNELS(name, T)                                                                              \
    extern "C" __global__ void get_rows_##name(const u8* __restrict__ w, const int* __restrict__ ids,          \
                                               float* __restrict__ out, int cols, float scale) {               \
        get_rows<T>(w, ids, out, cols, scale);                                                                \
    }                                                                                                         \
    extern "C" __global__ void dequant_f16_##name(const u8* __restrict__ w, u16* __restrict__ out, int cols) { \
        dequant_f16<T>(w, out, cols);                                                                         \
    }

DEQUANT_KERNELS(f32, dq_f32)
DEQUANT_KERNELS(f16, dq_f16)
DEQUANT_KERNELS(q8_0, dq_q8_0)
DEQUANT_KERNELS(q4_0, dq_q4_0)
DEQUANT_KERNELS(q5_0, dq_q5_0)
DEQUANT_KERNELS(q4_k, dq_q4_k)
DEQUANT_KERNELS(q6_k, dq_q6_k)

// Grid-stride: y[i] = (f16) x[i].
extern "C" __global__ void f32_to_f16(const float* __restrict__ x, u16* __restrict__ y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = f2h(x[i]);
}
