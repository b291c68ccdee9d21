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
//! on positions, give the same result); lazy layers come from the file's flags or explicit
//! options, not from LightTransfer-Test (which measures scores during prefill on the CPU path).
//! Activations are quantized to Q8_1 for decode (the CPU uses Q8_0/Q8_K) and rounded to f16 for
//! the prefill GEMMs, so logits differ from the CPU's within the bound of `tests/gpu_parity.rs`.

mod forward;

use engine_cuda::{CudaBackend, CudaError, DeviceBuffer, DeviceGraph, DeviceMatrix, MatmulScratch};
use ggml_kernels::attention::AttnShape;
use half::f16;

use crate::model::config::ModelConfig;
use crate::model::kv_cache::LayerKind;
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
            for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down] {
                max_matrix = max_matrix.max(m.rows * m.cols);
            }
            layers.push(GpuLayer {
                attn_norm: vec(&l.attn_norm)?,
                wq: be.upload_matrix(&l.wq)?,
                wk: be.upload_matrix(&l.wk)?,
                wv: be.upload_matrix(&l.wv)?,
                wo: be.upload_matrix(&l.wo)?,
                bq: opt(&l.bq)?,
                bk: opt(&l.bk)?,
                bv: opt(&l.bv)?,
                q_norm: opt(&l.q_norm)?,
                k_norm: opt(&l.k_norm)?,
                post_attn_norm: opt(&l.post_attn_norm)?,
                ffn_norm: vec(&l.ffn_norm)?,
                ffn_gate: be.upload_matrix(&l.ffn_gate)?,
                ffn_up: be.upload_matrix(&l.ffn_up)?,
                ffn_down: be.upload_matrix(&l.ffn_down)?,
                post_ffw_norm: opt(&l.post_ffw_norm)?,
                w16: Vec::new(),
            });
        }
        // f16 copies of the layer matrices for prefill, when cuBLAS is there and they take at
        // most half of the memory left (the rest is for KV caches); ENGINE_CUDA_F16_WEIGHTS=0
        // turns them off.
        let f16_elems: usize = layers.iter().flat_map(|l| l.matrices().map(|m| m.rows * m.cols)).sum();
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
        let tied = std::ptr::eq(w.output.data, w.token_embd.data);
        let output = if tied { None } else { Some(be.upload_matrix(&w.output)?) };
        let output_norm = be.upload(&w.output_norm)?;
        be.synchronize()?;
        Ok(GpuModel {
            cfg: model.cfg.clone(),
            be,
            token_embd,
            output,
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

/// One layer's KV cache on the device: `n_slots` slots of keys and values (f16) and the
/// position each holds (-1: empty).
struct GpuLayerCache {
    kind: LayerKind,
    /// Slots kept before the ring (streaming layers' sinks).
    sink_slots: usize,
    n_slots: usize,
    k: DeviceBuffer<f16>,
    v: DeviceBuffer<f16>,
    pos: DeviceBuffer<i32>,
    /// Index of the layer's slot map in [`Batch::slots`] (layers with the same slot layout share one).
    slot_group: usize,
}

impl GpuLayerCache {
    /// The slot that holds position `pos` (as `kv_cache::LayerCache`).
    fn slot(&self, pos: usize) -> usize {
        if pos < self.sink_slots {
            pos
        } else {
            self.sink_slots + (pos - self.sink_slots) % (self.n_slots - self.sink_slots)
        }
    }
}

/// Activation buffers of a batch of `n` tokens (shapes in the comments, per token).
struct Batch {
    n: usize,
    /// Token ids, positions, and for each slot group the slot of each token.
    ids: DeviceBuffer<i32>,
    pos: DeviceBuffer<i32>,
    slots: Vec<DeviceBuffer<i32>>,
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
    /// Decode attention's log-sum-exp `[n_head]` (unused).
    lse: DeviceBuffer<f32>,
    /// Decode (`n == 1`): the logits `[n_vocab]`.
    logits: Option<DeviceBuffer<f32>>,
    /// Decode: each matrix input quantized once to Q8_1, shared by the products that read it.
    dq: Option<DecodeQ8>,
}

/// Q8_1 copies of the decode step's matrix inputs: `[n_embd]`, `[n_head * head_dim_v]`, `[n_ff]`;
/// and the counters of the fused kernels (zero between launches): attention `[n_head]`, the
/// gate/up product `[n_ff / 32]`.
struct DecodeQ8 {
    embd: DeviceBuffer<u8>,
    attn: DeviceBuffer<u8>,
    ff: DeviceBuffer<u8>,
    attn_sync: DeviceBuffer<i32>,
    ff_sync: DeviceBuffer<i32>,
}

impl Batch {
    fn new(be: &CudaBackend, c: &ModelConfig, n: usize, n_groups: usize) -> Result<Batch, CudaError> {
        Ok(Batch {
            n,
            ids: be.alloc(n)?,
            pos: be.alloc(n)?,
            slots: (0..n_groups).map(|_| be.alloc(n)).collect::<Result<_, _>>()?,
            x: be.alloc(n * c.n_embd)?,
            h: be.alloc(n * c.n_embd)?,
            q: be.alloc(n * c.n_head * c.head_dim)?,
            k: be.alloc(n * c.n_head_kv * c.head_dim)?,
            v: be.alloc(n * c.n_head_kv * c.head_dim_v)?,
            attn: be.alloc(n * c.n_head * c.head_dim_v)?,
            o: be.alloc(n * c.n_embd)?,
            gate: be.alloc(n * c.n_ff)?,
            up: be.alloc(n * c.n_ff)?,
            lse: be.alloc(c.n_head)?,
            logits: if n == 1 { Some(be.alloc(c.n_vocab)?) } else { None },
            dq: if n == 1 {
                let q8 = |cols: usize| be.alloc::<u8>(cols / 32 * engine_cuda::Q8_1_BYTES);
                Some(DecodeQ8 { embd: q8(c.n_embd)?, attn: q8(c.n_head * c.head_dim_v)?, ff: q8(c.n_ff)?,
                    attn_sync: be.alloc(c.n_head)?,
                    ff_sync: be.alloc(c.n_ff / 32)?,
                })
            } else {
                None
            },
        })
    }

    fn bytes(c: &ModelConfig, n: usize, n_groups: usize) -> u64 {
        let floats = n * (2 * c.n_embd + c.n_head * c.head_dim + c.n_head_kv * (c.head_dim + c.head_dim_v))
            + n * (c.n_head * c.head_dim_v + c.n_embd + 2 * c.n_ff)
            + c.n_head
            + if n == 1 { c.n_vocab + c.n_head + c.n_ff / 32 } else { 0 };
        ((floats + n * (2 + n_groups)) * 4) as u64
    }
}

impl crate::generate::Evaluate for GpuSession<'_> {
    fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, ModelError> {
        GpuSession::eval(self, tokens, which).map_err(ModelError::from)
    }
    fn n_past(&self) -> usize {
        self.n_past
    }
    fn n_ctx(&self) -> usize {
        self.n_ctx
    }
}

/// Batch buffers kept for reuse (one per batch size seen; prompt chunks and decode).
const KEPT_BATCHES: usize = 3;

/// A conversation on the GPU.
pub struct GpuSession<'m> {
    pub model: &'m GpuModel,
    layers: Vec<GpuLayerCache>,
    n_groups: usize,
    batches: Vec<Batch>,
    mm: MatmulScratch,
    n_ctx: usize,
    n_batch: usize,
    n_past: usize,
    /// The decode step captured as a CUDA graph on its first use (over the buffers of the
    /// one-token batch, which is never evicted), unless `ENGINE_CUDA_GRAPH=0`.
    graph: Option<DeviceGraph>,
    use_graph: bool,
    /// Decode attention's partials (split-KV), for the largest layer; allocated once so that
    /// decode allocates nothing.
    part: DeviceBuffer<f32>,
}

