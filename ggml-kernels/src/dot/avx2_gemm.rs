//! AVX2 GEMM tiles: up to 4 weight rows x 4 activation rows per inner loop (prefill).
//!
//! A tile walks the blocks of its rows once. Each weight block is unpacked once and used against
//! the four activation blocks from registers; each activation block is loaded once and used
//! against the four weight rows. The sixteen integer block sums are reduced with two levels of
//! `vphaddd` into one vector per activation row (lanes: weight row, half) or per weight row
//! (lanes: activation row, half), so the float work per block is one convert and one or two FMAs
//! per row instead of per pair.
//!
//! Tiles are generic over their height and width (`MR`, `NR` in 1..=4, constants so every loop
//! unrolls); the table entry dispatches on the runtime `(mr, nr)` of the [`Tile`]. Types with
//! tiles: Q4_0, Q5_0, Q8_0, IQ4_NL (accumulated per activation row), Q4_K and Q6_K (per weight
//! row).

use std::arch::x86_64::*;

use super::avx2::{
    dot_i8, f16x4, iq4nl_table, k4_scales_mins, load128, load256, load_f16, nibbles, scale_shuffle_16, scale_shuffle_k4,
};
use super::{Isa, Kernels, Tile};
use crate::types::GgmlType;

/// Puts this module's tiles into `k`.
pub(super) fn install(k: &mut Kernels) {
    let isa = Isa::Avx2;
    k.set_tile(GgmlType::Q4_0, isa, tile_q4_0);
    k.set_tile(GgmlType::Q5_0, isa, tile_q5_0);
    k.set_tile(GgmlType::Q8_0, isa, tile_q8_0);
    k.set_tile(GgmlType::IQ4_NL, isa, tile_iq4_nl);
    k.set_tile(GgmlType::Q4_K, isa, tile_q4_k);
    k.set_tile(GgmlType::Q6_K, isa, tile_q6_k);
    k.set_matvec(GgmlType::Q4_0, isa, matvec_q4_0);
    k.set_matvec(GgmlType::Q5_0, isa, matvec_q5_0);
}

/// Calls `$f::<MR, NR>($t)` for the tile's runtime shape.
macro_rules! dispatch_shape {
    ($f:ident, $t:expr) => {{
        let t: &Tile = $t;
        match (t.mr, t.nr) {
            (4, 4) => $f::<4, 4>(t),
            (4, 3) => $f::<4, 3>(t),
            (4, 2) => $f::<4, 2>(t),
            (4, 1) => $f::<4, 1>(t),
            (3, 4) => $f::<3, 4>(t),
            (3, 3) => $f::<3, 3>(t),
            (3, 2) => $f::<3, 2>(t),
            (3, 1) => $f::<3, 1>(t),
            (2, 4) => $f::<2, 4>(t),
            (2, 3) => $f::<2, 3>(t),
            (2, 2) => $f::<2, 2>(t),
            (2, 1) => $f::<2, 1>(t),
            (1, 4) => $f::<1, 4>(t),
            (1, 3) => $f::<1, 3>(t),
            (1, 2) => $f::<1, 2>(t),
            (1, 1) => $f::<1, 1>(t),
            _ => debug_assert!(false, "tile shape {}x{}", t.mr, t.nr),
        }
    }};
}
pub(super) use dispatch_shape;

/// Up to four IEEE halves from `MR` weight rows (`p`, `p + ldw`, ...), as `f32`; lanes from
/// `MR` on are zero and their rows are not read.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn f16_rows<const MR: usize>(p: *const u8, ldw: usize) -> __m128 {
    if MR == 4 {
        // SAFETY: four rows are readable (the caller's contract).
        return unsafe { f16x4(p, ldw) };
    }
    let mut v = [0f32; 4];
    for (i, v) in v.iter_mut().enumerate().take(MR) {
        // SAFETY: rows below `MR` are readable.
        *v = unsafe { load_f16(p.add(i * ldw)) };
    }
    // SAFETY: `v` holds four floats.
    unsafe { _mm_loadu_ps(v.as_ptr()) }
}

