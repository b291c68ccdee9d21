//! LightTransfer: running a pretrained transformer as a hybrid model, where lazy attention
//! layers keep only `sink` initial positions and the last `window` positions in their KV cache
//! (`../shared/LIGHTTRANSFER.md`).
//!
//! - The lazy ratio of a layer: the attention mass its last `w_last` queries put on the sink and
//!   recent keys, `mean exp(lse_keep - lse_full)` ([`lazy_ratio`]).
//! - [`HybridSpec`]: the lazy layers stored in GGUF metadata (`lighttransfer.*`, version 1), read
//!   and written; a lazy layer runs as [`LayerKind::Streaming`] from the first token.
//! - [`LazyProbe`]: measures every layer's ratio while a prompt is evaluated and, in
//!   LightTransfer-Test mode, turns the highest-ratio layers lazy as soon as they are measured
//!   (a max-heap holding the layers that stay full).

use std::collections::BinaryHeap;

use ggml_kernels::attention::{score_lse, AttnMask, AttnShape, KvView};

use crate::gguf::{GgufError, GgufFile, GgufWriter, MetaArray, MetaValue, ValueType};
use crate::model::kv_cache::LayerKind;

/// The paper's defaults.
pub const DEFAULT_SINK: u32 = 4;
pub const DEFAULT_WINDOW: u32 = 1020;
pub const DEFAULT_W_LAST: u32 = 16;
/// Version of the metadata format this engine reads and writes.
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum LtError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("lighttransfer.version {0} is not supported (this engine reads version {FORMAT_VERSION})")]
    Version(u32),
    #[error("lighttransfer.{key} has {got} entries, the model has {n_layer} layers")]
    Length { key: &'static str, got: usize, n_layer: usize },
    #[error("lighttransfer: {0}")]
    Invalid(String),
}

/// Streaming-attention settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamParams {
    pub sink: u32,
    pub window: u32,
}

impl Default for StreamParams {
    fn default() -> Self {
        StreamParams { sink: DEFAULT_SINK, window: DEFAULT_WINDOW }
    }
}

impl StreamParams {
    /// The streaming form of a layer whose own kind is `native` ([`LayerKind::streaming`]: a
    /// native sliding window stays an outer bound, so its sinks are seen only within it).
    pub fn kind(self, native: LayerKind) -> LayerKind {
        native.streaming(self.sink, self.window)
    }

    /// Whether a layer whose keys span `span` positions (after its native window) attends to
    /// more than a streaming layer would keep, i.e. could lose anything by becoming lazy.
    pub fn is_candidate(self, native: LayerKind, span: usize) -> bool {
        let span = match native {
            LayerKind::Window { window } => span.min(window as usize),
            _ => span,
        };
        span > (self.sink + self.window) as usize
    }
}

/// The hybrid flags of a model, as stored in GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct HybridSpec {
    pub lazy: Vec<bool>,
    pub stream: StreamParams,
    pub ratios: Option<Vec<f32>>,
    pub calibration: Option<String>,
}

impl HybridSpec {
    /// Reads the `lighttransfer.*` keys; `None` for an ordinary model.
    pub fn from_gguf(f: &GgufFile, n_layer: usize) -> Result<Option<HybridSpec>, LtError> {
        let Some(version) = f.get_as::<u32>("lighttransfer.version")? else {
            return Ok(None);
        };
        if version != FORMAT_VERSION {
            return Err(LtError::Version(version));
        }
        let flags = f
            .get_array("lighttransfer.lazy_layers", ValueType::Bool)?
            .ok_or_else(|| GgufError::MissingKey("lighttransfer.lazy_layers".into()))?;
        let lazy: Vec<bool> = flags.to_vec().unwrap_or_default();
        if lazy.len() != n_layer {
            return Err(LtError::Length { key: "lazy_layers", got: lazy.len(), n_layer });
        }
        let sink = f.require::<u32>("lighttransfer.sink_tokens")?;
        let window = f.require::<u32>("lighttransfer.window")?;
        if window == 0 {
            return Err(LtError::Invalid("window is 0".into()));
        }
        let ratios = match f.get_array("lighttransfer.lazy_ratios", ValueType::F32)? {
            Some(a) => {
                let r: Vec<f32> = a.to_vec().unwrap_or_default();
                if r.len() != n_layer {
                    return Err(LtError::Length { key: "lazy_ratios", got: r.len(), n_layer });
                }
                Some(r)
            }
            None => None,
        };
        let calibration = f.get_str("lighttransfer.calibration")?.map(str::to_string);
        Ok(Some(HybridSpec { lazy, stream: StreamParams { sink, window }, ratios, calibration }))
    }

