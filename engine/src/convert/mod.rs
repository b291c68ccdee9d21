//! Hugging Face checkpoints to GGUF, as llama.cpp's `convert_hf_to_gguf.py` writes them, so
//! that other GGUF engines load the output.
//!
//! A checkpoint directory holds `config.json`, the weights (`model.safetensors`, or shards listed
//! by `model.safetensors.index.json`) and tokenizer files. Conversion reads and checks them in
//! this order, before anything is written:
//!
//! 1. [`hparams`]: the architecture (Llama, Mistral, Qwen2, Gemma 3 text) and hyperparameters.
//! 2. [`vocab`]: the tokenizer metadata (`tokenizer.model`, or `tokenizer.json`; or another GGUF
//!    file's with `vocab_from`).
//! 3. [`checkpoint`]: the safetensors shards, mapped, headers validated.
//! 4. [`tensors`]: each checkpoint tensor's GGUF name, the shape `config.json` implies, and the
//!    changes llama.cpp makes (Llama's Q/K row permutation, Gemma's norm `+1`, tied embeddings).
//!
//! The output's tensor types follow [`crate::quant_mix`] for the requested [`FileType`]: norms
//! and biases F32, matrices the file type's mix (so `q4_k_m` here is what llama.cpp's convert to
//! F16 and then `llama-quantize Q4_K_M` would give, up to the F16 rounding it skips). Tensors are
//! decoded, transformed and quantized a block of rows at a time (rayon within each block) and
//! streamed to [`GgufWriter::write_atomic`], which writes a temporary file, checks it and
//! renames it: an error or a kill leaves no partial output.

pub mod checkpoint;
pub mod hparams;
pub mod sentencepiece;
pub mod tensors;
pub mod vocab;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ggml_kernels::GgmlType;
use rayon::prelude::*;

use crate::gguf::{GgufError, GgufWriter, MetaValue, Progress, TensorData};
use crate::quant_mix::{tensor_type, FileType, MixContext};
use checkpoint::{decode_rows, Checkpoint};
use hparams::{ConvArch, HfHparams, RopeScaling};
use tensors::{permuted_source_row, Source, TensorPlan};
use vocab::VocabMeta;

