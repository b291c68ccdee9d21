//! The ops of a CPU forward pass, as the threads of a team run them
//! ([`ggml_kernels::team`]).
//!
//! A forward call runs as one parallel region: every thread of the team executes the whole
//! chain of ops of the architecture's layer function, and each op ([`Exec`]'s methods) does
//! the pieces of the work this thread claims, then waits until the op is complete. For a
//! decode step of one sequence (one token) the team has every thread of the pool, so a token
//! starts its threads once instead of once per product (llama.cpp's graph executor works this
//! way); the products share their rows out in chunks, attention its heads, and the small
//! serial steps (norms, residuals, the KV write) are ops of one piece, run by one thread while
//! the others wait. Every other call (prefill, several sequences, exact products, a
//! LightTransfer-Test probe) runs as a team of one, whose ops are the plain functions,
//! parallel inside as before (rayon).
//!
//! Either way each op computes what the plain function computes, bit for bit: the products run
//! the same per-row kernels on the same quantized input, attention the same per-head sums.
//!
//! The activations of a call live in [`Acts`], buffers every thread of the team may use by the
//! team's rule (an op writes disjoint parts, reads what earlier ops wrote); only the ops here
//! touch their contents.

use std::cell::UnsafeCell;

use ggml_kernels::attention::{attention_heads, AttnShape};
use ggml_kernels::matmul::{matmul_gated_team, matmul_many_team, QMatrix};
use ggml_kernels::ops::RopeTable;
use ggml_kernels::team::{Ctx, TeamVec};

use super::{attend_seqs, mm_gated_into, mm_many_into, Logits, Model, ModelError, SeqBatch};

/// The activations of one forward call over `n` rows (the rows of its sequences in order),
/// allocated once per call.
pub(crate) struct Acts {
    /// Hidden states, `[n][n_embd]`.
    pub x: TeamVec,
    /// A block's normed input, `[n][n_embd]`.
    pub h: TeamVec,
    /// Queries, `[n][n_head][head_dim]`.
    pub q: TeamVec,
    /// Keys, `[n][n_head_kv][head_dim]`.
    pub k: TeamVec,
    /// Values, `[n][n_head_kv][head_dim_v]`.
    pub v: TeamVec,
    /// Attention output, `[n][n_head][head_dim_v]`.
    pub attn: TeamVec,
    /// A block's output (attention or FFN), `[n][n_embd]`.
    pub o: TeamVec,
    /// The FFN's gated hidden layer, `[n][n_ff]`.
    pub ff: TeamVec,
    /// The position of each row.
    pub pos: Vec<usize>,
}

impl Acts {
    /// Buffers for the rows of `seqs`, with the hidden states `x` (`[n][n_embd]`).
    pub fn new(m: &Model<'_>, x: Vec<f32>, pos: Vec<usize>) -> Acts {
        let c = &m.cfg;
        let n = pos.len();
        Acts {
            x: TeamVec::from_vec(x),
            h: TeamVec::new(n * c.n_embd),
            q: TeamVec::new(n * c.n_head * c.head_dim),
            k: TeamVec::new(n * c.n_head_kv * c.head_dim),
            v: TeamVec::new(n * c.n_head_kv * c.head_dim_v),
            attn: TeamVec::new(n * c.n_head * c.head_dim_v),
            o: TeamVec::new(n * c.n_embd),
            ff: TeamVec::new(n * c.n_ff),
            pos,
        }
    }
}

/// The sequences of a forward call, shared by the threads of a team: a cache is written only
/// in an op of one piece ([`Ctx::single`]) and read by the others only in a later op.
pub(crate) struct Seqs<'s, 'c> {
    seqs: UnsafeCell<&'s mut [SeqBatch<'c>]>,
}

// SAFETY: the sequences are reached only through `Exec::attend`, which writes them on one
// thread (a one-piece op) and reads them on every thread only in a later op.
unsafe impl Sync for Seqs<'_, '_> {}

impl<'s, 'c> Seqs<'s, 'c> {
    pub fn new(seqs: &'s mut [SeqBatch<'c>]) -> Self {
        Seqs { seqs: UnsafeCell::new(seqs) }
    }
}

/// One thread's handle on the ops of a forward call: the model and this thread's place in the
/// team. Every thread of the team calls the same ops in the same order.
pub(crate) struct Exec<'e, 'm, 't> {
    pub m: &'e Model<'m>,
    ctx: &'e Ctx<'t>,
}