/// Writes the tile's results: `acc[r]` holds, in lanes `c` and `c + 4`, the two halves of output
/// `(r, c)`; `out[j * ldo + i]` gets output `(i, j)` with `(r, c) = (j, i)` when `by_act`
/// (accumulators per activation row), else `(r, c) = (i, j)`.
///
/// # Safety
///
/// `out` must be writable at `j * ldo + i` for `i < mr`, `j < nr`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn store_tile<const R: usize>(acc: &[__m256; R], by_act: bool, mr: usize, nr: usize, out: *mut f32, ldo: usize) {
    for (r, a) in acc.iter().enumerate() {
        let s = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps::<1>(*a));
        let mut v = [0f32; 4];
        // SAFETY: `v` holds four floats.
        unsafe { _mm_storeu_ps(v.as_mut_ptr(), s) };
        let (count, at): (usize, fn(usize, usize, usize) -> usize) =
            if by_act { (mr, |r, c, ldo| r * ldo + c) } else { (nr, |r, c, ldo| c * ldo + r) };
        for (c, &v) in v.iter().enumerate().take(count) {
            // SAFETY: the index is that of output (i, j) with i < mr, j < nr.
            unsafe { *out.add(at(r, c, ldo)) = v };
        }
    }
}

/// A tile of a 32-element block type against Q8_0 activations, accumulated per activation row.
///
/// `prep` turns the weight block at `x` into 32 bytes; `pair` gives the eight i32 lanes of the
/// block dot product of prepared weights `xv` with activations `yv`. With `corr = Some(f)` the
/// prepared weights are offset and `f * dx * dy * sum(y)` is added per block (from the side
/// data), as in the dot products.
macro_rules! tile32 {
    ($name:ident, $inner:ident, feat = $feat:literal, wsize = $ws:expr, corr = $corr:expr,
     prep = |$x:ident| $prep:expr, pair = |$xv:ident, $yv:ident| $pair:expr) => {
        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        #[target_feature(enable = $feat)]
        unsafe fn $inner<const MR: usize, const NR: usize>(t: &Tile) {
            let corr: Option<f32> = $corr;
            let low_half = _mm256_castsi256_ps(_mm256_setr_epi32(-1, -1, -1, -1, 0, 0, 0, 0));
            let mut acc = [_mm256_setzero_ps(); NR];
            for b in 0..t.nb {
                // SAFETY: blocks `b < nb` of rows `< MR` (weights) and `< NR` (activations and
                // their side data) are readable (the caller's contract).
                unsafe {
                    let mut xs = [_mm256_setzero_si256(); MR];
                    for (i, xs) in xs.iter_mut().enumerate() {
                        let $x = t.w.add(i * t.ldw + b * $ws);
                        *xs = $prep;
                    }
                    let dx = super::avx2_gemm::f16_rows::<MR>(t.w.add(b * $ws), t.ldw);
                    let dx2 = _mm256_set_m128(dx, dx);
                    let dxc = match corr {
                        Some(f) => _mm256_and_ps(_mm256_mul_ps(dx2, _mm256_set1_ps(f)), low_half),
                        None => _mm256_setzero_ps(),
                    };
                    for (j, acc) in acc.iter_mut().enumerate() {
                        let $yv = load256(t.a.add(j * t.lda + b * 34 + 2));
                        let mut ints = [_mm256_setzero_si256(); 4];
                        for (i, ints) in ints.iter_mut().enumerate().take(MR) {
                            let $xv = xs[i];
                            *ints = $pair;
                        }
                        // Lanes i and i + 4: the two halves of weight row i's block sum.
                        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(ints[0], ints[1]), _mm256_hadd_epi32(ints[2], ints[3]));
                        let side = t.aux.add(j * t.ldaux);
                        let dy = _mm256_broadcast_ss(&*side.add(b));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_mul_ps(dx2, dy), *acc);
                        if corr.is_some() {
                            *acc = _mm256_fmadd_ps(dxc, _mm256_broadcast_ss(&*side.add(t.nb + b)), *acc);
                        }
                    }
                }
            }
            // SAFETY: outputs (i < MR, j < NR) are writable (the caller's contract).
            unsafe { super::avx2_gemm::store_tile::<NR>(&acc, true, MR, NR, t.out, t.ldo) };
        }

        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        unsafe fn $name(t: &Tile) {
            // SAFETY: the caller's contract is the inner function's.
            unsafe { super::avx2_gemm::dispatch_shape!($inner, t) }
        }
    };
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use tile32;

/// Two 16-byte halves in one register: `a` low, `b` high.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn combine(a: __m128i, b: __m128i) -> __m256i {
    _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), b)
}

