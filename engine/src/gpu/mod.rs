//! The forward pass on a CUDA GPU (`engine-cuda`): the same architectures, layer kinds and
//! results as the CPU path of [`crate::model`], with weights and KV cache in device memory.
//!
//! - [`GpuModel`]: a [`Model`]'s weights uploaded once (quantized matrices as they are in the
//!   file; norms and biases as f32), and the backend.
//! - [`GpuSession`]: one conversation: a KV cache on the device (f16, per layer sized by its
//!   kind as on the CPU, see below) and the activation buffers of each batch size used.
//! - [`forward`]: the forward pass, top to bottom, for Gemma 3 and the Llama family.
//!
//! Where it differs from the CPU path: streaming (lazy) layers keep `sink + window + n_batch`
//! slots instead of exactly `sink + window`, the batch margin that native sliding-window layers
//! already have, so a prefill batch is written before it is attended to (the masks, which work
//! on positions, give the same result); lazy layers come from the file's flags, explicit
//! options, or LightTransfer-Test (`probe.rs`: measured in the prompt's last batch, the chosen
//! layers cut to streaming once the prompt is done, where the CPU cuts them layer by layer).
//! Activations are quantized to Q8_1 for decode (the CPU uses Q8_0/Q8_K) and rounded to f16 for
//! the prefill GEMMs, so logits differ from the CPU's within the bound of `tests/gpu_parity.rs`.

mod forward;
mod probe;

use engine_cuda::{CudaBackend, CudaError, DeviceBuffer, DeviceGraph, DeviceMatrix, HostBuffer, MatmulScratch};
use ggml_kernels::attention::AttnShape;
use half::f16;
use rayon::prelude::*;

use crate::lighttransfer::{probe_split, LazyProbe};
use crate::model::config::ModelConfig;
use crate::model::kv_cache::{layer_slots, slot_of, LayerKind};
use crate::model::{check_finite, check_tokens, Logits, Model, ModelError, SessionParams};

/// Why the GPU path failed.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Cuda(#[from] CudaError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Not enough free device memory.
    #[error("{what} does not fit in GPU memory: it needs {} MiB, {} MiB are free on {device} ({} MiB total)", need >> 20, avail >> 20, total >> 20)]
    DoesNotFit { what: String, need: u64, avail: u64, total: u64, device: String },
    #[error("not supported on the GPU: {0}")]
    Unsupported(String),
    /// No usable GPU (no driver, no device, no NVRTC).
    #[error("no usable CUDA GPU: {0}")]
    NoGpu(String),
}

impl From<GpuError> for ModelError {
    fn from(e: GpuError) -> ModelError {
        match e {
            GpuError::Model(m) => m,
            other => ModelError::Kernel(other.to_string()),
        }
    }
}

/// Device memory left free beyond what the model and a session need (the CUDA context, cuBLAS
/// workspaces, the attention kernels' partials).
const HEADROOM: u64 = 512 << 20;

/// One transformer block on the device (see [`crate::model::weights::LayerWeights`]).
struct GpuLayer {
    attn_norm: DeviceBuffer<f32>,
    wq: DeviceMatrix,
    wk: DeviceMatrix,
    wv: DeviceMatrix,
    wo: DeviceMatrix,
    bq: Option<DeviceBuffer<f32>>,
    bk: Option<DeviceBuffer<f32>>,
    bv: Option<DeviceBuffer<f32>>,
    q_norm: Option<DeviceBuffer<f32>>,
    k_norm: Option<DeviceBuffer<f32>>,
    post_attn_norm: Option<DeviceBuffer<f32>>,
    ffn_norm: DeviceBuffer<f32>,
    ffn_gate: DeviceMatrix,
    ffn_up: DeviceMatrix,
    ffn_down: DeviceMatrix,
    post_ffw_norm: Option<DeviceBuffer<f32>>,
    /// f16 copies of wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down for the prefill GEMMs, when
    /// they fit (empty otherwise: prefill dequantizes each matrix into a scratch as it goes).
    w16: Vec<DeviceBuffer<f16>>,
}

impl GpuLayer {
    fn matrices(&self) -> [&DeviceMatrix; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.ffn_gate, &self.ffn_up, &self.ffn_down]
    }
}

/// A model's weights on one GPU.
pub struct GpuModel {
    pub cfg: ModelConfig,
    pub be: CudaBackend,
    token_embd: DeviceMatrix,
    /// `None` when the output projection is the embedding matrix (tied).
    output: Option<DeviceMatrix>,
    /// The output projection's f16 copy, kept with the layers' (the logits of several
    /// positions or sequences as one GEMM).
    output16: Option<DeviceBuffer<f16>>,
    output_norm: DeviceBuffer<f32>,
    layers: Vec<GpuLayer>,
    /// Bytes uploaded.
    weight_bytes: u64,
    /// Elements of the largest layer matrix (the f16 scratch of prefill GEMMs).
    max_matrix: usize,
    /// Bytes of the f16 weight copies kept for prefill (0: none).
    f16_bytes: u64,
}

