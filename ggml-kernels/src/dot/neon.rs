//! AArch64 NEON dot products for the most common types: Q4_0, Q5_0, Q8_0, IQ4_NL, Q4_K, Q6_K
//! and F32.
//!
//! Only baseline NEON is used (no `sdot`, whose intrinsics are not stable on the workspace's
//! MSRV): byte products are widened with `smull`/`smlal` (two i8 x i8 products fit in i16 because
//! activation quants stay within ±127) and pairwise-accumulated into i32 with `sadalp`. As on
//! x86, every block's integer sum is exact and block scales are applied in `f32`.

use std::arch::aarch64::*;
use std::ptr::read_unaligned;

use super::scalar::k4_scales_mins;
use super::{Isa, Kernels};
use crate::quants::float16::f16_to_f32;
use crate::quants::iq4_nl::KVALUES_IQ4NL;
use crate::types::GgmlType;

/// Puts this module's kernels into `k`.
pub(super) fn install(k: &mut Kernels) {
    use GgmlType as T;
    let isa = Isa::Neon;
    k.set_dot(T::F32, isa, dot_f32);
    k.set_dot(T::Q4_0, isa, dot_q4_0);
    k.set_dot(T::Q5_0, isa, dot_q5_0);
    k.set_dot(T::Q8_0, isa, dot_q8_0);
    k.set_dot(T::IQ4_NL, isa, dot_iq4_nl);
    k.set_dot(T::Q4_K, isa, dot_q4_k);
    k.set_dot(T::Q6_K, isa, dot_q6_k);
}

/// Reads an IEEE half at `p` as `f32`.
///
/// # Safety
///
/// Two bytes at `p` must be readable.
#[inline]
unsafe fn load_f16(p: *const u8) -> f32 {
    // SAFETY: the caller's contract; no alignment is needed.
    f16_to_f32(unsafe { read_unaligned(p.cast::<u16>()) })
}

/// The exact sum of the products of two runs of 32 signed bytes: `x` as two vectors of 16, `y`
/// at `yp`. Precondition: no byte of `y` is -128.
///
/// # Safety
///
/// 32 bytes at `yp` must be readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot32(x0: int8x16_t, x1: int8x16_t, yp: *const i8) -> i32 {
    // SAFETY: the caller guarantees 32 readable bytes at `yp`.
    let (y0, y1) = unsafe { (vld1q_s8(yp), vld1q_s8(yp.add(16))) };
    let p0 = vmlal_high_s8(vmull_s8(vget_low_s8(x0), vget_low_s8(y0)), x0, y0);
    let p1 = vmlal_high_s8(vmull_s8(vget_low_s8(x1), vget_low_s8(y1)), x1, y1);
    vaddvq_s32(vpadalq_s16(vpaddlq_s16(p0), p1))
}

/// The exact sum of the products of 16 signed bytes `x` with the 16 at `yp`.
///
/// # Safety
///
/// 16 bytes at `yp` must be readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn dot16(x: int8x16_t, yp: *const i8) -> i32 {
    // SAFETY: the caller guarantees 16 readable bytes at `yp`.
    let y = unsafe { vld1q_s8(yp) };
    let p = vmlal_high_s8(vmull_s8(vget_low_s8(x), vget_low_s8(y)), x, y);
    vaddvq_s32(vpaddlq_s16(p))
}

/// A row of 32-element blocks against Q8_0: `$quants(x)` gives the block's 32 signed quants as
/// two vectors (elements 0..16, 16..32).
macro_rules! blocks32 {
    ($nb:expr, $w:expr, $ws:expr, $a:expr, |$x:ident| $quants:expr) => {{
        let mut sum = 0.0f32;
        for i in 0..$nb {
            let $x = $w.add(i * $ws);
            let y = $a.add(i * 34);
            let (q0, q1): (int8x16_t, int8x16_t) = $quants;
            let sumi = dot32(q0, q1, y.add(2).cast::<i8>());
            sum += sumi as f32 * (load_f16($x) * load_f16(y));
        }
        sum
    }};
}

