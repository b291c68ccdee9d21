// Quantized matrix times vector (decode): dst[r] = sum_c W[r][c] * y[c], where W is a ggml
// weight matrix (rows of blocks, as stored in GGUF) and y is the activation vector quantized to
// Q8_1 blocks of 32 (see quantize.cu). Every product of quants is an integer __dp4a (four i8
// products per instruction); the per-block scales are applied in f32.
//
// One thread block of MV_THREADS threads per row. Each weight type splits a block over TPB threads
// (so consecutive threads read consecutive bytes of a block and a warp reads a contiguous run of
// blocks), and the MV_THREADS / TPB groups of threads stride over the blocks of the row. The
// partial sums are reduced over the warp, then over the warps.
//
// CPU reference: dequantize and f32 dot (ggml_kernels::matmul::matmul_reference); the layouts are
// those of ggml_kernels::quants::{q8_0, q4_0, q5_0, q4_k, q6_k}.

#define MV_THREADS 128

// Sum of the four signed bytes of u.
__device__ __forceinline__ int byte_sum(int u, int acc) { return dp4a(0x01010101, u, acc); }

// Q8_0: 34 bytes (f16 d, 32 x i8); 4 threads per block, 8 quants (2 words) each.
struct mv_q8_0 {
    static constexpr int QK = 32, TS = 34, TPB = 4;
    static __device__ __forceinline__ float dot(const u8* bw, const block_q8_1* y, int t) {
        const u8* qs = bw + 2;
        int sumi = dp4a(load_int_b2(qs, 2 * t), load_int_b4(y->qs, 2 * t), 0);
        sumi = dp4a(load_int_b2(qs, 2 * t + 1), load_int_b4(y->qs, 2 * t + 1), sumi);
        return h2f(*(const u16*)bw) * h2f(y->d) * (float)sumi;
    }
};

// Q4_0: 18 bytes (f16 d, 16 bytes of nibbles: element j low, j + 16 high); x = (q - 8) * d.
// 2 threads per block; thread t takes words 2t, 2t+1: elements 8t..8t+7 and 16+8t..16+8t+7.
struct mv_q4_0 {
    static constexpr int QK = 32, TS = 18, TPB = 2;
    static __device__ __forceinline__ float dot(const u8* bw, const block_q8_1* y, int t) {
        const u8* qs = bw + 2;
        int sumi = 0, sumq = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int j = 2 * t + i;
            const int v = load_int_b2(qs, j);
            const int u0 = load_int_b4(y->qs, j), u1 = load_int_b4(y->qs, j + 4);
            sumi = dp4a(v & 0x0F0F0F0F, u0, sumi);
            sumi = dp4a((v >> 4) & 0x0F0F0F0F, u1, sumi);
            sumq = byte_sum(u0, byte_sum(u1, sumq));
        }
        return h2f(*(const u16*)bw) * h2f(y->d) * (float)(sumi - 8 * sumq);
    }
};

// Q5_0: 22 bytes (f16 d, 4 bytes of fifth bits, 16 bytes of nibbles); x = (q - 16) * d.
struct mv_q5_0 {
    static constexpr int QK = 32, TS = 22, TPB = 2;
    static __device__ __forceinline__ float dot(const u8* bw, const block_q8_1* y, int t) {
        const u32 qh = (u32)load_int_b2(bw + 2, 0);
        const u8* qs = bw + 6;
        int sumi = 0, sumq = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int j = 2 * t + i;
            const int v = load_int_b2(qs, j);
            // Fifth bits of elements 4j..4j+3 (vh bits 0..3) and 16+4j.. (bits 16..19), moved to
            // bit 4 of their bytes.
            const u32 vh = qh >> (4 * j);
            int v0 = v & 0x0F0F0F0F;
            v0 |= (int)(((vh << 4) & 0x10u) | ((vh << 11) & 0x1000u) | ((vh << 18) & 0x100000u) | ((vh << 25) & 0x10000000u));
            int v1 = (v >> 4) & 0x0F0F0F0F;
            v1 |= (int)(((vh >> 12) & 0x10u) | ((vh >> 5) & 0x1000u) | ((vh << 2) & 0x100000u) | ((vh << 9) & 0x10000000u));
            const int u0 = load_int_b4(y->qs, j), u1 = load_int_b4(y->qs, j + 4);
            sumi = dp4a(v0, u0, sumi);
            sumi = dp4a(v1, u1, sumi);
            sumq = byte_sum(u0, byte_sum(u1, sumq));
        }
        return h2f(*(const u16*)bw) * h2f(y->d) * (float)(sumi - 16 * sumq);
    }
};

