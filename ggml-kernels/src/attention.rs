//! Scaled dot-product attention over a KV cache, with causal, sliding-window and
//! sink-plus-window masks, and the per-row log-sum-exp the lazy-ratio computation needs.
//!
//! The cache is a set of slots; each slot holds one position's keys and values for every KV head
//! and knows its absolute position (`kpos`, negative when empty). Slots need not be in position
//! order (a ring buffer wraps), which is why the mask works on positions, not slot indices.
//! Grouped-query attention: query head `h` reads KV head `h / (n_head / n_head_kv)`.
//!
//! With an f16 cache, the arithmetic is that of llama.cpp's CPU backend without flash attention,
//! which multiplies f16 tensors only with f16 operands: the scaled query is rounded to f16 before
//! its products with the keys, and the softmax weights are rounded to f16 before they weight the
//! values (products of two f16 values are exact in f32; the sums are f32). Without the two
//! roundings, attention outputs differ from llama.cpp's by about 2e-4 of their size, which moves
//! Gemma 3's logits by tenths. With an f32 cache, everything stays f32.

use half::f16;
use rayon::prelude::*;

use crate::matmul::dot_f32;
use crate::ops::softmax_inplace;

/// Keys or values of the cache, `[slot][kv_head][dim]`.
#[derive(Clone, Copy, Debug)]
pub enum KvView<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl KvView<'_> {
    fn len(&self) -> usize {
        match self {
            KvView::F32(s) => s.len(),
            KvView::F16(s) => s.len(),
        }
    }

    /// Whether the view holds f16 values.
    fn is_f16(&self) -> bool {
        matches!(self, KvView::F16(_))
    }

    /// Copies `len` elements starting at `start` into `out` as f32.
    #[inline]
    fn read(&self, start: usize, out: &mut [f32]) {
        match self {
            KvView::F32(s) => out.copy_from_slice(&s[start..start + out.len()]),
            KvView::F16(s) => {
                use half::slice::HalfFloatSliceExt;
                let n = out.len();
                // F16C conversion, eight at a time, where the CPU has it.
                s[start..start + n].convert_to_f32_slice(out);
            }
        }
    }
}

/// Which cached positions a query at position `p` may attend to: `k <= p`, within `span` of `p`
/// if set, and either within `window` of `p` or below `sink`.
///
/// - causal: `window = None`, `span = None`;
/// - native sliding window `w` (Gemma's local layers): `window = Some(w)`, `sink = 0`;
/// - streaming (a lazy full-attention layer): `window = Some(recent)`, `sink > 0`;
/// - streaming form of a native window layer: the intersection of both, `span = Some(w)`: the
///   sinks stay visible only while the native window would see them, so the layer never attends
///   to a position its training never let it see (e.g. the BOS token 600 positions back).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AttnMask {
    /// Only the last `window` positions (`p - k < window`), plus the sinks; `None`: no window.
    pub window: Option<u32>,
    /// Positions below `sink` stay visible whatever the window (attention sinks), within `span`.
    pub sink: u32,
    /// A bound on `p - k` for every key, sinks included (`p - k < span`); `None`: no bound.
    pub span: Option<u32>,
}

impl AttnMask {
    /// Full causal attention.
    pub const CAUSAL: AttnMask = AttnMask { window: None, sink: 0, span: None };

    /// A native sliding window of `w` positions.
    pub const fn sliding(w: u32) -> AttnMask {
        AttnMask { window: Some(w), sink: 0, span: None }
    }

    /// Streaming attention: `sink` first positions plus the last `window`.
    pub const fn streaming(sink: u32, window: u32) -> AttnMask {
        AttnMask { window: Some(window), sink, span: None }
    }

    /// This mask, further limited to the last `span` positions (sinks included).
    pub const fn within(self, span: Option<u32>) -> AttnMask {
        AttnMask { span, ..self }
    }

    #[inline]
    pub fn visible(&self, q: i64, k: i64) -> bool {
        k >= 0
            && k <= q
            && match self.span {
                None => true,
                Some(s) => q - k < s as i64,
            }
            && match self.window {
                None => true,
                Some(w) => q - k < w as i64 || k < self.sink as i64,
            }
    }

