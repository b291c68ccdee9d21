//! Random-weight models of named shapes (`engine synth`): test models for every architecture and
//! the real shapes of a few released models, for tests and benchmarks that need no download.
//!
//! A file is fully determined by (preset, file type, seed, fast): every row of every tensor draws
//! from its own random stream, seeded from the seed, the tensor's name and the row index, so the
//! output does not depend on the thread count, and the numbers come from integer arithmetic and
//! IEEE `+ - *` only (no `ln`/`cos` from a platform math library), so they are the same on every
//! machine. Tests regenerate the tiny presets and compare hashes with committed fixtures.
//!
//! Weights have the scale of a freshly initialised model: matrices are approximately normal with
//! standard deviation `1/sqrt(row length)` (0.016-0.022 for the real shapes, the usual 0.02;
//! large enough in the tiny shapes that attention is far from uniform), norm weights are
//! `1 + 0.1 z`, biases `0.2 z`. GGUF stores Gemma's norm weights with the `+1` of its
//! `(1 + w)` RMSNorm already added (llama.cpp's converter does it), so Gemma norms here are also
//! around 1, exactly what a converted Gemma file holds.
//!
//! Tensors are generated and quantized in parallel (rayon), a chunk of rows at a time, and
//! streamed to the writer ([`TensorData::Stream`]): an 8B model is never in memory whole. The
//! type of each tensor comes from [`crate::quant_mix`], llama.cpp's rules for the file type.
//!
//! `--fast` ([`SynthParams::fast`]) is for benchmark-only models: quantizing is almost all of the
//! time (the reference K-quant scale search), so a tensor of a block-quantized type with more
//! than 256 rows (`POOL_ROWS`) quantizes only its first 256 rows (the pool, exactly the rows of
//! the normal file), and block `b` of every later row is block `b` of a pool row picked by the
//! row's own random stream. A ggml block carries its own scales, so the weights keep the scale
//! and the type mix of the normal file; rows differ only in which pool blocks they combine.
//! Float tensors and tensors of at most 256 rows are the same as without `--fast`.
//!
//! The vocabulary is SentencePiece-style (`tokenizer.ggml.model = "llama"`) for every
//! architecture, Qwen2 and Llama 3 included: llama.cpp picks the tokenizer from
//! `tokenizer.ggml.model`, independently of the architecture, and a byte-level BPE vocabulary
//! would need a consistent merge list. It holds the special tokens (Llama's `<unk> <s> </s>` or
//! Gemma's `<pad> <eos> <bos> <unk>`), the 256 byte tokens `<0x00>`..`<0xFF>` (type 6) and plain
//! pieces (letters, then letter strings with and without the `▁` word prefix) up to the size.
//!
//! llama.cpp (through llama-cpp-python 0.3.36) loads every tiny preset in every file type, accepts
//! the vocabulary and, on the f32 files, gives the logits of `tests/fixtures/llama_family` within
//! 3e-3 (its default f16 KV cache); except Mistral past its window: llama.cpp ignores
//! `llama.attention.sliding_window` for the `llama` architecture and runs full attention.

use std::collections::HashSet;
use std::io::{self, Write};
use std::path::Path;

use ggml_kernels::GgmlType;
use rayon::prelude::*;

use crate::gguf::{GgufError, GgufWriter, MetaArray, MetaValue, Progress, TensorData};
use crate::model::config::Arch;
use crate::quant_mix::{tensor_type, FileType, MixContext};

/// The seed `engine synth` uses when none is given.
pub const DEFAULT_SEED: u64 = 1;

/// A named model shape.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Preset {
    pub name: &'static str,
    pub arch: Arch,
    /// What `--arch` may also say for this preset ("mistral" for Mistral, which GGUF files
    /// describe as `llama`).
    pub family: &'static str,
    pub n_vocab: usize,
    pub n_ctx_train: u32,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_ff: usize,
    pub n_head: usize,
    pub n_head_kv: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    /// `attention.sliding_window`: Gemma 3's local layers, or Mistral's window on every layer.
    pub sliding_window: Option<u32>,
    /// No `output.weight`: the token embeddings are the output matrix too.
    pub tied_output: bool,
}

impl Preset {
    /// Elements of all weights.
    pub fn n_params(&self) -> u64 {
        plan(self, FileType::F32).iter().map(|t| t.ne.iter().product::<u64>()).sum()
    }
}