/// The lane of a paired tile's accumulator that holds output (weight row `i`, activation row
/// `2 * jp + k` for `k` in 0..2): see [`tile32_pairs`].
pub(super) const PAIR_LANE: [[usize; 2]; 4] = [[0, 2], [4, 6], [1, 3], [5, 7]];

/// A tile of a 32-element block type against Q8_0 activations, with two weight rows per
/// register.
///
/// `prep(x0, x1)` returns `(lo, hi)`: elements 0..16 of the block at `x0` in the low half of
/// `lo` and those of the block at `x1` in its high half; `hi` likewise for elements 16..32. The
/// activations' halves are broadcast to both register halves (`vbroadcasti128`, a plain load),
/// so `pair(lo, hi, ylo, yhi)` yields eight i32 lanes: four summing to row `x0`'s block
/// product, four to row `x1`'s. A `vphaddd` per activation row and one per pair of them then
/// leave one accumulator per pair of activation rows whose lanes are whole outputs
/// ([`PAIR_LANE`]), which halves the reduction and conversion work of [`tile32`], and halves the
/// weight unpacking. `corr` as in [`tile32`].
macro_rules! tile32_pairs {
    ($name:ident, $inner:ident, feat = $feat:literal, wsize = $ws:expr, corr = $corr:expr,
     prep = |$x0:ident, $x1:ident| $prep:expr, pair = |$lo:ident, $hi:ident, $ylo:ident, $yhi:ident| $pair:expr) => {
        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        #[target_feature(enable = $feat)]
        unsafe fn $inner<const MR: usize, const NR: usize>(t: &Tile) {
            let corr: Option<f32> = $corr;
            // Lane k holds weight row [0, 2, 0, 2, 1, 3, 1, 3][k].
            let row_of_lane = _mm256_setr_epi32(0, 2, 0, 2, 1, 3, 1, 3);
            let mut acc = [_mm256_setzero_ps(); 2];
            for b in 0..t.nb {
                // SAFETY: blocks `b < nb` of rows `< MR` (weights) and `< NR` (activations and
                // their side data) are readable (the caller's contract). A missing partner row
                // is replaced by row 0, whose results land in lanes that are never stored.
                unsafe {
                    let row = |i: usize| if i < MR { t.w.add(i * t.ldw + b * $ws) } else { t.w.add(b * $ws) };
                    let ($x0, $x1) = (row(0), row(1));
                    let (lo0, hi0) = $prep;
                    let (lo1, hi1) = if MR > 2 {
                        let ($x0, $x1) = (row(2), row(3));
                        $prep
                    } else {
                        (_mm256_setzero_si256(), _mm256_setzero_si256())
                    };
                    let dx4 = super::avx2_gemm::f16_rows::<MR>(t.w.add(b * $ws), t.ldw);
                    let dx = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(dx4), row_of_lane);
                    let dxc = match corr {
                        Some(f) => _mm256_mul_ps(dx, _mm256_set1_ps(f)),
                        None => _mm256_setzero_ps(),
                    };
                    for (jp, acc) in acc.iter_mut().enumerate().take(NR.div_ceil(2)) {
                        let mut h = [_mm256_setzero_si256(); 2];
                        let mut dys = [_mm256_setzero_ps(); 2];
                        let mut cys = [_mm256_setzero_ps(); 2];
                        for k in 0..2 {
                            let j = 2 * jp + k;
                            if j >= NR {
                                break;
                            }
                            let y = t.a.add(j * t.lda + b * 34 + 2);
                            let $ylo = _mm256_broadcastsi128_si256(super::avx2::load128(y));
                            let $yhi = _mm256_broadcastsi128_si256(super::avx2::load128(y.add(16)));
                            let r0 = {
                                let ($lo, $hi) = (lo0, hi0);
                                $pair
                            };
                            let r1 = if MR > 2 {
                                let ($lo, $hi) = (lo1, hi1);
                                $pair
                            } else {
                                _mm256_setzero_si256()
                            };
                            h[k] = _mm256_hadd_epi32(r0, r1);
                            let side = t.aux.add(j * t.ldaux);
                            dys[k] = _mm256_broadcast_ss(&*side.add(b));
                            if corr.is_some() {
                                cys[k] = _mm256_broadcast_ss(&*side.add(t.nb + b));
                            }
                        }
                        // Lanes: (row, act) = (0, j) (2, j) (0, j') (2, j') (1, j) (3, j) (1, j') (3, j').
                        let sums = _mm256_cvtepi32_ps(_mm256_hadd_epi32(h[0], h[1]));
                        let dy = _mm256_blend_ps::<0b1100_1100>(dys[0], dys[1]);
                        *acc = _mm256_fmadd_ps(sums, _mm256_mul_ps(dx, dy), *acc);
                        if corr.is_some() {
                            *acc = _mm256_fmadd_ps(dxc, _mm256_blend_ps::<0b1100_1100>(cys[0], cys[1]), *acc);
                        }
                    }
                }
            }
            for (jp, acc) in acc.iter().enumerate().take(NR.div_ceil(2)) {
                let mut v = [0f32; 8];
                // SAFETY: `v` holds eight floats; outputs (i < MR, j < NR) are writable (the
                // caller's contract).
                unsafe {
                    _mm256_storeu_ps(v.as_mut_ptr(), *acc);
                    for k in 0..2 {
                        let j = 2 * jp + k;
                        if j < NR {
                            for i in 0..MR {
                                *t.out.add(j * t.ldo + i) = v[super::avx2_gemm::PAIR_LANE[i][k]];
                            }
                        }
                    }
                }
            }
        }

        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        unsafe fn $name(t: &Tile) {
            // SAFETY: the caller's contract is the inner function's.
            unsafe { super::avx2_gemm::dispatch_shape!($inner, t) }
        }
    };
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use tile32_pairs;

