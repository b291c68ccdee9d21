//! The KV cache: allocated once per layer, sized by what each layer can ever attend to.
//!
//! A layer's cache is a set of slots. Slot `s` holds the keys and values of one position for
//! every KV head and remembers that position (`pos[s]`, -1 when empty), so the attention kernel
//! masks by position and the slots may wrap. Where a position goes:
//!
//! - full attention: slot = position, `n_ctx` slots;
//! - native sliding window `w`: a ring of `w + n_batch` slots (the batch margin lets a whole
//!   batch be written before it is attended to without overwriting a key an earlier query of the
//!   same batch still needs), or `n_ctx` if smaller;
//! - streaming (LightTransfer's lazy layers): `sink` fixed slots for the first positions, then a
//!   ring for the recent window, `sink + window` slots in all. A lazy layer that was a native
//!   sliding window keeps that window as an outer bound on everything it sees, sinks included
//!   (the intersection of its own mask with sink + recent; see [`LayerKind::Streaming`]).

use std::sync::atomic::{AtomicU64, Ordering};

use half::f16;

use ggml_kernels::attention::{AttnMask, KvView};

use super::ModelError;

/// Element type of the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    #[default]
    F16,
    F32,
}

impl KvType {
    pub fn bytes(self) -> usize {
        match self {
            KvType::F16 => 2,
            KvType::F32 => 4,
        }
    }
}

/// What a layer attends to, and so how much cache it keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    Full,
    /// The model's own sliding window.
    Window { window: u32 },
    /// A lazy layer run as streaming attention: `sink` first positions plus the last `window`.
    /// `native_window` is the layer's own sliding window when it has one: streaming can only take
    /// keys away from what the layer was trained to see, so the sinks stay visible only while
    /// that window reaches them (with `window` below it, the layer in effect runs a smaller
    /// window, with sinks for its first `native_window` queries).
    Streaming { sink: u32, window: u32, native_window: Option<u32> },
}

impl LayerKind {
    pub fn mask(self) -> AttnMask {
        match self {
            LayerKind::Full => AttnMask::CAUSAL,
            LayerKind::Window { window } => AttnMask::sliding(window),
            LayerKind::Streaming { sink, window, native_window } => AttnMask::streaming(sink, window).within(native_window),
        }
    }

    /// The streaming form of a layer of this kind: `sink` first positions plus the last
    /// `window`, within the layer's native window if it has one.
    pub fn streaming(self, sink: u32, window: u32) -> LayerKind {
        let native_window = match self {
            LayerKind::Full => None,
            LayerKind::Window { window } => Some(window),
            LayerKind::Streaming { native_window, .. } => native_window,
        };
        LayerKind::Streaming { sink, window, native_window }
    }

    pub fn label(self) -> &'static str {
        match self {
            LayerKind::Full => "full",
            LayerKind::Window { .. } => "sliding-window",
            LayerKind::Streaming { .. } => "streaming",
        }
    }
}

enum Store {
    F16(Vec<f16>),
    F32(Vec<f32>),
}

impl Store {
    fn new(ty: KvType, n: usize) -> Store {
        match ty {
            KvType::F16 => Store::F16(vec![f16::ZERO; n]),
            KvType::F32 => Store::F32(vec![0.0; n]),
        }
    }

    /// A store with nothing allocated yet.
    fn empty(ty: KvType) -> Store {
        Store::new(ty, 0)
    }

    fn len(&self) -> usize {
        match self {
            Store::F16(d) => d.len(),
            Store::F32(d) => d.len(),
        }
    }

    fn write(&mut self, start: usize, src: &[f32]) {
        match self {
            Store::F16(d) => d[start..start + src.len()].iter_mut().zip(src).for_each(|(o, &v)| *o = f16::from_f32(v)),
            Store::F32(d) => d[start..start + src.len()].copy_from_slice(src),
        }
    }

    fn read(&self, start: usize, out: &mut [f32]) {
        match self {
            Store::F16(d) => {
                let n = out.len();
                out.iter_mut().zip(&d[start..start + n]).for_each(|(o, v)| *o = v.to_f32())
            }
            Store::F32(d) => {
                let n = out.len();
                out.copy_from_slice(&d[start..start + n])
            }
        }
    }

    fn view(&self) -> KvView<'_> {
        match self {
            Store::F16(d) => KvView::F16(d),
            Store::F32(d) => KvView::F32(d),
        }
    }
}

