//! Dot products of weight rows with activation rows, and the kernel table that picks the fastest
//! version this CPU can run.
//!
//! ggml never multiplies quantized weights by `f32` activations directly: it first quantizes the
//! activations to the weight type's `vec_dot_type` ([`VecDotType`]) and then sums integer
//! products block by block. The pairs are ggml's: Q8_0 activations for Q4_0, Q5_0, Q8_0 and
//! IQ4_NL weights; Q8_1 (Q8_0 plus the block sum) for Q4_1 and Q5_1; Q8_K for the K-quants and
//! IQ4_XS. F32, F16 and BF16 weights are dotted with the `f32` activations themselves (ggml
//! rounds them to F16/BF16 first; keeping them in `f32` is exact where ggml is not).
//!
//! Every pair has a scalar reference in [`scalar`], written as ggml's generic `ggml_vec_dot_*`
//! (exact integer sums per block, scales applied once per block), and SIMD versions beside it:
//!
//! - `avx2`: AVX2 + FMA + F16C dot products for every type, bit-exact activation quantizers, and
//!   (`avx2_gemm`) 4x4 register-blocked GEMM tiles for Q4_0, Q5_0, Q8_0, IQ4_NL, Q4_K and Q6_K,
//!   four-row decode kernels (two rows per register) for Q4_0 and Q5_0, and decode kernels for
//!   the packed layouts (Q5_0x8, Q4_0x8, Q4_Kx8, Q6_Kx8);
//! - `vnni`: AVX-512 VNNI (`vpdpbusd`/`vpdpwssd` on 256-bit registers) dot products for Q4_0,
//!   Q5_0, Q8_0, IQ4_NL, Q4_K and Q6_K, tiles for the same types, four-row decode kernels for
//!   Q4_0, Q5_0 and IQ4_NL, and with AVX-512 VBMI Q5_0 kernels that gather the fifth bits with
//!   `vpmultishiftqb`, and decode kernels for all packed layouts (Q5_0x8, Q4_0x8, Q8_0x8,
//!   Q4_Kx8, Q6_Kx8); everything else comes from `avx2`;
//! - `neon`: AArch64 NEON dot products for Q4_0, Q5_0, Q8_0, IQ4_NL, Q4_K, Q6_K and F32.
//!
//! Q8_0 and Q8_1 activation rows travel with side data (each block's scale as `f32` and its sum,
//! see [`QuantizedActs`]), which lets kernels treat Q4_0/Q5_0 quants as unsigned and take the
//! offset out once per block, and handle four blocks per step with one vector of scales.
//!
//! The SIMD kernels compute the same integer sums per block as the references, so they differ
//! from them only in the order of the `f32` additions (tested against a bound proportional to the
//! magnitudes summed, see the tests). The activation quantizers are bit-exact with the reference
//! quantizers of [`crate::quants`].
//!
//! [`Kernels`] is the table: one per instruction set ([`Isa`]), each entry the best kernel of that
//! set or below, filled once at first use from `is_x86_feature_detected!` /
//! `is_aarch64_feature_detected!`, so no `target-cpu` flag is needed. [`Kernels::best`] is the
//! table the engine uses; [`Kernels::for_isa`] hands out any other this CPU supports, so tests
//! and benchmarks can run every variant.
//!
//! All kernels read weights and activations with unaligned loads: rows come straight from a
//! mapped file and need not be aligned for the block structs.

use std::fmt;
use std::sync::OnceLock;

use rayon::prelude::*;

use crate::quants::float16::f16_to_f32;
use crate::repack::Layout;
use crate::types::GgmlType;

pub mod scalar;

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_gemm;
#[cfg(target_arch = "x86_64")]
mod vnni;

#[cfg(target_arch = "aarch64")]
mod neon;

#[cfg(test)]
pub(crate) mod tests;