/// A decode kernel for up to four weight rows against one activation row (a [`Tile`] with
/// `nr == 1`), two rows per register as in [`tile32_pairs`], four blocks per step.
///
/// For each pair of rows, four blocks' products are reduced by one `vphaddd` tree into
/// `[row 2p: blocks b..b+4 | row 2p+1: blocks b..b+4]`, converted once and scaled by the
/// vector of `dx * dy`, so the unpacking and the float work per block and row are about half
/// those of a one-row dot product. Remaining blocks go one at a time. The next four rows are
/// prefetched meanwhile (see the loop).
macro_rules! matvec4_pairs {
    ($name:ident, $inner:ident, feat = $feat:literal, wsize = $ws:expr, corr = $corr:expr,
     prep = |$x0:ident, $x1:ident| $prep:expr, pair = |$lo:ident, $hi:ident, $ylo:ident, $yhi:ident| $pair:expr) => {
        /// # Safety
        ///
        /// As [`super::TileFn`] with `nr == 1`; the CPU must have the features of the module.
        #[target_feature(enable = $feat)]
        unsafe fn $inner<const MR: usize>(t: &Tile) {
            let corr: Option<f32> = $corr;
            let factor = _mm256_set1_ps(corr.map_or(0.0, |f| f));
            let (dys, cys) = (t.aux, t.aux.add(t.nb));
            let npairs = MR.div_ceil(2);
            let mut acc = [_mm256_setzero_ps(); 2];
            let mut tacc = [_mm256_setzero_ps(); 2];
            // SAFETY: blocks `< nb` of rows `< MR` and of the activation row with its side data
            // are readable (the caller's contract); a missing partner row is replaced by row 0,
            // whose results land in lanes that are never stored.
            unsafe {
                let row = |i: usize| if i < MR { t.w.add(i * t.ldw) } else { t.w };
                let mut b = 0;
                let mut prefetch = $crate::dot::avx2_gemm::PrefetchNext::new(t.w.wrapping_add(MR * t.ldw), MR * t.ldw, t.nb / 4);
                while b + 4 <= t.nb {
                    prefetch.step();
                    let mut ylo = [_mm256_setzero_si256(); 4];
                    let mut yhi = [_mm256_setzero_si256(); 4];
                    for k in 0..4 {
                        let y = t.a.add((b + k) * 34 + 2);
                        ylo[k] = _mm256_broadcastsi128_si256(super::avx2::load128(y));
                        yhi[k] = _mm256_broadcastsi128_si256(super::avx2::load128(y.add(16)));
                    }
                    let dy4 = _mm_loadu_ps(dys.add(b));
                    let dy = _mm256_set_m128(dy4, dy4);
                    for (p, acc) in acc.iter_mut().enumerate().take(npairs) {
                        let (r0, r1) = (row(2 * p), row(2 * p + 1));
                        let mut r = [_mm256_setzero_si256(); 4];
                        for (k, r) in r.iter_mut().enumerate() {
                            let ($x0, $x1) = (r0.add((b + k) * $ws), r1.add((b + k) * $ws));
                            let ($lo, $hi) = $prep;
                            let ($ylo, $yhi) = (ylo[k], yhi[k]);
                            *r = $pair;
                        }
                        // Lanes 0..4: row 2p, blocks b..b+4; lanes 4..8: row 2p + 1.
                        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(r[0], r[1]), _mm256_hadd_epi32(r[2], r[3]));
                        let dx = _mm256_set_m128(f16x4(r1.add(b * $ws), $ws), f16x4(r0.add(b * $ws), $ws));
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_mul_ps(dx, dy), *acc);
                        if corr.is_some() {
                            let cy4 = _mm_loadu_ps(cys.add(b));
                            let cy = _mm256_set_m128(cy4, cy4);
                            *acc = _mm256_fmadd_ps(_mm256_mul_ps(dx, factor), cy, *acc);
                        }
                    }
                    b += 4;
                }
                // One block at a time: lanes 0..4 and 4..8 hold parts of the two rows' sums.
                let first = _mm256_setr_ps(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0);
                while b < t.nb {
                    let y = t.a.add(b * 34 + 2);
                    let ($ylo, $yhi) = (
                        _mm256_broadcastsi128_si256(super::avx2::load128(y)),
                        _mm256_broadcastsi128_si256(super::avx2::load128(y.add(16))),
                    );
                    for (p, tacc) in tacc.iter_mut().enumerate().take(npairs) {
                        let (r0, r1) = (row(2 * p).add(b * $ws), row(2 * p + 1).add(b * $ws));
                        let ($x0, $x1) = (r0, r1);
                        let ($lo, $hi) = $prep;
                        let r = $pair;
                        let dx = _mm256_set_m128(_mm_set1_ps(load_f16(r1)), _mm_set1_ps(load_f16(r0)));
                        *tacc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(r), _mm256_mul_ps(dx, _mm256_set1_ps(*dys.add(b))), *tacc);
                        if corr.is_some() {
                            let c = _mm256_mul_ps(_mm256_mul_ps(dx, factor), first);
                            *tacc = _mm256_fmadd_ps(c, _mm256_set1_ps(*cys.add(b)), *tacc);
                        }
                    }
                    b += 1;
                }
                for p in 0..npairs {
                    let v = _mm256_add_ps(acc[p], tacc[p]);
                    let mut lanes = [0f32; 8];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), v);
                    for k in 0..2 {
                        let i = 2 * p + k;
                        if i < MR {
                            let s = &lanes[4 * k..4 * k + 4];
                            *t.out.add(i) = (s[0] + s[1]) + (s[2] + s[3]);
                        }
                    }
                }
            }
        }

        /// # Safety
        ///
        /// As [`super::TileFn`] with `nr == 1`; the CPU must have the features of the module.
        unsafe fn $name(t: &Tile) {
            debug_assert_eq!(t.nr, 1);
            // SAFETY: the caller's contract is the inner function's.
            unsafe {
                match t.mr {
                    4 => $inner::<4>(t),
                    3 => $inner::<3>(t),
                    2 => $inner::<2>(t),
                    _ => $inner::<1>(t),
                }
            }
        }
    };
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use matvec4_pairs;

