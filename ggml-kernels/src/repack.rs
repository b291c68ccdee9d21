//! Weight layouts rebuilt once at load time for faster decode, and the way back to ggml's.
//!
//! ggml stores a matrix row by row, each row a run of blocks. For Q5_0 that costs the decode
//! kernels most of their time in unpacking: a block's fifth bits sit in one `u32` per row and
//! have to be spread over 32 bytes, and the scales of neighbouring rows and blocks sit 22 bytes
//! apart. [`Layout::Q5_0x8`] keeps the same 22 bytes per 32 weights but arranges them for the
//! integer dot product:
//!
//! - rows go in groups of [`Q5_0X8_ROWS`] (eight; the last group is padded with zero rows), and
//!   a group is stored block by block: block `b` of all eight rows, then block `b + 1`, so a
//!   group is one sequential stream for the hardware prefetchers;
//! - in a group block ([`Q5_0X8_BLOCK`] bytes) the eight rows' scales come first, as one vector
//!   of eight `f16` (row order);
//! - then eight 32-bit masks of fifth bits, ready for a byte-masked add: for step `j` (0..4),
//!   first the mask of elements `4j..4j + 4` (`lo`), then of elements `16 + 4j..16 + 4j + 4`
//!   (`hi`); bit `4r + t` of a mask is the fifth bit of element `t` of that run in row `r`;
//! - then four 32-byte nibble vectors: byte `4r + t` of vector `j` is byte `4j + t` of row `r`'s
//!   ggml nibbles (element `4j + t` in the low nibble, `16 + 4j + t` in the high one).
//!
//! So one 32-bit lane of a nibble vector holds four consecutive elements of one row, and a
//! `vpdpbusd` of a vector with four activation bytes broadcast to every lane sums four products
//! per row into that row's own lane: the eight rows' block sums come out in the eight lanes with
//! no horizontal reduction, and the vector of scales applies to them as it stands.
//!
//! [`unpack_q5_0x8_block`] restores ggml's blocks (the GEMM tiles, the scalar kernel and
//! dequantization read those), bit for bit: packing is lossless.
//!
//! [`Layout::Q4_Kx8`] does the same for Q4_K, whose decode kernel in ggml's layout spends its
//! time on horizontal sums and per-row scale shuffles. It keeps the 144 bytes per row and
//! super-block, in groups of [`Q4_KX8_ROWS`] rows stored super-block by super-block; a group
//! super-block ([`Q4_KX8_BLOCK`] bytes) holds:
//!
//! - the eight rows' `d`, as one vector of eight `f16` ([`Q4_KX8_D`]), then their `dmin`
//!   ([`Q4_KX8_DMIN`]);
//! - the 12 bytes of packed 6-bit scales and mins as three vectors of eight `u32`
//!   ([`Q4_KX8_SCALES`]): word `r` of vector `i` is bytes `4i..4i + 4` of row `r`'s scales, so
//!   the eight rows' scales and mins are unpacked with a handful of 32-bit lane operations;
//! - 32 nibble vectors of 32 bytes ([`Q4_KX8_QS`]): byte `4r + t` of vector `8c + j` (`c` < 4,
//!   `j` < 8) is byte `32c + 4j + t` of row `r`'s ggml quants, i.e. element `64c + 4j + t`
//!   (group `2c`) in the low nibble and element `64c + 32 + 4j + t` (group `2c + 1`) in the
//!   high one.
//!
//! As in Q5_0x8, a 32-bit lane holds four consecutive elements of one row, so `vpdpbusd`
//! against four broadcast activation bytes sums each row's products in its own lane, and a
//! group's sums are scaled by that row's group scale lane by lane.
//!
//! [`Layout::Q6_Kx8`] arranges Q6_K (210 bytes per row and super-block) the same way, in the
//! order its kernel reads it (a group block read out of order defeats the hardware prefetchers:
//! a first version, `ql`, then `qh`, read at a quarter of the memory bandwidth). A group
//! super-block ([`Q6_KX8_BLOCK`] bytes) starts with the eight rows' `d` as eight `f16`
//! ([`Q6_KX8_D`]) and the scales as four vectors ([`Q6_KX8_SCALES`], piece `v` =
//! `scales[4v..4v + 4]`); then come 16 steps ([`Q6_KX8_QS`]) of three vectors: step
//! `8h + j` (`h` < 2, `j` < 8) holds `ql` pieces `16h + j` and `16h + 8 + j` and `qh` piece
//! `8h + j`, where piece `v` is byte `4r + t` = byte `4v + t` of row `r`'s array: the low four
//! bits of elements `128h + 4j + t` and `128h + 64 + 4j + t` (first vector, low and high
//! nibbles), of `128h + 32 + 4j + t` and `128h + 96 + 4j + t` (second), and the top two bits of
//! all four (third).
//!
//! [`Layout::Q4_0x8`] is Q5_0x8 without the fifth bits: per group block ([`Q4_0X8_BLOCK`]
//! bytes) the eight rows' scales as eight `f16` ([`Q4_0X8_SCALES`]), then four 32-byte nibble
//! vectors ([`Q4_0X8_NIBBLES`]) whose byte `4r + t` of vector `j` is byte `4j + t` of row `r`'s
//! ggml nibbles (element `4j + t` low, `16 + 4j + t` high).
//!
//! [`Layout::Q8_0x8`] likewise: eight `f16` scales ([`Q8_0X8_SCALES`]), then eight 32-byte
//! vectors of quants ([`Q8_0X8_QS`]), byte `4r + t` of vector `j` = quant `4j + t` of row `r`.
//!
//! The K-quant, Q4_0 and Q8_0 layouts move 2- and 4-byte pieces of each row's block into vectors of eight
//! (one table of fields per layout), so packing and unpacking are one loop each.

