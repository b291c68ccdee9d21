//! Which GGUF tensor each checkpoint tensor becomes, with the shape `config.json` implies and the
//! changes llama.cpp's converter makes on the way:
//!
//! - Llama and Mistral: the rows of `q_proj` and `k_proj` are permuted within each head, from
//!   Hugging Face's rotate-half RoPE layout to the interleaved pairs GGUF's `llama` RoPE expects
//!   (`LlamaModel.permute`). Qwen2 and Gemma 3 use NeoX RoPE in GGUF and keep their rows.
//! - Gemma 3: every RMSNorm weight gets `+1` (Hugging Face computes `x * (1 + w)`, GGUF `x * w`),
//!   and the embedding keeps only the rows the tokenizer has tokens for.
//! - Tied embeddings: no `output.weight`; the runtime uses `token_embd.weight`.
//! - Llama 3 RoPE scaling: a generated `rope_freqs.weight`.

use std::collections::BTreeMap;

use super::checkpoint::Checkpoint;
use super::hparams::{ConvArch, HfHparams, RopeScaling};
use super::ConvertError;

/// How one output tensor is produced.
#[derive(Clone, Debug)]
pub enum Source {
    /// A checkpoint tensor, by its name there.
    Checkpoint(String),
    /// Computed values (`rope_freqs.weight`).
    Values(Vec<f32>),
}

/// One tensor of the output file.
#[derive(Clone, Debug)]
pub struct TensorPlan {
    pub name: String,
    pub source: Source,
    /// ggml order: row length first.
    pub ne: Vec<u64>,
    /// Permute rows within heads of this many rows (Llama Q/K); `None` to keep the order.
    pub permute_head_rows: Option<usize>,
    /// Add 1 to every value (Gemma norms).
    pub add_one: bool,
}

impl TensorPlan {
    pub fn cols(&self) -> usize {
        self.ne[0] as usize
    }

    pub fn rows(&self) -> usize {
        self.ne[1..].iter().product::<u64>() as usize
    }
}

/// What a checkpoint tensor name becomes.
enum Mapped {
    /// A GGUF tensor.
    Tensor(String),
    /// Not part of the language model (vision tower, projector) or not a weight (rotary caches).
    Skip,
    /// Not something this architecture has.
    Unknown,
}

