//! Unit tests on small vocabularies written as GGUF images: the SPM algorithm's rules, special
//! tokens, decoding and streaming, and every class of malformed metadata.

use super::*;
use crate::gguf::{GgufWriter, MetaArray, MetaValue};

const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER: i32 = 4;
const BYTE: i32 = 6;

/// A vocabulary under construction: (text, score, type) per token, plus extra metadata.
struct Spec {
    tokens: Vec<(String, f32, i32)>,
    kv: Vec<(String, MetaValue)>,
}

impl Spec {
    /// Gemma-like: <pad> <eos> <bos> <unk> <start_of_turn> "  " <0x00>..<0xFF>, then pieces.
    fn base() -> Spec {
        let mut tokens: Vec<(String, f32, i32)> = vec![
            ("<pad>".into(), 0.0, CONTROL),
            ("<eos>".into(), 0.0, CONTROL),
            ("<bos>".into(), 0.0, CONTROL),
            ("<unk>".into(), 0.0, UNKNOWN),
            ("<start_of_turn>".into(), 0.0, CONTROL),
            ("  ".into(), 0.0, USER),
        ];
        for b in 0..=255u32 {
            tokens.push((format!("<0x{b:02X}>"), 0.0, BYTE));
        }
        let pieces: &[(&str, f32)] = &[
            ("▁", -1.0),
            ("h", -2.0),
            ("e", -2.0),
            ("l", -2.0),
            ("o", -2.0),
            ("he", -3.0),
            ("ll", -3.0),
            ("llo", -4.0),
            ("hello", -5.0),
            ("▁hello", -6.0),
            ("a", -2.0),
            ("b", -2.0),
            ("ab", -7.0),
            ("ba", -7.0),
            ("é", -2.0),
            ("<", -2.0),
            (">", -2.0),
        ];
        for &(p, s) in pieces {
            tokens.push((p.to_string(), s, NORMAL));
        }
        let kv = vec![
            ("tokenizer.ggml.model".into(), MetaValue::String("llama".into())),
            ("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), MetaValue::U32(3)),
            ("tokenizer.ggml.padding_token_id".into(), MetaValue::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), MetaValue::Bool(true)),
            ("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(false)),
        ];
        Spec { tokens, kv }
    }

    fn set(mut self, key: &str, v: MetaValue) -> Spec {
        self.kv.retain(|(k, _)| k != key);
        self.kv.push((key.into(), v));
        self
    }

    fn remove(mut self, key: &str) -> Spec {
        self.kv.retain(|(k, _)| k != key);
        self
    }

    fn image(&self) -> Vec<u8> {
        let mut w = GgufWriter::new();
        let texts = self.tokens.iter().map(|t| t.0.clone()).collect();
        let scores = self.tokens.iter().map(|t| t.1).collect();
        let types = self.tokens.iter().map(|t| t.2).collect();
        w.set("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::String(texts))).unwrap();
        w.set("tokenizer.ggml.scores", MetaValue::Array(MetaArray::F32(scores))).unwrap();
        w.set("tokenizer.ggml.token_type", MetaValue::Array(MetaArray::I32(types))).unwrap();
        for (k, v) in &self.kv {
            if matches!(v, MetaValue::String(s) if s == "<remove>") {
                w.remove(k);
            } else {
                w.set(k, v.clone()).unwrap();
            }
        }
        let mut out = Vec::new();
        w.write_to(&mut out, None).unwrap();
        out
    }

    fn build(&self) -> Result<Tokenizer, TokenizerError> {
        let file = GgufFile::from_bytes(&self.image()).unwrap();
        Tokenizer::from_gguf(&file)
    }
}

fn tok() -> Tokenizer {
    Spec::base().build().unwrap()
}

fn id(t: &Tokenizer, text: &str) -> TokenId {
    t.find_token(text).unwrap_or_else(|| panic!("no token {text:?}"))
}

fn plain(t: &Tokenizer, text: &str) -> Vec<TokenId> {
    t.tokenize(text, TokenizeOptions { add_special: false, parse_special: false })
}

fn byte(t: &Tokenizer, b: u8) -> TokenId {
    id(t, &format!("<0x{b:02X}>"))
}

#[test]
fn merges_follow_scores() {
    let t = tok();
    // h e l l o -> he, ll (score -3) first, then llo (-4), then hello (-5).
    assert_eq!(plain(&t, "hello"), vec![id(&t, "hello")]);
    assert_eq!(plain(&t, " hello"), vec![id(&t, "▁hello")]);
    assert_eq!(plain(&t, "hello hello"), vec![id(&t, "hello"), id(&t, "▁hello")]);
}

#[test]
fn equal_scores_merge_leftmost_first() {
    let t = tok();
    // "aba": "ab" and "ba" both score -7; the leftmost pair wins, leaving "a" alone.
    assert_eq!(plain(&t, "aba"), vec![id(&t, "ab"), id(&t, "a")]);
    assert_eq!(plain(&t, "bab"), vec![id(&t, "ba"), id(&t, "b")]);
}

#[test]
fn unknown_characters_fall_back_to_bytes() {
    let t = tok();
    assert_eq!(plain(&t, "€"), vec![byte(&t, 0xE2), byte(&t, 0x82), byte(&t, 0xAC)]);
    assert_eq!(plain(&t, "é"), vec![id(&t, "é")]);
    assert_eq!(plain(&t, "x\n"), vec![byte(&t, b'x'), byte(&t, b'\n')]);
}

#[test]
fn bos_and_space_prefix() {
    let t = tok();
    let bos = 2;
    assert_eq!(t.tokenize("", TokenizeOptions::default()), vec![bos]);
    assert_eq!(t.tokenize("hello", TokenizeOptions::default()), vec![bos, id(&t, "hello")]);
    assert!(plain(&t, "").is_empty());

    let t = Spec::base().set("tokenizer.ggml.add_space_prefix", MetaValue::Bool(true)).build().unwrap();
    assert_eq!(plain(&t, "hello"), vec![id(&t, "▁hello")]);
    // A prefix again after a special token.
    let both = TokenizeOptions { add_special: false, parse_special: true };
    assert_eq!(t.tokenize("hello<start_of_turn>hello", both), vec![id(&t, "▁hello"), 4, id(&t, "▁hello")]);
    // Decoding removes the prefix space once.
    let ids = plain(&t, "hello hello");
    assert_eq!(t.detokenize(&ids, DecodeOptions::default()).unwrap(), b"hello hello");
}

#[test]
fn control_strings_in_user_text_stay_text() {
    let t = tok();
    let user = plain(&t, "<start_of_turn>");
    assert!(!user.contains(&4), "{user:?}");
    assert_eq!(user[0], id(&t, "<"));
    let templated = t.tokenize("<start_of_turn>hello", TokenizeOptions { add_special: false, parse_special: true });
    assert_eq!(templated, vec![4, id(&t, "hello")]);
    // Decoding user text gives the string back.
    assert_eq!(t.detokenize(&user, DecodeOptions::default()).unwrap(), b"<start_of_turn>");
}

#[test]
fn user_defined_tokens_split_even_in_user_text() {
    let t = tok();
    assert_eq!(plain(&t, "hello  hello"), vec![id(&t, "hello"), 5, id(&t, "hello")]);
    // Five spaces: two pairs, then one escaped space.
    assert_eq!(plain(&t, "     "), vec![5, 5, id(&t, "▁")]);
}

#[test]
fn pieces_and_special_rendering() {
    let t = tok();
    assert_eq!(t.token_to_piece(id(&t, "▁hello"), false).unwrap(), b" hello");
    assert_eq!(t.token_to_piece(2, false).unwrap(), b"");
    assert_eq!(t.token_to_piece(2, true).unwrap(), b"<bos>");
    assert_eq!(t.token_to_piece(3, true).unwrap(), b"<unk>");
    assert_eq!(t.token_to_piece(5, false).unwrap(), b"  ");
    assert_eq!(t.token_to_piece(byte(&t, 0xE2), false).unwrap(), [0xE2]);
    let n = t.n_vocab() as u32;
    assert!(matches!(t.token_to_piece(n, false), Err(TokenizerError::InvalidTokenId { .. })));
    let ids = t.tokenize("hello", TokenizeOptions::default());
    assert_eq!(t.detokenize(&ids, DecodeOptions::default()).unwrap(), b"hello");
    let shown = DecodeOptions { render_special: true, remove_special: false };
    assert_eq!(t.detokenize(&ids, shown).unwrap(), b"<bos>hello");
    let removed = DecodeOptions { render_special: true, remove_special: true };
    assert_eq!(t.detokenize(&ids, removed).unwrap(), b"hello");
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let t = tok();
    let ids = plain(&t, "é€hello€");
    let mut d = t.stream_decoder(false);
    let mut pieces = Vec::new();
    for &i in &ids {
        let s = d.push(i).unwrap();
        assert!(d.pending_bytes().len() < 4);
        pieces.push(s);
    }
    assert_eq!(d.finish(), "");
    // The euro sign's three byte tokens come out as one piece, on its last byte.
    assert_eq!(pieces, ["é", "", "", "€", "hello", "", "", "€"]);
}

#[test]
fn stream_decoder_replaces_invalid_bytes() {
    let t = tok();
    let mut d = t.stream_decoder(false);
    // A lone continuation byte can never start a character: replaced at once.
    assert_eq!(d.push(byte(&t, 0x80)).unwrap(), "\u{FFFD}");
    assert_eq!(d.push(byte(&t, b'a')).unwrap(), "a");
    // The start of a three-byte character, then a plain byte: the start is invalid.
    assert_eq!(d.push(byte(&t, 0xE2)).unwrap(), "");
    assert_eq!(d.push(byte(&t, b'a')).unwrap(), "\u{FFFD}a");
    // An incomplete character at the end of the stream.
    assert_eq!(d.push(byte(&t, 0xE2)).unwrap(), "");
    assert_eq!(d.push(byte(&t, 0x82)).unwrap(), "");
    assert_eq!(d.finish(), "\u{FFFD}");
}

#[test]
fn metadata_fields_are_read() {
    let t = tok();
    assert_eq!(t.model(), TokenizerModel::Spm);
    assert_eq!(t.bos(), Some(2));
    assert_eq!(t.eos(), Some(1));
    assert!(t.add_bos() && !t.add_eos() && !t.add_space_prefix());
    assert!(t.is_eog(1));
    assert!(!t.is_eog(2));
    assert_eq!(t.token_attr(3), Some(TokenAttr::UNKNOWN));
}

#[test]
fn end_of_turn_text_becomes_control() {
    // "<end_of_turn>" left normal by a file: llama.cpp makes it a control (and EOG) token.
    let mut spec = Spec::base();
    spec.tokens.push(("<end_of_turn>".into(), 0.0, NORMAL));
    let t = spec.build().unwrap();
    let eot = id(&t, "<end_of_turn>");
    assert!(t.token_attr(eot).unwrap().has(TokenAttr::CONTROL));
    assert!(t.is_eog(eot));
    assert_eq!(t.special_tokens().eot, Some(eot));
}

fn err(spec: Spec) -> TokenizerError {
    match spec.build() {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

#[test]
fn rejects_arrays_of_different_lengths() {
    let n = Spec::base().tokens.len();
    let spec = Spec::base().set("tokenizer.ggml.scores", MetaValue::Array(MetaArray::F32(vec![0.0; n - 1])));
    let e = err(spec);
    assert!(matches!(e, TokenizerError::LengthMismatch { key: "tokenizer.ggml.scores", .. }), "{e}");
    assert!(e.to_string().contains(&format!("{} entries", n - 1)), "{e}");

    let spec = Spec::base().set("tokenizer.ggml.token_type", MetaValue::Array(MetaArray::I32(vec![1; n + 1])));
    let e = err(spec);
    assert!(matches!(e, TokenizerError::LengthMismatch { key: "tokenizer.ggml.token_type", .. }), "{e}");
}

#[test]
fn rejects_special_ids_beyond_the_vocabulary() {
    let n = Spec::base().tokens.len() as u32;
    let e = err(Spec::base().set("tokenizer.ggml.eos_token_id", MetaValue::U32(n)));
    assert!(matches!(e, TokenizerError::SpecialIdOutOfRange { key: "tokenizer.ggml.eos_token_id", .. }), "{e}");
    let e = err(Spec::base().set("tokenizer.ggml.bos_token_id", MetaValue::U32(u32::MAX)));
    assert!(e.to_string().contains("4294967295"), "{e}");
}

#[test]
fn rejects_malformed_byte_tokens() {
    let mut spec = Spec::base();
    spec.tokens[6 + 0x41].0 = "<0xZZ>".into();
    let e = err(spec);
    assert!(matches!(e, TokenizerError::MalformedByteToken { id: 71, .. }), "{e}");

    let mut spec = Spec::base();
    spec.tokens.push(("<0x41x>".into(), 0.0, BYTE));
    assert!(matches!(err(spec), TokenizerError::MalformedByteToken { .. }));

    let mut spec = Spec::base();
    spec.tokens.push(("<0x0a>".into(), 0.0, BYTE)); // lower case: a second token for byte 0x0A
    assert!(matches!(err(spec), TokenizerError::DuplicateByteToken { byte: 0x0A, .. }));
}

#[test]
fn rejects_missing_required_keys() {
    let e = err(Spec::base().set("tokenizer.ggml.model", MetaValue::String("<remove>".into())));
    assert!(matches!(e, TokenizerError::MissingKey("tokenizer.ggml.model")), "{e}");
    let e = err(Spec::base().set("tokenizer.ggml.scores", MetaValue::String("<remove>".into())));
    assert!(matches!(e, TokenizerError::MissingKey("tokenizer.ggml.scores")), "{e}");
    let e = err(Spec::base().set("tokenizer.ggml.token_type", MetaValue::String("<remove>".into())));
    assert!(matches!(e, TokenizerError::MissingKey("tokenizer.ggml.token_type")), "{e}");
    let e = err(Spec::base().set("tokenizer.ggml.tokens", MetaValue::String("<remove>".into())));
    assert!(matches!(e, TokenizerError::MissingKey("tokenizer.ggml.tokens")), "{e}");
    // BOS asked for but not named.
    let e = err(Spec::base().remove("tokenizer.ggml.bos_token_id"));
    assert!(matches!(e, TokenizerError::AddWithoutId { .. }), "{e}");
}

#[test]
fn rejects_wrong_types_and_values() {
    let e = err(Spec::base().set("tokenizer.ggml.bos_token_id", MetaValue::I32(2)));
    assert!(e.to_string().contains("expected u32, got i32"), "{e}");
    let e = err(Spec::base().set("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::U32(vec![1, 2]))));
    assert!(e.to_string().contains("expected array[string]"), "{e}");

    let mut spec = Spec::base();
    spec.tokens[20].2 = 9;
    assert!(matches!(err(spec), TokenizerError::BadTokenType { id: 20, value: 9 }));

    let mut spec = Spec::base();
    spec.tokens[270].1 = f32::NAN;
    assert!(matches!(err(spec), TokenizerError::NanScore { id: 270 }));

    let mut spec = Spec::base();
    spec.tokens.push(("hello".into(), 0.0, NORMAL));
    assert!(matches!(err(spec), TokenizerError::DuplicateToken { .. }));

    let e = err(Spec::base().set("tokenizer.ggml.tokens", MetaValue::Array(MetaArray::String(vec![]))));
    assert!(matches!(e, TokenizerError::EmptyVocab), "{e}");
}

#[test]
fn refuses_models_it_does_not_implement() {
    let e = err(Spec::base().set("tokenizer.ggml.model", MetaValue::String("t5".into())));
    assert_eq!(e.to_string(), "tokenizer model t5: not supported yet");
    // Byte-level BPE without a pre-tokenizer name, or with one not implemented: refused.
    let e = err(Spec::base().set("tokenizer.ggml.model", MetaValue::String("gpt2".into())));
    assert!(matches!(e, TokenizerError::MissingPreTokenizer), "{e}");
    let e = err(Spec::base()
        .set("tokenizer.ggml.model", MetaValue::String("gpt2".into()))
        .set("tokenizer.ggml.pre", MetaValue::String("deepseek-coder".into())));
    assert!(matches!(e, TokenizerError::UnsupportedPreTokenizer(_)), "{e}");
    let e = err(Spec::base().set("tokenizer.ggml.model", MetaValue::String("mystery".into())));
    assert!(matches!(e, TokenizerError::UnknownModel(_)), "{e}");
}

#[test]
fn no_byte_fallback_and_no_unk_is_an_error() {
    let mut spec = Spec::base();
    spec.tokens.retain(|t| t.2 != BYTE);
    // Keep the unknown token: bytes fall back to it.
    let t = spec.build().unwrap();
    assert_eq!(plain(&t, "€"), vec![3, 3, 3]);
    let spec = Spec { tokens: t_tokens_without_bytes(), kv: Spec::base().kv }.remove("tokenizer.ggml.unknown_token_id");
    assert!(matches!(err(spec), TokenizerError::NoByteFallback { byte: 0 }));
}

fn t_tokens_without_bytes() -> Vec<(String, f32, i32)> {
    Spec::base().tokens.into_iter().filter(|t| t.2 != BYTE).collect()
}