/// The prefetch of a multi-row decode kernel: reading several rows side by side defeats the
/// hardware prefetchers, which follow one stream through a page well and several poorly, so the
/// next group of rows (the `bytes` right after these, at `next`) is prefetched in order, spread
/// over this group's `steps`. Prefetches never fault; past the matrix's end they only waste a
/// request.
pub(super) struct PrefetchNext {
    next: *const u8,
    lines: usize,
    per_step: usize,
    line: usize,
}

impl PrefetchNext {
    #[inline(always)]
    pub(super) fn new(next: *const u8, bytes: usize, steps: usize) -> PrefetchNext {
        let lines = bytes.div_ceil(64);
        PrefetchNext { next, lines, per_step: lines.div_ceil(steps.max(1)), line: 0 }
    }

    /// This step's share of the lines.
    #[inline(always)]
    pub(super) fn step(&mut self) {
        for _ in 0..self.per_step {
            if self.line < self.lines {
                // SAFETY: a prefetch reads nothing and cannot fault, whatever the address.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(self.next.wrapping_add(64 * self.line).cast::<i8>()) };
                self.line += 1;
            }
        }
    }
}

/// Q4_0 weight rows `x0`, `x1` paired: (elements 0..16, elements 16..32) as unsigned nibbles.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_0_pair(x0: *const u8, x1: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees a readable block at each pointer.
    let v = unsafe { combine(super::avx2::load128(x0.add(2)), super::avx2::load128(x1.add(2))) };
    let m4 = _mm256_set1_epi8(0xF);
    (_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4))
}

