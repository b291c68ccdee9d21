//! Fused decode ops: fewer, larger launches per layer for single-token decode, each giving the
//! floats (or bytes) of the sequence of ops it replaces.
//!
//! - [`CudaBackend::matvec_multi`]: up to three matrices over the same Q8_1 activations in one
//!   launch (the attention's Q, K and V; their types may differ, e.g. a Q6_K `attn_v`).
//! - [`CudaBackend::gate_up_act_q8_1`]: `act(gate x) * (up x)` quantized to Q8_1, one launch in
//!   place of two products, the activation and the quantization.
//! - [`CudaBackend::rope_kv_write`]: biases, Q/K norms, RoPE of queries and keys, and the KV
//!   cache write, one launch in place of up to seven.

use cudarc::driver::{CudaFunction, DevicePtrMut};
use ggml_kernels::ops::RopeKind;

use super::{as_i32, as_u32, cfg, expect_len, CudaBackend, DeviceBuffer, DeviceMatrix, MatvecKernel, RopeParams, MATVEC_TYPES, MV2_WARPS, Q8_1_BYTES};
use crate::error::{driver, CudaError};

/// Largest head dimension of [`CudaBackend::rope_kv_write`] (`ROPE_MAX_D` in rope.cu).
const ROPE_MAX_D: usize = 1024;

/// Kernels of the fused ops.
pub(super) struct FusedKernels {
    matvec_multi: CudaFunction,
    gate_up: CudaFunction,
    rope_kv: CudaFunction,
}

impl FusedKernels {
    pub(super) fn load(func: &dyn Fn(&str) -> Result<CudaFunction, CudaError>) -> Result<FusedKernels, CudaError> {
        Ok(FusedKernels { matvec_multi: func("matvec_multi")?, gate_up: func("matvec_gate_up_q8_1")?, rope_kv: func("rope_kv_write_f16")? })
    }
}

/// The optional steps between the Q/K/V products and RoPE, per layer: biases (Qwen2) and the
/// per-head Q/K RMSNorms (Gemma 3), for [`CudaBackend::rope_kv_write`].
#[derive(Clone, Copy, Debug, Default)]
pub struct QkvExtras<'a> {
    pub bq: Option<&'a DeviceBuffer<f32>>,
    pub bk: Option<&'a DeviceBuffer<f32>>,
    pub bv: Option<&'a DeviceBuffer<f32>>,
    pub q_norm: Option<&'a DeviceBuffer<f32>>,
    pub k_norm: Option<&'a DeviceBuffer<f32>>,
    /// The norms' epsilon.
    pub eps: f32,
}

impl CudaBackend {
    /// Warps per row of a version-2 kernel for `w` (`Auto`: as [`CudaBackend::matvec`] picks).
    fn fused_warps(&self, kernel: MatvecKernel, w: &DeviceMatrix) -> Result<u32, CudaError> {
        match kernel {
            MatvecKernel::Auto => match self.auto_matvec(w.ty, w.rows, w.cols) {
                MatvecKernel::WarpsPerRow(n) => Ok(n),
                _ => Ok(4),
            },
            MatvecKernel::WarpsPerRow(n) if [1, 2, 4].contains(&n) => Ok(n),
            k => Err(CudaError::Invalid(format!("fused products: kernel {k:?} (version 2 with 1, 2 or 4 warps per row)"))),
        }
    }

    /// Decode, fused: `outs[i] = ws[i] x` for up to three matrices of the same column count, `x`
    /// given as Q8_1 blocks, in one launch; each output is the float [`CudaBackend::matvec`]
    /// gives (each matrix gets the warps per row it would get alone).
    pub fn matvec_multi(&self, ws: &[&DeviceMatrix], x_q8_1: &DeviceBuffer<u8>, outs: &mut [&mut DeviceBuffer<f32>]) -> Result<(), CudaError> {
        self.matvec_multi_with(MatvecKernel::Auto, ws, x_q8_1, outs)
    }

