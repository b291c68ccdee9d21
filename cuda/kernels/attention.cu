// Decode attention: each query (one token of some sequence) over an f16 KV cache, with causal,
// window and sink+window masks, returning each head's output and the log-sum-exp of its scaled,
// masked scores. CPU reference: ggml_kernels::attention::attention (one query row per token).
//
// Cache layout: k [slot][n_head_kv][D], v [slot][n_head_kv][Dv] (f16), kpos [slot] (the absolute
// position a slot holds; negative when empty). Query head h reads KV head h / (n_head / n_head_kv).
// A slot at position kp is visible from the query position qp when
//   kp >= 0 && kp <= qp && (window < 0 || qp - kp < window || kp < sink) && (span < 0 || qp - kp < span)
// (window < 0: no window; span < 0: no bound on the sinks' distance, see AttnMask::span). Token t of a call (query q[t], position qpos[t]) sees the n_slots
// slots base[t] .. base[t] + n_slots of the caches (several sequences side by side).
//
// Two passes (split-K, "flash decoding"). attn_decode_g<G>: a block takes one KV head, G query
// heads of its group (the whole group when it has at most G heads) and one run of `split` slots,
// so each key and value row is read once for the G heads. It walks the run in tiles of AD_TILE
// slots: thread i scores slot i of the tile against the G queries (the key row in 16-byte loads,
// the scaled queries in shared memory), the block takes each head's tile maximum (one online
// softmax step per tile, not per slot), and then the threads split each value row into 16-byte
// pieces (thread = piece + group of slots) and accumulate the G weighted outputs. Tiles with no
// visible slot are skipped after reading their positions only. The run's partial per head is
// (max, sum, unnormalised output[Dv]). attn_decode_merge merges the partials of each (token,
// head), normalises, and writes the log-sum-exp.

#define AD_TILE 128  // slots per tile = threads per block
#define AD_WARPS (AD_TILE / WARP_SIZE)
// 16-byte key pieces, and value rows, a thread has in flight: 16 with up to 4 heads per block, 8
// with 8 (H200, Llama-3-8B shape at 8,320 slots: 31.0 us per call with 16, 33.6 with 8, the
// registers going from 166 to 255 and the resident blocks from 3 to 2 per multiprocessor; the
// 8-head kernel at 255 registers spills, and Qwen 2.5 7B's shape took 42.2 us with 16, 36.8 with 8).
// (Tuning knobs AD_INFLIGHT_G4, AD_INFLIGHT_G8: the counts for up to 4 and for 8 heads.)
#ifndef AD_INFLIGHT_G4
#define AD_INFLIGHT_G4 16
#endif
#ifndef AD_INFLIGHT_G8
#define AD_INFLIGHT_G8 8
#endif
#define AD_INFLIGHT(G) ((G) <= 4 ? AD_INFLIGHT_G4 : AD_INFLIGHT_G8)
// attn_decode_g<G>_short: the same kernel with AD_SHORT_INFLIGHT pieces in flight, about a quarter
// of the unrolled code, for short splits (the host picks it below AD_SHORT_SPLIT slots, default
// never): a decode over a few slots is bound by fetching the kernel's instructions, cold at each
// launch. The order of every sum is the same, so the outputs are the same floats.
#ifndef AD_SHORT_INFLIGHT
#define AD_SHORT_INFLIGHT 4
#endif
#define AD_MAX_SPLITS 256
#define AD_MERGE_THREADS 256
#define ATT_MAX_D 256

__device__ __forceinline__ bool att_visible(int kp, int qp, int window, int sink, int span) {
    return kp >= 0 && kp <= qp && (window < 0 || qp - kp < window || kp < sink) && (span < 0 || qp - kp < span);
}

// Eight f16 values.
struct __align__(16) half8_t {
    u32 w[4];
};

// The 8 halves at p when vec (16-byte aligned), else the first n (< 8 or all 8) of them and zeros.
__device__ __forceinline__ half8_t load_half8(const u16* __restrict__ p, int n, bool vec) {
    half8_t r;
    if (vec) {
        r = *reinterpret_cast<const half8_t*>(p);
    } else {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const u32 lo = 2 * i < n ? p[2 * i] : 0, hi = 2 * i + 1 < n ? p[2 * i + 1] : 0;
            r.w[i] = lo | (hi << 16);
        }
    }
    return r;
}