/// Q5_0 weight rows `x0`, `x1` paired: (elements 0..16, 16..32) as unsigned five-bit quants.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q5_0_pair(x0: *const u8, x1: *const u8) -> (__m256i, __m256i) {
    // SAFETY: the caller guarantees a readable block at each pointer.
    let (v, q0, q1) = unsafe {
        (combine(super::avx2::load128(x0.add(6)), super::avx2::load128(x1.add(6))), super::avx2::load_u32(x0.add(2)), super::avx2::load_u32(x1.add(2)))
    };
    let m4 = _mm256_set1_epi8(0xF);
    let spread = combine(_mm_set1_epi32(q0 as i32), _mm_set1_epi32(q1 as i32));
    // Byte k of each half takes qh byte k / 8 (elements 0..16) or 2 + k / 8 (elements 16..32),
    // and is all ones exactly when bit k % 8 of it is set.
    let sel_lo = _mm256_set_epi64x(0x0101_0101_0101_0101, 0, 0x0101_0101_0101_0101, 0);
    let sel_hi = _mm256_set_epi64x(0x0303_0303_0303_0303, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303, 0x0202_0202_0202_0202);
    (
        _mm256_or_si256(_mm256_and_si256(v, m4), fifth_bits(spread, sel_lo)),
        _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(v), m4), fifth_bits(spread, sel_hi)),
    )
}

/// Byte `k` of the result is 0x10 if bit `k % 8` of byte `sel[k]` of `spread` (within its
/// 128-bit half) is set, else 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits(spread: __m256i, sel: __m256i) -> __m256i {
    let b = _mm256_or_si256(_mm256_shuffle_epi8(spread, sel), _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe));
    _mm256_and_si256(_mm256_cmpeq_epi8(b, _mm256_set1_epi64x(-1)), _mm256_set1_epi8(0x10))
}

/// Q8_0 weight rows `x0`, `x1` paired: (elements 0..16, 16..32), signed.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0_pair(x0: *const u8, x1: *const u8) -> (__m256i, __m256i) {
    use super::avx2::load128;
    // SAFETY: the caller guarantees a readable block at each pointer.
    unsafe { (combine(load128(x0.add(2)), load128(x1.add(2))), combine(load128(x0.add(18)), load128(x1.add(18)))) }
}

/// Unsigned x signed byte products of a paired tile, summed to i32 without VNNI: both halves'
/// pair sums fit i16 together while the unsigned quants stay below 32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn pair_u8_small(lo: __m256i, hi: __m256i, ylo: __m256i, yhi: __m256i) -> __m256i {
    let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ylo), _mm256_maddubs_epi16(hi, yhi));
    _mm256_madd_epi16(p, _mm256_set1_epi16(1))
}

tile32_pairs!(tile_q4_0, tile_q4_0_mn, feat = "avx2,fma,f16c", wsize = 18, corr = Some(-8.0),
    prep = |x0, x1| q4_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_u8_small(lo, hi, ylo, yhi));

tile32_pairs!(tile_q5_0, tile_q5_0_mn, feat = "avx2,fma,f16c", wsize = 22, corr = Some(-16.0),
    prep = |x0, x1| q5_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_u8_small(lo, hi, ylo, yhi));

matvec4_pairs!(matvec_q4_0, matvec_q4_0_m, feat = "avx2,fma,f16c", wsize = 18, corr = Some(-8.0),
    prep = |x0, x1| q4_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_u8_small(lo, hi, ylo, yhi));

matvec4_pairs!(matvec_q5_0, matvec_q5_0_m, feat = "avx2,fma,f16c", wsize = 22, corr = Some(-16.0),
    prep = |x0, x1| q5_0_pair(x0, x1), pair = |lo, hi, ylo, yhi| pair_u8_small(lo, hi, ylo, yhi));

// Q8_0 and IQ4_NL stay one row per register on AVX2: with the sign trick each half's pair sums
// can reach 2 * 128 * 127, so two halves no longer fit i16 together.

tile32!(tile_q8_0, tile_q8_0_mn, feat = "avx2,fma,f16c", wsize = 34, corr = None,
    prep = |x| load256(x.add(2)), pair = |xv, yv| dot_i8(xv, yv));

