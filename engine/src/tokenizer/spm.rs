//! SentencePiece-style tokenization (`tokenizer.ggml.model = "llama"`), as llama.cpp does it.
//!
//! One fragment of plain text (no special tokens in it) becomes tokens in three steps:
//!
//! 1. spaces become "▁" (U+2581), with one more in front when the vocabulary asks for a space
//!    prefix and the fragment starts the text or follows a special token;
//! 2. the text is split into UTF-8 characters, and adjacent pairs are merged greedily: always the
//!    pair whose concatenation is the highest-scoring token, the leftmost pair among equals,
//!    until no adjacent pair forms a token;
//! 3. each remaining piece is its token, or, when it is a single character that is not in the
//!    vocabulary, one byte token `<0xHH>` per UTF-8 byte.
//!
//! (llama.cpp also keeps a table for splitting pieces back into the pairs that formed them, but
//! it only ever consults it for pieces that are not tokens, and every merged piece is a token; so
//! step 3 is the whole of its "resegmentation".)

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::vocab::{TokenId, Vocab};

/// U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's visible space.
pub(crate) const SPACE_ESCAPE: &str = "\u{2581}";

/// A piece of the text being merged: a byte range of the escaped text, linked to its live
/// neighbours. A piece merged into its left neighbour has `len == 0`. `id` is the token a merge
/// made of it (`NO_ID` for a single character as split).
#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
    id: TokenId,
}

const NONE: u32 = u32::MAX;
const NO_ID: TokenId = TokenId::MAX;

/// The longest text merged as one unit. Symbol indices and offsets are 32-bit (llama.cpp's are
/// `int`); a longer stretch of text without special tokens is tokenized in pieces of this size,
/// cut at a character boundary. No real prompt comes near it.
pub(crate) const MAX_MERGE_BYTES: usize = 1 << 31;

/// A candidate merge of the pieces `left` and `right` (adjacent when queued) into token `id`
/// of score `score` and `size` bytes. It is stale when either piece has changed since.
#[derive(Clone, Copy)]
struct Bigram {
    score: f32,
    left: u32,
    right: u32,
    size: u32,
    id: TokenId,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Bigram {}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Bigram {
    /// The heap's maximum is the best merge: the highest score, then the leftmost. Scores are
    /// never NaN (the vocabulary rejects them); -0.0 and 0.0 compare equal, as in C++.
    fn cmp(&self, other: &Self) -> Ordering {
        match self.score.partial_cmp(&other.score).unwrap_or(Ordering::Equal) {
            Ordering::Equal => other.left.cmp(&self.left),
            o => o,
        }
    }
}

/// Reusable buffers for tokenizing fragments: one per `tokenize` call, not per fragment.
#[derive(Default)]
pub(crate) struct SpmSession {
    escaped: String,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl SpmSession {
    /// Tokenizes one plain-text fragment, appending to `out`. `byte_tokens` maps each byte to
    /// the token that stands for it when a character is not in the vocabulary.
    pub(crate) fn tokenize(
        &mut self,
        vocab: &Vocab,
        byte_tokens: &[TokenId; 256],
        fragment: &str,
        space_prefix: bool,
        out: &mut Vec<TokenId>,
    ) {
        self.escaped.clear();
        if space_prefix {
            self.escaped.push_str(SPACE_ESCAPE);
        }
        for (i, part) in fragment.split(' ').enumerate() {
            if i > 0 {
                self.escaped.push_str(SPACE_ESCAPE);
            }
            self.escaped.push_str(part);
        }
        let text = std::mem::take(&mut self.escaped);
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_MERGE_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            self.merge(vocab, piece);
            self.emit(vocab, byte_tokens, piece, out);
            rest = tail;
        }
        self.escaped = text;
    }

    /// `text` is at most `MAX_MERGE_BYTES` long, so every offset and index fits in a `u32`.
    fn merge(&mut self, vocab: &Vocab, text: &str) {
        debug_assert!(text.len() <= MAX_MERGE_BYTES);
        self.symbols.clear();
        self.queue.clear();
        let mut prev = NONE;
        for (start, c) in text.char_indices() {
            let i = self.symbols.len() as u32;
            self.symbols.push(Symbol { start: start as u32, len: c.len_utf8() as u32, prev, next: i + 1, id: NO_ID });
            prev = i;
        }
        if let Some(last) = self.symbols.last_mut() {
            last.next = NONE;
        }
        for right in 1..self.symbols.len() as u32 {
            self.try_add_bigram(vocab, text, right - 1, right);
        }
        while let Some(b) = self.queue.pop() {
            let (l, r) = (self.symbols[b.left as usize], self.symbols[b.right as usize]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue; // one of the two has merged since this pair was queued
            }
            // The right piece joins the left one and leaves the chain.
            let left = &mut self.symbols[b.left as usize];
            left.len += r.len;
            left.next = r.next;
            left.id = b.id;
            self.symbols[b.right as usize].len = 0;
            if r.next != NONE {
                self.symbols[r.next as usize].prev = b.left;
            }
            self.try_add_bigram(vocab, text, l.prev, b.left);
            self.try_add_bigram(vocab, text, b.left, r.next);
        }
    }

    #[inline]
    fn try_add_bigram(&mut self, vocab: &Vocab, text: &str, left: u32, right: u32) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (self.symbols[left as usize], self.symbols[right as usize]);
        let size = l.len + r.len;
        if size as usize > vocab.max_token_len {
            return;
        }
        // Adjacent pieces are adjacent byte ranges of the text.
        let start = l.start as usize;
        let Some(piece) = text.get(start..start + size as usize) else { return };
        if let Some(id) = vocab.find(piece) {
            let score = vocab.scores[id as usize];
            self.queue.push(Bigram { score, left, right, size, id });
        }
    }

    fn emit(&self, vocab: &Vocab, byte_tokens: &[TokenId; 256], text: &str, out: &mut Vec<TokenId>) {
        let mut i = if self.symbols.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = self.symbols[i as usize];
            if s.id != NO_ID {
                out.push(s.id);
            } else {
                let piece = &text[s.start as usize..(s.start + s.len) as usize];
                match vocab.find(piece) {
                    Some(id) => out.push(id),
                    None => out.extend(piece.bytes().map(|b| byte_tokens[b as usize])),
                }
            }
            i = s.next;
        }
    }
}
