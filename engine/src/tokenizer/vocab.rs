//! The vocabulary: every token's text, score and attributes, and a hash table from text to id.
//!
//! All token texts live in one string (`text`), indexed by `offsets`; the piece -> id table is an
//! open-addressing table of ids that compares against that string, so building it allocates
//! nothing per token and looking up a slice of the input allocates nothing at all.

use std::hash::{BuildHasher, Hasher, RandomState};

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
        text_bytes: usize,
        scores: Vec<f32>,
        attrs: Vec<TokenAttr>,
    ) -> Result<Vocab, TokenizerError> {
        debug_assert!(scores.len() == n && attrs.len() == n);
        // `text_bytes` is a hint (the encoded array's size bounds the texts' total).
        let mut text = String::with_capacity(text_bytes);
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
        let max_token_len = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        let map = match PieceMap::build(&text, &offsets, false) {
            Ok(map) => map,
            Err((first, second)) => {
                let dup = text[offsets[first as usize]..offsets[first as usize + 1]].to_string();
                return Err(TokenizerError::DuplicateToken { text: dup, first, second });
            }
        };
        Ok(Vocab { text, offsets, scores, attrs, map, max_token_len })
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

/// BPE merges (`tokenizer.ggml.merges`, "left right" in rank order): the rank of a pair.
pub(crate) struct MergeTable {
    text: String,
    offsets: Vec<usize>,
    /// Length of the left part of each merge (the text up to the first space after the first
    /// byte, as llama.cpp splits it).
    left_len: Vec<u32>,
    map: PieceMap,
}

impl MergeTable {
    /// Reads the merges in rank order. A merge without a separating space is an error; of two
    /// equal merges the first (lower) rank counts, as in llama.cpp.
    pub(crate) fn build<'a>(
        merges: impl Iterator<Item = &'a str>,
        n: usize,
        text_bytes: usize,
    ) -> Result<MergeTable, TokenizerError> {
        let mut text = String::with_capacity(text_bytes);
        let mut offsets = Vec::with_capacity(n + 1);
        let mut left_len = Vec::with_capacity(n);
        offsets.push(0);
        for (rank, m) in merges.take(n).enumerate() {
            // The first space at byte 1 or later (a space is never inside a character).
            let split = m.as_bytes().iter().skip(1).position(|&b| b == b' ').map(|p| p + 1);
            let Some(split) = split.filter(|&p| p <= u32::MAX as usize) else {
                return Err(TokenizerError::MalformedMerge { rank: rank as u32, text: m.to_string() });
            };
            left_len.push(split as u32);
            text.push_str(m);
            offsets.push(text.len());
        }
        let map = PieceMap::build(&text, &offsets, true).map_err(|(first, _)| TokenizerError::MalformedMerge {
            rank: first,
            text: "duplicate".to_string(),
        })?;
        Ok(MergeTable { text, offsets, left_len, map })
    }

    /// The rank of merging a left piece of `left_len` bytes with the rest of `key`, where `key`
    /// is "left right".
    #[inline]
    pub(crate) fn rank(&self, key: &str, left_len: usize) -> Option<u32> {
        let r = self.map.find(&self.text, &self.offsets, key)?;
        (self.left_len[r as usize] as usize == left_len).then_some(r)
    }
}

/// Open-addressing hash table (linear probing) from token text to id.
///
/// A slot holds the id, a tag (high hash bits and the length) and the first 8 bytes of the text,
/// so a lookup of a key of up to 8 bytes — most lookups while tokenizing — reads one slot and
/// nothing else, and a failed probe almost never touches the texts.
///
/// The hash is a keyed folded-multiply hash (the construction of aHash's and foldhash's fallback
/// paths) with a random key per table: a few nanoseconds for a token-sized key, which matters
/// because tokenizing looks up two or three slices per input character, and a key the file's
/// author cannot know, so a crafted vocabulary cannot aim for long probe chains.
struct PieceMap {
    slots: Vec<Slot>,
    mask: usize,
    key: [u64; 2],
}

#[derive(Clone, Copy, Default)]
struct Slot {
    /// `id + 1`; 0 marks an empty slot.
    id1: u32,
    /// High 24 bits of the hash, and the length (255 for 255 or more) in the low 8.
    tag: u32,
    /// The first 8 bytes of the text, zero-padded.
    prefix: u64,
}

/// A key on its way into the table.
#[derive(Clone, Copy, Default)]
struct Entry {
    h: u64,
    prefix: u64,
    tag: u32,
    id: u32,
}

/// What a key contributes to a slot.
#[inline(always)]
fn slot_key(b: &[u8], h: u64) -> (u32, u64) {
    let tag = ((h >> 40) as u32) << 8 | b.len().min(255) as u32;
    let mut p = [0u8; 8];
    let n = b.len().min(8);
    p[..n].copy_from_slice(&b[..n]);
    (tag, u64::from_le_bytes(p))
}

impl PieceMap {
    fn new(n: usize) -> PieceMap {
        // At most half full: short probe sequences.
        let cap = (n.max(4) * 2).next_power_of_two();
        // Two random words from the standard library's per-process SipHash keys.
        let seed = RandomState::new();
        let mut h = seed.build_hasher();
        h.write_u64(0x9E37_79B9_7F4A_7C15);
        let k0 = h.finish();
        h.write_u64(k0);
        let key = [k0, h.finish() | 1];
        PieceMap { slots: vec![Slot::default(); cap], mask: cap - 1, key }
    }