    /// The same visibility, for every query position, as a mask without `span`; `None` when the
    /// span matters at some positions only (sinks beyond a native window wider than `window`).
    pub fn without_span(&self) -> Option<AttnMask> {
        match (self.span, self.window) {
            (None, _) => Some(*self),
            (Some(span), None) => Some(AttnMask::sliding(span)),
            (Some(span), Some(w)) if w >= span => Some(AttnMask::sliding(span)),
            (Some(_), Some(_)) if self.sink == 0 => Some(AttnMask { span: None, ..*self }),
            _ => None,
        }
    }

    /// The same visibility, for a query at `q`, as a mask without `span` (what kernels that know
    /// only `window` and `sink` can run); `None` when no such mask exists at `q` (a query that
    /// sees only some of the sinks). `span` with no window is a window of `span`.
    pub fn without_span_at(&self, q: i64) -> Option<AttnMask> {
        let Some(span) = self.span else { return Some(*self) };
        let span = span as i64;
        let w = match self.window {
            None => return Some(AttnMask::sliding(span as u32)),
            Some(w) if w as i64 >= span => return Some(AttnMask::sliding(span as u32)),
            Some(w) => w,
        };
        let sink = self.sink as i64;
        if sink == 0 || q < span {
            // No sinks, or every key up to `q` is within the span: the span bounds nothing.
            Some(AttnMask { span: None, ..*self })
        } else if q - (sink - 1) >= span {
            // Even the last sink is beyond the span: the window alone.
            Some(AttnMask::sliding(w))
        } else {
            None
        }
    }
}

/// Shapes and scale of one attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub n_head: usize,
    pub n_head_kv: usize,
    /// Key (and query) head dimension.
    pub head_dim: usize,
    /// Value head dimension.
    pub head_dim_v: usize,
    /// Multiplies the query-key dot products (usually `1/sqrt(head_dim)`).
    pub scale: f32,
}

/// The straightforward version of [`attention`]: one query head at a time, keys converted as
/// they are read. The fast version is tested against it.
///
/// Attention of `n_q` queries `q` (`[n_q][n_head][head_dim]`, at positions `qpos`) over the cache
/// slots (`k`: `[slot][n_head_kv][head_dim]`, `v`: `[slot][n_head_kv][head_dim_v]`, positions
/// `kpos`), into `out` (`[n_q][n_head][head_dim_v]`). When `lse` is given (`[n_q][n_head]`), it
/// receives each row's log-sum-exp of the scaled, masked scores (`-inf` for a row that sees
/// nothing, whose output is zero).
#[allow(clippy::too_many_arguments)]
pub fn attention_reference(
    s: &AttnShape,
    q: &[f32],
    qpos: &[i64],
    k: KvView<'_>,
    v: KvView<'_>,
    kpos: &[i64],
    mask: AttnMask,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let n_q = qpos.len();
    let n_slots = kpos.len();
    debug_assert!(s.n_head_kv > 0 && s.n_head % s.n_head_kv == 0);
    debug_assert_eq!(q.len(), n_q * s.n_head * s.head_dim);
    debug_assert_eq!(out.len(), n_q * s.n_head * s.head_dim_v);
    debug_assert!(k.len() >= n_slots * s.n_head_kv * s.head_dim);
    debug_assert!(v.len() >= n_slots * s.n_head_kv * s.head_dim_v);
    let group = s.n_head / s.n_head_kv;
    let mut lse_rows: Vec<f32> = vec![0.0; n_q * s.n_head];
    out.par_chunks_mut(s.head_dim_v)
        .zip(lse_rows.par_iter_mut())
        .enumerate()
        .for_each(|(row, (o, l))| {
            let (t, h) = (row / s.n_head, row % s.n_head);
            let kvh = h / group;
            let qrow = &q[(t * s.n_head + h) * s.head_dim..][..s.head_dim];
            let (qrow, scale) = scaled_query(qrow, s.scale, k.is_f16());
            let p = qpos[t];
            let mut scores = Vec::with_capacity(n_slots);
            let mut kbuf = vec![0f32; s.head_dim];
            for (slot, &kp) in kpos.iter().enumerate() {
                if mask.visible(p, kp) {
                    k.read((slot * s.n_head_kv + kvh) * s.head_dim, &mut kbuf);
                    scores.push(dot_f32(&qrow, &kbuf) * scale);
                } else {
                    scores.push(f32::NEG_INFINITY);
                }
            }
            *l = softmax_inplace(&mut scores);
            if v.is_f16() {
                round_to_f16(&mut scores);
            }
            o.iter_mut().for_each(|x| *x = 0.0);
            let mut vbuf = vec![0f32; s.head_dim_v];
            for (slot, &w) in scores.iter().enumerate() {
                if w != 0.0 {
                    v.read((slot * s.n_head_kv + kvh) * s.head_dim_v, &mut vbuf);
                    for (a, &b) in o.iter_mut().zip(&vbuf) {
                        *a += w * b;
                    }
                }
            }
        });
    if let Some(lse) = lse {
        lse.copy_from_slice(&lse_rows);
    }
}