impl<'m> GpuSession<'m> {
    /// Allocates the KV cache and scratch, after checking that they fit in free device memory.
    pub fn new(model: &'m GpuModel, p: &SessionParams) -> Result<GpuSession<'m>, GpuError> {
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
        // The CUDA attention kernels know `window` and `sink` only: a lazy sliding-window layer
        // whose sinks are visible to its early queries only (`AttnMask::span`) runs on the CPU.
        if let Some(il) = kinds.iter().position(|k| k.mask().without_span().is_none()) {
            return Err(GpuError::Unsupported(format!(
                "layer {il}: a lazy sliding-window layer narrower than its native window (its sinks are seen within that window only)"
            )));
        }
        let n_batch = p.n_batch.min(p.n_ctx);
        let layout = |kind: LayerKind| -> (usize, usize) {
            match kind {
                LayerKind::Full => (p.n_ctx, 0),
                LayerKind::Window { window } => ((window as usize).saturating_add(n_batch).min(p.n_ctx), 0),
                LayerKind::Streaming { sink, window, .. } => {
                    let n = (sink as usize).saturating_add(window as usize).saturating_add(n_batch).min(p.n_ctx);
                    (n, (sink as usize).min(n.saturating_sub(1)))
                }
            }
        };
        let (k_row, v_row) = (c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
        let kv_bytes: u64 = kinds.iter().map(|&k| layout(k).0 as u64 * ((k_row + v_row) * 2 + 4) as u64).sum();
        let max_cols = c.n_embd.max(c.n_ff).max(c.n_head * c.head_dim_v);
        let be = &model.be;
        let mut groups: Vec<(usize, usize)> = Vec::new();
        for &k in &kinds {
            if !groups.contains(&layout(k)) {
                groups.push(layout(k));
            }
        }
        let scratch = be.matmul_scratch_bytes(n_batch, max_cols, model.max_matrix) as u64
            + Batch::bytes(c, n_batch, groups.len())
            + Batch::bytes(c, 1, groups.len());
        let (free, total) = be.memory_info()?;
        if kv_bytes + scratch + HEADROOM > free {
            return Err(GpuError::DoesNotFit {
                what: format!(
                    "the KV cache for {} positions ({} MiB) with the batch scratch ({} MiB)",
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
        let mut layers = Vec::with_capacity(kinds.len());
        for &kind in &kinds {
            let (n_slots, sink_slots) = layout(kind);
            let mut pos = be.alloc::<i32>(n_slots)?;
            be.upload_into(&vec![-1i32; n_slots], &mut pos)?;
            layers.push(GpuLayerCache {
                kind,
                sink_slots,
                n_slots,
                k: be.alloc(n_slots * k_row)?,
                v: be.alloc(n_slots * v_row)?,
                pos,
                slot_group: groups.iter().position(|&g| g == (n_slots, sink_slots)).unwrap_or(0),
            });
        }
        let mm = be.matmul_scratch(n_batch, max_cols, model.max_matrix)?;
        let shape = AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, head_dim_v: c.head_dim_v, scale: c.attn_scale };
        let max_slots = layers.iter().map(|l| l.n_slots).max().unwrap_or(0);
        let part = be.alloc(CudaBackend::attention_partials(&shape, max_slots))?;
        let use_graph = std::env::var("ENGINE_CUDA_GRAPH").map_or(true, |v| v != "0");
        Ok(GpuSession { model, layers, n_groups: groups.len(), batches: Vec::new(), mm, n_ctx: p.n_ctx, n_batch, n_past: 0, graph: None, use_graph, part })
    }

    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// Bytes of the KV cache.
    pub fn kv_bytes(&self) -> usize {
        self.layers.iter().map(|l| (l.k.len() + l.v.len()) * 2).sum()
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) -> Result<(), GpuError> {
        for l in &mut self.layers {
            self.model.be.upload_into(&vec![-1i32; l.n_slots], &mut l.pos)?;
        }
        self.n_past = 0;
        Ok(())
    }

    /// Evaluates `tokens` after what the session holds; returns the logits `which` asks for,
    /// `n_vocab` per position, in order (as [`crate::model::Session::eval`]).
    pub fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, GpuError> {
        let n_vocab = self.model.cfg.n_vocab;
        check_tokens(tokens, n_vocab, self.n_past, self.n_ctx)?;
        let wanted = which.rows(tokens.len());
        let mut logits = Vec::with_capacity(wanted.len() * n_vocab);
        for (i, chunk) in tokens.chunks(self.n_batch).enumerate() {
            let b0 = i * self.n_batch;
            let want = which.in_chunk(tokens.len(), b0, chunk.len());
            let out = self.forward_chunk(chunk, want)?;
            check_finite(&out, self.n_past + want.rows(chunk.len()).start, n_vocab)?;
            self.n_past += chunk.len();
            logits.extend_from_slice(&out);
        }
        Ok(logits)
    }

    /// Uploads the chunk's ids, positions and slots into the batch buffers for its size, then
    /// runs [`forward::forward`].
    fn forward_chunk(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, GpuError> {
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
                self.batches.push(Batch::new(be, &self.model.cfg, n, self.n_groups)?);
                self.batches.len() - 1
            }
        };
        let batch = &mut self.batches[bi];
        let ids: Vec<i32> = tokens.iter().map(|&t| t as i32).collect();
        let pos: Vec<i32> = (self.n_past..self.n_past + n).map(|p| p as i32).collect();
        be.upload_into(&ids, &mut batch.ids)?;
        be.upload_into(&pos, &mut batch.pos)?;
        let mut done = vec![false; self.n_groups];
        for l in &self.layers {
            if !done[l.slot_group] {
                let slots: Vec<i32> = (self.n_past..self.n_past + n).map(|p| l.slot(p) as i32).collect();
                be.upload_into(&slots, &mut batch.slots[l.slot_group])?;
                done[l.slot_group] = true;
            }
        }
        let model = self.model;
        if n == 1 && which.rows(1) == (0..1) && self.use_graph {
            if self.graph.is_none() {
                let (layers, mm, part) = (&mut self.layers, &mut self.mm, &mut self.part);
                self.graph = Some(be.capture(|| forward::decode_launches(model, layers, batch, mm, part).map_err(|e| match e {
                    GpuError::Cuda(c) => c,
                    other => CudaError::Invalid(other.to_string()),
                }))?);
            }
            if let (Some(g), Some(logits)) = (&self.graph, &batch.logits) {
                be.launch_graph(g)?;
                return Ok(be.download(logits)?);
            }
        }
        forward::forward(model, &mut self.layers, batch, &mut self.mm, &mut self.part, which)
    }
}