    /// Sets the `lighttransfer.*` keys on a writer.
    pub fn write_to(&self, w: &mut GgufWriter<'_>) -> Result<(), LtError> {
        w.set("lighttransfer.version", MetaValue::U32(FORMAT_VERSION))?;
        w.set("lighttransfer.lazy_layers", MetaValue::Array(MetaArray::Bool(self.lazy.clone())))?;
        w.set("lighttransfer.sink_tokens", MetaValue::U32(self.stream.sink))?;
        w.set("lighttransfer.window", MetaValue::U32(self.stream.window))?;
        match &self.ratios {
            Some(r) => w.set("lighttransfer.lazy_ratios", MetaValue::Array(MetaArray::F32(r.clone())))?,
            None => drop(w.remove("lighttransfer.lazy_ratios")),
        }
        match &self.calibration {
            Some(c) => w.set("lighttransfer.calibration", MetaValue::String(c.clone()))?,
            None => drop(w.remove("lighttransfer.calibration")),
        }
        Ok(())
    }

    /// The layer kinds to run: lazy layers stream, the others keep their native kind.
    pub fn layer_kinds(&self, native: &[LayerKind]) -> Vec<LayerKind> {
        native.iter().zip(&self.lazy).map(|(&k, &lazy)| if lazy { self.stream.kind(k) } else { k }).collect()
    }
}

/// The lazy ratio of one layer from its queries and cached keys: for each query row (the last
/// `w_last` queries of a prompt ending at position `end - 1`), the share of its attention
/// (under the layer's own mask) that falls on the sink keys (`k < sink`) and the recent keys
/// (`k >= end - window`), averaged over rows in probability space.
#[allow(clippy::too_many_arguments)]
pub fn lazy_ratio(
    shape: &AttnShape,
    q: &[f32],
    qpos: &[i64],
    k: KvView<'_>,
    kpos: &[i64],
    native: AttnMask,
    stream: StreamParams,
    end: i64,
) -> f32 {
    let rows = qpos.len() * shape.n_head;
    if rows == 0 {
        return 1.0;
    }
    let mut full = vec![0f32; rows];
    let mut keep = vec![0f32; rows];
    score_lse(shape, q, qpos, k, kpos, |qp, kp| native.visible(qp, kp), &mut full);
    let (sink, recent_from) = (stream.sink as i64, end - stream.window as i64);
    score_lse(shape, q, qpos, k, kpos, |qp, kp| native.visible(qp, kp) && (kp < sink || kp >= recent_from), &mut keep);
    let sum: f64 = full
        .iter()
        .zip(&keep)
        .map(|(&f, &k)| if f == f32::NEG_INFINITY { 1.0 } else { ((k - f) as f64).exp() })
        .sum();
    (sum / rows as f64) as f32
}

/// How a probe chooses lazy layers while the prompt is evaluated.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Selection {
    /// Measure only.
    Measure,
    /// LightTransfer-Test: keep the `keep_full` lowest-ratio candidates full, turn the rest lazy.
    KeepFull(usize),
    /// SimLayerKV's variant: a candidate whose ratio is at least this is lazy.
    Threshold(f32),
}

impl Selection {
    /// Whether this rule turns layers lazy during the prompt (rather than only measuring).
    pub fn cuts(self) -> bool {
        !matches!(self, Selection::Measure)
    }
}