    /// [`CudaBackend::matvec_multi`] with a chosen version-2 kernel for every matrix (tests).
    pub fn matvec_multi_with(
        &self,
        kernel: MatvecKernel,
        ws: &[&DeviceMatrix],
        x_q8_1: &DeviceBuffer<u8>,
        outs: &mut [&mut DeviceBuffer<f32>],
    ) -> Result<(), CudaError> {
        if ws.is_empty() || ws.len() > 3 || ws.len() != outs.len() {
            return Err(CudaError::Invalid(format!("matvec_multi: {} matrices and {} outputs (1 to 3 of each)", ws.len(), outs.len())));
        }
        let cols = ws[0].cols;
        expect_len("matvec activations (Q8_1 bytes)", cols / 32 * Q8_1_BYTES, x_q8_1.len())?;
        // Per segment: type index, warps per row, rows, and its first block (first[3]: the grid).
        let mut ty = [0i32; 3];
        let mut wpr = [1i32; 3];
        let mut rows = [0i32; 3];
        let mut first = [0u32; 4];
        for (i, (w, out)) in ws.iter().zip(outs.iter()).enumerate() {
            if w.cols != cols {
                return Err(CudaError::Invalid(format!("matvec_multi: matrices of {} and {} columns", cols, w.cols)));
            }
            expect_len("matvec output", w.rows, out.len())?;
            ty[i] = MATVEC_TYPES.iter().position(|&t| t == w.ty).ok_or(CudaError::UnsupportedType(w.ty))? as i32;
            let n = self.fused_warps(kernel, w)?;
            wpr[i] = n as i32;
            rows[i] = as_i32("matrix rows", w.rows)?;
            first[i + 1] = first[i] + as_u32("matrix rows", w.rows.div_ceil(MV2_WARPS / n as usize))?;
        }
        for i in ws.len()..3 {
            first[i + 1] = first[i];
        }
        let grid = first[3];
        if grid == 0 {
            return Ok(());
        }
        let cols32 = as_i32("matrix columns", cols)?;
        let (first1, first2) = (first[1] as i32, first[2] as i32);
        // Absent segments repeat the first matrix and output with no rows and no blocks.
        let w = |i: usize| &ws[i.min(ws.len() - 1)].data.inner;
        let mut d = [0u64; 3];
        let mut guards = Vec::with_capacity(outs.len());
        for (i, o) in outs.iter_mut().enumerate() {
            let (p, g) = o.inner.device_ptr_mut(&self.stream);
            d[i] = p;
            guards.push(g);
        }
        for i in ws.len()..3 {
            d[i] = d[0];
        }
        let mut b = self.launch_pdl(&self.fk.matvec_multi);
        b.arg(w(0)).arg(w(1)).arg(w(2)).arg(&d[0]).arg(&d[1]).arg(&d[2]);
        b.arg(&rows[0]).arg(&rows[1]).arg(&rows[2]).arg(&ty[0]).arg(&ty[1]).arg(&ty[2]).arg(&wpr[0]).arg(&wpr[1]).arg(&wpr[2]);
        b.arg(&first1).arg(&first2).arg(&x_q8_1.inner).arg(&cols32);
        // SAFETY: segment s's blocks cover rows < rows_s of matrix s (checked at upload to be
        // rows x cols of its type, the type index matching) and write those rows of output s (its
        // length checked; the outputs are distinct buffers, borrowed mutably here); absent
        // segments have no rows and no blocks; every row reads the cols / 32 activation blocks
        // (length checked).
        unsafe { b.launch(cfg((grid, 1), 32 * MV2_WARPS as u32)) }.map_err(driver("launch matvec_multi"))?;
        drop(guards);
        Ok(())
    }

    /// Decode, fused: `out = act(gate x) * (up x)` (f32) and `out` quantized to Q8_1 into
    /// `out_q8`, in one launch, `x` given as Q8_1 blocks: the bytes of [`CudaBackend::matvec`] on
    /// both matrices, then [`CudaBackend::gated_act_q8_1`]. `gate` and `up` have the same shape
    /// (rows a multiple of 32; types may differ); `sync` holds `rows / 32` counters, zero before
    /// the launch and zero again after it (allocate it zeroed once and reuse it).
    #[allow(clippy::too_many_arguments)]
    pub fn gate_up_act_q8_1(
        &self,
        gate: &DeviceMatrix,
        up: &DeviceMatrix,
        x_q8_1: &DeviceBuffer<u8>,
        act: super::GatedAct,
        out: &mut DeviceBuffer<f32>,
        sync: &mut DeviceBuffer<i32>,
        out_q8: &mut DeviceBuffer<u8>,
    ) -> Result<(), CudaError> {
        self.gate_up_act_q8_1_with(MatvecKernel::Auto, gate, up, x_q8_1, act, out, sync, out_q8)
    }

