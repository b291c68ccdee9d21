//! The GGML type table: one row per type id, as ggml declares them.
//!
//! Types are described by data, not by a class hierarchy: each row says how many elements a block
//! holds and how many bytes it takes. Every tensor byte size in the project is computed by
//! [`GgmlType::tensor_nbytes`], which checks every step of the arithmetic.

use std::fmt;

/// A GGML tensor element type. The discriminant is the id stored in GGUF files.
///
/// Ids 4 and 5 (Q4_2, Q4_3), 31..=33 and 36..=38 (the repacked `_4_4`/`_4_8`/`_8_8` layouts) were
/// removed from ggml and are rejected, as ggml itself rejects them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u32)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
    NVFP4 = 40,
    Q1_0 = 41,
}

/// Elements per super-block of the K-quants and most IQ types.
pub const QK_K: usize = 256;

/// One row of the type table.
#[derive(Clone, Copy, Debug)]
pub struct TypeTraits {
    pub ty: GgmlType,
    /// The name ggml and llama.cpp print (`Q4_K`, `IQ4_XS`, `BF16`).
    pub name: &'static str,
    /// Elements per block (1 for plain scalar types).
    pub block_size: usize,
    /// Bytes per block.
    pub type_size: usize,
    /// True for block-quantized types.
    pub quantized: bool,
}

macro_rules! table {
    ($( $ty:ident, $block:expr, $size:expr, $q:expr; )*) => {
        /// Every known type, in id order.
        pub const ALL_TYPES: &[TypeTraits] = &[
            $( TypeTraits { ty: GgmlType::$ty, name: stringify!($ty), block_size: $block, type_size: $size, quantized: $q }, )*
        ];
    };
}

// Block sizes and bytes per block; the bits per weight follow as 8 * type_size / block_size.
table! {
    F32,     1,   4,   false; // 32 bpw
    F16,     1,   2,   false; // 16 bpw
    Q4_0,    32,  18,  true;  // 4.5 bpw: f16 d + 16 bytes of nibbles
    Q4_1,    32,  20,  true;  // 5.0 bpw: f16 d, f16 m + 16 bytes of nibbles
    Q5_0,    32,  22,  true;  // 5.5 bpw: f16 d + 4 bytes high bits + 16 bytes of nibbles
    Q5_1,    32,  24,  true;  // 6.0 bpw
    Q8_0,    32,  34,  true;  // 8.5 bpw: f16 d + 32 i8
    Q8_1,    32,  36,  true;  // 9.0 bpw: f16 d, f16 s + 32 i8
    Q2_K,    QK_K, 84,  true; // 2.625 bpw
    Q3_K,    QK_K, 110, true; // 3.4375 bpw
    Q4_K,    QK_K, 144, true; // 4.5 bpw
    Q5_K,    QK_K, 176, true; // 5.5 bpw
    Q6_K,    QK_K, 210, true; // 6.5625 bpw
    Q8_K,    QK_K, 292, true; // 9.125 bpw: f32 d + 256 i8 + 16 i16 block sums
    IQ2_XXS, QK_K, 66,  true; // 2.0625 bpw
    IQ2_XS,  QK_K, 74,  true; // 2.3125 bpw
    IQ3_XXS, QK_K, 98,  true; // 3.0625 bpw
    IQ1_S,   QK_K, 50,  true; // 1.5625 bpw
    IQ4_NL,  32,  18,  true;  // 4.5 bpw
    IQ3_S,   QK_K, 110, true; // 3.4375 bpw
    IQ2_S,   QK_K, 82,  true; // 2.5625 bpw
    IQ4_XS,  QK_K, 136, true; // 4.25 bpw
    I8,      1,   1,   false;
    I16,     1,   2,   false;
    I32,     1,   4,   false;
    I64,     1,   8,   false;
    F64,     1,   8,   false;
    IQ1_M,   QK_K, 56,  true; // 1.75 bpw
    BF16,    1,   2,   false;
    TQ1_0,   QK_K, 54,  true; // 1.6875 bpw
    TQ2_0,   QK_K, 66,  true; // 2.0625 bpw
    MXFP4,   32,  17,  true;  // 4.25 bpw: e8m0 scale + 16 bytes of e2m1 nibbles
    NVFP4,   64,  36,  true;  // 4.5 bpw: 4 scale bytes + 32 bytes of e2m1 nibbles
    Q1_0,    128, 18,  true;  // 1.125 bpw: f16 scale + 16 bytes of 1-bit weights
}

/// Why a tensor size could not be computed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SizeError {
    /// A dimension is zero.
    ZeroDim { axis: usize },
    /// The row length is not a multiple of the type's block size.
    RowNotBlockMultiple { ne0: u64, block_size: usize },
    /// The element count or byte size does not fit in 63 bits.
    Overflow,
}

