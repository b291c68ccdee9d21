//! The forward pass on the GPU, for every architecture of [`crate::model`]: Gemma 3 and the
//! Llama family (Llama 2/3, Mistral, Qwen2). The steps only one architecture has are data: the
//! weights it lacks are `None` (biases: Qwen2; Q/K norms and post-norms: Gemma 3), and the
//! configuration carries the RoPE kind, the embedding scale and each layer's window and RoPE
//! base, exactly as the CPU passes (`model/gemma3.rs`, `model/llama.rs`) read them.

use engine_cuda::{DeviceBuffer, GatedAct, MatmulScratch, QkvExtras, RopeParams};
use ggml_kernels::attention::AttnShape;

use super::{Attend, Batch, GpuError, GpuLayerCache, GpuModel};
use crate::lighttransfer::LazyProbe;
use crate::model::config::Arch;
use crate::model::Logits;

/// Evaluates the batch's tokens (ids, positions and slots already uploaded), writing their keys
/// and values into `cache`; returns the logits `which` asks for.
/// With `probe` (the LightTransfer-Test probe and the sequence whose prompt this batch ends),
/// each candidate layer's lazy ratio is measured right after its attention.
pub(super) fn forward(
    m: &GpuModel,
    cache: &mut [GpuLayerCache],
    b: &mut Batch,
    mm: &mut MatmulScratch,
    part: &mut DeviceBuffer<f32>,
    probe: Option<(&mut LazyProbe, usize)>,
    which: Logits,
) -> Result<Vec<f32>, GpuError> {
    blocks(m, cache, b, mm, part, probe)?;
    output(m, b, mm, which)
}

/// One decode step's launches, from the embedding to the logits in `b.logits`: nothing is
/// allocated, copied or synchronized, so they can be captured into a CUDA graph and replayed
/// with new ids, positions and slots in the batch's buffers.
pub(super) fn decode_launches(
    m: &GpuModel,
    cache: &mut [GpuLayerCache],
    b: &mut Batch,
    mm: &mut MatmulScratch,
    part: &mut DeviceBuffer<f32>,
) -> Result<(), GpuError> {
    blocks(m, cache, b, mm, part, None)?;
    let (be, c) = (&m.be, &m.cfg);
    let (Some(logits), Some(dq), Some((nonfinite, _))) = (b.logits.as_mut(), b.dq.as_mut(), b.nonfinite.as_mut()) else {
        return Err(GpuError::Unsupported("decode buffers missing".into()));
    };
    be.add_rms_norm_q8_1(&mut b.x, None, &m.output_norm, c.rms_eps, &mut dq.embd)?;
    be.matvec_checked(m.output_matrix(), &dq.embd, logits, nonfinite)?;
    Ok(())
}

