//! The CPU engine room: GGML tensor types and their block formats, and (as they land) the
//! kernels that work on them.
//!
//! This crate knows nothing of models or files. It is the bottom of the dependency chain
//! (`ggml-kernels` <- `cuda` <- `engine` <- `cli`); everything above it may use its type table.
//!
//! - [`types`]: every GGML type id with its block size and bytes per block, and the one checked
//!   function that computes a tensor's byte size.
//! - [`quants`]: the block formats, zero-copy block views, reference (de)quantizers as ggml's.
//! - [`dot`]: dot products of weight rows with quantized activation rows (scalar references,
//!   AVX2, AVX-512 VNNI and NEON kernels) and the kernel table filled at start-up.
//! - [`matmul`]: quantized weight matrix times f32 activations.
//! - [`repack`]: weight layouts rebuilt at load for faster decode (Q4_0, Q5_0, Q8_0, Q4_K and
//!   Q6_K in groups of eight rows).
//! - [`attention`]: attention over a KV cache with causal, window and sink+window masks.
//! - [`ops`]: RMSNorm, RoPE, activations, softmax.
//! - [`pages`]: memory for the packed matrices, in huge pages where the OS gives them.
//! - [`pool`], [`team`]: the decode fork-join, and the team that runs a whole decode token as
//!   one parallel region.
//! - [`probe`]: memory-bandwidth and peak-throughput probes, to quote kernel speeds against.

pub mod attention;
mod crew;
pub mod dot;
pub mod llamacpp;
pub mod matmul;
pub mod ops;
pub mod pages;
pub mod pool;
pub mod probe;
pub mod quants;
pub mod repack;
pub mod team;
pub mod types;

pub use types::{GgmlType, SizeError};