/// KV bytes that live caches have promised to layers not yet allocated (a layer allocates at its
/// first write). A new cache is admitted against the memory the system reports as available
/// minus these, so several sessions together cannot promise more memory than there is.
static PROMISED: AtomicU64 = AtomicU64::new(0);

/// One layer's cache. Its keys and values are allocated when the first position is written
/// (so a layer-major prefill holds only the layers it has reached); the positions at once.
pub struct LayerCache {
    pub kind: LayerKind,
    /// Slots kept before the ring (streaming layers' sinks).
    sink_slots: usize,
    n_slots: usize,
    /// Elements of one slot's keys (`n_head_kv * head_dim`) and values.
    k_row: usize,
    v_row: usize,
    k: Store,
    v: Store,
    pos: Vec<i64>,
    ty: KvType,
    /// Whether this layer's bytes are still counted in [`PROMISED`] (not yet allocated).
    promised: bool,
}

impl Drop for LayerCache {
    fn drop(&mut self) {
        self.keep_promise();
    }
}

impl LayerCache {
    /// Takes this layer's bytes out of [`PROMISED`] (when they are allocated or given up).
    fn keep_promise(&mut self) {
        if std::mem::take(&mut self.promised) {
            PROMISED.fetch_sub(self.bytes() as u64, Ordering::Relaxed);
        }
    }

    fn slot(&self, pos: usize) -> usize {
        slot_of(pos, self.sink_slots, self.n_slots)
    }

    /// Stores the keys and values of consecutive positions `pos0..` (`k`: `[n][k_row]`).
    pub fn write(&mut self, pos0: usize, k: &[f32], v: &[f32]) {
        if self.k.len() == 0 {
            self.k = Store::new(self.ty, self.n_slots * self.k_row);
            self.v = Store::new(self.ty, self.n_slots * self.v_row);
            self.keep_promise();
        }
        let n = k.len() / self.k_row;
        debug_assert_eq!(v.len(), n * self.v_row);
        for i in 0..n {
            let s = self.slot(pos0 + i);
            self.k.write(s * self.k_row, &k[i * self.k_row..(i + 1) * self.k_row]);
            self.v.write(s * self.v_row, &v[i * self.v_row..(i + 1) * self.v_row]);
            self.pos[s] = (pos0 + i) as i64;
        }
    }

    pub fn keys(&self) -> KvView<'_> {
        self.k.view()
    }

    pub fn values(&self) -> KvView<'_> {
        self.v.view()
    }

    /// Position held by each slot (-1: empty).
    pub fn positions(&self) -> &[i64] {
        &self.pos
    }

    pub fn n_slots(&self) -> usize {
        self.n_slots
    }

    /// Bytes of keys and values this layer holds once written to (its size).
    pub fn bytes(&self) -> usize {
        self.n_slots * (self.k_row + self.v_row) * self.ty.bytes()
    }

    /// Bytes of keys and values allocated now (0 until the first write).
    pub fn resident_bytes(&self) -> usize {
        (self.k.len() + self.v.len()) * self.ty.bytes()
    }

    fn clear(&mut self) {
        self.pos.iter_mut().for_each(|p| *p = -1);
    }

    /// The keys and values of every held slot as f32, with their positions.
    pub fn snapshot(&self) -> (Vec<f32>, Vec<f32>, Vec<i64>) {
        let held: Vec<usize> = (0..self.n_slots).filter(|&s| self.pos[s] >= 0).collect();
        let mut k = vec![0f32; held.len() * self.k_row];
        let mut v = vec![0f32; held.len() * self.v_row];
        for (i, &s) in held.iter().enumerate() {
            self.k.read(s * self.k_row, &mut k[i * self.k_row..(i + 1) * self.k_row]);
            self.v.read(s * self.v_row, &mut v[i * self.v_row..(i + 1) * self.v_row]);
        }
        (k, v, held.iter().map(|&s| self.pos[s]).collect())
    }

    /// A streaming copy of this layer ([`LayerKind::streaming`]): its sink positions and its most
    /// recent `window` positions, in a cache of exactly `sink + window` slots. The full cache is
    /// freed when the caller replaces this layer with the copy.
    pub fn to_streaming(&self, sink: u32, window: u32) -> LayerCache {
        let kind = self.kind.streaming(sink, window);
        let n_slots = (sink + window) as usize;
        let mut out = LayerCache {
            kind,
            sink_slots: (sink as usize).min(n_slots.saturating_sub(1)),
            n_slots,
            k_row: self.k_row,
            v_row: self.v_row,
            k: Store::new(self.ty, n_slots * self.k_row),
            v: Store::new(self.ty, n_slots * self.v_row),
            pos: vec![-1; n_slots],
            ty: self.ty,
            promised: false,
        };
        let newest = self.pos.iter().copied().max().unwrap_or(-1);
        let mut order: Vec<usize> = (0..self.n_slots).filter(|&s| self.pos[s] >= 0).collect();
        order.sort_by_key(|&s| self.pos[s]);
        let (mut k, mut v) = (vec![0f32; self.k_row], vec![0f32; self.v_row]);
        for s in order {
            let p = self.pos[s];
            if p < sink as i64 || p > newest - window as i64 {
                self.k.read(s * self.k_row, &mut k);
                self.v.read(s * self.v_row, &mut v);
                out.write(p as usize, &k, &v);
            }
        }
        out
    }

    /// Forgets positions `n..`. Returns false when a position that the next query (at `n`)
    /// must see was already overwritten by the ring, so the layer cannot go back that far.
    fn truncate(&mut self, n: usize) -> bool {
        let n = n as i64;
        self.pos.iter_mut().filter(|p| **p >= n).for_each(|p| *p = -1);
        let mask = self.kind.mask();
        let held = self.pos.iter().filter(|&&p| p >= 0 && mask.visible(n, p)).count() as i64;
        let needed = (0..n).filter(|&p| mask.visible(n, p)).count() as i64;
        held == needed
    }
}

