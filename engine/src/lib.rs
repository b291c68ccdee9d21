//! The inference engine.
//!
//! - [`gguf`]: the GGUF reader (zero copy over a memory map) and the atomic writer.
//! - [`model_path`]: where the default model lives and how to fetch it.
//! - [`memstat`]: resident-memory figures from `/proc`.
//! - [`tokenizer`]: text to token ids and back from GGUF metadata, matching llama.cpp (SPM).
//! - [`lighttransfer`]: lazy ratios, hybrid flags in GGUF, LightTransfer-Test selection.
//! - [`model`]: hyperparameters, weights, KV cache and the forward pass of each architecture.
//! - [`sampling`]: greedy and llama.cpp's sampler chain, seeded.
//! - [`chat`]: chat templates (sandboxed minijinja, built-ins) and message tokenization.
//! - [`perplexity`]: llama.cpp's perplexity method.
//! - [`generate`]: the prompt-then-decode loop shared by `run` and `chat`.
//! - [`convert`]: Hugging Face checkpoints (safetensors, config.json, tokenizer) to GGUF, as
//!   llama.cpp's converter writes them; [`quantize`]: GGUF to GGUF with llama.cpp's type mixes.
//! - [`gpu`]: the forward pass on a CUDA GPU (weights and KV cache on the device).
//! - [`synth`]: random-weight models of named shapes (tiny test models, real model shapes), with
//!   [`quant_mix`], llama.cpp's choice of tensor types for a file type (Q4_K_M's mix).

pub mod chat;
pub mod convert;
pub mod generate;
pub mod gguf;
pub mod gpu;
pub mod interrupt;
pub mod lighttransfer;
pub mod memstat;
pub mod model;
pub mod model_path;
pub mod perplexity;
pub mod quant_mix;
pub mod quantize;
pub mod sampling;
pub mod synth;
pub mod tokenizer;