use rayon::prelude::*;

use crate::quants::float16::f16_to_f32;
use crate::types::GgmlType;

/// How a matrix's bytes are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Layout {
    /// As ggml stores it: row after row, each a run of blocks (every type).
    Ggml,
    /// Q5_0 in groups of eight rows, interleaved per block (see the module documentation).
    Q5_0x8,
    /// Q4_K in groups of eight rows, interleaved per super-block (see the module documentation).
    Q4_Kx8,
    /// Q6_K in groups of eight rows, interleaved per super-block (see the module documentation).
    Q6_Kx8,
    /// Q4_0 in groups of eight rows, interleaved per block (see the module documentation).
    Q4_0x8,
    /// Q8_0 in groups of eight rows, interleaved per block (see the module documentation).
    Q8_0x8,
}

impl Layout {
    /// The weight type a packed layout holds (`None` for [`Layout::Ggml`], which holds any).
    pub fn weight_type(self) -> Option<GgmlType> {
        match self {
            Layout::Ggml => None,
            Layout::Q5_0x8 => Some(GgmlType::Q5_0),
            Layout::Q4_Kx8 => Some(GgmlType::Q4_K),
            Layout::Q6_Kx8 => Some(GgmlType::Q6_K),
            Layout::Q4_0x8 => Some(GgmlType::Q4_0),
            Layout::Q8_0x8 => Some(GgmlType::Q8_0),
        }
    }

    /// Rows per group (1 for [`Layout::Ggml`]).
    pub fn group_rows(self) -> usize {
        match self {
            Layout::Ggml => 1,
            Layout::Q5_0x8 | Layout::Q4_Kx8 | Layout::Q6_Kx8 | Layout::Q4_0x8 | Layout::Q8_0x8 => 8,
        }
    }

    /// Bytes of a group's `nb` group blocks (one row's `nb` blocks for [`Layout::Ggml`] of type
    /// `ty`).
    pub fn group_bytes(self, ty: GgmlType, nb: usize) -> usize {
        nb * self.group_rows() * ty.type_size()
    }
}

/// Bytes of a `rows x cols` matrix of the type `layout` holds, in `layout` (rows rounded up to
/// whole groups), or `None` for [`Layout::Ggml`], when `cols` is not a multiple of the block size
/// or the size overflows.
pub fn packed_nbytes(layout: Layout, cols: usize, rows: usize) -> Option<usize> {
    let ty = layout.weight_type()?;
    // `cols` a whole number of blocks (`is_multiple_of` is newer than the workspace's MSRV).
    if cols / ty.block_size() * ty.block_size() != cols {
        return None;
    }
    rows.div_ceil(layout.group_rows()).checked_mul(layout.group_rows() * ty.type_size())?.checked_mul(cols / ty.block_size())
}