/// Ratios measured during one prompt evaluation, and the layers to turn lazy.
#[derive(Clone, Debug)]
pub struct LazyProbe {
    pub stream: StreamParams,
    pub w_last: usize,
    /// Position after the prompt's last token: measuring happens in the batch that ends here.
    pub end: usize,
    pub selection: Selection,
    /// Ratio of each layer; `None` until measured or for non-candidates.
    pub ratios: Vec<Option<f32>>,
    /// Max-heap of (ratio, layer) of candidates still full (LightTransfer-Test).
    heap: BinaryHeap<(OrdF32, usize)>,
    /// Layers turned lazy, in the order they were chosen.
    pub made_lazy: Vec<usize>,
    /// Time spent measuring ratios and cutting layers to streaming (the identification cost).
    pub elapsed: std::time::Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
#[allow(clippy::derive_ord_xor_partial_ord)]
impl Ord for OrdF32 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

impl LazyProbe {
    pub fn new(n_layer: usize, stream: StreamParams, w_last: usize, end: usize, selection: Selection) -> LazyProbe {
        LazyProbe {
            stream,
            w_last,
            end,
            selection,
            ratios: vec![None; n_layer],
            heap: BinaryHeap::new(),
            made_lazy: Vec::new(),
            elapsed: std::time::Duration::ZERO,
        }
    }