__device__ __forceinline__ void unpack_half8(const half8_t& h, float* f) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        f[2 * i] = h2f((u16)(h.w[i] & 0xffff));
        f[2 * i + 1] = h2f((u16)(h.w[i] >> 16));
    }
}

// Launch: grid (n_head_kv * ceil(group / G), n_splits, n tokens), block AD_TILE. part: [n][n_head]
// [n_splits][2 + Dv] floats. qpos: [n]; base: [n] or null (every token at slot 0); a token whose
// run base .. base + n_slots does not lie within the total_slots of the caches sees no slot.
// VEC: both head dimensions are multiples of 8 (every model's), so every key and value piece is
// one 16-byte load and the element-wise fallback is not compiled in (it doubled the code, and a
// decode over a few slots is bound by fetching the kernel's instructions).
template <int G, bool VEC, int INF>
__device__ __forceinline__ void attn_decode_body(const float* __restrict__ q, const u16* __restrict__ k,
                                                 const u16* __restrict__ v, const int* __restrict__ kpos,
                                                 const int* __restrict__ qpos, const int* __restrict__ base,
                                                 float* __restrict__ part, int n_slots, int total_slots, int n_head,
                                                 int n_head_kv, int D, int Dv, float scale, int window, int sink,
                                                 int span, int split, int positional) {
    __shared__ __align__(16) float sq[G][ATT_MAX_D];  // the scaled queries
    __shared__ float sp[G][AD_TILE];                  // the tile's probabilities
    __shared__ float sred[AD_WARPS][G];
    __shared__ u32 svis[AD_WARPS];                    // the tile's visible slots, a bit each
    __shared__ float so[AD_TILE * 8];                 // the output merge, one head at a time
    pdl_enter();

    const int t = blockIdx.z, n_splits = gridDim.y;
    const int group = n_head / n_head_kv, n_chunks = (group + G - 1) / G;
    const int kvh = blockIdx.x / n_chunks, chunk = blockIdx.x % n_chunks;
    const int h0 = kvh * group + chunk * G;  // first query head of the block
    const int gc = min(G, group - chunk * G);
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int qp = qpos[t];
    const int b = base != nullptr ? base[t] : 0;
    const bool in_range = b >= 0 && (long long)b + n_slots <= (long long)total_slots;
    const int s0 = blockIdx.y * split, s1 = min(s0 + split, n_slots);
    // positional: slot i of a run never holds a position below i, so a split starting past the
    // query's position has no visible slot and is not read (a decode graph's splits cover the
    // whole cache, most of it still empty early in a sequence).
    const bool live = in_range && !(positional && s0 > qp);

    // Key pieces of 8 dimensions (thread = slot), value pieces (thread = piece pc of the rows
    // j = gr, gr + n_groups, ... of the tile).
    const int pk = (D + 7) / 8, pv = (Dv + 7) / 8;
    const bool kvec = VEC || D % 8 == 0, vvec = VEC || Dv % 8 == 0;
    const int n_groups = AD_TILE / pv, pc = tid % pv, gr = tid / pv;
    const long long k_stride = (long long)n_head_kv * D, v_stride = (long long)n_head_kv * Dv;
    constexpr int KCHUNK = INF, VUNROLL = INF;
    const u16* kb = k + ((long long)b * n_head_kv + kvh) * D;
    const u16* vb = v + ((long long)b * n_head_kv + kvh) * Dv + 8 * pc;

    float m[G], lsum[G], acc[G][8];
#pragma unroll
    for (int g = 0; g < G; ++g) {
        m[g] = neg_inf();
        lsum[g] = 0.0f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = 0.0f;
    }
    bool seen = false;  // some tile had a visible slot

    // The first tile's positions (then each tile fetches the next one's), and the scaled queries
    // (zeros past D and past the group).
    int kp = live && s0 + tid < s1 ? kpos[b + s0 + tid] : -1;
    if (live) {
        for (int i = tid; i < G * 8 * pk; i += AD_TILE) {
            const int g = i / (8 * pk), d = i % (8 * pk);
            sq[g][d] = g < gc && d < D ? q[((long long)t * n_head + h0 + g) * D + d] * scale : 0.0f;
        }
    }
    __syncthreads();

    for (int tile = s0; live && tile < s1; tile += AD_TILE) {
        const int s = tile + tid;
        const bool vis = s < s1 && att_visible(kp, qp, window, sink, span);
        kp = s + AD_TILE < s1 ? kpos[b + s + AD_TILE] : -1;
        const u32 ballot = __ballot_sync(FULL_MASK, vis);
        // (Also the barrier after the previous tile's reads of sp and svis.)
        if (!__syncthreads_or(vis)) continue;
        seen = true;
        if (lane == 0) svis[warp] = ballot;

        // Scores of slot s against the G queries.
        float sc[G];
#pragma unroll
        for (int g = 0; g < G; ++g) sc[g] = 0.0f;
        if (vis) {
            const u16* kr = kb + (long long)s * k_stride;
            for (int c = 0; c < pk; c += KCHUNK) {
                half8_t kk[KCHUNK];
#pragma unroll
                for (int i = 0; i < KCHUNK; ++i) {
                    if (c + i < pk) kk[i] = load_half8(kr + 8 * (c + i), D - 8 * (c + i), kvec);
                }
#pragma unroll
                for (int i = 0; i < KCHUNK; ++i) {
                    if (c + i < pk) {
                        float kf[8];
                        unpack_half8(kk[i], kf);
                        const int d0 = 8 * (c + i);
#pragma unroll
                        for (int g = 0; g < G; ++g) {
                            const float* qq = &sq[g][d0];
                            float a = sc[g];
#pragma unroll
                            for (int e = 0; e < 8; ++e) a = fmaf(qq[e], kf[e], a);
                            sc[g] = a;
                        }
                    }
                }
            }
        }
        // One online-softmax step for the tile: each head's tile maximum, the rescaling of what
        // came before, the tile's probabilities.
#pragma unroll
        for (int g = 0; g < G; ++g) {
            sc[g] = vis ? sc[g] : neg_inf();
            const float mw = warp_max(sc[g]);
            if (lane == 0) sred[warp][g] = mw;
        }
        __syncthreads();
#pragma unroll
        for (int g = 0; g < G; ++g) {
            float mt = sred[0][g];
#pragma unroll
            for (int w = 1; w < AD_WARPS; ++w) mt = fmaxf(mt, sred[w][g]);
            const float m_new = fmaxf(m[g], mt);  // finite: the tile has a visible slot
            const float corr = expf(m[g] - m_new);
            const float p = expf(sc[g] - m_new);
            sp[g][tid] = p;
            lsum[g] = lsum[g] * corr + p;
            m[g] = m_new;
#pragma unroll
            for (int e = 0; e < 8; ++e) acc[g][e] *= corr;
        }
        __syncthreads();

        // The tile's values, weighted.
        if (gr < n_groups) {
            for (int j0 = gr; j0 < AD_TILE; j0 += VUNROLL * n_groups) {
                half8_t vv[VUNROLL];
                bool ok[VUNROLL];
#pragma unroll
                for (int u = 0; u < VUNROLL; ++u) {
                    const int j = j0 + u * n_groups;
                    ok[u] = j < AD_TILE && ((svis[j / WARP_SIZE] >> (j % WARP_SIZE)) & 1u);
                    if (ok[u]) vv[u] = load_half8(vb + (long long)(tile + j) * v_stride, Dv - 8 * pc, vvec);
                }
#pragma unroll
                for (int u = 0; u < VUNROLL; ++u) {
                    if (ok[u]) {
                        const int j = j0 + u * n_groups;
                        float vf[8];
                        unpack_half8(vv[u], vf);
#pragma unroll
                        for (int g = 0; g < G; ++g) {
                            const float p = sp[g][j];
#pragma unroll
                            for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vf[e], acc[g][e]);
                        }
                    }
                }
            }
        }
    }

    // The block's partial per head: max (uniform over the block), the sum of the threads' sums,
    // and the output summed over the slot groups. A block that saw nothing writes (-inf, 0) only
    // (the merge gives its output weight zero and does not read it).
    if (!seen) {
        if (tid < gc) {
            float* out = part + (((long long)t * n_head + h0 + tid) * n_splits + blockIdx.y) * (2 + Dv);
            out[0] = neg_inf();
            out[1] = 0.0f;
        }
        return;
    }
    __syncthreads();  // the last tile's reads of sred are done