/// The checkpoint name without the multimodal wrappers' prefixes.
fn strip_prefix(name: &str) -> String {
    for (from, to) in [
        ("model.language_model.", "model."),
        ("language_model.model.", "model."),
        ("language_model.lm_head.", "lm_head."),
    ] {
        if let Some(rest) = name.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    name.to_string()
}

fn map_name(arch: ConvArch, raw: &str) -> Mapped {
    let name = strip_prefix(raw);
    let skip_prefixes = [
        "vision_tower.",
        "multi_modal_projector.",
        "model.vision_tower.",
        "model.multi_modal_projector.",
        "vision_model.",
        "multimodal_projector.",
    ];
    if skip_prefixes.iter().any(|p| name.starts_with(p))
        || name.ends_with(".rotary_emb.inv_freq")
        || name.ends_with(".attention.masked_bias")
    {
        return Mapped::Skip;
    }
    match name.as_str() {
        "model.embed_tokens.weight" => return Mapped::Tensor("token_embd.weight".into()),
        "model.norm.weight" => return Mapped::Tensor("output_norm.weight".into()),
        "lm_head.weight" => return Mapped::Tensor("output.weight".into()),
        _ => {}
    }
    let Some(rest) = name.strip_prefix("model.layers.") else { return Mapped::Unknown };
    let Some((il, tail)) = rest.split_once('.') else { return Mapped::Unknown };
    let Ok(il) = il.parse::<usize>() else { return Mapped::Unknown };
    let gemma = arch == ConvArch::Gemma3;
    let qwen = arch == ConvArch::Qwen2;
    let suffix = match tail {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "self_attn.q_proj.bias" if qwen => "attn_q.bias",
        "self_attn.k_proj.bias" if qwen => "attn_k.bias",
        "self_attn.v_proj.bias" if qwen => "attn_v.bias",
        "self_attn.q_norm.weight" if gemma => "attn_q_norm.weight",
        "self_attn.k_norm.weight" if gemma => "attn_k_norm.weight",
        "post_attention_layernorm.weight" if gemma => "post_attention_norm.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "pre_feedforward_layernorm.weight" if gemma => "ffn_norm.weight",
        "post_feedforward_layernorm.weight" if gemma => "post_ffw_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return Mapped::Unknown,
    };
    Mapped::Tensor(format!("blk.{il}.{suffix}"))
}

/// The output tensors `h` implies, in file order, with their ggml shapes. `n_tokens` is the
/// vocabulary size the tokenizer metadata ended up with.
fn expected(h: &HfHparams, n_tokens: usize, has_lm_head: bool) -> Vec<(String, Vec<u64>)> {
    let (e, hd, ff) = (h.n_embd as u64, h.head_dim as u64, h.n_ff as u64);
    let (q, kv) = (h.n_head as u64 * hd, h.n_head_kv as u64 * hd);
    let gemma = h.arch == ConvArch::Gemma3;
    let mut out = vec![("token_embd.weight".to_string(), vec![e, n_tokens as u64])];
    if let RopeScaling::Llama3 { .. } = h.rope_scaling {
        out.push(("rope_freqs.weight".into(), vec![hd / 2]));
    }
    for il in 0..h.n_layer {
        let n = |s: &str| format!("blk.{il}.{s}");
        out.push((n("attn_norm.weight"), vec![e]));
        out.push((n("attn_q.weight"), vec![e, q]));
        out.push((n("attn_k.weight"), vec![e, kv]));
        out.push((n("attn_v.weight"), vec![e, kv]));
        if h.arch == ConvArch::Qwen2 {
            out.push((n("attn_q.bias"), vec![q]));
            out.push((n("attn_k.bias"), vec![kv]));
            out.push((n("attn_v.bias"), vec![kv]));
        }
        if gemma {
            out.push((n("attn_q_norm.weight"), vec![hd]));
            out.push((n("attn_k_norm.weight"), vec![hd]));
        }
        out.push((n("attn_output.weight"), vec![q, e]));
        if gemma {
            out.push((n("post_attention_norm.weight"), vec![e]));
        }
        out.push((n("ffn_norm.weight"), vec![e]));
        out.push((n("ffn_gate.weight"), vec![e, ff]));
        out.push((n("ffn_up.weight"), vec![e, ff]));
        out.push((n("ffn_down.weight"), vec![ff, e]));
        if gemma {
            out.push((n("post_ffw_norm.weight"), vec![e]));
        }
    }
    out.push(("output_norm.weight".into(), vec![e]));
    if has_lm_head {
        out.push(("output.weight".into(), vec![e, n_tokens as u64]));
    }
    out
}

/// Llama 3's per-frequency RoPE factors (`LlamaModel.generate_extra_tensors`).
fn llama3_rope_factors(h: &HfHparams) -> Vec<f32> {
    let RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } =
        h.rope_scaling
    else {
        return Vec::new();
    };
    let dim = h.head_dim;
    let base = h.rope_theta as f64;
    let old_ctx = original_max_position_embeddings as f64;
    let low_wavelen = old_ctx / low_freq_factor as f64;
    let high_wavelen = old_ctx / high_freq_factor as f64;
    (0..dim / 2)
        .map(|i| {
            // torch computes the frequencies in float32.
            let freq = (1.0f32 / (base.powf((2 * i) as f64 / dim as f64) as f32)) as f64;
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (old_ctx / wavelen - low_freq_factor as f64) / (high_freq_factor as f64 - low_freq_factor as f64);
                (1.0 / ((1.0 - smooth) / factor as f64 + smooth)) as f32
            }
        })
        .collect()
}

