//! Byte-level BPE (`tokenizer.ggml.model = "gpt2"`), as llama.cpp does it.
//!
//! A plain-text fragment becomes tokens in three steps:
//!
//! 1. a pre-tokenizer, chosen by `tokenizer.ggml.pre`, splits it into words: GPT-2's rule
//!    (contractions, ` ?letters`, ` ?digits`, ` ?other`, whitespace runs), Llama 3's (letters with
//!    one leading non-letter, digits in threes, newline runs kept together) or Qwen 2's (Llama 3's
//!    with single digits). These are hand-written versions of the regular expressions, with
//!    llama.cpp's exact behaviour; an unknown `pre` is refused rather than guessed;
//! 2. each word's bytes become characters through GPT-2's byte-to-unicode table (printable bytes
//!    stand for themselves, the others move to U+0100 and up);
//! 3. adjacent pieces of the word merge in the order of `tokenizer.ggml.merges` (lowest rank
//!    first, leftmost among equals) until no pair is a merge; each piece is then its token, or
//!    its ASCII bytes' one-character tokens. (Llama 3 vocabularies first look the whole word up.)

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use super::spm::MAX_MERGE_BYTES;
use super::unicode_tables::{LETTER, NUMBER, RUNS, WHITESPACE};
use super::vocab::{MergeTable, TokenId, Vocab};

/// The word-splitting rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    Gpt2,
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    Llama3,
    /// Llama 3's expression with `\p{N}` (one digit) for `\p{N}{1,3}`.
    Qwen2,
}

/// What a `tokenizer.ggml.pre` name means in llama.cpp.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BpePreset {
    pub(crate) pre: PreTokenizer,
    /// A word that is a token as a whole is that token, merges or not.
    pub(crate) ignore_merges: bool,
    /// The default of `add_bos_token`.
    pub(crate) add_bos: bool,
    /// Decoding removes spaces before punctuation and in contractions.
    pub(crate) clean_spaces: bool,
}

/// The preset for a `tokenizer.ggml.pre` name, or `None` where this tokenizer does not know it.
pub(crate) fn preset(pre: &str) -> Option<BpePreset> {
    let p = |pre, ignore_merges, add_bos, clean_spaces| Some(BpePreset { pre, ignore_merges, add_bos, clean_spaces });
    use PreTokenizer::*;
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0" | "lfm2"
        | "jina-v5-nano" => p(Llama3, true, true, true),
        "dbrx" | "smaug-bpe" => p(Llama3, false, false, true),
        "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es" | "jina-v2-de" | "a.x-4.0" | "mellum"
        | "modern-bert" | "mpt" | "olmo" | "jais" => p(Gpt2, false, false, true),
        "trillion" | "granite-docling" => p(Gpt2, false, false, false),
        "stablelm2" => p(Qwen2, false, false, true),
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "hunyuan" | "solar-open" => p(Qwen2, false, false, false),
        _ => None,
    }
}

/// Class bits of a position: `EXISTS` for every position inside the text (llama.cpp's nonzero
/// flags), plus `LETTER`, `NUMBER`, `WHITESPACE`.
const EXISTS: u8 = 0x80;

fn classes(c: char) -> u8 {
    let cp = c as u32;
    if cp < 0x80 {
        let b = cp as u8;
        return if b.is_ascii_alphabetic() {
            LETTER
        } else if b.is_ascii_digit() {
            NUMBER
        } else if matches!(b, 0x09..=0x0D | 0x20) {
            WHITESPACE
        } else {
            0
        };
    }
    let i = RUNS.partition_point(|&(start, _)| start <= cp);
    RUNS[i.saturating_sub(1)].1
}

/// A fragment's code points with their classes, indexed by position; past the end, nothing.
struct Chars {
    cps: Vec<char>,
    class: Vec<u8>,
}

impl Chars {
    #[inline]
    fn cp(&self, i: usize) -> Option<char> {
        self.cps.get(i).copied()
    }
    #[inline]
    fn f(&self, i: usize) -> u8 {
        self.class.get(i).copied().unwrap_or(0)
    }
    #[inline]
    fn is(&self, i: usize, bit: u8) -> bool {
        self.f(i) & bit != 0
    }
    /// Inside the text, and neither whitespace, letter nor digit.
    #[inline]
    fn is_other(&self, i: usize) -> bool {
        let f = self.f(i);
        f & EXISTS != 0 && f & (WHITESPACE | LETTER | NUMBER) == 0
    }
}

fn is_cr_lf(c: Option<char>) -> bool {
    matches!(c, Some('\r' | '\n'))
}