impl<'e, 'm, 't> Exec<'e, 'm, 't> {
    pub fn new(m: &'e Model<'m>, ctx: &'e Ctx<'t>) -> Self {
        Exec { m, ctx }
    }

    /// Whether this is a team of one (every op the plain function).
    fn solo(&self) -> bool {
        self.ctx.nth() == 1
    }

    /// `out = rms_norm(x) * w`, each row.
    pub fn rms_norm(&self, x: &TeamVec, w: &[f32], out: &TeamVec) {
        // SAFETY: one thread reads `x` and writes `out` during the op; the others wait.
        let norm = self.m.rms_norms().0;
        self.ctx.single(|| unsafe { norm(x.get(), w, self.m.cfg.rms_eps, out.get_mut()) });
    }

    /// `x = rms_norm(x) * w` in place, each row (`w.len()` elements) when `w` is given.
    pub fn rms_norm_inplace(&self, x: &TeamVec, w: Option<&Vec<f32>>) {
        if let Some(w) = w {
            // SAFETY: one thread touches `x` during the op; the others wait.
            let norm = self.m.rms_norms().1;
            self.ctx.single(|| unsafe { norm(x.get_mut(), w, self.m.cfg.rms_eps) });
        }
    }

    /// `y += x`, element-wise.
    pub fn add(&self, y: &TeamVec, x: &TeamVec) {
        let pieces = self.ctx.nth();
        self.ctx.parallel(pieces, &mut |i| {
            let r = Ctx::piece(i, pieces, y.len());
            // SAFETY: piece `i` of `y` is this thread's alone during the op; `x` is only read.
            unsafe {
                let ys = std::slice::from_raw_parts_mut(y.ptr().add(r.start), r.len());
                ggml_kernels::ops::add_assign(ys, &x.get()[r]);
            }
        });
    }

    /// Adds `bias` to each row of `x`, when given.
    pub fn add_bias(&self, x: &TeamVec, bias: Option<&Vec<f32>>) {
        // SAFETY: one thread touches `x` during the op; the others wait.
        self.ctx.single(|| super::add_bias(unsafe { x.get_mut() }, bias));
    }

    /// Per-head RMSNorms of the queries and keys (when `norms` are given), then RoPE of each
    /// row at its position. In a team the queries go to one thread and the keys to another.
    pub fn norm_rope(&self, q: &TeamVec, k: &TeamVec, norms: Option<(&Vec<f32>, &Vec<f32>)>, rope: &RopeTable, pos: &[usize]) {
        let (c, eps, angles, norm) = (&self.m.cfg, self.m.cfg.rms_eps, self.m.rope_angles(), self.m.rms_norms().1);
        let (qr, kr) = (c.n_head * c.head_dim, c.n_head_kv * c.head_dim);
        // The queries and the keys as two pieces (a team of one runs them in turn).
        self.ctx.parallel(2, &mut |i| {
            let (x, row, weights) = if i == 0 { (q, qr, norms.map(|n| n.0)) } else { (k, kr, norms.map(|n| n.1)) };
            // SAFETY: this piece alone touches `x` during the op.
            let x = unsafe { x.get_mut() };
            if let Some(w) = weights {
                norm(x, w, eps);
            }
            for (t, &p) in pos.iter().enumerate() {
                rope.apply_all(&mut [&mut x[t * row..(t + 1) * row]], c.head_dim, p as i64, angles);
            }
        });
    }

