//! Hyperparameters read from GGUF metadata, checked before anything is allocated or divided.
//!
//! Architecture differences are data: every layer has a [`LayerConfig`] (attention window, RoPE
//! base), so the forward pass asks `cfg.layers[il]` instead of testing the architecture.

use ggml_kernels::ops::RopeKind;

use crate::gguf::{GgufError, GgufFile, ValueType};

use super::ModelError;

/// The architectures this engine runs (`general.architecture`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Gemma 3 (text): sliding-window and global layers, Q/K norms, pre- and post-norms, GELU.
    Gemma3,
    /// Llama 2/3 and Mistral (Mistral files say `llama`; a sliding window comes from metadata).
    Llama,
    /// Qwen2: Llama with Q/K/V biases and NeoX RoPE.
    Qwen2,
}

impl Arch {
    pub fn from_name(name: &str) -> Option<Arch> {
        match name {
            "gemma3" => Some(Arch::Gemma3),
            "llama" | "mistral" => Some(Arch::Llama),
            "qwen2" => Some(Arch::Qwen2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Arch::Gemma3 => "gemma3",
            Arch::Llama => "llama",
            Arch::Qwen2 => "qwen2",
        }
    }
}

/// Per-layer settings.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerConfig {
    /// Native sliding window (`p - k < window`); `None` for full attention.
    pub window: Option<u32>,
    /// RoPE frequency base of this layer.
    pub rope_base: f32,
}

/// Everything the forward pass needs to know about the model's shape.
#[derive(Clone, Debug)]
pub struct ModelConfig {
    pub arch: Arch,
    pub n_vocab: usize,
    pub n_ctx_train: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Key/query head dimension (`attention.key_length`).
    pub head_dim: usize,
    /// Value head dimension (`attention.value_length`).
    pub head_dim_v: usize,
    pub rms_eps: f32,
    pub rope_kind: RopeKind,
    /// Rotated dimensions per head.
    pub n_rot: usize,
    /// Linear RoPE position scaling (`1 / rope.scaling.factor`), 1 when absent.
    pub rope_freq_scale: f32,
    /// Multiplies attention scores.
    pub attn_scale: f32,
    /// Multiplies the token embeddings (Gemma: `sqrt(n_embd)`), `None` for no scaling.
    pub embd_scale: Option<f32>,
    pub layers: Vec<LayerConfig>,
}

/// Gemma 3 makes every sixth layer global and the others sliding-window (its `layer_types`), and
/// gives its sliding layers RoPE base 10,000 (`rope_local_base_freq`); neither is in GGUF metadata.
const GEMMA3_SWA_PATTERN: usize = 6;
const GEMMA3_ROPE_BASE_SWA: f32 = 10_000.0;

/// Largest sizes accepted from metadata, far above any real model, so that arithmetic on them
/// cannot overflow and nothing absurd is allocated.
const MAX_DIM: u32 = 1 << 20;
const MAX_LAYERS: u32 = 4096;

fn count(f: &GgufFile, key: &str, max: u32) -> Result<usize, ModelError> {
    let v: u32 = f.require(key)?;
    if v == 0 || v > max {
        return Err(ModelError::Config(format!("{key} = {v} is out of range (1..={max})")));
    }
    Ok(v as usize)
}

fn opt_count(f: &GgufFile, key: &str, max: u32) -> Result<Option<usize>, ModelError> {
    match f.get_as::<u32>(key)? {
        None => Ok(None),
        Some(_) => count(f, key, max).map(Some),
    }
}

fn opt_f32(f: &GgufFile, key: &str) -> Result<Option<f32>, GgufError> {
    f.get_as::<f32>(key)
}