/// A contraction (`'s`, `'t`, `'m`, `'d`, `'re`, `'ve`, `'ll`) at `pos`: its length.
fn contraction(ch: &Chars, pos: usize, fold_case: bool) -> Option<usize> {
    if ch.cp(pos) != Some('\'') || pos + 1 >= ch.cps.len() {
        return None;
    }
    let low = |c: Option<char>| c.map(|c| if fold_case { c.to_ascii_lowercase() } else { c });
    let c1 = low(ch.cp(pos + 1));
    if matches!(c1, Some('s' | 't' | 'm' | 'd')) {
        return Some(2);
    }
    if pos + 2 < ch.cps.len() {
        let c2 = low(ch.cp(pos + 2));
        if matches!((c1, c2), (Some('r'), Some('e')) | (Some('v'), Some('e')) | (Some('l'), Some('l'))) {
            return Some(3);
        }
    }
    None
}

/// Word ends (code point positions) of `ch` under GPT-2's rule.
fn split_gpt2(ch: &Chars, ends: &mut Vec<usize>) {
    let n = ch.cps.len();
    let mut pos = 0;
    while pos < n {
        if let Some(len) = contraction(ch, pos, false) {
            pos += len;
            ends.push(pos);
            continue;
        }
        let space = ch.cp(pos) == Some(' ');
        let at = if space { pos + 1 } else { pos };
        // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`
        let run: Option<fn(&Chars, usize) -> bool> = if ch.is(at, LETTER) {
            Some(|c, i| c.is(i, LETTER))
        } else if ch.is(at, NUMBER) {
            Some(|c, i| c.is(i, NUMBER))
        } else if ch.is_other(at) {
            Some(|c, i| c.is_other(i))
        } else {
            None
        };
        if let Some(run) = run {
            pos = at;
            while run(ch, pos) {
                pos += 1;
            }
            ends.push(pos);
            continue;
        }
        let n_ws = (pos..).take_while(|&i| ch.is(i, WHITESPACE)).count();
        if n_ws > 1 && pos + n_ws < n {
            // `\s+(?!\S)`: all but the last whitespace, which goes with the next word.
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        ends.push(pos);
    }
}

/// Word ends of `ch` under Llama 3's rule (`digits` 3) or Qwen 2's (`digits` 1).
fn split_llama3(ch: &Chars, digits: usize, ends: &mut Vec<usize>) {
    let n = ch.cps.len();
    let mut pos = 0;
    while pos < n {
        if let Some(len) = contraction(ch, pos, true) {
            pos += len;
            ends.push(pos);
            continue;
        }
        let c = ch.cp(pos);
        // `[^\r\n\p{L}\p{N}]?\p{L}+`
        if !is_cr_lf(c) && !ch.is(pos, NUMBER) && (ch.is(pos, LETTER) || ch.is(pos + 1, LETTER)) {
            pos += 1;
            while ch.is(pos, LETTER) {
                pos += 1;
            }
            ends.push(pos);
            continue;
        }
        // `\p{N}{1,3}` (or `\p{N}`)
        if ch.is(pos, NUMBER) {
            let mut start = pos;
            while ch.is(pos, NUMBER) {
                pos += 1;
                if pos - start >= digits {
                    ends.push(pos);
                    start = pos;
                }
            }
            if pos > start {
                ends.push(pos);
            }
            continue;
        }
        // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
        let at = if c == Some(' ') { pos + 1 } else { pos };
        if ch.is_other(at) {
            pos = at;
            while ch.is_other(pos) {
                pos += 1;
            }
            while is_cr_lf(ch.cp(pos)) {
                pos += 1;
            }
            ends.push(pos);
            continue;
        }
        let mut n_ws = 0;
        let mut after_last_newline = None;
        while ch.is(pos + n_ws, WHITESPACE) {
            if is_cr_lf(ch.cp(pos + n_ws)) {
                after_last_newline = Some(pos + n_ws + 1);
            }
            n_ws += 1;
        }
        if let Some(end) = after_last_newline {
            // `\s*[\r\n]+`
            pos = end;
        } else if n_ws > 1 && pos + n_ws < n {
            // `\s+(?!\S)`
            pos += n_ws - 1;
        } else if n_ws > 0 {
            pos += n_ws;
        } else {
            pos += 1;
        }
        ends.push(pos);
    }
}

/// GPT-2's byte-to-unicode table: printable bytes stand for themselves, the others (controls,
/// space, DEL, 0x80-0xA0, 0xAD) for U+0100 onwards, in byte order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(cp).unwrap_or('\0');
    }
    table
}

/// The byte a character of the byte-to-unicode table stands for.
pub(crate) fn char_to_byte(table: &[char; 256], c: char) -> Option<u8> {
    let cp = c as u32;
    // The table's characters are U+0021..U+00FF and U+0100..U+0143.
    if cp > 0x143 {
        return None;
    }
    table.iter().position(|&t| t == c).map(|b| b as u8)
}