/// Everything that can stop a conversion; each names the file, field or tensor concerned.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("{path}: not a directory; give the Hugging Face checkpoint directory (config.json, *.safetensors, tokenizer files)")]
    NotADirectory { path: PathBuf },
    #[error("{dir}: no config.json; a Hugging Face checkpoint directory holds config.json, the *.safetensors weights and the tokenizer files")]
    MissingConfig { dir: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: invalid JSON: {reason}")]
    Json { path: PathBuf, reason: String },
    #[error("config.json: {field:?} {reason}")]
    Config { field: String, reason: String },
    #[error("unsupported architecture {arch} (supported: {})", hparams::SUPPORTED_HF_ARCHS.join(", "))]
    UnsupportedArch { arch: String },
    #[error("{dir}: no model.safetensors or model.safetensors.index.json{}", if *pytorch_bin { " (PyTorch .bin checkpoints are not supported; save the model with safe_serialization=True)" } else { "" })]
    NoWeights { dir: PathBuf, pytorch_bin: bool },
    #[error("{path}: not a valid safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("model.safetensors.index.json disagrees with the shards: missing {missing:?}, not listed {extra:?}")]
    IndexMismatch { missing: Vec<String>, extra: Vec<String> },
    #[error("tensor {name:?} is missing from the checkpoint ({reason})")]
    MissingTensor { name: String, reason: String },
    #[error("{count} tensors of the checkpoint are not part of a {arch} model, e.g. {first:?}")]
    ExtraTensors { arch: String, count: usize, first: Vec<String> },
    #[error("tensor {name:?} has dtype {dtype}, which convert cannot read (F32, F16, BF16 and F64 are supported)")]
    Dtype { name: String, dtype: String },
    #[error("tensor {name:?} has shape {got:?}, but config.json implies {expected:?}")]
    Shape { name: String, expected: Vec<usize>, got: Vec<usize> },
    #[error("tensor {name:?}: {reason}")]
    Tensor { name: String, reason: String },
    #[error("vocabulary: {0}")]
    Vocab(String),
    #[error("{path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{dir}: no tokenizer.model or tokenizer.json (or use --vocab-from FILE.gguf)")]
    NoTokenizer { dir: PathBuf },
    #[error(transparent)]
    Gguf(#[from] GgufError),
}

/// What to convert.
#[derive(Clone, Debug)]
pub struct ConvertParams {
    /// The checkpoint directory.
    pub dir: PathBuf,
    /// The file type of the output (`f32`, `f16`, `bf16`, `q8_0`, `q4_k_m`, ...).
    pub outtype: FileType,
    /// Take the tokenizer metadata (every `tokenizer.*` key) from this GGUF file instead of the
    /// checkpoint's tokenizer files.
    pub vocab_from: Option<PathBuf>,
}

/// A checked conversion, ready to write.
pub struct Prepared {
    pub hparams: HfHparams,
    pub vocab: VocabMeta,
    pub checkpoint: Checkpoint,
    /// Output tensors in file order, each with its type.
    pub tensors: Vec<(TensorPlan, GgmlType)>,
    pub outtype: FileType,
    /// Files the output must not replace.
    inputs: Vec<PathBuf>,
    pub notes: Vec<String>,
    name: String,
}

/// What was written.
#[derive(Clone, Debug)]
pub struct ConvertReport {
    pub hf_arch: String,
    pub arch: &'static str,
    pub n_tensors: usize,
    pub n_params: u64,
    pub bytes: u64,
    pub vocab_source: String,
    /// Tensors per type, in type-id order.
    pub types: Vec<(GgmlType, usize)>,
    pub notes: Vec<String>,
}

/// Reads and checks the checkpoint in `p.dir`.
pub fn prepare(p: &ConvertParams) -> Result<Prepared, ConvertError> {
    if !p.dir.is_dir() {
        return Err(ConvertError::NotADirectory { path: p.dir.clone() });
    }
    let hparams = hparams::read(&p.dir)?;
    let vocab = match &p.vocab_from {
        Some(path) => vocab::from_gguf(path)?,
        None => vocab::from_dir(&p.dir, &hparams)?,
    };
    let checkpoint = Checkpoint::open(&p.dir)?;
    let (plans, tensor_notes) = tensors::plan(&hparams, &checkpoint, vocab.n_tokens)?;
    let ctx = MixContext {
        n_layer: hparams.n_layer,
        has_output: plans.iter().any(|t| t.name == "output.weight"),
        n_gqa: hparams.n_head / hparams.n_head_kv,
    };
    let tensors = plans
        .into_iter()
        .map(|t| {
            let ty = tensor_type(p.outtype, &t.name, &t.ne, GgmlType::F32, &ctx);
            (t, ty)
        })
        .collect();
    let mut notes = hparams.notes.clone();
    notes.extend(vocab.notes.iter().cloned());
    notes.extend(tensor_notes);
    let mut inputs = checkpoint.files.clone();
    inputs.extend(p.vocab_from.iter().cloned());
    let name = p
        .dir
        .canonicalize()
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "model".into());
    Ok(Prepared { hparams, vocab, checkpoint, tensors, outtype: p.outtype, inputs, notes, name })
}

/// Converts `p.dir` into `out` (atomically); `progress` is called after each tensor.
pub fn convert(p: &ConvertParams, out: &Path, progress: Option<Progress<'_>>) -> Result<ConvertReport, ConvertError> {
    prepare(p)?.write(out, progress)
}

/// Rows decoded and quantized per step of a tensor (about this many bytes of f32).
const STEP_BYTES: usize = 32 << 20;

