//! The inference engine.
//!
//! - [`gguf`]: the GGUF reader (zero copy over a memory map) and the atomic writer.
//! - [`model_path`]: where the default model lives and how to fetch it.
//! - [`memstat`]: resident-memory figures from `/proc`.
//! - [`model`]: hyperparameters, weights, KV cache and the forward pass of each architecture.

pub mod gguf;
pub mod memstat;
pub mod model;
pub mod model_path;