/// Packs a matrix of `rows` rows of `nb` blocks, ggml layout in `src`, into `out`
/// ([`packed_nbytes`] bytes) in `layout` (not [`Layout::Ggml`]). Precondition: the lengths
/// match (asserted).
pub fn pack_into(layout: Layout, src: &[u8], nb: usize, rows: usize, out: &mut [u8]) {
    match layout {
        Layout::Q5_0x8 => pack_q5_0x8(src, nb, rows, out),
        Layout::Q4_Kx8 => pack_q4_kx8(src, nb, rows, out),
        Layout::Q6_Kx8 => pack_q6_kx8(src, nb, rows, out),
        Layout::Q4_0x8 => pack_fields(&Q4_0X8_FIELDS, Q4_0_BLOCK, src, nb, rows, out),
        Layout::Q8_0x8 => pack_fields(&Q8_0X8_FIELDS, Q8_0_BLOCK, src, nb, rows, out),
        Layout::Ggml => panic!("pack_into: the ggml layout is not packed"),
    }
}

/// Writes the ggml block of row `r` (0..8) held in group block `gb` of `layout` (not
/// [`Layout::Ggml`]) to `out` (one block of the layout's type).
#[inline]
pub fn unpack_block(layout: Layout, gb: &[u8], r: usize, out: &mut [u8]) {
    match layout {
        Layout::Q5_0x8 => unpack_q5_0x8_block(gb, r, out),
        Layout::Q4_Kx8 => unpack_q4_kx8_block(gb, r, out),
        Layout::Q6_Kx8 => unpack_q6_kx8_block(gb, r, out),
        Layout::Q4_0x8 => unpack_fields(&Q4_0X8_FIELDS, gb, r, out),
        Layout::Q8_0x8 => unpack_fields(&Q8_0X8_FIELDS, gb, r, out),
        Layout::Ggml => debug_assert!(false, "unpack_block: the ggml layout is not packed"),
    }
}

/// Restores the first `n` rows (`n <= 8`) of one group of `layout` (`group`: its `nb` group
/// blocks) to ggml's layout in `out` (`n` rows of `nb` blocks).
pub fn unpack_rows(layout: Layout, group: &[u8], nb: usize, n: usize, out: &mut [u8]) {
    let Some(ty) = layout.weight_type() else { return };
    let (bs, gbs) = (ty.type_size(), layout.group_rows() * ty.type_size());
    let rb = nb * bs;
    debug_assert!(n <= layout.group_rows() && group.len() >= nb * gbs && out.len() >= n * rb);
    for (b, gb) in group.chunks_exact(gbs).take(nb).enumerate() {
        for r in 0..n {
            unpack_block(layout, gb, r, &mut out[r * rb + b * bs..][..bs]);
        }
    }
}

/// Rows per group of [`Layout::Q5_0x8`].
pub const Q5_0X8_ROWS: usize = 8;

/// Bytes of one group block of [`Layout::Q5_0x8`]: eight rows of one 22-byte Q5_0 block.
pub const Q5_0X8_BLOCK: usize = Q5_0X8_ROWS * Q5_0_BLOCK;

/// Offsets inside a group block: the scales, the masks, the nibble vectors.
pub const Q5_0X8_SCALES: usize = 0;
pub const Q5_0X8_MASKS: usize = 2 * Q5_0X8_ROWS;
pub const Q5_0X8_NIBBLES: usize = Q5_0X8_MASKS + 4 * 8;

const Q5_0_BLOCK: usize = 22;
const _: () = assert!(Q5_0X8_NIBBLES + 4 * 32 == Q5_0X8_BLOCK);

/// Bytes of a `rows x cols` Q5_0 matrix in [`Layout::Q5_0x8`] (rows rounded up to whole
/// groups), or `None` when `cols` is not a multiple of 32 or the size overflows.
pub fn q5_0x8_nbytes(cols: usize, rows: usize) -> Option<usize> {
    if cols % 32 != 0 {
        return None;
    }
    rows.div_ceil(Q5_0X8_ROWS).checked_mul(Q5_0X8_BLOCK)?.checked_mul(cols / 32)
}