/// Slots and sink slots a layer of `kind` keeps for `n_ctx` positions written in batches of up to
/// `n_batch` tokens: a full layer every position; a native window its window plus a batch (a
/// batch is written before it is attended to); a streaming layer its sinks and window plus
/// `stream_margin` (0 on the CPU, which attends to a batch before storing it; `n_batch` on the
/// GPU, which stores first). Never more than `n_ctx`.
pub fn layer_slots(kind: LayerKind, n_ctx: usize, n_batch: usize, stream_margin: usize) -> (usize, usize) {
    match kind {
        LayerKind::Full => (n_ctx, 0),
        LayerKind::Window { window } => ((window as usize).saturating_add(n_batch).min(n_ctx), 0),
        LayerKind::Streaming { sink, window, .. } => {
            let n = (sink as usize).saturating_add(window as usize).saturating_add(stream_margin).min(n_ctx);
            (n, (sink as usize).min(n.saturating_sub(1)))
        }
    }
}

/// The slot that holds position `pos` in a run of `n_slots` slots whose first `sink_slots` keep
/// the first positions and the rest are a ring.
pub fn slot_of(pos: usize, sink_slots: usize, n_slots: usize) -> usize {
    if pos < sink_slots {
        pos
    } else {
        sink_slots + (pos - sink_slots) % (n_slots - sink_slots)
    }
}

/// Shape of the cache to allocate.
#[derive(Clone, Debug)]
pub struct KvCacheParams {
    pub n_ctx: usize,
    /// Largest number of tokens written in one forward call.
    pub n_batch: usize,
    pub ty: KvType,
    pub k_row: usize,
    pub v_row: usize,
}

/// Every layer's cache.
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub n_ctx: usize,
    /// When set, the forward pass measures each layer's lazy ratio at the end of the prompt
    /// (and, in LightTransfer-Test mode, turns layers lazy).
    pub probe: Option<crate::lighttransfer::LazyProbe>,
    /// Largest allocation seen (see [`KvCache::peak_bytes`]).
    peak: usize,
}