const NONE: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Symbol {
    start: u32,
    len: u32,
    prev: u32,
    next: u32,
}

/// A candidate merge; the heap's maximum is the lowest rank, then the leftmost.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Bigram {
    rank: u32,
    left: u32,
    right: u32,
    size: u32,
}

impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        other.rank.cmp(&self.rank).then(other.left.cmp(&self.left))
    }
}
impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// The byte-level BPE model: merges, pre-tokenizer and byte table.
pub(crate) struct Bpe {
    pub(crate) preset: BpePreset,
    merges: MergeTable,
    byte_to_char: [char; 256],
}

/// Reusable buffers for one `tokenize` call.
#[derive(Default)]
pub(crate) struct BpeSession {
    chars: Vec<char>,
    class: Vec<u8>,
    offsets: Vec<usize>,
    ends: Vec<usize>,
    word: String,
    key: String,
    symbols: Vec<Symbol>,
    queue: BinaryHeap<Bigram>,
}

impl Bpe {
    pub(crate) fn new(preset: BpePreset, merges: MergeTable) -> Bpe {
        Bpe { preset, merges, byte_to_char: byte_to_char_table() }
    }

    pub(crate) fn byte_table(&self) -> &[char; 256] {
        &self.byte_to_char
    }

    /// Tokenizes one plain-text fragment, appending to `out`.
    pub(crate) fn tokenize(&self, vocab: &Vocab, s: &mut BpeSession, fragment: &str, out: &mut Vec<TokenId>) {
        s.chars.clear();
        s.class.clear();
        s.offsets.clear();
        for (off, c) in fragment.char_indices() {
            s.chars.push(c);
            s.class.push(classes(c) | EXISTS);
            s.offsets.push(off);
        }
        s.offsets.push(fragment.len());
        let ch = Chars { cps: std::mem::take(&mut s.chars), class: std::mem::take(&mut s.class) };
        s.ends.clear();
        match self.preset.pre {
            PreTokenizer::Gpt2 => split_gpt2(&ch, &mut s.ends),
            PreTokenizer::Llama3 => split_llama3(&ch, 3, &mut s.ends),
            PreTokenizer::Qwen2 => split_llama3(&ch, 1, &mut s.ends),
        }
        s.chars = ch.cps;
        s.class = ch.class;

        let mut start = 0;
        for i in 0..s.ends.len() {
            let end = s.ends[i];
            let bytes = &fragment.as_bytes()[s.offsets[start]..s.offsets[end]];
            start = end;
            s.word.clear();
            for &b in bytes {
                s.word.push(self.byte_to_char[b as usize]);
            }
            let word = std::mem::take(&mut s.word);
            // Offsets inside a word are 32-bit: a longer word (gigabytes of letters) is merged
            // in pieces cut at character boundaries, where llama.cpp would overflow.
            let mut rest = word.as_str();
            while !rest.is_empty() {
                let mut cut = rest.len().min(MAX_MERGE_BYTES);
                while !rest.is_char_boundary(cut) {
                    cut -= 1;
                }
                let (piece, tail) = rest.split_at(cut);
                self.tokenize_word(vocab, s, piece, out);
                rest = tail;
            }
            s.word = word;
        }
    }

