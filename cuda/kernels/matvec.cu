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

// Q6_K: 210 bytes (ql[128], qh[64], i8 scales[16], f16 d), padded to Q6K_DEV_TS on the device; element
// 128h + 32s + l has its low nibble in nibble s/2 of ql[64h + 32(s%2) + l] and its top two bits
// at bits 2s of qh[32h + l], in group 16-element group 8h + 2s + l/16; x = d * sc * (q - 32).
// 32 threads per block: thread t = 16h + j takes ql word j of half h (s = j/8 and j/8 + 2,
// l = 4(j%8)..4(j%8)+3) and the matching qh word.
struct mv_q6_k {
    static constexpr int QK = 256, TS = Q6K_DEV_TS, TPB = 32;
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
    pdl_enter();
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

// ---------------------------------------------------------------------------------------------
// Version 2: blocks of MV2_WARPS warps, WPR warps per row (1, 2 or 4; the host picks, see
// CudaBackend::auto_matvec), the row's warps summed through shared memory when there are several,
// no block-wide barrier when there is one. Q4_K reads its 16 quant bytes per thread as one 16-byte
// load (144-byte blocks keep the quants 16-byte aligned) and its packed scales as three words,
// decoded with masks rather than a branch (a branch split every unrolled pass in two).
//
// Each type's work on a block is split into `load` (the weight bytes into registers) and
// `compute`, and the row loop is unrolled MV2_UNROLL times with the loads written first. In PTX
// the loads of the group's passes do come first; without a minimum of blocks per multiprocessor
// ptxas (CUDA 13.0, sm_90) schedules each pass's loads next to their use (one pass in flight per
// warp); compiled for 8 blocks (MV2_MIN_BLOCKS, the default since Session 7) it issues the
// group's 16-byte weight loads together first (matvec2_q4_k_w1). The gain over version 1 (1.5x
// for Q4_K on an H200) comes from the warp-per-row shape, the wide loads and the straight-line
// passes.

#define MV2_WARPS 4
// Tuning knobs (overridable at run time through ENGINE_CUDA_DEFINES, see nvrtc.rs):
// MV2_UNROLL: passes whose weights are loaded before their products (row_partial);
// MV2_GU_UNROLL: the same for each of the two rows of row_partial2 (gate and up);
// MV2_MIN_BLOCKS, MV_FUSED_MIN_BLOCKS, MV_GATE_UP_MIN_BLOCKS: the blocks per multiprocessor the
// single-matrix, matvec_multi and matvec_gate_up_q8_1 kernels are compiled for (0: none given).
// This is what decides whether ptxas keeps the loads of an unrolled group together: given no
// minimum, ptxas (CUDA 13, sm_90) held matvec2_q4_k_w1 to 46 registers and issued each pass's
// loads next to their use (one pass in flight per warp); with any minimum it took 107 registers
// and issued all the group's loads first.
// H200 tg128, one call each (`engine bench`), 2 against 4: 8B Q4_K_M 340.72 against 325.55 t/s,
// 1B 1,104.00 against 1,046.13, 8B Q4_0 360.49 against 336.54 / 334.47 (8: 233.12).
// The single-matrix kernels are compiled for 8 blocks per multiprocessor (at most 64 registers
// a thread, no spills): H200 tg128, same call, alternating with 0 (none given): 8B Q4_K_M
// 358.02 / 358.84 against 342.83 / 342.35, 1B 1,144.26 / 1,161.65 against 1,116.50 / 1,105.06,
// 8B Q4_0 363.94 / 364.90 against 362.94 / 362.77 (6: 356.12, 1,141.23, 365.31; the gate/up
// kernel with a minimum of 4 or 8, or an unroll of 3 or 4 with it, was slower:
// docs/PERFORMANCE.md, Session 7).
#ifndef MV2_UNROLL
#define MV2_UNROLL 2
#endif
#ifndef MV2_GU_UNROLL
#define MV2_GU_UNROLL (MV2_UNROLL / 2 > 0 ? MV2_UNROLL / 2 : 1)
#endif
#ifndef MV2_MIN_BLOCKS
#define MV2_MIN_BLOCKS 8
#endif
#ifndef MV_FUSED_MIN_BLOCKS
#define MV_FUSED_MIN_BLOCKS 8
#endif
#ifndef MV_GATE_UP_MIN_BLOCKS
#define MV_GATE_UP_MIN_BLOCKS 0
#endif
#if MV2_MIN_BLOCKS > 0
#define MV2_BOUNDS __launch_bounds__(WARP_SIZE * MV2_WARPS, MV2_MIN_BLOCKS)
#else
#define MV2_BOUNDS __launch_bounds__(WARP_SIZE * MV2_WARPS)
#endif
#if MV_FUSED_MIN_BLOCKS > 0
#define MV_FUSED_BOUNDS __launch_bounds__(WARP_SIZE * MV2_WARPS, MV_FUSED_MIN_BLOCKS)
#else
#define MV_FUSED_BOUNDS __launch_bounds__(WARP_SIZE * MV2_WARPS)
#endif
#if MV_GATE_UP_MIN_BLOCKS > 0
#define MV_GATE_UP_BOUNDS __launch_bounds__(WARP_SIZE * MV2_WARPS, MV_GATE_UP_MIN_BLOCKS)
#else
#define MV_GATE_UP_BOUNDS __launch_bounds__(WARP_SIZE * MV2_WARPS)
#endif

struct __align__(16) int4_t {
    int x, y, z, w;
};

// Byte i of x, as an int.
__device__ __forceinline__ int byte_of(int x, int i) { return (x >> (8 * i)) & 0xFF; }

// Weight loads of version 2, as volatile PTX (kept in program order in the PTX; ptxas still
// schedules them, see above). `.nc`: the weights are read-only for the kernel's life.
// MV_LD_HINT (tuning knob): cache qualifiers of the streaming weight loads, the 16-byte and
// 32-bit ones (each thread its own bytes: Q4_K's quants and header, Q6_K's quant words).
// 0: none; 1: `.L2::256B` (each miss brings the 256 bytes around it into L2); 2: that and
// `.L1::no_allocate` (streamed weights do not evict the activations from L1); 3: `.L2::128B`.
// The 16-bit and byte loads (Q4_0, Q5_0, Q8_0 words read in halves, scales, block scales) stay
// plain: there the second half of a word is an L1 hit. H200, tg128, the same call: 8B Q4_K_M
// 302.4 t/s with 2 against 279.6 with 0, 1B 882.6 against 840.9; on Q4_0, where the hint applied
// to the 16-bit loads too, 241.5 against 297.4, hence those are left out.
#ifndef MV_LD_HINT
#define MV_LD_HINT 2
#endif
#if MV_LD_HINT == 1
#define MV_LD "ld.global.nc.L2::256B"
#elif MV_LD_HINT == 2
#define MV_LD "ld.global.nc.L1::no_allocate.L2::256B"
#elif MV_LD_HINT == 3
#define MV_LD "ld.global.nc.L2::128B"
#else
#define MV_LD "ld.global.nc"
#endif
__device__ __forceinline__ int4_t ldg_v4(const void* p) {
    int4_t r;
    asm volatile(MV_LD ".v4.s32 {%0, %1, %2, %3}, [%4];" : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w) : "l"(p));
    return r;
}
__device__ __forceinline__ int ldg_s32(const void* p) {
    int r;
    asm volatile(MV_LD ".s32 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ u16 ldg_u16(const void* p) {
    u16 r;
    asm volatile("ld.global.nc.u16 %0, [%1];" : "=h"(r) : "l"(p));
    return r;
}
__device__ __forceinline__ int ldg_s8(const void* p) {
    int r;
    asm volatile("ld.global.nc.s8 %0, [%1];" : "=r"(r) : "l"(p));
    return r;
}
// The i-th 32-bit word at p, p 2-byte aligned, as two 16-bit loads.
__device__ __forceinline__ int ldg_int_b2(const void* p, int i) {
    const u16* x = (const u16*)p;
    return (int)((u32)ldg_u16(x + 2 * i) | ((u32)ldg_u16(x + 2 * i + 1) << 16));
}

// get_scale_min_k4 on the 12 packed bytes held as three words (bytes 0-3, 4-7, 8-11), written
// with masks instead of a branch so unrolled passes stay straight-line code:
//   j < 4:  sc = q[j] & 63,                            m = q[j+4] & 63
//   j >= 4: sc = (q[j+4] & 0xF) | ((q[j-4] >> 6) << 4), m = (q[j+4] >> 4) | ((q[j] >> 6) << 4)
// With jj = j & 3, a0 = q[jj], a1 = q[jj+4], a2 = q[jj+8], both are
//   sc = (a2 & K1) | ((a0 & K2) >> K3),  m = ((a2 & L1) >> 4) | ((a1 & K2) >> K3).
__device__ __forceinline__ void scale_min_k4_words(int j, int s0, int s1, int s2, int& sc, int& m) {
    const int jj = j & 3;
    const int a0 = byte_of(s0, jj), a1 = byte_of(s1, jj), a2 = byte_of(s2, jj);
    const int hm = -(int)(j >= 4);  // all ones for the high form
    const int K1 = hm & 0xF, K2 = 0x3F ^ (hm & 0xFF), K3 = hm & 2, L1 = hm & 0xF0;
    sc = (a2 & K1) | ((a0 & K2) >> K3);
    m = ((a2 & L1) >> 4) | ((a1 & K2) >> K3);
}

// Q8_0 (as mv_q8_0): 4 threads per block, words 2t and 2t + 1.
struct mv2_q8_0 {
    static constexpr int QK = 32, TS = 34, TPB = 4;
    struct W {
        int q0, q1;
        u16 d;
    };
    static __device__ __forceinline__ W load(const u8* bw, int t) {
        return W{ldg_int_b2(bw + 2, 2 * t), ldg_int_b2(bw + 2, 2 * t + 1), ldg_u16(bw)};
    }
    static __device__ __forceinline__ float compute(const W& w, const block_q8_1* y, int t) {
        const int sumi = dp4a(w.q1, load_int_b4(y->qs, 2 * t + 1), dp4a(w.q0, load_int_b4(y->qs, 2 * t), 0));
        return h2f(w.d) * h2f(y->d) * (float)sumi;
    }
};

// Q4_0 (as mv_q4_0): 2 threads per block, words 2t and 2t + 1 of the nibbles.
struct mv2_q4_0 {
    static constexpr int QK = 32, TS = 18, TPB = 2;
    struct W {
        int v0, v1;
        u16 d;
    };
    static __device__ __forceinline__ W load(const u8* bw, int t) {
        return W{ldg_int_b2(bw + 2, 2 * t), ldg_int_b2(bw + 2, 2 * t + 1), ldg_u16(bw)};
    }
    static __device__ __forceinline__ float compute(const W& w, const block_q8_1* y, int t) {
        int sumi = 0, sumq = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int j = 2 * t + i;
            const int v = i == 0 ? w.v0 : w.v1;
            const int u0 = load_int_b4(y->qs, j), u1 = load_int_b4(y->qs, j + 4);
            sumi = dp4a(v & 0x0F0F0F0F, u0, sumi);
            sumi = dp4a((v >> 4) & 0x0F0F0F0F, u1, sumi);
            sumq = byte_sum(u0, byte_sum(u1, sumq));
        }
        return h2f(w.d) * h2f(y->d) * (float)(sumi - 8 * sumq);
    }
};

