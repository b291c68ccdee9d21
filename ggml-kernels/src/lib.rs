//! The CPU engine room: GGML tensor types and their block formats, and (as they land) the
//! kernels that work on them.
//!
//! This crate knows nothing of models or files. It is the bottom of the dependency chain
//! (`ggml-kernels` <- `cuda` <- `engine` <- `cli`); everything above it may use its type table.
//!
//! - [`types`]: every GGML type id with its block size and bytes per block, and the one checked
//!   function that computes a tensor's byte size.
//! - [`quants`]: the block formats, zero-copy block views, reference (de)quantizers as ggml's.

pub mod quants;
pub mod types;

pub use types::{GgmlType, SizeError};
