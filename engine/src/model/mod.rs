//! Models: hyperparameters ([`config`]), weights ([`weights`]), the KV cache ([`kv_cache`]) and one
//! forward pass per architecture ([`gemma3`], [`llama`]), each reading top to bottom.
//!
//! A [`Model`] borrows an open [`GgufFile`]; a [`Session`] owns a KV cache and evaluates tokens.

pub mod config;
mod exec;
pub mod gemma3;
pub mod kv_cache;
pub mod llama;
pub mod weights;

use ggml_kernels::matmul::{matmul, matmul_gated, matmul_many, matmul_reference, QMatrix};
use ggml_kernels::ops::{RopeAngles, RopeTable};
use ggml_kernels::team::TeamVec;

use crate::gguf::{GgufError, GgufFile};
use config::{Arch, ModelConfig};
use kv_cache::{KvCache, KvCacheParams, KvType, LayerKind};
use exec::{Acts, Exec, Seqs};
use weights::Weights;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("unsupported architecture {0:?} (supported: gemma3, llama, mistral, qwen2)")]
    UnsupportedArch(String),
    #[error("bad hyperparameters: {0}")]
    Config(String),
    #[error("tensor {0:?} is missing")]
    MissingTensor(String),
    #[error("tensor {name:?} has shape {got:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<u64>, got: Vec<u64> },
    #[error("tensor {0:?}: {1}")]
    Tensor(String, String),
    #[error("{what} needs {need} bytes, only {avail} available")]
    OutOfMemory { what: &'static str, need: u64, avail: u64 },
    #[error("token id {id} is outside the vocabulary of {n_vocab}")]
    BadToken { id: u32, n_vocab: usize },
    #[error("context full: {need} positions needed, the context holds {n_ctx}")]
    ContextFull { need: usize, n_ctx: usize },
    #[error("non-finite logits at position {pos}: the model produced NaN or infinity")]
    NonFinite { pos: usize },
    #[error("kernel error: {0}")]
    Kernel(String),
    #[error("{0}")]
    Unsupported(String),
}

/// An RMSNorm of rows `x` times `w` into `out` (`x, w, eps, out`).
pub(crate) type NormInto = fn(&[f32], &[f32], f32, &mut [f32]);
/// An RMSNorm of rows in place (`x, w, eps`).
pub(crate) type NormInPlace = fn(&mut [f32], &[f32], f32);

/// A model ready to run: its configuration and weights borrowed from the file.
pub struct Model<'a> {
    pub cfg: ModelConfig,
    pub weights: Weights<'a>,
    /// Compute every matrix product in f32 from dequantized weights, instead of quantizing the
    /// activations for integer dot products (as llama.cpp does), and GELU and the RoPE angles
    /// exactly instead of as ggml's CPU backend does (f16 GELU table, angles by repeated f32
    /// multiplication). Slow; for checking the model definition against a float32 reference
    /// without the activation-quantization error.
    pub exact_matmul: bool,
    /// Run a decode step of one sequence (one token) as one parallel region of every thread
    /// (see [`exec`]); false: the ops one after another on the calling thread, each product a
    /// fork-join (the earlier path, bit-identical; for comparisons). `ENGINE_DECODE_TEAM=0`
    /// makes it false.
    pub decode_team: bool,
    /// Compute as llama.cpp's x86 CPU backend does, bit for bit (`ggml_kernels::llamacpp`: its
    /// summation orders, fused multiply-adds and f16 roundings), so that greedy decoding follows
    /// llama.cpp's token for token. Slower than the fast path (scalar code, every product from
    /// the file's layout). Set by [`Model::use_llamacpp_numerics`].
    pub llamacpp_numerics: bool,
    file: &'a GgufFile,
    /// Each layer's RoPE frequencies.
    pub(crate) rope: Vec<RopeTable>,
}

impl<'a> Model<'a> {
    /// How the RoPE angles are computed: exactly on the exact path, as llama.cpp computes them on
    /// the fast path.
    pub(crate) fn rope_angles(&self) -> RopeAngles {
        if self.exact_matmul {
            RopeAngles::Exact
        } else if self.llamacpp_numerics {
            RopeAngles::GgmlFused
        } else {
            RopeAngles::Ggml
        }
    }