    fn tokenize_word(&self, vocab: &Vocab, s: &mut BpeSession, word: &str, out: &mut Vec<TokenId>) {
        if self.preset.ignore_merges {
            if let Some(id) = vocab.find(word) {
                out.push(id);
                return;
            }
        }
        s.symbols.clear();
        s.queue.clear();
        let mut prev = NONE;
        for (start, c) in word.char_indices() {
            let i = s.symbols.len() as u32;
            s.symbols.push(Symbol { start: start as u32, len: c.len_utf8() as u32, prev, next: i + 1 });
            prev = i;
        }
        if let Some(last) = s.symbols.last_mut() {
            last.next = NONE;
        }
        for right in 1..s.symbols.len() as u32 {
            self.try_add_bigram(s, word, right - 1, right);
        }
        while let Some(b) = s.queue.pop() {
            let (l, r) = (s.symbols[b.left as usize], s.symbols[b.right as usize]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            s.symbols[b.left as usize].len += r.len;
            s.symbols[b.left as usize].next = r.next;
            s.symbols[b.right as usize].len = 0;
            if r.next != NONE {
                s.symbols[r.next as usize].prev = b.left;
            }
            self.try_add_bigram(s, word, l.prev, b.left);
            self.try_add_bigram(s, word, b.left, r.next);
        }
        let mut i = if s.symbols.is_empty() { NONE } else { 0 };
        while i != NONE {
            let sym = s.symbols[i as usize];
            let piece = &word[sym.start as usize..(sym.start + sym.len) as usize];
            match vocab.find(piece) {
                Some(id) => out.push(id),
                // As llama.cpp: each byte of the piece's text on its own; only ASCII bytes can
                // be a token's whole text, the others are dropped.
                None => {
                    for b in piece.bytes().filter(u8::is_ascii) {
                        let mut buf = [0u8; 4];
                        if let Some(id) = vocab.find((b as char).encode_utf8(&mut buf)) {
                            out.push(id);
                        }
                    }
                }
            }
            i = sym.next;
        }
    }

    #[inline]
    fn try_add_bigram(&self, s: &mut BpeSession, word: &str, left: u32, right: u32) {
        if left == NONE || right == NONE {
            return;
        }
        let (l, r) = (s.symbols[left as usize], s.symbols[right as usize]);
        let lt = &word[l.start as usize..(l.start + l.len) as usize];
        let rt = &word[r.start as usize..(r.start + r.len) as usize];
        s.key.clear();
        s.key.push_str(lt);
        s.key.push(' ');
        s.key.push_str(rt);
        if let Some(rank) = self.merges.rank(&s.key, lt.len()) {
            s.queue.push(Bigram { rank, left, right, size: l.len + r.len });
        }
    }
}

/// llama.cpp's `clean_up_tokenization_spaces`, applied to decoded text in place: no space
/// before `? ! . ,`, none around a lone `'` between spaces, none before `'s 'm 're 've`.
pub(crate) fn clean_spaces(text: &mut Vec<u8>) {
    let t = text;
    // Each pass rewrites the buffer in place, reading each position before it can be written.
    let n = t.len();
    if n == 0 {
        return;
    }
    let mut total = 1;
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            total -= 1;
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);

    let n = t.len();
    let mut total = 1;
    let mut i = 1;
    while i < n {
        let x = t[i];
        if x == b'\'' && i + 1 < n && t[i - 1] == b' ' && t[i + 1] == b' ' {
            total -= 1;
            i += 1;
            t[i] = 0;
        }
        t[total] = x;
        total += 1;
        i += 1;
    }
    t.truncate(total);

    let n = t.len();
    let mut total = 1;
    for i in 1..n {
        let x = t[i];
        if t[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = t[i + 1];
            if matches!(x1, b's' | b'm') {
                total -= 1;
            } else if !matches!(x1, b't' | b'd') && i + 2 < n {
                let x2 = t[i + 2];
                if matches!(x1, b'r' | b'v') && x2 == b'e' {
                    total -= 1;
                }
            }
        }
        t[total] = x;
        total += 1;
    }
    t.truncate(total);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str, pre: PreTokenizer) -> Vec<String> {
        let cps: Vec<char> = text.chars().collect();
        let class = cps.iter().map(|&c| classes(c) | EXISTS).collect();
        let ch = Chars { cps: cps.clone(), class };
        let mut ends = Vec::new();
        match pre {
            PreTokenizer::Gpt2 => split_gpt2(&ch, &mut ends),
            PreTokenizer::Llama3 => split_llama3(&ch, 3, &mut ends),
            PreTokenizer::Qwen2 => split_llama3(&ch, 1, &mut ends),
        }
        let mut start = 0;
        ends.iter()
            .map(|&e| {
                let w: String = cps[start..e].iter().collect();
                start = e;
                w
            })
            .collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(words("Hello world's  1234 !!", PreTokenizer::Gpt2), ["Hello", " world", "'s", " ", " 1234", " !!"]);
        assert_eq!(words("a   \n", PreTokenizer::Gpt2), ["a", "   \n"]);
        assert_eq!(words("  x", PreTokenizer::Gpt2), [" ", " x"]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(words("Hello 12345 I'M\n\n x", PreTokenizer::Llama3), ["Hello", " ", "123", "45", " I", "'M", "\n\n", " x"]);
        assert_eq!(words("(word) ...\n", PreTokenizer::Llama3), ["(word", ")", " ...\n"]);
        assert_eq!(words("12345", PreTokenizer::Qwen2), ["1", "2", "3", "4", "5"]);
    }

    #[test]
    fn byte_table_is_gpt2s() {
        let t = byte_to_char_table();
        assert_eq!(t[b'A' as usize], 'A');
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[0xAD], '\u{143}');
        for b in 0..=255u8 {
            assert_eq!(char_to_byte(&t, t[b as usize]), Some(b));
        }
    }

    #[test]
    fn cleaning_spaces() {
        let clean = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            clean_spaces(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(clean("Hello , world !"), "Hello, world!");
        assert_eq!(clean("it ' s"), "it's");
        assert_eq!(clean("they 're here , I 'm sure"), "they're here, I'm sure");
        assert_eq!(clean("don 't"), "don 't");
    }
}