/// Attention of `n_q` queries `q` (`[n_q][n_head][head_dim]`, at positions `qpos`) over the cache
/// slots (`k`: `[slot][n_head_kv][head_dim]`, `v`: `[slot][n_head_kv][head_dim_v]`, positions
/// `kpos`), into `out` (`[n_q][n_head][head_dim_v]`). When `lse` is given (`[n_q][n_head]`), it
/// receives each row's log-sum-exp of the scaled, masked scores (`-inf` for a row that sees
/// nothing, whose output is zero).
///
/// Work is split over (query, KV head) pairs; each task serves the whole group of query heads
/// that share the KV head, so every key and value row is read (and converted from f16) once per
/// group, not once per head. For batches the cache is converted to f32 once up front and shared
/// by every query; for a single query each visible row is converted as it is used.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    s: &AttnShape,
    q: &[f32],
    qpos: &[i64],
    k: KvView<'_>,
    v: KvView<'_>,
    kpos: &[i64],
    mask: AttnMask,
    out: &mut [f32],
    lse: Option<&mut [f32]>,
) {
    let n_q = qpos.len();
    let n_slots = kpos.len();
    debug_assert!(s.n_head_kv > 0 && s.n_head % s.n_head_kv == 0);
    debug_assert_eq!(q.len(), n_q * s.n_head * s.head_dim);
    debug_assert_eq!(out.len(), n_q * s.n_head * s.head_dim_v);
    let group = s.n_head / s.n_head_kv;
    let (d, dv) = (s.head_dim, s.head_dim_v);
    // Batches: the whole cache in f32 once (shared by every query); one query: rows on demand.
    let pre: Option<(Vec<f32>, Vec<f32>)> = (n_q > 1).then(|| {
        let mut kf = vec![0f32; n_slots * s.n_head_kv * d];
        let mut vf = vec![0f32; n_slots * s.n_head_kv * dv];
        k.read(0, &mut kf);
        v.read(0, &mut vf);
        (kf, vf)
    });
    let mut lse_rows = vec![0f32; n_q * s.n_head];
    let pre = pre.as_ref().map(|(kf, vf)| (KvView::F32(kf), KvView::F32(vf)));
    let f16 = (k.is_f16(), v.is_f16());
    out.par_chunks_mut(group * dv).zip(lse_rows.par_chunks_mut(group)).enumerate().for_each(|(task, (o, l))| {
        let (t, g) = (task / s.n_head_kv, task % s.n_head_kv);
        let qs = &q[(t * s.n_head + g * group) * d..][..group * d];
        let (kc, vc) = pre.unwrap_or((k, v));
        attend_group(s, qs, qpos[t], kc, vc, f16, kpos, mask, g, o, l);
    });
    if let Some(lse) = lse {
        lse.copy_from_slice(&lse_rows);
    }
}