    pub fn load(file: &'a GgufFile) -> Result<Model<'a>, ModelError> {
        let cfg = ModelConfig::from_gguf(file)?;
        let weights = Weights::load(file, &cfg)?;
        let rope = cfg.layers.iter().map(|l| RopeTable::new(cfg.rope_kind, cfg.n_rot, l.rope_base, cfg.rope_freq_scale)).collect();
        let decode_team = !std::env::var("ENGINE_DECODE_TEAM").is_ok_and(|v| v == "0");
        Ok(Model { cfg, weights, exact_matmul: false, decode_team, llamacpp_numerics: false, file, rope })
    }

    /// Switches to llama.cpp's numerics ([`Model::llamacpp_numerics`]). They cover Gemma 3 with
    /// weights of the types `ggml_kernels::llamacpp::supports` lists (those of the default
    /// model); anything else is an error naming what is not covered.
    pub fn use_llamacpp_numerics(&mut self) -> Result<(), ModelError> {
        if self.cfg.arch != Arch::Gemma3 {
            return Err(ModelError::Unsupported(format!("llama.cpp's numerics cover gemma3 only, not {:?}", self.cfg.arch)));
        }
        let w = &self.weights;
        let mats = w.layers.iter().flat_map(|l| [&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down]).chain([&w.output]);
        if let Some(bad) = mats.map(|m| m.file.ty).find(|&t| !ggml_kernels::llamacpp::supports(t)) {
            return Err(ModelError::Unsupported(format!("llama.cpp's numerics do not cover {bad} weights")));
        }
        self.llamacpp_numerics = true;
        self.exact_matmul = false;
        Ok(())
    }

    /// The RMSNorms of the CPU forward pass (into `out`, and in place): llama.cpp's for its
    /// numerics, else the fast path's.
    pub(crate) fn rms_norms(&self) -> (NormInto, NormInPlace) {
        if self.llamacpp_numerics {
            (ggml_kernels::llamacpp::rms_norm, ggml_kernels::llamacpp::rms_norm_inplace)
        } else {
            (ggml_kernels::ops::rms_norm, ggml_kernels::ops::rms_norm_inplace)
        }
    }

    /// The layout a CPU product reads `w` in: the file's for llama.cpp's numerics, else the
    /// CPU's own where it has one.
    pub(crate) fn view<'m>(&self, w: &'m weights::Matrix<'_>) -> ggml_kernels::matmul::QMatrix<'m> {
        if self.llamacpp_numerics {
            w.file
        } else {
            w.cpu()
        }
    }

    /// Builds the CPU's own layouts of the output projection and the layer matrices that have
    /// one (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K: see `ggml_kernels::repack`), in parallel, once; later
    /// calls return at once. The mapped pages of the matrices rebuilt are handed back to the
    /// kernel as they are packed, a few megabytes at a time (they are read again only if the GPU
    /// uploads them, or, for an output tied to the embeddings, row by row for the embedding
    /// lookups), so the copies replace those bytes in memory rather than double them.
    /// [`Session::new`] calls this.
    pub fn prepare_cpu(&self) {
        use rayon::prelude::*;
        if self.llamacpp_numerics {
            return;
        }
        // The output projection first: the largest, so it starts while the layers are shared out.
        let all: Vec<&weights::Matrix<'a>> = self.packable_matrices().collect();
        all.par_iter().for_each(|m| m.prepare(&|bytes| self.file.release_pages(bytes)));
    }

    /// Bytes of the CPU's own copies of weight matrices (0 before [`Model::prepare_cpu`]).
    pub fn owned_weight_bytes(&self) -> u64 {
        self.packable_matrices().map(|m| m.owned_bytes() as u64).sum()
    }

    /// The matrices the CPU may keep in its own layout: the output projection, then every
    /// layer's.
    fn packable_matrices(&self) -> impl Iterator<Item = &weights::Matrix<'a>> {
        std::iter::once(&self.weights.output).chain(self.weights.layers.iter().flat_map(|l| l.matrices()))
    }