/// Packs a Q5_0 matrix of `rows` rows of `nb` blocks, ggml layout in `src`, into `out`
/// ([`q5_0x8_nbytes`] bytes). Precondition: the lengths match (asserted).
pub fn pack_q5_0x8(src: &[u8], nb: usize, rows: usize, out: &mut [u8]) {
    let rb = nb * Q5_0_BLOCK;
    assert_eq!(src.len(), rows * rb, "Q5_0 source size");
    assert_eq!(out.len(), rows.div_ceil(Q5_0X8_ROWS) * nb * Q5_0X8_BLOCK, "Q5_0x8 size");
    let zero = [0u8; Q5_0_BLOCK];
    for (g, group) in out.chunks_exact_mut(nb * Q5_0X8_BLOCK).enumerate() {
        for (b, gb) in group.chunks_exact_mut(Q5_0X8_BLOCK).enumerate() {
            let mut masks = [0u32; 8];
            for r in 0..Q5_0X8_ROWS {
                let row = g * Q5_0X8_ROWS + r;
                let blk = if row < rows { &src[row * rb + b * Q5_0_BLOCK..][..Q5_0_BLOCK] } else { &zero[..] };
                gb[Q5_0X8_SCALES + 2 * r..][..2].copy_from_slice(&blk[0..2]);
                let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
                for j in 0..4 {
                    masks[2 * j] |= ((qh >> (4 * j)) & 0xF) << (4 * r);
                    masks[2 * j + 1] |= ((qh >> (16 + 4 * j)) & 0xF) << (4 * r);
                    gb[Q5_0X8_NIBBLES + 32 * j + 4 * r..][..4].copy_from_slice(&blk[6 + 4 * j..][..4]);
                }
            }
            for (i, m) in masks.iter().enumerate() {
                gb[Q5_0X8_MASKS + 4 * i..][..4].copy_from_slice(&m.to_le_bytes());
            }
        }
    }
}

/// Writes the ggml Q5_0 block of row `r` (0..8) held in group block `gb` to `out` (22 bytes).
#[inline]
pub fn unpack_q5_0x8_block(gb: &[u8], r: usize, out: &mut [u8]) {
    debug_assert!(gb.len() >= Q5_0X8_BLOCK && r < Q5_0X8_ROWS && out.len() >= Q5_0_BLOCK);
    out[0..2].copy_from_slice(&gb[Q5_0X8_SCALES + 2 * r..][..2]);
    let mut qh = 0u32;
    for j in 0..4 {
        let m = |i: usize| u32::from_le_bytes([gb[Q5_0X8_MASKS + 4 * i], gb[Q5_0X8_MASKS + 4 * i + 1], gb[Q5_0X8_MASKS + 4 * i + 2], gb[Q5_0X8_MASKS + 4 * i + 3]]);
        qh |= ((m(2 * j) >> (4 * r)) & 0xF) << (4 * j);
        qh |= ((m(2 * j + 1) >> (4 * r)) & 0xF) << (16 + 4 * j);
        out[6 + 4 * j..][..4].copy_from_slice(&gb[Q5_0X8_NIBBLES + 32 * j + 4 * r..][..4]);
    }
    out[2..6].copy_from_slice(&qh.to_le_bytes());
}

/// Restores the first `n` rows (`n <= 8`) of one group (`group`: its `nb` group blocks) to
/// ggml's layout in `out` (`n` rows of `nb` blocks).
pub fn unpack_q5_0x8_rows(group: &[u8], nb: usize, n: usize, out: &mut [u8]) {
    let rb = nb * Q5_0_BLOCK;
    debug_assert!(n <= Q5_0X8_ROWS && group.len() >= nb * Q5_0X8_BLOCK && out.len() >= n * rb);
    for (b, gb) in group.chunks_exact(Q5_0X8_BLOCK).take(nb).enumerate() {
        for r in 0..n {
            unpack_q5_0x8_block(gb, r, &mut out[r * rb + b * Q5_0_BLOCK..][..Q5_0_BLOCK]);
        }
    }
}

/// The `f32` scale of row `r` in group block `gb` (for tests and references).
pub fn q5_0x8_scale(gb: &[u8], r: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([gb[Q5_0X8_SCALES + 2 * r], gb[Q5_0X8_SCALES + 2 * r + 1]]))
}