/// Query heads `heads` of one query (`q`: `[n_head][head_dim]`, at position `qpos`) as
/// [`attention`] computes them, bit for bit, into `out` (`[heads.len()][head_dim_v]`): a part
/// of a decode step's attention, for the threads of a team to share the heads.
#[allow(clippy::too_many_arguments)]
pub fn attention_heads(
    s: &AttnShape,
    q: &[f32],
    qpos: i64,
    k: KvView<'_>,
    v: KvView<'_>,
    kpos: &[i64],
    mask: AttnMask,
    heads: std::ops::Range<usize>,
    out: &mut [f32],
) {
    debug_assert!(s.n_head_kv > 0 && s.n_head.is_multiple_of(s.n_head_kv) && heads.end <= s.n_head);
    debug_assert_eq!(out.len(), heads.len() * s.head_dim_v);
    let group = s.n_head / s.n_head_kv;
    let (d, dv) = (s.head_dim, s.head_dim_v);
    let mut lse = vec![0f32; group];
    // Each KV head's share of `heads`.
    let mut h = heads.start;
    while h < heads.end {
        let g = h / group;
        let h1 = heads.end.min((g + 1) * group);
        let o = &mut out[(h - heads.start) * dv..(h1 - heads.start) * dv];
        attend_group(s, &q[h * d..h1 * d], qpos, k, v, (k.is_f16(), v.is_f16()), kpos, mask, g, o, &mut lse[..h1 - h]);
        h = h1;
    }
}

/// One query at position `p` over the cache (`k`, `v`: the cache, or its f32 copy, in which case
/// `f16` says whether the cache's keys and values were f16), for consecutive query heads `qs`
/// (`[nh][head_dim]`) of the group that reads KV head `g`: the outputs into `o`
/// (`[nh][head_dim_v]`), each head's log-sum-exp into `l`. Every key and value row is read
/// (converted) once for the heads; each head's arithmetic is independent of the others'.
#[allow(clippy::too_many_arguments)]
fn attend_group(
    s: &AttnShape,
    qs: &[f32],
    p: i64,
    k: KvView<'_>,
    v: KvView<'_>,
    f16: (bool, bool),
    kpos: &[i64],
    mask: AttnMask,
    g: usize,
    o: &mut [f32],
    l: &mut [f32],
) {
    let (d, dv) = (s.head_dim, s.head_dim_v);
    let nh = qs.len() / d;
    let (qs, scale) = scaled_query(qs, s.scale, f16.0);
    let visible: Vec<usize> = (0..kpos.len()).filter(|&slot| mask.visible(p, kpos[slot])).collect();
    // Scores, [nh][visible].
    let nv = visible.len();
    let mut scores = vec![0f32; nh * nv];
    let mut row = vec![0f32; d.max(dv)];
    for (j, &slot) in visible.iter().enumerate() {
        let start = (slot * s.n_head_kv + g) * d;
        let kr: &[f32] = match k {
            KvView::F32(kf) => &kf[start..start + d],
            KvView::F16(_) => {
                k.read(start, &mut row[..d]);
                &row[..d]
            }
        };
        for h in 0..nh {
            scores[h * nv + j] = dot(&qs[h * d..(h + 1) * d], kr) * scale;
        }
    }
    for h in 0..nh {
        l[h] = if nv == 0 { f32::NEG_INFINITY } else { softmax_inplace(&mut scores[h * nv..(h + 1) * nv]) };
    }
    if f16.1 {
        round_to_f16(&mut scores);
    }
    o.iter_mut().for_each(|x| *x = 0.0);
    for (j, &slot) in visible.iter().enumerate() {
        let start = (slot * s.n_head_kv + g) * dv;
        let vr: &[f32] = match v {
            KvView::F32(vf) => &vf[start..start + dv],
            KvView::F16(_) => {
                v.read(start, &mut row[..dv]);
                &row[..dv]
            }
        };
        for h in 0..nh {
            axpy(&mut o[h * dv..(h + 1) * dv], scores[h * nv + j], vr);
        }
    }
}

/// `a . b`, with AVX2+FMA where the CPU has them.
/// The query rows as the key products take them, and the factor of those products: with f16
/// keys the rows times `scale`, each rounded to f16 (llama.cpp converts the scaled query to the
/// cache's type), and 1; with f32 keys the rows as they are, and `scale`.
fn scaled_query(q: &[f32], scale: f32, f16_keys: bool) -> (Vec<f32>, f32) {
    if f16_keys {
        (q.iter().map(|&x| f16::from_f32(x * scale).to_f32()).collect(), 1.0)
    } else {
        (q.to_vec(), scale)
    }
}