    /// Attention kind of each layer as the model defines it.
    pub fn native_layer_kinds(&self) -> Vec<LayerKind> {
        self.cfg
            .layers
            .iter()
            .map(|l| match l.window {
                Some(window) => LayerKind::Window { window },
                None => LayerKind::Full,
            })
            .collect()
    }

    /// Bytes of all weight matrices and vectors.
    pub fn weight_bytes(&self) -> u64 {
        let w = &self.weights;
        let mut n = w.token_embd.data.len() as u64 + (w.output_norm.len() * 4) as u64;
        if !std::ptr::eq(w.output.file.data, w.token_embd.data) {
            n += w.output.file.data.len() as u64;
        }
        for l in &w.layers {
            for m in l.matrices() {
                n += m.file.data.len() as u64;
            }
        }
        n
    }
}

/// Settings of a session.
#[derive(Clone, Debug)]
pub struct SessionParams {
    pub n_ctx: usize,
    /// Most tokens evaluated in one forward call; longer inputs are split.
    pub n_batch: usize,
    pub kv_type: KvType,
    /// Per-layer attention kinds; `None` uses the model's own.
    pub layer_kinds: Option<Vec<LayerKind>>,
}

impl Default for SessionParams {
    fn default() -> Self {
        SessionParams { n_ctx: 4096, n_batch: 512, kv_type: KvType::F16, layer_kinds: None }
    }
}

/// A conversation's state: the KV cache and how many positions it holds.
pub struct Session<'m, 'a> {
    pub model: &'m Model<'a>,
    pub cache: KvCache,
    n_past: usize,
    n_batch: usize,
}

/// Which positions of a forward call produce logits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// The last position only.
    Last,
    /// Every position.
    All,
    /// Positions from this index (of the call's tokens) on.
    From(usize),
    /// None (the tokens only fill the cache).
    None,
}

impl Logits {
    /// The rows of a batch of `n` tokens this asks for.
    pub fn rows(self, n: usize) -> std::ops::Range<usize> {
        match self {
            Logits::Last => n.saturating_sub(1)..n,
            Logits::All => 0..n,
            Logits::From(k) => k.min(n)..n,
            Logits::None => n..n,
        }
    }

    /// The share of this call's wanted rows (over `total` tokens) that falls in the batch of
    /// `len` tokens starting at token `b0`, relative to that batch.
    pub fn in_chunk(self, total: usize, b0: usize, len: usize) -> Logits {
        let wanted = self.rows(total);
        let lo = wanted.start.clamp(b0, b0 + len) - b0;
        let hi = wanted.end.clamp(b0, b0 + len) - b0;
        if lo >= hi {
            Logits::None
        } else {
            Logits::From(lo)
        }
    }
}

/// Errors when `tokens` hold an id outside a vocabulary of `n_vocab`, or do not fit after
/// `n_past` positions in a context of `n_ctx`.
pub(crate) fn check_tokens(tokens: &[u32], n_vocab: usize, n_past: usize, n_ctx: usize) -> Result<(), ModelError> {
    if let Some(&id) = tokens.iter().find(|&&t| t as usize >= n_vocab) {
        return Err(ModelError::BadToken { id, n_vocab });
    }
    if n_past + tokens.len() > n_ctx {
        return Err(ModelError::ContextFull { need: n_past + tokens.len(), n_ctx });
    }
    Ok(())
}

/// Errors when a logit is not finite; `first_pos` is the position of the first row of `logits`
/// (rows of `n_vocab`).
pub(crate) fn check_finite(logits: &[f32], first_pos: usize, n_vocab: usize) -> Result<(), ModelError> {
    // A branch-free pass first (all exponent bits set: Inf or NaN), which the compiler
    // vectorizes; the position only when it fails.
    let exp = 0x7f80_0000u32;
    if logits.chunks(1024).all(|c| c.iter().fold(0u32, |acc, v| acc | u32::from(v.to_bits() & exp == exp)) == 0) {
        return Ok(());
    }
    match logits.iter().position(|v| !v.is_finite()) {
        Some(bad) => Err(ModelError::NonFinite { pos: first_pos + bad / n_vocab }),
        None => Ok(()),
    }
}