#pragma unroll
    for (int g = 0; g < G; ++g) {
        const float x = warp_sum(lsum[g]);
        if (lane == 0) sred[warp][g] = x;
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < G; ++g) {
        if (g >= gc) break;
        float* out = part + (((long long)t * n_head + h0 + g) * n_splits + blockIdx.y) * (2 + Dv);
        if (tid == 0) {
            float l = 0.0f;
#pragma unroll
            for (int w = 0; w < AD_WARPS; ++w) l += sred[w][g];
            out[0] = m[g];
            out[1] = l;
        }
        if (gr < n_groups) {
#pragma unroll
            for (int e = 0; e < 8; ++e) so[tid * 8 + e] = acc[g][e];
        }
        __syncthreads();
        for (int d = tid; d < Dv; d += AD_TILE) {
            float a = 0.0f;
            for (int r = 0; r < n_groups; ++r) a += so[r * pv * 8 + d];
            out[2 + d] = a;
        }
        __syncthreads();
    }
}

// attn_decode_g<G>: head dimensions multiples of 8; attn_decode_g<G>_any: any;
// attn_decode_g<G>_short: multiples of 8, fewer pieces in flight (AD_SHORT_INFLIGHT).
#define ATTN_DECODE_KERNEL_VARIANT(name, G, VEC, INF)                                                                    \
    extern "C" __global__ void __launch_bounds__(AD_TILE)                                                                \
        name(const float* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,                          \
             const int* __restrict__ kpos, const int* __restrict__ qpos, const int* __restrict__ base,                  \
             float* __restrict__ part, int n_slots, int total_slots, int n_head, int n_head_kv, int D, int Dv,          \
             float scale, int window, int sink, int span, int split, int positional) {                                  \
        attn_decode_body<G, VEC, INF>(q, k, v, kpos, qpos, base, part, n_slots, total_slots, n_head, n_head_kv, D, Dv, \
                                      scale, window, sink, span, split, positional);                                    \
    }