// Q5_0 (as mv_q5_0).
struct mv2_q5_0 {
    static constexpr int QK = 32, TS = 22, TPB = 2;
    struct W {
        int v0, v1, qh;
        u16 d;
    };
    static __device__ __forceinline__ W load(const u8* bw, int t) {
        return W{ldg_int_b2(bw + 6, 2 * t), ldg_int_b2(bw + 6, 2 * t + 1), ldg_int_b2(bw + 2, 0), ldg_u16(bw)};
    }
    static __device__ __forceinline__ float compute(const W& w, const block_q8_1* y, int t) {
        int sumi = 0, sumq = 0;
#pragma unroll
        for (int i = 0; i < 2; ++i) {
            const int j = 2 * t + i;
            const int v = i == 0 ? w.v0 : w.v1;
            const u32 vh = (u32)w.qh >> (4 * j);
            int v0 = v & 0x0F0F0F0F;
            v0 |= (int)(((vh << 4) & 0x10u) | ((vh << 11) & 0x1000u) | ((vh << 18) & 0x100000u) | ((vh << 25) & 0x10000000u));
            int v1 = (v >> 4) & 0x0F0F0F0F;
            v1 |= (int)(((vh >> 12) & 0x10u) | ((vh >> 5) & 0x1000u) | ((vh << 2) & 0x100000u) | ((vh << 9) & 0x10000000u));
            const int u0 = load_int_b4(y->qs, j), u1 = load_int_b4(y->qs, j + 4);
            sumi = dp4a(v0, u0, sumi);
            sumi = dp4a(v1, u1, sumi);
            sumq = byte_sum(u0, byte_sum(u1, sumq));
        }
        return h2f(w.d) * h2f(y->d) * (float)(sumi - 16 * sumq);
    }
};

