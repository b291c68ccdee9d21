//! LightTransfer-Test on the GPU: the lazy ratio of each candidate layer, measured in the last
//! batch of the prompt the probe watches, and the chosen layers cut to streaming afterwards.
//!
//! The ratio is the CPU's ([`crate::lighttransfer::lazy_ratio`]): for each of the prompt's last
//! `w_last` queries and each head, the share of its attention (under the layer's own mask) that
//! falls on the sink keys (`k < sink`) and the recent ones (`k >= end - window`), averaged in
//! probability space. Here it comes from log-sum-exps of the decode attention kernel over all the
//! measured queries at once: one under the layer's mask, and (full-attention layers) one over the
//! keys a lazy layer drops, `[sink, end - window)`, which lie before every measured query from
//! `end - window - 1` on, so `share kept = 1 - exp(lse_dropped - lse_full)` (an earlier query,
//! when `w_last > window`, keeps only the sinks: one more log-sum-exp over them). A native sliding-window layer bounds its keys
//! by each query's position, so there the kept keys' mask is applied one query at a time.
//!
//! Unlike the CPU's layer-major prefill, every layer stays full until the prompt is done (the
//! GPU allocates its caches up front), then the chosen layers get streaming caches of
//! `sink + window` slots (plus the batch margin) holding each sequence's sinks and last
//! `window` positions, and their full caches are freed.

use engine_cuda::DeviceBuffer;
use ggml_kernels::attention::{AttnMask, AttnShape};

use super::{layout, Batch, GpuError, GpuLayerCache, GpuModel, GpuSession};
use crate::lighttransfer::LazyProbe;
use crate::model::kv_cache::{slot_of, LayerKind};

/// Measures layer `il`'s lazy ratio, when it is a candidate, from the last queries of `b` (the
/// batch that ends sequence `seq`'s prompt at `probe.end`), and records it in the probe.
pub(super) fn measure(
    m: &GpuModel,
    kv: &GpuLayerCache,
    b: &Batch,
    seq: usize,
    il: usize,
    probe: &mut LazyProbe,
) -> Result<(), GpuError> {
    if !probe.stream.is_candidate(kv.kind, probe.end) {
        return Ok(());
    }
    let t0 = std::time::Instant::now();
    let (be, c) = (&m.be, &m.cfg);
    let shape = AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, head_dim_v: c.head_dim_v, scale: c.attn_scale };
    let n = b.n;
    let pos0 = probe.end - n;
    let first = probe.end.saturating_sub(probe.w_last).max(pos0);
    let q_row = c.n_head * c.head_dim;
    let native = kv.kind.mask();
    if matches!(kv.kind, LayerKind::Streaming { .. }) {
        return Err(GpuError::Unsupported(format!("LightTransfer-Test of layer {il}, which already streams")));
    }
    let w = probe.end - first;
    let end = probe.end;
    let (sink, window) = (probe.stream.sink as usize, probe.stream.window as usize);
    // The measured queries, their positions and their sequence's first slot.
    let mut qw: DeviceBuffer<f32> = be.alloc(w * q_row)?;
    be.copy_range(&b.q, (first - pos0) * q_row, &mut qw)?;
    let own: Vec<i32> = (first..end).map(|p| p as i32).collect();
    let qpos = be.upload(&own)?;
    let base = be.upload(&vec![(seq * kv.n_slots) as i32; w])?;
    let mut part: DeviceBuffer<f32> = be.alloc(engine_cuda::CudaBackend::attention_partials_batch(&shape, kv.n_slots, w))?;
    let mut out: DeviceBuffer<f32> = be.alloc(w * c.n_head * c.head_dim_v)?;
    let mut lse: DeviceBuffer<f32> = be.alloc(w * c.n_head)?;
    be.attention_decode_batch(&shape, &qw, &qpos, &base, kv.n_slots, &kv.k, &kv.v, &kv.pos, native, false, &mut part, &mut out, &mut lse, None)?;
    let full = be.download(&lse)?;
    let mut sum = 0f64;
    if native == AttnMask::CAUSAL {
        // The keys a lazy layer drops, [sink, end - window), come before every measured query
        // at or after end - window - 1, so one mask serves all of those: seen from position
        // end - window - 1 with a window of end - window - sink positions, and their share kept
        // is 1 - exp(lse_dropped - lse_full). An earlier query (w_last > window) keeps only the
        // sinks: seen from position sink - 1, share exp(lse_sinks - lse_full).
        let mut lse_from = |from: usize, mask: AttnMask| -> Result<Vec<f32>, GpuError> {
            let at = be.upload(&vec![from as i32; w])?;
            be.attention_decode_batch(&shape, &qw, &at, &base, kv.n_slots, &kv.k, &kv.v, &kv.pos, mask, false, &mut part, &mut out, &mut lse, None)?;
            Ok(be.download(&lse)?)
        };
        let dropped = lse_from(end - window - 1, AttnMask { window: Some((end - window - sink) as u32), sink: 0, span: None })?;
        let sinks = if sink > 0 { lse_from(sink - 1, AttnMask::CAUSAL)? } else { vec![f32::NEG_INFINITY; w * c.n_head] };
        for (row, &f) in full.iter().enumerate() {
            let qp = first + row / c.n_head;
            sum += if f == f32::NEG_INFINITY {
                1.0
            } else if qp + 1 >= end - window {
                (1.0 - ((dropped[row] - f) as f64).exp()).max(0.0)
            } else {
                ((sinks[row] - f) as f64).exp()
            };
        }
    } else {
        // A native sliding window bounds the keys by each query's position: the kept keys'
        // mask (the sinks within the native window, and a window ending at the query that
        // starts at end - window), one query at a time.
        let mut q1: DeviceBuffer<f32> = be.alloc(q_row)?;
        let mut qpos1: DeviceBuffer<i32> = be.alloc(1)?;
        let base1 = be.upload(&[(seq * kv.n_slots) as i32])?;
        let mut out1: DeviceBuffer<f32> = be.alloc(c.n_head * c.head_dim_v)?;
        let mut lse1: DeviceBuffer<f32> = be.alloc(c.n_head)?;
        for (j, qp) in (first..end).enumerate() {
            be.copy_range(&qw, j * q_row, &mut q1)?;
            be.upload_into(&[qp as i32], &mut qpos1)?;
            let keep_window = (window as i64 - (end as i64 - 1 - qp as i64)).max(0) as u32;
            let keep = AttnMask { window: Some(keep_window), sink: sink as u32, span: native.span.or(native.window) };
            be.attention_decode_batch(&shape, &q1, &qpos1, &base1, kv.n_slots, &kv.k, &kv.v, &kv.pos, keep, false, &mut part, &mut out1, &mut lse1, None)?;
            let kept = be.download(&lse1)?;
            for (&f, &k) in full[j * c.n_head..(j + 1) * c.n_head].iter().zip(&kept) {
                sum += if f == f32::NEG_INFINITY { 1.0 } else { ((k - f) as f64).exp() };
            }
        }
    }
    let rows = w * c.n_head;
    let ratio = if rows == 0 { 1.0 } else { (sum / rows as f64) as f32 };
    probe.record(il, ratio);
    probe.elapsed += t0.elapsed();
    Ok(())
}

