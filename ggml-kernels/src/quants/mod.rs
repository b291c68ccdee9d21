//! GGML block formats: one module per format, each with its `#[repr(C)]` block struct, a reference
//! dequantizer and (where ggml has one) a reference quantizer.
//!
//! The structs mirror `ggml-common.h` field for field, so a slice of file bytes can be viewed as a
//! slice of blocks without copying ([`blocks`]). Multi-byte fields are little-endian, as in GGUF;
//! the crate refuses to build on big-endian targets rather than misread them.
//!
//! Every format is described by the [`Block`] trait (type id, elements per block, dequantizer)
//! and, when it can be produced from `f32`, by [`Quantize`]. [`dequantize`] and [`quantize`] are
//! the checked entry points that dispatch on a [`GgmlType`]: they validate every length and return
//! a [`QuantError`] instead of panicking. The per-format `dequantize_row` / `quantize_row`
//! functions are the unchecked kernels: they state their length preconditions with
//! `debug_assert!` and, in release builds, process only the whole blocks both sides have.
//!
//! The reference algorithms are those of ggml's `ggml-quants.c` (`dequantize_row_*`,
//! `quantize_row_*_ref`), written again in Rust with the same floating-point operations in the
//! same order, so that results match ggml bit for bit.

use std::fmt;

use crate::types::{GgmlType, ALL_TYPES};

pub mod finite;
pub mod float16;
pub(crate) mod search;

pub mod iq4_nl;
pub mod iq4_xs;
pub mod q2_k;
pub mod q3_k;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;
pub mod q8_1;
pub mod q8_k;

pub use iq4_nl::BlockIQ4NL;
pub use iq4_xs::BlockIQ4XS;
pub use q2_k::BlockQ2K;
pub use q3_k::BlockQ3K;
pub use q4_0::BlockQ4_0;
pub use q4_1::BlockQ4_1;
pub use q4_k::BlockQ4K;
pub use q5_0::BlockQ5_0;
pub use q5_1::BlockQ5_1;
pub use q5_k::BlockQ5K;
pub use q6_k::BlockQ6K;
pub use q8_0::BlockQ8_0;
pub use q8_1::BlockQ8_1;
pub use q8_k::BlockQ8K;

#[cfg(target_endian = "big")]
compile_error!("GGML block formats are little-endian; big-endian targets are not supported");

/// Elements per block of the K-quants, IQ4_XS and Q8_K.
pub use crate::types::QK_K;

mod sealed {
    /// Plain old data.
    ///
    /// # Safety
    ///
    /// Implement only for `#[repr(C)]` structs whose fields are integers, `f32`, `half::f16` and
    /// arrays of those, laid out with no padding bytes (the size assertions in each format module
    /// check this). Then every byte of a value is initialised and every bit pattern is a valid
    /// value, which is what [`super::blocks`] and [`super::as_bytes`] rely on.
    pub unsafe trait Pod: Copy + Send + Sync + 'static {}
}

/// A GGML block format: one row of the type table, with its reference dequantizer.
///
/// Implemented only in this module (the supertrait is sealed), so every implementor is known to
/// be plain old data.
pub trait Block: sealed::Pod {
    /// The GGML type id this block encodes.
    const TYPE: GgmlType;
    /// Elements per block.
    const BLOCK_SIZE: usize;
    /// A block of all-zero bytes.
    const ZERO: Self;

    /// Dequantize `blocks` into `out`.
    ///
    /// Precondition (debug-asserted): `out.len() == blocks.len() * BLOCK_SIZE`. In release builds
    /// only the blocks that fit whole in `out` are written.
    fn dequantize_row(blocks: &[Self], out: &mut [f32]);
}

/// A block format with a reference quantizer from `f32`.
pub trait Quantize: Block {
    /// Quantize `x` into `out`, block by block, as ggml's reference quantizer does.
    ///
    /// Precondition (debug-asserted): `x.len() == out.len() * BLOCK_SIZE`. In release builds only
    /// the blocks both sides have whole are written.
    fn quantize_row(x: &[f32], out: &mut [Self]);
}