    /// [`CudaBackend::gate_up_act_q8_1`] with a chosen version-2 kernel (tests).
    #[allow(clippy::too_many_arguments)]
    pub fn gate_up_act_q8_1_with(
        &self,
        kernel: MatvecKernel,
        gate: &DeviceMatrix,
        up: &DeviceMatrix,
        x_q8_1: &DeviceBuffer<u8>,
        act: super::GatedAct,
        out: &mut DeviceBuffer<f32>,
        sync: &mut DeviceBuffer<i32>,
        out_q8: &mut DeviceBuffer<u8>,
    ) -> Result<(), CudaError> {
        if gate.rows != up.rows || gate.cols != up.cols {
            return Err(CudaError::Invalid(format!(
                "gate_up: gate {}x{} and up {}x{} differ in shape",
                gate.cols, gate.rows, up.cols, up.rows
            )));
        }
        if gate.rows % 32 != 0 {
            return Err(CudaError::Invalid(format!("gate_up: {} rows are not whole Q8_1 blocks", gate.rows)));
        }
        expect_len("matvec activations (Q8_1 bytes)", gate.cols / 32 * Q8_1_BYTES, x_q8_1.len())?;
        expect_len("gate_up output", gate.rows, out.len())?;
        expect_len("gate_up counters", gate.rows / 32, sync.len())?;
        expect_len("gate_up quantized output (bytes)", gate.rows / 32 * Q8_1_BYTES, out_q8.len())?;
        let ty = |w: &DeviceMatrix| MATVEC_TYPES.iter().position(|&t| t == w.ty).map(|i| i as i32).ok_or(CudaError::UnsupportedType(w.ty));
        let (tyg, tyu) = (ty(gate)?, ty(up)?);
        if gate.rows == 0 {
            return Ok(());
        }
        let n = self.fused_warps(kernel, gate)?;
        let wpr = n as i32;
        let grid = as_u32("matrix rows", gate.rows.div_ceil(MV2_WARPS / n as usize))?;
        let (cols, rows) = (as_i32("matrix columns", gate.cols)?, as_i32("matrix rows", gate.rows)?);
        let a: i32 = if act == super::GatedAct::GeluTanh { 0 } else { 1 };
        let mut b = self.launch_pdl(&self.fk.gate_up);
        b.arg(&gate.data.inner).arg(&up.data.inner).arg(&tyg).arg(&tyu).arg(&wpr).arg(&x_q8_1.inner).arg(&cols).arg(&rows).arg(&a);
        b.arg(&mut out.inner).arg(&mut sync.inner).arg(&mut out_q8.inner);
        // SAFETY: each row r < rows of gate and up (checked at upload to be rows x cols of their
        // types) is read by its warps with the cols / 32 activation blocks, and writes out[r]
        // (rows long), counts in sync[r / 32] (rows / 32 long) and, for the last of a block's 32
        // rows, block r / 32 of out_q8 (rows / 32 blocks); lengths checked above.
        unsafe { b.launch(cfg((grid, 1), 32 * MV2_WARPS as u32)) }.map_err(driver("launch matvec_gate_up_q8_1"))?;
        Ok(())
    }