// The 6-bit scale and min of group j of a Q4_K block (ggml's get_scale_min_k4).
__device__ __forceinline__ void scale_min_k4(int j, const u8* q, int& sc, int& m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: 144 bytes (f16 d, f16 dmin, 12 bytes of scales/mins, 128 bytes of nibbles), 4-byte
// aligned; element 64c + 32k + l is nibble k of qs[32c + l], in group 2c + k;
// x = d * sc * q - dmin * m. 16 threads per block: thread t = 4c + p takes words p and p + 4 of
// chunk c, i.e. 8 bytes whose low nibbles are in group 2c and high nibbles in group 2c + 1.
struct mv_q4_k {
    static constexpr int QK = 256, TS = 144, TPB = 16;
    static __device__ __forceinline__ float dot(const u8* bw, const block_q8_1* y, int t) {
        const int c = t / 4, p = t % 4;
        const int* q = (const int*)(bw + 16) + 8 * c;
        const int v0 = q[p], v1 = q[p + 4];
        const block_q8_1* ylo = y + 2 * c;
        const block_q8_1* yhi = y + 2 * c + 1;
        const int ul0 = load_int_b4(ylo->qs, p), ul1 = load_int_b4(ylo->qs, p + 4);
        const int uh0 = load_int_b4(yhi->qs, p), uh1 = load_int_b4(yhi->qs, p + 4);
        const int dot_lo = dp4a(v0 & 0x0F0F0F0F, ul0, dp4a(v1 & 0x0F0F0F0F, ul1, 0));
        const int dot_hi = dp4a((v0 >> 4) & 0x0F0F0F0F, uh0, dp4a((v1 >> 4) & 0x0F0F0F0F, uh1, 0));
        const int sum_lo = byte_sum(ul0, byte_sum(ul1, 0));
        const int sum_hi = byte_sum(uh0, byte_sum(uh1, 0));
        int sc_lo, m_lo, sc_hi, m_hi;
        scale_min_k4(2 * c, bw + 4, sc_lo, m_lo);
        scale_min_k4(2 * c + 1, bw + 4, sc_hi, m_hi);
        const float d8lo = h2f(ylo->d), d8hi = h2f(yhi->d);
        const float d = h2f(*(const u16*)bw), dmin = h2f(*(const u16*)(bw + 2));
        return d * (d8lo * (float)(sc_lo * dot_lo) + d8hi * (float)(sc_hi * dot_hi)) -
               dmin * (d8lo * (float)(m_lo * sum_lo) + d8hi * (float)(m_hi * sum_hi));
    }
};

// Q6_K: 210 bytes (ql[128], qh[64], i8 scales[16], f16 d), 2-byte aligned; element
// 128h + 32s + l has its low nibble in nibble s/2 of ql[64h + 32(s%2) + l] and its top two bits
// at bits 2s of qh[32h + l], in group 16-element group 8h + 2s + l/16; x = d * sc * (q - 32).
// 32 threads per block: thread t = 16h + j takes ql word j of half h (s = j/8 and j/8 + 2,
// l = 4(j%8)..4(j%8)+3) and the matching qh word.
struct mv_q6_k {
    static constexpr int QK = 256, TS = 210, TPB = 32;
    static __device__ __forceinline__ float dot(const u8* bw, const block_q8_1* y, int t) {
        const int h = t / 16, j = t % 16, jl = j % 8;
        const int v = load_int_b2(bw, 16 * h + j);
        const int vh = load_int_b2(bw + 128, 8 * h + jl);
        const int s_lo = j / 8, s_hi = s_lo + 2;
        const int q_lo = (v & 0x0F0F0F0F) | (((vh >> (2 * s_lo)) & 0x03030303) << 4);
        const int q_hi = ((v >> 4) & 0x0F0F0F0F) | (((vh >> (2 * s_hi)) & 0x03030303) << 4);
        const block_q8_1* ylo = y + 4 * h + s_lo;
        const block_q8_1* yhi = y + 4 * h + s_hi;
        const int u_lo = load_int_b4(ylo->qs, jl), u_hi = load_int_b4(yhi->qs, jl);
        const int dot_lo = dp4a(q_lo, u_lo, 0) - 32 * byte_sum(u_lo, 0);
        const int dot_hi = dp4a(q_hi, u_hi, 0) - 32 * byte_sum(u_hi, 0);
        const i8* sc = (const i8*)(bw + 192);
        const int g = 8 * h + jl / 4;
        const float d = h2f(*(const u16*)(bw + 208));
        return d * (h2f(ylo->d) * (float)(sc[g + 2 * s_lo] * dot_lo) +
                    h2f(yhi->d) * (float)(sc[g + 2 * s_hi] * dot_hi));
    }
};

template <typename T>
__device__ __forceinline__ void matvec_row(const u8* __restrict__ w, const block_q8_1* __restrict__ y,
                                           float* __restrict__ dst, int ncols) {
    __shared__ float scratch[32];
    const long long row = blockIdx.x;
    const int nb = ncols / T::QK;
    const u8* wr = w + row * (long long)nb * T::TS;
    constexpr int PER_ITER = MV_THREADS / T::TPB;
    const int t = threadIdx.x % T::TPB;
    float sum = 0.0f;
    for (int kb = threadIdx.x / T::TPB; kb < nb; kb += PER_ITER) {
        sum += T::dot(wr + (long long)kb * T::TS, y + kb * (T::QK / 32), t);
    }
    sum = block_sum(sum, scratch);
    if (threadIdx.x == 0) dst[row] = sum;
}

// Launch: grid (rows), block (MV_THREADS). w: rows x (ncols / QK) blocks; y: ncols / 32 Q8_1
// blocks; dst: rows floats.
extern "C" __global__ void __launch_bounds__(MV_THREADS) matvec_q8_0(const u8* __restrict__ w, const block_q8_1* __restrict__ y, float* __restrict__ dst, int ncols) {
    matvec_row<mv_q8_0>(w, y, dst, ncols);
}
extern "C" __global__ void __launch_bounds__(MV_THREADS) matvec_q4_0(const u8* __restrict__ w, const block_q8_1* __restrict__ y, float* __restrict__ dst, int ncols) {
    matvec_row<mv_q4_0>(w, y, dst, ncols);
}
extern "C" __global__ void __launch_bounds__(MV_THREADS) matvec_q5_0(const u8* __restrict__ w, const block_q8_1* __restrict__ y, float* __restrict__ dst, int ncols) {
    matvec_row<mv_q5_0>(w, y, dst, ncols);
}
extern "C" __global__ void __launch_bounds__(MV_THREADS) matvec_q4_k(const u8* __restrict__ w, const block_q8_1* __restrict__ y, float* __restrict__ dst, int ncols) {
    matvec_row<mv_q4_k>(w, y, dst, ncols);
}
extern "C" __global__ void __launch_bounds__(MV_THREADS) matvec_q6_k(const u8* __restrict__ w, const block_q8_1* __restrict__ y, float* __restrict__ dst, int ncols) {
    matvec_row<mv_q6_k>(w, y, dst, ncols);
}