impl<'m, 'a> Session<'m, 'a> {
    pub fn new(model: &'m Model<'a>, p: &SessionParams) -> Result<Self, ModelError> {
        if p.n_ctx == 0 || p.n_batch == 0 {
            return Err(ModelError::Config("n_ctx and n_batch must be positive".into()));
        }
        model.prepare_cpu();
        let kinds = p.layer_kinds.clone().unwrap_or_else(|| model.native_layer_kinds());
        if kinds.len() != model.cfg.n_layer {
            return Err(ModelError::Config(format!("{} layer kinds for {} layers", kinds.len(), model.cfg.n_layer)));
        }
        let c = &model.cfg;
        let params = KvCacheParams {
            n_ctx: p.n_ctx,
            n_batch: p.n_batch,
            ty: p.kv_type,
            k_row: c.n_head_kv * c.head_dim,
            v_row: c.n_head_kv * c.head_dim_v,
        };
        let avail = crate::memstat::available_bytes();
        let cache = KvCache::new(&params, &kinds, avail)?;
        Ok(Session { model, cache, n_past: 0, n_batch: p.n_batch })
    }

    /// Positions held.
    pub fn n_past(&self) -> usize {
        self.n_past
    }

    pub fn n_ctx(&self) -> usize {
        self.cache.n_ctx
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.cache.clear();
        self.n_past = 0;
    }

    /// Keeps only the first `n` positions. Returns false when the cache could not go back that
    /// far (a sliding window already dropped what position `n` needs); the session is then empty.
    pub fn truncate(&mut self, n: usize) -> bool {
        if n >= self.n_past {
            return true;
        }
        let ok = self.cache.truncate(n);
        self.n_past = if ok { n } else { 0 };
        ok
    }