/// The tiny test shapes (a few hundred thousand parameters, vocabulary 320) and the real shapes.
///
/// Real shapes, from each model's Hugging Face `config.json`:
/// - `gemma3-270m` (google/gemma-3-270m): hidden_size 640, intermediate_size 2048, 18 layers,
///   4 heads, 1 KV head, head_dim 256, vocab 262144, max_position_embeddings 32768,
///   rms_norm_eps 1e-6, rope_theta 1e6 (local layers 1e4), sliding_window 512, tied embeddings.
/// - `llama3-8b` (meta-llama/Meta-Llama-3-8B): hidden_size 4096, intermediate_size 14336,
///   32 layers, 32 heads, 8 KV heads, vocab 128256, max_position_embeddings 8192,
///   rms_norm_eps 1e-5, rope_theta 500000, separate output matrix.
/// - `llama3.2-1b` (meta-llama/Llama-3.2-1B): hidden_size 2048, intermediate_size 8192,
///   16 layers, 32 heads, 8 KV heads, head_dim 64, vocab 128256, max_position_embeddings 131072,
///   rms_norm_eps 1e-5, rope_theta 500000, tied embeddings. Its `rope_scaling` (type "llama3",
///   factor 32), which llama.cpp carries as a `rope_freqs.weight` tensor, is left out: the engine
///   does not implement it yet, and random weights do not care.
/// - `qwen2.5-7b` (Qwen/Qwen2.5-7B): hidden_size 3584, intermediate_size 18944, 28 layers,
///   28 heads, 4 KV heads, vocab 152064, max_position_embeddings 131072, rms_norm_eps 1e-6,
///   rope_theta 1e6, Q/K/V biases, separate output matrix.
pub const PRESETS: &[Preset] = &[
    Preset {
        name: "llama-tiny",
        arch: Arch::Llama,
        family: "llama",
        n_vocab: 320,
        n_ctx_train: 256,
        n_embd: 64,
        n_layer: 2,
        n_ff: 160,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
        rms_eps: 1e-5,
        rope_base: 10_000.0,
        sliding_window: None,
        tied_output: false,
    },
    // Mistral as llama.cpp's converter writes it (architecture `llama`), with a window of 8 that
    // this engine and transformers' Mistral apply (llama.cpp does not: see the module comment).
    Preset {
        name: "mistral-tiny",
        arch: Arch::Llama,
        family: "mistral",
        n_vocab: 320,
        n_ctx_train: 256,
        n_embd: 64,
        n_layer: 2,
        n_ff: 160,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 16,
        rms_eps: 1e-5,
        rope_base: 10_000.0,
        sliding_window: Some(8),
        tied_output: false,
    },
    Preset {
        name: "qwen2-tiny",
        arch: Arch::Qwen2,
        family: "qwen2",
        n_vocab: 320,
        n_ctx_train: 256,
        n_embd: 128,
        n_layer: 3,
        n_ff: 352,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 32,
        rms_eps: 1e-6,
        rope_base: 1_000_000.0,
        sliding_window: None,
        tied_output: true,
    },
    // Six layers, so that Gemma 3's pattern (five local layers, then a global one) is all there.
    Preset {
        name: "gemma3-tiny",
        arch: Arch::Gemma3,
        family: "gemma3",
        n_vocab: 320,
        n_ctx_train: 256,
        n_embd: 128,
        n_layer: 6,
        n_ff: 512,
        n_head: 4,
        n_head_kv: 2,
        head_dim: 32,
        rms_eps: 1e-6,
        rope_base: 1_000_000.0,
        sliding_window: Some(8),
        tied_output: true,
    },
    Preset {
        name: "gemma3-270m",
        arch: Arch::Gemma3,
        family: "gemma3",
        n_vocab: 262_144,
        n_ctx_train: 32_768,
        n_embd: 640,
        n_layer: 18,
        n_ff: 2048,
        n_head: 4,
        n_head_kv: 1,
        head_dim: 256,
        rms_eps: 1e-6,
        rope_base: 1_000_000.0,
        sliding_window: Some(512),
        tied_output: true,
    },
    Preset {
        name: "llama3-8b",
        arch: Arch::Llama,
        family: "llama",
        n_vocab: 128_256,
        n_ctx_train: 8192,
        n_embd: 4096,
        n_layer: 32,
        n_ff: 14_336,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 128,
        rms_eps: 1e-5,
        rope_base: 500_000.0,
        sliding_window: None,
        tied_output: false,
    },
    Preset {
        name: "llama3.2-1b",
        arch: Arch::Llama,
        family: "llama",
        n_vocab: 128_256,
        n_ctx_train: 131_072,
        n_embd: 2048,
        n_layer: 16,
        n_ff: 8192,
        n_head: 32,
        n_head_kv: 8,
        head_dim: 64,
        rms_eps: 1e-5,
        rope_base: 500_000.0,
        sliding_window: None,
        tied_output: true,
    },
    Preset {
        name: "qwen2.5-7b",
        arch: Arch::Qwen2,
        family: "qwen2",
        n_vocab: 152_064,
        n_ctx_train: 131_072,
        n_embd: 3584,
        n_layer: 28,
        n_ff: 18_944,
        n_head: 28,
        n_head_kv: 4,
        head_dim: 128,
        rms_eps: 1e-6,
        rope_base: 1_000_000.0,
        sliding_window: None,
        tied_output: false,
    },
];

