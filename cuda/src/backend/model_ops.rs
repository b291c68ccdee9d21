//! The ops a whole forward pass needs beyond the decode kernels: embedding rows, residual and
//! bias additions, KV-cache writes, prefill attention, and the batched matrix product
//! ([`CudaBackend::matmul`]: Q8_1 matrix-vector products for a few tokens, dequantization to f16
//! and a cuBLAS GEMM with f32 accumulation for a batch).

use cudarc::cublas::{result as blas, sys as blas_sys, CudaBlas};
use cudarc::driver::{CudaFunction, DevicePtr, DevicePtrMut, PushKernelArg};
use ggml_kernels::attention::{AttnMask, AttnShape};
use ggml_kernels::GgmlType;
use half::f16;

use super::{as_i32, as_u32, cfg, check_attn_shape, expect_len, CudaBackend, DeviceBuffer, DeviceMatrix, MATVEC_TYPES, Q8_1_BYTES};
use crate::error::{driver, guarded, CudaError};

/// Weight types of [`CudaBackend::get_rows`] and of the f16 dequantization of prefill.
pub const DEQUANT_TYPES: [GgmlType; 7] =
    [GgmlType::F32, GgmlType::F16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::Q6_K];

/// Fewest tokens [`CudaBackend::matmul`] sends through the GEMM path (below, one matrix-vector
/// product per token reads the weights fewer times than dequantizing them once).
pub const GEMM_MIN_TOKENS: usize = 8;

/// Queries per block of the prefill attention kernel (`AP_Q` in attention.cu).
const AP_Q: usize = 16;

/// Kernels of the model ops.
pub(super) struct ModelKernels {
    get_rows: Vec<CudaFunction>,
    dequant_f16: Vec<CudaFunction>,
    f32_to_f16: CudaFunction,
    add: CudaFunction,
    add_bias: CudaFunction,
    kv_write: CudaFunction,
    attn_prefill: CudaFunction,
    add_rms_norm_q8_1: CudaFunction,
    gated_act_q8_1: CudaFunction,
}

impl ModelKernels {
    pub(super) fn load(func: &dyn Fn(&str) -> Result<CudaFunction, CudaError>) -> Result<ModelKernels, CudaError> {
        let name = |t: GgmlType| t.to_string().to_lowercase();
        Ok(ModelKernels {
            get_rows: DEQUANT_TYPES.iter().map(|t| func(&format!("get_rows_{}", name(*t)))).collect::<Result<_, _>>()?,
            dequant_f16: DEQUANT_TYPES.iter().map(|t| func(&format!("dequant_f16_{}", name(*t)))).collect::<Result<_, _>>()?,
            f32_to_f16: func("f32_to_f16")?,
            add: func("add_f32")?,
            add_bias: func("add_bias_f32")?,
            kv_write: func("kv_write_f16")?,
            attn_prefill: func("attn_prefill")?,
            add_rms_norm_q8_1: func("add_rms_norm_q8_1")?,
            gated_act_q8_1: func("gated_act_q8_1")?,
        })
    }
}

/// cuBLAS, when its library loads.
pub(super) fn open_blas(stream: &std::sync::Arc<cudarc::driver::CudaStream>) -> Result<CudaBlas, String> {
    // SAFETY: only tries to dlopen the library's candidate names.
    if !unsafe { blas_sys::is_culib_present() } {
        return Err("cuBLAS (libcublas.so) could not be loaded".into());
    }
    match guarded("cublasCreate", || CudaBlas::new(stream.clone()).map_err(|e| CudaError::Invalid(format!("cublasCreate: {e:?}")))) {
        Ok(b) => Ok(b),
        Err(e) => Err(e.to_string()),
    }
}

/// Scratch memory of [`CudaBackend::matmul`]: f16 weights of the largest matrix, and the
/// activations as f16 or Q8_1.
pub struct MatmulScratch {
    w_f16: Option<DeviceBuffer<f16>>,
    x_f16: Option<DeviceBuffer<f16>>,
    x_q8_1: DeviceBuffer<u8>,
    max_tokens: usize,
    max_cols: usize,
}