/// Plans every output tensor: maps the checkpoint's names, checks that nothing is missing or
/// left over and that every shape agrees with `config.json`. Returns the plans and notes.
pub fn plan(h: &HfHparams, ck: &Checkpoint, n_tokens: usize) -> Result<(Vec<TensorPlan>, Vec<String>), ConvertError> {
    let mut notes = Vec::new();
    let mut by_gguf: BTreeMap<String, String> = BTreeMap::new();
    let mut unknown = Vec::new();
    let mut skipped = 0usize;
    for name in ck.tensors.keys() {
        match map_name(h.arch, name) {
            Mapped::Tensor(g) => {
                if let Some(prev) = by_gguf.insert(g.clone(), name.clone()) {
                    return Err(ConvertError::Tensor {
                        name: name.clone(),
                        reason: format!("maps to {g:?} like {prev:?}"),
                    });
                }
            }
            Mapped::Skip => skipped += 1,
            Mapped::Unknown => unknown.push(name.clone()),
        }
    }
    if skipped > 0 {
        notes.push(format!("{skipped} tensors that are not part of the language model were skipped"));
    }
    // Layers beyond num_hidden_layers are extra tensors too.
    for (g, src) in &by_gguf {
        if let Some(il) = g.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|s| s.parse::<usize>().ok()) {
            if il >= h.n_layer {
                unknown.push(src.clone());
            }
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        return Err(ConvertError::ExtraTensors { arch: h.hf_arch.clone(), count: unknown.len(), first: unknown.into_iter().take(6).collect() });
    }

    let has_lm_head = by_gguf.contains_key("output.weight");
    if !has_lm_head && !h.tie_word_embeddings {
        return Err(ConvertError::MissingTensor {
            name: "lm_head.weight".into(),
            reason: "tie_word_embeddings is false, so the output matrix must be in the checkpoint".into(),
        });
    }
    let want = expected(h, n_tokens, has_lm_head);
    let mut plans = Vec::with_capacity(want.len());
    for (gguf, ne) in want {
        if gguf == "rope_freqs.weight" {
            plans.push(TensorPlan { name: gguf, source: Source::Values(llama3_rope_factors(h)), ne, permute_head_rows: None, add_one: false });
            continue;
        }
        let Some(src_name) = by_gguf.get(&gguf) else {
            let hf = hf_name_for(&gguf);
            return Err(ConvertError::MissingTensor { name: hf, reason: format!("needed for {gguf}") });
        };
        let Some(t) = ck.get(src_name) else {
            return Err(ConvertError::MissingTensor { name: src_name.clone(), reason: "listed but not readable".into() });
        };
        if super::checkpoint::element_size(t.dtype).is_none() {
            return Err(ConvertError::Dtype { name: src_name.clone(), dtype: format!("{:?}", t.dtype) });
        }
        // The checkpoint's shape, PyTorch order; embeddings may have more rows than tokens.
        let want_torch: Vec<usize> = ne.iter().rev().map(|&d| d as usize).collect();
        let is_vocab = gguf == "token_embd.weight" || gguf == "output.weight";
        let shape_ok = if is_vocab {
            t.shape.len() == 2 && t.shape[1] == want_torch[1] && t.shape[0] == h.n_vocab
        } else {
            t.shape == want_torch
        };
        if !shape_ok {
            let mut expect = want_torch.clone();
            if is_vocab {
                expect[0] = h.n_vocab;
            }
            return Err(ConvertError::Shape { name: src_name.clone(), expected: expect, got: t.shape.clone() });
        }
        if is_vocab && n_tokens > h.n_vocab {
            return Err(ConvertError::Vocab(format!(
                "the tokenizer has {n_tokens} tokens but {src_name} has only {} rows (vocab_size)",
                h.n_vocab
            )));
        }
        if is_vocab && n_tokens < h.n_vocab {
            if h.arch == ConvArch::Gemma3 {
                notes.push(format!("{src_name}: rows {n_tokens}..{} (beyond the tokenizer) dropped, as llama.cpp does", h.n_vocab));
            } else {
                return Err(ConvertError::Vocab(format!(
                    "the tokenizer has {n_tokens} tokens but {src_name} has {} rows (vocab_size)",
                    h.n_vocab
                )));
            }
        }
        let permute_head_rows = match (h.arch, gguf.rsplit('.').nth(1)) {
            (ConvArch::Llama, Some("attn_q" | "attn_k")) => Some(h.head_dim),
            _ => None,
        };
        let add_one = h.arch == ConvArch::Gemma3 && gguf.ends_with("norm.weight");
        plans.push(TensorPlan { name: gguf, source: Source::Checkpoint(src_name.clone()), ne, permute_head_rows, add_one });
    }
    Ok((plans, notes))
}