/// Q4_0 x Q8_0.
///
/// # Safety
///
/// As [`super::DotFn`].
#[target_feature(enable = "neon")]
unsafe fn dot_q4_0(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: blocks `< nb` of both rows are readable (the caller's contract).
    unsafe {
        blocks32!(nb, w, 18, a, |x| {
            let v = vld1q_u8(x.add(2));
            let eight = vdupq_n_s8(8);
            (
                vsubq_s8(vreinterpretq_s8_u8(vandq_u8(v, vdupq_n_u8(0x0F))), eight),
                vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(v)), eight),
            )
        })
    }
}

/// The 32 fifth bits of a Q5_0 block as bytes of 0x10 or 0.
///
/// # Safety
///
/// Four bytes at `p` must be readable.
#[inline]
#[target_feature(enable = "neon")]
unsafe fn q5_high_bits(p: *const u8) -> (uint8x16_t, uint8x16_t) {
    // SAFETY: the caller's contract.
    let qh = u32::from_le_bytes(unsafe { read_unaligned(p.cast::<[u8; 4]>()) });
    let mut b = [0u8; 32];
    for (j, b) in b.iter_mut().enumerate() {
        *b = (((qh >> j) & 1) << 4) as u8;
    }
    // SAFETY: `b` is 32 bytes.
    unsafe { (vld1q_u8(b.as_ptr()), vld1q_u8(b.as_ptr().add(16))) }
}

/// Q5_0 x Q8_0.
///
/// # Safety
///
/// As [`super::DotFn`].
#[target_feature(enable = "neon")]
unsafe fn dot_q5_0(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: blocks `< nb` of both rows are readable (the caller's contract).
    unsafe {
        blocks32!(nb, w, 22, a, |x| {
            let v = vld1q_u8(x.add(6));
            let (h0, h1) = q5_high_bits(x.add(2));
            let sixteen = vdupq_n_s8(16);
            (
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vandq_u8(v, vdupq_n_u8(0x0F)), h0)), sixteen),
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(vshrq_n_u8::<4>(v), h1)), sixteen),
            )
        })
    }
}

/// Q8_0 x Q8_0.
///
/// # Safety
///
/// As [`super::DotFn`].
#[target_feature(enable = "neon")]
unsafe fn dot_q8_0(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: blocks `< nb` of both rows are readable (the caller's contract).
    unsafe { blocks32!(nb, w, 34, a, |x| (vld1q_s8(x.add(2).cast::<i8>()), vld1q_s8(x.add(18).cast::<i8>()))) }
}

/// IQ4_NL x Q8_0 (table lookup with `tbl`).
///
/// # Safety
///
/// As [`super::DotFn`].
#[target_feature(enable = "neon")]
unsafe fn dot_iq4_nl(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    // SAFETY: the table is 16 bytes; blocks `< nb` of both rows are readable.
    unsafe {
        let table = vld1q_s8(KVALUES_IQ4NL.as_ptr());
        blocks32!(nb, w, 18, a, |x| {
            let v = vld1q_u8(x.add(2));
            (vqtbl1q_s8(table, vandq_u8(v, vdupq_n_u8(0x0F))), vqtbl1q_s8(table, vshrq_n_u8::<4>(v)))
        })
    }
}

/// Q4_K x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`].
#[target_feature(enable = "neon")]
unsafe fn dot_q4_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let mut sum = 0.0f32;
    for i in 0..nb {
        // SAFETY: super-block `i < nb` of both rows is readable; every offset is inside it.
        unsafe {
            let (x, y) = (w.add(i * 144), a.add(i * 292));
            let (sc, m) = k4_scales_mins(&read_unaligned(x.add(4).cast::<[u8; 12]>()));
            let bsums = read_unaligned(y.add(260).cast::<[i16; 16]>());
            let yq = y.add(4).cast::<i8>();
            let (mut sumi, mut summs) = (0i32, 0i32);
            for c in 0..4 {
                let q0 = vld1q_u8(x.add(16 + 32 * c));
                let q1 = vld1q_u8(x.add(32 + 32 * c));
                let m4 = vdupq_n_u8(0x0F);
                let lo = dot32(vreinterpretq_s8_u8(vandq_u8(q0, m4)), vreinterpretq_s8_u8(vandq_u8(q1, m4)), yq.add(64 * c));
                let hi = dot32(vreinterpretq_s8_u8(vshrq_n_u8::<4>(q0)), vreinterpretq_s8_u8(vshrq_n_u8::<4>(q1)), yq.add(64 * c + 32));
                sumi += i32::from(sc[2 * c]) * lo + i32::from(sc[2 * c + 1]) * hi;
            }
            for k in 0..8 {
                summs += i32::from(m[k]) * (i32::from(bsums[2 * k]) + i32::from(bsums[2 * k + 1]));
            }
            let dy = read_unaligned(y.cast::<f32>());
            sum += dy * load_f16(x) * sumi as f32 - dy * load_f16(x.add(2)) * summs as f32;
        }
    }
    sum
}