/// Rows per group of [`Layout::Q4_Kx8`].
pub const Q4_KX8_ROWS: usize = 8;

/// Bytes of one group super-block of [`Layout::Q4_Kx8`]: eight rows of one 144-byte Q4_K block.
pub const Q4_KX8_BLOCK: usize = Q4_KX8_ROWS * Q4_K_BLOCK;

/// Offsets inside a group super-block: the `d` vector, the `dmin` vector, the three vectors of
/// scale words, the 32 nibble vectors.
pub const Q4_KX8_D: usize = 0;
pub const Q4_KX8_DMIN: usize = 2 * Q4_KX8_ROWS;
pub const Q4_KX8_SCALES: usize = 4 * Q4_KX8_ROWS;
pub const Q4_KX8_QS: usize = Q4_KX8_SCALES + 3 * 32;

const Q4_K_BLOCK: usize = 144;
const _: () = assert!(Q4_KX8_QS + 32 * 32 == Q4_KX8_BLOCK);

/// One run of a block's bytes in an interleaved group block: the `len` bytes at `src` of each
/// row's ggml block, cut into pieces of `piece` bytes (2 or 4), go to `dst`, piece `v` of row `r`
/// at `dst + 8 * piece * v + piece * r`, so that piece `v` of the eight rows is one vector
/// (with `order`, vector `v` goes to `dst + order(v)` instead).
struct Field {
    src: usize,
    len: usize,
    dst: usize,
    piece: usize,
    order: Option<fn(usize) -> usize>,
}

impl Field {
    const fn new(src: usize, len: usize, dst: usize, piece: usize) -> Field {
        Field { src, len, dst, piece, order: None }
    }

    /// Offset in the group block of byte 0 of piece `v` of row `r`.
    #[inline]
    fn at(&self, v: usize, r: usize) -> usize {
        self.dst + self.order.map_or(8 * self.piece * v, |o| o(v)) + self.piece * r
    }
}

/// The fields of a [`Layout::Q4_Kx8`] group super-block: `d`, `dmin`, scales, quants.
const Q4_KX8_FIELDS: [Field; 4] = [
    Field::new(0, 2, Q4_KX8_D, 2),
    Field::new(2, 2, Q4_KX8_DMIN, 2),
    Field::new(4, 12, Q4_KX8_SCALES, 4),
    Field::new(16, 128, Q4_KX8_QS, 4),
];

/// Packs a matrix of `rows` rows of `nb` blocks of `bs` bytes, ggml layout in `src`, into `out`
/// as eight-row groups whose group blocks interleave `fields`. Precondition: the lengths match
/// (asserted).
fn pack_fields(fields: &[Field], bs: usize, src: &[u8], nb: usize, rows: usize, out: &mut [u8]) {
    let rb = nb * bs;
    assert_eq!(src.len(), rows * rb, "packed source size");
    assert_eq!(out.len(), rows.div_ceil(8) * nb * 8 * bs, "packed size");
    if nb == 0 {
        return;
    }
    // Groups are independent: in parallel (the output projection of a model is 100+ MB).
    out.par_chunks_exact_mut(nb * 8 * bs).enumerate().with_min_len(16).for_each(|(g, group)| {
        for (b, gb) in group.chunks_exact_mut(8 * bs).enumerate() {
            for r in 0..8 {
                let row = g * 8 + r;
                if row >= rows {
                    // Padding rows are zero (`out` may hold anything).
                    for f in fields {
                        for v in 0..f.len / f.piece {
                            gb[f.at(v, r)..][..f.piece].fill(0);
                        }
                    }
                    continue;
                }
                let blk = &src[row * rb + b * bs..][..bs];
                for f in fields {
                    for v in 0..f.len / f.piece {
                        gb[f.at(v, r)..][..f.piece].copy_from_slice(&blk[f.src + f.piece * v..][..f.piece]);
                    }
                }
            }
        }
    });
}

/// Writes the ggml block of row `r` (0..8) held in group block `gb` of `fields` to `out`.
#[inline]
fn unpack_fields(fields: &[Field], gb: &[u8], r: usize, out: &mut [u8]) {
    debug_assert!(r < 8);
    for f in fields {
        for v in 0..f.len / f.piece {
            out[f.src + f.piece * v..][..f.piece].copy_from_slice(&gb[f.at(v, r)..][..f.piece]);
        }
    }
}

