//! The Llama-family forward pass: Llama 2/3, Mistral (with its sliding window when the metadata
//! sets one) and Qwen2 (Q/K/V biases, NeoX RoPE), as Hugging Face's `modeling_llama` and
//! `modeling_qwen2` define them. The embeddings, the final norm and the output projection are
//! shared with the other architectures ([`super::forward`]); this file is one decoder layer, as
//! ops of [`Exec`] (see [`super::exec`]: every thread of a team runs it, each op sharing its
//! work out).

use ggml_kernels::ops::silu;

use super::exec::{Acts, Exec, Seqs};
use super::ModelError;

/// Decoder layer `il` over the hidden states `a.x` (`[n][n_embd]`, the rows of `seqs` in order),
/// writing each sequence's keys and values into its cache.
pub(crate) fn layer(ex: &Exec<'_, '_, '_>, il: usize, a: &Acts, seqs: &Seqs<'_, '_>) -> Result<(), ModelError> {
    let w = &ex.m.weights.layers[il];

    // Attention RMSNorm. h: [n][n_embd]
    ex.rms_norm(&a.x, &w.attn_norm, &a.h);

    // Q, K, V projections (+ biases for Qwen2). q: [n][n_head][hd], k, v: [n][n_head_kv][hd]
    ex.mm_many([&ex.m.view(&w.wq), &ex.m.view(&w.wk), &ex.m.view(&w.wv)], &a.h, [&a.q, &a.k, &a.v])?;
    ex.add_bias(&a.q, w.bq.as_ref());
    ex.add_bias(&a.k, w.bk.as_ref());
    ex.add_bias(&a.v, w.bv.as_ref());

    // RoPE at each token's position.
    ex.norm_rope(&a.q, &a.k, None, &ex.m.rope[il], &a.pos);

    // Attention over each sequence's cache, output projection, residual.
    ex.attend(seqs, il, &a.q, &a.k, &a.v, &a.attn);
    ex.mm(&ex.m.view(&w.wo), &a.attn, &a.o)?;
    ex.add(&a.x, &a.o);

    // FFN: pre-norm, SiLU gate times up, down, residual.
    ex.rms_norm(&a.x, &w.ffn_norm, &a.h);
    ex.mm_gated(&ex.m.view(&w.ffn_gate), &ex.m.view(&w.ffn_up), &a.h, silu, &a.ff)?;
    ex.mm(&ex.m.view(&w.ffn_down), &a.ff, &a.o)?;
    ex.add(&a.x, &a.o);
    Ok(())
}