/// The Hugging Face name of a GGUF tensor, for error messages.
fn hf_name_for(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = gguf.strip_prefix("blk.") else { return gguf.into() };
    let Some((il, tail)) = rest.split_once('.') else { return gguf.into() };
    let hf = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q.bias" => "self_attn.q_proj.bias",
        "attn_k.bias" => "self_attn.k_proj.bias",
        "attn_v.bias" => "self_attn.v_proj.bias",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "post_attention_norm.weight" => "post_attention_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight or pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => other,
    };
    format!("model.layers.{il}.{hf}")
}

/// Row `r` of a head-permuted matrix comes from this row of the original: within each head of
/// `hd` rows, GGUF row `2j + t` is Hugging Face row `t * hd/2 + j` (the inverse of
/// `LlamaModel.permute`'s reshape-swap-reshape).
pub fn permuted_source_row(r: usize, hd: usize) -> usize {
    let (head, i) = (r / hd, r % hd);
    let (j, t) = (i / 2, i % 2);
    head * hd + t * (hd / 2) + j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_llama_cpp() {
        // LlamaModel.permute(w, n_head): w.reshape(n_head, 2, hd/2, cols).swapaxes(1, 2).reshape(...)
        // so output row (h, j, t) is input row (h, t, j).
        let (n_head, hd) = (3usize, 8usize);
        for h in 0..n_head {
            for j in 0..hd / 2 {
                for t in 0..2 {
                    let out_row = h * hd + j * 2 + t;
                    let in_row = h * hd + t * (hd / 2) + j;
                    assert_eq!(permuted_source_row(out_row, hd), in_row);
                }
            }
        }
    }

    #[test]
    fn names() {
        let t = |arch, n: &str| match map_name(arch, n) {
            Mapped::Tensor(s) => s,
            Mapped::Skip => "skip".into(),
            Mapped::Unknown => "unknown".into(),
        };
        assert_eq!(t(ConvArch::Llama, "model.layers.3.self_attn.q_proj.weight"), "blk.3.attn_q.weight");
        assert_eq!(t(ConvArch::Llama, "model.layers.3.post_attention_layernorm.weight"), "blk.3.ffn_norm.weight");
        assert_eq!(t(ConvArch::Gemma3, "model.layers.3.post_attention_layernorm.weight"), "blk.3.post_attention_norm.weight");
        assert_eq!(t(ConvArch::Gemma3, "model.language_model.layers.0.pre_feedforward_layernorm.weight"), "blk.0.ffn_norm.weight");
        assert_eq!(t(ConvArch::Gemma3, "model.vision_tower.vision_model.x.weight"), "skip");
        assert_eq!(t(ConvArch::Llama, "model.layers.0.self_attn.q_proj.bias"), "unknown");
        assert_eq!(t(ConvArch::Qwen2, "model.layers.0.self_attn.q_proj.bias"), "blk.0.attn_q.bias");
        assert_eq!(t(ConvArch::Llama, "lm_head.weight"), "output.weight");
        assert_eq!(t(ConvArch::Llama, "model.layers.0.self_attn.rotary_emb.inv_freq"), "skip");
    }

    #[test]
    fn llama3_factors() {
        // Llama 3.1 8B: factor 8, low 1, high 4, original 8192, theta 500000, head 128.
        let mut h = super::super::hparams::parse(
            serde_json::from_str(
                r#"{"architectures":["LlamaForCausalLM"],"hidden_size":4096,"intermediate_size":14336,
                "num_hidden_layers":1,"num_attention_heads":32,"num_key_value_heads":8,"vocab_size":128256,
                "max_position_embeddings":131072,"rms_norm_eps":1e-5,
                "rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,
                "original_max_position_embeddings":8192},"rope_theta":500000.0}"#,
            )
            .unwrap(),
        )
        .unwrap();
        h.notes.clear();
        let f = llama3_rope_factors(&h);
        assert_eq!(f.len(), 64);
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().all(|&x| (1.0..=8.0).contains(&x)));
    }
}