    /// Records layer `il`'s ratio; returns the layers to turn lazy now.
    pub fn record(&mut self, il: usize, ratio: f32) -> Vec<usize> {
        self.ratios[il] = Some(ratio);
        let out = match self.selection {
            Selection::Measure => Vec::new(),
            Selection::Threshold(t) => {
                if ratio >= t {
                    vec![il]
                } else {
                    Vec::new()
                }
            }
            Selection::KeepFull(p) => {
                self.heap.push((OrdF32(ratio), il));
                let mut out = Vec::new();
                while self.heap.len() > p {
                    if let Some((_, l)) = self.heap.pop() {
                        out.push(l);
                    }
                }
                out
            }
        };
        self.made_lazy.extend_from_slice(&out);
        out
    }
}

/// Where to split a prompt of `len` tokens so that its last forward call (one batch of at most
/// `n_batch` tokens) holds the last `w_last` queries, which the probe measures: evaluate
/// `..split`, then `split..`. Evaluated in one call, a prompt whose length is a multiple of
/// `n_batch` plus one ends with a batch of a single query, and the ratio would rest on that
/// query alone whatever `w_last` says.
pub fn probe_split(len: usize, w_last: usize, n_batch: usize) -> usize {
    len - w_last.min(n_batch).min(len)
}

/// Picks the lazy set offline: the `fraction` of candidate layers with the highest mean ratio.
pub fn choose_lazy(mean_ratios: &[Option<f32>], fraction: f32) -> Vec<bool> {
    let mut cands: Vec<(f32, usize)> = mean_ratios.iter().enumerate().filter_map(|(i, r)| r.map(|r| (r, i))).collect();
    cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let n_lazy = ((cands.len() as f32) * fraction).round() as usize;
    let mut lazy = vec![false; mean_ratios.len()];
    for &(_, i) in cands.iter().take(n_lazy) {
        lazy[i] = true;
    }
    lazy
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Brute force, written from the spec: the softmax of each row over the keys the layer's
    /// native attention sees (causal, and within `native_window` if given), summed over the keep
    /// set (`k < sink` or `k >= end - window`).
    #[allow(clippy::too_many_arguments)]
    fn brute_force(
        shape: &AttnShape,
        q: &[f32],
        qpos: &[i64],
        k: &[f32],
        kpos: &[i64],
        native_window: Option<i64>,
        s: StreamParams,
        end: i64,
    ) -> f32 {
        let group = shape.n_head / shape.n_head_kv;
        let mut total = 0f64;
        let mut rows = 0;
        for (t, &p) in qpos.iter().enumerate() {
            for h in 0..shape.n_head {
                let qr = &q[(t * shape.n_head + h) * shape.head_dim..][..shape.head_dim];
                let scores: Vec<(i64, f64)> = kpos
                    .iter()
                    .enumerate()
                    .filter(|(_, &kp)| kp <= p && native_window.is_none_or(|w| p - kp < w))
                    .map(|(slot, &kp)| {
                        let kr = &k[(slot * shape.n_head_kv + h / group) * shape.head_dim..][..shape.head_dim];
                        (kp, qr.iter().zip(kr).map(|(a, b)| (a * b) as f64).sum::<f64>() * shape.scale as f64)
                    })
                    .collect();
                let max = scores.iter().map(|s| s.1).fold(f64::NEG_INFINITY, f64::max);
                let z: f64 = scores.iter().map(|s| (s.1 - max).exp()).sum();
                let kept: f64 = scores
                    .iter()
                    .filter(|(kp, _)| *kp < s.sink as i64 || *kp >= end - s.window as i64)
                    .map(|s| (s.1 - max).exp())
                    .sum();
                total += kept / z;
                rows += 1;
            }
        }
        (total / rows as f64) as f32
    }

    #[test]
    fn lazy_ratio_equals_brute_force_softmax() {
        let shape = AttnShape { n_head: 4, n_head_kv: 2, head_dim: 16, head_dim_v: 16, scale: 0.25 };
        let n = 64usize;
        let mut x = 12345u64;
        let mut rnd = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        let k: Vec<f32> = (0..n * 2 * 16).map(|_| rnd()).collect();
        let kpos: Vec<i64> = (0..n as i64).collect();
        let w_last = 8;
        let qpos: Vec<i64> = ((n - w_last) as i64..n as i64).collect();
        let q: Vec<f32> = (0..w_last * 4 * 16).map(|_| rnd()).collect();
        let s = StreamParams { sink: 4, window: 10 };
        let ours = lazy_ratio(&shape, &q, &qpos, KvView::F32(&k), &kpos, AttnMask::CAUSAL, s, n as i64);
        let reference = brute_force(&shape, &q, &qpos, &k, &kpos, None, s, n as i64);
        assert!((ours - reference).abs() < 1e-5, "ours {ours}, brute force {reference}");
        assert!(ours > 0.0 && ours < 1.0);
        // Keeping everything gives exactly 1.
        let all = StreamParams { sink: 0, window: n as u32 };
        assert!((lazy_ratio(&shape, &q, &qpos, KvView::F32(&k), &kpos, AttnMask::CAUSAL, all, n as i64) - 1.0).abs() < 1e-6);
    }

    /// Random queries and keys of a prompt of `n` positions, the last `w_last` queries.
    fn random_prompt(n: usize, w_last: usize, seed: u64) -> (AttnShape, Vec<f32>, Vec<i64>, Vec<f32>, Vec<i64>) {
        let shape = AttnShape { n_head: 4, n_head_kv: 2, head_dim: 16, head_dim_v: 16, scale: 0.25 };
        let mut x = seed;
        let mut rnd = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 33) as f32 / (1u64 << 31) as f32) * 4.0 - 2.0
        };
        let k: Vec<f32> = (0..n * 2 * 16).map(|_| rnd()).collect();
        let kpos: Vec<i64> = (0..n as i64).collect();
        let qpos: Vec<i64> = ((n - w_last) as i64..n as i64).collect();
        let q: Vec<f32> = (0..w_last * 4 * 16).map(|_| rnd()).collect();
        (shape, q, qpos, k, kpos)
    }

    #[test]
    fn lazy_ratio_of_a_native_window_layer_counts_only_what_its_window_sees() {
        // A sliding-window layer (window 40) at the end of a 100-position prompt: the sinks are
        // beyond its window, so the kept mass is only the recent keys', normalised by the
        // window's attention, not the causal one.
        let n = 100usize;
        let (shape, q, qpos, k, kpos) = random_prompt(n, 8, 777);
        let native = LayerKind::Window { window: 40 };
        let s = StreamParams { sink: 4, window: 12 };
        let ours = lazy_ratio(&shape, &q, &qpos, KvView::F32(&k), &kpos, native.mask(), s, n as i64);
        let reference = brute_force(&shape, &q, &qpos, &k, &kpos, Some(40), s, n as i64);
        assert!((ours - reference).abs() < 1e-5, "ours {ours}, brute force {reference}");
        let no_sinks = StreamParams { sink: 0, window: 12 };
        let without = brute_force(&shape, &q, &qpos, &k, &kpos, Some(40), no_sinks, n as i64);
        assert!((ours - without).abs() < 1e-6, "sinks outside the native window carry no mass: {ours} vs {without}");
        // Where the native window does reach the sinks (a 45-position prompt), they count.
        let n = 45usize;
        let (shape, q, qpos, k, kpos) = random_prompt(n, 8, 778);
        let ours = lazy_ratio(&shape, &q, &qpos, KvView::F32(&k), &kpos, native.mask(), s, n as i64);
        let reference = brute_force(&shape, &q, &qpos, &k, &kpos, Some(40), s, n as i64);
        assert!((ours - reference).abs() < 1e-5, "ours {ours}, brute force {reference}");
    }

    #[test]
    fn lazy_ratio_is_the_mass_the_streaming_form_keeps_at_the_last_query() {
        // At the prompt's last query, keep(q) is exactly what the layer's streaming form attends
        // to; the ratio must be the share of the native attention that this mask keeps, so
        // that ranking layers by it ranks what running them streaming drops.
        let n = 90usize;
        for (native, seed) in [(LayerKind::Full, 1u64), (LayerKind::Window { window: 50 }, 2), (LayerKind::Window { window: 88 }, 3)] {
            let (shape, q, qpos, k, kpos) = random_prompt(n, 1, seed);
            let s = StreamParams { sink: 4, window: 20 };
            let ratio = lazy_ratio(&shape, &q, &qpos, KvView::F32(&k), &kpos, native.mask(), s, n as i64);
            let lse = |mask: AttnMask| {
                let mut out = vec![0f32; 4 * 16];
                let mut lse = vec![0f32; 4];
                ggml_kernels::attention::attention_reference(
                    &shape, &q, &qpos, KvView::F32(&k), KvView::F32(&k), &kpos, mask, &mut out, Some(&mut lse),
                );
                lse
            };
            let (full, kept) = (lse(native.mask()), lse(s.kind(native).mask()));
            let mass: f32 = full.iter().zip(&kept).map(|(f, k)| (k - f).exp()).sum::<f32>() / 4.0;
            assert!((ratio - mass).abs() < 1e-5, "{native:?}: ratio {ratio}, streaming keeps {mass}");
        }
    }

    #[test]
    fn probe_split_leaves_w_last_queries_for_the_last_call() {
        assert_eq!(probe_split(1025, 16, 512), 1009);
        assert_eq!(probe_split(10, 16, 512), 0);
        assert_eq!(probe_split(1025, 600, 512), 513, "at most one batch");
    }

    #[test]
    fn keep_full_heap_pops_the_laziest() {
        let mut p = LazyProbe::new(5, StreamParams::default(), 16, 100, Selection::KeepFull(2));
        assert!(p.record(0, 0.5).is_empty());
        assert!(p.record(1, 0.9).is_empty());
        assert_eq!(p.record(2, 0.7), vec![1]);
        assert_eq!(p.record(3, 0.1), vec![2]);
        assert_eq!(p.record(4, 0.95), vec![4]);
        assert_eq!(p.made_lazy, vec![1, 2, 4]);
    }

    #[test]
    fn choose_lazy_takes_the_highest_ratios_of_candidates() {
        let r = [Some(0.2), None, Some(0.9), Some(0.5), Some(0.8)];
        assert_eq!(choose_lazy(&r, 0.5), vec![false, false, true, false, true]);
        assert_eq!(choose_lazy(&r, 0.0), vec![false; 5]);
    }

    #[test]
    fn candidates_depend_on_span_and_native_window() {
        let s = StreamParams { sink: 4, window: 60 };
        assert!(s.is_candidate(LayerKind::Full, 100));
        assert!(!s.is_candidate(LayerKind::Full, 64));
        assert!(!s.is_candidate(LayerKind::Window { window: 64 }, 1000));
        assert!(s.is_candidate(LayerKind::Window { window: 512 }, 1000));
    }
}