/// Q6_K x Q8_K.
///
/// # Safety
///
/// As [`super::DotFn`].
#[target_feature(enable = "neon")]
unsafe fn dot_q6_k(nb: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let mut sum = 0.0f32;
    for i in 0..nb {
        // SAFETY: super-block `i < nb` of both rows is readable; every offset is inside it.
        unsafe {
            let (x, y) = (w.add(i * 210), a.add(i * 292));
            let scales = read_unaligned(x.add(192).cast::<[i8; 16]>());
            let yq = y.add(4).cast::<i8>();
            let m4 = vdupq_n_u8(0x0F);
            let m3 = vdupq_n_u8(0x03);
            let off = vdupq_n_s8(32);
            let mut sumi = 0i32;
            for h in 0..2 {
                for l in 0..2 {
                    // Elements 128h + 32s + 16l + (0..16) for s = 0..4.
                    let ql0 = vld1q_u8(x.add(64 * h + 16 * l));
                    let ql1 = vld1q_u8(x.add(64 * h + 32 + 16 * l));
                    let qh = vld1q_u8(x.add(128 + 32 * h + 16 * l));
                    let q = [
                        vorrq_u8(vandq_u8(ql0, m4), vshlq_n_u8::<4>(vandq_u8(qh, m3))),
                        vorrq_u8(vandq_u8(ql1, m4), vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<2>(qh), m3))),
                        vorrq_u8(vshrq_n_u8::<4>(ql0), vshlq_n_u8::<4>(vandq_u8(vshrq_n_u8::<4>(qh), m3))),
                        vorrq_u8(vshrq_n_u8::<4>(ql1), vshlq_n_u8::<4>(vshrq_n_u8::<6>(qh))),
                    ];
                    for (s, &q) in q.iter().enumerate() {
                        let g = 8 * h + 2 * s + l;
                        let isum = dot16(vsubq_s8(vreinterpretq_s8_u8(q), off), yq.add(128 * h + 32 * s + 16 * l));
                        sumi += i32::from(scales[g]) * isum;
                    }
                }
            }
            sum += read_unaligned(y.cast::<f32>()) * load_f16(x.add(208)) * sumi as f32;
        }
    }
    sum
}

/// F32 x F32 with four accumulators of four lanes.
///
/// # Safety
///
/// As [`super::DotFn`] (`n` is the element count).
#[target_feature(enable = "neon")]
unsafe fn dot_f32(n: usize, w: *const u8, a: *const u8, _aux: *const f32) -> f32 {
    let (w, x) = (w.cast::<f32>(), a.cast::<f32>());
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY: every element read is below `n`; vectors are read with `read_unaligned`, so rows
    // need no alignment.
    unsafe {
        let load = |p: *const f32| read_unaligned(p.cast::<float32x4_t>());
        while i + 16 <= n {
            for (k, acc) in acc.iter_mut().enumerate() {
                *acc = vfmaq_f32(*acc, load(w.add(i + 4 * k)), load(x.add(i + 4 * k)));
            }
            i += 16;
        }
        let mut s = vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])));
        while i < n {
            s += read_unaligned(w.add(i)) * read_unaligned(x.add(i));
            i += 1;
        }
        s
    }
}