/// The transformer blocks: embeddings in, the residual stream `b.x` out.
fn blocks(
    m: &GpuModel,
    cache: &mut [GpuLayerCache],
    b: &mut Batch,
    mm: &mut MatmulScratch,
    part: &mut DeviceBuffer<f32>,
    mut probe: Option<(&mut LazyProbe, usize)>,
) -> Result<(), GpuError> {
    let (be, c) = (&m.be, &m.cfg);
    let n = b.n;
    let act = match c.arch {
        Arch::Gemma3 => GatedAct::GeluTanh,
        Arch::Llama | Arch::Qwen2 => GatedAct::Silu,
    };
    let shape = AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, head_dim_v: c.head_dim_v, scale: c.attn_scale };

    // Token embeddings (Gemma: times sqrt(n_embd)). x: [n][n_embd]
    be.get_rows(&m.token_embd, &b.ids, c.embd_scale.unwrap_or(1.0), &mut b.x)?;

    for (il, (w, kv)) in m.layers.iter().zip(cache.iter_mut()).enumerate() {
        let rope = |n_head| RopeParams {
            kind: c.rope_kind,
            n_head,
            head_dim: c.head_dim,
            n_rot: c.n_rot,
            base: c.layers[il].rope_base,
            freq_scale: c.rope_freq_scale,
        };

        // Attention RMSNorm. h: [n][n_embd]. Decode goes straight to Q8_1, in one launch with the
        // previous block's residual addition (deferred from its end).
        match b.dq.as_mut() {
            Some(dq) => be.add_rms_norm_q8_1(&mut b.x, (il > 0).then_some(&b.o), &w.attn_norm, c.rms_eps, &mut dq.embd)?,
            None => be.rms_norm(&b.x, &w.attn_norm, c.rms_eps, &mut b.h)?,
        }

        // The layer's matrices, with their f16 copies for prefill when kept (wq wk wv wo gate up down).
        let w16 = |i: usize| w.w16.get(i);

        // Q, K, V projections, + biases (Qwen2). q: [n][n_head][hd], k, v: [n][n_head_kv][hd]
        // Per-head Q and K RMSNorms (Gemma 3), then RoPE at each token's position. Keys and values
        // into the cache (the ring's batch margin keeps what earlier queries of the batch still
        // need). Decode does each of these in one launch: Q, K and V as one product over the input
        // quantized once, then biases, norms, RoPE and the cache write together.
        if let Some(dq) = b.dq.as_mut() {
            be.matvec_multi(&[&w.wq, &w.wk, &w.wv], &dq.embd, &mut [&mut b.q, &mut b.k, &mut b.v])?;
            let extras = QkvExtras {
                bq: w.bq.as_ref(),
                bk: w.bk.as_ref(),
                bv: w.bv.as_ref(),
                q_norm: w.q_norm.as_ref().filter(|_| w.k_norm.is_some()),
                k_norm: w.k_norm.as_ref().filter(|_| w.q_norm.is_some()),
                eps: c.rms_eps,
            };
            be.rope_kv_write(
                &rope(c.n_head),
                c.n_head_kv,
                c.head_dim_v,
                &extras,
                &mut b.q,
                &b.k,
                &b.v,
                &b.slots[kv.slot_group],
                &b.pos,
                &mut kv.k,
                &mut kv.v,
                &mut kv.pos,
            )?;
        } else {
            be.matmul_w16(&w.wq, w16(0), &b.h, n, mm, &mut b.q)?;
            be.matmul_w16(&w.wk, w16(1), &b.h, n, mm, &mut b.k)?;
            be.matmul_w16(&w.wv, w16(2), &b.h, n, mm, &mut b.v)?;
            for (x, bias) in [(&mut b.q, &w.bq), (&mut b.k, &w.bk), (&mut b.v, &w.bv)] {
                if let Some(bias) = bias {
                    be.add_bias(x, bias)?;
                }
            }
            if let (Some(qn), Some(kn)) = (&w.q_norm, &w.k_norm) {
                be.rms_norm_inplace(&mut b.q, qn, c.rms_eps)?;
                be.rms_norm_inplace(&mut b.k, kn, c.rms_eps)?;
            }
            be.rope(&mut b.q, &b.pos, &rope(c.n_head))?;
            be.rope(&mut b.k, &b.pos, &rope(c.n_head_kv))?;
            be.kv_write(&b.k, &b.v, &b.slots[kv.slot_group], &b.pos, &mut kv.k, &mut kv.v, &mut kv.pos)?;
        }

        // Attention with the layer's mask. attn: [n][n_head][hd_v]. A decode step (one token, or
        // one token of each sequence) reads each token's sequence from the batch's bases on the
        // device (the graph replays it); a prompt chunk attends to its sequence's run of slots.
        let mask = kv.kind.mask();
        // Decode quantizes the attention output for the output projection in the attention's
        // own launch when each head is a whole number of Q8_1 blocks, else separately.
        let fused_q8 = c.head_dim_v % 32 == 0;
        match b.attend {
            Attend::One(seq) if n > 1 => {
                let run = seq * kv.n_slots..(seq + 1) * kv.n_slots;
                be.attention_prefill_slots(&shape, &b.q, &b.pos, &kv.k, &kv.v, &kv.pos, run, mask, &mut b.attn)?;
            }
            _ => be.attention_decode_batch(
                &shape,
                &b.q,
                &b.pos,
                &b.bases[kv.slot_group],
                kv.n_slots,
                &kv.k,
                &kv.v,
                &kv.pos,
                mask,
                true,
                part,
                &mut b.attn,
                &mut b.lse,
                b.dq.as_mut().filter(|_| fused_q8).map(|dq| &mut dq.attn),
            )?,
        }
        if let Some(dq) = b.dq.as_mut().filter(|_| !fused_q8) {
            be.quantize_q8_1(&b.attn, &mut dq.attn)?;
        }

        // LightTransfer-Test: the layer's lazy ratio from the prompt's last queries.
        if let Some((p, seq)) = probe.as_mut() {
            super::probe::measure(m, kv, b, *seq, il, p)?;
        }

        // Output projection, post-attention norm (Gemma 3), residual.
        if let Some(dq) = b.dq.as_mut() {
            be.matvec(&w.wo, &dq.attn, &mut b.o)?;
        } else {
            be.matmul_w16(&w.wo, w16(3), &b.attn, n, mm, &mut b.o)?;
        }
        if let Some(pn) = &w.post_attn_norm {
            be.rms_norm_inplace(&mut b.o, pn, c.rms_eps)?;
        }

        // FFN: residual, pre-norm, act(gate) * up (GELU-tanh: Gemma 3; SiLU: Llama), down,
        // post-norm (Gemma 3), residual. Decode fuses the residual addition with the norm and
        // its quantization, and gate, up, the activation and its quantization in one launch.
        if let Some(dq) = b.dq.as_mut() {
            be.add_rms_norm_q8_1(&mut b.x, Some(&b.o), &w.ffn_norm, c.rms_eps, &mut dq.embd)?;
            be.gate_up_act_q8_1(&w.ffn_gate, &w.ffn_up, &dq.embd, act, &mut b.gate, &mut dq.ff_sync, &mut dq.ff)?;
            be.matvec(&w.ffn_down, &dq.ff, &mut b.o)?;
        } else {
            be.add(&mut b.x, &b.o)?;
            be.rms_norm(&b.x, &w.ffn_norm, c.rms_eps, &mut b.h)?;
            be.matmul_w16(&w.ffn_gate, w16(4), &b.h, n, mm, &mut b.gate)?;
            be.matmul_w16(&w.ffn_up, w16(5), &b.h, n, mm, &mut b.up)?;
            be.gated_act(&mut b.gate, &b.up, act)?;
            be.matmul_w16(&w.ffn_down, w16(6), &b.gate, n, mm, &mut b.o)?;
        }
        if let Some(pn) = &w.post_ffw_norm {
            be.rms_norm_inplace(&mut b.o, pn, c.rms_eps)?;
        }
        // (Decode defers this addition to the next block's fused norm.)
        if b.dq.is_none() || il + 1 == m.layers.len() {
            be.add(&mut b.x, &b.o)?;
        }
    }
    Ok(())
}