/// What the command line asked for.
#[derive(Clone, Debug)]
pub struct HybridOptions {
    /// LightTransfer-Test: this fraction of the candidate layers becomes lazy on the first prompt.
    pub lazy_fraction: Option<f32>,
    /// SimLayerKV variant: candidates whose ratio reaches this become lazy on the first prompt.
    pub threshold: Option<f32>,
    /// Sink and window; `None` keeps the file's (or the defaults).
    pub sink: Option<u32>,
    pub window: Option<u32>,
    pub w_last: usize,
    /// Ignore the file's `lighttransfer.*` flags.
    pub ignore_file: bool,
    /// These layers stream from the first token (overrides the file's set).
    pub lazy_layers: Option<Vec<usize>>,
}

impl Default for HybridOptions {
    fn default() -> Self {
        HybridOptions { lazy_fraction: None, threshold: None, sink: None, window: None, w_last: DEFAULT_W_LAST as usize, ignore_file: false, lazy_layers: None }
    }
}

/// How a session runs its layers.
#[derive(Clone, Debug, PartialEq)]
pub enum HybridMode {
    /// As the model defines them.
    Native,
    /// The file's (or the options') lazy layers stream from the first token.
    Static { kinds: Vec<LayerKind>, lazy: Vec<usize> },
    /// Chosen on the first prompt (LightTransfer-Test or the threshold variant).
    Test { stream: StreamParams, w_last: usize, selection: TestSelection },
}