/// The activation format a weight type's dot product reads.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum VecDotType {
    /// Plain `f32` (for F32, F16 and BF16 weights).
    F32,
    /// Q8_0 blocks of 32.
    Q8_0,
    /// Q8_1 blocks of 32 (Q8_0 plus `d * sum`).
    Q8_1,
    /// Q8_K super-blocks of 256.
    Q8_K,
}

impl VecDotType {
    /// Every activation format, in table order.
    pub const ALL: [VecDotType; 4] = [VecDotType::F32, VecDotType::Q8_0, VecDotType::Q8_1, VecDotType::Q8_K];

    /// The activation format ggml pairs with weights of type `ty`, or `None` if there is no dot
    /// product for `ty`.
    pub fn for_weight(ty: GgmlType) -> Option<VecDotType> {
        use GgmlType as T;
        Some(match ty {
            T::F32 | T::F16 | T::BF16 => VecDotType::F32,
            T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL => VecDotType::Q8_0,
            T::Q4_1 | T::Q5_1 => VecDotType::Q8_1,
            T::Q2_K | T::Q3_K | T::Q4_K | T::Q5_K | T::Q6_K | T::IQ4_XS => VecDotType::Q8_K,
            _ => return None,
        })
    }

    /// The GGML type of the format.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            VecDotType::F32 => GgmlType::F32,
            VecDotType::Q8_0 => GgmlType::Q8_0,
            VecDotType::Q8_1 => GgmlType::Q8_1,
            VecDotType::Q8_K => GgmlType::Q8_K,
        }
    }

    /// Elements per block (1 for `f32`).
    pub fn block_size(self) -> usize {
        self.ggml_type().block_size()
    }

    /// Bytes per block.
    pub fn type_size(self) -> usize {
        self.ggml_type().type_size()
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// An instruction set with its own kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust: the references.
    Scalar,
    /// x86-64 with AVX2, FMA and F16C.
    Avx2,
    /// x86-64 with AVX2, FMA, F16C, AVX-512 VL and AVX-512 VNNI.
    Avx512Vnni,
    /// AArch64 with NEON.
    Neon,
}

impl Isa {
    /// Every instruction set the crate knows, worst first.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni, Isa::Neon];

    /// True if this CPU can run the set's kernels.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::is_x86_feature_detected!("avx2")
                    && std::is_x86_feature_detected!("fma")
                    && std::is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512vl")
                    && std::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The name printed in logs and benchmarks.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a checked dot product or quantization refused its arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DotError {
    /// There is no dot product for weights of this type.
    Unsupported(GgmlType),
    /// A buffer's length does not match the others.
    Length { what: &'static str, expected: usize, got: usize },
}

impl fmt::Display for DotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DotError::Unsupported(ty) => write!(f, "no dot product for {ty} weights"),
            DotError::Length { what, expected, got } => write!(f, "{what}: expected {expected}, got {got}"),
        }
    }
}

impl std::error::Error for DotError {}

// ---------------------------------------------------------------------------------------------
// Kernel signatures

/// A row dot product: `nb` weight blocks at `w` times `nb` activation blocks at `a` (elements
/// for F32/F16/BF16 weights against `f32`). For Q8_0 and Q8_1 activations `aux` points to the
/// row's per-block side data ([`QuantizedActs`]: `nb` scales as `f32`, then `nb` sums); other
/// formats pass a null pointer, and kernels that do not need it ignore it.
///
/// # Safety
///
/// Both pointers must cover `nb` readable blocks of their formats (no alignment needed), `aux`
/// `2 * nb` readable floats where the format has side data, and the CPU must support the
/// instruction set the kernel was written for (the table guarantees this).
pub(crate) type DotFn = unsafe fn(nb: usize, w: *const u8, a: *const u8, aux: *const f32) -> f32;

/// An activation quantizer: `nb` blocks of `f32` at `x` into `nb` blocks at `out`.
///
/// # Safety
///
/// `x` must cover `nb` blocks of readable `f32`s and `out` `nb` writable blocks (no alignment
/// needed); the CPU must support the kernel's instruction set.
pub(crate) type QuantFn = unsafe fn(x: *const f32, nb: usize, out: *mut u8);

