// Single-query attention (decode) over an f16 KV cache, with causal, window and sink+window
// masks, returning each head's output and the log-sum-exp of its scaled, masked scores.
// CPU reference: ggml_kernels::attention::attention (one query row).
//
// Cache layout: k [slot][n_head_kv][D], v [slot][n_head_kv][Dv] (f16), kpos [slot] (the absolute
// position a slot holds; negative when empty). Query head h reads KV head h / (n_head / n_head_kv).
// A slot at position kp is visible from the query position qp when
//   kp >= 0 && kp <= qp && (window < 0 || qp - kp < window || kp < sink)
// (window < 0: no window).
//
// Two passes (split-K, "flash decoding"): attn_decode_partial gives each (head, run of `split`
// slots) to one block of ATT_WARPS warps; a warp takes one slot at a time (lanes split the head
// dimension, so the row reads are coalesced) and keeps a running max, sum and weighted V (online
// softmax); the warps then merge into the block's partial (max, sum, o[Dv]). attn_decode_combine
// merges the partials of each head, normalises and writes the log-sum-exp.

#define ATT_WARPS 4
#define ATT_MAX_D 256
#define ATT_PER_LANE (ATT_MAX_D / WARP_SIZE)

// Merges head h's n_splits partials into out[h][0..Dv] and lse[h], and when outq is not null
// quantizes out[h] to Q8_1 blocks there (Dv a multiple of 32: each warp's run of 32 outputs is one
// block), the bytes quantize_q8_1 would give for out. `fresh`: read the partials past the L1
// (they were written by other blocks of the running kernel).
__device__ __forceinline__ float part_at(const float* p, bool fresh) {
    return fresh ? *(volatile const float*)p : *p;
}

__device__ __forceinline__ void combine_head(const float* part, float* __restrict__ out, float* __restrict__ lse, int n_splits,
                                             int Dv, block_q8_1* __restrict__ outq, int h, bool fresh) {
    const int lane = threadIdx.x % WARP_SIZE;
    const float* ph = part + (long long)h * n_splits * (2 + Dv);
    float M = neg_inf();
    for (int s = 0; s < n_splits; ++s) M = fmaxf(M, part_at(ph + (long long)s * (2 + Dv), fresh));
    float* oh = out + (long long)h * Dv;
    // Whole warps step together (d0: the warp's first output), so a warp can quantize its run.
    if (M == neg_inf()) {
        for (int d0 = threadIdx.x - lane; d0 < Dv; d0 += blockDim.x) {
            if (d0 + lane < Dv) oh[d0 + lane] = 0.0f;
            if (outq != nullptr) quantize_q8_1_warp(0.0f, outq + ((long long)h * Dv + d0) / 32);
        }
        if (threadIdx.x == 0) lse[h] = neg_inf();
        return;
    }
    float L = 0.0f;
    for (int s = 0; s < n_splits; ++s) {
        const float* ps = ph + (long long)s * (2 + Dv);
        L += part_at(ps + 1, fresh) * expf(part_at(ps, fresh) - M);
    }
    const float inv = 1.0f / L;
    for (int d0 = threadIdx.x - lane; d0 < Dv; d0 += blockDim.x) {
        const int d = d0 + lane;
        float o = 0.0f;
        if (d < Dv) {
            float acc = 0.0f;
            for (int s = 0; s < n_splits; ++s) {
                const float* ps = ph + (long long)s * (2 + Dv);
                acc += part_at(ps + 2 + d, fresh) * expf(part_at(ps, fresh) - M);
            }
            o = acc * inv;
            oh[d] = o;
        }
        if (outq != nullptr) quantize_q8_1_warp(o, outq + ((long long)h * Dv + d0) / 32);
    }
    if (threadIdx.x == 0) lse[h] = M + logf(L);
}