impl GpuModel {
    /// Opens GPU `ordinal` and uploads `model`'s weights, after checking that they fit in its
    /// free memory.
    pub fn upload(model: &Model<'_>, ordinal: usize) -> Result<GpuModel, GpuError> {
        let be = CudaBackend::new(ordinal).map_err(|e| match e {
            CudaError::Unavailable(u) => GpuError::NoGpu(u.to_string().trim_end_matches("; running on the CPU").to_string()),
            other => GpuError::Cuda(other),
        })?;
        let need = model.weight_bytes() + HEADROOM;
        let (free, total) = be.memory_info()?;
        if need > free {
            return Err(GpuError::DoesNotFit {
                what: format!("the model's weights ({} MiB)", model.weight_bytes() >> 20),
                need,
                avail: free,
                total,
                device: be.info().name.clone(),
            });
        }
        let w = &model.weights;
        let vec = |v: &Vec<f32>| be.upload(v);
        let opt = |v: &Option<Vec<f32>>| v.as_ref().map(|v| be.upload(v)).transpose();
        let mut max_matrix = 0;
        let mut layers = Vec::with_capacity(w.layers.len());
        for l in &w.layers {
            for m in l.matrices() {
                max_matrix = max_matrix.max(m.file.rows * m.file.cols);
            }
            layers.push(GpuLayer {
                attn_norm: vec(&l.attn_norm)?,
                wq: be.upload_matrix(&l.wq.file)?,
                wk: be.upload_matrix(&l.wk.file)?,
                wv: be.upload_matrix(&l.wv.file)?,
                wo: be.upload_matrix(&l.wo.file)?,
                bq: opt(&l.bq)?,
                bk: opt(&l.bk)?,
                bv: opt(&l.bv)?,
                q_norm: opt(&l.q_norm)?,
                k_norm: opt(&l.k_norm)?,
                post_attn_norm: opt(&l.post_attn_norm)?,
                ffn_norm: vec(&l.ffn_norm)?,
                ffn_gate: be.upload_matrix(&l.ffn_gate.file)?,
                ffn_up: be.upload_matrix(&l.ffn_up.file)?,
                ffn_down: be.upload_matrix(&l.ffn_down.file)?,
                post_ffw_norm: opt(&l.post_ffw_norm)?,
                w16: Vec::new(),
            });
        }
        // f16 copies of the layer matrices for prefill, when cuBLAS is there and they take at
        // most half of the memory left (the rest is for KV caches); ENGINE_CUDA_F16_WEIGHTS=0
        // turns them off.
        let out_w = if std::ptr::eq(w.output.file.data, w.token_embd.data) { &w.token_embd } else { &w.output.file };
        let out16 = engine_cuda::DEQUANT_TYPES.contains(&out_w.ty);
        let f16_elems: usize =
            layers.iter().flat_map(|l| l.matrices().map(|m| m.rows * m.cols)).sum::<usize>() + if out16 { out_w.rows * out_w.cols } else { 0 };
        let wanted = std::env::var("ENGINE_CUDA_F16_WEIGHTS").map_or(true, |v| v != "0");
        let (free_now, _) = be.memory_info()?;
        let mut f16_bytes = 0;
        if wanted && be.blas_status().is_ok() && (2 * f16_elems as u64) < free_now.saturating_sub(HEADROOM) / 2 {
            for l in &mut layers {
                let mut copies = Vec::with_capacity(7);
                for m in l.matrices() {
                    let mut b = be.alloc::<f16>(m.rows * m.cols)?;
                    be.dequantize_f16(m, &mut b)?;
                    copies.push(b);
                }
                l.w16 = copies;
            }
            f16_bytes = 2 * f16_elems as u64;
        }
        let token_embd = be.upload_matrix(&w.token_embd)?;
        let tied = std::ptr::eq(w.output.file.data, w.token_embd.data);
        let output = if tied { None } else { Some(be.upload_matrix(&w.output.file)?) };
        let output16 = if f16_bytes > 0 && out16 {
            let m = output.as_ref().unwrap_or(&token_embd);
            let mut b = be.alloc::<f16>(m.rows * m.cols)?;
            be.dequantize_f16(m, &mut b)?;
            Some(b)
        } else {
            None
        };
        let output_norm = be.upload(&w.output_norm)?;
        be.synchronize()?;
        Ok(GpuModel {
            cfg: model.cfg.clone(),
            be,
            token_embd,
            output,
            output16,
            output_norm,
            layers,
            weight_bytes: model.weight_bytes(),
            max_matrix,
            f16_bytes,
        })
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// The device, for reports: name and memory.
    pub fn device_name(&self) -> String {
        let i = self.be.info();
        format!("{} ({} MiB)", i.name, i.total_memory >> 20)
    }

    /// How prefill multiplies: for reports.
    pub fn prefill_path(&self) -> String {
        match (self.be.blas_status(), self.f16_bytes) {
            (Err(e), _) => format!("matrix-vector kernels per token ({e})"),
            (Ok(()), 0) => "cuBLAS GEMM, weights dequantized to f16 per matrix".into(),
            (Ok(()), b) => format!("cuBLAS GEMM on f16 weight copies ({} MiB)", b >> 20),
        }
    }

    fn output_matrix(&self) -> &DeviceMatrix {
        self.output.as_ref().unwrap_or(&self.token_embd)
    }
}

/// One layer's KV cache on the device: for each sequence of the session, `n_slots` slots of keys
/// and values (f16) and the position each holds (-1: empty); sequence `s` owns slots
/// `s * n_slots .. (s + 1) * n_slots`.
struct GpuLayerCache {
    kind: LayerKind,
    /// Slots kept before the ring (streaming layers' sinks).
    sink_slots: usize,
    /// Slots per sequence.
    n_slots: usize,
    k: DeviceBuffer<f16>,
    v: DeviceBuffer<f16>,
    pos: DeviceBuffer<i32>,
    /// Index of the layer's slot map in [`Batch::slots`] (layers with the same slot layout share one).
    slot_group: usize,
}

impl GpuLayerCache {
    /// The slot of its sequence's run that holds position `pos` (as `kv_cache::LayerCache`).
    fn slot(&self, pos: usize) -> usize {
        slot_of(pos, self.sink_slots, self.n_slots)
    }
}

/// Slots per sequence and sink slots of a layer of this kind: the CPU's layout, plus a batch
/// margin for streaming layers (a prompt batch is written before it is attended to).
fn layout(kind: LayerKind, n_ctx: usize, n_batch: usize) -> (usize, usize) {
    layer_slots(kind, n_ctx, n_batch, n_batch)
}

/// Which cache slots a batch's tokens attend to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Attend {
    /// Every token belongs to this sequence (a prompt chunk, or one decode step).
    One(usize),
    /// Token `t` is the next token of sequence `t` (one decode step of the first `n` sequences).
    EachOwn,
}