/// Implements the sealed marker and [`Block`] for a format, from its module's functions:
/// `impl_block!(struct, GgmlType variant, elements per block, zero value)`.
macro_rules! impl_block {
    ($block:ty, $ty:ident, $qk:expr, $zero:expr) => {
        // The module's elements-per-block constant, which its kernels chunk by, is the table's.
        const _: () = assert!($qk == $crate::quants::block_size_of($crate::types::GgmlType::$ty));

        // SAFETY: the struct is `#[repr(C)]`, made only of integers, `f32`, `half::f16` and arrays
        // of them, and its size assertion (in the same module) proves there is no padding.
        unsafe impl $crate::quants::sealed::Pod for $block {}

        impl $crate::quants::Block for $block {
            const TYPE: $crate::types::GgmlType = $crate::types::GgmlType::$ty;
            const BLOCK_SIZE: usize = $qk;
            const ZERO: Self = $zero;

            fn dequantize_row(blocks: &[Self], out: &mut [f32]) {
                dequantize_row(blocks, out)
            }
        }
    };
}
pub(crate) use impl_block;

/// Implements [`Quantize`] for a format from its module's `quantize_row`.
macro_rules! impl_quantize {
    ($block:ty) => {
        impl $crate::quants::Quantize for $block {
            fn quantize_row(x: &[f32], out: &mut [Self]) {
                quantize_row(x, out)
            }
        }
    };
}
pub(crate) use impl_quantize;

/// Elements per block of `ty`, from the type table, usable in constants.
pub const fn block_size_of(ty: GgmlType) -> usize {
    let mut i = 0;
    while i < ALL_TYPES.len() {
        if ALL_TYPES[i].ty as u32 == ty as u32 {
            return ALL_TYPES[i].block_size;
        }
        i += 1;
    }
    0
}

/// Bytes per block of `ty`, from the type table, usable in constants (size assertions).
pub const fn type_size_of(ty: GgmlType) -> usize {
    let mut i = 0;
    while i < ALL_TYPES.len() {
        if ALL_TYPES[i].ty as u32 == ty as u32 {
            return ALL_TYPES[i].type_size;
        }
        i += 1;
    }
    0
}

/// `n % m == 0` for `m > 0` (`usize::is_multiple_of` is newer than the workspace's MSRV).
#[inline]
fn is_multiple(n: usize, m: usize) -> bool {
    n / m * m == n
}

/// Why bytes could not be viewed as blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockCastError {
    /// The length is not a whole number of blocks.
    Length { len: usize, type_size: usize },
    /// The bytes do not start at an address aligned for the block struct.
    Misaligned { align: usize },
}

impl fmt::Display for BlockCastError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockCastError::Length { len, type_size } => {
                write!(f, "{len} bytes is not a whole number of {type_size}-byte blocks")
            }
            BlockCastError::Misaligned { align } => {
                write!(f, "block data is not aligned to {align} bytes")
            }
        }
    }
}

impl std::error::Error for BlockCastError {}

/// Views `bytes` as a slice of blocks, without copying.
///
/// Fails if the length is not a multiple of the block size in bytes or the start is not aligned
/// for `B` (2 bytes for most formats, 4 for Q8_K). GGUF tensor data is aligned far beyond that.
pub fn blocks<B: Block>(bytes: &[u8]) -> Result<&[B], BlockCastError> {
    let type_size = std::mem::size_of::<B>();
    if !is_multiple(bytes.len(), type_size) {
        return Err(BlockCastError::Length { len: bytes.len(), type_size });
    }
    if bytes.is_empty() {
        // An empty slice's address is dangling and may be unaligned; there is nothing to view.
        return Ok(&[]);
    }
    let ptr = bytes.as_ptr().cast::<B>();
    if !ptr.is_aligned() {
        return Err(BlockCastError::Misaligned { align: std::mem::align_of::<B>() });
    }
    // SAFETY: `ptr` is non-null and aligned for `B`; the `bytes.len()` bytes behind it are
    // initialised and borrowed for the returned lifetime, and they hold exactly
    // `bytes.len() / type_size` values of `B`. `B: Pod` accepts every bit pattern.
    Ok(unsafe { std::slice::from_raw_parts(ptr, bytes.len() / type_size) })
}