    /// Evaluates `tokens` after what the session holds; returns the logits `which` asks for,
    /// `n_vocab` per position, in order.
    ///
    /// When a LightTransfer-Test probe is set and `tokens` end the prompt it measures, the prompt
    /// runs layer-major (all of its tokens through layer 0, then layer 1, ...), so a layer the
    /// probe makes lazy is cut to sink + window before the next layer's cache is touched: the KV
    /// memory in use during the prefill stays near `P` full layers plus one (see
    /// [`KvCache::peak_bytes`]).
    pub fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, ModelError> {
        let layer_major = self
            .cache
            .probe
            .as_ref()
            .is_some_and(|p| p.selection.cuts() && self.n_past + tokens.len() == p.end && tokens.len() > self.n_batch);
        if layer_major {
            self.check(tokens)?;
            let out = forward_layer_major(self.model, &mut self.cache, tokens, self.n_past, self.n_batch, which)?;
            check_finite(&out, self.n_past + which.rows(tokens.len()).start, self.model.cfg.n_vocab)?;
            self.n_past += tokens.len();
            return Ok(out);
        }
        let mut out = eval_batch(&mut [self], &[tokens], which)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Errors when `tokens` hold an id outside the vocabulary or do not fit in the context.
    fn check(&self, tokens: &[u32]) -> Result<(), ModelError> {
        check_tokens(tokens, self.model.cfg.n_vocab, self.n_past, self.cache.n_ctx)
    }
}

/// Evaluates several sessions of one model together: `tokens[i]` follows what `sessions[i]`
/// holds. Each forward call carries a batch of every session (up to its `n_batch` tokens), so
/// the weights are read once per step for all of them (batched decode, llama.cpp's parallel
/// sequences); attention runs per session over its own cache. Returns each session's logits as
/// `which` asks, relative to that session's tokens.
pub fn eval_batch(sessions: &mut [&mut Session<'_, '_>], tokens: &[&[u32]], which: Logits) -> Result<Vec<Vec<f32>>, ModelError> {
    if sessions.len() != tokens.len() {
        return Err(ModelError::Config(format!("{} sessions but {} token lists", sessions.len(), tokens.len())));
    }
    let Some(first) = sessions.first() else { return Ok(Vec::new()) };
    let model = first.model;
    if sessions.iter().any(|s| !std::ptr::eq(s.model, model)) {
        return Err(ModelError::Config("sessions evaluated together must share one model".into()));
    }
    for (s, t) in sessions.iter().zip(tokens) {
        s.check(t)?;
    }
    let n_vocab = model.cfg.n_vocab;
    let mut logits: Vec<Vec<f32>> = tokens.iter().map(|t| Vec::with_capacity(which.rows(t.len()).len() * n_vocab)).collect();
    let rounds = sessions.iter().zip(tokens).map(|(s, t)| t.len().div_ceil(s.n_batch)).max().unwrap_or(0);
    for r in 0..rounds {
        // This round's chunk of each session, and that chunk's share of the wanted rows.
        let mut ids: Vec<u32> = Vec::new();
        let mut members: Vec<usize> = Vec::new();
        let mut seqs: Vec<SeqBatch<'_>> = Vec::new();
        for (i, (s, t)) in sessions.iter_mut().zip(tokens).enumerate() {
            let b0 = r * s.n_batch;
            if b0 >= t.len() {
                continue;
            }
            let chunk = &t[b0..(b0 + s.n_batch).min(t.len())];
            let want = which.in_chunk(t.len(), b0, chunk.len());
            ids.extend_from_slice(chunk);
            members.push(i);
            seqs.push(SeqBatch { cache: &mut s.cache, pos0: s.n_past, n: chunk.len(), which: want });
        }
        let out = forward(model, &ids, &mut seqs)?;
        let shapes: Vec<(usize, Logits)> = seqs.iter().map(|s| (s.n, s.which)).collect();
        drop(seqs);
        let mut at = 0;
        // A session whose logits are this call's whole output (decode of one sequence) takes the
        // buffer itself rather than a copy.
        let mut whole = None;
        for (&i, (n, want)) in members.iter().zip(shapes) {
            let rows = want.rows(n);
            let part = &out[at..at + rows.len() * n_vocab];
            at += part.len();
            let s = &mut sessions[i];
            check_finite(part, s.n_past + rows.start, n_vocab)?;
            s.n_past += n;
            if logits[i].is_empty() && !part.is_empty() && part.len() == out.len() {
                whole = Some(i);
            } else {
                logits[i].extend_from_slice(part);
            }
        }
        if let Some(i) = whole {
            logits[i] = out;
        }
    }
    Ok(logits)
}

/// One sequence's share of a forward call: its cache, the position of its first token, how many
/// of the call's tokens are its (each sequence's tokens follow the previous one's), and which of
/// them produce logits.
pub struct SeqBatch<'c> {
    pub cache: &'c mut KvCache,
    pub pos0: usize,
    pub n: usize,
    pub which: Logits,
}

