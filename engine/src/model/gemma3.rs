//! The Gemma 3 forward pass (text), as Hugging Face's `modeling_gemma3` defines it.
//!
//! GGUF stores Gemma's RMSNorm weights with the `+1` already added (llama.cpp's converter does it),
//! so every norm here is the plain `x / rms(x) * w`. The embeddings (scaled by sqrt(n_embd)), the
//! final norm and the tied output projection are shared with the other architectures
//! ([`super::forward`]); this file is one decoder layer, as ops of [`Exec`] (see
//! [`super::exec`]: every thread of a team runs it, each op sharing its work out).

use ggml_kernels::ops::{gelu_tanh, gelu_tanh_f16};
use ggml_kernels::GgmlType;

use super::exec::{Acts, Exec, Seqs};
use super::ModelError;

/// Decoder layer `il` over the hidden states `a.x` (`[n][n_embd]`, the rows of `seqs` in order),
/// writing each sequence's keys and values into its cache.
pub(crate) fn layer(ex: &Exec<'_, '_, '_>, il: usize, a: &Acts, seqs: &Seqs<'_, '_>) -> Result<(), ModelError> {
    let w = &ex.m.weights.layers[il];

    // Attention RMSNorm. h: [n][n_embd]
    ex.rms_norm(&a.x, &w.attn_norm, &a.h);

    // Q, K, V projections. q: [n][n_head][hd], k: [n][n_head_kv][hd], v: [n][n_head_kv][hd_v]
    ex.mm_many([&ex.m.view(&w.wq), &ex.m.view(&w.wk), &ex.m.view(&w.wv)], &a.h, [&a.q, &a.k, &a.v])?;

    // Per-head Q and K RMSNorms, then RoPE (NeoX) at each token's position.
    let qk_norms = w.q_norm.as_ref().zip(w.k_norm.as_ref());
    ex.norm_rope(&a.q, &a.k, qk_norms, &ex.m.rope[il], &a.pos);

    // Attention over each sequence's cache (sliding-window or global, as the layer's kind says).
    ex.attend(seqs, il, &a.q, &a.k, &a.v, &a.attn);

    // Output projection, post-attention norm, residual.
    ex.mm(&ex.m.view(&w.wo), &a.attn, &a.o)?;
    ex.rms_norm_inplace(&a.o, w.post_attn_norm.as_ref());
    ex.add(&a.x, &a.o);

    // FFN: pre-norm, GELU-tanh gate times up, down, post-norm, residual. GELU from ggml's f16
    // table, as llama.cpp computes it, where the products round their activations anyway
    // (quantized or f16 weights); the exact GELU on the exact path and with f32 weights, whose
    // products are exact.
    ex.rms_norm(&a.x, &w.ffn_norm, &a.h);
    let (wg, wu) = (ex.m.view(&w.ffn_gate), ex.m.view(&w.ffn_up));
    let gelu = if ex.m.exact_matmul || wg.ty == GgmlType::F32 { gelu_tanh } else { gelu_tanh_f16 };
    ex.mm_gated(&wg, &wu, &a.h, gelu, &a.ff)?;
    ex.mm(&ex.m.view(&w.ffn_down), &a.ff, &a.o)?;
    ex.rms_norm_inplace(&a.o, w.post_ffw_norm.as_ref());
    ex.add(&a.x, &a.o);
    Ok(())
}
