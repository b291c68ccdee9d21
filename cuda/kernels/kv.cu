// KV cache writes: the keys and values of n tokens (f32, k: [n][k_row], v: [n][v_row]) stored as
// f16 in the cache slots the caller chose (slots[t]), each slot remembering its position
// (kpos[slots[t]] = pos[t]). CPU reference: engine::model::kv_cache::LayerCache::write.

// Launch: grid (n), any block size.
extern "C" __global__ void kv_write_f16(const float* __restrict__ k, const float* __restrict__ v, u16* __restrict__ kc,
                                        u16* __restrict__ vc, int* __restrict__ kpos, const int* __restrict__ slots,
                                        const int* __restrict__ pos, int k_row, int v_row) {
    const int t = blockIdx.x;
    const long long s = slots[t];
    for (int i = threadIdx.x; i < k_row; i += blockDim.x) kc[s * k_row + i] = f2h(k[(long long)t * k_row + i]);
    for (int i = threadIdx.x; i < v_row; i += blockDim.x) vc[s * v_row + i] = f2h(v[(long long)t * v_row + i]);
    if (threadIdx.x == 0) kpos[s] = pos[t];
}
