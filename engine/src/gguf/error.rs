//! Everything that can be wrong with a GGUF file, or with a request to write one.
//!
//! Each variant names the field, the offending value and the limit, so that the one-line message
//! the CLI prints tells the user exactly what is wrong.

use std::path::PathBuf;

use ggml_kernels::SizeError;

use super::value::ValueType;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{path}: is a directory, not a GGUF file")]
    IsDirectory { path: PathBuf },

    #[error("{path}: not a regular file ({kind}); a model must be a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },

    #[error("truncated file: {what} at offset {offset} needs {need} bytes, only {have} left")]
    Truncated { what: String, offset: u64, need: u64, have: u64 },

    /// `found` is the four bytes escaped as in a byte string literal (`\x7fELF`).
    #[error("not a GGUF file: magic is \"{found}\", expected \"GGUF\"")]
    BadMagic { found: String },

    #[error("GGUF version field reads {raw:#010x}: this is a big-endian (byte-swapped) GGUF file; only little-endian files are supported")]
    ByteSwapped { raw: u32 },

    #[error("unsupported GGUF version {0} (versions 2 and 3 are supported)")]
    UnsupportedVersion(u32),

    #[error("{what} is {count}, but the {have} bytes left can hold at most {max}")]
    CountTooLarge { what: String, count: u64, max: u64, have: u64 },

    #[error("{what}: length {len} exceeds the limit of {limit} bytes")]
    TooLong { what: String, len: u64, limit: u64 },

    #[error("{what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },

    #[error("key {key:?}: unknown value type id {id}")]
    UnknownValueType { key: String, id: u32 },

    #[error("key {key:?}: bool value {value} at offset {offset} is neither 0 nor 1")]
    InvalidBool { key: String, value: u8, offset: u64 },

    #[error("key {key:?}: arrays nested deeper than {limit} levels")]
    ArrayTooDeep { key: String, limit: usize },

    #[error("metadata key #{index} at offset {offset} is empty")]
    EmptyKey { index: u64, offset: u64 },

    #[error("duplicate metadata key {0:?}")]
    DuplicateKey(String),

    #[error("key {key:?}: expected {expected}, got {got}")]
    KeyType { key: String, expected: String, got: String },

    #[error("required key {0:?} is missing")]
    MissingKey(String),

    #[error("key \"general.alignment\": {value} is invalid ({reason})")]
    BadAlignment { value: u64, reason: &'static str },

    #[error("tensor #{index}: name {reason}")]
    TensorName { index: u64, reason: String },

    #[error("duplicate tensor name {0:?}")]
    DuplicateTensor(String),

    #[error("tensor {name:?}: {n_dims} dimensions (must be 1 to 4)")]
    TensorDims { name: String, n_dims: u32 },

    #[error("tensor {name:?}: unknown ggml type id {id}")]
    TensorType { name: String, id: u32 },

    #[error("tensor {name:?} ({ty}, shape {shape:?}): {source}")]
    TensorSize { name: String, ty: String, shape: Vec<u64>, source: SizeError },

    #[error("tensor {name:?}: data offset {offset} is not a multiple of the alignment {alignment}")]
    TensorMisaligned { name: String, offset: u64, alignment: u64 },

    #[error("tensor {name:?} needs {need} bytes at offset {offset}, file has {file_len}")]
    TensorOutOfBounds { name: String, need: u64, offset: u64, file_len: u64 },

    #[error("tensor {name:?} (bytes {start}..{end}) overlaps tensor {other:?} (bytes {other_start}..{other_end})")]
    TensorOverlap { name: String, start: u64, end: u64, other: String, other_start: u64, other_end: u64 },

    #[error("cannot write GGUF: {0}")]
    Write(String),

    #[error("stopped by Ctrl-C before the file was complete; nothing was written at {path}")]
    Stopped { path: PathBuf },

    #[error("refusing to write {path}: it is the input file {input}; choose another output path")]
    OutputIsInput { path: PathBuf, input: PathBuf },

    #[error("written file {path} failed validation: {reason}")]
    Validation { path: PathBuf, reason: String },
}

impl GgufError {
    pub(crate) fn key_type(key: &str, expected: impl ToString, got: ValueType) -> GgufError {
        GgufError::KeyType { key: key.to_string(), expected: expected.to_string(), got: got.name().to_string() }
    }
}
