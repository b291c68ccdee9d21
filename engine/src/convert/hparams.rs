//! `config.json`: the architecture and hyperparameters of a Hugging Face checkpoint, read and
//! checked before any tensor is touched.
//!
//! Both the transformers 4 spelling (`rope_theta`, `rope_scaling`, `rope_local_base_freq`,
//! `sliding_window_pattern`) and the transformers 5 one (`rope_parameters`, per layer type for
//! Gemma 3; `layer_types`) are understood. Values the engine (or llama.cpp) cannot represent are
//! refused with the field, the value and what is supported.

use std::path::Path;

use serde_json::{Map, Value};

use super::ConvertError;

/// The architectures `convert` writes, by their GGUF name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConvArch {
    /// `LlamaForCausalLM` and `MistralForCausalLM`: GGUF `llama`.
    Llama,
    /// `Qwen2ForCausalLM`: GGUF `qwen2`.
    Qwen2,
    /// `Gemma3ForCausalLM` (and the text half of `Gemma3ForConditionalGeneration`): GGUF `gemma3`.
    Gemma3,
}

impl ConvArch {
    /// `general.architecture`.
    pub fn gguf_name(self) -> &'static str {
        match self {
            ConvArch::Llama => "llama",
            ConvArch::Qwen2 => "qwen2",
            ConvArch::Gemma3 => "gemma3",
        }
    }
}

/// Hugging Face architecture names this converter accepts.
pub const SUPPORTED_HF_ARCHS: &[&str] = &[
    "LlamaForCausalLM",
    "MistralForCausalLM",
    "Qwen2ForCausalLM",
    "Gemma3ForCausalLM",
    "Gemma3ForConditionalGeneration",
];

/// RoPE scaling as GGUF records it.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor` (`rope.scaling.type = linear`).
    Linear { factor: f32 },
    /// Llama 3's frequency-dependent scaling, written as a `rope_freqs.weight` tensor.
    Llama3 { factor: f32, low_freq_factor: f32, high_freq_factor: f32, original_max_position_embeddings: f32 },
    /// YaRN: its keys are written as llama.cpp writes them.
    Yarn { factor: f32, original_max_position_embeddings: u32 },
}

/// What the converter needs from `config.json`.
#[derive(Clone, Debug)]
pub struct HfHparams {
    /// `architectures[0]`.
    pub hf_arch: String,
    pub arch: ConvArch,
    /// `vocab_size`: rows of the embedding matrix.
    pub n_vocab: usize,
    pub n_ctx_train: u32,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// `head_dim` as written in the config (`None`: `n_embd / n_head`).
    pub head_dim_explicit: Option<usize>,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_theta: f32,
    /// Gemma 3's RoPE base of the sliding-window layers.
    pub rope_theta_swa: Option<f32>,
    pub rope_scaling: RopeScaling,
    /// Sliding window of the window layers (all layers for Mistral, the local ones for Gemma 3).
    pub sliding_window: Option<u32>,
    pub tie_word_embeddings: bool,
    /// Gemma 3's `final_logit_softcapping`, when set.
    pub final_logit_softcapping: Option<f32>,
    /// Things the GGUF cannot say, or the engine does not do, worth telling the user.
    pub notes: Vec<String>,
    /// The whole (text) config, for the tokenizer's special-token ids.
    pub raw: Map<String, Value>,
}

