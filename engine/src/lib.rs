//! The inference engine.
//!
//! - [`gguf`]: the GGUF reader (zero copy over a memory map) and the atomic writer.
//! - [`model_path`]: where the default model lives and how to fetch it.
//! - [`memstat`]: resident-memory figures from `/proc`.

pub mod gguf;
pub mod memstat;
pub mod model_path;