/// The position of every row of a forward call.
pub(crate) fn row_positions(seqs: &[SeqBatch<'_>]) -> Vec<usize> {
    seqs.iter().flat_map(|s| s.pos0..s.pos0 + s.n).collect()
}

/// One layer of an architecture, applied in place to the hidden states `a.x` (`[n][n_embd]`,
/// the rows of `seqs` in order), as ops of `ex` (every thread of a team calls it).
type LayerFn = fn(&Exec<'_, '_, '_>, usize, &Acts, &Seqs<'_, '_>) -> Result<(), ModelError>;

fn layer_fn(arch: Arch) -> LayerFn {
    match arch {
        Arch::Gemma3 => gemma3::layer,
        Arch::Llama | Arch::Qwen2 => llama::layer,
    }
}

/// Token-major forward pass: the tokens of every sequence through each layer in turn; returns
/// the logits each sequence's `which` asks for, sequence by sequence.
///
/// The call runs as one parallel region ([`exec`]): for a decode step of one sequence on every
/// thread of the pool, the whole chain of ops from the first layer to the logits; else on the
/// calling thread, its ops parallel inside.
pub(crate) fn forward(m: &Model<'_>, tokens: &[u32], seqs: &mut [SeqBatch<'_>]) -> Result<Vec<f32>, ModelError> {
    debug_assert_eq!(tokens.len(), seqs.iter().map(|s| s.n).sum::<usize>());
    let layer = layer_fn(m.cfg.arch);
    let shapes: Vec<(usize, Logits)> = seqs.iter().map(|s| (s.n, s.which)).collect();
    let threads = if exec::team_decodes(m, seqs) { rayon::current_num_threads() } else { 1 };
    let acts = Acts::new(m, embed(m, tokens, m.cfg.embd_scale)?, row_positions(seqs));
    let n_out: usize = shapes.iter().map(|&(n, which)| which.rows(n).len()).sum();
    let logits = TeamVec::new(n_out * m.cfg.n_vocab);
    let seqs = Seqs::new(seqs);
    let result = std::sync::Mutex::new(Ok(()));
    ggml_kernels::team::run(threads, &|ctx| {
        let ex = Exec::new(m, ctx);
        let r = (0..m.cfg.n_layer).try_for_each(|il| layer(&ex, il, &acts, &seqs)).and_then(|()| ex.output_logits(&acts, &shapes, &logits));
        if ctx.ith() == 0 {
            *result.lock().unwrap_or_else(|e| e.into_inner()) = r;
        }
    });
    result.into_inner().unwrap_or_else(|e| e.into_inner())?;
    Ok(logits.into_vec())
}

/// Layer-major forward pass of one sequence: every token through layer 0 (in batches of
/// `n_batch`), then through layer 1, and so on. Each layer's cache is first touched (allocated)
/// when its turn comes, so with a LightTransfer-Test probe a layer made lazy is already cut to
/// sink + window before the next one allocates.
fn forward_layer_major(
    m: &Model<'_>,
    cache: &mut KvCache,
    tokens: &[u32],
    pos0: usize,
    n_batch: usize,
    which: Logits,
) -> Result<Vec<f32>, ModelError> {
    let e = m.cfg.n_embd;
    let layer = layer_fn(m.cfg.arch);
    // Batches of `n_batch`, except that the last one holds the probe's last `w_last` queries
    // whole (the ratio is measured in the batch that ends the prompt).
    let w_last = cache.probe.as_ref().map_or(1, |p| p.w_last);
    let split = crate::lighttransfer::probe_split(tokens.len(), w_last, n_batch);
    let mut bounds: Vec<std::ops::Range<usize>> = (0..split).step_by(n_batch).map(|b| b..(b + n_batch).min(split)).collect();
    bounds.push(split..tokens.len());
    let mut x = embed(m, tokens, m.cfg.embd_scale)?;
    let solo = ggml_kernels::team::Ctx::solo();
    let ex = Exec::new(m, &solo);
    for il in 0..m.cfg.n_layer {
        for r in &bounds {
            let mut seq = [SeqBatch { cache: &mut *cache, pos0: pos0 + r.start, n: r.len(), which: Logits::None }];
            let acts = Acts::new(m, x[r.start * e..r.end * e].to_vec(), row_positions(&seq));
            layer(&ex, il, &acts, &Seqs::new(&mut seq))?;
            x[r.start * e..r.end * e].copy_from_slice(&acts.x.into_vec());
        }
    }
    output_logits(m, &x, &[(tokens.len(), which)])
}

/// `outs[i] = ws[i] x` for the rows of `x`: products of one input (Q/K/V, gate/up) as one
/// call, so decode quantizes the input once and starts the threads once for all of them.
pub(crate) fn mm_many_into<const N: usize>(m: &Model<'_>, ws: [&QMatrix<'_>; N], x: &[f32], outs: &mut [&mut [f32]; N]) -> Result<(), ModelError> {
    let n = ws.first().map_or(0, |w| x.len() / w.cols.max(1));
    if m.llamacpp_numerics {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            ggml_kernels::llamacpp::matmul(w, x, n, out).map_err(|e| ModelError::Kernel(e.to_string()))?;
        }
        return Ok(());
    }
    if m.exact_matmul {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul_reference(w, x, n, out).map_err(|e| ModelError::Kernel(e.to_string()))?;
        }
        return Ok(());
    }
    matmul_many(&ws, x, n, outs).map_err(|e| ModelError::Kernel(e.to_string()))
}