/// Activation buffers of a batch of `n` tokens (shapes in the comments, per token).
struct Batch {
    n: usize,
    /// Token ids, positions, and for each slot group the slot of each token and the first slot
    /// of its sequence's run.
    ids: DeviceBuffer<i32>,
    pos: DeviceBuffer<i32>,
    slots: Vec<DeviceBuffer<i32>>,
    bases: Vec<DeviceBuffer<i32>>,
    /// Their page-locked host staging, in the same order: the uploads are queued on the
    /// stream, where pageable ones waited for it, four times a token.
    ids_h: HostBuffer<i32>,
    pos_h: HostBuffer<i32>,
    slots_h: Vec<HostBuffer<i32>>,
    bases_h: Vec<HostBuffer<i32>>,
    /// Set before each forward pass.
    attend: Attend,
    /// The residual stream `[n_embd]` and the normed input of a block `[n_embd]`.
    x: DeviceBuffer<f32>,
    h: DeviceBuffer<f32>,
    /// `[n_head * head_dim]`, `[n_head_kv * head_dim]`, `[n_head_kv * head_dim_v]`
    q: DeviceBuffer<f32>,
    k: DeviceBuffer<f32>,
    v: DeviceBuffer<f32>,
    /// Attention output `[n_head * head_dim_v]`, projected `[n_embd]`.
    attn: DeviceBuffer<f32>,
    o: DeviceBuffer<f32>,
    /// `[n_ff]` each.
    gate: DeviceBuffer<f32>,
    up: DeviceBuffer<f32>,
    /// Decode attention's log-sum-exp `[n][n_head]` (unused).
    lse: DeviceBuffer<f32>,
    /// Decode (`n == 1`): the logits `[n_vocab]`, and their page-locked host copy.
    logits: Option<DeviceBuffer<f32>>,
    logits_host: Option<HostBuffer<f32>>,
    /// Decode (`n == 1`): a flag the output product sets to 1 when some logit is NaN or
    /// infinite (so the host does not scan the logits), and its page-locked host copy; the host
    /// clears it after reading it set.
    nonfinite: Option<(DeviceBuffer<u32>, HostBuffer<u32>)>,
    /// Every row's logits `[n][n_vocab]` on the device and their page-locked host copy, once a
    /// pass has asked for them (several sequences' decode steps); kept for the next.
    logits_all: Option<(DeviceBuffer<f32>, HostBuffer<f32>)>,
    /// Decode: each matrix input quantized once to Q8_1, shared by the products that read it.
    dq: Option<DecodeQ8>,
}

/// Q8_1 copies of the decode step's matrix inputs: `[n_embd]`, `[n_head * head_dim_v]`, `[n_ff]`;
/// and the counters of the fused gate/up product (zero between launches) `[n_ff / 32]`.
struct DecodeQ8 {
    embd: DeviceBuffer<u8>,
    attn: DeviceBuffer<u8>,
    ff: DeviceBuffer<u8>,
    ff_sync: DeviceBuffer<i32>,
}

impl Batch {
    fn new(be: &CudaBackend, c: &ModelConfig, n: usize, n_groups: usize) -> Result<Batch, CudaError> {
        Ok(Batch {
            n,
            ids: be.alloc(n)?,
            pos: be.alloc(n)?,
            slots: (0..n_groups).map(|_| be.alloc(n)).collect::<Result<_, _>>()?,
            bases: (0..n_groups).map(|_| be.alloc(n)).collect::<Result<_, _>>()?,
            ids_h: be.alloc_host(n)?,
            pos_h: be.alloc_host(n)?,
            slots_h: (0..n_groups).map(|_| be.alloc_host(n)).collect::<Result<_, _>>()?,
            bases_h: (0..n_groups).map(|_| be.alloc_host(n)).collect::<Result<_, _>>()?,
            attend: Attend::One(0),
            x: be.alloc(n * c.n_embd)?,
            h: be.alloc(n * c.n_embd)?,
            q: be.alloc(n * c.n_head * c.head_dim)?,
            k: be.alloc(n * c.n_head_kv * c.head_dim)?,
            v: be.alloc(n * c.n_head_kv * c.head_dim_v)?,
            attn: be.alloc(n * c.n_head * c.head_dim_v)?,
            o: be.alloc(n * c.n_embd)?,
            gate: be.alloc(n * c.n_ff)?,
            up: be.alloc(n * c.n_ff)?,
            lse: be.alloc(n * c.n_head)?,
            logits: if n == 1 { Some(be.alloc(c.n_vocab)?) } else { None },
            logits_host: if n == 1 { Some(be.alloc_host(c.n_vocab)?) } else { None },
            nonfinite: if n == 1 { Some((be.alloc(1)?, be.alloc_host(1)?)) } else { None },
            logits_all: None,
            dq: if n == 1 {
                let q8 = |cols: usize| be.alloc::<u8>(cols / 32 * engine_cuda::Q8_1_BYTES);
                Some(DecodeQ8 { embd: q8(c.n_embd)?, attn: q8(c.n_head * c.head_dim_v)?, ff: q8(c.n_ff)?,
                    ff_sync: be.alloc(c.n_ff / 32)?,
                })
            } else {
                None
            },
        })
    }

