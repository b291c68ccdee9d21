// Rotary position embedding, in place, for n_tokens vectors of n_head heads of head_dim floats
// (x: [n_tokens][n_head][head_dim]). The first n_rot dimensions of each head are rotated, the rest
// pass through. Pair i (< n_rot/2) is (2i, 2i+1) in ggml's normal mode and (i, i + n_rot/2) in
// NeoX mode; its angle is pos * freq_scale * base^(-2i/n_rot), in double precision as the CPU
// reference (ggml_kernels::ops::RopeTable) computes it, so long positions keep their accuracy.

// cos and sin of pair i's angle at position p; step = base^(-2/n_rot), computed in f64 by the
// host. step^i by repeated squaring (a few f64 products, within a few ulps of the reference's
// pow), the angle reduced to [-pi, pi] in f64, then sin and cos in f32 of the reduced angle.
// (A double pow and sincos per thread, the earlier form, made the fused decode launch 8-12 us:
// long library code, fetched cold at every layer.)
__device__ __forceinline__ void rope_angle(int i, double step, float freq_scale, int p, float& cs, float& sn) {
    double f = 1.0, b = step;
    for (int e = i; e != 0; e >>= 1) {
        if (e & 1) f *= b;
        b *= b;
    }
    const double theta = (double)p * ((double)freq_scale * f);
    const double TWO_PI = 6.283185307179586476925286766559;
    const double r = fma(-rint(theta * (1.0 / TWO_PI)), TWO_PI, theta);
    sincosf((float)r, &sn, &cs);
}

// One thread per (token, head, pair); mode 0 = normal, 1 = NeoX.
extern "C" __global__ void rope_f32(float* x, const int* __restrict__ pos, int n_tokens, int n_head,
                                    int head_dim, int n_rot, double step, float freq_scale, int mode) {
    const int half = n_rot / 2;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)n_tokens * n_head * half;
    if (idx >= total) return;
    const int i = (int)(idx % half);
    const long long th = idx / half;  // token * n_head + head
    const int t = (int)(th / n_head);
    float cs, sn;
    rope_angle(i, step, freq_scale, pos[t], cs, sn);
    float* head = x + th * head_dim;
    const int a = mode == 0 ? 2 * i : i;
    const int b = mode == 0 ? 2 * i + 1 : i + half;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * cs - x1 * sn;
    head[b] = x0 * sn + x1 * cs;
}

// Decode, fused: the attention inputs of each token t (blockIdx.y), from the Q, K and V
// projections to the cache. Block h < n_head takes query head h, block n_head + j key head j and
// value head j: the bias added (Qwen2; null when absent), the head's RMSNorm (Gemma 3's
// q_norm / k_norm; null when absent), RoPE at pos[t]; queries are written back to q, keys and
// values stored as f16 in cache slot slots[t] (kc: [slot][n_head_kv][head_dim], vc:
// [slot][n_head_kv][head_dim_v]), with kpos[slots[t]] = pos[t]. The same floats as add_bias_f32,
// rms_norm_f32, rope_f32 and kv_write_f16 in sequence, given rms_norm_f32's block size for a row
// of head_dim (head_dim rounded up to a multiple of 32), one element per thread.
// Launch: grid (n_head + n_head_kv, n_tokens), block (head_dim rounded up to 32, at most ROPE_MAX_D).
#define ROPE_MAX_D 1024
extern "C" __global__ void rope_kv_write_f16(float* q, const float* __restrict__ k, const float* __restrict__ v,
                                             const float* __restrict__ bq, const float* __restrict__ bk,
                                             const float* __restrict__ bv, const float* __restrict__ q_norm,
                                             const float* __restrict__ k_norm, float eps, u16* __restrict__ kc,
                                             u16* __restrict__ vc, int* __restrict__ kpos, const int* __restrict__ slots,
                                             const int* __restrict__ pos, int n_head, int n_head_kv, int head_dim,
                                             int head_dim_v, int n_rot, double step, float freq_scale, int mode) {
    __shared__ float scratch[32];
    __shared__ float hs[ROPE_MAX_D];
    pdl_enter();
    const int t = blockIdx.y;
    const bool is_q = blockIdx.x < n_head;
    const int hh = is_q ? blockIdx.x : blockIdx.x - n_head;
    const int i = threadIdx.x;
    const long long slot = slots[t];
    const int p = pos[t];
    if (!is_q) {
        const int v_row = n_head_kv * head_dim_v;
        for (int d = i; d < head_dim_v; d += blockDim.x) {
            float x = v[(long long)t * v_row + hh * head_dim_v + d];
            if (bv != nullptr) x += bv[hh * head_dim_v + d];
            vc[slot * v_row + hh * head_dim_v + d] = f2h(x);
        }
        if (hh == 0 && i == 0) kpos[slot] = p;
    }
    const int row = (is_q ? n_head : n_head_kv) * head_dim;
    const float* src = is_q ? q : k;
    const float* bias = is_q ? bq : bk;
    const float* nw = is_q ? q_norm : k_norm;
    const long long at = (long long)t * row + hh * head_dim;
    float x = 0.0f;
    if (i < head_dim) {
        x = src[at + i];
        if (bias != nullptr) x += bias[hh * head_dim + i];
    }
    if (nw != nullptr) {
        const float ss = block_sum(i < head_dim ? x * x : 0.0f, scratch);
        const float scale = 1.0f / sqrtf(ss / (float)head_dim + eps);
        if (i < head_dim) x = x * scale * nw[i];
    }
    if (i < head_dim) hs[i] = x;
    __syncthreads();
    const int half = n_rot / 2;
    float* qo = q + at;
    u16* ko = kc + (slot * n_head_kv + hh) * head_dim;
    if (i < half) {
        float cs, sn;
        rope_angle(i, step, freq_scale, p, cs, sn);
        const int a = mode == 0 ? 2 * i : i;
        const int b = mode == 0 ? 2 * i + 1 : i + half;
        const float x0 = hs[a], x1 = hs[b];
        const float ra = x0 * cs - x1 * sn, rb = x0 * sn + x1 * cs;
        if (is_q) {
            qo[a] = ra;
            qo[b] = rb;
        } else {
            ko[a] = f2h(ra);
            ko[b] = f2h(rb);
        }
    } else if (i >= n_rot && i < head_dim) {
        if (is_q) {
            qo[i] = x;
        } else {
            ko[i] = f2h(x);
        }
    }
}