/// A GEMM tile: `out[j * ldo + i] = dot(weight row i, activation row j)` for `i < mr`, `j < nr`
/// (`mr, nr <= 4`).
///
/// # Safety
///
/// Every pointer in `t` must cover what [`Tile`] describes, and the CPU must support the
/// kernel's instruction set.
pub(crate) type TileFn = unsafe fn(t: &Tile);

/// The arguments of a [`TileFn`].
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // Only x86 has tiles so far.
pub(crate) struct Tile {
    /// Blocks per row.
    pub nb: usize,
    /// First weight row; rows are `ldw` bytes apart.
    pub w: *const u8,
    pub ldw: usize,
    /// Weight rows in the tile (1..=4).
    pub mr: usize,
    /// First activation row; rows are `lda` bytes apart.
    pub a: *const u8,
    pub lda: usize,
    /// Side data of the first activation row (see [`DotFn`]), or null; rows are `ldaux` floats
    /// apart.
    pub aux: *const f32,
    pub ldaux: usize,
    /// Activation rows in the tile (1..=4).
    pub nr: usize,
    /// Output for (weight row 0, activation row 0); activation rows are `ldo` floats apart.
    pub out: *mut f32,
    pub ldo: usize,
}

/// Largest tile side.
pub(crate) const TILE: usize = 4;

// ---------------------------------------------------------------------------------------------
// The table

/// The weight types with a dot product, in table order.
pub const WEIGHT_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
];

const N_TYPES: usize = WEIGHT_TYPES.len();

fn slot(ty: GgmlType) -> Option<usize> {
    WEIGHT_TYPES.iter().position(|&t| t == ty)
}

/// A kernel and the instruction set it was written for.
#[derive(Clone, Copy)]
struct Entry<F> {
    f: F,
    isa: Isa,
}

/// The kernels of one instruction set: for every weight type a dot product (and for some a GEMM
/// tile), for every activation format a quantizer. Entries the set has no kernel for hold the
/// best kernel of a lower set (ultimately the scalar reference).
///
/// A table is only handed out ([`Kernels::best`], [`Kernels::for_isa`]) when the CPU supports
/// its instruction set, which is what makes calling its kernels sound.
pub struct Kernels {
    isa: Isa,
    dot: [Entry<DotFn>; N_TYPES],
    tile: [Option<Entry<TileFn>>; N_TYPES],
    /// Decode kernels for up to four rows at once (a [`TileFn`] called with `nr == 1`).
    matvec: [Option<Entry<TileFn>>; N_TYPES],
    /// The decode kernel for Q5_0 in [`Layout::Q5_0x8`]: a [`TileFn`] called with `nr == 1`,
    /// `w` at the start of a group of eight rows (every row of it readable, padding included)
    /// and `mr` (1..=8) outputs.
    q5_0x8: Entry<TileFn>,
    /// The decode kernel for Q4_K in [`Layout::Q4_Kx8`], called as the Q5_0x8 one.
    q4_kx8: Entry<TileFn>,
    /// The decode kernel for Q6_K in [`Layout::Q6_Kx8`], called as the Q5_0x8 one.
    q6_kx8: Entry<TileFn>,
    /// The decode kernel for Q4_0 in [`Layout::Q4_0x8`], called as the Q5_0x8 one.
    q4_0x8: Entry<TileFn>,
    /// The decode kernel for Q8_0 in [`Layout::Q8_0x8`], called as the Q5_0x8 one.
    q8_0x8: Entry<TileFn>,
    quant: [Entry<QuantFn>; 4],
}