    /// A table of every token; on two tokens with the same text, returns their ids.
    ///
    /// Inserting 262,144 keys in id order would touch the table at random, a cache miss each;
    /// so the keys are first hashed in order, then grouped by the region of the table they land
    /// in (a counting sort), and inserted region by region.
    fn build(text: &str, offsets: &[usize], keep_first: bool) -> Result<PieceMap, (TokenId, TokenId)> {
        let n = offsets.len() - 1;
        let mut map = PieceMap::new(n);
        let bits = map.mask.count_ones();
        let shift = bits.saturating_sub(8); // 256 regions
        let n_regions = (map.mask >> shift) + 1;
        // Pass 1, in id order: how many keys land in each region.
        let key_of = |id: usize| &text.as_bytes()[offsets[id]..offsets[id + 1]];
        let mut counts = vec![0usize; n_regions + 1];
        for id in 0..n {
            let h = map.hash(key_of(id));
            counts[((h as usize & map.mask) >> shift) + 1] += 1;
        }
        for r in 1..counts.len() {
            counts[r] += counts[r - 1];
        }
        // Pass 2: everything a slot needs, grouped by region (hashing again is cheaper than
        // keeping a second array of entries).
        let mut order = vec![Entry::default(); n];
        for id in 0..n {
            let key = key_of(id);
            let h = map.hash(key);
            let (tag, prefix) = slot_key(key, h);
            let r = (h as usize & map.mask) >> shift;
            order[counts[r]] = Entry { h, prefix, tag, id: id as u32 };
            counts[r] += 1;
        }
        // Pass 3: insert region by region.
        for e in order {
            map.insert(text, offsets, e, keep_first)?;
        }
        Ok(map)
    }

    #[inline]
    fn hash(&self, b: &[u8]) -> u64 {
        keyed_hash(b, self.key)
    }

    /// Inserts an entry. A second entry with the same text is an error, or, with `keep_first`,
    /// leaves the lower id in the table.
    fn insert(&mut self, text: &str, offsets: &[usize], e: Entry, keep_first: bool) -> Result<(), (TokenId, TokenId)> {
        let mut i = e.h as usize & self.mask;
        loop {
            let slot = self.slots[i];
            if slot.id1 == 0 {
                self.slots[i] = Slot { id1: e.id + 1, tag: e.tag, prefix: e.prefix };
                return Ok(());
            }
            if slot.tag == e.tag && slot.prefix == e.prefix {
                let other = (slot.id1 - 1) as usize;
                let id = e.id as usize;
                if text.as_bytes()[offsets[other]..offsets[other + 1]] == text.as_bytes()[offsets[id]..offsets[id + 1]] {
                    let (a, b) = (other as TokenId, e.id);
                    if keep_first {
                        self.slots[i].id1 = a.min(b) + 1;
                        return Ok(());
                    }
                    return Err((a.min(b), a.max(b)));
                }
            }
            i = (i + 1) & self.mask;
        }
    }

    #[inline]
    fn find(&self, text: &str, offsets: &[usize], key: &str) -> Option<TokenId> {
        let key = key.as_bytes();
        let h = self.hash(key);
        let (tag, prefix) = slot_key(key, h);
        let mut i = h as usize & self.mask;
        loop {
            let slot = self.slots[i];
            if slot.id1 == 0 {
                return None;
            }
            if slot.tag == tag && slot.prefix == prefix {
                let id = (slot.id1 - 1) as usize;
                // Equal length and first 8 bytes: equal, unless the key is longer.
                if key.len() <= 8 || &text.as_bytes()[offsets[id]..offsets[id + 1]] == key {
                    return Some(id as TokenId);
                }
            }
            i = (i + 1) & self.mask;
        }
    }
}

/// `a * b` as 128 bits, folded to 64 by xor of the halves.
#[inline(always)]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

#[inline(always)]
fn le64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// Hashes `b` under `key`: 16 bytes at a time through a folded multiply; the tail (or a short
/// key) as two overlapping words, and the length mixed in, so no two lengths share a state.
#[inline]
fn keyed_hash(b: &[u8], key: [u64; 2]) -> u64 {
    const K: u64 = 0x5851_F42D_4C95_7F2D;
    let mut h = key[0] ^ (b.len() as u64).wrapping_mul(K);
    let (lo, hi) = if b.len() >= 8 {
        let mut i = 0;
        while b.len() - i > 16 {
            h = folded_mul(le64(b, i) ^ h, le64(b, i + 8) ^ key[1]);
            i += 16;
        }
        let n = b.len();
        if n - i > 8 {
            (le64(b, i), le64(b, n - 8))
        } else {
            (le64(b, n - 8), 0)
        }
    } else if b.len() >= 4 {
        let n = b.len();
        let w = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]) as u64;
        (w(0), w(n - 4))
    } else if !b.is_empty() {
        let n = b.len();
        ((b[0] as u64) | (b[n / 2] as u64) << 8 | (b[n - 1] as u64) << 16, 0)
    } else {
        (0, 0)
    };
    h = folded_mul(lo ^ h, hi ^ key[1]);
    folded_mul(h, K ^ key[0])
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
        Vocab::build(texts.iter().copied(), n, 0, vec![0.0; n], vec![TokenAttr::NORMAL; n])
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
    fn hash_separates_lengths_and_contents() {
        let key = [0x1234_5678_9abc_def0, 0x0fed_cba9_8765_4321];
        let mut seen = std::collections::HashSet::new();
        let mut keys: Vec<Vec<u8>> = vec![vec![], vec![0], vec![0, 0], vec![0; 3], vec![0; 8], vec![0; 9], vec![0; 16]];
        keys.extend((0..40).map(|n| vec![b'a'; n + 17]));
        keys.extend((0u32..5000).map(|i| i.to_le_bytes().to_vec()));
        keys.extend((0u32..5000).map(|i| format!("piece{i}").into_bytes()));
        for k in &keys {
            assert!(seen.insert(keyed_hash(k, key)), "collision on {k:?}");
        }
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