/// A gated FFN's first half, `out = act(gate x) * (up x)` (`[n][n_ff]`): for decode one job
/// that applies `act` to each chunk of rows as it is computed (`matmul_gated`).
pub(crate) fn mm_gated_into(m: &Model<'_>, gate: &QMatrix<'_>, up: &QMatrix<'_>, x: &[f32], act: fn(f32) -> f32, out: &mut [f32]) -> Result<(), ModelError> {
    let n = x.len() / gate.cols.max(1);
    if m.exact_matmul || m.llamacpp_numerics {
        let mut u = vec![0f32; out.len()];
        mm_many_into(m, [gate, up], x, &mut [&mut *out, &mut u])?;
        if m.llamacpp_numerics {
            // Its numerics cover Gemma 3 alone (`Model::use_llamacpp_numerics`): the gate is GELU.
            ggml_kernels::llamacpp::geglu(out, &u);
        } else {
            ggml_kernels::ops::gated_act(out, &u, act);
        }
        return Ok(());
    }
    matmul_gated(gate, up, x, n, act, out).map_err(|e| ModelError::Kernel(e.to_string()))
}

/// `out = W x` for `n` vectors, mapping kernel errors.
pub(crate) fn mm(m: &Model<'_>, w: &QMatrix<'_>, x: &[f32], n: usize) -> Result<Vec<f32>, ModelError> {
    let mut out = vec![0f32; n * w.rows];
    let product = if m.llamacpp_numerics {
        ggml_kernels::llamacpp::matmul
    } else if m.exact_matmul {
        matmul_reference
    } else {
        matmul
    };
    product(w, x, n, &mut out).map_err(|e| ModelError::Kernel(e.to_string()))?;
    Ok(out)
}

/// Adds `bias` to each of the rows of `x`.
pub(crate) fn add_bias(x: &mut [f32], bias: Option<&Vec<f32>>) {
    if let Some(b) = bias {
        for row in x.chunks_exact_mut(b.len()) {
            ggml_kernels::ops::add_assign(row, b);
        }
    }
}

/// The embeddings of `tokens`, `[n][n_embd]`, times `scale` when given.
pub(crate) fn embed(m: &Model<'_>, tokens: &[u32], scale: Option<f32>) -> Result<Vec<f32>, ModelError> {
    let e = m.cfg.n_embd;
    let mut x = vec![0f32; tokens.len() * e];
    for (row, &t) in x.chunks_exact_mut(e).zip(tokens) {
        m.weights.token_embd.dequantize_row(t as usize, row).map_err(|err| ModelError::Kernel(err.to_string()))?;
        if let Some(s) = scale {
            ggml_kernels::ops::scale(row, s);
        }
    }
    Ok(x)
}

/// Final norm and output projection for the rows each sequence's `which` asks for (`seqs`: each
/// sequence's row count and selection, in row order).
pub(crate) fn output_logits(m: &Model<'_>, x: &[f32], seqs: &[(usize, Logits)]) -> Result<Vec<f32>, ModelError> {
    let e = m.cfg.n_embd;
    let mut picked: Vec<f32> = Vec::new();
    let mut row0 = 0;
    for &(n, which) in seqs {
        let rows = which.rows(n);
        picked.extend_from_slice(&x[(row0 + rows.start) * e..(row0 + rows.end) * e]);
        row0 += n;
    }
    if picked.is_empty() {
        return Ok(Vec::new());
    }
    let mut normed = vec![0f32; picked.len()];
    (m.rms_norms().0)(&picked, &m.weights.output_norm, m.cfg.rms_eps, &mut normed);
    mm(m, &m.view(&m.weights.output), &normed, picked.len() / e)
}

