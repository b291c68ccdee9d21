//! The Llama-family forward pass: Llama 2/3, Mistral (with its sliding window when the metadata
//! sets one) and Qwen2 (Q/K/V biases, NeoX RoPE), as Hugging Face's `modeling_llama` and
//! `modeling_qwen2` define them.

use ggml_kernels::ops::{gated_act, rms_norm, silu, RopeTable};

use super::{add_bias, attend, embed, mm, mm_many, output_logits, KvCache, Logits, Model, ModelError};

/// Evaluates `tokens` at positions `pos0..`, writing their keys and values into `cache`.
pub fn forward(m: &Model<'_>, cache: &mut KvCache, tokens: &[u32], pos0: usize, which: Logits) -> Result<Vec<f32>, ModelError> {
    let c = &m.cfg;
    let n = tokens.len();
    let (e, hd) = (c.n_embd, c.head_dim);

    // Token embeddings. x: [n][n_embd]
    let mut x = embed(m, tokens, c.embd_scale)?;
    let mut h = vec![0f32; n * e];

    for (il, w) in m.weights.layers.iter().enumerate() {
        let rope = RopeTable::new(c.rope_kind, c.n_rot, c.layers[il].rope_base, c.rope_freq_scale);

        // Attention RMSNorm. h: [n][n_embd]
        rms_norm(&x, &w.attn_norm, c.rms_eps, &mut h);

        // Q, K, V projections (+ biases for Qwen2). q: [n][n_head][hd], k, v: [n][n_head_kv][hd]
        let [mut q, mut k, mut v] = mm_many(m, [&w.wq, &w.wk, &w.wv], &h, n)?;
        add_bias(&mut q, w.bq.as_ref());
        add_bias(&mut k, w.bk.as_ref());
        add_bias(&mut v, w.bv.as_ref());

        // RoPE at each token's position.
        for t in 0..n {
            rope.apply(&mut q[t * c.n_head * hd..(t + 1) * c.n_head * hd], hd, (pos0 + t) as i64);
            rope.apply(&mut k[t * c.n_head_kv * hd..(t + 1) * c.n_head_kv * hd], hd, (pos0 + t) as i64);
        }

        // Attention over the cache, output projection, residual.
        let attn = attend(m, cache, il, &q, &k, &v, pos0, n);
        let o = mm(m, &w.wo, &attn, n)?;
        ggml_kernels::ops::add_assign(&mut x, &o);

        // FFN: pre-norm, SiLU gate times up, down, residual.
        rms_norm(&x, &w.ffn_norm, c.rms_eps, &mut h);
        let [mut gate, up] = mm_many(m, [&w.ffn_gate, &w.ffn_up], &h, n)?;
        gated_act(&mut gate, &up, silu);
        let down = mm(m, &w.ffn_down, &gate, n)?;
        ggml_kernels::ops::add_assign(&mut x, &down);
    }

    // Final norm and output projection.
    output_logits(m, &x, n, which)
}
