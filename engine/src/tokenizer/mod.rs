//! The tokenizer: text to token ids and back, built from a GGUF file's `tokenizer.ggml.*`
//! metadata alone, giving the same ids as llama.cpp.
//!
//! - `tokenizer.ggml.model = "llama"`: SentencePiece-style (SPM) vocabularies with scores and
//!   byte fallback (Llama 1/2, Mistral, Gemma 1-3, Phi-3), see [`spm`](self::spm).
//! - `"gpt2"`: byte-level BPE (GPT-2, Llama 3, Qwen 2, ...), see [`bpe`](self::bpe), with the
//!   pre-tokenizers `tokenizer.ggml.pre` names that are implemented; any other `pre`, or none,
//!   is refused rather than guessed.
//! - The other models (`bert`, `t5`, `rwkv`, ...): refused with a clear error, for now.
//!
//! Tokenizing runs in two stages, as in llama.cpp: the text is first split at special-token
//! strings ([`special`](self::special)), then each plain-text fragment goes through the subword
//! tokenizer. With [`TokenizeOptions::parse_special`] off, which is right for anything a user
//! typed, control tokens such as "<start_of_turn>" or "<bos>" in the text stay plain text; chat
//! templates turn it on to produce the real control tokens.
//!
//! Decoding is in [`decode`](self::decode), including [`StreamDecoder`] for generation.
//!
//! Every array and id in the metadata is checked before use (`../shared/RELIABILITY.md`):
//! arrays of different lengths, special ids beyond the vocabulary, malformed byte tokens,
//! duplicate texts, NaN scores and missing required keys are [`TokenizerError`]s.

mod bpe;
mod decode;
mod error;
mod special;
mod spm;
mod unicode_tables;
mod vocab;

pub use bpe::PreTokenizer;
pub use decode::{DecodeOptions, StreamDecoder};
pub use error::TokenizerError;
pub use vocab::{TokenAttr, TokenId, TokenType};

use crate::gguf::{GgufFile, ValueType};
use bpe::{Bpe, BpeSession};
use special::{Fragment, SpecialMatcher};
use spm::SpmSession;
use vocab::{parse_byte_token, MergeTable, Vocab};

/// The largest vocabulary accepted: ids are `int32` in llama.cpp's API.
pub const MAX_VOCAB: usize = i32::MAX as usize;

/// How text becomes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenizeOptions {
    /// Add the BOS (and EOS) tokens the vocabulary asks for (`add_bos_token`, `add_eos_token`).
    pub add_special: bool,
    /// Turn control-token strings in the text ("<start_of_turn>") into those tokens. Off for
    /// user text; chat templates turn it on.
    pub parse_special: bool,
}

impl Default for TokenizeOptions {
    fn default() -> Self {
        TokenizeOptions { add_special: true, parse_special: false }
    }
}

/// The tokenizer algorithm named by `tokenizer.ggml.model`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerModel {
    /// `"llama"`: SentencePiece-style, merges by score, byte fallback.
    Spm,
    /// `"gpt2"`: byte-level BPE with ranked merges and a pre-tokenizer.
    Bpe(PreTokenizer),
}

/// The special token ids the metadata names (`None` where it names none).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SpecialTokens {
    pub bos: Option<TokenId>,
    pub eos: Option<TokenId>,
    pub unk: Option<TokenId>,
    pub sep: Option<TokenId>,
    pub pad: Option<TokenId>,
    pub mask: Option<TokenId>,
    /// End of turn: from `tokenizer.ggml.eot_token_id`, or found by its text ("<end_of_turn>").
    pub eot: Option<TokenId>,
    pub eom: Option<TokenId>,
    pub fim_pre: Option<TokenId>,
    pub fim_suf: Option<TokenId>,
    pub fim_mid: Option<TokenId>,
    pub fim_pad: Option<TokenId>,
    pub fim_rep: Option<TokenId>,
    pub fim_sep: Option<TokenId>,
}