    /// The logits of every row from the last several-sequence step (empty before one).
    fn kept_logits(&self) -> Result<&[f32], GpuError> {
        match &self.logits_all {
            Some((_, host)) => Ok(host.as_slice()?),
            None => Ok(&[]),
        }
    }

    fn bytes(c: &ModelConfig, n: usize, n_groups: usize) -> u64 {
        let floats = n * (2 * c.n_embd + c.n_head * c.head_dim + c.n_head_kv * (c.head_dim + c.head_dim_v))
            + n * (c.n_head * c.head_dim_v + c.n_embd + 2 * c.n_ff)
            + n * c.n_head
            + if n == 1 { c.n_vocab + c.n_ff / 32 } else { 0 };
        ((floats + n * (2 + 2 * n_groups)) * 4) as u64
    }
}

impl crate::generate::Conversation for GpuSession<'_> {
    fn truncate(&mut self, n: usize) -> Result<bool, ModelError> {
        GpuSession::truncate(self, n).map_err(ModelError::from)
    }
    fn restart(&mut self, params: &SessionParams) -> Result<(), ModelError> {
        match GpuSession::new(self.model, params) {
            Ok(s) => *self = s,
            Err(GpuError::DoesNotFit { .. }) => {
                // Both do not fit at once: the old caches go first. If the new ones still do not
                // fit, the session is left without caches and says so on its next evaluation.
                self.graph = None;
                self.batches.clear();
                self.layers.clear();
                self.past.iter_mut().for_each(|p| *p = 0);
                *self = GpuSession::new(self.model, params).map_err(ModelError::from)?;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }
    fn set_probe(&mut self, probe: Option<LazyProbe>) {
        self.probe = probe;
    }
    fn take_probe(&mut self) -> Option<LazyProbe> {
        self.probe.take()
    }
    fn kv_layers(&self) -> Vec<(LayerKind, usize)> {
        // (The first sequence's share: a chat holds one.)
        self.layers.iter().map(|l| (l.kind, (l.k.len() + l.v.len()) * 2 / self.past.len())).collect()
    }
}

impl crate::generate::Evaluate for GpuSession<'_> {
    fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, ModelError> {
        GpuSession::eval(self, tokens, which).map_err(ModelError::from)
    }
    fn n_past(&self) -> usize {
        self.past[0]
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
    fn n_vocab(&self) -> usize {
        self.model.cfg.n_vocab
    }
    fn reset(&mut self) -> Result<(), ModelError> {
        GpuSession::reset(self).map_err(ModelError::from)
    }
}

/// Batch buffers kept for reuse (one per batch size seen; prompt chunks and decode).
const KEPT_BATCHES: usize = 3;

/// One or several conversations (sequences) on the GPU, each with its own KV cache; the
/// sequences can be decoded together, one token each per weight read
/// ([`GpuSession::eval_parallel`]).
pub struct GpuSession<'m> {
    pub model: &'m GpuModel,
    /// LightTransfer-Test: set before a prompt (of any sequence) that ends at `probe.end`; the
    /// ratios are measured in the prompt's last batch and the layers it chooses are cut to
    /// streaming (for every sequence) when the prompt is done (see [`GpuSession::eval_seq`]).
    pub probe: Option<LazyProbe>,
    layers: Vec<GpuLayerCache>,
    /// Slot layouts (slots per sequence, sink slots) in use; a layer's `slot_group` indexes it.
    groups: Vec<(usize, usize)>,
    batches: Vec<Batch>,
    mm: MatmulScratch,
    /// Positions per sequence.
    n_ctx: usize,
    n_batch: usize,
    /// Positions held, per sequence.
    past: Vec<usize>,
    /// The decode step captured as a CUDA graph on its first use (over the buffers of the
    /// one-token batch, which is never evicted), unless `ENGINE_CUDA_GRAPH=0`.
    graph: Option<DeviceGraph>,
    use_graph: bool,
    /// Decode attention's partials (split-KV), for the largest layer and one token per
    /// sequence; allocated once so that decode allocates nothing.
    part: DeviceBuffer<f32>,
    /// The logits [`GpuSession::eval_parallel`] returns for a step of one sequence.
    last_logits: Vec<f32>,
}

