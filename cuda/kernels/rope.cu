// Rotary position embedding, in place, for n_tokens vectors of n_head heads of head_dim floats
// (x: [n_tokens][n_head][head_dim]). The first n_rot dimensions of each head are rotated, the rest
// pass through. Pair i (< n_rot/2) is (2i, 2i+1) in ggml's normal mode and (i, i + n_rot/2) in
// NeoX mode; its angle is pos * freq_scale * base^(-2i/n_rot), computed in double precision as the
// CPU reference (ggml_kernels::ops::RopeTable) does, so long positions keep their accuracy.

// One thread per (token, head, pair); mode 0 = normal, 1 = NeoX.
extern "C" __global__ void rope_f32(float* x, const int* __restrict__ pos, int n_tokens, int n_head,
                                    int head_dim, int n_rot, float base, float freq_scale, int mode) {
    const int half = n_rot / 2;
    const long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long total = (long long)n_tokens * n_head * half;
    if (idx >= total) return;
    const int i = (int)(idx % half);
    const long long th = idx / half;  // token * n_head + head
    const int t = (int)(th / n_head);
    const double inv_freq = (double)freq_scale * pow((double)base, -2.0 * (double)i / (double)n_rot);
    const double theta = (double)pos[t] * inv_freq;
    double s, c;
    sincos(theta, &s, &c);
    const float cs = (float)c, sn = (float)s;
    float* head = x + th * head_dim;
    const int a = mode == 0 ? 2 * i : i;
    const int b = mode == 0 ? 2 * i + 1 : i + half;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * cs - x1 * sn;
    head[b] = x0 * sn + x1 * cs;
}