/// Views `bytes` as a mutable slice of blocks, without copying. Fails as [`blocks`] does.
pub fn blocks_mut<B: Block>(bytes: &mut [u8]) -> Result<&mut [B], BlockCastError> {
    let type_size = std::mem::size_of::<B>();
    if !is_multiple(bytes.len(), type_size) {
        return Err(BlockCastError::Length { len: bytes.len(), type_size });
    }
    if bytes.is_empty() {
        return Ok(&mut []);
    }
    let ptr = bytes.as_mut_ptr().cast::<B>();
    if !ptr.is_aligned() {
        return Err(BlockCastError::Misaligned { align: std::mem::align_of::<B>() });
    }
    // SAFETY: as in `blocks`; the exclusive borrow of `bytes` moves to the result, and writing any
    // `B` leaves every byte initialised because `B: Pod` has no padding.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, bytes.len() / type_size) })
}

/// The bytes of a slice of blocks (as they are stored in a GGUF file).
pub fn as_bytes<B: Block>(blocks: &[B]) -> &[u8] {
    // SAFETY: `B: Pod` has no padding, so all `size_of_val(blocks)` bytes are initialised; `u8`
    // has alignment 1 and the borrow is carried over.
    unsafe { std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) }
}

/// The bytes of a mutable slice of blocks.
fn as_bytes_mut<B: Block>(blocks: &mut [B]) -> &mut [u8] {
    // SAFETY: as in `as_bytes`; any bytes written back form a valid `B` because `B: Pod` accepts
    // every bit pattern.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr().cast::<u8>(), std::mem::size_of_val(blocks)) }
}

/// Which direction of conversion an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuantOp {
    Dequantize,
    Quantize,
}

impl fmt::Display for QuantOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            QuantOp::Dequantize => "dequantization",
            QuantOp::Quantize => "quantization",
        })
    }
}

/// Why [`dequantize`] or [`quantize`] refused its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QuantError {
    /// There is no kernel for this type in this direction.
    Unsupported { ty: GgmlType, op: QuantOp },
    /// The encoded bytes are not a whole number of blocks.
    NotWholeBlocks { ty: GgmlType, len: usize, type_size: usize },
    /// The float count is not a whole number of blocks.
    NotWholeElements { ty: GgmlType, len: usize, block_size: usize },
    /// The two sides describe different element counts.
    LengthMismatch { ty: GgmlType, encoded_elements: usize, float_elements: usize },
}

impl fmt::Display for QuantError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QuantError::Unsupported { ty, op } => write!(f, "{op} of {ty} is not supported"),
            QuantError::NotWholeBlocks { ty, len, type_size } => {
                write!(f, "{ty}: {len} bytes is not a whole number of {type_size}-byte blocks")
            }
            QuantError::NotWholeElements { ty, len, block_size } => {
                write!(f, "{ty}: {len} values is not a whole number of {block_size}-element blocks")
            }
            QuantError::LengthMismatch { ty, encoded_elements, float_elements } => {
                write!(
                    f,
                    "{ty}: the encoded data holds {encoded_elements} elements, the floats {float_elements}"
                )
            }
        }
    }
}

impl std::error::Error for QuantError {}

/// Blocks converted per step when the input is misaligned and has to be copied first.
const COPY_CHUNK: usize = 64;

/// Checks that `n_bytes` of `ty` encode exactly `n_floats` elements.
fn check_lengths(ty: GgmlType, n_bytes: usize, n_floats: usize) -> Result<(), QuantError> {
    let (block_size, type_size) = (ty.block_size(), ty.type_size());
    if !is_multiple(n_bytes, type_size) {
        return Err(QuantError::NotWholeBlocks { ty, len: n_bytes, type_size });
    }
    if !is_multiple(n_floats, block_size) {
        return Err(QuantError::NotWholeElements { ty, len: n_floats, block_size });
    }
    let encoded_elements = n_bytes / type_size * block_size;
    if encoded_elements != n_floats {
        return Err(QuantError::LengthMismatch { ty, encoded_elements, float_elements: n_floats });
    }
    Ok(())
}

fn dequantize_blocks<B: Block>(bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    check_lengths(B::TYPE, bytes.len(), out.len())?;
    match blocks::<B>(bytes) {
        Ok(b) => B::dequantize_row(b, out),
        Err(_) => {
            // Misaligned: copy a few blocks at a time into an aligned buffer.
            let mut tmp = [B::ZERO; COPY_CHUNK];
            let type_size = std::mem::size_of::<B>();
            for (src, dst) in
                bytes.chunks(COPY_CHUNK * type_size).zip(out.chunks_mut(COPY_CHUNK * B::BLOCK_SIZE))
            {
                let tmp = &mut tmp[..src.len() / type_size];
                as_bytes_mut(tmp).copy_from_slice(src);
                B::dequantize_row(tmp, dst);
            }
        }
    }
    Ok(())
}