/// Why a model could not be synthesized.
#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("unknown preset {name:?} (known: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("unknown architecture {0:?} (known: gemma3, llama, mistral, qwen2)")]
    UnknownArch(String),
    #[error("preset {preset:?} is a {family} model, not {arch}")]
    ArchMismatch { arch: String, preset: String, family: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// The preset called `name`.
pub fn preset(name: &str) -> Option<&'static Preset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The preset called `name`, checked against the architecture the user named (`llama`,
/// `mistral`, `qwen2`, `gemma3`; `llama` also covers the Mistral preset, whose files say llama).
pub fn resolve(arch: &str, name: &str) -> Result<&'static Preset, SynthError> {
    if Arch::from_name(arch).is_none() {
        return Err(SynthError::UnknownArch(arch.to_string()));
    }
    let p = preset(name).ok_or_else(|| SynthError::UnknownPreset {
        name: name.to_string(),
        known: PRESETS.iter().map(|p| p.name).collect::<Vec<_>>().join(", "),
    })?;
    if arch != p.family && arch != p.arch.name() {
        return Err(SynthError::ArchMismatch { arch: arch.to_string(), preset: p.name.to_string(), family: p.family.to_string() });
    }
    Ok(p)
}

/// How a tensor's values are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// `z / sqrt(row length)`.
    Matrix,
    /// `1 + 0.1 z`.
    Norm,
    /// `0.2 z`.
    Bias,
}

/// One tensor of a synthesized file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    pub name: String,
    /// ggml order, row length first.
    pub ne: Vec<u64>,
    pub ty: GgmlType,
    pub init: Init,
}

/// The tensors of `p` in a file of type `ftype`, in file order (embeddings, blocks, output).
pub fn plan(p: &Preset, ftype: FileType) -> Vec<TensorPlan> {
    let (e, hd) = (p.n_embd as u64, p.head_dim as u64);
    let (q, kv, ff, vocab) = ((p.n_head * p.head_dim) as u64, (p.n_head_kv * p.head_dim) as u64, p.n_ff as u64, p.n_vocab as u64);
    let gemma = p.arch == Arch::Gemma3;
    let qwen = p.arch == Arch::Qwen2;
    let mut out: Vec<(String, Vec<u64>, Init)> = vec![("token_embd.weight".into(), vec![e, vocab], Init::Matrix)];
    for il in 0..p.n_layer {
        let n = |s: &str| format!("blk.{il}.{s}");
        out.push((n("attn_norm.weight"), vec![e], Init::Norm));
        out.push((n("attn_q.weight"), vec![e, q], Init::Matrix));
        out.push((n("attn_k.weight"), vec![e, kv], Init::Matrix));
        out.push((n("attn_v.weight"), vec![e, kv], Init::Matrix));
        if qwen {
            out.push((n("attn_q.bias"), vec![q], Init::Bias));
            out.push((n("attn_k.bias"), vec![kv], Init::Bias));
            out.push((n("attn_v.bias"), vec![kv], Init::Bias));
        }
        if gemma {
            out.push((n("attn_q_norm.weight"), vec![hd], Init::Norm));
            out.push((n("attn_k_norm.weight"), vec![hd], Init::Norm));
        }
        out.push((n("attn_output.weight"), vec![q, e], Init::Matrix));
        if gemma {
            out.push((n("post_attention_norm.weight"), vec![e], Init::Norm));
        }
        out.push((n("ffn_norm.weight"), vec![e], Init::Norm));
        out.push((n("ffn_gate.weight"), vec![e, ff], Init::Matrix));
        out.push((n("ffn_up.weight"), vec![e, ff], Init::Matrix));
        out.push((n("ffn_down.weight"), vec![ff, e], Init::Matrix));
        if gemma {
            out.push((n("post_ffw_norm.weight"), vec![e], Init::Norm));
        }
    }
    out.push(("output_norm.weight".into(), vec![e], Init::Norm));
    if !p.tied_output {
        out.push(("output.weight".into(), vec![e, vocab], Init::Matrix));
    }
    let ctx = MixContext { n_layer: p.n_layer, has_output: !p.tied_output, n_gqa: p.n_head / p.n_head_kv.max(1) };
    out.into_iter()
        .map(|(name, ne, init)| {
            let ty = tensor_type(ftype, &name, &ne, GgmlType::F32, &ctx);
            TensorPlan { name, ne, ty, init }
        })
        .collect()
}

/// What to synthesize.
#[derive(Clone, Copy, Debug)]
pub struct SynthParams {
    pub preset: &'static Preset,
    pub ftype: FileType,
    pub seed: u64,
    /// Build the rows of large quantized tensors from blocks of their first rows (`--fast`; see
    /// the module comment): benchmark-only weights, many times faster to make.
    pub fast: bool,
}

/// Writes the model atomically at `path`; returns the file size.
pub fn synthesize(params: &SynthParams, path: &Path, progress: Option<Progress<'_>>) -> Result<u64, SynthError> {
    let mut w = writer(params)?;
    Ok(w.write_atomic(path, progress)?)
}

/// Total bytes of tensor data of the file [`synthesize`] writes.
pub fn tensor_bytes(params: &SynthParams) -> u64 {
    plan(params.preset, params.ftype).iter().map(|t| t.ty.tensor_nbytes(&t.ne).unwrap_or(0)).sum()
}

