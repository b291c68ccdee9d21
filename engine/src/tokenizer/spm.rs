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
/// neighbours. A piece merged into its left neighbour has `len == 0`.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

const NONE: usize = usize::MAX;

/// A candidate merge of the pieces `left` and `right` (adjacent when queued) into a token of
/// score `score` and `size` bytes. It is stale when either piece has changed since.
#[derive(Clone, Copy)]
struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
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
        if self.escaped.is_empty() {
            return;
        }
        let text = std::mem::take(&mut self.escaped);
        self.merge(vocab, &text);
        self.emit(vocab, byte_tokens, &text, out);
        self.escaped = text;
    }

    fn merge(&mut self, vocab: &Vocab, text: &str) {
        self.symbols.clear();
        self.queue.clear();
        for (i, (start, c)) in text.char_indices().enumerate() {
            let len = c.len_utf8();
            let next = if start + len == text.len() { NONE } else { i + 1 };
            let prev = if i == 0 { NONE } else { i - 1 };
            self.symbols.push(Symbol { start, len, prev, next });
        }
        for right in 1..self.symbols.len() {
            self.try_add_bigram(vocab, text, right - 1, right);
        }
        while let Some(b) = self.queue.pop() {
            let (l, r) = (self.symbols[b.left], self.symbols[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue; // one of the two has merged since this pair was queued
            }
            // The right piece joins the left one and leaves the chain.
            self.symbols[b.left].len += r.len;
            self.symbols[b.right].len = 0;
            self.symbols[b.left].next = r.next;
            if r.next != NONE {
                self.symbols[r.next].prev = b.left;
            }
            self.try_add_bigram(vocab, text, l.prev, b.left);
            self.try_add_bigram(vocab, text, b.left, r.next);
        }
    }

    #[inline]
    fn try_add_bigram(&mut self, vocab: &Vocab, text: &str, left: usize, right: usize) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (self.symbols[left], self.symbols[right]);
        let size = l.len + r.len;
        if size > vocab.max_token_len {
            return;
        }
        // Adjacent pieces are adjacent byte ranges of the text.
        let Some(piece) = text.get(l.start..l.start + size) else { return };
        if let Some(id) = vocab.find(piece) {
            let score = vocab.scores[id as usize];
            self.queue.push(Bigram { score, left, right, size });
        }
    }

    fn emit(&self, vocab: &Vocab, byte_tokens: &[TokenId; 256], text: &str, out: &mut Vec<TokenId>) {
        let mut i = if self.symbols.is_empty() { NONE } else { 0 };
        while i != NONE {
            let s = self.symbols[i];
            let piece = &text[s.start..s.start + s.len];
            match vocab.find(piece) {
                Some(id) => out.push(id),
                None => out.extend(piece.bytes().map(|b| byte_tokens[b as usize])),
            }
            i = s.next;
        }
    }
}