/// Packs a Q4_K matrix of `rows` rows of `nb` super-blocks, ggml layout in `src`, into `out`
/// (`packed_nbytes(Layout::Q4_Kx8, ..)` bytes). Precondition: the lengths match (asserted).
pub fn pack_q4_kx8(src: &[u8], nb: usize, rows: usize, out: &mut [u8]) {
    pack_fields(&Q4_KX8_FIELDS, Q4_K_BLOCK, src, nb, rows, out);
}

/// Writes the ggml Q4_K block of row `r` (0..8) held in group super-block `gb` to `out` (144
/// bytes).
#[inline]
pub fn unpack_q4_kx8_block(gb: &[u8], r: usize, out: &mut [u8]) {
    debug_assert!(gb.len() >= Q4_KX8_BLOCK && out.len() >= Q4_K_BLOCK);
    unpack_fields(&Q4_KX8_FIELDS, gb, r, out);
}

/// Bytes of one group block of [`Layout::Q4_0x8`]: eight rows of one 18-byte Q4_0 block.
pub const Q4_0X8_BLOCK: usize = 8 * Q4_0_BLOCK;

/// Offsets inside a group block: the scales, the nibble vectors.
pub const Q4_0X8_SCALES: usize = 0;
pub const Q4_0X8_NIBBLES: usize = 16;

const Q4_0_BLOCK: usize = 18;
const _: () = assert!(Q4_0X8_NIBBLES + 4 * 32 == Q4_0X8_BLOCK);

/// The fields of a [`Layout::Q4_0x8`] group block: `d`, nibbles.
const Q4_0X8_FIELDS: [Field; 2] = [Field::new(0, 2, Q4_0X8_SCALES, 2), Field::new(2, 16, Q4_0X8_NIBBLES, 4)];

/// Bytes of one group block of [`Layout::Q8_0x8`]: eight rows of one 34-byte Q8_0 block.
pub const Q8_0X8_BLOCK: usize = 8 * Q8_0_BLOCK;

/// Offsets inside a group block: the scales, the quant vectors.
pub const Q8_0X8_SCALES: usize = 0;
pub const Q8_0X8_QS: usize = 16;

const Q8_0_BLOCK: usize = 34;
const _: () = assert!(Q8_0X8_QS + 8 * 32 == Q8_0X8_BLOCK);

/// The fields of a [`Layout::Q8_0x8`] group block: `d`, quants.
const Q8_0X8_FIELDS: [Field; 2] = [Field::new(0, 2, Q8_0X8_SCALES, 2), Field::new(2, 32, Q8_0X8_QS, 4)];

/// Rows per group of [`Layout::Q6_Kx8`].
pub const Q6_KX8_ROWS: usize = 8;

/// Bytes of one group super-block of [`Layout::Q6_Kx8`]: eight rows of one 210-byte Q6_K block.
pub const Q6_KX8_BLOCK: usize = Q6_KX8_ROWS * Q6_K_BLOCK;

/// Offsets inside a group super-block: the `d` vector, the 4 vectors of group scales, the 16
/// steps of quant bits (three vectors each).
pub const Q6_KX8_D: usize = 0;
pub const Q6_KX8_SCALES: usize = 2 * 8;
pub const Q6_KX8_QS: usize = Q6_KX8_SCALES + 4 * 32;

const Q6_K_BLOCK: usize = 210;
const _: () = assert!(Q6_KX8_QS + 16 * 3 * 32 == Q6_KX8_BLOCK);

/// Where `ql` vector `v = 16h + 8p + j` goes: vector `p` of step `8h + j`.
fn q6_kx8_ql_at(v: usize) -> usize {
    let (h, p, j) = (v / 16, v / 8 % 2, v % 8);
    3 * 32 * (8 * h + j) + 32 * p
}

/// Where `qh` vector `u = 8h + j` goes: vector 2 of step `u`.
fn q6_kx8_qh_at(u: usize) -> usize {
    3 * 32 * u + 64
}