/// The cache layout and memory of a session: each layer's kind, slots per sequence and sinks,
/// and the slot groups (layers with the same layout share their slot maps).
struct Plan {
    kinds: Vec<LayerKind>,
    layouts: Vec<(usize, usize)>,
    groups: Vec<(usize, usize)>,
    n_batch: usize,
    /// KV bytes of one sequence.
    kv_bytes_per_seq: u64,
}

impl Plan {
    fn new(model: &GpuModel, p: &SessionParams) -> Result<Plan, GpuError> {
        if p.n_ctx == 0 || p.n_batch == 0 {
            return Err(ModelError::Config("n_ctx and n_batch must be positive".into()).into());
        }
        if p.kv_type != crate::model::kv_cache::KvType::F16 {
            return Err(GpuError::Unsupported("a KV cache type other than f16".into()));
        }
        let c = &model.cfg;
        let kinds = p
            .layer_kinds
            .clone()
            .unwrap_or_else(|| c.layers.iter().map(|l| l.window.map_or(LayerKind::Full, |window| LayerKind::Window { window })).collect());
        if kinds.len() != c.n_layer {
            return Err(ModelError::Config(format!("{} layer kinds for {} layers", kinds.len(), c.n_layer)).into());
        }
        let n_batch = p.n_batch.min(p.n_ctx);
        let layouts: Vec<(usize, usize)> = kinds.iter().map(|&k| layout(k, p.n_ctx, n_batch)).collect();
        let (k_row, v_row) = (c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
        let kv_bytes_per_seq = layouts.iter().map(|l| l.0 as u64 * ((k_row + v_row) * 2 + 4) as u64).sum();
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for &l in &layouts {
            if !groups.contains(&l) {
                groups.push(l);
            }
        }
        Ok(Plan { kinds, layouts, groups, n_batch, kv_bytes_per_seq })
    }

    fn shape(c: &ModelConfig) -> AttnShape {
        AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, head_dim_v: c.head_dim_v, scale: c.attn_scale }
    }

    /// Bytes of everything but the KV cache for `n_seq` sequences: the prompt batch, the decode
    /// batches, the GEMM scratch and the decode attention's partials.
    fn scratch_bytes(&self, model: &GpuModel, n_seq: usize) -> u64 {
        let c = &model.cfg;
        let max_cols = c.n_embd.max(c.n_ff).max(c.n_head * c.head_dim_v);
        let max_slots = self.layouts.iter().map(|l| l.0).max().unwrap_or(0);
        let n_mm = self.n_batch.max(n_seq);
        model.be.matmul_scratch_bytes(n_mm, max_cols, model.max_matrix) as u64
            + Batch::bytes(c, self.n_batch, self.groups.len())
            + Batch::bytes(c, 1, self.groups.len())
            + if n_seq > 1 { Batch::bytes(c, n_seq, self.groups.len()) + 4 * (n_seq * c.n_vocab) as u64 } else { 0 }
            + 4 * CudaBackend::attention_partials_batch(&Self::shape(c), max_slots, n_seq) as u64
    }
}

