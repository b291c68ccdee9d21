//! The vocabulary: every token's text, score and attributes, and a hash table from text to id.
//!
//! All token texts live in one string (`text`), indexed by `offsets`; the piece -> id table is an
//! open-addressing table of ids that compares against that string, so building it allocates
//! nothing per token and looking up a slice of the input allocates nothing at all.

use std::hash::{BuildHasher, RandomState};

use super::error::TokenizerError;

/// A token id, as the model's embedding table indexes it.
pub type TokenId = u32;

/// The token type written in `tokenizer.ggml.token_type` (llama.cpp's `LLAMA_TOKEN_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenType {
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

impl TokenType {
    pub fn from_i32(v: i32) -> Option<TokenType> {
        use TokenType::*;
        Some(match v {
            0 => Undefined,
            1 => Normal,
            2 => Unknown,
            3 => Control,
            4 => UserDefined,
            5 => Unused,
            6 => Byte,
            _ => return None,
        })
    }
}

/// A token's attributes, a bit set (llama.cpp's `llama_token_attr`). The type from the file sets
/// one bit; llama.cpp's load-time fix-ups may add more (an end-of-turn token that the file left
/// normal becomes `CONTROL`, control tokens named "unused" also become `UNUSED`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenAttr(pub u16);

impl TokenAttr {
    pub const UNDEFINED: TokenAttr = TokenAttr(0);
    pub const UNKNOWN: TokenAttr = TokenAttr(1 << 0);
    pub const UNUSED: TokenAttr = TokenAttr(1 << 1);
    pub const NORMAL: TokenAttr = TokenAttr(1 << 2);
    pub const CONTROL: TokenAttr = TokenAttr(1 << 3);
    pub const USER_DEFINED: TokenAttr = TokenAttr(1 << 4);
    pub const BYTE: TokenAttr = TokenAttr(1 << 5);
    /// Whitespace before a match of this special token is dropped.
    pub const LSTRIP: TokenAttr = TokenAttr(1 << 7);
    /// Whitespace after a match of this special token is dropped.
    pub const RSTRIP: TokenAttr = TokenAttr(1 << 8);

    pub fn from_type(t: TokenType) -> TokenAttr {
        match t {
            TokenType::Undefined => TokenAttr::UNDEFINED,
            TokenType::Normal => TokenAttr::NORMAL,
            TokenType::Unknown => TokenAttr::UNKNOWN,
            TokenType::Control => TokenAttr::CONTROL,
            TokenType::UserDefined => TokenAttr::USER_DEFINED,
            TokenType::Unused => TokenAttr::UNUSED,
            TokenType::Byte => TokenAttr::BYTE,
        }
    }

    /// Whether any bit of `other` is set.
    #[inline]
    pub fn has(self, other: TokenAttr) -> bool {
        self.0 & other.0 != 0
    }

    pub fn with(self, other: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 | other.0)
    }

    pub fn without(self, other: TokenAttr) -> TokenAttr {
        TokenAttr(self.0 & !other.0)
    }
}

/// Token texts, scores and attributes, with the text -> id table.
pub(crate) struct Vocab {
    /// Every token's text, concatenated.
    text: String,
    /// `n + 1` offsets into `text`: token `i` is `text[offsets[i]..offsets[i + 1]]`.
    offsets: Vec<usize>,
    pub(crate) scores: Vec<f32>,
    pub(crate) attrs: Vec<TokenAttr>,
    map: PieceMap,
    /// The longest token text in bytes: no longer slice of the input can be a token.
    pub(crate) max_token_len: usize,
}

impl Vocab {
    /// Builds the vocabulary from its texts (in id order), scores and attributes, which the
    /// caller has checked to have one entry per token. Empty texts become `[EMPTY_<id>]`, as
    /// llama.cpp names them; two tokens with the same text are an error.
    pub(crate) fn build<'a>(
        texts: impl Iterator<Item = &'a str>,
        n: usize,
        scores: Vec<f32>,
        attrs: Vec<TokenAttr>,
    ) -> Result<Vocab, TokenizerError> {
        debug_assert!(scores.len() == n && attrs.len() == n);
        let mut text = String::new();
        let mut offsets = Vec::with_capacity(n + 1);
        offsets.push(0);
        for (id, t) in texts.take(n).enumerate() {
            if t.is_empty() {
                text.push_str(&format!("[EMPTY_{id}]"));
            } else {
                text.push_str(t);
            }
            offsets.push(text.len());
        }
        if offsets.len() != n + 1 {
            return Err(TokenizerError::LengthMismatch {
                key: "tokenizer.ggml.tokens",
                len: offsets.len() - 1,
                n_vocab: n,
            });
        }
        let mut vocab = Vocab { text, offsets, scores, attrs, map: PieceMap::with_capacity(n), max_token_len: 0 };
        for id in 0..n {
            let len = vocab.offsets[id + 1] - vocab.offsets[id];
            vocab.max_token_len = vocab.max_token_len.max(len);
            if let Err(first) = vocab.map.insert(&vocab.text, &vocab.offsets, id as TokenId) {
                let text = vocab.text_of(id).to_string();
                return Err(TokenizerError::DuplicateToken { text, first, second: id as TokenId });
            }
        }
        Ok(vocab)
    }

    pub(crate) fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    /// The text of token `id`; `id` must be in range.
    #[inline]
    pub(crate) fn text_of(&self, id: usize) -> &str {
        &self.text[self.offsets[id]..self.offsets[id + 1]]
    }

    /// The text of token `id`, or `None` past the vocabulary.
    pub(crate) fn text(&self, id: TokenId) -> Option<&str> {
        let i = id as usize;
        (i < self.len()).then(|| self.text_of(i))
    }

    /// The id of the token whose text is exactly `piece`.
    #[inline]
    pub(crate) fn find(&self, piece: &str) -> Option<TokenId> {
        if piece.len() > self.max_token_len {
            return None;
        }
        self.map.find(&self.text, &self.offsets, piece)
    }
}