impl Kernels {
    /// The portable table.
    fn scalar() -> Kernels {
        use scalar as s;
        let dots: [DotFn; N_TYPES] = [
            s::dot_f32,
            s::dot_f16,
            s::dot_bf16,
            s::dot_q4_0,
            s::dot_q4_1,
            s::dot_q5_0,
            s::dot_q5_1,
            s::dot_q8_0,
            s::dot_q2_k,
            s::dot_q3_k,
            s::dot_q4_k,
            s::dot_q5_k,
            s::dot_q6_k,
            s::dot_iq4_nl,
            s::dot_iq4_xs,
        ];
        let quants: [QuantFn; 4] = [s::quantize_f32, s::quantize_q8_0, s::quantize_q8_1, s::quantize_q8_k];
        Kernels {
            isa: Isa::Scalar,
            dot: dots.map(|f| Entry { f, isa: Isa::Scalar }),
            tile: [None; N_TYPES],
            matvec: [None; N_TYPES],
            q5_0x8: Entry { f: s::matvec_q5_0x8, isa: Isa::Scalar },
            q4_kx8: Entry { f: s::matvec_q4_kx8, isa: Isa::Scalar },
            q6_kx8: Entry { f: s::matvec_q6_kx8, isa: Isa::Scalar },
            q4_0x8: Entry { f: s::matvec_q4_0x8, isa: Isa::Scalar },
            q8_0x8: Entry { f: s::matvec_q8_0x8, isa: Isa::Scalar },
            quant: quants.map(|f| Entry { f, isa: Isa::Scalar }),
        }
    }

    /// Replaces the dot product of `ty` with `f`, written for `isa`.
    #[allow(dead_code)] // Unused on targets with no SIMD module.
    fn set_dot(&mut self, ty: GgmlType, isa: Isa, f: DotFn) {
        if let Some(i) = slot(ty) {
            self.dot[i] = Entry { f, isa };
        }
    }

    /// Sets the GEMM tile of `ty`.
    #[allow(dead_code)]
    fn set_tile(&mut self, ty: GgmlType, isa: Isa, f: TileFn) {
        if let Some(i) = slot(ty) {
            self.tile[i] = Some(Entry { f, isa });
        }
    }

    /// Sets the multi-row decode kernel of `ty`.
    #[allow(dead_code)]
    fn set_matvec(&mut self, ty: GgmlType, isa: Isa, f: TileFn) {
        if let Some(i) = slot(ty) {
            self.matvec[i] = Some(Entry { f, isa });
        }
    }

    /// Sets the decode kernel of a packed layout.
    #[allow(dead_code)]
    fn set_packed(&mut self, layout: Layout, isa: Isa, f: TileFn) {
        match layout {
            Layout::Q5_0x8 => self.q5_0x8 = Entry { f, isa },
            Layout::Q4_Kx8 => self.q4_kx8 = Entry { f, isa },
            Layout::Q6_Kx8 => self.q6_kx8 = Entry { f, isa },
            Layout::Q4_0x8 => self.q4_0x8 = Entry { f, isa },
            Layout::Q8_0x8 => self.q8_0x8 = Entry { f, isa },
            Layout::Ggml => {}
        }
    }

    /// Replaces the quantizer of `vdt`.
    #[allow(dead_code)]
    fn set_quant(&mut self, vdt: VecDotType, isa: Isa, f: QuantFn) {
        self.quant[vdt.index()] = Entry { f, isa };
    }

    /// Builds the table of `isa`: the scalar table with each set's kernels laid over it, lowest
    /// set first.
    fn build(isa: Isa) -> Kernels {
        let mut k = Kernels::scalar();
        k.isa = isa;
        match isa {
            Isa::Scalar => {}
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => avx2::install(&mut k),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                avx2::install(&mut k);
                vnni::install(&mut k);
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => neon::install(&mut k),
            #[allow(unreachable_patterns)]
            _ => {}
        }
        k
    }

