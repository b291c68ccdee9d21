//! GGUF: the file format of llama.cpp models, read zero-copy and written atomically.
//!
//! - [`GgufFile`] opens and validates a file (through a memory map by default) and hands out
//!   metadata as borrowed [`Value`]s and tensor data as borrowed byte slices.
//! - [`GgufWriter`] assembles metadata ([`MetaValue`]) and tensors and writes a version 3 file
//!   atomically, checking it with the reader before it replaces anything.
//!
//! The reader treats every file as untrusted input: see `../shared/RELIABILITY.md` and the tests
//! in `tests/gguf_malformed.rs`, one per class of bad input.

mod error;
mod reader;
pub mod value;
mod writer;

pub use error::GgufError;
pub use reader::{
    GgufFile, OpenOptions, TensorInfo, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ALIGNMENT, MAX_ARRAY_DEPTH, MAX_DIMS,
    MAX_KEY_LEN, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
pub use value::{Array, MetaArray, MetaValue, Value, ValueType};
pub use writer::{GgufWriter, Progress, TensorData};