/// gguf-py's `model_weight_count_rounded_notation` (`general.size_label`).
fn size_label(n: u64) -> String {
    let n = n as f64;
    let (scaled, suffix) = if n > 1e12 {
        (n * 1e-12, "T")
    } else if n > 1e9 {
        (n * 1e-9, "B")
    } else if n > 1e6 {
        (n * 1e-6, "M")
    } else {
        (n * 1e-3, "K")
    };
    let digits = format!("{}", scaled.round() as u64).trim_start_matches('0').len();
    let fix = 2usize.saturating_sub(digits);
    format!("{scaled:.fix$}{suffix}")
}

impl Prepared {
    /// Bytes of tensor data the output will hold.
    pub fn tensor_bytes(&self) -> u64 {
        self.tensors.iter().map(|(t, ty)| ty.tensor_nbytes(&t.ne).unwrap_or(0)).sum()
    }

    pub fn n_params(&self) -> u64 {
        self.tensors.iter().map(|(t, _)| t.ne.iter().product::<u64>()).sum()
    }

    /// The output's metadata, in llama.cpp's order.
    pub fn metadata(&self) -> Vec<(String, MetaValue)> {
        let h = &self.hparams;
        let a = h.arch.gguf_name();
        let k = |s: &str| format!("{a}.{s}");
        let u = |v: usize| MetaValue::U32(v as u32);
        let mut kv: Vec<(String, MetaValue)> = vec![
            ("general.architecture".into(), MetaValue::String(a.into())),
            ("general.type".into(), MetaValue::String("model".into())),
            ("general.name".into(), MetaValue::String(self.name.clone())),
            ("general.size_label".into(), MetaValue::String(size_label(self.n_params()))),
            (k("block_count"), u(h.n_layer)),
            (k("context_length"), MetaValue::U32(h.n_ctx_train)),
            (k("embedding_length"), u(h.n_embd)),
            (k("feed_forward_length"), u(h.n_ff)),
            (k("attention.head_count"), u(h.n_head)),
            (k("attention.head_count_kv"), u(h.n_head_kv)),
            (k("rope.freq_base"), MetaValue::F32(h.rope_theta)),
        ];
        if let Some(swa) = h.rope_theta_swa {
            kv.push((k("rope.freq_base_swa"), MetaValue::F32(swa)));
        }
        match h.rope_scaling {
            RopeScaling::None | RopeScaling::Llama3 { .. } => {}
            RopeScaling::Linear { factor } => {
                kv.push((k("rope.scaling.type"), MetaValue::String("linear".into())));
                kv.push((k("rope.scaling.factor"), MetaValue::F32(factor)));
            }
            RopeScaling::Yarn { factor, original_max_position_embeddings } => {
                kv.push((k("rope.scaling.type"), MetaValue::String("yarn".into())));
                kv.push((k("rope.scaling.factor"), MetaValue::F32(factor)));
                kv.push((k("rope.scaling.original_context_length"), MetaValue::U32(original_max_position_embeddings)));
            }
        }
        kv.push((k("attention.layer_norm_rms_epsilon"), MetaValue::F32(h.rms_eps)));
        if h.head_dim_explicit.is_some() || h.arch == ConvArch::Gemma3 {
            kv.push((k("attention.key_length"), u(h.head_dim)));
            kv.push((k("attention.value_length"), u(h.head_dim)));
        }
        if let Some(w) = h.sliding_window {
            kv.push((k("attention.sliding_window"), MetaValue::U32(w)));
        }
        if let Some(c) = h.final_logit_softcapping {
            kv.push((k("final_logit_softcapping"), MetaValue::F32(c)));
        }
        kv.push(("general.file_type".into(), MetaValue::U32(self.outtype.id())));
        if h.arch == ConvArch::Llama {
            kv.push((k("vocab_size"), u(self.vocab.n_tokens)));
            kv.push((k("rope.dimension_count"), u(h.head_dim)));
        }
        kv.push(("general.quantization_version".into(), MetaValue::U32(2)));
        kv.extend(self.vocab.kvs.iter().cloned());
        kv
    }

