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

use crate::quants::float16::f16_to_f32;

/// How a matrix's bytes are arranged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Layout {
    /// As ggml stores it: row after row, each a run of blocks (every type).
    Ggml,
    /// Q5_0 in groups of eight rows, interleaved per block (see the module documentation).
    Q5_0x8,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_round_trips_and_keeps_the_size() {
        let mut s = 0x1234_5678_9abc_def1u64;
        for (nb, rows) in [(1usize, 1usize), (3, 8), (5, 13), (20, 17)] {
            let src: Vec<u8> = (0..nb * rows * 22)
                .map(|_| {
                    s ^= s << 13;
                    s ^= s >> 7;
                    s ^= s << 17;
                    s as u8
                })
                .collect();
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
}