impl KvCache {
    /// Makes the cache (each layer allocates at its first write). Errors when it would not fit
    /// in `max_bytes` less what other live caches have promised and not yet allocated.
    pub fn new(p: &KvCacheParams, kinds: &[LayerKind], max_bytes: Option<u64>) -> Result<KvCache, ModelError> {
        let slots = |kind: LayerKind| layer_slots(kind, p.n_ctx, p.n_batch, 0);
        let need: u64 = kinds
            .iter()
            .map(|&k| slots(k).0 as u64 * (p.k_row + p.v_row) as u64 * p.ty.bytes() as u64)
            .sum();
        if let Some(avail) = max_bytes {
            let avail = avail.saturating_sub(PROMISED.load(Ordering::Relaxed));
            if need > avail {
                return Err(ModelError::OutOfMemory { what: "KV cache", need, avail });
            }
        }
        let layers = kinds
            .iter()
            .map(|&kind| {
                let (n_slots, sink_slots) = slots(kind);
                LayerCache {
                    kind,
                    sink_slots,
                    n_slots,
                    k_row: p.k_row,
                    v_row: p.v_row,
                    k: Store::empty(p.ty),
                    v: Store::empty(p.ty),
                    pos: vec![-1; n_slots],
                    ty: p.ty,
                    promised: false,
                }
            })
            .collect::<Vec<LayerCache>>();
        // Promised from here on; each layer gives its share back when it allocates or drops.
        let mut layers = layers;
        for l in &mut layers {
            if l.bytes() > 0 {
                PROMISED.fetch_add(l.bytes() as u64, Ordering::Relaxed);
                l.promised = true;
            }
        }
        Ok(KvCache { layers, n_ctx: p.n_ctx, probe: None, peak: 0 })
    }