/// A writer holding the model's metadata and its tensors as streams.
pub fn writer(params: &SynthParams) -> Result<GgufWriter<'static>, SynthError> {
    let p = params.preset;
    let mut w = GgufWriter::new();
    let arch = p.arch.name();
    let k = |s: &str| format!("{arch}.{s}");
    let u32_of = |v: usize| MetaValue::U32(v as u32);

    w.set("general.architecture", MetaValue::String(arch.into()))?;
    w.set("general.name", MetaValue::String(p.name.into()))?;
    w.set(
        "general.description",
        MetaValue::String(format!(
            "random weights: engine synth --preset {} --type {} --seed {}{}",
            p.name,
            params.ftype,
            params.seed,
            if params.fast { " --fast" } else { "" }
        )),
    )?;
    w.set("general.file_type", MetaValue::U32(params.ftype.id()))?;
    w.set("general.quantization_version", MetaValue::U32(2))?;
    w.set(&k("context_length"), MetaValue::U32(p.n_ctx_train))?;
    w.set(&k("embedding_length"), u32_of(p.n_embd))?;
    w.set(&k("block_count"), u32_of(p.n_layer))?;
    w.set(&k("feed_forward_length"), u32_of(p.n_ff))?;
    w.set(&k("attention.head_count"), u32_of(p.n_head))?;
    w.set(&k("attention.head_count_kv"), u32_of(p.n_head_kv))?;
    w.set(&k("attention.layer_norm_rms_epsilon"), MetaValue::F32(p.rms_eps))?;
    w.set(&k("rope.freq_base"), MetaValue::F32(p.rope_base))?;
    match p.arch {
        Arch::Llama => {
            // llama.cpp's converter writes both for Llama; n_embd / n_head must equal head_dim.
            w.set(&k("rope.dimension_count"), u32_of(p.head_dim))?;
            w.set(&k("vocab_size"), u32_of(p.n_vocab))?;
        }
        Arch::Gemma3 => {
            w.set(&k("attention.key_length"), u32_of(p.head_dim))?;
            w.set(&k("attention.value_length"), u32_of(p.head_dim))?;
        }
        Arch::Qwen2 => {}
    }
    if let Some(window) = p.sliding_window {
        w.set(&k("attention.sliding_window"), MetaValue::U32(window))?;
    }
    set_vocab(&mut w, p)?;

    for (i, t) in plan(p, params.ftype).into_iter().enumerate() {
        let stream = mix64(params.seed ^ mix64(fnv1a(t.name.as_bytes()) ^ i as u64));
        let job = TensorJob { stream, ne: t.ne.clone(), ty: t.ty, init: t.init, fast: params.fast };
        w.add_tensor(&t.name, t.ty, &t.ne, TensorData::Stream(Box::new(move |out: &mut dyn Write| job.write(out))))?;
    }
    Ok(w)
}