/// Final norm and output projection of the rows `which` asks for, to the host.
fn output(m: &GpuModel, b: &mut Batch, mm: &mut MatmulScratch, which: Logits) -> Result<Vec<f32>, GpuError> {
    let (be, c) = (&m.be, &m.cfg);
    let n = b.n;

    // Final norm and output projection (tied: the embedding matrix) of the rows asked for.
    let rows = which.rows(n);
    if rows.is_empty() {
        be.synchronize()?;
        return Ok(Vec::new());
    }
    if rows.len() == n && matches!(b.attend, Attend::EachOwn) {
        // Several sequences' next tokens: the norm into the batch's `h`, the logits into the
        // batch's own buffers (the device one counted in the session's scratch, then a
        // page-locked host one), kept for the next step, so a step allocates nothing. The
        // caller reads them there ([`Batch::kept_logits`]); nothing is returned.
        be.rms_norm(&b.x, &m.output_norm, c.rms_eps, &mut b.h)?;
        if b.logits_all.is_none() {
            b.logits_all = Some((be.alloc(n * c.n_vocab)?, be.alloc_host(n * c.n_vocab)?));
        }
        let (logits, host) = b.logits_all.as_mut().expect("allocated above");
        be.matmul_w16(m.output_matrix(), m.output16.as_ref(), &b.h, n, mm, logits)?;
        be.download_pinned(logits, host)?;
        return Ok(Vec::new());
    }
    let e = c.n_embd;
    let mut xo: DeviceBuffer<f32> = be.alloc(rows.len() * e)?;
    be.copy_range(&b.x, rows.start * e, &mut xo)?;
    let mut normed: DeviceBuffer<f32> = be.alloc(rows.len() * e)?;
    be.rms_norm(&xo, &m.output_norm, c.rms_eps, &mut normed)?;
    let mut logits: DeviceBuffer<f32> = be.alloc(rows.len() * c.n_vocab)?;
    be.matmul_w16(m.output_matrix(), m.output16.as_ref(), &normed, rows.len(), mm, &mut logits)?;
    Ok(be.download(&logits)?)
}