impl fmt::Display for SizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SizeError::ZeroDim { axis } => write!(f, "dimension {axis} is 0"),
            SizeError::RowNotBlockMultiple { ne0, block_size } => {
                write!(f, "row length {ne0} is not a multiple of the block size {block_size}")
            }
            SizeError::Overflow => write!(f, "element count or byte size overflows"),
        }
    }
}

impl std::error::Error for SizeError {}

impl GgmlType {
    /// The type with this GGUF id, or `None` for unknown and removed ids.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        ALL_TYPES.iter().find(|t| t.ty as u32 == id).map(|t| t.ty)
    }

    /// The type with this name (`"Q4_K"`, case-insensitive).
    pub fn from_name(name: &str) -> Option<GgmlType> {
        ALL_TYPES.iter().find(|t| t.name.eq_ignore_ascii_case(name)).map(|t| t.ty)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn traits(self) -> &'static TypeTraits {
        // The table lists every variant; the fallback is never reached but keeps this total.
        ALL_TYPES.iter().find(|t| t.ty == self).unwrap_or(&ALL_TYPES[0])
    }

    pub fn name(self) -> &'static str {
        self.traits().name
    }

    pub fn block_size(self) -> usize {
        self.traits().block_size
    }

    pub fn type_size(self) -> usize {
        self.traits().type_size
    }

    pub fn is_quantized(self) -> bool {
        self.traits().quantized
    }

    /// Bits per weight.
    pub fn bits_per_weight(self) -> f64 {
        8.0 * self.type_size() as f64 / self.block_size() as f64
    }

    /// Bytes of one row of `ne0` elements.
    pub fn row_nbytes(self, ne0: u64) -> Result<u64, SizeError> {
        let bs = self.block_size() as u64;
        if ne0 == 0 {
            return Err(SizeError::ZeroDim { axis: 0 });
        }
        if ne0 % bs != 0 {
            return Err(SizeError::RowNotBlockMultiple { ne0, block_size: self.block_size() });
        }
        (ne0 / bs).checked_mul(self.type_size() as u64).ok_or(SizeError::Overflow)
    }

    /// Bytes of a tensor with dimensions `ne` (ggml order: `ne[0]` is the row length).
    ///
    /// This is the one function that sizes tensors. It rejects zero dimensions, rows that are
    /// not a whole number of blocks, and any element count or byte size above `i64::MAX`
    /// (ggml's own limit).
    pub fn tensor_nbytes(self, ne: &[u64]) -> Result<u64, SizeError> {
        let mut nelements: u64 = 1;
        for (axis, &n) in ne.iter().enumerate() {
            if n == 0 {
                return Err(SizeError::ZeroDim { axis });
            }
            nelements = nelements.checked_mul(n).ok_or(SizeError::Overflow)?;
        }
        if nelements > i64::MAX as u64 {
            return Err(SizeError::Overflow);
        }
        let Some(&ne0) = ne.first() else { return Ok(self.type_size() as u64) };
        let row = self.row_nbytes(ne0)?;
        let mut total = row;
        for &n in &ne[1..] {
            total = total.checked_mul(n).ok_or(SizeError::Overflow)?;
        }
        if total > i64::MAX as u64 {
            return Err(SizeError::Overflow);
        }
        Ok(total)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_unknown() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.ty.id()), Some(t.ty));
            assert_eq!(GgmlType::from_name(t.name), Some(t.ty));
            assert_eq!(t.ty.traits().name, t.name);
        }
        for removed in [4u32, 5, 31, 32, 33, 36, 37, 38, 42, 1000] {
            assert_eq!(GgmlType::from_id(removed), None, "id {removed}");
        }
    }

    #[test]
    fn sizes_of_common_shapes() {
        assert_eq!(GgmlType::Q4_K.tensor_nbytes(&[640, 2048]).unwrap_err(),
            SizeError::RowNotBlockMultiple { ne0: 640, block_size: 256 });
        assert_eq!(GgmlType::Q4_K.tensor_nbytes(&[2048, 640]).unwrap(), 8 * 144 * 640);
        assert_eq!(GgmlType::Q8_0.tensor_nbytes(&[640, 262144]).unwrap(), 20 * 34 * 262144);
        assert_eq!(GgmlType::F32.tensor_nbytes(&[640]).unwrap(), 2560);
        assert_eq!(GgmlType::F16.tensor_nbytes(&[0, 4]).unwrap_err(), SizeError::ZeroDim { axis: 0 });
        assert_eq!(GgmlType::F32.tensor_nbytes(&[u64::MAX, 2]).unwrap_err(), SizeError::Overflow);
        assert_eq!(GgmlType::F32.tensor_nbytes(&[1 << 62, 1]).unwrap_err(), SizeError::Overflow);
    }
}
