//! Splitting text at special-token strings before the subword tokenizer sees it.
//!
//! llama.cpp's rule: the special tokens (control, user-defined and unknown ones) are tried one
//! at a time, longest text first; each one is found left to right, without overlaps, in every
//! piece of text that no earlier token claimed, and splits that piece. With `parse_special` off
//! (user text), control and unknown tokens are skipped, so "<start_of_turn>" typed by a user stays
//! plain text, while user-defined tokens (Gemma's runs of spaces, tabs and newlines, its HTML
//! tags) are still split out, as Hugging Face tokenizers do.
//!
//! Trying each of thousands of special tokens against a megabyte of text would be slow, so a
//! trie over the special texts first finds which of them occur in the text at all; only those
//! go through the (exact) one-token-at-a-time splitting.

use super::vocab::{TokenAttr, TokenId, Vocab};

/// A piece of the input: plain text (a byte range of it) or a special token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fragment {
    Text { start: usize, end: usize },
    Token(TokenId),
}

const NO_RANK: u32 = u32::MAX;

struct Node {
    /// `(byte, node index)`, sorted by byte.
    children: Vec<(u8, u32)>,
    /// Rank (index into `order`) of the special token ending here, or `NO_RANK`.
    rank: u32,
}

/// The special tokens in the order they are tried, and a trie over their texts.
pub(crate) struct SpecialMatcher {
    /// Special token ids, longest text first (ties by id).
    order: Vec<TokenId>,
    /// Whether `order[rank]` takes part when `parse_special` is off (user-defined tokens).
    in_user_text: Vec<bool>,
    nodes: Vec<Node>,
    /// Child of the root for each first byte.
    root: Box<[u32; 256]>,
}

impl SpecialMatcher {
    pub(crate) fn new(vocab: &Vocab) -> SpecialMatcher {
        let special = TokenAttr::CONTROL.with(TokenAttr::USER_DEFINED).with(TokenAttr::UNKNOWN);
        let mut order: Vec<TokenId> =
            (0..vocab.len()).filter(|&i| vocab.attrs[i].has(special)).map(|i| i as TokenId).collect();
        order.sort_by(|&a, &b| {
            let (la, lb) = (vocab.text_of(a as usize).len(), vocab.text_of(b as usize).len());
            lb.cmp(&la).then(a.cmp(&b))
        });
        let in_user_text = order
            .iter()
            .map(|&id| !vocab.attrs[id as usize].has(TokenAttr::CONTROL.with(TokenAttr::UNKNOWN)))
            .collect();
        let mut m = SpecialMatcher {
            order,
            in_user_text,
            nodes: vec![Node { children: Vec::new(), rank: NO_RANK }],
            root: Box::new([0; 256]),
        };
        for rank in 0..m.order.len() {
            let id = m.order[rank] as usize;
            m.insert(vocab.text_of(id).as_bytes(), rank as u32);
        }
        m
    }

    fn insert(&mut self, key: &[u8], rank: u32) {
        let Some((&first, rest)) = key.split_first() else { return };
        let mut node = self.root[first as usize] as usize;
        if node == 0 {
            node = self.new_node();
            self.root[first as usize] = node as u32;
        }
        for &b in rest {
            node = match self.nodes[node].children.binary_search_by_key(&b, |&(c, _)| c) {
                Ok(i) => self.nodes[node].children[i].1 as usize,
                Err(i) => {
                    let child = self.new_node();
                    self.nodes[node].children.insert(i, (b, child as u32));
                    child
                }
            };
        }
        // Texts are unique, so no rank is overwritten.
        self.nodes[node].rank = rank;
    }

    fn new_node(&mut self) -> usize {
        self.nodes.push(Node { children: Vec::new(), rank: NO_RANK });
        self.nodes.len() - 1
    }

    /// The ranks of the eligible special tokens that occur anywhere in `text`, ascending.
    fn present(&self, text: &[u8], parse_special: bool) -> Vec<u32> {
        let mut seen = vec![false; self.order.len()];
        let mut found = Vec::new();
        for start in 0..text.len() {
            let mut node = self.root[text[start] as usize] as usize;
            let mut pos = start + 1;
            while node != 0 {
                let n = &self.nodes[node];
                if n.rank != NO_RANK {
                    let r = n.rank as usize;
                    if !seen[r] && (parse_special || self.in_user_text[r]) {
                        seen[r] = true;
                        found.push(n.rank);
                    }
                }
                let Some(&b) = text.get(pos) else { break };
                node = match n.children.binary_search_by_key(&b, |&(c, _)| c) {
                    Ok(i) => n.children[i].1 as usize,
                    Err(_) => 0,
                };
                pos += 1;
            }
        }
        found.sort_unstable();
        found
    }

    /// Splits `text` into plain-text fragments and special tokens (see the module comment).
    /// Empty text gives no fragment.
    pub(crate) fn partition(&self, vocab: &Vocab, text: &str, parse_special: bool) -> Vec<Fragment> {
        if text.is_empty() {
            return Vec::new();
        }
        let mut frags = vec![Fragment::Text { start: 0, end: text.len() }];
        let bytes = text.as_bytes();
        let mut next = Vec::new();
        for rank in self.present(bytes, parse_special) {
            let id = self.order[rank as usize];
            let needle = vocab.text_of(id as usize);
            let attr = vocab.attrs[id as usize];
            next.clear();
            for &f in &frags {
                let Fragment::Text { start, end } = f else {
                    next.push(f);
                    continue;
                };
                split_at_token(text, bytes, start, end, needle, id, attr, &mut next);
            }
            std::mem::swap(&mut frags, &mut next);
        }
        frags
    }
}

/// Splits the text fragment `start..end` at every non-overlapping occurrence of `needle`,
/// left to right, dropping whitespace next to a match where the token says so.
#[allow(clippy::too_many_arguments)]
fn split_at_token(
    text: &str,
    bytes: &[u8],
    start: usize,
    end: usize,
    needle: &str,
    id: TokenId,
    attr: TokenAttr,
    out: &mut Vec<Fragment>,
) {
    let mut base = start;
    loop {
        let Some(found) = text[base..end].find(needle) else {
            if base < end {
                out.push(Fragment::Text { start: base, end });
            }
            return;
        };
        let at = base + found;
        let mut left_end = at;
        if attr.has(TokenAttr::LSTRIP) {
            while left_end > base && is_c_space(bytes[left_end - 1]) {
                left_end -= 1;
            }
        }
        if left_end > base {
            out.push(Fragment::Text { start: base, end: left_end });
        }
        out.push(Fragment::Token(id));
        let mut right = at + needle.len();
        if right >= end {
            return;
        }
        if attr.has(TokenAttr::RSTRIP) {
            while right < end && is_c_space(bytes[right]) {
                right += 1;
            }
        }
        base = right;
    }
}

/// C's `isspace` in the "C" locale.
fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}