tile32!(tile_iq4_nl, tile_iq4_nl_mn, feat = "avx2,fma,f16c", wsize = 18, corr = None,
    prep = |x| _mm256_shuffle_epi8(iq4nl_table(), nibbles(x.add(2))), pair = |xv, yv| dot_i8(xv, yv));

/// The Q4_K tile, accumulated per weight row; `$sum` folds one group: `$sum(acc, q, y, scale)`
/// returns `acc + madd(maddubs(q, y), scale)`.
macro_rules! tile_q4_k_kernel {
    ($name:ident, $inner:ident, feat = $feat:literal, sum = |$acc:ident, $q:ident, $y:ident, $s:ident| $sum:expr) => {
        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        #[target_feature(enable = $feat)]
        unsafe fn $inner<const MR: usize, const NR: usize>(t: &Tile) {
            let m4 = _mm256_set1_epi8(0xF);
            let mut acc = [_mm256_setzero_ps(); MR];
            for b in 0..t.nb {
                // SAFETY: super-blocks `b < nb` of rows `< MR` (weights) and `< NR`
                // (activations) are readable (the caller's contract).
                unsafe {
                    // Activation side: scales and the sums of each group of 32.
                    let mut dys = [0f32; 4];
                    let mut ysums = [_mm_setzero_si128(); 4];
                    for j in 0..NR {
                        let y = t.a.add(j * t.lda + b * 292);
                        dys[j] = super::avx2::load_f32(y);
                        let bs = load256(y.add(260));
                        ysums[j] = _mm_hadd_epi16(_mm256_castsi256_si128(bs), _mm256_extracti128_si256::<1>(bs));
                    }
                    let dy4 = _mm_loadu_ps(dys.as_ptr());
                    let dy8 = _mm256_set_m128(dy4, dy4);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = t.w.add(i * t.ldw + b * 144);
                        let (sc, mins) = k4_scales_mins(x.add(4));
                        let scales = _mm256_broadcastsi128_si256(sc);
                        let mut s = [_mm256_setzero_si256(); 8];
                        let mut q = [_mm256_setzero_si256(); 8];
                        for c in 0..4 {
                            s[2 * c] = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * c));
                            s[2 * c + 1] = _mm256_shuffle_epi8(scales, scale_shuffle_k4(2 * c + 1));
                            let v = load256(x.add(16 + 32 * c));
                            q[2 * c] = _mm256_and_si256(v, m4);
                            q[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4);
                        }
                        let mut ints = [_mm256_setzero_si256(); 4];
                        let mut mints = [_mm_setzero_si128(); 4];
                        for j in 0..NR {
                            let y = t.a.add(j * t.lda + b * 292 + 4);
                            let mut sum = _mm256_setzero_si256();
                            for k in 0..8 {
                                let ($acc, $q, $y, $s) = (sum, q[k], load256(y.add(32 * k)), s[k]);
                                sum = $sum;
                            }
                            ints[j] = sum;
                            mints[j] = _mm_madd_epi16(mins, ysums[j]);
                        }
                        // Lanes j and j + 4: the two halves of activation row j's sum.
                        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(ints[0], ints[1]), _mm256_hadd_epi32(ints[2], ints[3]));
                        let hm = _mm_hadd_epi32(_mm_hadd_epi32(mints[0], mints[1]), _mm_hadd_epi32(mints[2], mints[3]));
                        let d = _mm256_mul_ps(_mm256_set1_ps(load_f16(x)), dy8);
                        let dmin = _mm256_mul_ps(_mm256_set1_ps(load_f16(x.add(2))), dy8);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), d, *acc);
                        *acc = _mm256_fnmadd_ps(_mm256_zextps128_ps256(_mm_cvtepi32_ps(hm)), dmin, *acc);
                    }
                }
            }
            // SAFETY: outputs (i < MR, j < NR) are writable (the caller's contract).
            unsafe { super::avx2_gemm::store_tile::<MR>(&acc, false, MR, NR, t.out, t.ldo) };
        }

        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        unsafe fn $name(t: &Tile) {
            // SAFETY: the caller's contract is the inner function's.
            unsafe { super::avx2_gemm::dispatch_shape!($inner, t) }
        }
    };
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use tile_q4_k_kernel;

tile_q4_k_kernel!(tile_q4_k, tile_q4_k_mn, feat = "avx2,fma,f16c",
    sum = |acc, q, y, s| _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), s)));