    /// Every table this CPU supports, worst first; built on first use.
    fn all() -> &'static [Kernels] {
        static TABLES: OnceLock<Vec<Kernels>> = OnceLock::new();
        TABLES.get_or_init(|| Isa::ALL.iter().filter(|i| i.is_available()).map(|&i| Kernels::build(i)).collect())
    }

    /// The best table for this CPU.
    pub fn best() -> &'static Kernels {
        let all = Kernels::all();
        // The scalar table is always there, so `all` is never empty.
        &all[all.len() - 1]
    }

    /// The table of `isa`, if this CPU supports it.
    pub fn for_isa(isa: Isa) -> Option<&'static Kernels> {
        Kernels::all().iter().find(|k| k.isa == isa)
    }

    /// Every table this CPU supports, worst first.
    pub fn available() -> &'static [Kernels] {
        Kernels::all()
    }

    /// The instruction set of this table.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The instruction set of the dot product this table uses for `ty`.
    pub fn dot_isa(&self, ty: GgmlType) -> Option<Isa> {
        slot(ty).map(|i| self.dot[i].isa)
    }

    /// The instruction set of the GEMM tile this table has for `ty`, if any.
    pub fn tile_isa(&self, ty: GgmlType) -> Option<Isa> {
        slot(ty).and_then(|i| self.tile[i].map(|e| e.isa))
    }

    /// The instruction set of the quantizer this table uses for `vdt`.
    pub fn quant_isa(&self, vdt: VecDotType) -> Isa {
        self.quant[vdt.index()].isa
    }

    pub(crate) fn dot_fn(&self, ty: GgmlType) -> Option<DotFn> {
        slot(ty).map(|i| self.dot[i].f)
    }

    pub(crate) fn tile_fn(&self, ty: GgmlType) -> Option<TileFn> {
        slot(ty).and_then(|i| self.tile[i].map(|e| e.f))
    }

    /// The instruction set of the multi-row decode kernel this table has for `ty`, if any.
    pub fn matvec_isa(&self, ty: GgmlType) -> Option<Isa> {
        slot(ty).and_then(|i| self.matvec[i].map(|e| e.isa))
    }

    pub(crate) fn matvec_fn(&self, ty: GgmlType) -> Option<TileFn> {
        slot(ty).and_then(|i| self.matvec[i].map(|e| e.f))
    }

    /// The instruction set of this table's decode kernel for a packed layout (`None` for
    /// [`Layout::Ggml`], whose kernels go by type).
    pub fn packed_isa(&self, layout: Layout) -> Option<Isa> {
        match layout {
            Layout::Q5_0x8 => Some(self.q5_0x8.isa),
            Layout::Q4_Kx8 => Some(self.q4_kx8.isa),
            Layout::Q6_Kx8 => Some(self.q6_kx8.isa),
            Layout::Q4_0x8 => Some(self.q4_0x8.isa),
            Layout::Q8_0x8 => Some(self.q8_0x8.isa),
            Layout::Ggml => None,
        }
    }

    /// The decode kernel for a packed layout. Precondition: `layout` is not [`Layout::Ggml`]
    /// (debug-asserted; the Q5_0x8 kernel is returned).
    pub(crate) fn packed_fn(&self, layout: Layout) -> TileFn {
        debug_assert_ne!(layout, Layout::Ggml);
        match layout {
            Layout::Q4_Kx8 => self.q4_kx8.f,
            Layout::Q6_Kx8 => self.q6_kx8.f,
            Layout::Q4_0x8 => self.q4_0x8.f,
            Layout::Q8_0x8 => self.q8_0x8.f,
            _ => self.q5_0x8.f,
        }
    }

    /// Dot product of one weight row (`w`, encoded as `ty`) with one activation row (`a`,
    /// encoded as `ty`'s [`VecDotType`]; little-endian `f32` bytes for float weights).
    pub fn dot(&self, ty: GgmlType, w: &[u8], a: &[u8]) -> Result<f32, DotError> {
        let (Some(f), Some(vdt)) = (self.dot_fn(ty), VecDotType::for_weight(ty)) else {
            return Err(DotError::Unsupported(ty));
        };
        let ts = ty.type_size();
        if !is_multiple(w.len(), ts) {
            return Err(DotError::Length { what: "weight bytes (a multiple of the block size)", expected: w.len() / ts * ts, got: w.len() });
        }
        let nb = w.len() / ts;
        let expect = nb * vdt.type_size() * ty.block_size() / vdt.block_size();
        if a.len() != expect {
            return Err(DotError::Length { what: "activation bytes", expected: expect, got: a.len() });
        }
        let aux = side_data(vdt, a, nb);
        // SAFETY: `w` holds `nb` weight blocks, `a` the matching activation blocks (checked
        // above; float weights count elements, each one 4-byte activation) and `aux` their side
        // data; the table is only handed out when the CPU supports its kernels.
        Ok(unsafe { f(nb, w.as_ptr(), a.as_ptr(), aux.as_ptr()) })
    }

    /// Quantizes `x` to `vdt` into `out` (which must be exactly the encoded size).
    pub fn quantize(&self, vdt: VecDotType, x: &[f32], out: &mut [u8]) -> Result<(), DotError> {
        let bs = vdt.block_size();
        if !is_multiple(x.len(), bs) {
            return Err(DotError::Length { what: "activations (a multiple of the block size)", expected: x.len() / bs * bs, got: x.len() });
        }
        let nb = x.len() / bs;
        if out.len() != nb * vdt.type_size() {
            return Err(DotError::Length { what: "quantized bytes", expected: nb * vdt.type_size(), got: out.len() });
        }
        // SAFETY: lengths checked above; the table's kernels run on this CPU.
        unsafe { (self.quant[vdt.index()].f)(x.as_ptr(), nb, out.as_mut_ptr()) };
        Ok(())
    }

    /// Computes a GEMM tile with this table's tile kernel for `ty`: `w` holds `mr` weight rows
    /// (1..=4) of `acts.cols()` elements, `out` is `[nr][mr]` (`nr` in 1..=4), and `out[j * mr + i]`
    /// becomes the dot product of weight row `i` with activation row `t0 + j`. For tests and
    /// benchmarks; `matmul` calls tiles directly.
    pub fn tile(&self, ty: GgmlType, w: &[u8], acts: &QuantizedActs, t0: usize, out: &mut [f32]) -> Result<(), DotError> {
        let Some(f) = self.tile_fn(ty) else { return Err(DotError::Unsupported(ty)) };
        if VecDotType::for_weight(ty) != Some(acts.vdt) {
            return Err(DotError::Unsupported(ty));
        }
        let bad_len = |what, expected, got| DotError::Length { what, expected, got };
        let ldw = acts.nb * ty.type_size() * acts.vdt.block_size() / ty.block_size();
        if w.is_empty() || !is_multiple(w.len(), ldw) || w.len() / ldw > TILE {
            return Err(bad_len("weight bytes (1 to 4 rows)", ldw, w.len()));
        }
        let mr = w.len() / ldw;
        if out.is_empty() || !is_multiple(out.len(), mr) || out.len() / mr > TILE {
            return Err(bad_len("tile outputs (1 to 4 activation rows)", mr, out.len()));
        }
        let nr = out.len() / mr;
        if t0 + nr > acts.n {
            return Err(bad_len("activation rows", t0 + nr, acts.n));
        }
        let t = acts.tile_args(w.as_ptr(), ldw, mr, t0, nr, out.as_mut_ptr(), mr);
        // SAFETY: `w` holds `mr` rows, `acts` rows `t0..t0 + nr` exist (with side data), `out`
        // holds `mr * nr` floats with activation rows `mr` apart; the CPU runs this table.
        unsafe { f(&t) };
        Ok(())
    }
}