    /// `outs[i] = ws[i] x` (Q/K/V, or any products of one input).
    pub fn mm_many<const N: usize>(&self, ws: [&QMatrix<'_>; N], x: &TeamVec, outs: [&TeamVec; N]) -> Result<(), ModelError> {
        if self.solo() {
            // SAFETY: a team of one: nothing else touches the buffers.
            let mut views = outs.map(|o| unsafe { o.get_mut() });
            return mm_many_into(self.m, ws, unsafe { x.get() }, &mut views);
        }
        // SAFETY: every thread calls this op with the same buffers, which only it touches.
        unsafe { matmul_many_team(self.ctx, &ws, x.get(), &outs) }.map_err(|e| ModelError::Kernel(e.to_string()))
    }

    /// `out = w x`.
    pub fn mm(&self, w: &QMatrix<'_>, x: &TeamVec, out: &TeamVec) -> Result<(), ModelError> {
        self.mm_many([w], x, [out])
    }

    /// A gated FFN's first half, `out = act(gate x) * (up x)`.
    pub fn mm_gated(&self, gate: &QMatrix<'_>, up: &QMatrix<'_>, x: &TeamVec, act: fn(f32) -> f32, out: &TeamVec) -> Result<(), ModelError> {
        if self.solo() {
            // SAFETY: a team of one: nothing else touches the buffers.
            return mm_gated_into(self.m, gate, up, unsafe { x.get() }, act, unsafe { out.get_mut() });
        }
        // SAFETY: every thread calls this op with the same buffers, which only it touches.
        unsafe { matmul_gated_team(self.ctx, gate, up, x.get(), act, out) }.map_err(|e| ModelError::Kernel(e.to_string()))
    }

    /// Attention of every sequence over its cache of layer `il` (after storing the call's keys
    /// and values there) into `out`. In a team (one sequence, one token: see
    /// [`team_decodes`]) one thread stores, then the threads share the query heads.
    pub fn attend(&self, seqs: &Seqs<'_, '_>, il: usize, q: &TeamVec, k: &TeamVec, v: &TeamVec, out: &TeamVec) {
        let c = &self.m.cfg;
        if self.solo() {
            // SAFETY: a team of one: nothing else touches the sequences or the buffers.
            unsafe {
                let r = attend_seqs(self.m, *seqs.seqs.get(), il, q.get(), k.get(), v.get());
                out.get_mut().copy_from_slice(&r);
            }
            return;
        }
        // SAFETY: one thread alone touches the cache during this op; the others wait.
        self.ctx.single(|| unsafe {
            let s = &mut (*seqs.seqs.get())[0];
            s.cache.layers[il].write(s.pos0, k.get(), v.get());
            s.cache.note_resident();
        });
        let shape = AttnShape { n_head: c.n_head, n_head_kv: c.n_head_kv, head_dim: c.head_dim, head_dim_v: c.head_dim_v, scale: c.attn_scale };
        // The query heads in one piece per thread (each piece reads the keys and values once).
        let pieces = self.ctx.nth().min(c.n_head);
        self.ctx.parallel(pieces, &mut |i| {
            let heads = Ctx::piece(i, pieces, c.n_head);
            // SAFETY: this piece's heads of `out` are its alone; `q` is only read.
            let o = unsafe { std::slice::from_raw_parts_mut(out.ptr().add(heads.start * c.head_dim_v), heads.len() * c.head_dim_v) };
            let qs = unsafe { q.get() };
            // SAFETY: every thread only reads the cache during this op.
            let s = unsafe { &(&*seqs.seqs.get())[0] };
            let layer = &s.cache.layers[il];
            attention_heads(&shape, qs, s.pos0 as i64, layer.keys(), layer.values(), layer.positions(), layer.kind.mask(), heads, o);
        });
    }
}

impl Exec<'_, '_, '_> {
    /// Final norm and output projection of the rows each sequence's `which` asks for (`shapes`:
    /// each sequence's row count and selection, in row order) into `logits`, with `a.h` as
    /// scratch.
    pub fn output_logits(&self, a: &Acts, shapes: &[(usize, Logits)], logits: &TeamVec) -> Result<(), ModelError> {
        let m = self.m;
        if self.solo() {
            // SAFETY: a team of one: nothing else touches the buffers.
            let out = super::output_logits(m, unsafe { a.x.get() }, shapes)?;
            unsafe { logits.get_mut() }.copy_from_slice(&out);
            return Ok(());
        }
        // A team runs one row (see `team_decodes`).
        if logits.is_empty() {
            return Ok(());
        }
        self.rms_norm(&a.x, &m.weights.output_norm, &a.h);
        self.mm(&m.view(&m.weights.output), &a.h, logits)
    }
}

/// Whether a forward call over `seqs` runs as a team of every thread (else as a team of one):
/// one sequence, one token, the integer products, and no LightTransfer-Test probe (whose
/// measurement needs the whole attention on one thread).
pub(crate) fn team_decodes(m: &Model<'_>, seqs: &[SeqBatch<'_>]) -> bool {
    m.decode_team && !m.exact_matmul && !m.llamacpp_numerics && matches!(seqs, [s] if s.n == 1 && s.cache.probe.is_none())
}