#define ATTN_DECODE_KERNEL(G)                                                        \
    ATTN_DECODE_KERNEL_VARIANT(attn_decode_g##G, G, true, AD_INFLIGHT(G))            \
    ATTN_DECODE_KERNEL_VARIANT(attn_decode_g##G##_any, G, false, AD_INFLIGHT(G))     \
    ATTN_DECODE_KERNEL_VARIANT(attn_decode_g##G##_short, G, true, AD_SHORT_INFLIGHT)
ATTN_DECODE_KERNEL(1)
ATTN_DECODE_KERNEL(2)
ATTN_DECODE_KERNEL(4)
ATTN_DECODE_KERNEL(8)

// Launch: grid (n_head, n tokens), block AD_MERGE_THREADS, n_splits at most AD_MAX_SPLITS.
// out: [n][n_head][Dv], lse: [n][n_head]; outq, when not null (Dv a multiple of 32): out
// quantized to Q8_1 as well (the bytes of quantize_q8_1 on out), for the next product. Each split's weight exp(max - M) is computed once; the
// warps then take every n_warps-th split (lanes split the dimensions) and meet in shared memory.
// Splits of weight zero (no visible slot) are not read past their (max, sum).
extern "C" __global__ void __launch_bounds__(AD_MERGE_THREADS)
attn_decode_merge(const float* __restrict__ part, float* __restrict__ out, float* __restrict__ lse, int n_head,
                  int n_splits, int Dv, block_q8_1* __restrict__ outq) {
    __shared__ float sw[AD_MAX_SPLITS];
    __shared__ float scratch[WARP_SIZE];
    __shared__ float sacc[AD_MERGE_THREADS / WARP_SIZE][ATT_MAX_D];
    pdl_enter();
    const int tid = threadIdx.x, lane = tid % WARP_SIZE, warp = tid / WARP_SIZE;
    const int n_warps = AD_MERGE_THREADS / WARP_SIZE;
    const long long row = (long long)blockIdx.y * n_head + blockIdx.x;
    const int stride = 2 + Dv;
    const float* ph = part + row * n_splits * stride;

    // M: the largest split maximum (block-wide).
    float mx = neg_inf();
    for (int s = tid; s < n_splits; s += AD_MERGE_THREADS) mx = fmaxf(mx, ph[(long long)s * stride]);
    mx = warp_max(mx);
    if (lane == 0) scratch[warp] = mx;
    __syncthreads();
    mx = lane < n_warps ? scratch[lane] : neg_inf();
    const float M = warp_max(mx);
    float* oh = out + row * Dv;
    if (M == neg_inf()) {
        for (int d = tid; d < Dv; d += AD_MERGE_THREADS) {
            oh[d] = 0.0f;
            if (outq != nullptr) quantize_q8_1_warp(0.0f, outq + (row * Dv + d) / 32);
        }
        if (tid == 0) lse[row] = neg_inf();
        return;
    }
    float l = 0.0f;
    for (int s = tid; s < n_splits; s += AD_MERGE_THREADS) {
        const float w = expf(ph[(long long)s * stride] - M);
        sw[s] = w;
        l += ph[(long long)s * stride + 1] * w;
    }
    const float L = block_sum(l, scratch);  // its barriers also publish sw

    float a[ATT_MAX_D / WARP_SIZE];
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / WARP_SIZE; ++i) a[i] = 0.0f;
#pragma unroll 4
    for (int s = warp; s < n_splits; s += n_warps) {
        const float w = sw[s];
        if (w == 0.0f) continue;
        const float* ps = ph + (long long)s * stride + 2;
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / WARP_SIZE; ++i) {
            const int d = lane + WARP_SIZE * i;
            if (d < Dv) a[i] = fmaf(ps[d], w, a[i]);
        }
    }
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / WARP_SIZE; ++i) {
        const int d = lane + WARP_SIZE * i;
        if (d < Dv) sacc[warp][d] = a[i];
    }
    __syncthreads();
    const float inv = 1.0f / L;
    for (int d = tid; d < Dv; d += AD_MERGE_THREADS) {
        float x = 0.0f;
#pragma unroll
        for (int w = 0; w < n_warps; ++w) x += sacc[w][d];
        oh[d] = x * inv;
        // (Dv a multiple of 32 when outq is given: whole warps, each one Q8_1 block.)
        if (outq != nullptr) quantize_q8_1_warp(x * inv, outq + (row * Dv + d) / 32);
    }
    if (tid == 0) lse[row] = M + logf(L);
}