impl Kernels {
    /// Computes up to four rows of a decode product with this table's multi-row kernel for `ty`:
    /// `w` holds `mr` weight rows (1..=4) of `acts.cols()` elements and `out[i]` becomes the dot
    /// product of row `i` with activation row `t`. For tests and benchmarks.
    pub fn matvec_rows(&self, ty: GgmlType, w: &[u8], acts: &QuantizedActs, t: usize, out: &mut [f32]) -> Result<(), DotError> {
        let Some(f) = self.matvec_fn(ty) else { return Err(DotError::Unsupported(ty)) };
        if VecDotType::for_weight(ty) != Some(acts.vdt) {
            return Err(DotError::Unsupported(ty));
        }
        let ldw = acts.nb * ty.type_size() * acts.vdt.block_size() / ty.block_size();
        let mr = out.len();
        if !(1..=TILE).contains(&mr) || w.len() != mr * ldw {
            return Err(DotError::Length { what: "weight bytes (1 to 4 rows, one per output)", expected: mr.clamp(1, TILE) * ldw, got: w.len() });
        }
        if t >= acts.n {
            return Err(DotError::Length { what: "activation rows", expected: t + 1, got: acts.n });
        }
        let args = acts.tile_args(w.as_ptr(), ldw, mr, t, 1, out.as_mut_ptr(), mr);
        // SAFETY: `w` holds `mr` rows, activation row `t` exists with its side data, `out` holds
        // `mr` floats; the CPU runs this table.
        unsafe { f(&args) };
        Ok(())
    }
}

