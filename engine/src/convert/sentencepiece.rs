//! `tokenizer.model`: a SentencePiece `ModelProto`, read with a small protobuf decoder of our
//! own (only the fields the GGUF vocabulary needs).
//!
//! ```text
//! ModelProto      { repeated SentencePiece pieces = 1; TrainerSpec trainer_spec = 2;
//!                   NormalizerSpec normalizer_spec = 3; ... }
//! SentencePiece   { string piece = 1; float score = 2; Type type = 3 [default = NORMAL]; }
//!                   Type: NORMAL 1, UNKNOWN 2, CONTROL 3, USER_DEFINED 4, BYTE 6, UNUSED 5
//! NormalizerSpec  { ...; bool add_dummy_prefix = 3 [default = true]; ... }
//! ```
//!
//! Every length is checked against the bytes left; unknown fields are skipped by wire type.

use std::fmt;

/// A piece's type, as SentencePiece numbers them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceType {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte,
}

impl PieceType {
    fn from_proto(v: u64) -> Option<PieceType> {
        Some(match v {
            1 => PieceType::Normal,
            2 => PieceType::Unknown,
            3 => PieceType::Control,
            4 => PieceType::UserDefined,
            5 => PieceType::Unused,
            6 => PieceType::Byte,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub piece: String,
    pub score: f32,
    pub kind: PieceType,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SpModel {
    pub pieces: Vec<Piece>,
    /// `normalizer_spec.add_dummy_prefix` (true when absent).
    pub add_dummy_prefix: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtoError {
    pub offset: usize,
    pub reason: String,
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed SentencePiece model at byte {}: {}", self.offset, self.reason)
    }
}

impl std::error::Error for ProtoError {}

/// Most pieces accepted (far above any real vocabulary).
const MAX_PIECES: usize = 1 << 24;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Offset of `buf` in the whole file, for messages.
    base: usize,
}

enum Field<'a> {
    Varint(u64),
    Fixed32([u8; 4]),
    Fixed64,
    Bytes(&'a [u8], usize),
}

impl<'a> Reader<'a> {
    fn err(&self, reason: impl Into<String>) -> ProtoError {
        ProtoError { offset: self.base + self.pos, reason: reason.into() }
    }

    fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut v = 0u64;
        for shift in (0..70).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else { return Err(self.err("truncated varint")) };
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err(self.err("varint overflows 64 bits"));
            }
            v |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if n > self.buf.len() - self.pos {
            return Err(self.err(format!("field of {n} bytes, only {} left", self.buf.len() - self.pos)));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// The next (field number, value), or `None` at the end.
    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ProtoError> {
        if self.pos == self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (number, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Field::Fixed64
            }
            2 => {
                let n = self.varint()?;
                let n = usize::try_from(n).map_err(|_| self.err("length does not fit in memory"))?;
                let at = self.base + self.pos;
                Field::Bytes(self.take(n)?, at)
            }
            5 => {
                let b = self.take(4)?;
                Field::Fixed32([b[0], b[1], b[2], b[3]])
            }
            w => return Err(self.err(format!("unsupported wire type {w} (field {number})"))),
        };
        Ok(Some((number, field)))
    }
}

fn parse_piece(buf: &[u8], base: usize) -> Result<Piece, ProtoError> {
    let mut r = Reader { buf, pos: 0, base };
    let mut p = Piece { piece: String::new(), score: 0.0, kind: PieceType::Normal };
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b, at)) => {
                p.piece = std::str::from_utf8(b)
                    .map_err(|_| ProtoError { offset: at, reason: "piece is not valid UTF-8".into() })?
                    .to_string();
            }
            (2, Field::Fixed32(b)) => p.score = f32::from_le_bytes(b),
            (3, Field::Varint(v)) => {
                p.kind = PieceType::from_proto(v).ok_or_else(|| r.err(format!("unknown piece type {v}")))?;
            }
            (1..=3, _) => return Err(r.err(format!("field {num} of a piece has the wrong wire type"))),
            _ => {}
        }
    }
    Ok(p)
}

/// Parses a `tokenizer.model` file's bytes.
pub fn parse(buf: &[u8]) -> Result<SpModel, ProtoError> {
    let mut r = Reader { buf, pos: 0, base: 0 };
    let mut pieces = Vec::new();
    let mut add_dummy_prefix = true;
    while let Some((num, f)) = r.next()? {
        match (num, f) {
            (1, Field::Bytes(b, at)) => {
                if pieces.len() >= MAX_PIECES {
                    return Err(r.err(format!("more than {MAX_PIECES} pieces")));
                }
                pieces.push(parse_piece(b, at)?);
            }
            (3, Field::Bytes(b, at)) => {
                let mut n = Reader { buf: b, pos: 0, base: at };
                while let Some((num, f)) = n.next()? {
                    if let (3, Field::Varint(v)) = (num, f) {
                        add_dummy_prefix = v != 0;
                    }
                }
            }
            (1 | 3, _) => return Err(r.err(format!("field {num} has the wrong wire type"))),
            _ => {}
        }
    }
    if pieces.is_empty() {
        return Err(ProtoError { offset: 0, reason: "no pieces".into() });
    }
    Ok(SpModel { pieces, add_dummy_prefix })
}

/// Encodes a model (pieces and `add_dummy_prefix`), for tests and for writing a checkpoint's
/// tokenizer from a GGUF vocabulary.
pub fn encode(m: &SpModel) -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn bytes(num: u64, b: &[u8], out: &mut Vec<u8>) {
        varint(num << 3 | 2, out);
        varint(b.len() as u64, out);
        out.extend_from_slice(b);
    }
    let mut out = Vec::new();
    for p in &m.pieces {
        let mut msg = Vec::new();
        bytes(1, p.piece.as_bytes(), &mut msg);
        varint(2 << 3 | 5, &mut msg);
        msg.extend_from_slice(&p.score.to_le_bytes());
        let kind = match p.kind {
            PieceType::Normal => 1,
            PieceType::Unknown => 2,
            PieceType::Control => 3,
            PieceType::UserDefined => 4,
            PieceType::Unused => 5,
            PieceType::Byte => 6,
        };
        varint(3 << 3, &mut msg);
        varint(kind, &mut msg);
        bytes(1, &msg, &mut out);
    }
    let mut norm = Vec::new();
    varint(3 << 3, &mut norm);
    varint(m.add_dummy_prefix as u64, &mut norm);
    bytes(3, &norm, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let m = SpModel {
            pieces: vec![
                Piece { piece: "<unk>".into(), score: 0.0, kind: PieceType::Unknown },
                Piece { piece: "<0x41>".into(), score: 0.0, kind: PieceType::Byte },
                Piece { piece: "▁the".into(), score: -1.5, kind: PieceType::Normal },
            ],
            add_dummy_prefix: false,
        };
        assert_eq!(parse(&encode(&m)).unwrap(), m);
    }

    #[test]
    fn malformed_input_is_an_error() {
        let m = SpModel { pieces: vec![Piece { piece: "a".into(), score: 1.0, kind: PieceType::Normal }], add_dummy_prefix: true };
        let bytes = encode(&m);
        for cut in 1..bytes.len() {
            // Any truncation either fails or parses a prefix; it never panics.
            let _ = parse(&bytes[..cut]);
        }
        assert!(parse(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]).is_err());
        assert!(parse(&[0x0f]).is_err());
        assert!(parse(&[]).is_err());
    }
}