/// The tokenizer metadata: an SPM vocabulary of `p.n_vocab` tokens.
fn set_vocab(w: &mut GgufWriter<'_>, p: &Preset) -> Result<(), SynthError> {
    const NORMAL: i32 = 1;
    const UNKNOWN: i32 = 2;
    const CONTROL: i32 = 3;
    const BYTE: i32 = 6;
    /// The special tokens (text, type) at the start of the vocabulary, and which is which.
    struct Specials {
        tokens: &'static [(&'static str, i32)],
        bos: u32,
        eos: u32,
        unk: u32,
        pad: Option<u32>,
    }
    let gemma = p.arch == Arch::Gemma3;
    let Specials { tokens: specials, bos, eos, unk, pad } = if gemma {
        Specials {
            tokens: &[("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN)],
            bos: 2,
            eos: 1,
            unk: 3,
            pad: Some(0),
        }
    } else {
        Specials { tokens: &[("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL)], bos: 1, eos: 2, unk: 0, pad: None }
    };
    let n = p.n_vocab;
    let mut tokens: Vec<String> = Vec::with_capacity(n);
    let mut types: Vec<i32> = Vec::with_capacity(n);
    let mut scores: Vec<f32> = Vec::with_capacity(n);
    for &(text, ty) in specials {
        tokens.push(text.into());
        types.push(ty);
        scores.push(0.0);
    }
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(BYTE);
        scores.push(0.0);
    }
    let mut seen: HashSet<String> = tokens.iter().cloned().collect();
    let mut rank = 0f32;
    for piece in pieces() {
        if tokens.len() >= n {
            break;
        }
        if seen.insert(piece.clone()) {
            tokens.push(piece);
            types.push(NORMAL);
            // SPM merges the highest-scoring piece first: earlier (shorter) pieces score higher.
            rank += 1.0;
            scores.push(-rank);
        }
    }
    debug_assert_eq!(tokens.len(), n, "the piece generator ran dry");
    w.set("tokenizer.ggml.model", MetaValue::String("llama".into()))?;
    w.set("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::String(tokens)))?;
    w.set("tokenizer.ggml.scores", MetaValue::Array(MetaArray::F32(scores)))?;
    w.set("tokenizer.ggml.token_type", MetaValue::Array(MetaArray::I32(types)))?;
    w.set("tokenizer.ggml.bos_token_id", MetaValue::U32(bos))?;
    w.set("tokenizer.ggml.eos_token_id", MetaValue::U32(eos))?;
    w.set("tokenizer.ggml.unknown_token_id", MetaValue::U32(unk))?;
    if let Some(pad) = pad {
        w.set("tokenizer.ggml.padding_token_id", MetaValue::U32(pad))?;
    }
    w.set("tokenizer.ggml.add_bos_token", MetaValue::Bool(true))?;
    w.set("tokenizer.ggml.add_eos_token", MetaValue::Bool(false))?;
    // Gemma's tokenizer adds no space before the text; Llama's SPM does.
    w.set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(!gemma))?;
    Ok(())
}

/// Plain vocabulary pieces: the word-start marker, a few common words, then every lower-case
/// letter string by length, each bare and with the `▁` prefix. Endless for practical sizes
/// (914,000 pieces of length 4 alone).
fn pieces() -> impl Iterator<Item = String> {
    const WORDS: &[&str] = &["the", "of", "and", "to", "in", "is", "that", "it", "for", "on", "with", "as", "was", "at", "by"];
    let letters: Vec<char> = ('a'..='z').collect();
    let extra = std::iter::once("\u{2581}".to_string())
        .chain(('0'..='9').chain(['.', ',', '!', '?', '\'', '-']).map(|c| c.to_string()))
        .chain(WORDS.iter().map(|w| format!("\u{2581}{w}")));
    let strings = (1u32..).flat_map(move |len| {
        let letters = letters.clone();
        let count = 26u64.pow(len);
        (0..count).flat_map(move |mut i| {
            let mut s = String::with_capacity(len as usize);
            for _ in 0..len {
                s.insert(0, letters[(i % 26) as usize]);
                i /= 26;
            }
            [format!("\u{2581}{s}"), s]
        })
    });
    extra.chain(strings)
}

/// Bytes generated per step of a tensor: the rows of one step are drawn and quantized in
/// parallel, then written.
const CHUNK_BYTES: usize = 16 << 20;

/// Rows drawn and quantized for a tensor under `--fast` (the pool); its later rows are made of
/// their blocks.
const POOL_ROWS: usize = 256;

/// Generates one tensor's data.
struct TensorJob {
    /// The tensor's random stream (from the seed, its name and index).
    stream: u64,
    ne: Vec<u64>,
    ty: GgmlType,
    init: Init,
    /// Rows past the first [`POOL_ROWS`] of a quantized type are made of pool blocks.
    fast: bool,
}

impl TensorJob {
    fn write(&self, out: &mut dyn Write) -> io::Result<()> {
        let ncols = self.ne[0] as usize;
        let nrows: usize = self.ne[1..].iter().product::<u64>() as usize;
        let row_bytes = self.ty.row_nbytes(ncols as u64).map_err(|e| io::Error::other(e.to_string()))? as usize;
        // Under --fast, rows 0..POOL_ROWS quantized as without it: the pool.
        let pool = if self.fast && self.ty.is_quantized() && nrows > POOL_ROWS {
            let mut pool = vec![0u8; POOL_ROWS * row_bytes];
            self.quantize_rows(0, &mut pool, row_bytes)?;
            Some(pool)
        } else {
            None
        };
        let rows_per_step = (CHUNK_BYTES / row_bytes.max(1)).clamp(1, nrows.max(1));
        let mut buf = vec![0u8; rows_per_step * row_bytes];
        let mut row0 = 0;
        while row0 < nrows {
            let n = rows_per_step.min(nrows - row0);
            let step = &mut buf[..n * row_bytes];
            match &pool {
                Some(pool) => self.pool_rows(pool, row0, step, row_bytes),
                None => self.quantize_rows(row0, step, row_bytes)?,
            }
            out.write_all(step)?;
            row0 += n;
        }
        Ok(())
    }

    /// Draws and quantizes rows `row0..` into `dst` (`row_bytes` each), rows in parallel.
    fn quantize_rows(&self, row0: usize, dst: &mut [u8], row_bytes: usize) -> io::Result<()> {
        let ncols = self.ne[0] as usize;
        dst.par_chunks_mut(row_bytes).enumerate().try_for_each_init(
            || vec![0f32; ncols],
            |x, (i, row)| {
                self.fill_row((row0 + i) as u64, x);
                ggml_kernels::quants::quantize(self.ty, x, row).map_err(|e| io::Error::other(e.to_string()))
            },
        )
    }

    /// Rows `row0..` of a `--fast` tensor into `dst` (`row_bytes` each), rows in parallel: a row
    /// inside the pool is the pool row; block `b` of a later row is block `b` of the pool row
    /// that the row's `b`-th pick ([`TensorJob::picks`]) names.
    fn pool_rows(&self, pool: &[u8], row0: usize, dst: &mut [u8], row_bytes: usize) {
        let pool_len = pool.len() / row_bytes;
        let block_bytes = self.ty.type_size();
        dst.par_chunks_mut(row_bytes).enumerate().for_each(|(i, row)| {
            let r = row0 + i;
            if r < pool_len {
                row.copy_from_slice(&pool[r * row_bytes..(r + 1) * row_bytes]);
                return;
            }
            let mut picks = self.picks(r as u64);
            for (b, block) in row.chunks_exact_mut(block_bytes).enumerate() {
                let src = (picks.next() % pool_len as u64) as usize * row_bytes + b * block_bytes;
                block.copy_from_slice(&pool[src..src + block_bytes]);
            }
        });
    }

    /// Row `row`'s pool picks under `--fast`, one per block: a stream apart from the row's values
    /// in [`TensorJob::fill_row`] (the complement of the tensor's stream).
    fn picks(&self, row: u64) -> SplitMix64 {
        row_stream(!self.stream, row)
    }

    /// Row `row`'s values.
    fn fill_row(&self, row: u64, x: &mut [f32]) {
        let mut rng = row_stream(self.stream, row);
        let (scale, offset) = match self.init {
            Init::Matrix => (1.0 / (x.len() as f32).sqrt(), 0.0),
            Init::Norm => (0.1, 1.0),
            Init::Bias => (0.2, 0.0),
        };
        for v in x.iter_mut() {
            *v = offset + scale * approx_normal(rng.next());
        }
    }
}

/// A standard normal, approximately: the sum of four uniforms (the four 16-bit parts of `bits`),
/// centred and scaled to unit variance (Irwin-Hall; within +-3.46). Exact integer-to-float
/// conversions and IEEE arithmetic only, so every machine gets the same value.
#[inline]
fn approx_normal(bits: u64) -> f32 {
    let s = (bits & 0xFFFF) + ((bits >> 16) & 0xFFFF) + ((bits >> 32) & 0xFFFF) + (bits >> 48);
    // Each part is uniform on (k + 0.5) / 65536: mean 1/2, variance 1/12.
    const SQRT3: f32 = 1.732_050_8;
    ((s as f32 + 2.0) * (1.0 / 65536.0) - 2.0) * SQRT3
}

/// The random stream of row `row` of a tensor whose stream is `stream`.
fn row_stream(stream: u64, row: u64) -> SplitMix64 {
    SplitMix64(mix64(stream ^ row.wrapping_mul(0x9E37_79B9_7F4A_7C15)))
}

/// SplitMix64 (Steele, Lea, Flood 2014): one 64-bit state, one multiply-xorshift per output.
struct SplitMix64(u64);

impl SplitMix64 {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
}

/// SplitMix64's output function: a bijective 64-bit mix.
#[inline]
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// FNV-1a, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xCBF2_9CE4_8422_2325, |h, &b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01B3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::GgufFile;
    use crate::model::kv_cache::KvType;
    use crate::model::{Logits, Model, Session, SessionParams};
    use crate::quant_mix::{use_more_bits, ALL_FILE_TYPES};
    use crate::tokenizer::{TokenizeOptions, Tokenizer};

    fn tiny() -> impl Iterator<Item = &'static Preset> {
        PRESETS.iter().filter(|p| p.name.ends_with("-tiny"))
    }

    /// With and without `--fast`.
    #[test]
    fn every_tiny_preset_and_type_loads_and_runs() {
        let dir = tempfile::tempdir().unwrap();
        for p in tiny() {
            for ftype in ALL_FILE_TYPES {
                for fast in [false, true] {
                    let params = SynthParams { preset: p, ftype, seed: 7, fast };
                    let path = dir.path().join(format!("{}-{ftype}-{fast}.gguf", p.name));
                    let size = synthesize(&params, &path, None).unwrap();
                    assert_eq!(size, std::fs::metadata(&path).unwrap().len());
                    let file = GgufFile::open(&path).unwrap();
                    let planned = plan(p, ftype);
                    assert_eq!(file.tensors().len(), planned.len());
                    for (t, want) in file.tensors().iter().zip(&planned) {
                        assert_eq!((t.name.as_str(), t.ty, t.dims()), (want.name.as_str(), want.ty, want.ne.as_slice()));
                    }
                    let model = Model::load(&file).unwrap_or_else(|e| panic!("{} {ftype} fast {fast}: {e}", p.name));
                    assert_eq!(model.cfg.n_vocab, p.n_vocab);
                    assert_eq!(model.cfg.head_dim, p.head_dim);
                    assert_eq!(model.cfg.layers.iter().filter(|l| l.window.is_some()).count(), match (p.arch, p.sliding_window) {
                        (Arch::Gemma3, _) => p.n_layer - p.n_layer / 6,
                        (_, Some(_)) => p.n_layer,
                        (_, None) => 0,
                    });
                    let tok = Tokenizer::from_gguf(&file).unwrap();
                    let ids = tok.tokenize("the cat sat on 42 mats!", TokenizeOptions::default());
                    assert!(ids.len() > 2, "{ids:?}");
                    let sp = SessionParams { n_ctx: 64, kv_type: KvType::F32, ..SessionParams::default() };
                    let mut s = Session::new(&model, &sp).unwrap();
                    let logits = s.eval(&ids, Logits::Last).unwrap();
                    assert_eq!(logits.len(), p.n_vocab);
                    assert!(logits.iter().all(|v| v.is_finite()));
                }
            }
        }
    }

    #[test]
    fn output_is_a_function_of_preset_type_seed_and_fast_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = preset("qwen2-tiny").unwrap();
        let write = |seed: u64, fast: bool, threads: usize, name: &str| {
            let path = dir.path().join(name);
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            pool.install(|| synthesize(&SynthParams { preset: p, ftype: FileType::Q4KM, seed, fast }, &path, None)).unwrap();
            std::fs::read(&path).unwrap()
        };
        let a = write(3, false, 1, "a.gguf");
        assert_eq!(a, write(3, false, 3, "b.gguf"), "thread count changed the output");
        assert_ne!(a, write(4, false, 2, "c.gguf"), "seed did not change the output");
        let f = write(3, true, 1, "f.gguf");
        assert_eq!(f, write(3, true, 3, "g.gguf"), "thread count changed the --fast output");
        assert_ne!(f, write(4, true, 2, "h.gguf"), "seed did not change the --fast output");
        assert_ne!(a, f, "--fast did not change the output");
    }

    /// `--fast` changes only the quantized tensors of more than `POOL_ROWS` rows, in every tiny
    /// preset and file type; those keep the normal file's first `POOL_ROWS` rows (the pool), and
    /// every block of a later row is the same-column block of a pool row.
    #[test]
    fn fast_rows_are_made_of_the_normal_files_first_rows() {
        let dir = tempfile::tempdir().unwrap();
        let mut pooled = 0;
        for p in tiny() {
            for ftype in ALL_FILE_TYPES {
                let open = |fast: bool| {
                    let path = dir.path().join(format!("{}-{ftype}-{fast}.gguf", p.name));
                    synthesize(&SynthParams { preset: p, ftype, seed: 5, fast }, &path, None).unwrap();
                    GgufFile::open(&path).unwrap()
                };
                let (normal, fast) = (open(false), open(true));
                let description = |f: &GgufFile| f.get_str("general.description").unwrap().unwrap().to_string();
                assert_eq!(description(&fast), description(&normal) + " --fast");
                for (a, b) in normal.tensors().iter().zip(fast.tensors()) {
                    assert_eq!((&a.name, a.ty, a.dims()), (&b.name, b.ty, b.dims()));
                    let (a_data, b_data) = (normal.tensor_data(a), fast.tensor_data(b));
                    let nrows = a.dims()[1..].iter().product::<u64>() as usize;
                    if !a.ty.is_quantized() || nrows <= POOL_ROWS {
                        assert!(a_data == b_data, "{} {ftype} {}: changed by --fast", p.name, a.name);
                        continue;
                    }
                    pooled += 1;
                    let row_bytes = a.ty.row_nbytes(a.dims()[0]).unwrap() as usize;
                    let block_bytes = a.ty.type_size();
                    let pool = &a_data[..POOL_ROWS * row_bytes];
                    assert!(pool == &b_data[..POOL_ROWS * row_bytes], "{} {ftype} {}: pool rows differ", p.name, a.name);
                    let pool_blocks: HashSet<(usize, &[u8])> =
                        pool.chunks_exact(row_bytes).flat_map(|src| src.chunks_exact(block_bytes).enumerate()).collect();
                    let later = b_data[POOL_ROWS * row_bytes..].chunks_exact(row_bytes);
                    let distinct: HashSet<&[u8]> = later.clone().collect();
                    assert!(distinct.len() > later.len() / 2, "{} {ftype} {}: {} distinct rows", p.name, a.name, distinct.len());
                    for (r, row) in later.enumerate() {
                        let at = format!("{} {ftype} {} row {}", p.name, a.name, POOL_ROWS + r);
                        assert!(row != &a_data[(POOL_ROWS + r) * row_bytes..][..row_bytes], "{at}: as without --fast");
                        for (col, block) in row.chunks_exact(block_bytes).enumerate() {
                            assert!(pool_blocks.contains(&(col, block)), "{at}: block {col} is no pool block");
                        }
                    }
                }
            }
        }
        assert!(pooled > 100, "only {pooled} tensors took the --fast path");
    }

    #[test]
    fn weights_have_the_intended_scale() {
        let p = preset("llama-tiny").unwrap();
        let job = TensorJob { stream: 99, ne: vec![4096, 4], ty: GgmlType::F32, init: Init::Matrix, fast: false };
        let mut x = vec![0f32; 4096];
        job.fill_row(0, &mut x);
        let mean = x.iter().sum::<f32>() / x.len() as f32;
        let std = (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / x.len() as f32).sqrt();
        assert!(mean.abs() < 0.002 && (std - 1.0 / 64.0).abs() < 0.001, "mean {mean} std {std}");
        let job = TensorJob { init: Init::Norm, ..job };
        job.fill_row(1, &mut x);
        assert!(x.iter().all(|&v| (0.6..1.4).contains(&v)));
        assert!(p.n_params() > 100_000);
    }

    /// A `--fast` Q4_K matrix of 1024 x 1024 has the scale of the normal one, in the rows made of
    /// pool blocks as a whole and row by row.
    #[test]
    fn fast_weights_have_the_intended_scale() {
        let (ncols, nrows) = (1024, 1024);
        let job = TensorJob { stream: 99, ne: vec![ncols as u64, nrows as u64], ty: GgmlType::Q4_K, init: Init::Matrix, fast: true };
        let values = |job: &TensorJob| {
            let mut bytes = Vec::new();
            job.write(&mut bytes).unwrap();
            let mut x = vec![0f32; ncols * nrows];
            ggml_kernels::quants::dequantize(job.ty, &bytes, &mut x).unwrap();
            x
        };
        let mean_std = |x: &[f32]| {
            let mean = x.iter().sum::<f32>() / x.len() as f32;
            (mean, (x.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / x.len() as f32).sqrt())
        };
        let fast = values(&job);
        let (_, normal_std) = mean_std(&values(&TensorJob { fast: false, ..job }));
        let later = &fast[POOL_ROWS * ncols..];
        let (mean, std) = mean_std(later);
        let want = 1.0 / 32.0;
        assert!(
            mean.abs() < 0.001 && (std - want).abs() < 0.002 && (std - normal_std).abs() < 0.0005,
            "mean {mean} std {std} (normal {normal_std})"
        );
        for (r, row) in later.chunks_exact(ncols).enumerate() {
            let (mean, std) = mean_std(row);
            assert!(mean.abs() < 0.005 && (std - want).abs() < 0.004, "row {}: mean {mean} std {std}", POOL_ROWS + r);
        }
    }

    #[test]
    fn q4_k_m_mix_follows_llama_cpp() {
        for p in PRESETS {
            let planned = plan(p, FileType::Q4KM);
            for t in &planned {
                let layer = t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|n| n.parse::<usize>().ok());
                let fits = |ty: GgmlType| t.ne[0] % ty.block_size() as u64 == 0;
                let want = if t.ne.len() == 1 {
                    GgmlType::F32
                } else if t.name == "output.weight" || (t.name == "token_embd.weight" && p.tied_output) {
                    if fits(GgmlType::Q4_K) { GgmlType::Q6_K } else { GgmlType::Q8_0 }
                } else if (t.name.ends_with("attn_v.weight") || t.name.ends_with("ffn_down.weight"))
                    && use_more_bits(layer.unwrap(), p.n_layer)
                {
                    if fits(GgmlType::Q6_K) { GgmlType::Q6_K } else { GgmlType::Q8_0 }
                } else if fits(GgmlType::Q4_K) {
                    GgmlType::Q4_K
                } else {
                    GgmlType::Q5_0
                };
                assert_eq!(t.ty, want, "{} {}", p.name, t.name);
            }
        }
        // The 8B shape: every row fits the K-quants, so the mix shows in full.
        let planned = plan(preset("llama3-8b").unwrap(), FileType::Q4KM);
        let count = |ty: GgmlType| planned.iter().filter(|t| t.ty == ty).count();
        assert_eq!((count(GgmlType::Q6_K), count(GgmlType::Q4_K), count(GgmlType::F32)), (16 + 16 + 1, 32 * 7 - 32 + 1, 65));
    }

    /// The 270M shape's plan gives every tensor the type llama.cpp gave it in the default model,
    /// a Q4_K_M file made by llama-quantize.
    #[test]
    fn gemma3_270m_plan_matches_llama_cpp_q4_k_m_file() {
        let Ok(path) = crate::model_path::default_model_path() else { return };
        let Ok(file) = GgufFile::open(&path) else {
            eprintln!("skipped: default model not in the cache ({})", path.display());
            return;
        };
        let planned = plan(preset("gemma3-270m").unwrap(), FileType::Q4KM);
        assert_eq!(planned.len(), file.tensors().len());
        for t in &planned {
            let real = file.tensor(&t.name).unwrap_or_else(|| panic!("{} not in the default model", t.name));
            assert_eq!((t.ty, t.ne.as_slice()), (real.ty, real.dims()), "{}", t.name);
        }
    }

    #[test]
    fn vocabulary_fills_the_real_sizes() {
        for name in ["gemma3-270m", "qwen2.5-7b"] {
            let p = preset(name).unwrap();
            let w = writer(&SynthParams { preset: p, ftype: FileType::Q4KM, seed: 1, fast: false }).unwrap();
            match w.get("tokenizer.ggml.tokens") {
                Some(MetaValue::Array(MetaArray::String(t))) => assert_eq!(t.len(), p.n_vocab),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn resolve_checks_names() {
        assert_eq!(resolve("llama", "llama-tiny").unwrap().name, "llama-tiny");
        assert_eq!(resolve("mistral", "mistral-tiny").unwrap().arch, Arch::Llama);
        assert_eq!(resolve("llama", "mistral-tiny").unwrap().name, "mistral-tiny");
        assert!(matches!(resolve("llama", "gemma3-270m"), Err(SynthError::ArchMismatch { .. })));
        assert!(matches!(resolve("mistral", "llama-tiny"), Err(SynthError::ArchMismatch { .. })));
        assert!(matches!(resolve("llama", "llama-huge"), Err(SynthError::UnknownPreset { .. })));
        assert!(matches!(resolve("gpt2", "llama-tiny"), Err(SynthError::UnknownArch(_))));
    }
}