/// Open-addressing hash table from token text to id. Slots hold `id + 1` (0 is empty) and the
/// high bits of the hash, so most failed probes end without touching the texts. The hash is
/// SipHash with a per-process random key: a crafted vocabulary cannot force quadratic probing.
struct PieceMap {
    /// `(id + 1, hash tag)`; `(0, _)` is an empty slot.
    slots: Vec<(u32, u32)>,
    mask: usize,
    hasher: RandomState,
}

impl PieceMap {
    fn with_capacity(n: usize) -> PieceMap {
        // At most half full: short probe sequences.
        let cap = (n.max(4) * 2).next_power_of_two();
        PieceMap { slots: vec![(0, 0); cap], mask: cap - 1, hasher: RandomState::new() }
    }

    #[inline]
    fn hash(&self, s: &str) -> u64 {
        self.hasher.hash_one(s.as_bytes())
    }

    /// Inserts `id`; on a duplicate text, returns the id already there.
    fn insert(&mut self, text: &str, offsets: &[usize], id: TokenId) -> Result<(), TokenId> {
        let key = &text[offsets[id as usize]..offsets[id as usize + 1]];
        let h = self.hash(key);
        let tag = (h >> 32) as u32;
        let mut i = h as usize & self.mask;
        loop {
            let (slot, slot_tag) = self.slots[i];
            if slot == 0 {
                self.slots[i] = (id + 1, tag);
                return Ok(());
            }
            let other = slot - 1;
            if slot_tag == tag && &text[offsets[other as usize]..offsets[other as usize + 1]] == key {
                return Err(other);
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    fn find(&self, text: &str, offsets: &[usize], key: &str) -> Option<TokenId> {
        let h = self.hash(key);
        let tag = (h >> 32) as u32;
        let mut i = h as usize & self.mask;
        loop {
            let (slot, slot_tag) = self.slots[i];
            if slot == 0 {
                return None;
            }
            let id = (slot - 1) as usize;
            if slot_tag == tag && &text[offsets[id]..offsets[id + 1]] == key {
                return Some(slot - 1);
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// The byte a byte token stands for: its text must be `<0xHH>` (either case of hex digit).
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vocab(texts: &[&str]) -> Result<Vocab, TokenizerError> {
        let n = texts.len();
        Vocab::build(texts.iter().copied(), n, vec![0.0; n], vec![TokenAttr::NORMAL; n])
    }

    #[test]
    fn finds_every_token_and_nothing_else() {
        let texts: Vec<String> = (0..1000).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let v = vocab(&refs).unwrap();
        for (i, t) in refs.iter().enumerate() {
            assert_eq!(v.find(t), Some(i as TokenId));
        }
        assert_eq!(v.find("t1000"), None);
        assert_eq!(v.find(""), None);
        assert_eq!(v.max_token_len, 4);
    }

    #[test]
    fn duplicate_text_is_an_error() {
        let err = vocab(&["a", "b", "a"]).err().unwrap();
        assert!(matches!(err, TokenizerError::DuplicateToken { first: 0, second: 2, .. }), "{err}");
    }

    #[test]
    fn empty_text_is_renamed_like_llama_cpp() {
        let v = vocab(&["a", "", "b"]).unwrap();
        assert_eq!(v.text(1), Some("[EMPTY_1]"));
        assert_eq!(v.find("[EMPTY_1]"), Some(1));
    }

    #[test]
    fn byte_token_texts() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(10));
        assert_eq!(parse_byte_token("<0xff>"), Some(255));
        assert_eq!(parse_byte_token("<0xFFF>"), None);
        assert_eq!(parse_byte_token("<0xG0>"), None);
        assert_eq!(parse_byte_token("0x41"), None);
        assert_eq!(parse_byte_token("<0x+1>"), None);
    }
}