    /// Writes the output atomically at `out`.
    pub fn write(&self, out: &Path, progress: Option<Progress<'_>>) -> Result<ConvertReport, ConvertError> {
        let mut w = GgufWriter::new();
        for (key, value) in self.metadata() {
            w.set(&key, value)?;
        }
        for input in &self.inputs {
            w.protect_input(input.clone());
        }
        for (plan, ty) in &self.tensors {
            let (ck, ty) = (&self.checkpoint, *ty);
            let job = move |o: &mut dyn Write| write_tensor(ck, plan, ty, o);
            w.add_tensor(&plan.name, ty, &plan.ne, TensorData::Stream(Box::new(job)))?;
        }
        let bytes = w.write_atomic(out, progress)?;
        let mut types: Vec<(GgmlType, usize)> = Vec::new();
        for (_, ty) in &self.tensors {
            match types.iter_mut().find(|(t, _)| t == ty) {
                Some(e) => e.1 += 1,
                None => types.push((*ty, 1)),
            }
        }
        types.sort_by_key(|(t, _)| t.id());
        Ok(ConvertReport {
            hf_arch: self.hparams.hf_arch.clone(),
            arch: self.hparams.arch.gguf_name(),
            n_tensors: self.tensors.len(),
            n_params: self.n_params(),
            bytes,
            vocab_source: self.vocab.source.clone(),
            types,
            notes: self.notes.clone(),
        })
    }
}

/// Decodes, transforms and quantizes one tensor, a block of rows at a time.
fn write_tensor(ck: &Checkpoint, plan: &TensorPlan, ty: GgmlType, out: &mut dyn Write) -> io::Result<()> {
    let from = match &plan.source {
        Source::Checkpoint(name) => format!(" ({name})"),
        Source::Values(_) => String::new(),
    };
    let err = |reason: String| io::Error::other(format!("tensor {:?}{from}: {reason}", plan.name));
    let (cols, rows) = (plan.cols(), plan.rows());
    let row_bytes = ty.row_nbytes(cols as u64).map_err(|e| err(e.to_string()))? as usize;
    let group = plan.permute_head_rows.unwrap_or(1).max(1);
    let step = (STEP_BYTES / (cols * 4).max(1)).max(1).div_ceil(group) * group;
    let step = step.min(rows.div_ceil(group) * group).max(group);
    let mut x = vec![0f32; step * cols];
    let mut q = vec![0u8; step * row_bytes];
    let src = match &plan.source {
        Source::Checkpoint(name) => Some(ck.get(name).ok_or_else(|| err(format!("{name:?} vanished from the checkpoint")))?),
        Source::Values(_) => None,
    };
    let mut row0 = 0;
    while row0 < rows {
        let n = step.min(rows - row0);
        let xs = &mut x[..n * cols];
        match (&plan.source, src) {
            (Source::Values(v), _) => xs.copy_from_slice(&v[row0 * cols..(row0 + n) * cols]),
            (_, Some(t)) => {
                xs.par_chunks_mut(cols).enumerate().for_each(|(i, row)| {
                    let r = row0 + i;
                    let from = match plan.permute_head_rows {
                        Some(hd) => permuted_source_row(r, hd),
                        None => r,
                    };
                    decode_rows(ck, t, from * cols, row);
                });
            }
            (_, None) => return Err(err("no data source".into())),
        }
        if plan.add_one {
            xs.iter_mut().for_each(|v| *v += 1.0);
        }
        if let Some(i) = xs.iter().position(|v| !v.is_finite()) {
            return Err(err(format!("element {} is {} (the checkpoint holds a non-finite weight)", row0 * cols + i, xs[i])));
        }
        let qs = &mut q[..n * row_bytes];
        qs.par_chunks_mut(row_bytes)
            .zip(xs.par_chunks(cols))
            .try_for_each(|(dst, row)| ggml_kernels::quants::quantize(ty, row, dst).map_err(|e| err(e.to_string())))?;
        out.write_all(qs)?;
        row0 += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_as_gguf_py() {
        assert_eq!(size_label(268_098_176), "268M");
        assert_eq!(size_label(8_030_261_248), "8.0B");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(123_456), "123K");
        assert_eq!(size_label(1_500), "1.5K");
    }
}