/// Rounds softmax weights to f16 (llama.cpp converts them to the f16 cache's type before they
/// weight the values).
fn round_to_f16(w: &mut [f32]) {
    for x in w {
        *x = f16::from_f32(*x).to_f32();
    }
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { simd::dot_avx2(a, b) };
    }
    dot_f32(a, b)
}

/// `y += w * x`.
#[inline]
fn axpy(y: &mut [f32], w: f32, x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd::has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked above).
        return unsafe { simd::axpy_avx2(y, w, x) };
    }
    for (a, &b) in y.iter_mut().zip(x) {
        *a += w * b;
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod simd {
    use std::sync::OnceLock;

    pub fn has_avx2_fma() -> bool {
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"))
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot_avx2(a: &[f32], b: &[f32]) -> f32 {
        let mut acc = [0f32; 16];
        let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
        let (ra, rb) = (ca.remainder(), cb.remainder());
        for (x, y) in ca.zip(cb) {
            for i in 0..16 {
                acc[i] = x[i].mul_add(y[i], acc[i]);
            }
        }
        let mut s: f32 = acc.iter().sum();
        for (x, y) in ra.iter().zip(rb) {
            s = x.mul_add(*y, s);
        }
        s
    }

    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy_avx2(y: &mut [f32], w: f32, x: &[f32]) {
        for (a, &b) in y.iter_mut().zip(x) {
            *a = w.mul_add(b, *a);
        }
    }
}

/// Log-sum-exp of the scaled scores of each query row over the keys `visible(q_pos, k_pos)`
/// admits (`lse`: `[n_q][n_head]`; `-inf` where none is visible). The lazy-ratio computation
/// compares two such sets of rows: all causal keys, and the sink-plus-recent keys.
#[allow(clippy::too_many_arguments)]
pub fn score_lse(
    s: &AttnShape,
    q: &[f32],
    qpos: &[i64],
    k: KvView<'_>,
    kpos: &[i64],
    visible: impl Fn(i64, i64) -> bool + Sync,
    lse: &mut [f32],
) {
    let group = s.n_head / s.n_head_kv;
    let d = s.head_dim;
    debug_assert_eq!(lse.len(), qpos.len() * s.n_head);
    // The cache in f32 once, shared by every row.
    let mut kf = vec![0f32; kpos.len() * s.n_head_kv * d];
    k.read(0, &mut kf);
    lse.par_iter_mut().enumerate().for_each(|(row, l)| {
        let (t, h) = (row / s.n_head, row % s.n_head);
        let kvh = h / group;
        let qrow = &q[(t * s.n_head + h) * d..][..d];
        let mut scores = Vec::with_capacity(kpos.len());
        for (slot, &kp) in kpos.iter().enumerate() {
            if kp >= 0 && visible(qpos[t], kp) {
                let start = (slot * s.n_head_kv + kvh) * d;
                scores.push(dot(qrow, &kf[start..start + d]) * s.scale);
            }
        }
        let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        *l = if max == f32::NEG_INFINITY {
            f32::NEG_INFINITY
        } else {
            max + scores.iter().map(|&x| ((x - max) as f64).exp()).sum::<f64>().ln() as f32
        };
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn score_lse_equals_the_lse_attention_reports() {
        let shape = AttnShape { n_head: 4, n_head_kv: 2, head_dim: 8, head_dim_v: 8, scale: 0.35 };
        let n = 9;
        let val = |i: usize| ((i * 2654435761) % 1000) as f32 / 500.0 - 1.0;
        let q: Vec<f32> = (0..n * 4 * 8).map(val).collect();
        let k: Vec<f32> = (0..n * 2 * 8).map(|i| val(i + 7)).collect();
        let pos: Vec<i64> = (0..n as i64).collect();
        let mask = AttnMask::streaming(2, 3);
        let mut out = vec![0f32; n * 4 * 8];
        let mut lse_a = vec![0f32; n * 4];
        attention(&shape, &q, &pos, KvView::F32(&k), KvView::F32(&k), &pos, mask, &mut out, Some(&mut lse_a));
        let mut lse_b = vec![0f32; n * 4];
        score_lse(&shape, &q, &pos, KvView::F32(&k), &pos, |a, b| mask.visible(a, b), &mut lse_b);
        for (a, b) in lse_a.iter().zip(&lse_b) {
            assert!((a - b).abs() < 1e-5, "{a} {b}");
        }
    }

    #[test]
    fn fast_attention_equals_the_reference() {
        let val = |i: usize| ((i.wrapping_mul(2654435761) >> 7) % 2000) as f32 / 1000.0 - 1.0;
        for (n_head, n_head_kv, d, n_q, n_slots) in [(4, 1, 64, 5, 40), (8, 2, 32, 1, 70), (2, 2, 16, 3, 3), (6, 3, 40, 1, 1)] {
            let shape = AttnShape { n_head, n_head_kv, head_dim: d, head_dim_v: d, scale: 0.3 };
            let q: Vec<f32> = (0..n_q * n_head * d).map(val).collect();
            let kf: Vec<f32> = (0..n_slots * n_head_kv * d).map(|i| val(i + 11)).collect();
            let vf: Vec<f32> = (0..n_slots * n_head_kv * d).map(|i| val(i + 29)).collect();
            let k16: Vec<f16> = kf.iter().map(|&x| f16::from_f32(x)).collect();
            let v16: Vec<f16> = vf.iter().map(|&x| f16::from_f32(x)).collect();
            // Slots hold positions out of order, some empty, as a ring does.
            let kpos: Vec<i64> = (0..n_slots as i64).map(|i| if i % 7 == 3 { -1 } else { (i * 13) % n_slots as i64 }).collect();
            let qpos: Vec<i64> = (0..n_q as i64).map(|t| n_slots as i64 - 1 - t).collect();
            for mask in [AttnMask::CAUSAL, AttnMask::sliding(6), AttnMask::streaming(3, 5), AttnMask::streaming(3, 5).within(Some(12))] {
                for (kv, vv) in [(KvView::F32(&kf), KvView::F32(&vf)), (KvView::F16(&k16), KvView::F16(&v16))] {
                    let mut a = vec![0f32; n_q * n_head * d];
                    let mut b = vec![0f32; n_q * n_head * d];
                    let (mut la, mut lb) = (vec![0f32; n_q * n_head], vec![0f32; n_q * n_head]);
                    attention(&shape, &q, &qpos, kv, vv, &kpos, mask, &mut a, Some(&mut la));
                    attention_reference(&shape, &q, &qpos, kv, vv, &kpos, mask, &mut b, Some(&mut lb));
                    for (x, y) in a.iter().zip(&b).chain(la.iter().zip(&lb)) {
                        assert!((x - y).abs() <= 1e-5 * (1.0 + y.abs()) || (x.is_infinite() && x == y), "{x} vs {y}");
                    }
                }
            }
        }
    }

    #[test]
    fn masks() {
        let swa = AttnMask::sliding(4);
        assert!(swa.visible(10, 7) && !swa.visible(10, 6) && !swa.visible(10, 11));
        let stream = AttnMask::streaming(2, 4);
        assert!(stream.visible(10, 0) && stream.visible(10, 1) && !stream.visible(10, 2) && stream.visible(10, 9));
        assert!(!AttnMask::CAUSAL.visible(3, -1));
        // The streaming form of a native window of 8: sinks only while the window sees them.
        let native_stream = AttnMask::streaming(2, 4).within(Some(8));
        assert!(native_stream.visible(7, 0) && native_stream.visible(8, 1) && !native_stream.visible(8, 0));
        assert!(!native_stream.visible(20, 0) && !native_stream.visible(20, 1) && native_stream.visible(20, 17));
        assert!(!native_stream.visible(20, 16), "the streaming window (4) is smaller than the native one");
        assert_eq!(native_stream.without_span(), None, "sinks seen by early queries only");
        assert_eq!(AttnMask::streaming(2, 8).within(Some(8)).without_span(), Some(AttnMask::sliding(8)));
    }

    #[test]
    fn without_span_at_is_the_same_mask_where_it_exists() {
        let masks = [
            AttnMask::streaming(3, 4).within(Some(9)),
            AttnMask::streaming(1, 4).within(Some(6)),
            AttnMask::streaming(3, 12).within(Some(9)),
            AttnMask::CAUSAL.within(Some(5)),
            AttnMask::sliding(5),
            AttnMask::streaming(2, 5),
        ];
        for m in masks {
            let mut partial = 0;
            for q in 0..40i64 {
                match m.without_span_at(q) {
                    Some(r) => {
                        assert_eq!(r.span, None);
                        for k in -1..45 {
                            assert_eq!(m.visible(q, k), r.visible(q, k), "{m:?} at q {q}, k {k}: {r:?}");
                        }
                    }
                    None => partial += 1,
                }
            }
            if let Some(r) = m.without_span() {
                for q in 0..40i64 {
                    for k in -1..45 {
                        assert_eq!(m.visible(q, k), r.visible(q, k), "{m:?} at q {q}, k {k}: {r:?}");
                    }
                }
            }
            // Only the queries that see some but not all sinks have no equivalent.
            assert!(partial <= m.sink.saturating_sub(1) as usize, "{m:?}: {partial}");
        }
    }

    #[test]
    fn f16_cache_rounds_the_scaled_query_and_the_weights_to_f16() {
        let shape = AttnShape { n_head: 1, n_head_kv: 1, head_dim: 4, head_dim_v: 4, scale: 0.3 };
        let q = [0.1234f32, -1.777, 0.0051, 2.5];
        let kf = [0.5f32, 0.25, -1.0, 0.125, -0.75, 1.5, 0.3, 0.2];
        let vf = [1.0f32, -2.0, 0.33, 4.0, -0.5, 0.7, 2.2, -1.1];
        let (k16, v16): (Vec<f16>, Vec<f16>) = (kf.iter().map(|&x| f16::from_f32(x)).collect(), vf.iter().map(|&x| f16::from_f32(x)).collect());
        let r = |x: f32| f16::from_f32(x).to_f32();
        // By hand: f16 scaled query, f16 keys, softmax, f16 weights, f16 values.
        let s: Vec<f32> = (0..2).map(|j| (0..4).map(|i| r(q[i] * 0.3) * r(kf[j * 4 + i])).sum()).collect();
        let m = s[0].max(s[1]);
        let e: Vec<f32> = s.iter().map(|x| (x - m).exp()).collect();
        let p: Vec<f32> = e.iter().map(|x| r(x / (e[0] + e[1]))).collect();
        let want: Vec<f32> = (0..4).map(|i| p[0] * r(vf[i]) + p[1] * r(vf[4 + i])).collect();
        for f in [attention, attention_reference] {
            let mut out = [0f32; 4];
            f(&shape, &q, &[1], KvView::F16(&k16), KvView::F16(&v16), &[0, 1], AttnMask::CAUSAL, &mut out, None);
            for (a, b) in out.iter().zip(&want) {
                assert!((a - b).abs() <= 2e-6 * b.abs().max(1.0), "{out:?} vs {want:?}");
            }
        }
    }

    #[test]
    fn single_visible_key_returns_its_value() {
        let shape = AttnShape { n_head: 2, n_head_kv: 1, head_dim: 2, head_dim_v: 2, scale: 1.0 };
        let q = [1.0, 0.0, 0.0, 1.0];
        let k = [1.0f32, 1.0, 5.0, 5.0];
        let v = [3.0f32, 4.0, 9.0, 9.0];
        let mut out = [0f32; 4];
        let mut lse = [0f32; 2];
        // Slot 1 holds position 7, which the query at position 0 cannot see.
        attention(&shape, &q, &[0], KvView::F32(&k), KvView::F32(&v), &[0, 7], AttnMask::CAUSAL, &mut out, Some(&mut lse));
        assert_eq!(out, [3.0, 4.0, 3.0, 4.0]);
        assert!((lse[0] - 1.0).abs() < 1e-6);
    }
}
