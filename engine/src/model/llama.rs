//! The Llama-family forward pass: Llama 2/3, Mistral (with its sliding window when the metadata
//! sets one) and Qwen2 (Q/K/V biases, NeoX RoPE), as Hugging Face's `modeling_llama` and
//! `modeling_qwen2` define them. The embeddings, the final norm and the output projection are
//! shared with the other architectures ([`super::forward`]); this file is one decoder layer.

use ggml_kernels::ops::{rms_norm, silu};

use super::{add_bias, attend_seqs, mm, mm_gated, mm_many, row_positions, Model, ModelError, SeqBatch};

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

    // Q, K, V projections (+ biases for Qwen2). q: [n][n_head][hd], k, v: [n][n_head_kv][hd]
    let [mut q, mut k, mut v] = mm_many(m, [&w.wq.cpu(), &w.wk.cpu(), &w.wv.cpu()], &h, n)?;
    add_bias(&mut q, w.bq.as_ref());
    add_bias(&mut k, w.bk.as_ref());
    add_bias(&mut v, w.bv.as_ref());

    // RoPE at each token's position.
    for (t, pos) in row_positions(seqs).into_iter().enumerate() {
        let (qt, kt) = (&mut q[t * c.n_head * hd..(t + 1) * c.n_head * hd], &mut k[t * c.n_head_kv * hd..(t + 1) * c.n_head_kv * hd]);
        rope.apply_all(&mut [qt, kt], hd, pos as i64, m.rope_angles());
    }

    // Attention over each sequence's cache, output projection, residual.
    let attn = attend_seqs(m, seqs, il, &q, &k, &v);
    let o = mm(m, &w.wo.cpu(), &attn, n)?;
    ggml_kernels::ops::add_assign(x, &o);

    // FFN: pre-norm, SiLU gate times up, down, residual.
    rms_norm(x, &w.ffn_norm, c.rms_eps, &mut h);
    let gate = mm_gated(m, &w.ffn_gate.cpu(), &w.ffn_up.cpu(), &h, n, silu)?;
    let down = mm(m, &w.ffn_down.cpu(), &gate, n)?;
    ggml_kernels::ops::add_assign(x, &down);
    Ok(())
}