impl MatmulScratch {
    /// Bytes it holds.
    pub fn bytes(&self) -> usize {
        self.w_f16.as_ref().map_or(0, |b| b.len() * 2) + self.x_f16.as_ref().map_or(0, |b| b.len() * 2) + self.x_q8_1.len()
    }
}

fn dequant_index(t: GgmlType) -> Result<usize, CudaError> {
    DEQUANT_TYPES.iter().position(|&d| d == t).ok_or(CudaError::UnsupportedType(t))
}

fn grid_stride_blocks(n: usize) -> u32 {
    n.div_ceil(256).clamp(1, 65_536) as u32
}

impl CudaBackend {
    /// Whether prefill can use cuBLAS; the reason when it cannot.
    pub fn blas_status(&self) -> Result<(), &str> {
        match &self.blas {
            Ok(_) => Ok(()),
            Err(e) => Err(e.as_str()),
        }
    }

    /// Free and total device memory, in bytes.
    pub fn memory_info(&self) -> Result<(u64, u64), CudaError> {
        self.ctx.bind_to_thread().map_err(driver("cuCtxSetCurrent"))?;
        let (free, total) = cudarc::driver::result::mem_get_info().map_err(driver("cuMemGetInfo"))?;
        Ok((free as u64, total as u64))
    }

    /// Scratch for [`CudaBackend::matmul`] of up to `max_tokens` tokens, `max_cols` columns and
    /// `max_weights` weights per matrix (the f16 weight buffer only where cuBLAS is present and
    /// batches reach [`GEMM_MIN_TOKENS`]).
    pub fn matmul_scratch(&self, max_tokens: usize, max_cols: usize, max_weights: usize) -> Result<MatmulScratch, CudaError> {
        let gemm = self.blas.is_ok() && max_tokens >= GEMM_MIN_TOKENS;
        Ok(MatmulScratch {
            w_f16: if gemm { Some(self.alloc::<f16>(max_weights)?) } else { None },
            x_f16: if gemm { Some(self.alloc::<f16>(max_tokens * max_cols)?) } else { None },
            x_q8_1: self.alloc::<u8>(max_tokens * max_cols.div_ceil(32) * Q8_1_BYTES)?,
            max_tokens,
            max_cols,
        })
    }

    /// Bytes [`CudaBackend::matmul_scratch`] would allocate.
    pub fn matmul_scratch_bytes(&self, max_tokens: usize, max_cols: usize, max_weights: usize) -> usize {
        let gemm = self.blas.is_ok() && max_tokens >= GEMM_MIN_TOKENS;
        let f16s = if gemm { 2 * (max_weights + max_tokens * max_cols) } else { 0 };
        f16s + max_tokens * max_cols.div_ceil(32) * Q8_1_BYTES
    }

    /// `out[t] = W x[t]` for `n` tokens (`x`: `[n][w.cols]`, `out`: `[n][w.rows]`). One token,
    /// or fewer than [`GEMM_MIN_TOKENS`], or no cuBLAS: activations quantized to Q8_1 and the
    /// integer matrix-vector kernel per token (as llama.cpp's mmvq). Otherwise the weights are
    /// dequantized to f16 in the scratch and multiplied by the f16 activations on the tensor
    /// cores (cuBLAS `GemmEx`, f32 accumulation and output).
    pub fn matmul(
        &self,
        w: &DeviceMatrix,
        x: &DeviceBuffer<f32>,
        n: usize,
        scratch: &mut MatmulScratch,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        self.matmul_w16(w, None, x, n, scratch, out)
    }