impl<'m> GpuSession<'m> {
    /// One sequence: allocates the KV cache and scratch, after checking that they fit in free
    /// device memory.
    pub fn new(model: &'m GpuModel, p: &SessionParams) -> Result<GpuSession<'m>, GpuError> {
        Self::with_sequences(model, p, 1)
    }

    /// How many sequences of `p.n_ctx` positions fit in the device memory free now (0: not one).
    pub fn fit_sequences(model: &GpuModel, p: &SessionParams) -> Result<usize, GpuError> {
        let plan = Plan::new(model, p)?;
        let (free, _) = model.be.memory_info()?;
        let avail = free.saturating_sub(HEADROOM);
        // The scratch grows with the count too: step down from the KV-only estimate.
        let mut n = (avail / plan.kv_bytes_per_seq.max(1)) as usize;
        while n > 0 && n as u64 * plan.kv_bytes_per_seq + plan.scratch_bytes(model, n) > avail {
            n -= 1;
        }
        Ok(n)
    }

    /// `n_seq` sequences of `p.n_ctx` positions each, with their own KV caches.
    pub fn with_sequences(model: &'m GpuModel, p: &SessionParams, n_seq: usize) -> Result<GpuSession<'m>, GpuError> {
        if n_seq == 0 {
            return Err(ModelError::Config("a session needs at least one sequence".into()).into());
        }
        let plan = Plan::new(model, p)?;
        let c = &model.cfg;
        // Slots are addressed with 32-bit indices on the device.
        let most_slots = plan.layouts.iter().map(|l| l.0).max().unwrap_or(0);
        if most_slots.checked_mul(n_seq).is_none_or(|t| t > i32::MAX as usize) {
            return Err(ModelError::Config(format!("{n_seq} sequences of {most_slots} cache slots exceed 2^31 slots per layer")).into());
        }
        let kv_bytes = plan.kv_bytes_per_seq * n_seq as u64;
        let scratch = plan.scratch_bytes(model, n_seq);
        let be = &model.be;
        let (free, total) = be.memory_info()?;
        if kv_bytes + scratch + HEADROOM > free {
            return Err(GpuError::DoesNotFit {
                what: format!(
                    "the KV cache for {n_seq} x {} positions ({} MiB) with the batch scratch ({} MiB)",
                    p.n_ctx,
                    kv_bytes >> 20,
                    scratch >> 20
                ),
                need: kv_bytes + scratch + HEADROOM,
                avail: free,
                total,
                device: be.info().name.clone(),
            });
        }
        let (k_row, v_row) = (c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
        let mut layers = Vec::with_capacity(plan.kinds.len());
        for (&kind, &(n_slots, sink_slots)) in plan.kinds.iter().zip(&plan.layouts) {
            let all = n_slots * n_seq;
            let mut pos = be.alloc::<i32>(all)?;
            be.upload_into(&vec![-1i32; all], &mut pos)?;
            layers.push(GpuLayerCache {
                kind,
                sink_slots,
                n_slots,
                k: be.alloc(all * k_row)?,
                v: be.alloc(all * v_row)?,
                pos,
                slot_group: plan.groups.iter().position(|&g| g == (n_slots, sink_slots)).unwrap_or(0),
            });
        }
        let max_cols = c.n_embd.max(c.n_ff).max(c.n_head * c.head_dim_v);
        let mm = be.matmul_scratch(plan.n_batch.max(n_seq), max_cols, model.max_matrix)?;
        let max_slots = layers.iter().map(|l| l.n_slots).max().unwrap_or(0);
        let part = be.alloc(CudaBackend::attention_partials_batch(&Plan::shape(c), max_slots, n_seq))?;
        let use_graph = std::env::var("ENGINE_CUDA_GRAPH").map_or(true, |v| v != "0");
        Ok(GpuSession {
            model,
            layers,
            probe: None,
            groups: plan.groups.clone(),
            batches: Vec::new(),
            mm,
            n_ctx: p.n_ctx,
            n_batch: plan.n_batch,
            past: vec![0; n_seq],
            graph: None,
            use_graph,
            part,
            last_logits: Vec::new(),
        })
    }

    /// Positions held by the first sequence.
    pub fn n_past(&self) -> usize {
        self.past[0]
    }

    /// Positions held by sequence `seq`.
    pub fn n_past_of(&self, seq: usize) -> usize {
        self.past.get(seq).copied().unwrap_or(0)
    }

    /// Positions each sequence can hold.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Sequences of the session.
    pub fn n_seq(&self) -> usize {
        self.past.len()
    }

    /// Bytes of the KV cache (all sequences).
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * 2).sum()
    }

    /// Forgets every sequence.
    pub fn reset(&mut self) -> Result<(), GpuError> {
        for l in &mut self.layers {
            self.model.be.upload_into(&vec![-1i32; l.pos.len()], &mut l.pos)?;
        }
        self.past.iter_mut().for_each(|p| *p = 0);
        Ok(())
    }

    /// Keeps only the first `n` positions of the first sequence (as
    /// [`crate::model::Session::truncate`]): false when a ring already dropped what position `n`
    /// needs, and that sequence is then empty.
    pub fn truncate(&mut self, n: usize) -> Result<bool, GpuError> {
        if n >= self.past[0] {
            return Ok(true);
        }
        let be = &self.model.be;
        let mut held_ok = true;
        let mut runs = Vec::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut pos = be.download(&l.pos)?;
            let run = &mut pos[..l.n_slots];
            run.iter_mut().filter(|p| **p >= n as i32).for_each(|p| *p = -1);
            let mask = l.kind.mask();
            let held = run.iter().filter(|&&p| p >= 0 && mask.visible(n as i64, p as i64)).count();
            let needed = (0..n as i64).filter(|&p| mask.visible(n as i64, p)).count();
            held_ok &= held == needed;
            runs.push(pos);
        }
        for (l, mut pos) in self.layers.iter_mut().zip(runs) {
            if !held_ok {
                pos[..l.n_slots].iter_mut().for_each(|p| *p = -1);
            }
            be.upload_into(&pos, &mut l.pos)?;
        }
        self.past[0] = if held_ok { n } else { 0 };
        Ok(held_ok)
    }

    fn check_seq(&self, seq: usize) -> Result<(), GpuError> {
        if seq >= self.past.len() {
            return Err(ModelError::Config(format!("sequence {seq} of a session of {}", self.past.len())).into());
        }
        Ok(())
    }