fn quantize_blocks<B: Quantize>(x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    check_lengths(B::TYPE, out.len(), x.len())?;
    match blocks_mut::<B>(out) {
        Ok(b) => B::quantize_row(x, b),
        Err(_) => {
            let mut tmp = [B::ZERO; COPY_CHUNK];
            let type_size = std::mem::size_of::<B>();
            for (src, dst) in x.chunks(COPY_CHUNK * B::BLOCK_SIZE).zip(out.chunks_mut(COPY_CHUNK * type_size))
            {
                let tmp = &mut tmp[..dst.len() / type_size];
                B::quantize_row(src, tmp);
                dst.copy_from_slice(as_bytes(tmp));
            }
        }
    }
    Ok(())
}

/// Decodes `bytes` of type `ty` into `out`, which must hold exactly the encoded element count.
///
/// Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K,
/// Q8_K, IQ4_NL and IQ4_XS. Anything else is [`QuantError::Unsupported`]. `bytes` need not be
/// aligned.
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), QuantError> {
    use GgmlType as T;
    match ty {
        T::F32 => {
            check_lengths(ty, bytes.len(), out.len())?;
            for (y, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *y = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
            Ok(())
        }
        T::F16 => {
            check_lengths(ty, bytes.len(), out.len())?;
            float16::f16_bytes_to_f32(bytes, out);
            Ok(())
        }
        T::BF16 => {
            check_lengths(ty, bytes.len(), out.len())?;
            float16::bf16_bytes_to_f32(bytes, out);
            Ok(())
        }
        T::Q4_0 => dequantize_blocks::<BlockQ4_0>(bytes, out),
        T::Q4_1 => dequantize_blocks::<BlockQ4_1>(bytes, out),
        T::Q5_0 => dequantize_blocks::<BlockQ5_0>(bytes, out),
        T::Q5_1 => dequantize_blocks::<BlockQ5_1>(bytes, out),
        T::Q8_0 => dequantize_blocks::<BlockQ8_0>(bytes, out),
        T::Q8_1 => dequantize_blocks::<BlockQ8_1>(bytes, out),
        T::Q2_K => dequantize_blocks::<BlockQ2K>(bytes, out),
        T::Q3_K => dequantize_blocks::<BlockQ3K>(bytes, out),
        T::Q4_K => dequantize_blocks::<BlockQ4K>(bytes, out),
        T::Q5_K => dequantize_blocks::<BlockQ5K>(bytes, out),
        T::Q6_K => dequantize_blocks::<BlockQ6K>(bytes, out),
        T::Q8_K => dequantize_blocks::<BlockQ8K>(bytes, out),
        T::IQ4_NL => dequantize_blocks::<BlockIQ4NL>(bytes, out),
        T::IQ4_XS => dequantize_blocks::<BlockIQ4XS>(bytes, out),
        _ => Err(QuantError::Unsupported { ty, op: QuantOp::Dequantize }),
    }
}

/// Encodes `x` as type `ty` into `out`, which must be exactly the encoded size.
///
/// Supported: F32, F16, BF16 (round to nearest even, as ggml), and the reference quantizers of
/// Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL and IQ4_XS.
/// Anything else is [`QuantError::Unsupported`]. `out` need not be aligned.
pub fn quantize(ty: GgmlType, x: &[f32], out: &mut [u8]) -> Result<(), QuantError> {
    use GgmlType as T;
    match ty {
        T::F32 => {
            check_lengths(ty, out.len(), x.len())?;
            for (b, v) in out.chunks_exact_mut(4).zip(x) {
                b.copy_from_slice(&v.to_le_bytes());
            }
            Ok(())
        }
        T::F16 => {
            check_lengths(ty, out.len(), x.len())?;
            float16::f32_to_f16_bytes(x, out);
            Ok(())
        }
        T::BF16 => {
            check_lengths(ty, out.len(), x.len())?;
            float16::f32_to_bf16_bytes(x, out);
            Ok(())
        }
        T::Q4_0 => quantize_blocks::<BlockQ4_0>(x, out),
        T::Q4_1 => quantize_blocks::<BlockQ4_1>(x, out),
        T::Q5_0 => quantize_blocks::<BlockQ5_0>(x, out),
        T::Q5_1 => quantize_blocks::<BlockQ5_1>(x, out),
        T::Q8_0 => quantize_blocks::<BlockQ8_0>(x, out),
        T::Q8_1 => quantize_blocks::<BlockQ8_1>(x, out),
        T::Q2_K => quantize_blocks::<BlockQ2K>(x, out),
        T::Q3_K => quantize_blocks::<BlockQ3K>(x, out),
        T::Q4_K => quantize_blocks::<BlockQ4K>(x, out),
        T::Q5_K => quantize_blocks::<BlockQ5K>(x, out),
        T::Q6_K => quantize_blocks::<BlockQ6K>(x, out),
        T::Q8_K => quantize_blocks::<BlockQ8K>(x, out),
        T::IQ4_NL => quantize_blocks::<BlockIQ4NL>(x, out),
        T::IQ4_XS => quantize_blocks::<BlockIQ4XS>(x, out),
        _ => Err(QuantError::Unsupported { ty, op: QuantOp::Quantize }),
    }
}

/// True if [`dequantize`] supports `ty`.
pub fn can_dequantize(ty: GgmlType) -> bool {
    use GgmlType as T;
    matches!(
        ty,
        T::F32
            | T::F16
            | T::BF16
            | T::Q4_0
            | T::Q4_1
            | T::Q5_0
            | T::Q5_1
            | T::Q8_0
            | T::Q8_1
            | T::Q2_K
            | T::Q3_K
            | T::Q4_K
            | T::Q5_K
            | T::Q6_K
            | T::Q8_K
            | T::IQ4_NL
            | T::IQ4_XS
    )
}

/// True if [`quantize`] supports `ty`.
pub fn can_quantize(ty: GgmlType) -> bool {
    can_dequantize(ty)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_table<B: Block>() {
        assert_eq!(std::mem::size_of::<B>(), B::TYPE.type_size(), "{}", B::TYPE);
        assert_eq!(B::BLOCK_SIZE, B::TYPE.block_size(), "{}", B::TYPE);
        assert!(B::TYPE.is_quantized());
        assert!(as_bytes(&[B::ZERO]).iter().all(|&b| b == 0), "{}", B::TYPE);
    }

    #[test]
    fn every_block_matches_the_type_table() {
        check_table::<BlockQ4_0>();
        check_table::<BlockQ4_1>();
        check_table::<BlockQ5_0>();
        check_table::<BlockQ5_1>();
        check_table::<BlockQ8_0>();
        check_table::<BlockQ8_1>();
        check_table::<BlockQ2K>();
        check_table::<BlockQ3K>();
        check_table::<BlockQ4K>();
        check_table::<BlockQ5K>();
        check_table::<BlockQ6K>();
        check_table::<BlockQ8K>();
        check_table::<BlockIQ4NL>();
        check_table::<BlockIQ4XS>();
    }

    #[test]
    fn block_views_check_length_and_alignment() {
        // Q8_K blocks are 4-byte aligned, so their bytes give a known-aligned base address.
        let storage = [BlockQ8K::ZERO; 2];
        let bytes = as_bytes(&storage);
        assert_eq!(blocks::<BlockQ4_0>(&bytes[..36]).map(|b| b.len()), Ok(2));
        assert_eq!(
            blocks::<BlockQ4_0>(&bytes[..35]).unwrap_err(),
            BlockCastError::Length { len: 35, type_size: 18 }
        );
        assert_eq!(blocks::<BlockQ4_0>(&bytes[1..37]).unwrap_err(), BlockCastError::Misaligned { align: 2 });
        assert_eq!(blocks::<BlockQ8K>(&bytes[..292]).map(|b| b.len()), Ok(1));
        assert_eq!(blocks::<BlockQ8K>(&bytes[2..294]).unwrap_err(), BlockCastError::Misaligned { align: 4 });
        assert_eq!(blocks::<BlockQ4_0>(&[]).map(|b| b.len()), Ok(0));
    }
}