    /// Bytes of keys and values allocated now, every layer together.
    pub fn resident_bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::resident_bytes).sum()
    }

    /// The most [`KvCache::resident_bytes`] seen since the cache was made or
    /// [`KvCache::reset_peak`] (sampled after every layer's write of a forward call).
    pub fn peak_bytes(&self) -> usize {
        self.peak.max(self.resident_bytes())
    }

    pub fn reset_peak(&mut self) {
        self.peak = self.resident_bytes();
    }

    /// Records the bytes allocated now in the peak.
    pub(crate) fn note_resident(&mut self) {
        self.peak = self.peak.max(self.resident_bytes());
    }

    /// Forgets every position (the allocation stays).
    pub fn clear(&mut self) {
        self.layers.iter_mut().for_each(LayerCache::clear);
    }

    pub fn bytes(&self) -> usize {
        self.layers.iter().map(LayerCache::bytes).sum()
    }

    /// Forgets positions `n..` in every layer; false (with the cache cleared) when some layer
    /// can no longer serve position `n`, in which case the caller must evaluate from scratch.
    pub fn truncate(&mut self, n: usize) -> bool {
        let mut ok = true;
        for l in &mut self.layers {
            ok &= l.truncate(n);
        }
        if !ok {
            self.clear();
        }
        ok
    }

    /// Bytes by layer kind label, in a fixed order.
    pub fn bytes_by_kind(&self) -> Vec<(&'static str, usize, usize)> {
        let mut out: Vec<(&'static str, usize, usize)> = Vec::new();
        for l in &self.layers {
            let label = l.kind.label();
            match out.iter_mut().find(|(k, _, _)| *k == label) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += l.bytes();
                }
                None => out.push((label, 1, l.bytes())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> KvCacheParams {
        KvCacheParams { n_ctx: 100, n_batch: 8, ty: KvType::F32, k_row: 2, v_row: 2 }
    }

    #[test]
    fn sizes_by_kind() {
        let kinds = [
            LayerKind::Full,
            LayerKind::Window { window: 16 },
            LayerKind::Streaming { sink: 4, window: 12, native_window: None },
            LayerKind::Window { window: 16 }.streaming(4, 12),
        ];
        let c = KvCache::new(&params(), &kinds, None).unwrap();
        assert_eq!(c.layers[0].n_slots(), 100);
        assert_eq!(c.layers[1].n_slots(), 24);
        assert_eq!(c.layers[2].n_slots(), 16, "a streaming layer holds exactly sink + window");
        assert_eq!(c.layers[3].n_slots(), 16, "so does the streaming form of a native window layer");
        assert_eq!(c.bytes(), (100 + 24 + 16 + 16) * 4 * 4);
    }

    #[test]
    fn streaming_ring_keeps_sinks_and_recent_window() {
        let kinds = [LayerKind::Streaming { sink: 2, window: 3, native_window: None }];
        let mut c = KvCache::new(&params(), &kinds, None).unwrap();
        for p in 0..10 {
            c.layers[0].write(p, &[p as f32; 2], &[p as f32; 2]);
        }
        let mut held: Vec<i64> = c.layers[0].positions().to_vec();
        held.sort();
        assert_eq!(held, [0, 1, 7, 8, 9]);
    }

    #[test]
    fn truncate_goes_back_while_the_ring_still_holds_the_window() {
        let kinds = [LayerKind::Full, LayerKind::Window { window: 4 }];
        let mut c = KvCache::new(&params(), &kinds, None).unwrap();
        for p in 0..20 {
            c.layers[0].write(p, &[0.0; 2], &[0.0; 2]);
            c.layers[1].write(p, &[0.0; 2], &[0.0; 2]);
        }
        // The ring has 4 + 8 slots: positions 8..20 are held; going back to 15 needs 12..15.
        assert!(c.truncate(15));
        assert!(c.layers[0].positions().iter().all(|&p| p < 15));
        // Going back to 9 needs positions 6..9, which the ring has overwritten.
        assert!(!c.truncate(9));
        assert!(c.layers[0].positions().iter().all(|&p| p < 0), "cleared when it cannot truncate");
    }

    #[test]
    fn to_streaming_keeps_sinks_and_the_recent_window() {
        let kinds = [LayerKind::Full];
        let mut c = KvCache::new(&params(), &kinds, None).unwrap();
        for p in 0..30 {
            c.layers[0].write(p, &[p as f32; 2], &[-(p as f32); 2]);
        }
        let s = c.layers[0].to_streaming(2, 5);
        assert_eq!(s.n_slots(), 7);
        let (k, v, pos) = s.snapshot();
        let mut order: Vec<usize> = (0..pos.len()).collect();
        order.sort_by_key(|&i| pos[i]);
        assert_eq!(order.iter().map(|&i| pos[i]).collect::<Vec<_>>(), [0, 1, 25, 26, 27, 28, 29]);
        for &i in &order {
            assert_eq!(k[i * 2], pos[i] as f32);
            assert_eq!(v[i * 2], -(pos[i] as f32));
        }
    }

    #[test]
    fn streaming_form_of_a_native_window_sees_sinks_only_within_that_window() {
        let native = LayerKind::Window { window: 8 };
        let kind = native.streaming(2, 3);
        assert_eq!(kind, LayerKind::Streaming { sink: 2, window: 3, native_window: Some(8) });
        assert_eq!(LayerKind::Full.streaming(2, 3), LayerKind::Streaming { sink: 2, window: 3, native_window: None });
        assert_eq!(kind.streaming(2, 5), LayerKind::Streaming { sink: 2, window: 5, native_window: Some(8) });
        let (m, full) = (kind.mask(), LayerKind::Full.streaming(2, 3).mask());
        // Within the native window the sinks are seen as a full layer's streaming form sees them...
        assert!(m.visible(7, 0) && full.visible(7, 0));
        // ...beyond it they are not (the native layer never attended that far), the window stays.
        assert!(!m.visible(20, 0) && !m.visible(20, 1) && full.visible(20, 0));
        assert!(m.visible(20, 18) && !m.visible(20, 17));
        // Every position the streaming form sees, the native layer sees.
        for q in 0..40 {
            for k in 0..=q {
                assert!(!m.visible(q, k) || native.mask().visible(q, k), "q {q} k {k}");
            }
        }
        // A native window layer cut to streaming during a prompt gets the same kind.
        let mut c = KvCache::new(&params(), &[native], None).unwrap();
        for p in 0..12 {
            c.layers[0].write(p, &[p as f32; 2], &[p as f32; 2]);
        }
        assert_eq!(c.layers[0].to_streaming(2, 3).kind, kind);
    }

    #[test]
    fn caches_not_yet_allocated_count_against_later_ones() {
        // One layer of 1,000,000 slots x 512 f32: 2 GB promised, never written, so never allocated.
        let p = KvCacheParams { n_ctx: 1_000_000, n_batch: 8, ty: KvType::F32, k_row: 256, v_row: 256 };
        let need = 1_000_000u64 * 512 * 4;
        // Room for one and a half such caches (other tests' small caches fit in the slack).
        let avail = need + need / 2;
        let a = KvCache::new(&p, &[LayerKind::Full], Some(avail)).unwrap();
        assert_eq!(a.resident_bytes(), 0);
        let e = KvCache::new(&p, &[LayerKind::Full], Some(avail)).err().expect("the first cache's promise counts");
        assert!(matches!(e, ModelError::OutOfMemory { .. }), "{e}");
        drop(a);
        KvCache::new(&p, &[LayerKind::Full], Some(avail)).expect("admitted once the first is gone");
    }

    #[test]
    fn too_large_is_an_error_before_allocation() {
        let kinds = [LayerKind::Full; 4];
        let e = KvCache::new(&params(), &kinds, Some(10)).err().unwrap();
        assert!(e.to_string().contains("6400") && e.to_string().contains("10"), "{e}");
    }
}