    /// Decode, fused: the attention inputs from the Q, K and V projections to the cache, for
    /// `n = pos.len()` tokens: `extras`' biases added and per-head norms applied, RoPE (`rope`,
    /// whose `n_head` is the query heads) applied to the queries in place (`q`:
    /// `[n][n_head][head_dim]`) and to the keys (`k`: `[n][n_head_kv][head_dim]`), and the keys
    /// and values (`v`: `[n][n_head_kv][head_dim_v]`) stored as f16 in cache slots `slots[t]`
    /// with `kpos[slots[t]] = pos[t]` (`k` and `v` themselves are left as they are). The floats of
    /// [`CudaBackend::add_bias`], [`CudaBackend::rms_norm_inplace`], [`CudaBackend::rope`] and
    /// [`CudaBackend::kv_write`] in sequence. The caller keeps every slot below `kpos.len()`
    /// and distinct within the call.
    #[allow(clippy::too_many_arguments)]
    pub fn rope_kv_write(
        &self,
        rope: &RopeParams,
        n_head_kv: usize,
        head_dim_v: usize,
        extras: &QkvExtras<'_>,
        q: &mut DeviceBuffer<f32>,
        k: &DeviceBuffer<f32>,
        v: &DeviceBuffer<f32>,
        slots: &DeviceBuffer<i32>,
        pos: &DeviceBuffer<i32>,
        kc: &mut DeviceBuffer<half::f16>,
        vc: &mut DeviceBuffer<half::f16>,
        kpos: &mut DeviceBuffer<i32>,
    ) -> Result<(), CudaError> {
        let (n_head, hd) = (rope.n_head, rope.head_dim);
        if rope.n_rot % 2 != 0 || rope.n_rot > hd || rope.n_rot == 0 {
            return Err(CudaError::Invalid(format!("rope: n_rot {} must be even, positive and at most head_dim {hd}", rope.n_rot)));
        }
        if hd > ROPE_MAX_D {
            return Err(CudaError::Invalid(format!("rope_kv_write: head_dim {hd} exceeds {ROPE_MAX_D}")));
        }
        let n = pos.len();
        expect_len("rope_kv_write slots", n, slots.len())?;
        expect_len("rope_kv_write queries", n * n_head * hd, q.len())?;
        expect_len("rope_kv_write keys", n * n_head_kv * hd, k.len())?;
        expect_len("rope_kv_write values", n * n_head_kv * head_dim_v, v.len())?;
        for (what, b, len) in
            [("q bias", extras.bq, n_head * hd), ("k bias", extras.bk, n_head_kv * hd), ("v bias", extras.bv, n_head_kv * head_dim_v)]
        {
            if let Some(b) = b {
                expect_len(what, len, b.len())?;
            }
        }
        for (what, w) in [("q norm", extras.q_norm), ("k norm", extras.k_norm)] {
            if let Some(w) = w {
                expect_len(what, hd, w.len())?;
            }
        }
        let n_slots = kpos.len();
        expect_len("rope_kv_write key cache", n_slots * n_head_kv * hd, kc.len())?;
        expect_len("rope_kv_write value cache", n_slots * n_head_kv * head_dim_v, vc.len())?;
        if n == 0 || n_head + n_head_kv == 0 {
            return Ok(());
        }
        let heads = as_u32("heads", n_head + n_head_kv)?;
        let (nh, nkv, d, dv, nrot) =
            (as_i32("n_head", n_head)?, as_i32("n_head_kv", n_head_kv)?, hd as i32, as_i32("head_dim_v", head_dim_v)?, rope.n_rot as i32);
        let mode: i32 = match rope.kind {
            RopeKind::Norm => 0,
            RopeKind::Neox => 1,
        };
        let null: u64 = 0;
        let mut b = self.launch_pdl(&self.fk.rope_kv);
        b.arg(&mut q.inner).arg(&k.inner).arg(&v.inner);
        for x in [extras.bq, extras.bk, extras.bv, extras.q_norm, extras.k_norm] {
            match x {
                Some(x) => b.arg(&x.inner),
                None => b.arg(&null),
            };
        }
        b.arg(&extras.eps).arg(&mut kc.inner).arg(&mut vc.inner).arg(&mut kpos.inner).arg(&slots.inner).arg(&pos.inner);
        let step = rope.step();
        b.arg(&nh).arg(&nkv).arg(&d).arg(&dv).arg(&nrot).arg(&step).arg(&rope.freq_scale).arg(&mode);
        // The block size of rms_norm_f32 for rows of head_dim, so the norms' sums match it.
        let threads = hd.div_ceil(32) as u32 * 32;
        // SAFETY: block (h, t) reads row t's head h of q (queries) or of k and v (key/value
        // heads), the biases and norms (lengths checked), writes back its query head, or its key
        // and value heads in slot slots[t] (< n_slots, the caller's precondition) of kc and vc
        // and kpos[slots[t]]; head_dim is at most the kernel's shared row (checked).
        unsafe { b.launch(cfg((heads, as_u32("tokens", n)?), threads)) }.map_err(driver("launch rope_kv_write_f16"))?;
        Ok(())
    }
}