/// Attention of every sequence of a forward call over its own cache (`q`, `k`, `v`: the call's
/// rows in order); sequences run in parallel.
pub(crate) fn attend_seqs(
    m: &Model<'_>,
    seqs: &mut [SeqBatch<'_>],
    il: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
) -> Vec<f32> {
    use rayon::prelude::*;
    let c = &m.cfg;
    let (qr, kr, vr) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim, c.n_head_kv * c.head_dim_v);
    if let [s] = seqs {
        return attend(m, s.cache, il, q, k, v, s.pos0, s.n);
    }
    let mut starts = Vec::with_capacity(seqs.len());
    let mut r = 0;
    for s in seqs.iter() {
        starts.push(r);
        r += s.n;
    }
    let parts: Vec<Vec<f32>> = seqs
        .par_iter_mut()
        .zip(starts)
        .map(|(s, r0)| {
            let rows = r0..r0 + s.n;
            attend(
                m,
                s.cache,
                il,
                &q[rows.start * qr..rows.end * qr],
                &k[rows.start * kr..rows.end * kr],
                &v[rows.start * vr..rows.end * vr],
                s.pos0,
                s.n,
            )
        })
        .collect();
    parts.concat()
}

/// Attention of a batch over one layer's cache, and the batch's keys and values stored.
///
/// A streaming (lazy) layer holds exactly `sink + window` slots, too few to take a whole batch
/// before attending, so for batches it attends over the cached slots plus the batch's own keys
/// and stores the batch afterwards; other layers store first (their caches have room).
/// When a [`crate::lighttransfer::LazyProbe`] is set and this batch ends the prompt, the layer's
/// lazy ratio is measured here, and layers the probe selects are cut to streaming at once.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    m: &Model<'_>,
    cache: &mut KvCache,
    il: usize,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    pos0: usize,
    n: usize,
) -> Vec<f32> {
    use ggml_kernels::attention::{attention, AttnShape, KvView};
    let c = &m.cfg;
    let qpos: Vec<i64> = (pos0..pos0 + n).map(|p| p as i64).collect();
    let mut out = vec![0f32; n * c.n_head * c.head_dim_v];
    let shape = AttnShape {
        n_head: c.n_head,
        n_head_kv: c.n_head_kv,
        head_dim: c.head_dim,
        head_dim_v: c.head_dim_v,
        scale: c.attn_scale,
    };
    let layer = &mut cache.layers[il];
    let mask = layer.kind.mask();
    if matches!(layer.kind, LayerKind::Streaming { .. }) && n > 1 {
        let (mut ks, mut vs, mut kpos) = layer.snapshot();
        ks.extend_from_slice(k);
        vs.extend_from_slice(v);
        kpos.extend_from_slice(&qpos);
        attention(&shape, q, &qpos, KvView::F32(&ks), KvView::F32(&vs), &kpos, mask, &mut out, None);
        layer.write(pos0, k, v);
    } else {
        layer.write(pos0, k, v);
        if m.llamacpp_numerics {
            ggml_kernels::llamacpp::attention(&shape, q, &qpos, layer.keys(), layer.values(), layer.positions(), mask, &mut out);
        } else {
            attention(&shape, q, &qpos, layer.keys(), layer.values(), layer.positions(), mask, &mut out, None);
        }
    }
    cache.note_resident();

    // Lazy-ratio measurement at the end of the prompt.
    let Some(probe) = cache.probe.as_mut() else { return out };
    if pos0 + n != probe.end {
        return out;
    }
    let layer = &cache.layers[il];
    if !probe.stream.is_candidate(layer.kind, probe.end) {
        return out;
    }
    let t0 = std::time::Instant::now();
    let first = probe.end.saturating_sub(probe.w_last).max(pos0);
    let rows = first - pos0..n;
    let qrows = &q[rows.start * c.n_head * c.head_dim..];
    let ratio = crate::lighttransfer::lazy_ratio(
        &shape,
        qrows,
        &qpos[rows],
        layer.keys(),
        layer.positions(),
        mask,
        probe.stream,
        probe.end as i64,
    );
    let stream = probe.stream;
    let lazy = probe.record(il, ratio);
    for &j in &lazy {
        cache.layers[j] = cache.layers[j].to_streaming(stream.sink, stream.window);
    }
    if let Some(p) = cache.probe.as_mut() {
        p.elapsed += t0.elapsed();
    }
    out
}