/// A tokenizer for one model's vocabulary. Building it reads the metadata once; it borrows
/// nothing from the file afterwards.
pub struct Tokenizer {
    model: TokenizerModel,
    pre: Option<String>,
    vocab: Vocab,
    special: SpecialTokens,
    matcher: SpecialMatcher,
    /// SPM: the token that stands for each byte of a character missing from the vocabulary.
    byte_tokens: Box<[TokenId; 256]>,
    /// BPE: merges, pre-tokenizer and byte table.
    bpe: Option<Bpe>,
    /// Decoding removes spaces before punctuation (BPE vocabularies, per `pre`).
    clean_spaces: bool,
    /// Tokens that end generation, sorted.
    eog: Vec<TokenId>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
}

mod keys {
    pub const MODEL: &str = "tokenizer.ggml.model";
    pub const PRE: &str = "tokenizer.ggml.pre";
    pub const TOKENS: &str = "tokenizer.ggml.tokens";
    pub const SCORES: &str = "tokenizer.ggml.scores";
    pub const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
    pub const MERGES: &str = "tokenizer.ggml.merges";
    pub const ADD_BOS: &str = "tokenizer.ggml.add_bos_token";
    pub const ADD_EOS: &str = "tokenizer.ggml.add_eos_token";
    pub const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";
    pub const BOS: &str = "tokenizer.ggml.bos_token_id";
    pub const EOS: &str = "tokenizer.ggml.eos_token_id";
    pub const UNK: &str = "tokenizer.ggml.unknown_token_id";
    /// Spelled so in llama.cpp and every GGUF file.
    pub const SEP: &str = "tokenizer.ggml.seperator_token_id";
    pub const PAD: &str = "tokenizer.ggml.padding_token_id";
    pub const MASK: &str = "tokenizer.ggml.mask_token_id";
    pub const EOT: &str = "tokenizer.ggml.eot_token_id";
    pub const EOM: &str = "tokenizer.ggml.eom_token_id";
    pub const FIM_PRE: &str = "tokenizer.ggml.fim_pre_token_id";
    pub const FIM_SUF: &str = "tokenizer.ggml.fim_suf_token_id";
    pub const FIM_MID: &str = "tokenizer.ggml.fim_mid_token_id";
    pub const FIM_PAD: &str = "tokenizer.ggml.fim_pad_token_id";
    pub const FIM_REP: &str = "tokenizer.ggml.fim_rep_token_id";
    pub const FIM_SEP: &str = "tokenizer.ggml.fim_sep_token_id";
    pub const PREFIX_OLD: &str = "tokenizer.ggml.prefix_token_id";
    pub const SUFFIX_OLD: &str = "tokenizer.ggml.suffix_token_id";
    pub const MIDDLE_OLD: &str = "tokenizer.ggml.middle_token_id";
    pub const NAME: &str = "general.name";
}