// Q4_K, 8 threads per block: thread t = 2c + hf takes quant bytes 32c + 16hf .. +15
// (l = 16hf .. 16hf + 15 of groups 2c (low nibbles) and 2c + 1 (high nibbles)).
// MV_Q4K_DS (tuning knob, see MV2_UNROLL): 1 reads the block header (d, dmin, scales) as one
// 16-byte load and takes the min term from the activations' stored s = f16(d * sum(q)) (the
// thread of the first half of a group adds it for the whole group), instead of four word loads
// and eight byte sums per pass; 0 is the earlier form, exact in the integers. H200, 4096 x 14336:
// 12.34 us against 13.29; 14336 x 4096: 14.96 against 17.70 (matvec_bw).
#ifndef MV_Q4K_DS
#define MV_Q4K_DS 1
#endif
struct mv2_q4_k {
    static constexpr int QK = 256, TS = 144, TPB = 8;
    struct W {
        int4_t v;
        int s0, s1, s2, dm;
    };
    static __device__ __forceinline__ W load(const u8* bw, int t) {
#if MV_Q4K_DS
        // d|dmin and the three scale words in one (broadcast) load, then the quants.
        const int4_t h = ldg_v4(bw);
        return W{ldg_v4(bw + 16 + 16 * t), h.y, h.z, h.w, h.x};
#else
        // d|dmin, then the three scale words, then the quants.
        return W{ldg_v4(bw + 16 + 16 * t), ldg_s32(bw + 4), ldg_s32(bw + 8), ldg_s32(bw + 12), ldg_s32(bw)};
#endif
    }
    static __device__ __forceinline__ float compute(const W& w, const block_q8_1* y, int t) {
        const int c = t / 2, hf = t % 2;
        const block_q8_1* ylo = y + 2 * c;
        const block_q8_1* yhi = y + 2 * c + 1;
        const int* ql = (const int*)ylo->qs + 4 * hf;
        const int* qh = (const int*)yhi->qs + 4 * hf;
        const int l0 = ql[0], l1 = ql[1], l2 = ql[2], l3 = ql[3];
        const int h0 = qh[0], h1 = qh[1], h2 = qh[2], h3 = qh[3];
        const int M = 0x0F0F0F0F;
        int dot_lo = dp4a(w.v.x & M, l0, 0);
        dot_lo = dp4a(w.v.y & M, l1, dot_lo);
        dot_lo = dp4a(w.v.z & M, l2, dot_lo);
        dot_lo = dp4a(w.v.w & M, l3, dot_lo);
        int dot_hi = dp4a((w.v.x >> 4) & M, h0, 0);
        dot_hi = dp4a((w.v.y >> 4) & M, h1, dot_hi);
        dot_hi = dp4a((w.v.z >> 4) & M, h2, dot_hi);
        dot_hi = dp4a((w.v.w >> 4) & M, h3, dot_hi);
        int sc_lo, m_lo, sc_hi, m_hi;
        scale_min_k4_words(2 * c, w.s0, w.s1, w.s2, sc_lo, m_lo);
        scale_min_k4_words(2 * c + 1, w.s0, w.s1, w.s2, sc_hi, m_hi);
        const float d = h2f((u16)(w.dm & 0xFFFF)), dmin = h2f((u16)((u32)w.dm >> 16));
#if MV_Q4K_DS
        const u32 dslo = *(const u32*)ylo, dshi = *(const u32*)yhi;  // d | s << 16
        const float d8lo = h2f((u16)(dslo & 0xFFFF)), d8hi = h2f((u16)(dshi & 0xFFFF));
        const float mins = hf == 0 ? (float)m_lo * h2f((u16)(dslo >> 16)) + (float)m_hi * h2f((u16)(dshi >> 16)) : 0.0f;
        return d * (d8lo * (float)(sc_lo * dot_lo) + d8hi * (float)(sc_hi * dot_hi)) - dmin * mins;
#else
        const int sum_lo = byte_sum(l0, byte_sum(l1, byte_sum(l2, byte_sum(l3, 0))));
        const int sum_hi = byte_sum(h0, byte_sum(h1, byte_sum(h2, byte_sum(h3, 0))));
        const float d8lo = h2f(ylo->d), d8hi = h2f(yhi->d);
        return d * (d8lo * (float)(sc_lo * dot_lo) + d8hi * (float)(sc_hi * dot_hi)) -
               dmin * (d8lo * (float)(m_lo * sum_lo) + d8hi * (float)(m_hi * sum_hi));
#endif
    }
};