impl GpuSession<'_> {
    /// Cuts the layers the probe made lazy (and that are not streaming yet) to streaming caches.
    pub(super) fn cut_chosen_layers(&mut self) -> Result<(), GpuError> {
        let Some(probe) = self.probe.as_ref() else { return Ok(()) };
        let t0 = std::time::Instant::now();
        let (stream, chosen) = (probe.stream, probe.made_lazy.clone());
        let mut cut = false;
        for il in chosen {
            if matches!(self.layers[il].kind, LayerKind::Streaming { .. }) {
                continue;
            }
            let kind = stream.kind(self.layers[il].kind);
            self.cut_layer(il, kind, stream.sink as usize, stream.window as usize)?;
            cut = true;
        }
        if cut {
            // The batches' slot maps and the decode graph hold the old layouts and buffers.
            self.batches.clear();
            self.graph = None;
        }
        if let Some(p) = self.probe.as_mut() {
            p.elapsed += t0.elapsed();
        }
        Ok(())
    }

    /// Replaces layer `il`'s cache by one of `kind` holding, for every sequence, the positions
    /// below `sink` and the last `window` positions it holds now.
    fn cut_layer(&mut self, il: usize, kind: LayerKind, sink: usize, window: usize) -> Result<(), GpuError> {
        let be = &self.model.be;
        let c = &self.model.cfg;
        let (k_row, v_row) = (c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
        let n_seq = self.past.len();
        let old = &self.layers[il];
        let (n_slots, sink_slots) = layout(kind, self.n_ctx, self.n_batch);
        let old_pos = be.download(&old.pos)?;
        let mut k: DeviceBuffer<half::f16> = be.alloc(n_seq * n_slots * k_row)?;
        let mut v: DeviceBuffer<half::f16> = be.alloc(n_seq * n_slots * v_row)?;
        let mut pos = vec![-1i32; n_seq * n_slots];
        for (s, &end) in self.past.iter().enumerate() {
            // (old slot, new slot) of each kept position the old cache still holds, in runs of
            // consecutive slots on both sides.
            let kept = (0..sink.min(end)).chain(end.saturating_sub(window).max(sink.min(end))..end);
            let mut runs: Vec<(usize, usize, usize)> = Vec::new();
            for p in kept {
                let from = s * old.n_slots + old.slot(p);
                if old_pos[from] != p as i32 {
                    continue;
                }
                let to = s * n_slots + slot_of(p, sink_slots, n_slots);
                pos[to] = p as i32;
                match runs.last_mut() {
                    Some((f, t, len)) if *f + *len == from && *t + *len == to => *len += 1,
                    _ => runs.push((from, to, 1)),
                }
            }
            for (from, to, len) in runs {
                be.copy_between(&old.k, from * k_row, &mut k, to * k_row, len * k_row)?;
                be.copy_between(&old.v, from * v_row, &mut v, to * v_row, len * v_row)?;
            }
        }
        let pos = be.upload(&pos)?;
        let group = match self.groups.iter().position(|&g| g == (n_slots, sink_slots)) {
            Some(g) => g,
            None => {
                self.groups.push((n_slots, sink_slots));
                self.groups.len() - 1
            }
        };
        be.synchronize()?;
        self.layers[il] = GpuLayerCache { kind, sink_slots, n_slots, k, v, pos, slot_group: group };
        Ok(())
    }
}