/// The fields of a [`Layout::Q6_Kx8`] group super-block: `ql` and `qh` in steps, scales, `d`
/// (in the block: `d`, scales, steps).
const Q6_KX8_FIELDS: [Field; 4] = [
    Field { src: 0, len: 128, dst: Q6_KX8_QS, piece: 4, order: Some(q6_kx8_ql_at) },
    Field { src: 128, len: 64, dst: Q6_KX8_QS, piece: 4, order: Some(q6_kx8_qh_at) },
    Field::new(192, 16, Q6_KX8_SCALES, 4),
    Field::new(208, 2, Q6_KX8_D, 2),
];

/// Packs a Q6_K matrix of `rows` rows of `nb` super-blocks, ggml layout in `src`, into `out`
/// (`packed_nbytes(Layout::Q6_Kx8, ..)` bytes). Precondition: the lengths match (asserted).
pub fn pack_q6_kx8(src: &[u8], nb: usize, rows: usize, out: &mut [u8]) {
    pack_fields(&Q6_KX8_FIELDS, Q6_K_BLOCK, src, nb, rows, out);
}

/// Writes the ggml Q6_K block of row `r` (0..8) held in group super-block `gb` to `out` (210
/// bytes).
#[inline]
pub fn unpack_q6_kx8_block(gb: &[u8], r: usize, out: &mut [u8]) {
    debug_assert!(gb.len() >= Q6_KX8_BLOCK && out.len() >= Q6_K_BLOCK);
    unpack_fields(&Q6_KX8_FIELDS, gb, r, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` bytes of the xorshift64 sequence continuing from state `s`.
    fn xorshift_bytes(s: &mut u64, n: usize) -> Vec<u8> {
        (0..n)
            .map(|_| {
                *s ^= *s << 13;
                *s ^= *s >> 7;
                *s ^= *s << 17;
                *s as u8
            })
            .collect()
    }

    /// `src` (`rows` rows of `nb` ggml blocks) packed in `layout`, and restored from the packing
    /// group by group; the packing and its group size.
    fn pack_and_restore(layout: Layout, src: &[u8], nb: usize, rows: usize) -> (Vec<u8>, Vec<u8>, usize) {
        let ty = layout.weight_type().unwrap();
        let len = packed_nbytes(layout, nb * ty.block_size(), rows).unwrap();
        assert_eq!(len, rows.div_ceil(8) * 8 * nb * ty.type_size());
        let mut packed = vec![0xAAu8; len];
        pack_into(layout, src, nb, rows, &mut packed);
        let gbytes = layout.group_bytes(ty, nb);
        let mut back = vec![0u8; rows * nb * ty.type_size()];
        for g in 0..rows.div_ceil(8) {
            unpack_rows(layout, &packed[g * gbytes..][..gbytes], nb, (rows - 8 * g).min(8), &mut back[g * 8 * nb * ty.type_size()..]);
        }
        (packed, back, gbytes)
    }

    #[test]
    fn packing_round_trips_and_keeps_the_size() {
        let mut s = 0x1234_5678_9abc_def1u64;
        for (nb, rows) in [(1usize, 1usize), (3, 8), (5, 13), (20, 17)] {
            let src = xorshift_bytes(&mut s, nb * rows * 22);
            let len = q5_0x8_nbytes(nb * 32, rows).unwrap();
            assert_eq!(len, rows.div_ceil(8) * 8 * nb * 22);
            let mut packed = vec![0u8; len];
            pack_q5_0x8(&src, nb, rows, &mut packed);
            let mut back = vec![0u8; rows * nb * 22];
            for g in 0..rows.div_ceil(8) {
                let n = (rows - 8 * g).min(8);
                unpack_q5_0x8_rows(&packed[g * nb * Q5_0X8_BLOCK..][..nb * Q5_0X8_BLOCK], nb, n, &mut back[g * 8 * nb * 22..]);
            }
            assert_eq!(back, src, "nb {nb} rows {rows}");
            // The fifth bit of element 21 of the last row, read where the layout says it is.
            let (r, e) = (rows - 1, 21);
            let (g, rr) = (r / 8, r % 8);
            let qh = u32::from_le_bytes(src[r * nb * 22 + 2..][..4].try_into().unwrap());
            let (j, t) = ((e - 16) / 4, (e - 16) % 4);
            let m = u32::from_le_bytes(packed[g * nb * Q5_0X8_BLOCK + Q5_0X8_MASKS + 4 * (2 * j + 1)..][..4].try_into().unwrap());
            assert_eq!((m >> (4 * rr + t)) & 1, (qh >> e) & 1);
        }
    }

    #[test]
    fn q8_0_packing_round_trips() {
        let mut s = 0x9753_1357_fdb9_eca8u64;
        for (nb, rows) in [(1usize, 1usize), (2, 8), (5, 13)] {
            let src = xorshift_bytes(&mut s, nb * rows * 34);
            let (packed, back, gbytes) = pack_and_restore(Layout::Q8_0x8, &src, nb, rows);
            assert_eq!(back, src, "nb {nb} rows {rows}");
            let (r, j, t) = (rows - 1, 6, 3);
            assert_eq!(packed[(r / 8) * gbytes + Q8_0X8_QS + 32 * j + 4 * (r % 8) + t], src[r * nb * 34 + 2 + 4 * j + t]);
        }
    }

    #[test]
    fn q4_0_packing_round_trips() {
        let mut s = 0x2468_1357_fdb9_eca8u64;
        for (nb, rows) in [(1usize, 1usize), (2, 8), (5, 13)] {
            let src = xorshift_bytes(&mut s, nb * rows * 18);
            let (packed, back, gbytes) = pack_and_restore(Layout::Q4_0x8, &src, nb, rows);
            assert_eq!(back, src, "nb {nb} rows {rows}");
            let (r, j, t) = (rows - 1, 2, 1);
            assert_eq!(packed[(r / 8) * gbytes + Q4_0X8_NIBBLES + 32 * j + 4 * (r % 8) + t], src[r * nb * 18 + 2 + 4 * j + t]);
        }
    }

    #[test]
    fn q6_k_packing_round_trips_and_keeps_the_size() {
        let mut s = 0x1357_9bdf_2468_ace0u64;
        for (nb, rows) in [(1usize, 1usize), (2, 8), (3, 13), (4, 17)] {
            let src = xorshift_bytes(&mut s, nb * rows * 210);
            let (packed, back, gbytes) = pack_and_restore(Layout::Q6_Kx8, &src, nb, rows);
            assert_eq!(back, src, "nb {nb} rows {rows}");
            // Padding rows are zero.
            let mut pad = [0xFFu8; 210];
            unpack_block(Layout::Q6_Kx8, &packed[(rows.div_ceil(8) - 1) * gbytes..], 7, &mut pad);
            assert!(rows % 8 == 0 || pad.iter().all(|&b| b == 0));
            // The top bits of elements 128h + 4j + t.. of the last row, where the layout says.
            let (r, h, j, t) = (rows - 1, 1, 6, 3);
            let want = src[r * nb * 210 + 128 + 32 * h + 4 * j + t];
            let gb = &packed[(r / 8) * gbytes..];
            assert_eq!(gb[Q6_KX8_QS + 96 * (8 * h + j) + 64 + 4 * (r % 8) + t], want);
        }
    }

    #[test]
    fn q4_k_packing_round_trips_and_keeps_the_size() {
        let mut s = 0x0fed_cba9_8765_4321u64;
        for (nb, rows) in [(1usize, 1usize), (2, 8), (3, 13), (4, 17)] {
            let src = xorshift_bytes(&mut s, nb * rows * 144);
            let (packed, back, gbytes) = pack_and_restore(Layout::Q4_Kx8, &src, nb, rows);
            assert_eq!(back, src, "nb {nb} rows {rows}");
            // The quant byte of elements 64c + 4j + t and 64c + 32 + 4j + t of the last row,
            // read where the layout says it is.
            let (r, c, j, t) = (rows - 1, 3, 5, 2);
            let (g, rr) = (r / 8, r % 8);
            let want = src[r * nb * 144 + (nb - 1) * 144 + 16 + 32 * c + 4 * j + t];
            let gb = &packed[g * gbytes + (nb - 1) * Q4_KX8_BLOCK..];
            assert_eq!(gb[Q4_KX8_QS + 32 * (8 * c + j) + 4 * rr + t], want);
        }
        assert_eq!(packed_nbytes(Layout::Q4_Kx8, 100, 3), None);
        assert_eq!(packed_nbytes(Layout::Ggml, 256, 3), None);
    }
}