// Q6_K (as mv_q6_k): 32 threads per block. The device's blocks are padded to 4-byte alignment
// (Q6K_DEV_TS), so the quant words are single 32-bit loads (two 16-bit loads each at 210 bytes).
struct mv2_q6_k {
    static constexpr int QK = 256, TS = Q6K_DEV_TS, TPB = 32;
    struct W {
        int v, vh;
        int sc_lo, sc_hi;
        u16 d;
    };
    static __device__ __forceinline__ W load(const u8* bw, int t) {
        const int h = t / 16, j = t % 16, jl = j % 8;
        const int g = 8 * h + jl / 4 + 2 * (j / 8);
        return W{ldg_s32(bw + 4 * (16 * h + j)), ldg_s32(bw + 128 + 4 * (8 * h + jl)), ldg_s8(bw + 192 + g), ldg_s8(bw + 192 + g + 4),
                 ldg_u16(bw + 208)};
    }
    static __device__ __forceinline__ float compute(const W& w, const block_q8_1* y, int t) {
        const int h = t / 16, j = t % 16, jl = j % 8;
        const int s_lo = j / 8, s_hi = s_lo + 2;
        const int q_lo = (w.v & 0x0F0F0F0F) | (((w.vh >> (2 * s_lo)) & 0x03030303) << 4);
        const int q_hi = ((w.v >> 4) & 0x0F0F0F0F) | (((w.vh >> (2 * s_hi)) & 0x03030303) << 4);
        const block_q8_1* ylo = y + 4 * h + s_lo;
        const block_q8_1* yhi = y + 4 * h + s_hi;
        const int u_lo = load_int_b4(ylo->qs, jl), u_hi = load_int_b4(yhi->qs, jl);
        const int dot_lo = dp4a(q_lo, u_lo, 0) - 32 * byte_sum(u_lo, 0);
        const int dot_hi = dp4a(q_hi, u_hi, 0) - 32 * byte_sum(u_hi, 0);
        return h2f(w.d) * (h2f(ylo->d) * (float)(w.sc_lo * dot_lo) + h2f(yhi->d) * (float)(w.sc_hi * dot_hi));
    }
};

