//! Everything that can be wrong with a tokenizer's metadata, or with a request to it.
//!
//! Each variant names the key or token, the offending value and the limit, so the one-line message
//! the CLI prints says exactly what is wrong with the file.

use crate::gguf::GgufError;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key of the wrong type, or another fault the GGUF reader reports.
    #[error(transparent)]
    Gguf(#[from] GgufError),

    #[error("required key {0:?} is missing")]
    MissingKey(&'static str),

    #[error("tokenizer model {0}: not supported yet")]
    UnsupportedModel(String),

    #[error("tokenizer model gpt2 needs \"tokenizer.ggml.pre\" to know how to split words; it is missing (refusing to guess)")]
    MissingPreTokenizer,

    #[error("key \"tokenizer.ggml.model\": unknown tokenizer model {0:?}")]
    UnknownModel(String),

    #[error("key \"tokenizer.ggml.tokens\": the vocabulary is empty")]
    EmptyVocab,

    #[error("key \"tokenizer.ggml.tokens\": {n} tokens exceeds the limit of {limit}")]
    VocabTooLarge { n: usize, limit: usize },

    #[error("key {key:?} has {len} entries, but \"tokenizer.ggml.tokens\" has {n_vocab}")]
    LengthMismatch { key: &'static str, len: usize, n_vocab: usize },

    #[error("key {key:?}: token id {id} is beyond the vocabulary of {n_vocab} tokens")]
    SpecialIdOutOfRange { key: &'static str, id: u32, n_vocab: usize },

    #[error("key \"tokenizer.ggml.token_type\": token {id} has type {value} (valid types are 0 to 6)")]
    BadTokenType { id: u32, value: i32 },

    #[error("key \"tokenizer.ggml.scores\": token {id} has score NaN")]
    NanScore { id: u32 },

    #[error("token {id} has the byte type but its text {text:?} is not of the form <0xHH>")]
    MalformedByteToken { id: u32, text: String },

    #[error("byte 0x{byte:02X} has two byte tokens: {first} and {second}")]
    DuplicateByteToken { byte: u8, first: u32, second: u32 },

    #[error("key \"tokenizer.ggml.merges\": merge {rank} ({text:?}) is not two pieces separated by a space")]
    MalformedMerge { rank: u32, text: String },

    #[error("key \"tokenizer.ggml.pre\": pre-tokenizer {0:?} is not supported yet (refusing to guess how this model splits words)")]
    UnsupportedPreTokenizer(String),

    #[error("duplicate token {text:?} in the vocabulary: ids {first} and {second}")]
    DuplicateToken { text: String, first: u32, second: u32 },

    #[error("the vocabulary has no token for byte 0x{byte:02X} (neither <0x{byte:02X}> nor the byte itself) and no unknown token to stand for it")]
    NoByteFallback { byte: u8 },

    #[error("{flag_key} is true, but {id_key} is not set")]
    AddWithoutId { flag_key: &'static str, id_key: &'static str },

    #[error("token id {id} is beyond the vocabulary of {n_vocab} tokens")]
    InvalidTokenId { id: u32, n_vocab: usize },
}
