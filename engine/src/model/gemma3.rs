//! The Gemma 3 forward pass (text), as Hugging Face's `modeling_gemma3` defines it.
//!
//! GGUF stores Gemma's RMSNorm weights with the `+1` already added (llama.cpp's converter does it),
//! so every norm here is the plain `x / rms(x) * w`. The embeddings (scaled by sqrt(n_embd)), the
//! final norm and the tied output projection are shared with the other architectures
//! ([`super::forward`]); this file is one decoder layer.

use ggml_kernels::ops::{gelu_tanh, gelu_tanh_f16, rms_norm, rms_norm_inplace};
use ggml_kernels::GgmlType;

use super::{attend_seqs, mm, mm_gated, mm_many, row_positions, Model, ModelError, SeqBatch};

/// Decoder layer `il` over the hidden states `x` (`[n][n_embd]`, the rows of `seqs` in order),
/// writing each sequence's keys and values into its cache.
pub fn layer(m: &Model<'_>, il: usize, x: &mut [f32], seqs: &mut [SeqBatch<'_>]) -> Result<(), ModelError> {
    let c = &m.cfg;
    let w = &m.weights.layers[il];
    let (e, hd) = (c.n_embd, c.head_dim);
    let n = x.len() / e;
    let rope = &m.rope[il];

    // Attention RMSNorm. h: [n][n_embd]
    let mut h = vec![0f32; n * e];
    rms_norm(x, &w.attn_norm, c.rms_eps, &mut h);

    // Q, K, V projections. q: [n][n_head][hd], k: [n][n_head_kv][hd], v: [n][n_head_kv][hd_v]
    let [mut q, mut k, v] = mm_many(m, [&w.wq.cpu(), &w.wk.cpu(), &w.wv.cpu()], &h, n)?;

    // Per-head Q and K RMSNorms, then RoPE (NeoX) at each token's position.
    if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
        rms_norm_inplace(&mut q, qn, c.rms_eps);
        rms_norm_inplace(&mut k, kn, c.rms_eps);
    }
    for (t, pos) in row_positions(seqs).into_iter().enumerate() {
        let (qt, kt) = (&mut q[t * c.n_head * hd..(t + 1) * c.n_head * hd], &mut k[t * c.n_head_kv * hd..(t + 1) * c.n_head_kv * hd]);
        rope.apply_all(&mut [qt, kt], hd, pos as i64, m.rope_angles());
    }

    // Attention over each sequence's cache (sliding-window or global, as the layer's kind says).
    let attn = attend_seqs(m, seqs, il, &q, &k, &v);

    // Output projection, post-attention norm, residual.
    let mut o = mm(m, &w.wo.cpu(), &attn, n)?;
    if let Some(pn) = &w.post_attn_norm {
        rms_norm_inplace(&mut o, pn, c.rms_eps);
    }
    ggml_kernels::ops::add_assign(x, &o);

    // FFN: pre-norm, GELU-tanh gate times up, down, post-norm, residual.
    rms_norm(x, &w.ffn_norm, c.rms_eps, &mut h);
    // GELU from ggml's f16 table, as llama.cpp computes it, where the products round their
    // activations anyway (quantized or f16 weights); the exact GELU on the exact path and with
    // f32 weights, whose products are exact.
    let (wg, wu) = (w.ffn_gate.cpu(), w.ffn_up.cpu());
    let gelu = if m.exact_matmul || wg.ty == GgmlType::F32 { gelu_tanh } else { gelu_tanh_f16 };
    let gate = mm_gated(m, &wg, &wu, &h, n, gelu)?;
    let mut down = mm(m, &w.ffn_down.cpu(), &gate, n)?;
    if let Some(pn) = &w.post_ffw_norm {
        rms_norm_inplace(&mut down, pn, c.rms_eps);
    }
    ggml_kernels::ops::add_assign(x, &down);
    Ok(())
}