/// `n % m == 0` for `m > 0` (`usize::is_multiple_of` is newer than the workspace's MSRV).
fn is_multiple(n: usize, m: usize) -> bool {
    n / m * m == n
}

// ---------------------------------------------------------------------------------------------
// Quantized activations

/// The side data of one row of `nb` Q8_0 or Q8_1 blocks: `nb` scales `d` as `f32`, then `nb`
/// sums (`d * sum(qs)` for Q8_0, the stored `s` for Q8_1). Empty for other formats.
fn side_data(vdt: VecDotType, row: &[u8], nb: usize) -> Vec<f32> {
    let mut out = vec![0f32; if matches!(vdt, VecDotType::Q8_0 | VecDotType::Q8_1) { 2 * nb } else { 0 }];
    fill_side_data(vdt, row, &mut out);
    out
}

/// Writes the side data of `row` into `out` (`2 * nb` floats, or empty).
fn fill_side_data(vdt: VecDotType, row: &[u8], out: &mut [f32]) {
    if out.is_empty() {
        return;
    }
    let nb = out.len() / 2;
    let (ds, sums) = out.split_at_mut(nb);
    for ((d, s), b) in ds.iter_mut().zip(sums.iter_mut()).zip(row.chunks_exact(vdt.type_size())) {
        *d = f16_to_f32(u16::from_le_bytes([b[0], b[1]]));
        *s = match vdt {
            VecDotType::Q8_1 => f16_to_f32(u16::from_le_bytes([b[2], b[3]])),
            _ => *d * b[2..].iter().map(|&q| i32::from(q as i8)).sum::<i32>() as f32,
        };
    }
}

/// `n` activation rows of `cols` elements quantized to one [`VecDotType`], as one buffer of
/// encoded rows, with the side data the kernels read for Q8_0 and Q8_1 rows (per block, the
/// scale as `f32` and the block sum: `d * sum(qs)` for Q8_0, the stored `s` for Q8_1).
pub struct QuantizedActs {
    vdt: VecDotType,
    cols: usize,
    n: usize,
    nb: usize,
    row_bytes: usize,
    data: Vec<u8>,
    /// `[n][2][nb]`: per row, the block scales then the block sums (Q8_0, Q8_1), or empty.
    side: Vec<f32>,
}

/// Rows quantized per parallel task.
const QUANT_ROWS_PER_TASK: usize = 4;