// Attention of many queries (prefill) over the same f16 cache and masks: the query of token t
// (q: [n_q][n_head][D], at position qpos[t]) attends to every visible slot; out: [n_q][n_head][Dv].
//
// A block takes AP_Q queries of one head and walks the slots in tiles of AP_K: the tile's keys are
// staged in shared memory as f16, each thread computes AP_Q * AP_K / AP_THREADS scores (thread
// t: query t / 8, slots t % 8 + 8j), the 8 threads of a query row update its running max and
// sum (online softmax) with warp shuffles, then the tile's values replace the keys in shared
// memory and each thread accumulates Dv / 8 output dimensions of its query. Tiles no query of the
// block can see are skipped before their keys are loaded. No log-sum-exp is written (the lazy
// ratio is measured on the CPU path only).

#define AP_Q 16
#define AP_K 32
#define AP_THREADS 128
#define AP_RG 8  // threads per query row
#define AP_KV_STRIDE (ATT_MAX_D + 2)

// Launch: grid (ceil(n_q / AP_Q), n_head), block AP_THREADS.
extern "C" __global__ void __launch_bounds__(AP_THREADS)
attn_prefill(const float* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
             const int* __restrict__ kpos, const int* __restrict__ qpos, float* __restrict__ out, int n_q,
             int n_slots, int n_head, int n_head_kv, int D, int Dv, float scale, int window, int sink, int span) {
    __shared__ float sq[AP_Q][ATT_MAX_D];
    __shared__ u16 skv[AP_K][AP_KV_STRIDE];
    __shared__ float sp[AP_Q][AP_K + 1];
    __shared__ int skpos[AP_K];
    const int h = blockIdx.y, kvh = h / (n_head / n_head_kv);
    const int t0 = blockIdx.x * AP_Q;
    const int tid = threadIdx.x;
    const int qi = tid / AP_RG, g = tid % AP_RG;
    const bool q_ok = t0 + qi < n_q;
    const int qp = q_ok ? qpos[t0 + qi] : -1;

    for (int i = tid; i < AP_Q * D; i += AP_THREADS) {
        const int r = i / D, d = i % D;
        sq[r][d] = t0 + r < n_q ? q[((long long)(t0 + r) * n_head + h) * D + d] * scale : 0.0f;
    }
    // The block's positions span [qlo, qhi]; a slot is visible to some query only if kp <= qhi.
    int qhi = -1, qlo = 0x7fffffff;
    for (int r = 0; r < AP_Q && t0 + r < n_q; ++r) {
        qhi = max(qhi, qpos[t0 + r]);
        qlo = min(qlo, qpos[t0 + r]);
    }

    float o[ATT_MAX_D / AP_RG];
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / AP_RG; ++i) o[i] = 0.0f;
    float m = neg_inf(), l = 0.0f;

    for (int s0 = 0; s0 < n_slots; s0 += AP_K) {
        __syncthreads();  // the previous tile's values and probabilities are no longer read
        bool any = false;
        if (tid < AP_K) {
            const int kp = s0 + tid < n_slots ? kpos[s0 + tid] : -1;
            skpos[tid] = kp;
            // Visible to some query of the block (a superset: any position in [qlo, qhi]).
            any = kp >= 0 && kp <= qhi && (window < 0 || kp < sink || kp > qlo - window) && (span < 0 || kp > qlo - span);
        }
        if (!__syncthreads_or(any)) continue;
        for (int i = tid; i < AP_K * D; i += AP_THREADS) {
            const int j = i / D, d = i % D;
            skv[j][d] = s0 + j < n_slots ? k[((long long)(s0 + j) * n_head_kv + kvh) * D + d] : 0;
        }
        __syncthreads();
        // Scores of query qi against slots g + 8j.
        float sc[AP_K / AP_RG];
#pragma unroll
        for (int j = 0; j < AP_K / AP_RG; ++j) sc[j] = 0.0f;
        for (int d = 0; d < D; ++d) {
            const float qd = sq[qi][d];
#pragma unroll
            for (int j = 0; j < AP_K / AP_RG; ++j) sc[j] += qd * h2f(skv[g + AP_RG * j][d]);
        }
        float mt = neg_inf();
#pragma unroll
        for (int j = 0; j < AP_K / AP_RG; ++j) {
            if (!q_ok || !att_visible(skpos[g + AP_RG * j], qp, window, sink, span)) sc[j] = neg_inf();
            mt = fmaxf(mt, sc[j]);
        }
#pragma unroll
        for (int off = AP_RG / 2; off > 0; off >>= 1) mt = fmaxf(mt, __shfl_xor_sync(FULL_MASK, mt, off));
        const float m_new = fmaxf(m, mt);
        float corr = 1.0f, ps = 0.0f;
        if (m_new != neg_inf()) {
            corr = expf(m - m_new);
#pragma unroll
            for (int j = 0; j < AP_K / AP_RG; ++j) {
                const float p = expf(sc[j] - m_new);
                sp[qi][g + AP_RG * j] = p;
                ps += p;
            }
        } else {
#pragma unroll
            for (int j = 0; j < AP_K / AP_RG; ++j) sp[qi][g + AP_RG * j] = 0.0f;
        }
#pragma unroll
        for (int off = AP_RG / 2; off > 0; off >>= 1) ps += __shfl_xor_sync(FULL_MASK, ps, off);
        l = l * corr + ps;
        m = m_new;
        __syncthreads();  // keys no longer read; probabilities written
        for (int i = tid; i < AP_K * Dv; i += AP_THREADS) {
            const int j = i / Dv, d = i % Dv;
            skv[j][d] = s0 + j < n_slots ? v[((long long)(s0 + j) * n_head_kv + kvh) * Dv + d] : 0;
        }
        __syncthreads();
#pragma unroll
        for (int i = 0; i < ATT_MAX_D / AP_RG; ++i) {
            const int d = g + AP_RG * i;
            if (d < Dv) {
                float acc = o[i] * corr;
                for (int j = 0; j < AP_K; ++j) acc += sp[qi][j] * h2f(skv[j][d]);
                o[i] = acc;
            }
        }
    }
    if (!q_ok) return;
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float* orow = out + ((long long)(t0 + qi) * n_head + h) * Dv;
#pragma unroll
    for (int i = 0; i < ATT_MAX_D / AP_RG; ++i) {
        const int d = g + AP_RG * i;
        if (d < Dv) orow[d] = o[i] * inv;
    }
}