    /// [`CudaBackend::matmul`], with the weights' f16 copy (from
    /// [`CudaBackend::dequantize_f16`]) when the caller keeps one: the GEMM path then skips the
    /// dequantization.
    pub fn matmul_w16(
        &self,
        w: &DeviceMatrix,
        w16: Option<&DeviceBuffer<f16>>,
        x: &DeviceBuffer<f32>,
        n: usize,
        scratch: &mut MatmulScratch,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        if let Some(b) = w16 {
            expect_len("f16 weights", w.rows * w.cols, b.len())?;
        }
        expect_len("matmul input", n * w.cols, x.len())?;
        expect_len("matmul output", n * w.rows, out.len())?;
        if n > scratch.max_tokens || w.cols > scratch.max_cols {
            return Err(CudaError::Invalid(format!(
                "matmul of {n} x {} exceeds the scratch ({} x {})",
                w.cols, scratch.max_tokens, scratch.max_cols
            )));
        }
        if n == 0 || w.rows == 0 {
            return Ok(());
        }
        let use_gemm = n >= GEMM_MIN_TOKENS
            && self.blas.is_ok()
            && scratch.x_f16.is_some()
            && (w16.is_some() || scratch.w_f16.as_ref().is_some_and(|b| b.len() >= w.rows * w.cols))
            && DEQUANT_TYPES.contains(&w.ty);
        if !use_gemm {
            if !MATVEC_TYPES.contains(&w.ty) {
                return Err(CudaError::UnsupportedType(w.ty));
            }
            let qb = w.cols / 32 * Q8_1_BYTES;
            self.quantize_q8_1_into(x, &mut scratch.x_q8_1, n * qb)?;
            let kernel = self.auto_matvec(w.ty, w.rows, w.cols);
            for t in 0..n {
                let xq = scratch.x_q8_1.inner.slice(t * qb..(t + 1) * qb);
                let mut o = out.inner.slice_mut(t * w.rows..(t + 1) * w.rows);
                self.launch_matvec(kernel, w, &xq, &mut o, None)?;
            }
            return Ok(());
        }
        let (Some(xf), Ok(blas_handle)) = (scratch.x_f16.as_mut(), self.blas.as_ref()) else {
            return Err(CudaError::Invalid("matmul: no GEMM scratch".into()));
        };
        let cols = as_i32("matrix columns", w.cols)?;
        // Weights to f16, unless the caller keeps them.
        let wf: &DeviceBuffer<f16> = match (w16, scratch.w_f16.as_mut()) {
            (Some(b), _) => b,
            (None, Some(wf)) => {
                self.dequant_launch(w, wf)?;
                wf
            }
            (None, None) => return Err(CudaError::Invalid("matmul: no f16 weight scratch".into())),
        };
        // Activations to f16.
        let nx = (n * w.cols) as i64;
        let mut b = self.stream.launch_builder(&self.mk.f32_to_f16);
        b.arg(&x.inner).arg(&mut xf.inner).arg(&nx);
        // SAFETY: a grid-stride loop over i < n * cols of x (that long, checked) and xf (at least
        // max_tokens * max_cols).
        unsafe { b.launch(cfg((grid_stride_blocks(n * w.cols), 1), 256)) }.map_err(driver("launch f32_to_f16"))?;
        // out (column-major rows x n) = W^T (W column-major cols x rows, transposed) * X
        // (column-major cols x n).
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (m, nn, k) = (as_i32("rows", w.rows)?, as_i32("tokens", n)?, cols);
        let (a_ptr, _ga) = wf.inner.device_ptr(&self.stream);
        let (b_ptr, _gb) = xf.inner.device_ptr(&self.stream);
        let (c_ptr, _gc) = out.inner.device_ptr_mut(&self.stream);
        // SAFETY: A is k x m halves (lda k) at a_ptr, B k x n halves (ldb k), C m x n floats
        // (ldc m): within wf (>= rows * cols), xf (>= n * cols) and out (n * rows), all on the
        // backend's stream, to which the cuBLAS handle is bound.
        unsafe {
            blas::gemm_ex(
                *blas_handle.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                m,
                nn,
                k,
                (&alpha) as *const f32 as *const _,
                a_ptr as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16F,
                k,
                b_ptr as *const _,
                blas_sys::cudaDataType_t::CUDA_R_16F,
                k,
                (&beta) as *const f32 as *const _,
                c_ptr as *mut _,
                blas_sys::cudaDataType_t::CUDA_R_32F,
                m,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(|e| CudaError::Invalid(format!("cublasGemmEx ({m} x {nn} x {k}): {e:?}")))?;
        Ok(())
    }

    /// The weights as f16 (`out`: `[rows][cols]`), for [`CudaBackend::matmul_w16`].
    pub fn dequantize_f16(&self, w: &DeviceMatrix, out: &mut DeviceBuffer<f16>) -> Result<(), CudaError> {
        expect_len("f16 weights", w.rows * w.cols, out.len())?;
        self.dequant_launch(w, out)
    }

    fn dequant_launch(&self, w: &DeviceMatrix, out: &mut DeviceBuffer<f16>) -> Result<(), CudaError> {
        if out.len() < w.rows * w.cols {
            return Err(CudaError::Shape { what: "f16 weights (at least)", expected: w.rows * w.cols, got: out.len() });
        }
        if w.rows == 0 {
            return Ok(());
        }
        let cols = as_i32("matrix columns", w.cols)?;
        let f = &self.mk.dequant_f16[dequant_index(w.ty)?];
        let mut b = self.stream.launch_builder(f);
        b.arg(&w.data.inner).arg(&mut out.inner).arg(&cols);
        // SAFETY: block r < rows reads row r of w (rows x cols of its type, checked at upload) and
        // writes cols halves at r * cols of out, which holds at least rows * cols (checked above).
        unsafe { b.launch(cfg((as_u32("matrix rows", w.rows)?, 1), 256)) }.map_err(driver("launch dequant_f16"))?;
        Ok(())
    }

    /// Quantizes the first `nbytes / 36 * 32` elements of `x` (all of it) into the start of `out`.
    fn quantize_q8_1_into(&self, x: &DeviceBuffer<f32>, out: &mut DeviceBuffer<u8>, nbytes: usize) -> Result<(), CudaError> {
        if x.len() % 32 != 0 || x.len() / 32 * Q8_1_BYTES != nbytes || out.len() < nbytes {
            return Err(CudaError::Invalid(format!("quantize: {} activations into {} of {} bytes", x.len(), nbytes, out.len())));
        }
        let n_blocks = x.len() / 32;
        let nb = n_blocks as i64;
        let mut b = self.launch_pdl(&self.k.quantize_q8_1);
        b.arg(&x.inner).arg(&mut out.inner).arg(&nb);
        // SAFETY: one warp per block b < n_blocks reads x[32b..32b+32] and writes block b of out,
        // which holds at least n_blocks blocks (checked above).
        unsafe { b.launch(cfg((as_u32("quantize blocks", n_blocks.div_ceil(8))?, 1), 256)) }.map_err(driver("launch quantize"))?;
        Ok(())
    }

    /// RMSNorm of `x`'s rows in place (see [`CudaBackend::rms_norm`]).
    pub fn rms_norm_inplace(&self, x: &mut DeviceBuffer<f32>, w: &DeviceBuffer<f32>, eps: f32) -> Result<(), CudaError> {
        let Some((grid, n32)) = super::rms_norm_launch(x.len(), w.len())? else { return Ok(()) };
        let mut b = self.stream.launch_builder(&self.k.rms_norm);
        let (xp, _g) = x.inner.device_ptr_mut(&self.stream);
        b.arg(&xp).arg(&w.inner).arg(&xp).arg(&n32).arg(&eps);
        // SAFETY: rms_norm_f32 allows out == x (each element is read, then written by the same
        // thread after the block's reduction); x holds whole rows of n floats.
        unsafe { b.launch(grid) }.map_err(driver("launch rms_norm_f32"))?;
        Ok(())
    }

    /// `out[t] = W[ids[t]] * scale` (embedding rows as f32), `out`: `[ids.len()][w.cols]`.
    pub fn get_rows(&self, w: &DeviceMatrix, ids: &DeviceBuffer<i32>, scale: f32, out: &mut DeviceBuffer<f32>) -> Result<(), CudaError> {
        expect_len("get_rows output", ids.len() * w.cols, out.len())?;
        if ids.is_empty() {
            return Ok(());
        }
        let cols = as_i32("matrix columns", w.cols)?;
        let mut b = self.stream.launch_builder(&self.mk.get_rows[dequant_index(w.ty)?]);
        b.arg(&w.data.inner).arg(&ids.inner).arg(&mut out.inner).arg(&cols).arg(&scale);
        // SAFETY: block t reads ids[t] and row ids[t] of w; the caller checked every id against
        // the row count on the host (ids are token ids checked against n_vocab = rows), and out
        // holds ids.len() rows (checked above).
        unsafe { b.launch(cfg((as_u32("tokens", ids.len())?, 1), 256)) }.map_err(driver("launch get_rows"))?;
        Ok(())
    }

    /// `x += y`.
    pub fn add(&self, x: &mut DeviceBuffer<f32>, y: &DeviceBuffer<f32>) -> Result<(), CudaError> {
        expect_len("add", x.len(), y.len())?;
        if x.is_empty() {
            return Ok(());
        }
        let n = x.len() as i64;
        let blocks = grid_stride_blocks(x.len());
        let mut b = self.stream.launch_builder(&self.mk.add);
        b.arg(&mut x.inner).arg(&y.inner).arg(&n);
        // SAFETY: a grid-stride loop over i < n of x and y, both n long.
        unsafe { b.launch(cfg((blocks, 1), 256)) }.map_err(driver("launch add_f32"))?;
        Ok(())
    }

    /// `x[r] += bias` for every row `r` of `bias.len()`.
    pub fn add_bias(&self, x: &mut DeviceBuffer<f32>, bias: &DeviceBuffer<f32>) -> Result<(), CudaError> {
        if bias.is_empty() || x.len() % bias.len() != 0 {
            return Err(CudaError::Invalid(format!("add_bias: {} elements are not rows of {}", x.len(), bias.len())));
        }
        if x.is_empty() {
            return Ok(());
        }
        let (n, m) = (x.len() as i64, as_i32("bias length", bias.len())?);
        let blocks = grid_stride_blocks(x.len());
        let mut b = self.stream.launch_builder(&self.mk.add_bias);
        b.arg(&mut x.inner).arg(&bias.inner).arg(&n).arg(&m);
        // SAFETY: a grid-stride loop over i < n of x, reading bias[i % m].
        unsafe { b.launch(cfg((blocks, 1), 256)) }.map_err(driver("launch add_bias_f32"))?;
        Ok(())
    }

    /// Stores `n = slots.len()` tokens' keys (`k`: `[n][k_row]`) and values (`v`:
    /// `[n][v_row]`) as f16 in cache slots `slots[t]` (`kc`: `[n_slots][k_row]`, `vc`:
    /// `[n_slots][v_row]`), with `kpos[slots[t]] = pos[t]`. The caller keeps every slot below
    /// `kpos.len()` and distinct within the call.
    #[allow(clippy::too_many_arguments)]
    pub fn kv_write(
        &self,
        k: &DeviceBuffer<f32>,
        v: &DeviceBuffer<f32>,
        slots: &DeviceBuffer<i32>,
        pos: &DeviceBuffer<i32>,
        kc: &mut DeviceBuffer<f16>,
        vc: &mut DeviceBuffer<f16>,
        kpos: &mut DeviceBuffer<i32>,
    ) -> Result<(), CudaError> {
        let n = slots.len();
        expect_len("kv_write positions", n, pos.len())?;
        if n == 0 {
            return Ok(());
        }
        if k.len() % n != 0 || v.len() % n != 0 {
            return Err(CudaError::Invalid(format!("kv_write: {} keys / {} values for {n} tokens", k.len(), v.len())));
        }
        let (k_row, v_row) = (k.len() / n, v.len() / n);
        let n_slots = kpos.len();
        expect_len("kv_write key cache", n_slots * k_row, kc.len())?;
        expect_len("kv_write value cache", n_slots * v_row, vc.len())?;
        let (kr, vr) = (as_i32("k_row", k_row)?, as_i32("v_row", v_row)?);
        let mut b = self.stream.launch_builder(&self.mk.kv_write);
        b.arg(&k.inner).arg(&v.inner).arg(&mut kc.inner).arg(&mut vc.inner).arg(&mut kpos.inner);
        b.arg(&slots.inner).arg(&pos.inner).arg(&kr).arg(&vr);
        // SAFETY: block t writes slot slots[t] (< n_slots, the caller's precondition) of kc, vc
        // and kpos, reading row t of k and v (n rows each, checked above).
        unsafe { b.launch(cfg((as_u32("tokens", n)?, 1), 128)) }.map_err(driver("launch kv_write_f16"))?;
        Ok(())
    }

    /// Attention of `qpos.len()` queries (`q`: `[n][n_head][head_dim]`) over the cache slots
    /// (as [`CudaBackend::attention_decode`]), into `out` (`[n][n_head][head_dim_v]`); no
    /// log-sum-exp. A query that sees no slot gets zeros.
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill(
        &self,
        s: &AttnShape,
        q: &DeviceBuffer<f32>,
        qpos: &DeviceBuffer<i32>,
        k: &DeviceBuffer<f16>,
        v: &DeviceBuffer<f16>,
        kpos: &DeviceBuffer<i32>,
        mask: AttnMask,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        let n_slots = kpos.len();
        expect_len("attention keys", n_slots * s.n_head_kv * s.head_dim, k.len())?;
        expect_len("attention values", n_slots * s.n_head_kv * s.head_dim_v, v.len())?;
        self.attention_prefill_slots(s, q, qpos, k, v, kpos, 0..n_slots, mask, out)
    }

    /// [`CudaBackend::attention_prefill`] over the cache slots `slots` only (one sequence's part of
    /// a cache that holds several).
    #[allow(clippy::too_many_arguments)]
    pub fn attention_prefill_slots(
        &self,
        s: &AttnShape,
        q: &DeviceBuffer<f32>,
        qpos: &DeviceBuffer<i32>,
        k: &DeviceBuffer<f16>,
        v: &DeviceBuffer<f16>,
        kpos: &DeviceBuffer<i32>,
        slots: std::ops::Range<usize>,
        mask: AttnMask,
        out: &mut DeviceBuffer<f32>,
    ) -> Result<(), CudaError> {
        check_attn_shape(s)?;
        let n = qpos.len();
        let (k_row, v_row) = (s.n_head_kv * s.head_dim, s.n_head_kv * s.head_dim_v);
        if slots.start > slots.end || slots.end > kpos.len() || k.len() < kpos.len() * k_row || v.len() < kpos.len() * v_row {
            return Err(CudaError::Invalid(format!(
                "attention: slots {slots:?} of a cache of {} positions ({} keys, {} values)",
                kpos.len(),
                k.len(),
                v.len()
            )));
        }
        let n_slots = slots.len();
        expect_len("attention queries", n * s.n_head * s.head_dim, q.len())?;
        expect_len("attention output", n * s.n_head * s.head_dim_v, out.len())?;
        if n == 0 || s.n_head == 0 {
            return Ok(());
        }
        let window: i32 = match mask.window {
            None => -1,
            Some(w) => i32::try_from(w).unwrap_or(i32::MAX),
        };
        let sink = i32::try_from(mask.sink).unwrap_or(i32::MAX);
        let span: i32 = mask.span.map_or(-1, |w| i32::try_from(w).unwrap_or(i32::MAX));
        let (n32, slots32) = (as_i32("queries", n)?, as_i32("slots", n_slots)?);
        let (nh, nkv, d, dv) = (as_i32("n_head", s.n_head)?, as_i32("n_head_kv", s.n_head_kv)?, s.head_dim as i32, s.head_dim_v as i32);
        let kv = k.inner.slice(slots.start * k_row..slots.end * k_row);
        let vv = v.inner.slice(slots.start * v_row..slots.end * v_row);
        let pv = kpos.inner.slice(slots.clone());
        let mut b = self.stream.launch_builder(&self.mk.attn_prefill);
        b.arg(&q.inner).arg(&kv).arg(&vv).arg(&pv).arg(&qpos.inner).arg(&mut out.inner);
        b.arg(&n32).arg(&slots32).arg(&nh).arg(&nkv).arg(&d).arg(&dv).arg(&s.scale).arg(&window).arg(&sink).arg(&span);
        // SAFETY: block (i, h) reads queries i*AP_Q.. (< n) of head h, every slot's key and value
        // of KV head h / group (the n_slots slots of the views, within the buffers as checked),
        // kpos and qpos, and writes the output rows of its queries; head dimensions are within
        // the kernel's shared arrays (checked).
        unsafe { b.launch(cfg((as_u32("query tiles", n.div_ceil(AP_Q))?, as_u32("n_head", s.n_head)?), 128)) }
            .map_err(driver("launch attn_prefill"))?;
        Ok(())
    }
}

impl CudaBackend {
    /// Copies `len` elements of `buf` from `src` to `dst` (ranges that do not overlap).
    pub fn copy_within<T: super::DeviceElem>(&self, buf: &mut DeviceBuffer<T>, src: usize, dst: usize, len: usize) -> Result<(), CudaError> {
        let fits = |a: usize| a.checked_add(len).is_some_and(|e| e <= buf.len());
        if !fits(src) || !fits(dst) || (src < dst + len && dst < src + len) {
            return Err(CudaError::Invalid(format!("copy_within: {len} elements from {src} to {dst} of {}", buf.len())));
        }
        if len == 0 {
            return Ok(());
        }
        let (lo, hi) = (src.min(dst), src.max(dst));
        let (mut a, mut b) = buf.inner.split_at_mut(hi);
        if src < dst {
            let from = a.slice(lo..lo + len);
            let mut to = b.slice_mut(0..len);
            self.stream.memcpy_dtod(&from, &mut to).map_err(driver("cuMemcpyDtoD"))
        } else {
            let from = b.slice(0..len);
            let mut to = a.slice_mut(lo..lo + len);
            self.stream.memcpy_dtod(&from, &mut to).map_err(driver("cuMemcpyDtoD"))
        }
    }

    /// Copies `len` elements of `src` from `src_at` into `dst` at `dst_at`.
    pub fn copy_between<T: super::DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        src_at: usize,
        dst: &mut DeviceBuffer<T>,
        dst_at: usize,
        len: usize,
    ) -> Result<(), CudaError> {
        let end = |at: usize, n: usize| at.checked_add(len).filter(|&e| e <= n);
        let (Some(se), Some(de)) = (end(src_at, src.len()), end(dst_at, dst.len())) else {
            return Err(CudaError::Invalid(format!("copy_between: {len} elements from {src_at} of {} to {dst_at} of {}", src.len(), dst.len())));
        };
        if len == 0 {
            return Ok(());
        }
        self.stream.memcpy_dtod(&src.inner.slice(src_at..se), &mut dst.inner.slice_mut(dst_at..de)).map_err(driver("cuMemcpyDtoD"))
    }

    /// Copies `dst.len()` elements of `src` from `offset` into `dst`.
    pub fn copy_range<T: super::DeviceElem>(
        &self,
        src: &DeviceBuffer<T>,
        offset: usize,
        dst: &mut DeviceBuffer<T>,
    ) -> Result<(), CudaError> {
        let end = offset
            .checked_add(dst.len())
            .filter(|&e| e <= src.len())
            .ok_or_else(|| CudaError::Invalid(format!("copy_range: {} elements from {offset} of {}", dst.len(), src.len())))?;
        self.stream.memcpy_dtod(&src.inner.slice(offset..end), &mut dst.inner).map_err(driver("cuMemcpyDtoD"))
    }
}

/// A captured sequence of launches (a CUDA graph), replayed with [`CudaBackend::launch_graph`].
/// It holds the device pointers of the buffers it was captured with: the caller keeps those
/// buffers alive and unmoved while the graph lives, and changes only their contents.
pub struct DeviceGraph {
    graph: cudarc::driver::CudaGraph,
}

impl CudaBackend {
    /// Captures the launches `f` makes on the backend's stream into a graph (nothing runs).
    /// `f` must not allocate, copy from the host or synchronize.
    pub fn capture(&self, f: impl FnOnce() -> Result<(), CudaError>) -> Result<DeviceGraph, CudaError> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(driver("cuStreamBeginCapture"))?;
        let r = f();
        // The capture ends whatever `f` returned, so the stream is usable again.
        let g = self.stream.end_capture(CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH);
        r?;
        let graph = g.map_err(driver("cuStreamEndCapture"))?.ok_or_else(|| CudaError::Invalid("the captured graph is empty".into()))?;
        Ok(DeviceGraph { graph })
    }