// The warp-summed partial dot product of one row (nb blocks of T at wr) with y, over the passes
// of warp `part` of the row's `wpr` warps: whole groups of MV2_UNROLL passes, then what remains
// as one group of guarded passes, so short rows (fewer passes than a group: a row of 2048 Q4_K
// columns is two passes per warp) still issue all their loads before the first product. Every
// version-2 kernel, fused or not, sums through this function, so a row gets the same float for
// the same `wpr`.
template <typename T>
__device__ __forceinline__ float row_partial(const u8* __restrict__ wr, const block_q8_1* __restrict__ y, int nb, int lane,
                                             int part, int wpr) {
    constexpr int PER_PASS = WARP_SIZE / T::TPB;
    const int stride = PER_PASS * wpr;
    const int t = lane % T::TPB;
    float sum = 0.0f;
    int kb = lane / T::TPB + part * PER_PASS;
    // Whole groups of U passes, the weights of all of them loaded first (in PTX).
    constexpr int U = MV2_UNROLL;
    for (; kb + (U - 1) * stride < nb; kb += U * stride) {
        typename T::W wv[U];
#pragma unroll
        for (int u = 0; u < U; ++u) wv[u] = T::load(wr + (long long)(kb + u * stride) * T::TS, t);
#pragma unroll
        for (int u = 0; u < U; ++u) sum += T::compute(wv[u], y + (kb + u * stride) * (T::QK / 32), t);
    }
    // The remaining passes (fewer than a group), loads first, each guarded.
    if (kb < nb) {
        typename T::W wv[U > 1 ? U - 1 : 1];
#pragma unroll
        for (int u = 0; u < U - 1; ++u) {
            if (kb + u * stride < nb) wv[u] = T::load(wr + (long long)(kb + u * stride) * T::TS, t);
        }
#pragma unroll
        for (int u = 0; u < U - 1; ++u) {
            if (kb + u * stride < nb) sum += T::compute(wv[u], y + (kb + u * stride) * (T::QK / 32), t);
        }
    }
    return warp_sum(sum);
}