impl Tokenizer {
    /// Builds the tokenizer from the file's metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer, TokenizerError> {
        let model_name = file.get_str(keys::MODEL)?.ok_or(TokenizerError::MissingKey(keys::MODEL))?;
        let pre = file.get_str(keys::PRE)?.map(str::to_string);
        let (model, bpe_preset) = match model_name {
            "llama" => (TokenizerModel::Spm, None),
            "gpt2" => {
                let name = pre.as_deref().ok_or(TokenizerError::MissingPreTokenizer)?;
                let preset =
                    bpe::preset(name).ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(name.to_string()))?;
                (TokenizerModel::Bpe(preset.pre), Some(preset))
            }
            "bert" | "t5" | "rwkv" | "plamo2" | "gemma4" | "hybriddna" | "whitespace" | "no_vocab" | "none" => {
                return Err(TokenizerError::UnsupportedModel(model_name.to_string()))
            }
            other => return Err(TokenizerError::UnknownModel(other.to_string())),
        };

        let tokens = file.get_array(keys::TOKENS, ValueType::String)?.ok_or(TokenizerError::MissingKey(keys::TOKENS))?;
        let n = tokens.len();
        if n == 0 {
            return Err(TokenizerError::EmptyVocab);
        }
        if n > MAX_VOCAB {
            return Err(TokenizerError::VocabTooLarge { n, limit: MAX_VOCAB });
        }
        // SPM merges by score; BPE files often have none (llama.cpp then uses 0).
        let scores = match (model, file.get(keys::SCORES)) {
            (TokenizerModel::Bpe(_), None) => vec![0.0; n],
            _ => read_scores(file, n)?,
        };
        let types = read_types(file, n)?;
        let texts = tokens.strings().ok_or(TokenizerError::MissingKey(keys::TOKENS))?;
        let attrs = types.iter().map(|&t| TokenAttr::from_type(t)).collect();
        let mut vocab = Vocab::build(texts, n, tokens.raw_bytes().len(), scores, attrs)?;

        // Byte tokens must say which byte they are, each byte once.
        let mut byte_ids: [Option<TokenId>; 256] = [None; 256];
        for (id, &t) in types.iter().enumerate() {
            if t != TokenType::Byte {
                continue;
            }
            let text = vocab.text_of(id);
            let b = parse_byte_token(text)
                .ok_or_else(|| TokenizerError::MalformedByteToken { id: id as TokenId, text: text.to_string() })?;
            if let Some(first) = byte_ids[b as usize] {
                return Err(TokenizerError::DuplicateByteToken { byte: b, first, second: id as TokenId });
            }
            byte_ids[b as usize] = Some(id as TokenId);
        }

        let special_id = |key: &'static str| -> Result<Option<TokenId>, TokenizerError> {
            match file.get_as::<u32>(key)? {
                Some(id) if id as usize >= n => Err(TokenizerError::SpecialIdOutOfRange { key, id, n_vocab: n }),
                v => Ok(v),
            }
        };
        let mut special = SpecialTokens {
            bos: special_id(keys::BOS)?,
            eos: special_id(keys::EOS)?,
            unk: special_id(keys::UNK)?,
            sep: special_id(keys::SEP)?,
            pad: special_id(keys::PAD)?,
            mask: special_id(keys::MASK)?,
            eot: special_id(keys::EOT)?,
            eom: special_id(keys::EOM)?,
            fim_pre: special_id(keys::FIM_PRE)?.or(special_id(keys::PREFIX_OLD)?),
            fim_suf: special_id(keys::FIM_SUF)?.or(special_id(keys::SUFFIX_OLD)?),
            fim_mid: special_id(keys::FIM_MID)?.or(special_id(keys::MIDDLE_OLD)?),
            fim_pad: special_id(keys::FIM_PAD)?,
            fim_rep: special_id(keys::FIM_REP)?,
            fim_sep: special_id(keys::FIM_SEP)?,
        };

        // Defaults as llama.cpp has them: SPM adds a BOS and a space prefix; BPE adds a BOS
        // only for the Llama 3 family, and no space prefix.
        let (bos_default, prefix_default) = match bpe_preset {
            None => (true, true),
            Some(p) => (p.add_bos, false),
        };
        let add_bos = file.get_as::<bool>(keys::ADD_BOS)?.unwrap_or(bos_default);
        let add_eos = file.get_as::<bool>(keys::ADD_EOS)?.unwrap_or(false);
        let add_space_prefix = file.get_as::<bool>(keys::ADD_SPACE_PREFIX)?.unwrap_or(prefix_default);
        if add_bos && special.bos.is_none() {
            return Err(TokenizerError::AddWithoutId { flag_key: keys::ADD_BOS, id_key: keys::BOS });
        }
        if add_eos && special.eos.is_none() {
            return Err(TokenizerError::AddWithoutId { flag_key: keys::ADD_EOS, id_key: keys::EOS });
        }

        // SPM: the token for each byte: <0xHH>, else the one-byte text, else the unknown token.
        let mut byte_tokens = Box::new([0 as TokenId; 256]);
        for b in (0..=255u8).filter(|_| model == TokenizerModel::Spm) {
            let hex = format!("<0x{b:02X}>");
            let plain = (b < 0x80).then(|| (b as char).to_string());
            byte_tokens[b as usize] = vocab
                .find(&hex)
                .or_else(|| plain.as_deref().and_then(|p| vocab.find(p)))
                .or(special.unk)
                .ok_or(TokenizerError::NoByteFallback { byte: b })?;
        }

        let bpe = match bpe_preset {
            None => None,
            Some(preset) => {
                let merges =
                    file.get_array(keys::MERGES, ValueType::String)?.ok_or(TokenizerError::MissingKey(keys::MERGES))?;
                let texts = merges.strings().ok_or(TokenizerError::MissingKey(keys::MERGES))?;
                let table = MergeTable::build(texts, merges.len(), merges.raw_bytes().len())?;
                Some(Bpe::new(preset, table))
            }
        };
        let clean_spaces = bpe_preset.is_some_and(|p| p.clean_spaces);

        let name = file.get_str(keys::NAME).ok().flatten().unwrap_or("");
        let eog = apply_llama_cpp_fixups(&mut vocab, &mut special, name);
        let matcher = SpecialMatcher::new(&vocab);
        Ok(Tokenizer {
            model,
            pre,
            vocab,
            special,
            matcher,
            byte_tokens,
            bpe,
            clean_spaces,
            eog,
            add_bos,
            add_eos,
            add_space_prefix,
        })
    }

    pub fn model(&self) -> TokenizerModel {
        self.model
    }

    /// `tokenizer.ggml.pre`, as written.
    pub fn pre(&self) -> Option<&str> {
        self.pre.as_deref()
    }

    pub fn n_vocab(&self) -> usize {
        self.vocab.len()
    }

    pub fn special_tokens(&self) -> &SpecialTokens {
        &self.special
    }

    pub fn bos(&self) -> Option<TokenId> {
        self.special.bos
    }

    pub fn eos(&self) -> Option<TokenId> {
        self.special.eos
    }

    /// Whether tokenizing with `add_special` puts a BOS first.
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    pub fn add_eos(&self) -> bool {
        self.add_eos
    }

    pub fn add_space_prefix(&self) -> bool {
        self.add_space_prefix
    }

    /// Whether `id` ends generation (EOS, end of turn and the like).
    pub fn is_eog(&self, id: TokenId) -> bool {
        self.eog.binary_search(&id).is_ok()
    }

    /// The tokens that end generation, sorted.
    pub fn eog_tokens(&self) -> &[TokenId] {
        &self.eog
    }

    /// The token's text as stored in the vocabulary ("▁the", "<0x0A>", "<bos>").
    pub fn token_text(&self, id: TokenId) -> Option<&str> {
        self.vocab.text(id)
    }

    pub fn token_score(&self, id: TokenId) -> Option<f32> {
        self.vocab.scores.get(id as usize).copied()
    }

    pub fn token_attr(&self, id: TokenId) -> Option<TokenAttr> {
        self.vocab.attrs.get(id as usize).copied()
    }

    /// The id of the token whose vocabulary text is exactly `text`.
    pub fn find_token(&self, text: &str) -> Option<TokenId> {
        self.vocab.find(text)
    }

    /// Tokenizes `text`.
    pub fn tokenize(&self, text: &str, opts: TokenizeOptions) -> Vec<TokenId> {
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        self.tokenize_into(text, opts, &mut out);
        out
    }

    /// Tokenizes `text`, appending to `out`.
    pub fn tokenize_into(&self, text: &str, opts: TokenizeOptions, out: &mut Vec<TokenId>) {
        let fragments = self.matcher.partition(&self.vocab, text, opts.parse_special);
        match self.model {
            TokenizerModel::Spm => {
                if opts.add_special && self.add_bos {
                    out.extend(self.special.bos);
                }
                let mut session = SpmSession::default();
                // A space prefix goes before the text and after each special token.
                let mut after_special = true;
                for f in fragments {
                    match f {
                        Fragment::Text { start, end } => {
                            let prefix = self.add_space_prefix && after_special;
                            session.tokenize(&self.vocab, &self.byte_tokens, &text[start..end], prefix, out);
                            after_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(id);
                            after_special = true;
                        }
                    }
                }
                if opts.add_special && self.add_eos {
                    out.extend(self.special.eos);
                }
            }
            TokenizerModel::Bpe(_) => {
                let Some(bpe) = &self.bpe else { return };
                if opts.add_special && self.add_bos {
                    out.extend(self.special.bos);
                }
                let mut session = BpeSession::default();
                for f in fragments {
                    match f {
                        Fragment::Text { start, end } => bpe.tokenize(&self.vocab, &mut session, &text[start..end], out),
                        Fragment::Token(id) => out.push(id),
                    }
                }
                if opts.add_special && self.add_eos {
                    out.extend(self.special.eos);
                }
            }
        }
    }
}