// Launch: grid (n_head, n_splits = ceil(n_slots / split) or 1), block (32 * ATT_WARPS); the caller
// picks `split` (slots per block) from the slot count: short runs keep many blocks in flight, long
// contexts keep the number of partials the combine pass reads bounded.
// part: [n_head][n_splits][2 + Dv] floats (max, sum, unnormalised output). When qpos_dev is not
// null the query position is read from it instead of qpos (a captured CUDA graph replays the
// same arguments every token). When sync is not null the partials are also combined into out,
// lse and outq (as attn_decode_combine; decode: one launch instead of two).
extern "C" __global__ void __launch_bounds__(WARP_SIZE * ATT_WARPS)
attn_decode_partial(const float* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
                    const int* __restrict__ kpos, float* __restrict__ part, int n_slots, int n_head,
                    int n_head_kv, int D, int Dv, float scale, int qpos, int window, int sink,
                    const int* __restrict__ qpos_dev, int split, unsigned int* sync, float* __restrict__ out,
                    float* __restrict__ lse, block_q8_1* __restrict__ outq) {
    if (qpos_dev != nullptr) qpos = *qpos_dev;
    __shared__ float sm_m[ATT_WARPS], sm_l[ATT_WARPS];
    __shared__ float sm_o[ATT_WARPS][ATT_MAX_D];
    const int h = blockIdx.x, n_splits = gridDim.y;
    const int kvh = h / (n_head / n_head_kv);
    const int lane = threadIdx.x % WARP_SIZE, warp = threadIdx.x / WARP_SIZE;

    float qr[ATT_PER_LANE], o[ATT_PER_LANE];
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; ++i) {
        const int d = lane + WARP_SIZE * i;
        qr[i] = d < D ? q[(long long)h * D + d] : 0.0f;
        o[i] = 0.0f;
    }
    float m = neg_inf(), l = 0.0f;
    const int s0 = blockIdx.y * split;
    const int s1 = min(s0 + split, n_slots);
    for (int s = s0 + warp; s < s1; s += ATT_WARPS) {
        const int kp = kpos[s];
        const bool visible = kp >= 0 && kp <= qpos && (window < 0 || qpos - kp < window || kp < sink);
        if (!visible) continue;  // the same for the whole warp
        const u16* kr = k + ((long long)s * n_head_kv + kvh) * D;
        float dot = 0.0f;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; ++i) {
            const int d = lane + WARP_SIZE * i;
            if (d < D) dot += qr[i] * h2f(kr[d]);
        }
        const float score = warp_sum(dot) * scale;
        const float m_new = fmaxf(m, score);
        const float corr = expf(m - m_new);
        const float p = expf(score - m_new);
        l = l * corr + p;
        const u16* vr = v + ((long long)s * n_head_kv + kvh) * Dv;
#pragma unroll
        for (int i = 0; i < ATT_PER_LANE; ++i) {
            const int d = lane + WARP_SIZE * i;
            if (d < Dv) o[i] = o[i] * corr + p * h2f(vr[d]);
        }
        m = m_new;
    }

    // Merge the warps.
    if (lane == 0) {
        sm_m[warp] = m;
        sm_l[warp] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_PER_LANE; ++i) {
        const int d = lane + WARP_SIZE * i;
        if (d < Dv) sm_o[warp][d] = o[i];
    }
    __syncthreads();
    float M = neg_inf();
#pragma unroll
    for (int w = 0; w < ATT_WARPS; ++w) M = fmaxf(M, sm_m[w]);
    float* pout = part + ((long long)h * n_splits + blockIdx.y) * (2 + Dv);
    if (M == neg_inf()) {
        for (int d = threadIdx.x; d < Dv; d += blockDim.x) pout[2 + d] = 0.0f;
        if (threadIdx.x == 0) {
            pout[0] = neg_inf();
            pout[1] = 0.0f;
        }
    } else {
        float c[ATT_WARPS];
        float L = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; ++w) {
            c[w] = expf(sm_m[w] - M);
            L += sm_l[w] * c[w];
        }
        for (int d = threadIdx.x; d < Dv; d += blockDim.x) {
            float acc = 0.0f;
#pragma unroll
            for (int w = 0; w < ATT_WARPS; ++w) acc += sm_o[w][d] * c[w];
            pout[2 + d] = acc;
        }
        if (threadIdx.x == 0) {
            pout[0] = M;
            pout[1] = L;
        }
    }
    if (sync == nullptr) return;
    // Combined here (sync: n_head zeroed counters): the last of the head's blocks to publish its
    // partial merges them all, as attn_decode_combine would, and resets the head's counter.
    __shared__ bool last;
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last = atomicAdd(&sync[h], 1u) == (unsigned int)(n_splits - 1);
    __syncthreads();
    if (!last) return;
    __threadfence();
    combine_head(part, out, lse, n_splits, Dv, outq, h, true);
    if (threadIdx.x == 0) sync[h] = 0;
}

// Launch: grid (n_head), block (any multiple of 32). out: [n_head][Dv], lse: [n_head]; outq as
// combine_head.
extern "C" __global__ void attn_decode_combine(const float* __restrict__ part, float* __restrict__ out,
                                               float* __restrict__ lse, int n_splits, int Dv,
                                               block_q8_1* __restrict__ outq) {
    combine_head(part, out, lse, n_splits, Dv, outq, blockIdx.x, false);
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

__device__ __forceinline__ bool att_visible(int kp, int qp, int window, int sink) {
    return kp >= 0 && kp <= qp && (window < 0 || qp - kp < window || kp < sink);
}

// Launch: grid (ceil(n_q / AP_Q), n_head), block AP_THREADS.
extern "C" __global__ void __launch_bounds__(AP_THREADS)
attn_prefill(const float* __restrict__ q, const u16* __restrict__ k, const u16* __restrict__ v,
             const int* __restrict__ kpos, const int* __restrict__ qpos, float* __restrict__ out, int n_q,
             int n_slots, int n_head, int n_head_kv, int D, int Dv, float scale, int window, int sink) {
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
            any = kp >= 0 && kp <= qhi && (window < 0 || kp < sink || kp > qlo - window);
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
            if (!q_ok || !att_visible(skpos[g + AP_RG * j], qp, window, sink)) sc[j] = neg_inf();
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