    /// Makes sequence `dst` a copy of sequence `src` (its cache and position), as llama.cpp's
    /// `llama_memory_seq_cp`: a prompt evaluated once serves several sequences.
    pub fn copy_sequence(&mut self, src: usize, dst: usize) -> Result<(), GpuError> {
        self.check_seq(src)?;
        self.check_seq(dst)?;
        if src == dst {
            return Ok(());
        }
        let be = &self.model.be;
        let c = &self.model.cfg;
        let (k_row, v_row) = (c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
        for l in &mut self.layers {
            let n = l.n_slots;
            be.copy_within(&mut l.k, src * n * k_row, dst * n * k_row, n * k_row)?;
            be.copy_within(&mut l.v, src * n * v_row, dst * n * v_row, n * v_row)?;
            be.copy_within(&mut l.pos, src * n, dst * n, n)?;
        }
        self.past[dst] = self.past[src];
        Ok(())
    }

    /// Evaluates `tokens` after what the first sequence holds; returns the logits `which` asks
    /// for, `n_vocab` per position, in order (as [`crate::model::Session::eval`]).
    pub fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, GpuError> {
        self.eval_seq(0, tokens, which)
    }

    /// [`GpuSession::eval`] for sequence `seq`.
    ///
    /// With a LightTransfer-Test probe set and `tokens` ending the prompt it measures, the last
    /// batch holds the prompt's last `w_last` queries, each candidate layer's lazy ratio is
    /// measured there, and the layers the probe chooses are cut to sink + window once the
    /// prompt is evaluated (prefill keeps every layer full: the GPU allocates caches up front).
    pub fn eval_seq(&mut self, seq: usize, tokens: &[u32], which: Logits) -> Result<Vec<f32>, GpuError> {
        self.check_seq(seq)?;
        let n_vocab = self.model.cfg.n_vocab;
        check_tokens(tokens, n_vocab, self.past[seq], self.n_ctx)?;
        let measuring = self.measures(seq, tokens.len());
        // Chunk bounds: batches of n_batch; when measuring, the last one holds the last w_last.
        let split = match (&self.probe, measuring) {
            (Some(p), true) => probe_split(tokens.len(), p.w_last, self.n_batch),
            _ => tokens.len(),
        };
        let mut bounds: Vec<(usize, usize)> = (0..split).step_by(self.n_batch).map(|b0| (b0, (b0 + self.n_batch).min(split))).collect();
        if split < tokens.len() {
            bounds.push((split, tokens.len()));
        }
        let wanted = which.rows(tokens.len());
        let mut logits = Vec::with_capacity(wanted.len() * n_vocab);
        for (i, &(b0, b1)) in bounds.iter().enumerate() {
            let chunk = &tokens[b0..b1];
            let want = which.in_chunk(tokens.len(), b0, chunk.len());
            let measure = measuring && i + 1 == bounds.len();
            let out = self.forward_chunk_probe(chunk, Attend::One(seq), want, measure.then_some(seq))?;
            check_finite(&out, self.past[seq] + want.rows(chunk.len()).start, n_vocab)?;
            self.past[seq] += chunk.len();
            logits.extend_from_slice(&out);
        }
        if measuring {
            self.cut_chosen_layers()?;
        }
        Ok(logits)
    }

    /// One decode step of the first `tokens.len()` sequences: `tokens[s]` is the next token of
    /// sequence `s`; returns the logits of each, `n_vocab` per sequence, in order. The weights are
    /// read once for all of them (batched products), each sequence attends to its own cache.
    ///
    /// The logits stay in the session's page-locked buffer until the next step: a step of 100
    /// sequences of a 128K vocabulary is 51 MB, which a copy into a new vector would cost again.
    pub fn eval_parallel(&mut self, tokens: &[u32]) -> Result<&[f32], GpuError> {
        let n_seq = tokens.len();
        if n_seq == 0 || n_seq > self.past.len() {
            return Err(ModelError::Config(format!("{n_seq} tokens for a session of {} sequences", self.past.len())).into());
        }
        if n_seq == 1 {
            return self.decode_step(0, tokens[0]);
        }
        let n_vocab = self.model.cfg.n_vocab;
        for (s, t) in tokens.iter().enumerate() {
            check_tokens(std::slice::from_ref(t), n_vocab, self.past[s], self.n_ctx)?;
        }
        self.forward_chunk(tokens, Attend::EachOwn, Logits::All)?;
        let batch = self.batches.iter().find(|b| b.n == n_seq).ok_or_else(|| GpuError::Unsupported("the step's batch is gone".into()))?;
        let out = batch.kept_logits()?;
        // (Rows checked on several cores: 100 rows of a 128K vocabulary are 51 MB.)
        out.par_chunks(n_vocab).enumerate().try_for_each(|(s, row)| check_finite(row, self.past[s], n_vocab))?;
        self.past[..n_seq].iter_mut().for_each(|p| *p += 1);
        Ok(out)
    }

    /// Finds (or makes) the batch for the chunk's size and queues the uploads of its ids,
    /// positions, slots and bases; returns the batch's index.
    fn prepare_chunk(&mut self, tokens: &[u32], attend: Attend) -> Result<usize, GpuError> {
        if self.layers.len() != self.model.layers.len() {
            return Err(GpuError::Unsupported("a session whose KV cache was given up (a restart did not fit): start a new one".into()));
        }
        let n = tokens.len();
        let be = &self.model.be;
        let bi = match self.batches.iter().position(|b| b.n == n) {
            Some(i) => i,
            None => {
                if self.batches.len() >= KEPT_BATCHES {
                    // Never the one-token batch: the decode graph holds its buffers.
                    if let Some(i) = self.batches.iter().position(|b| b.n != 1) {
                        self.batches.remove(i);
                    }
                }
                self.batches.push(Batch::new(be, &self.model.cfg, n, self.groups.len())?);
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[bi];
        batch.attend = attend;
        // Each token's sequence and position.
        let seq_pos: Vec<(usize, usize)> = match attend {
            Attend::One(s) => (self.past[s]..self.past[s] + n).map(|p| (s, p)).collect(),
            Attend::EachOwn => self.past[..n].iter().enumerate().map(|(s, &p)| (s, p)).collect(),
        };
        for (d, &t) in batch.ids_h.as_mut_slice()?.iter_mut().zip(tokens) {
            *d = t as i32;
        }
        for (d, &(_, p)) in batch.pos_h.as_mut_slice()?.iter_mut().zip(&seq_pos) {
            *d = p as i32;
        }
        be.upload_pinned(&batch.ids_h, &mut batch.ids)?;
        be.upload_pinned(&batch.pos_h, &mut batch.pos)?;
        let mut done = vec![false; batch.slots.len()];
        for l in &self.layers {
            let g = l.slot_group;
            if !done[g] {
                for (d, &(s, p)) in batch.slots_h[g].as_mut_slice()?.iter_mut().zip(&seq_pos) {
                    *d = (s * l.n_slots + l.slot(p)) as i32;
                }
                for (d, &(s, _)) in batch.bases_h[g].as_mut_slice()?.iter_mut().zip(&seq_pos) {
                    *d = (s * l.n_slots) as i32;
                }
                be.upload_pinned(&batch.slots_h[g], &mut batch.slots[g])?;
                be.upload_pinned(&batch.bases_h[g], &mut batch.bases[g])?;
                done[g] = true;
            }
        }
        Ok(bi)
    }

    /// Whether `n` more tokens of sequence `seq` end the prompt the armed LightTransfer-Test
    /// probe measures (a probe measures one prompt: the first to end at its position).
    fn measures(&self, seq: usize, n: usize) -> bool {
        self.probe.as_ref().is_some_and(|p| self.past[seq] + n == p.end && p.ratios.iter().all(Option::is_none))
    }

    /// Whether a chunk of `n` tokens asking for `which` runs as the decode graph.
    fn graph_step(&self, n: usize, which: Logits, measure: Option<usize>) -> bool {
        n == 1 && which.rows(1) == (0..1) && self.use_graph && measure.is_none()
    }

    /// Replays the decode graph (captured on its first use) on the one-token batch `bi`, whose
    /// inputs are queued, and returns its logits from the batch's page-locked buffer, and
    /// whether the output product flagged one of them as NaN or infinite (the flag is then
    /// cleared for the next step).
    fn replay_decode(&mut self, bi: usize) -> Result<(&[f32], bool), GpuError> {
        let (model, be) = (self.model, &self.model.be);
        let batch = &mut self.batches[bi];
        if self.graph.is_none() {
            let (layers, mm, part) = (&mut self.layers, &mut self.mm, &mut self.part);
            self.graph = Some(be.capture(|| forward::decode_launches(model, layers, batch, mm, part).map_err(|e| match e {
                GpuError::Cuda(c) => c,
                other => CudaError::Invalid(other.to_string()),
            }))?);
        }
        let (Some(g), Some(logits), Some(host), Some((flag, flag_host))) =
            (&self.graph, &batch.logits, batch.logits_host.as_mut(), batch.nonfinite.as_mut())
        else {
            return Err(GpuError::Unsupported("decode buffers missing".into()));
        };
        be.launch_graph(g)?;
        be.download_pinned_queued(logits, host)?;
        be.download_pinned_queued(flag, flag_host)?;
        be.synchronize()?;
        let nonfinite = flag_host.as_slice()?[0] != 0;
        if nonfinite {
            be.upload_into(&[0u32], flag)?;
        }
        Ok((host.as_slice()?, nonfinite))
    }

    /// One token of sequence `seq` after what it holds: its logits, valid until the next call
    /// (from the decode graph's page-locked buffer: no copy, no allocation). The same as
    /// [`GpuSession::eval_seq`] with [`Logits::Last`].
    pub fn decode_step(&mut self, seq: usize, token: u32) -> Result<&[f32], GpuError> {
        self.check_seq(seq)?;
        let n_vocab = self.model.cfg.n_vocab;
        check_tokens(&[token], n_vocab, self.past[seq], self.n_ctx)?;
        if self.measures(seq, 1) || !self.graph_step(1, Logits::Last, None) {
            self.last_logits = self.eval_seq(seq, &[token], Logits::Last)?;
            return Ok(&self.last_logits);
        }
        let bi = self.prepare_chunk(&[token], Attend::One(seq))?;
        let pos = self.past[seq];
        // The output product flags non-finite logits on the device; only then are they scanned
        // (for the error's position).
        let (logits, nonfinite) = self.replay_decode(bi)?;
        if nonfinite {
            check_finite(logits, pos, n_vocab)?;
        }
        self.past[seq] += 1;
        match &self.batches[bi].logits_host {
            Some(host) => Ok(host.as_slice()?),
            None => Err(GpuError::Unsupported("decode buffers missing".into())),
        }
    }

    /// Uploads the chunk's ids, positions, slots and bases into the batch buffers for its size,
    /// then runs [`forward::forward`] (or replays the decode graph).
    fn forward_chunk(&mut self, tokens: &[u32], attend: Attend, which: Logits) -> Result<Vec<f32>, GpuError> {
        self.forward_chunk_probe(tokens, attend, which, None)
    }

    /// [`GpuSession::forward_chunk`], measuring lazy ratios for the probe when `measure` names
    /// the sequence whose prompt ends with this chunk.
    fn forward_chunk_probe(&mut self, tokens: &[u32], attend: Attend, which: Logits, measure: Option<usize>) -> Result<Vec<f32>, GpuError> {
        let bi = self.prepare_chunk(tokens, attend)?;
        if self.graph_step(tokens.len(), which, measure) {
            return Ok(self.replay_decode(bi)?.0.to_vec());
        }
        let (model, batch) = (self.model, &mut self.batches[bi]);
        let probe = match (measure, self.probe.as_mut()) {
            (Some(seq), Some(p)) => Some((p, seq)),
            _ => None,
        };
        forward::forward(model, &mut self.layers, batch, &mut self.mm, &mut self.part, probe, which)
    }
}