fn read_scores(file: &GgufFile, n: usize) -> Result<Vec<f32>, TokenizerError> {
    let Some(value) = file.get(keys::SCORES) else {
        return Err(TokenizerError::MissingKey(keys::SCORES));
    };
    // llama.cpp takes f32 or i32 scores.
    let scores: Vec<f32> = match value {
        crate::gguf::Value::Array(a) if a.elem_type() == ValueType::F32 => a.to_vec::<f32>().unwrap_or_default(),
        crate::gguf::Value::Array(a) if a.elem_type() == ValueType::I32 => {
            a.to_vec::<i32>().unwrap_or_default().into_iter().map(|s| s as f32).collect()
        }
        _ => {
            file.get_array(keys::SCORES, ValueType::F32)?;
            Vec::new()
        }
    };
    if scores.len() != n {
        return Err(TokenizerError::LengthMismatch { key: keys::SCORES, len: scores.len(), n_vocab: n });
    }
    if let Some(id) = scores.iter().position(|s| s.is_nan()) {
        return Err(TokenizerError::NanScore { id: id as TokenId });
    }
    Ok(scores)
}

fn read_types(file: &GgufFile, n: usize) -> Result<Vec<TokenType>, TokenizerError> {
    let a = file.get_array(keys::TOKEN_TYPE, ValueType::I32)?.ok_or(TokenizerError::MissingKey(keys::TOKEN_TYPE))?;
    if a.len() != n {
        return Err(TokenizerError::LengthMismatch { key: keys::TOKEN_TYPE, len: a.len(), n_vocab: n });
    }
    let mut types = Vec::with_capacity(n);
    for (id, v) in a.to_vec::<i32>().unwrap_or_default().into_iter().enumerate() {
        match TokenType::from_i32(v) {
            Some(t) => types.push(t),
            None => return Err(TokenizerError::BadTokenType { id: id as TokenId, value: v }),
        }
    }
    Ok(types)
}

