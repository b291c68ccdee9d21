//! The Gemma 3 forward pass (text), as Hugging Face's `modeling_gemma3` defines it.
//!
//! GGUF stores Gemma's RMSNorm weights with the `+1` already added (llama.cpp's converter does it),
//! so every norm here is the plain `x / rms(x) * w`.

use ggml_kernels::ops::{gated_act, gelu_tanh, rms_norm, rms_norm_inplace, RopeTable};

use super::{attend, embed, mm, mm_many, output_logits, KvCache, Logits, Model, ModelError};

/// Evaluates `tokens` at positions `pos0..`, writing their keys and values into `cache`.
pub fn forward(m: &Model<'_>, cache: &mut KvCache, tokens: &[u32], pos0: usize, which: Logits) -> Result<Vec<f32>, ModelError> {
    let c = &m.cfg;
    let n = tokens.len();
    let (e, hd) = (c.n_embd, c.head_dim);

    // Token embeddings, scaled by sqrt(n_embd). x: [n][n_embd]
    let mut x = embed(m, tokens, c.embd_scale)?;
    let mut h = vec![0f32; n * e];

    for (il, w) in m.weights.layers.iter().enumerate() {
        let rope = RopeTable::new(c.rope_kind, c.n_rot, c.layers[il].rope_base, c.rope_freq_scale);

        // Attention RMSNorm. h: [n][n_embd]
        rms_norm(&x, &w.attn_norm, c.rms_eps, &mut h);

        // Q, K, V projections. q: [n][n_head][hd], k: [n][n_head_kv][hd], v: [n][n_head_kv][hd_v]
        let [mut q, mut k, v] = mm_many(m, [&w.wq, &w.wk, &w.wv], &h, n)?;

        // Per-head Q and K RMSNorms, then RoPE (NeoX) at each token's position.
        if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
            rms_norm_inplace(&mut q, qn, c.rms_eps);
            rms_norm_inplace(&mut k, kn, c.rms_eps);
        }
        for t in 0..n {
            rope.apply(&mut q[t * c.n_head * hd..(t + 1) * c.n_head * hd], hd, (pos0 + t) as i64);
            rope.apply(&mut k[t * c.n_head_kv * hd..(t + 1) * c.n_head_kv * hd], hd, (pos0 + t) as i64);
        }

        // Attention over the cache (sliding-window or global, as the layer's kind says).
        let attn = attend(m, cache, il, &q, &k, &v, pos0, n);

        // Output projection, post-attention norm, residual.
        let mut o = mm(m, &w.wo, &attn, n)?;
        if let Some(pn) = &w.post_attn_norm {
            rms_norm_inplace(&mut o, pn, c.rms_eps);
        }
        ggml_kernels::ops::add_assign(&mut x, &o);

        // FFN: pre-norm, GELU-tanh gate times up, down, post-norm, residual.
        rms_norm(&x, &w.ffn_norm, c.rms_eps, &mut h);
        let [mut gate, up] = mm_many(m, [&w.ffn_gate, &w.ffn_up], &h, n)?;
        gated_act(&mut gate, &up, gelu_tanh);
        let mut down = mm(m, &w.ffn_down, &gate, n)?;
        if let Some(pn) = &w.post_ffw_norm {
            rms_norm_inplace(&mut down, pn, c.rms_eps);
        }
        ggml_kernels::ops::add_assign(&mut x, &down);
    }

    // Final norm and the (tied) output projection.
    output_logits(m, &x, n, which)
}