/// A field reader over one JSON object, with errors that name the field.
struct Fields<'a> {
    obj: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn bad(field: &str, reason: impl Into<String>) -> ConvertError {
        ConvertError::Config { field: field.to_string(), reason: reason.into() }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.obj.get(key).filter(|v| !v.is_null())
    }

    fn first<'k>(&self, keys: &[&'k str]) -> Option<(&'k str, &Value)> {
        keys.iter().find_map(|&k| self.get(k).map(|v| (k, v)))
    }

    /// A positive integer no larger than `max`.
    fn count_of(key: &str, v: &Value, max: u64) -> Result<usize, ConvertError> {
        match v.as_u64() {
            Some(n) if n >= 1 && n <= max => Ok(n as usize),
            Some(n) => Err(Self::bad(key, format!("{n} is out of range (1..={max})"))),
            None => Err(Self::bad(key, format!("expected a positive integer, got {v}"))),
        }
    }

    fn count(&self, keys: &[&str], max: u64) -> Result<usize, ConvertError> {
        match self.first(keys) {
            Some((k, v)) => Self::count_of(k, v, max),
            None => Err(Self::bad(keys[0], "is missing")),
        }
    }

    fn opt_count(&self, key: &str, max: u64) -> Result<Option<usize>, ConvertError> {
        self.get(key).map(|v| Self::count_of(key, v, max)).transpose()
    }

    fn opt_f32(&self, key: &str) -> Result<Option<f32>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() => Ok(Some(x as f32)),
                _ => Err(Self::bad(key, format!("expected a number, got {v}"))),
            },
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<&str>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(Self::bad(key, format!("expected a string, got {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConvertError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(Self::bad(key, format!("expected true or false, got {v}"))),
        }
    }
}

/// Largest sizes accepted, far above any real model, so that arithmetic on them cannot overflow.
const MAX_DIM: u64 = 1 << 20;
const MAX_LAYERS: u64 = 4096;
const MAX_VOCAB: u64 = 1 << 24;

/// Gemma 3 makes every sixth layer global; llama.cpp and this engine assume that pattern.
const GEMMA3_SWA_PATTERN: usize = 6;
const GEMMA3_ROPE_BASE_SWA: f32 = 10_000.0;

/// Reads `dir/config.json`.
pub fn read(dir: &Path) -> Result<HfHparams, ConvertError> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(ConvertError::MissingConfig { dir: dir.to_path_buf() });
    }
    let text = std::fs::read_to_string(&path).map_err(|source| ConvertError::Io { path: path.clone(), source })?;
    let doc: Value =
        serde_json::from_str(&text).map_err(|e| ConvertError::Json { path: path.clone(), reason: e.to_string() })?;
    let Value::Object(top) = doc else {
        return Err(ConvertError::Json { path, reason: "the top level is not an object".into() });
    };
    parse(top)
}