// row_partial for the same row of two matrices of type T (the FFN's gate and up), the loads of
// both issued before either's products: groups of MV2_GU_UNROLL passes of each row, the same
// passes summed in the same order as row_partial, so each result is the float it gives.
template <typename T>
__device__ __forceinline__ void row_partial2(const u8* __restrict__ wa, const u8* __restrict__ wb, const block_q8_1* __restrict__ y,
                                             int nb, int lane, int part, int wpr, float& sa, float& sb) {
    constexpr int PER_PASS = WARP_SIZE / T::TPB;
    constexpr int U = MV2_GU_UNROLL;
    const int stride = PER_PASS * wpr;
    const int t = lane % T::TPB;
    float suma = 0.0f, sumb = 0.0f;
    for (int kb = lane / T::TPB + part * PER_PASS; kb < nb; kb += U * stride) {
        typename T::W va[U], vb[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (kb + u * stride < nb) {
                va[u] = T::load(wa + (long long)(kb + u * stride) * T::TS, t);
                vb[u] = T::load(wb + (long long)(kb + u * stride) * T::TS, t);
            }
        }
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (kb + u * stride < nb) {
                const block_q8_1* yb = y + (kb + u * stride) * (T::QK / 32);
                suma += T::compute(va[u], yb, t);
                sumb += T::compute(vb[u], yb, t);
            }
        }
    }
    sa = warp_sum(suma);
    sb = warp_sum(sumb);
}

// A product's output: dst[row] = v; and when `nonfinite` is given, *nonfinite = 1 if v is NaN
// or infinite (the flag is never cleared here: the host clears it after reading it set).
__device__ __forceinline__ void store_checked(float* __restrict__ dst, long long row, float v, unsigned int* __restrict__ nonfinite) {
    dst[row] = v;
    if (nonfinite != nullptr && !isfinite(v)) *nonfinite = 1u;
}

template <typename T, int WPR>
__device__ __forceinline__ void matvec2_row(const u8* __restrict__ w, const block_q8_1* __restrict__ y,
                                            float* __restrict__ dst, int ncols, int nrows,
                                            unsigned int* __restrict__ nonfinite) {
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const long long row = (long long)blockIdx.x * (MV2_WARPS / WPR) + warp / WPR;
    const int part = warp % WPR;  // which of the row's warps this is
    const int nb = ncols / T::QK;
    pdl_enter();
    float sum = 0.0f;
    if (WPR == 1 && row >= nrows) return;  // whole warps leave; no barrier follows
    if (row < nrows) sum = row_partial<T>(w + row * (long long)nb * T::TS, y, nb, lane, part, WPR);
    if (WPR == 1) {
        if (lane == 0) store_checked(dst, row, sum, nonfinite);
        return;
    }
    __shared__ float partial[MV2_WARPS];
    if (lane == 0) partial[warp] = sum;
    __syncthreads();
    if (part == 0 && lane == 0 && row < nrows) {
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < WPR; ++i) s += partial[warp + i];
        store_checked(dst, row, s, nonfinite);
    }
}

// Launch: block (32 * MV2_WARPS), grid (ceil(rows / (MV2_WARPS / WPR))), for WPR (warps per row)
// 1, 2 or 4: kernels matvec2_<type>_w<WPR>. nonfinite: null, or a flag set to 1 when some output
// is NaN or infinite (the decode graph's logits, so the host need not scan them).
#define MATVEC2(name, T, WPR)                                                                         \
    extern "C" __global__ void MV2_BOUNDS                                                             \
        name(const u8* __restrict__ w, const block_q8_1* __restrict__ y, float* __restrict__ dst,   \
             int ncols, int nrows, unsigned int* __restrict__ nonfinite) {                           \
        matvec2_row<T, WPR>(w, y, dst, ncols, nrows, nonfinite);                                     \
    }