impl ModelConfig {
    /// Reads and checks the hyperparameters of `f`.
    pub fn from_gguf(f: &GgufFile) -> Result<ModelConfig, ModelError> {
        let arch_name = f.get_str("general.architecture")?.ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?;
        let arch = Arch::from_name(arch_name).ok_or_else(|| ModelError::UnsupportedArch(arch_name.to_string()))?;
        let k = |suffix: &str| format!("{arch_name}.{suffix}");

        let n_embd = count(f, &k("embedding_length"), MAX_DIM)?;
        let n_layer = count(f, &k("block_count"), MAX_LAYERS)?;
        let n_ff = count(f, &k("feed_forward_length"), MAX_DIM)?;
        let n_head = count(f, &k("attention.head_count"), MAX_DIM)?;
        let n_head_kv = opt_count(f, &k("attention.head_count_kv"), MAX_DIM)?.unwrap_or(n_head);
        let n_ctx_train = count(f, &k("context_length"), u32::MAX)?;
        if n_head % n_head_kv != 0 {
            return Err(ModelError::Config(format!(
                "attention.head_count {n_head} is not a multiple of attention.head_count_kv {n_head_kv}"
            )));
        }
        let head_dim = match opt_count(f, &k("attention.key_length"), MAX_DIM)? {
            Some(d) => d,
            None => {
                if n_embd % n_head != 0 {
                    return Err(ModelError::Config(format!(
                        "embedding_length {n_embd} is not a multiple of attention.head_count {n_head}"
                    )));
                }
                n_embd / n_head
            }
        };
        let head_dim_v = opt_count(f, &k("attention.value_length"), MAX_DIM)?.unwrap_or(head_dim);
        let rms_eps = f.require::<f32>(&k("attention.layer_norm_rms_epsilon"))?;
        if !(rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(ModelError::Config(format!("attention.layer_norm_rms_epsilon = {rms_eps} is out of range (0, 1)")));
        }
        let rope_base = opt_f32(f, &k("rope.freq_base"))?.unwrap_or(10_000.0);
        if !(rope_base.is_finite() && rope_base > 1.0) {
            return Err(ModelError::Config(format!("rope.freq_base = {rope_base} must be finite and > 1")));
        }
        let n_rot = opt_count(f, &k("rope.dimension_count"), MAX_DIM)?.unwrap_or(head_dim);
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(ModelError::Config(format!("rope.dimension_count {n_rot} must be even and at most the head size {head_dim}")));
        }
        let rope_freq_scale = match f.get_str(&k("rope.scaling.type"))? {
            None | Some("none") => 1.0,
            Some("linear") => {
                let factor = opt_f32(f, &k("rope.scaling.factor"))?.unwrap_or(1.0);
                if !(factor.is_finite() && factor >= 1.0) {
                    return Err(ModelError::Config(format!("rope.scaling.factor = {factor} must be finite and >= 1")));
                }
                1.0 / factor
            }
            Some(other) => return Err(ModelError::Config(format!("rope.scaling.type {other:?} is not supported"))),
        };
        let window = opt_count(f, &k("attention.sliding_window"), u32::MAX)?.map(|w| w as u32);
        let n_vocab = match f.get_array("tokenizer.ggml.tokens", ValueType::String)? {
            Some(a) => a.len(),
            None => f
                .tensor("token_embd.weight")
                .map(|t| t.ne[1] as usize)
                .ok_or_else(|| ModelError::Config("no tokenizer.ggml.tokens and no token_embd.weight".into()))?,
        };

        let (rope_kind, attn_scale, embd_scale, layers) = match arch {
            Arch::Gemma3 => {
                let window = window.ok_or_else(|| GgufError::MissingKey(k("attention.sliding_window")))?;
                let layers = (0..n_layer)
                    .map(|il| {
                        if il % GEMMA3_SWA_PATTERN < GEMMA3_SWA_PATTERN - 1 {
                            LayerConfig { window: Some(window), rope_base: GEMMA3_ROPE_BASE_SWA }
                        } else {
                            LayerConfig { window: None, rope_base }
                        }
                    })
                    .collect();
                // Gemma 3 scales queries by query_pre_attn_scalar^-1/2, which equals the head size
                // for every released size but 27B; GGUF does not carry it.
                (RopeKind::Neox, 1.0 / (head_dim as f32).sqrt(), Some((n_embd as f32).sqrt()), layers)
            }
            Arch::Llama | Arch::Qwen2 => {
                let layers = vec![LayerConfig { window, rope_base }; n_layer];
                let kind = if arch == Arch::Qwen2 { RopeKind::Neox } else { RopeKind::Norm };
                (kind, 1.0 / (head_dim as f32).sqrt(), None, layers)
            }
        };

        Ok(ModelConfig {
            arch,
            n_vocab,
            n_ctx_train,
            n_embd,
            n_layer,
            n_ff,
            n_head,
            n_head_kv,
            head_dim,
            head_dim_v,
            rms_eps,
            rope_kind,
            n_rot,
            rope_freq_scale,
            attn_scale,
            embd_scale,
            layers,
        })
    }

    /// Parameters of the model (elements of all weights), for reports.
    pub fn describe(&self) -> String {
        let swa = self.layers.iter().filter(|l| l.window.is_some()).count();
        format!(
            "{} n_embd={} n_layer={} (sliding-window {swa}) n_head={} n_head_kv={} head_dim={} n_ff={} n_vocab={}",
            self.arch.name(),
            self.n_embd,
            self.n_layer,
            self.n_head,
            self.n_head_kv,
            self.head_dim,
            self.n_ff,
            self.n_vocab
        )
    }
}