/// Parses a config object (exposed for tests).
pub fn parse(top: Map<String, Value>) -> Result<HfHparams, ConvertError> {
    let f = Fields { obj: &top };
    let hf_arch = match f.get("architectures") {
        Some(Value::Array(a)) => match a.first() {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Fields::bad("architectures", "expected a list of architecture names")),
        },
        Some(v) => return Err(Fields::bad("architectures", format!("expected a list, got {v}"))),
        // Some configs carry only `model_type`.
        None => match f.opt_str("model_type")? {
            Some("llama") => "LlamaForCausalLM".into(),
            Some("mistral") => "MistralForCausalLM".into(),
            Some("qwen2") => "Qwen2ForCausalLM".into(),
            Some("gemma3_text") => "Gemma3ForCausalLM".into(),
            Some("gemma3") => "Gemma3ForConditionalGeneration".into(),
            Some(other) => return Err(ConvertError::UnsupportedArch { arch: format!("model_type {other:?}") }),
            None => return Err(Fields::bad("architectures", "is missing (and there is no model_type)")),
        },
    };
    let arch = match hf_arch.as_str() {
        "LlamaForCausalLM" | "MistralForCausalLM" => ConvArch::Llama,
        "Qwen2ForCausalLM" => ConvArch::Qwen2,
        "Gemma3ForCausalLM" | "Gemma3ForConditionalGeneration" => ConvArch::Gemma3,
        other => return Err(ConvertError::UnsupportedArch { arch: other.to_string() }),
    };
    // Multimodal configs keep the language model's settings in `text_config`; like llama.cpp,
    // lift them to the top level.
    let mut obj = top.clone();
    if let Some(Value::Object(text)) = top.get("text_config") {
        for (k, v) in text {
            obj.insert(k.clone(), v.clone());
        }
    }
    let f = Fields { obj: &obj };
    let mut notes = Vec::new();

    let n_embd = f.count(&["hidden_size"], MAX_DIM)?;
    let n_layer = f.count(&["num_hidden_layers"], MAX_LAYERS)?;
    let n_ff = f.count(&["intermediate_size"], MAX_DIM)?;
    let n_head = match arch {
        ConvArch::Gemma3 => f.opt_count("num_attention_heads", MAX_DIM)?.unwrap_or(8),
        _ => f.count(&["num_attention_heads"], MAX_DIM)?,
    };
    let n_head_kv = match arch {
        ConvArch::Gemma3 => f.opt_count("num_key_value_heads", MAX_DIM)?.unwrap_or(4),
        _ => f.opt_count("num_key_value_heads", MAX_DIM)?.unwrap_or(n_head),
    };
    if n_head % n_head_kv != 0 {
        return Err(Fields::bad(
            "num_key_value_heads",
            format!("{n_head_kv} does not divide num_attention_heads {n_head}"),
        ));
    }
    let head_dim_explicit = f.opt_count("head_dim", MAX_DIM)?;
    let head_dim = match (arch, head_dim_explicit) {
        (_, Some(d)) => d,
        (ConvArch::Gemma3, None) => 256,
        (_, None) => {
            if n_embd % n_head != 0 {
                return Err(Fields::bad(
                    "hidden_size",
                    format!("{n_embd} is not a multiple of num_attention_heads {n_head} (and head_dim is not set)"),
                ));
            }
            n_embd / n_head
        }
    };
    if head_dim % 2 != 0 {
        return Err(Fields::bad("head_dim", format!("{head_dim} is odd; RoPE needs an even head size")));
    }
    let n_vocab = f.count(&["vocab_size"], MAX_VOCAB)?;
    let n_ctx_train = match arch {
        ConvArch::Gemma3 => f.opt_count("max_position_embeddings", u32::MAX as u64)?.unwrap_or(131_072),
        _ => f.count(&["max_position_embeddings"], u32::MAX as u64)?,
    } as u32;
    let rms_eps = match arch {
        ConvArch::Gemma3 => f.opt_f32("rms_norm_eps")?.unwrap_or(1e-6),
        _ => f.opt_f32("rms_norm_eps")?.ok_or_else(|| Fields::bad("rms_norm_eps", "is missing"))?,
    };
    if !(rms_eps > 0.0 && rms_eps < 1.0) {
        return Err(Fields::bad("rms_norm_eps", format!("{rms_eps} is out of range (0, 1)")));
    }
    let tie_word_embeddings = f.opt_bool("tie_word_embeddings")?.unwrap_or(arch == ConvArch::Gemma3);

    // The activation and biases the forward passes implement.
    let act_key = if arch == ConvArch::Gemma3 { "hidden_activation" } else { "hidden_act" };
    let want_act = if arch == ConvArch::Gemma3 { "gelu_pytorch_tanh" } else { "silu" };
    match f.opt_str(act_key)? {
        None => {}
        Some(a) if a == want_act => {}
        Some(a) => return Err(Fields::bad(act_key, format!("{a:?} is not supported ({want_act:?} is)"))),
    }
    if arch != ConvArch::Qwen2 && f.opt_bool("attention_bias")? == Some(true) {
        return Err(Fields::bad("attention_bias", "true is not supported (no attention biases but Qwen2's)"));
    }
    if f.opt_bool("mlp_bias")? == Some(true) {
        return Err(Fields::bad("mlp_bias", "true is not supported"));
    }

    // RoPE: transformers 5 writes `rope_parameters` (per layer type for Gemma 3), older versions
    // `rope_theta` and `rope_scaling`.
    let rope_params: Map<String, Value> = match f.get("rope_parameters").or_else(|| f.get("rope_scaling")) {
        Some(Value::Object(m)) => m.clone(),
        Some(v) => return Err(Fields::bad("rope_parameters", format!("expected an object, got {v}"))),
        None => Map::new(),
    };
    let full: Map<String, Value> = match rope_params.get("full_attention") {
        Some(Value::Object(m)) => m.clone(),
        _ => rope_params.clone(),
    };
    let rp = Fields { obj: &full };
    let rope_theta = match rp.opt_f32("rope_theta")?.or(f.opt_f32("rope_theta")?) {
        Some(t) => t,
        None if arch == ConvArch::Gemma3 => 1_000_000.0,
        None => 10_000.0,
    };
    if rope_theta <= 1.0 {
        return Err(Fields::bad("rope_theta", format!("{rope_theta} must be > 1")));
    }
    let rope_type = rp.opt_str("rope_type")?.or(rp.opt_str("type")?).unwrap_or("default");
    let factor = || -> Result<f32, ConvertError> {
        match rp.opt_f32("factor")? {
            Some(x) if x >= 1.0 => Ok(x),
            Some(x) => Err(Fields::bad("rope_parameters.factor", format!("{x} must be >= 1"))),
            None => Err(Fields::bad("rope_parameters.factor", "is missing")),
        }
    };
    let rope_scaling = match rope_type {
        "default" | "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => {
            notes.push("RoPE type llama3: written as rope_freqs.weight (as llama.cpp does); this engine's forward pass does not apply it yet".into());
            RopeScaling::Llama3 {
                factor: factor()?,
                low_freq_factor: rp.opt_f32("low_freq_factor")?.unwrap_or(1.0),
                high_freq_factor: rp.opt_f32("high_freq_factor")?.unwrap_or(4.0),
                original_max_position_embeddings: rp
                    .opt_f32("original_max_position_embeddings")?
                    .unwrap_or(8192.0),
            }
        }
        "yarn" => {
            notes.push("RoPE type yarn: its keys are written as llama.cpp writes them; this engine refuses to run such a file".into());
            let orig = match rp.get("original_max_position_embeddings").and_then(Value::as_u64) {
                Some(n) if n > 0 && n <= u32::MAX as u64 => n as u32,
                _ => return Err(Fields::bad("rope_parameters.original_max_position_embeddings", "is missing or invalid")),
            };
            RopeScaling::Yarn { factor: factor()?, original_max_position_embeddings: orig }
        }
        other => {
            return Err(Fields::bad(
                "rope_parameters.rope_type",
                format!("{other:?} is not supported (default, linear, llama3 and yarn are)"),
            ))
        }
    };
    if arch == ConvArch::Gemma3 && !matches!(rope_scaling, RopeScaling::None | RopeScaling::Linear { .. }) {
        return Err(Fields::bad("rope_parameters.rope_type", format!("{rope_type:?} is not supported for Gemma 3")));
    }

    // Attention windows.
    let layer_types: Option<Vec<String>> = match f.get("layer_types") {
        None => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|v| v.as_str().map(str::to_string).ok_or_else(|| Fields::bad("layer_types", format!("{v} is not a string"))))
                .collect::<Result<_, _>>()?,
        ),
        Some(v) => return Err(Fields::bad("layer_types", format!("expected a list, got {v}"))),
    };
    if let Some(t) = &layer_types {
        if t.len() != n_layer {
            return Err(Fields::bad("layer_types", format!("{} entries for {n_layer} layers", t.len())));
        }
    }
    let window = f.opt_count("sliding_window", u32::MAX as u64)?.map(|w| w as u32);
    let mut rope_theta_swa = None;
    let mut final_logit_softcapping = None;
    let sliding_window = match arch {
        ConvArch::Gemma3 => {
            // Every sixth layer global, the others sliding, as llama.cpp assumes.
            let expected: Vec<bool> = (0..n_layer).map(|il| (il + 1) % GEMMA3_SWA_PATTERN != 0).collect();
            let actual: Vec<bool> = match &layer_types {
                Some(t) => t.iter().map(|s| s == "sliding_attention").collect(),
                None => match f.opt_count("sliding_window_pattern", MAX_LAYERS)?.or(f.opt_count("_sliding_window_pattern", MAX_LAYERS)?) {
                    Some(p) => (0..n_layer).map(|il| (il + 1) % p != 0).collect(),
                    None => expected.clone(),
                },
            };
            if actual != expected {
                return Err(Fields::bad(
                    "layer_types",
                    "Gemma 3 layers must be five sliding-window layers then one global (the pattern llama.cpp and this engine assume)",
                ));
            }
            let local = match rope_params.get("sliding_attention") {
                Some(Value::Object(m)) => Fields { obj: m }.opt_f32("rope_theta")?,
                _ => f.opt_f32("rope_local_base_freq")?,
            };
            let local = local.unwrap_or(GEMMA3_ROPE_BASE_SWA);
            if local != GEMMA3_ROPE_BASE_SWA {
                notes.push(format!(
                    "the sliding layers' RoPE base is {local}; written as gemma3.rope.freq_base_swa, but this engine (like older llama.cpp) uses {GEMMA3_ROPE_BASE_SWA}"
                ));
            }
            rope_theta_swa = Some(local);
            if f.opt_f32("attn_logit_softcapping")?.is_some() {
                return Err(Fields::bad("attn_logit_softcapping", "is not supported for Gemma 3 (llama.cpp refuses it too)"));
            }
            final_logit_softcapping = f.opt_f32("final_logit_softcapping")?;
            if final_logit_softcapping.is_some() {
                notes.push("final_logit_softcapping is written to the GGUF; this engine does not apply it".into());
            }
            if let Some(q) = f.opt_f32("query_pre_attn_scalar")? {
                if q != head_dim as f32 {
                    notes.push(format!(
                        "query_pre_attn_scalar {q} differs from head_dim {head_dim}; GGUF cannot record it and this engine scales queries by head_dim^-1/2"
                    ));
                }
            }
            Some(window.ok_or_else(|| Fields::bad("sliding_window", "is missing"))?)
        }
        ConvArch::Llama | ConvArch::Qwen2 => {
            // Mistral-style: one window for every layer. Qwen2 only when use_sliding_window.
            let enabled = match (arch, &layer_types) {
                (_, Some(t)) if t.iter().all(|s| s == "full_attention") => false,
                (_, Some(t)) if t.iter().all(|s| s == "sliding_attention") => true,
                (_, Some(_)) => {
                    return Err(Fields::bad("layer_types", "a mix of sliding and full layers is not supported for this architecture"))
                }
                (ConvArch::Qwen2, None) => f.opt_bool("use_sliding_window")?.unwrap_or(false),
                (_, None) => window.is_some(),
            };
            if enabled {
                let w = window.ok_or_else(|| Fields::bad("sliding_window", "is missing but sliding layers are configured"))?;
                notes.push(format!(
                    "sliding window {w} written as {}.attention.sliding_window (this engine applies it; llama.cpp's {} models ignore it)",
                    arch.gguf_name(),
                    arch.gguf_name()
                ));
                Some(w)
            } else {
                None
            }
        }
    };

    Ok(HfHparams {
        hf_arch,
        arch,
        n_vocab,
        n_ctx_train,
        n_embd,
        n_layer,
        n_ff,
        n_head,
        n_head_kv,
        head_dim_explicit,
        head_dim,
        rms_eps,
        rope_theta,
        rope_theta_swa,
        rope_scaling,
        sliding_window,
        tie_word_embeddings,
        final_logit_softcapping,
        notes,
        raw: obj,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(json: &str) -> Result<HfHparams, ConvertError> {
        match serde_json::from_str(json).unwrap() {
            Value::Object(m) => parse(m),
            _ => unreachable!(),
        }
    }

    const LLAMA: &str = r#"{"architectures":["LlamaForCausalLM"],"hidden_size":64,"intermediate_size":128,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":100,
        "max_position_embeddings":256,"rms_norm_eps":1e-5,"hidden_act":"silu"}"#;

    #[test]
    fn llama_defaults() {
        let h = cfg(LLAMA).unwrap();
        assert_eq!(h.arch, ConvArch::Llama);
        assert_eq!(h.head_dim, 16);
        assert_eq!(h.rope_theta, 10_000.0);
        assert_eq!(h.rope_scaling, RopeScaling::None);
        assert_eq!(h.sliding_window, None);
        assert!(!h.tie_word_embeddings);
    }

    #[test]
    fn errors_name_the_field() {
        let e = cfg(&LLAMA.replace("\"hidden_size\":64,", "")).unwrap_err().to_string();
        assert!(e.contains("hidden_size") && e.contains("missing"), "{e}");
        let e = cfg(&LLAMA.replace("LlamaForCausalLM", "GPT2LMHeadModel")).unwrap_err().to_string();
        assert!(e.contains("GPT2LMHeadModel") && e.contains("Qwen2ForCausalLM"), "{e}");
        let e = cfg(&LLAMA.replace("\"num_key_value_heads\":2", "\"num_key_value_heads\":3")).unwrap_err().to_string();
        assert!(e.contains("num_key_value_heads"), "{e}");
        let e = cfg(&LLAMA.replace("\"silu\"", "\"gelu\"")).unwrap_err().to_string();
        assert!(e.contains("hidden_act") && e.contains("gelu"), "{e}");
        let e = cfg(&LLAMA.replace("\"vocab_size\":100", "\"vocab_size\":-1")).unwrap_err().to_string();
        assert!(e.contains("vocab_size"), "{e}");
    }

    #[test]
    fn gemma3_transformers4_config() {
        let h = cfg(r#"{"architectures":["Gemma3ForCausalLM"],"hidden_size":640,"intermediate_size":2048,
            "num_hidden_layers":18,"num_attention_heads":4,"num_key_value_heads":1,"head_dim":256,"vocab_size":262144,
            "max_position_embeddings":32768,"rms_norm_eps":1e-6,"rope_theta":1000000.0,"rope_local_base_freq":10000.0,
            "rope_scaling":null,"sliding_window":512,"sliding_window_pattern":6,"query_pre_attn_scalar":256,
            "final_logit_softcapping":null,"attn_logit_softcapping":null}"#)
        .unwrap();
        assert_eq!(h.arch, ConvArch::Gemma3);
        assert_eq!(h.sliding_window, Some(512));
        assert_eq!(h.rope_theta, 1_000_000.0);
        assert_eq!(h.rope_theta_swa, Some(10_000.0));
        assert!(h.tie_word_embeddings);
        assert!(h.notes.is_empty(), "{:?}", h.notes);
    }

    #[test]
    fn gemma3_other_layer_pattern_is_refused() {
        let e = cfg(r#"{"architectures":["Gemma3ForCausalLM"],"hidden_size":64,"intermediate_size":128,
            "num_hidden_layers":2,"vocab_size":100,"sliding_window":4,
            "layer_types":["full_attention","sliding_attention"]}"#)
        .unwrap_err()
        .to_string();
        assert!(e.contains("layer_types"), "{e}");
    }

    #[test]
    fn qwen2_window_only_when_enabled() {
        let q = LLAMA.replace("LlamaForCausalLM", "Qwen2ForCausalLM").replace("}", r#","sliding_window":4096,"use_sliding_window":false}"#);
        assert_eq!(cfg(&q).unwrap().sliding_window, None);
        let m = LLAMA.replace("LlamaForCausalLM", "MistralForCausalLM").replace("}", r#","sliding_window":4096}"#);
        assert_eq!(cfg(&m).unwrap().sliding_window, Some(4096));
    }

    #[test]
    fn rope_scaling_both_spellings() {
        let a = LLAMA.replace("}", r#","rope_scaling":{"type":"linear","factor":2.0}}"#);
        assert_eq!(cfg(&a).unwrap().rope_scaling, RopeScaling::Linear { factor: 2.0 });
        let b = LLAMA.replace("}", r#","rope_parameters":{"rope_type":"linear","factor":4.0,"rope_theta":5e5}}"#);
        let h = cfg(&b).unwrap();
        assert_eq!(h.rope_scaling, RopeScaling::Linear { factor: 4.0 });
        assert_eq!(h.rope_theta, 500_000.0);
        let c = LLAMA.replace("}", r#","rope_parameters":{"rope_type":"dynamic","factor":4.0}}"#);
        assert!(cfg(&c).unwrap_err().to_string().contains("dynamic"));
    }
}