#define MATVEC2_ALL(type, T) \
    MATVEC2(matvec2_##type##_w1, T, 1) MATVEC2(matvec2_##type##_w2, T, 2) MATVEC2(matvec2_##type##_w4, T, 4)
MATVEC2_ALL(q8_0, mv2_q8_0)
MATVEC2_ALL(q4_0, mv2_q4_0)
MATVEC2_ALL(q5_0, mv2_q5_0)
MATVEC2_ALL(q4_k, mv2_q4_k)
MATVEC2_ALL(q6_k, mv2_q6_k)

// ---------------------------------------------------------------------------------------------
// Fused decode products: several matrices that read the same Q8_1 activations in one launch.
// Rows are version-2 rows (row_partial), so each output is the float the single-matrix kernel
// with the same warps per row gives. A matrix's type is an index in the host's MATVEC_TYPES
// order: 0 Q8_0, 1 Q4_0, 2 Q5_0, 3 Q4_K, 4 Q6_K; the type is uniform over a block, so the switch
// does not split warps.

// (MV_FUSED_MIN_BLOCKS 8: at most 64 registers a thread for matvec_multi; matvec_gate_up_q8_1
// would spill under that cap.)

template <typename T>
__device__ __forceinline__ float row_of(const u8* __restrict__ w, long long row, const block_q8_1* __restrict__ y, int ncols,
                                        int lane, int part, int wpr) {
    const int nb = ncols / T::QK;
    return row_partial<T>(w + row * (long long)nb * T::TS, y, nb, lane, part, wpr);
}

__device__ __forceinline__ float row_of_type(int ty, const u8* __restrict__ w, long long row, const block_q8_1* __restrict__ y,
                                             int ncols, int lane, int part, int wpr) {
    switch (ty) {
        case 0: return row_of<mv2_q8_0>(w, row, y, ncols, lane, part, wpr);
        case 1: return row_of<mv2_q4_0>(w, row, y, ncols, lane, part, wpr);
        case 2: return row_of<mv2_q5_0>(w, row, y, ncols, lane, part, wpr);
        case 3: return row_of<mv2_q4_k>(w, row, y, ncols, lane, part, wpr);
        default: return row_of<mv2_q6_k>(w, row, y, ncols, lane, part, wpr);
    }
}

template <typename T>
__device__ __forceinline__ void rows2_of(const u8* __restrict__ wa, const u8* __restrict__ wb, long long row,
                                        const block_q8_1* __restrict__ y, int ncols, int lane, int part, int wpr, float& sa, float& sb) {
    const int nb = ncols / T::QK;
    const long long off = row * (long long)nb * T::TS;
    row_partial2<T>(wa + off, wb + off, y, nb, lane, part, wpr, sa, sb);
}

// Row `row` of two matrices of the same type index ty, their loads interleaved (row_partial2).
__device__ __forceinline__ void rows2_of_type(int ty, const u8* __restrict__ wa, const u8* __restrict__ wb, long long row,
                                             const block_q8_1* __restrict__ y, int ncols, int lane, int part, int wpr, float& sa,
                                             float& sb) {
    switch (ty) {
        case 0: rows2_of<mv2_q8_0>(wa, wb, row, y, ncols, lane, part, wpr, sa, sb); break;
        case 1: rows2_of<mv2_q4_0>(wa, wb, row, y, ncols, lane, part, wpr, sa, sb); break;
        case 2: rows2_of<mv2_q5_0>(wa, wb, row, y, ncols, lane, part, wpr, sa, sb); break;
        case 3: rows2_of<mv2_q4_k>(wa, wb, row, y, ncols, lane, part, wpr, sa, sb); break;
        default: rows2_of<mv2_q6_k>(wa, wb, row, y, ncols, lane, part, wpr, sa, sb); break;
    }
}

// Sums the partials of a row's wpr warps (uniform over the block) through `partial` (MV2_WARPS
// floats of shared memory); true on lane 0 of the row's first warp, whose `sum` is then the
// row's (as matvec2_row adds them). Every thread of the block must call it.
__device__ __forceinline__ bool row_total(float& sum, float* partial, int lane, int warp, int part, int wpr) {
    if (wpr == 1) return lane == 0;
    if (lane == 0) partial[warp] = sum;
    __syncthreads();
    if (part != 0 || lane != 0) return false;
    float s = 0.0f;
    for (int i = 0; i < wpr; ++i) s += partial[warp + i];
    sum = s;
    return true;
}

// Up to three matrices of ncols columns (the attention's Q, K and V): segment s has rows_s rows
// of type ty_s at w_s, wpr_s warps per row, output d_s, and blocks [first_s, first_{s+1}) of the
// grid (first_0 = 0, first_3 = gridDim.x), i.e. ceil(rows_s / (MV2_WARPS / wpr_s)) blocks.
// Launch: block (32 * MV2_WARPS).
extern "C" __global__ void MV_FUSED_BOUNDS
    matvec_multi(const u8* __restrict__ w0, const u8* __restrict__ w1, const u8* __restrict__ w2, float* __restrict__ d0,
                 float* __restrict__ d1, float* __restrict__ d2, int rows0, int rows1, int rows2, int ty0, int ty1, int ty2,
                 int wpr0, int wpr1, int wpr2, int first1, int first2, const block_q8_1* __restrict__ y, int ncols) {
    __shared__ float partial[MV2_WARPS];
    const int blk = blockIdx.x;
    const int s = blk >= first2 ? 2 : (blk >= first1 ? 1 : 0);
    const u8* w = s == 0 ? w0 : (s == 1 ? w1 : w2);
    float* dst = s == 0 ? d0 : (s == 1 ? d1 : d2);
    const int nrows = s == 0 ? rows0 : (s == 1 ? rows1 : rows2);
    const int ty = s == 0 ? ty0 : (s == 1 ? ty1 : ty2);
    const int wpr = s == 0 ? wpr0 : (s == 1 ? wpr1 : wpr2);
    const int first = s == 0 ? 0 : (s == 1 ? first1 : first2);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const long long row = (long long)(blk - first) * (MV2_WARPS / wpr) + warp / wpr;
    const int part = warp % wpr;
    pdl_enter();
    float sum = 0.0f;
    if (row < nrows) sum = row_of_type(ty, w, row, y, ncols, lane, part, wpr);
    if (row_total(sum, partial, lane, warp, part, wpr) && row < nrows) dst[row] = sum;
}

// The gated FFN's first half in one launch: for each row r of gate and up (same shape, types may
// differ; of one type, a warp issues the loads of both rows together), out[r] =
// act(gate[r] . y) * (up[r] . y) (act 0 = GELU-tanh, 1 = SiLU), and the Q8_1
// quantization of out into outq: the thread block that writes the last of a Q8_1 block's 32 rows
// quantizes it. Each thread block publishes its rows and counts them in sync[r / 32] with one
// release atomic (a __threadfence() and an atomic per row, before, invalidated L1 at each row:
// 2% of decode on an H200, docs/PERFORMANCE.md Session 8); the block whose count completes the
// 32 reads them back (volatile:
// past the L1), quantizes them and resets the counter to zero for the next launch (sync: nrows /
// 32 zeroed counters). The bytes equal
// matvec2 on gate and up with the same warps per row, then gated_act_q8_1.
// Launch: block (32 * MV2_WARPS), grid (ceil(nrows / (MV2_WARPS / wpr))); nrows a multiple of 32.
extern "C" __global__ void MV_GATE_UP_BOUNDS
    matvec_gate_up_q8_1(const u8* __restrict__ wg, const u8* __restrict__ wu, int tyg, int tyu, int wpr,
                        const block_q8_1* __restrict__ y, int ncols, int nrows, int act, float* out, unsigned int* sync,
                        block_q8_1* __restrict__ outq) {
    __shared__ float partial_g[MV2_WARPS], partial_u[MV2_WARPS];
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;
    const long long row = (long long)blockIdx.x * (MV2_WARPS / wpr) + warp / wpr;
    const int part = warp % wpr;
    pdl_enter();
    float g = 0.0f, u = 0.0f;
    if (row < nrows) {
        if (tyg == tyu) {
            rows2_of_type(tyg, wg, wu, row, y, ncols, lane, part, wpr, g, u);
        } else {
            g = row_of_type(tyg, wg, row, y, ncols, lane, part, wpr);
            u = row_of_type(tyu, wu, row, y, ncols, lane, part, wpr);
        }
    }
    const bool owner = row_total(g, partial_g, lane, warp, part, wpr);
    row_total(u, partial_u, lane, warp, part, wpr);
    // The block's rows (MV2_WARPS / wpr of them, within one block of 32 as nrows is a multiple
    // of 32), counted together by one release atomic after a barrier.
    if (owner && row < nrows) out[row] = gated(act, g, u);
    __shared__ bool last_gu;
    const long long first_row = (long long)blockIdx.x * (MV2_WARPS / wpr);
    __syncthreads();
    if (threadIdx.x == 0) {
        const unsigned int mine = (unsigned int)min((long long)(MV2_WARPS / wpr), nrows - first_row);
        last_gu = atomic_add_release_gpu((unsigned int*)&sync[first_row / 32], mine) + mine == 32;
    }
    __syncthreads();
    if (!last_gu || warp != 0) return;
    fence_acquire_gpu();
    const long long b = first_row / 32;
    const float v = ((volatile const float*)out)[b * 32 + lane];
    quantize_q8_1_warp(v, outq + b);
    if (lane == 0) sync[b] = 0;
}