impl QuantizedActs {
    /// Quantizes `x` (`n` rows of `cols`) with `kernels`' quantizer for `vdt`; rows are
    /// quantized in parallel when there are several.
    pub fn new(kernels: &Kernels, vdt: VecDotType, x: &[f32], n: usize, cols: usize) -> Result<QuantizedActs, DotError> {
        let bs = vdt.block_size();
        if !is_multiple(cols, bs) || cols == 0 {
            return Err(DotError::Length { what: "row length (a multiple of the block size)", expected: cols.div_ceil(bs).max(1) * bs, got: cols });
        }
        if x.len() != n * cols {
            return Err(DotError::Length { what: "activations", expected: n * cols, got: x.len() });
        }
        let nb = cols / bs;
        let row_bytes = nb * vdt.type_size();
        let side_len = if matches!(vdt, VecDotType::Q8_0 | VecDotType::Q8_1) { 2 * nb } else { 0 };
        let mut data = vec![0u8; n * row_bytes];
        let mut side = vec![0f32; n * side_len];
        let quant = kernels.quant[vdt.index()].f;
        let work = |((xr, or), sr): ((&[f32], &mut [u8]), &mut [f32])| {
            for (i, (xr, or)) in xr.chunks_exact(cols).zip(or.chunks_exact_mut(row_bytes)).enumerate() {
                // SAFETY: `xr` is one row of `nb` blocks of floats, `or` its encoded size; the
                // table's kernels run on this CPU.
                unsafe { quant(xr.as_ptr(), nb, or.as_mut_ptr()) };
                fill_side_data(vdt, or, &mut sr[i * side_len..(i + 1) * side_len]);
            }
        };
        if n > 1 {
            let side_chunk = (QUANT_ROWS_PER_TASK * side_len).max(1);
            if side_len == 0 {
                x.par_chunks(QUANT_ROWS_PER_TASK * cols)
                    .zip(data.par_chunks_mut(QUANT_ROWS_PER_TASK * row_bytes))
                    .for_each(|(xr, or)| work(((xr, or), &mut [])));
            } else {
                x.par_chunks(QUANT_ROWS_PER_TASK * cols)
                    .zip(data.par_chunks_mut(QUANT_ROWS_PER_TASK * row_bytes))
                    .zip(side.par_chunks_mut(side_chunk))
                    .for_each(work);
            }
        } else {
            work(((x, &mut data), &mut side));
        }
        Ok(QuantizedActs { vdt, cols, n, nb, row_bytes, data, side })
    }

    /// The format of the rows.
    pub fn vec_dot_type(&self) -> VecDotType {
        self.vdt
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.n
    }

    /// Elements per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The encoded bytes of row `t`.
    pub fn row(&self, t: usize) -> &[u8] {
        &self.data[t * self.row_bytes..(t + 1) * self.row_bytes]
    }

    /// Blocks per row (elements for `f32`).
    pub(crate) fn blocks_per_row(&self) -> usize {
        self.nb
    }

    /// Pointer to row `t`. Precondition: `t < n` (debug-asserted).
    pub(crate) fn row_ptr(&self, t: usize) -> *const u8 {
        debug_assert!(t < self.n);
        self.data[t * self.row_bytes..].as_ptr()
    }

    /// Pointer to the side data of row `t` (see [`DotFn`]), or null for formats without.
    /// Precondition: `t < n` (debug-asserted).
    pub(crate) fn side_ptr(&self, t: usize) -> *const f32 {
        debug_assert!(t < self.n);
        if self.side.is_empty() {
            std::ptr::null()
        } else {
            self.side[t * 2 * self.nb..].as_ptr()
        }
    }

    /// Tile arguments for weight rows at `w` (`ldw` bytes apart) and activation rows
    /// `t0..t0 + nr`, writing `out[j * ldo + i]`. Precondition: `t0 + nr <= n` (debug-asserted).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tile_args(&self, w: *const u8, ldw: usize, mr: usize, t0: usize, nr: usize, out: *mut f32, ldo: usize) -> Tile {
        debug_assert!(t0 + nr <= self.n);
        Tile {
            nb: self.nb,
            w,
            ldw,
            mr,
            a: self.row_ptr(t0),
            lda: self.row_bytes,
            aux: self.side_ptr(t0),
            ldaux: 2 * self.nb,
            nr,
            out,
            ldo,
        }
    }
}