/// What llama.cpp changes after reading the vocabulary, reproduced so that special-token
/// handling matches it: tokens recognised by their text as end-of-turn, FIM or end-of-generation
/// markers become control tokens (so user text can no longer produce them by splitting), control
/// tokens named "unused" are marked unused, and a few model families get their documented
/// exceptions. Returns the end-of-generation tokens.
///
/// Where llama.cpp takes "the first" of several candidate texts for one role in hash-map order,
/// this takes the lowest id.
fn apply_llama_cpp_fixups(vocab: &mut Vocab, special: &mut SpecialTokens, model_name: &str) -> Vec<TokenId> {
    const EOT: &[&str] = &[
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>", "<EOT>",
        "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ];
    const EOM: &[&str] = &["<|eom_id|>"];
    const FIM_PRE: &[&str] = &[
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>", "<|code_prefix|>",
        "<|prefix|>",
    ];
    const FIM_SUF: &[&str] = &[
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>", "<|code_suffix|>",
        "<|suffix|>",
    ];
    const FIM_MID: &[&str] = &[
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>", "<|code_middle|>",
        "<|middle|>",
    ];
    const FIM_PAD: &[&str] = &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"];
    const FIM_REP: &[&str] = &["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"];
    const FIM_SEP: &[&str] = &["<|file_sep|>"];
    const EOG: &[&str] = &[
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
        "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
        "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<｜end▁of▁sentence｜>", "[e~[",
    ];
    const ALWAYS_RENDERED: &[&str] = &["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"];

    let make_control = |vocab: &mut Vocab, id: TokenId| {
        let a = &mut vocab.attrs[id as usize];
        *a = a.with(TokenAttr::CONTROL);
    };
    let first_of = |vocab: &Vocab, texts: &[&str]| texts.iter().filter_map(|t| vocab.find(t)).min();

    for (slot, texts) in [
        (&mut special.eot, EOT),
        (&mut special.eom, EOM),
        (&mut special.fim_pre, FIM_PRE),
        (&mut special.fim_suf, FIM_SUF),
        (&mut special.fim_mid, FIM_MID),
        (&mut special.fim_pad, FIM_PAD),
        (&mut special.fim_rep, FIM_REP),
        (&mut special.fim_sep, FIM_SEP),
    ] {
        if slot.is_none() {
            if let Some(id) = first_of(vocab, texts) {
                *slot = Some(id);
                make_control(vocab, id);
            }
        }
    }

    for id in 0..vocab.len() {
        if vocab.attrs[id].has(TokenAttr::CONTROL) && vocab.text_of(id).contains("unused") {
            vocab.attrs[id] = vocab.attrs[id].with(TokenAttr::UNUSED);
        }
    }

    let mut eog: Vec<TokenId> = [special.fim_pad, special.fim_rep, special.fim_sep].into_iter().flatten().collect();
    for t in EOG {
        if let Some(id) = vocab.find(t) {
            eog.push(id);
            make_control(vocab, id);
        }
    }
    for t in ALWAYS_RENDERED {
        if let Some(id) = vocab.find(t) {
            vocab.attrs[id as usize] = TokenAttr::USER_DEFINED;
        }
    }
    eog.extend([special.eos, special.eot, special.eom].into_iter().flatten());
    eog.sort_unstable();
    eog.dedup();

    let in_eog = |vocab: &Vocab, eog: &[TokenId], text: &str| vocab.find(text).filter(|id| eog.contains(id));
    // "<|end|>" is an ordinary marker where "<|return|>"/"<|call|>" (or "<|calls|>"/"<|flush|>") end turns.
    if let Some(end) = in_eog(vocab, &eog, "<|end|>") {
        let has_call = in_eog(vocab, &eog, "<|call|>").is_some() || in_eog(vocab, &eog, "<|calls|>").is_some();
        let has_return = in_eog(vocab, &eog, "<|return|>").is_some();
        let has_flush = in_eog(vocab, &eog, "<|flush|>").is_some();
        if has_call && (has_return || has_flush) {
            eog.retain(|&t| t != end);
            vocab.attrs[end as usize] = TokenAttr::USER_DEFINED;
        }
    }
    // "</s>" is a normal token where "<|tool_response>" or "<|plamo:eos|>" ends turns.
    if let Some(s) = in_eog(vocab, &eog, "</s>") {
        if in_eog(vocab, &eog, "<|tool_response>").is_some() || in_eog(vocab, &eog, "<|plamo:eos|>").is_some() {
            eog.retain(|&t| t != s);
            vocab.attrs[s as usize] = TokenAttr::NORMAL;
        }
    }

    // Phi-3: whitespace after a special token belongs to the token.
    let name = model_name.to_lowercase();
    if name.contains("phi-3") || name.contains("phi3") {
        let special_attr = TokenAttr::CONTROL.with(TokenAttr::USER_DEFINED).with(TokenAttr::UNKNOWN);
        for a in vocab.attrs.iter_mut() {
            if a.has(special_attr) {
                *a = a.with(TokenAttr::RSTRIP);
            }
        }
        if let Some(id) = vocab.find("</s>") {
            vocab.attrs[id as usize] = vocab.attrs[id as usize].with(TokenAttr::RSTRIP);
        }
        for t in ["<unk>", "<s>", "<|endoftext|>"] {
            if let Some(id) = vocab.find(t) {
                vocab.attrs[id as usize] = vocab.attrs[id as usize].without(TokenAttr::RSTRIP);
            }
        }
    }
    eog
}

#[cfg(test)]
mod tests;
