//! Scaled dot-product attention over a KV cache, with causal, sliding-window and
//! sink-plus-window masks, and the per-row log-sum-exp the lazy-ratio computation needs.
//!
//! The cache is a set of slots; each slot holds one position's keys and values for every KV head
//! and knows its absolute position (`kpos`, negative when empty). Slots need not be in position
//! order (a ring buffer wraps), which is why the mask works on positions, not slot indices.
//! Grouped-query attention: query head `h` reads KV head `h / (n_head / n_head_kv)`.

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

    /// Copies `len` elements starting at `start` into `out` as f32.
    #[inline]
    fn read(&self, start: usize, out: &mut [f32]) {
        match self {
            KvView::F32(s) => out.copy_from_slice(&s[start..start + out.len()]),
            KvView::F16(s) => {
                let n = out.len();
                for (o, v) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = v.to_f32();
                }
            }
        }
    }
}

/// Which cached positions a query at position `p` may attend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct AttnMask {
    /// Only the last `window` positions (`p - k < window`); `None`: no window.
    pub window: Option<u32>,
    /// Positions below `sink` stay visible whatever the window (attention sinks).
    pub sink: u32,
}

impl AttnMask {
    /// Full causal attention.
    pub const CAUSAL: AttnMask = AttnMask { window: None, sink: 0 };

    #[inline]
    pub fn visible(&self, q: i64, k: i64) -> bool {
        k >= 0
            && k <= q
            && match self.window {
                None => true,
                Some(w) => q - k < w as i64 || k < self.sink as i64,
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

/// Attention of `n_q` queries `q` (`[n_q][n_head][head_dim]`, at positions `qpos`) over the cache
/// slots (`k`: `[slot][n_head_kv][head_dim]`, `v`: `[slot][n_head_kv][head_dim_v]`, positions
/// `kpos`), into `out` (`[n_q][n_head][head_dim_v]`). When `lse` is given (`[n_q][n_head]`), it
/// receives each row's log-sum-exp of the scaled, masked scores (`-inf` for a row that sees
/// nothing, whose output is zero).
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
            let p = qpos[t];
            let mut scores = Vec::with_capacity(n_slots);
            let mut kbuf = vec![0f32; s.head_dim];
            for (slot, &kp) in kpos.iter().enumerate() {
                if mask.visible(p, kp) {
                    k.read((slot * s.n_head_kv + kvh) * s.head_dim, &mut kbuf);
                    scores.push(dot_f32(qrow, &kbuf) * s.scale);
                } else {
                    scores.push(f32::NEG_INFINITY);
                }
            }
            *l = softmax_inplace(&mut scores);
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
    debug_assert_eq!(lse.len(), qpos.len() * s.n_head);
    lse.par_iter_mut().enumerate().for_each(|(row, l)| {
        let (t, h) = (row / s.n_head, row % s.n_head);
        let kvh = h / group;
        let qrow = &q[(t * s.n_head + h) * s.head_dim..][..s.head_dim];
        let mut kbuf = vec![0f32; s.head_dim];
        let mut scores = Vec::with_capacity(kpos.len());
        for (slot, &kp) in kpos.iter().enumerate() {
            if kp >= 0 && visible(qpos[t], kp) {
                k.read((slot * s.n_head_kv + kvh) * s.head_dim, &mut kbuf);
                scores.push(dot_f32(qrow, &kbuf) * s.scale);
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
        let mask = AttnMask { window: Some(3), sink: 2 };
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
    fn masks() {
        let swa = AttnMask { window: Some(4), sink: 0 };
        assert!(swa.visible(10, 7) && !swa.visible(10, 6) && !swa.visible(10, 11));
        let stream = AttnMask { window: Some(4), sink: 2 };
        assert!(stream.visible(10, 0) && stream.visible(10, 1) && !stream.visible(10, 2) && stream.visible(10, 9));
        assert!(!AttnMask::CAUSAL.visible(3, -1));
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