/// The Q6_K tile, accumulated per weight row: quants taken unsigned (0..64), `32 * sum(sc *
/// ysum)` subtracted per pair and super-block from the Q8_K group sums; `$sum` as in the Q4_K
/// tile.
macro_rules! tile_q6_k_kernel {
    ($name:ident, $inner:ident, feat = $feat:literal, sum = |$acc:ident, $q:ident, $y:ident, $s:ident| $sum:expr) => {
        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        #[target_feature(enable = $feat)]
        unsafe fn $inner<const MR: usize, const NR: usize>(t: &Tile) {
            let m4 = _mm256_set1_epi8(0xF);
            let m30 = _mm256_set1_epi8(0x30);
            let mut acc = [_mm256_setzero_ps(); MR];
            for b in 0..t.nb {
                // SAFETY: super-blocks `b < nb` of rows `< MR` (weights) and `< NR`
                // (activations) are readable (the caller's contract).
                unsafe {
                    let mut dys = [0f32; 4];
                    let mut bsums = [_mm256_setzero_si256(); 4];
                    for j in 0..NR {
                        let y = t.a.add(j * t.lda + b * 292);
                        dys[j] = super::avx2::load_f32(y);
                        bsums[j] = load256(y.add(260));
                    }
                    let dy4 = _mm_loadu_ps(dys.as_ptr());
                    let dy8 = _mm256_set_m128(dy4, dy4);
                    for (i, acc) in acc.iter_mut().enumerate() {
                        let x = t.w.add(i * t.ldw + b * 210);
                        let sc8 = load128(x.add(192));
                        let sc16 = _mm256_cvtepi8_epi16(sc8);
                        let mut s = [_mm256_setzero_si256(); 8];
                        let mut q = [_mm256_setzero_si256(); 8];
                        for h in 0..2 {
                            let ql1 = load256(x.add(64 * h));
                            let ql2 = load256(x.add(64 * h + 32));
                            let qh = load256(x.add(128 + 32 * h));
                            q[4 * h] = _mm256_or_si256(_mm256_and_si256(ql1, m4), _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m30));
                            q[4 * h + 1] = _mm256_or_si256(_mm256_and_si256(ql2, m4), _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m30));
                            q[4 * h + 2] =
                                _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4), _mm256_and_si256(qh, m30));
                            q[4 * h + 3] = _mm256_or_si256(
                                _mm256_and_si256(_mm256_srli_epi16::<4>(ql2), m4),
                                _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m30),
                            );
                        }
                        for (c, s) in s.iter_mut().enumerate() {
                            *s = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, scale_shuffle_16(c)));
                        }
                        let mut ints = [_mm256_setzero_si256(); 4];
                        for j in 0..NR {
                            let y = t.a.add(j * t.lda + b * 292 + 4);
                            let mut sum = _mm256_setzero_si256();
                            for c in 0..8 {
                                let ($acc, $q, $y, $s) = (sum, q[c], load256(y.add(32 * c)), s[c]);
                                sum = $sum;
                            }
                            let corr = _mm256_madd_epi16(sc16, bsums[j]);
                            ints[j] = _mm256_sub_epi32(sum, _mm256_slli_epi32::<5>(corr));
                        }
                        // Lanes j and j + 4: the two halves of activation row j's sum.
                        let h = _mm256_hadd_epi32(_mm256_hadd_epi32(ints[0], ints[1]), _mm256_hadd_epi32(ints[2], ints[3]));
                        let d = _mm256_mul_ps(_mm256_set1_ps(load_f16(x.add(208))), dy8);
                        *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), d, *acc);
                    }
                }
            }
            // SAFETY: outputs (i < MR, j < NR) are writable (the caller's contract).
            unsafe { super::avx2_gemm::store_tile::<MR>(&acc, false, MR, NR, t.out, t.ldo) };
        }

        /// # Safety
        ///
        /// As [`super::TileFn`]; the CPU must have the features of the module.
        unsafe fn $name(t: &Tile) {
            // SAFETY: the caller's contract is the inner function's.
            unsafe { super::avx2_gemm::dispatch_shape!($inner, t) }
        }
    };
}
#[allow(unused_imports)] // Used by the VNNI module.
pub(super) use tile_q6_k_kernel;

tile_q6_k_kernel!(tile_q6_k, tile_q6_k_mn, feat = "avx2,fma,f16c",
    sum = |acc, q, y, s| _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(q, y), s)));