    /// Replays a captured graph on the stream.
    pub fn launch_graph(&self, g: &DeviceGraph) -> Result<(), CudaError> {
        g.graph.launch().map_err(driver("cuGraphLaunch"))
    }
}

impl CudaBackend {
    /// Decode, fused: `x += residual` (when given), then [`CudaBackend::rms_norm`] of `x`'s rows
    /// quantized to Q8_1 into `out`; the same bytes as [`CudaBackend::add`],
    /// [`CudaBackend::rms_norm`] and [`CudaBackend::quantize_q8_1`] in sequence, in one launch.
    pub fn add_rms_norm_q8_1(
        &self,
        x: &mut DeviceBuffer<f32>,
        residual: Option<&DeviceBuffer<f32>>,
        w: &DeviceBuffer<f32>,
        eps: f32,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<(), CudaError> {
        let n = w.len();
        if n == 0 || n % 32 != 0 || x.len() % n != 0 {
            return Err(CudaError::Invalid(format!("add_rms_norm_q8_1: {} elements are not rows of {n} (a multiple of 32)", x.len())));
        }
        if let Some(r) = residual {
            expect_len("residual", x.len(), r.len())?;
        }
        expect_len("quantized norm (bytes)", x.len() / 32 * Q8_1_BYTES, out.len())?;
        let rows = x.len() / n;
        if rows == 0 {
            return Ok(());
        }
        // The block size of rms_norm_f32, so the reduction (and the bytes) match it.
        let threads = n.div_ceil(32).clamp(1, 32) as u32 * 32;
        let n32 = as_i32("row length", n)?;
        let null: u64 = 0;
        let mut b = self.launch_pdl(&self.mk.add_rms_norm_q8_1);
        b.arg(&mut x.inner);
        match residual {
            Some(r) => b.arg(&r.inner),
            None => b.arg(&null),
        };
        b.arg(&w.inner).arg(&mut out.inner).arg(&n32).arg(&eps);
        // SAFETY: block r reads and writes row r of x (rows * n floats), reads row r of the
        // residual (same length, checked) and w (n), and writes the row's n / 32 blocks of out.
        unsafe { b.launch(cfg((as_u32("rows", rows)?, 1), threads)) }.map_err(driver("launch add_rms_norm_q8_1"))?;
        Ok(())
    }

    /// Decode, fused: `act(gate) * up` quantized to Q8_1 into `out` (the bytes of
    /// [`CudaBackend::gated_act`] then [`CudaBackend::quantize_q8_1`]).
    pub fn gated_act_q8_1(
        &self,
        gate: &DeviceBuffer<f32>,
        up: &DeviceBuffer<f32>,
        act: super::GatedAct,
        out: &mut DeviceBuffer<u8>,
    ) -> Result<(), CudaError> {
        expect_len("gated activation", gate.len(), up.len())?;
        if gate.len() % 32 != 0 {
            return Err(CudaError::Invalid(format!("gated_act_q8_1: {} elements are not whole blocks of 32", gate.len())));
        }
        let n_blocks = gate.len() / 32;
        expect_len("quantized activation (bytes)", n_blocks * Q8_1_BYTES, out.len())?;
        if n_blocks == 0 {
            return Ok(());
        }
        let (nb, a) = (n_blocks as i64, if act == super::GatedAct::GeluTanh { 0i32 } else { 1i32 });
        let mut b = self.stream.launch_builder(&self.mk.gated_act_q8_1);
        b.arg(&gate.inner).arg(&up.inner).arg(&mut out.inner).arg(&nb).arg(&a);
        // SAFETY: one warp per block b < n_blocks reads 32 elements of gate and up and writes
        // block b of out (lengths checked above).
        unsafe { b.launch(cfg((as_u32("blocks", n_blocks.div_ceil(8))?, 1), 256)) }.map_err(driver("launch gated_act_q8_1"))?;
        Ok(())
    }
}