/// Selection rule of [`HybridMode::Test`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum TestSelection {
    Fraction(f32),
    Threshold(f32),
}

impl HybridOptions {
    /// Checks the settings and decides the mode for a model with `native` layer kinds.
    pub fn resolve(&self, file_spec: Option<&HybridSpec>, native: &[LayerKind]) -> Result<HybridMode, LtError> {
        if let Some(f) = self.lazy_fraction {
            if !(0.0..=1.0).contains(&f) {
                return Err(LtError::Invalid(format!("--lazy {f} is out of range (0 to 1)")));
            }
        }
        if let Some(t) = self.threshold {
            if !(0.0..=1.0).contains(&t) {
                return Err(LtError::Invalid(format!("--lazy-threshold {t} is out of range (0 to 1)")));
            }
        }
        if self.w_last == 0 {
            return Err(LtError::Invalid("--w-last must be at least 1".into()));
        }
        if self.window == Some(0) {
            return Err(LtError::Invalid("--window must be at least 1".into()));
        }
        let base = file_spec.filter(|_| !self.ignore_file).map(|s| s.stream).unwrap_or_default();
        let stream = StreamParams { sink: self.sink.unwrap_or(base.sink), window: self.window.unwrap_or(base.window) };
        let selection = match (self.lazy_fraction, self.threshold) {
            (Some(_), Some(_)) => return Err(LtError::Invalid("give --lazy or --lazy-threshold, not both".into())),
            (Some(f), None) if f > 0.0 => Some(TestSelection::Fraction(f)),
            (None, Some(t)) => Some(TestSelection::Threshold(t)),
            _ => None,
        };
        if let Some(selection) = selection {
            return Ok(HybridMode::Test { stream, w_last: self.w_last, selection });
        }
        if let Some(layers) = &self.lazy_layers {
            if let Some(&bad) = layers.iter().find(|&&l| l >= native.len()) {
                return Err(LtError::Invalid(format!("--lazy-layers: layer {bad} does not exist (the model has {})", native.len())));
            }
            let mut lazy = vec![false; native.len()];
            layers.iter().for_each(|&l| lazy[l] = true);
            let spec = HybridSpec { lazy, stream, ratios: None, calibration: None };
            let mut lazy: Vec<usize> = layers.clone();
            lazy.sort_unstable();
            lazy.dedup();
            return Ok(HybridMode::Static { kinds: spec.layer_kinds(native), lazy });
        }
        if self.lazy_fraction == Some(0.0) {
            return Ok(HybridMode::Native);
        }
        match file_spec.filter(|_| !self.ignore_file) {
            Some(spec) => {
                let spec = HybridSpec { stream, ..spec.clone() };
                let lazy = spec.lazy.iter().enumerate().filter(|(_, &l)| l).map(|(i, _)| i).collect();
                Ok(HybridMode::Static { kinds: spec.layer_kinds(native), lazy })
            }
            None => Ok(HybridMode::Native),
        }
    }
}

impl HybridMode {
    /// The probe to arm before a first prompt ending at position `end`, in test mode.
    pub fn probe(&self, native: &[LayerKind], end: usize) -> Option<LazyProbe> {
        let HybridMode::Test { stream, w_last, selection } = *self else { return None };
        let n_cand = native.iter().filter(|&&k| stream.is_candidate(k, end)).count();
        let selection = match selection {
            TestSelection::Fraction(f) => Selection::KeepFull(n_cand - ((n_cand as f32 * f).round() as usize).min(n_cand)),
            TestSelection::Threshold(t) => Selection::Threshold(t),
        };
        Some(LazyProbe::new(native.len(), stream, w_last, end, selection))
    }

    /// Layer kinds to allocate the cache with.
    pub fn kinds(&self, native: &[LayerKind]) -> Vec<LayerKind> {
        match self {
            HybridMode::Static { kinds, .. } => kinds.clone(),
            _ => native.to_vec(),
        }
    }
}
