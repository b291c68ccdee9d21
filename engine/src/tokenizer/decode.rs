//! Tokens back to text: one token's bytes, a whole sequence, and a streaming decoder that only
//! ever hands out whole UTF-8 characters.

use super::error::TokenizerError;
use super::bpe::{char_to_byte, clean_spaces};
use super::spm::SPACE_ESCAPE;
use super::vocab::{parse_byte_token, TokenAttr, TokenId};
use super::Tokenizer;

/// How tokens become text.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DecodeOptions {
    /// Render control and unknown tokens (`<bos>`, `<end_of_turn>`) as their text; otherwise
    /// they produce nothing.
    pub render_special: bool,
    /// Drop a leading BOS and a trailing EOS that the tokenizer itself would add.
    pub remove_special: bool,
}

impl Tokenizer {
    /// Appends the bytes of token `id` to `out`: a normal token's text with "▁" turned back into
    /// spaces, a byte token's byte, a user-defined token's text as is, and a control or unknown
    /// token's text only when `render_special`. Unused and undefined tokens produce nothing.
    pub fn append_piece(&self, id: TokenId, render_special: bool, out: &mut Vec<u8>) -> Result<(), TokenizerError> {
        let text = self.vocab.text(id).ok_or_else(|| TokenizerError::InvalidTokenId { id, n_vocab: self.n_vocab() })?;
        let attr = self.vocab.attrs[id as usize];
        let special = TokenAttr::CONTROL.with(TokenAttr::UNKNOWN);
        if attr.has(special) {
            if render_special {
                out.extend_from_slice(text.as_bytes());
            }
        } else if attr.has(TokenAttr::USER_DEFINED) {
            out.extend_from_slice(text.as_bytes());
        } else if attr.has(TokenAttr::NORMAL) {
            if let Some(bpe) = &self.bpe {
                // Byte-level BPE: each character stands for one byte.
                let table = bpe.byte_table();
                for c in text.chars() {
                    match char_to_byte(table, c) {
                        Some(b) => out.push(b),
                        None => {
                            // As llama.cpp renders a character outside the byte table.
                            let mut buf = [0u8; 4];
                            out.extend_from_slice(b"[UNK_BYTE_0x");
                            for b in c.encode_utf8(&mut buf).bytes() {
                                out.extend_from_slice(format!("{b:02x}").as_bytes());
                            }
                            out.extend_from_slice(text.as_bytes());
                            out.push(b']');
                        }
                    }
                }
                return Ok(());
            }
            for (i, part) in text.split(SPACE_ESCAPE).enumerate() {
                if i > 0 {
                    out.push(b' ');
                }
                out.extend_from_slice(part.as_bytes());
            }
        } else if attr.has(TokenAttr::BYTE) {
            // Byte tokens were checked to be <0xHH> when the vocabulary was built.
            if let Some(b) = parse_byte_token(text) {
                out.push(b);
            }
        }
        Ok(())
    }

    /// The bytes of token `id` (see [`Tokenizer::append_piece`]).
    pub fn token_to_piece(&self, id: TokenId, render_special: bool) -> Result<Vec<u8>, TokenizerError> {
        let mut out = Vec::new();
        self.append_piece(id, render_special, &mut out)?;
        Ok(out)
    }

    /// The bytes of a token sequence, as llama.cpp's `llama_detokenize`: when the vocabulary adds
    /// a space prefix, one leading space of the first token's piece is removed (unless a BOS was
    /// removed before it); BPE vocabularies that ask for it get their spaces cleaned up
    /// ("Hello , world" -> "Hello, world"). The streaming decoder does no such cleaning.
    pub fn detokenize(&self, ids: &[TokenId], opts: DecodeOptions) -> Result<Vec<u8>, TokenizerError> {
        let mut ids = ids;
        let mut strip_space = self.add_space_prefix;
        if opts.remove_special && self.add_bos {
            if let (Some(&first), Some(bos)) = (ids.first(), self.special.bos) {
                if first == bos {
                    strip_space = false;
                    ids = &ids[1..];
                }
            }
        }
        if opts.remove_special && self.add_eos {
            if let (Some(&last), Some(eos)) = (ids.last(), self.special.eos) {
                if last == eos {
                    ids = &ids[..ids.len() - 1];
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let start = out.len();
            self.append_piece(id, opts.render_special, &mut out)?;
            if strip_space && out.get(start) == Some(&b' ') {
                out.remove(start);
            }
            strip_space = false;
        }
        if self.clean_spaces {
            clean_spaces(&mut out);
        }
        Ok(out)
    }

    /// [`Tokenizer::detokenize`] as a string, with invalid UTF-8 replaced by U+FFFD.
    pub fn detokenize_lossy(&self, ids: &[TokenId], opts: DecodeOptions) -> Result<String, TokenizerError> {
        Ok(String::from_utf8_lossy(&self.detokenize(ids, opts)?).into_owned())
    }

    /// A decoder for generated tokens, one at a time.
    pub fn stream_decoder(&self, render_special: bool) -> StreamDecoder<'_> {
        StreamDecoder { tokenizer: self, render_special, pending: Vec::new(), strip_space: self.add_space_prefix }
    }
}

/// Turns tokens into text as they come, never splitting a UTF-8 character: bytes of an
/// incomplete character wait in a buffer for the next token; bytes that can never become a
/// character are replaced by U+FFFD. Call [`StreamDecoder::finish`] at the end.
pub struct StreamDecoder<'t> {
    tokenizer: &'t Tokenizer,
    render_special: bool,
    /// Bytes not yet handed out: at most the start of one incomplete character between calls.
    pending: Vec<u8>,
    /// Remove one leading space from the next piece (space-prefix vocabularies, first token).
    strip_space: bool,
}

impl StreamDecoder<'_> {
    /// Adds one token; returns the text that is now complete (possibly empty).
    pub fn push(&mut self, id: TokenId) -> Result<String, TokenizerError> {
        let start = self.pending.len();
        self.tokenizer.append_piece(id, self.render_special, &mut self.pending)?;
        if self.strip_space && self.pending.get(start) == Some(&b' ') {
            self.pending.remove(start);
        }
        self.strip_space = false;
        let mut out = String::new();
        self.drain(&mut out, false);
        Ok(out)
    }

    /// Ends the stream: returns what is left, an incomplete character as U+FFFD.
    pub fn finish(mut self) -> String {
        let mut out = String::new();
        self.drain(&mut out, true);
        out
    }

    /// Bytes held back, waiting for the rest of a character.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.pending
    }

    fn drain(&mut self, out: &mut String, at_end: bool) {
        let mut pos = 0;
        while pos < self.pending.len() {
            match std::str::from_utf8(&self.pending[pos..]) {
                Ok(s) => {
                    out.push_str(s);
                    pos = self.pending.len();
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[pos..pos + valid]).unwrap_or_default());
                    pos += valid;
                    match e.error_len() {
                        Some(bad) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            pos += bad;
                        }
                        None if at_end => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            pos = self.pending.len();
                        }
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..pos);
    }
}
