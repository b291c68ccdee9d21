//! Products of a quantized weight matrix with f32 activations.
//!
//! A weight matrix is stored as ggml stores it: `rows` rows of `cols` elements, each row a run of
//! blocks (`ne[0] = cols`, `ne[1] = rows`). `y = W x` computes, for each of `n` input vectors,
//! one output per weight row; the output is `[n][rows]`.
//!
//! [`matmul`] works as ggml does: the activations are quantized once per call to the weight
//! type's [`VecDotType`] and every output is an integer-SIMD dot product from the kernel table
//! ([`Kernels::best`]).
//!
//! - Decode (`n == 1`) is bound by memory bandwidth: each weight byte is read once. The rows are
//!   cut into chunks (about [`MATVEC_CHUNKS_PER_THREAD`] per thread, each between
//!   [`MATVEC_MIN_CHUNK_BYTES`] and [`MATVEC_MAX_CHUNK_BYTES`]) that the threads of
//!   [`crate::pool::run`] (rayon, or with `ENGINE_DECODE_POLL=1` workers that spin between
//!   jobs) claim in order, so a thread that is late or slowed down takes fewer; small products
//!   run on the calling thread. [`matmul_many`] runs several products of one input (Q/K/V, gate/up) as one
//!   such job with one quantization of the input. Inside a decode token's team region
//!   ([`crate::team`]) the same chunks are the pieces of one op ([`matmul_many_team`],
//!   [`matmul_gated_team`]). Types with a multi-row kernel (Q4_0, Q5_0,
//!   IQ4_NL) take four rows per call, two per register, prefetching the next four; matrices in
//!   a packed layout ([`crate::repack`]: Q4_0, Q5_0, Q8_0, Q4_K, Q6_K as the engine holds them) take
//!   a group of eight rows per call.
//! - Prefill (`n > 1`) is bound by arithmetic: types with a GEMM tile compute 4 weight rows x 4
//!   activation rows per inner loop, so each unpacked weight block is reused four times from
//!   registers and each activation block four times from L1. Tasks are runs of at least
//!   [`GEMM_TASK_ROWS`] weight rows, more when there are few activation rows (several sequences
//!   decoded together), so that each task outweighs its scheduling; within a task the
//!   activations are taken [`GEMM_ACT_BLOCK`] rows at a time so they stay in L2. Up to
//!   [`MATVEC_BATCH_MAX`] activation rows go through the decode kernels instead.
//!
//! [`matmul_reference`] is the slow, simple path (dequantize each row, `f32` dot products) that
//! the fast one is tested against; types without a dot product (Q8_1 or Q8_K weights) use it.

use std::sync::atomic::{AtomicUsize, Ordering};

use rayon::prelude::*;

use crate::dot::{DotFn, Kernels, QuantizedActs, TileFn, VecDotType, TILE};
use crate::quants::{dequantize, QuantError};
pub use crate::repack::Layout;
use crate::repack::{pack_into, packed_nbytes, unpack_block, unpack_rows};
use crate::pages::PackedBytes;
use crate::team::{Ctx, TeamVec};
use crate::types::GgmlType;

/// A borrowed weight matrix.
#[derive(Clone, Copy, Debug)]
pub struct QMatrix<'a> {
    pub ty: GgmlType,
    /// Elements per row (`ne[0]`).
    pub cols: usize,
    /// Number of rows (`ne[1]`).
    pub rows: usize,
    pub data: &'a [u8],
    /// How `data` is arranged: ggml's rows, or a layout rebuilt for decode ([`PackedMatrix`]).
    pub layout: Layout,
}

/// Why a matrix or a product is malformed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MatError {
    /// The data is not `rows` rows of `cols` elements of the type.
    DataSize { ty: GgmlType, cols: usize, rows: usize, expected: Option<u64>, got: usize },
    /// Activation or output lengths disagree with the matrix.
    Shape { what: &'static str, expected: usize, got: usize },
    /// No dequantizer for this type.
    Quant(QuantError),
    /// A computation that does not cover this type (`what` names it).
    Unsupported { ty: GgmlType, what: &'static str },
}

impl std::fmt::Display for MatError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MatError::DataSize { ty, cols, rows, expected: Some(e), got } => {
                write!(f, "{ty} matrix {cols}x{rows} needs {e} bytes, got {got}")
            }
            MatError::DataSize { ty, cols, rows, expected: None, got } => {
                write!(f, "{ty} matrix {cols}x{rows} has no valid size ({got} bytes given)")
            }
            MatError::Shape { what, expected, got } => write!(f, "{what}: expected {expected} elements, got {got}"),
            MatError::Quant(e) => write!(f, "{e}"),
            MatError::Unsupported { ty, what } => write!(f, "{what} does not cover {ty}"),
        }
    }
}

impl std::error::Error for MatError {}

impl<'a> QMatrix<'a> {
    /// Checks that `data` holds exactly `rows` rows of `cols` elements of `ty`.
    pub fn new(ty: GgmlType, cols: usize, rows: usize, data: &'a [u8]) -> Result<Self, MatError> {
        let m = QMatrix { ty, cols, rows, data, layout: Layout::Ggml };
        m.check_size()?;
        Ok(m)
    }

    /// The bytes the layout needs for this shape, if it can hold it.
    fn expected_nbytes(&self) -> Option<u64> {
        match self.layout {
            Layout::Ggml => self.ty.tensor_nbytes(&[self.cols as u64, self.rows as u64]).ok(),
            l if l.weight_type() == Some(self.ty) => packed_nbytes(l, self.cols, self.rows).map(|n| n as u64),
            _ => None,
        }
    }

    /// Errors unless `data` holds exactly what the type, shape and layout say.
    fn check_size(&self) -> Result<(), MatError> {
        let expected = self.expected_nbytes();
        if expected != Some(self.data.len() as u64) {
            return Err(MatError::DataSize { ty: self.ty, cols: self.cols, rows: self.rows, expected, got: self.data.len() });
        }
        Ok(())
    }

    /// Bytes of one row's blocks (in a packed layout, what a row contributes to its group).
    pub fn row_bytes(&self) -> usize {
        match self.layout {
            Layout::Ggml => self.data.len() / self.rows.max(1),
            _ => self.cols / self.ty.block_size() * self.ty.type_size(),
        }
    }

    /// Bytes of one group of rows of a packed layout (a row for [`Layout::Ggml`]).
    fn group_bytes(&self) -> usize {
        self.layout.group_bytes(self.ty, self.cols / self.ty.block_size())
    }

    /// The encoded bytes of row `r`, in ggml's layout (borrowed, or for a packed matrix
    /// unpacked into a new buffer).
    pub fn row(&self, r: usize) -> std::borrow::Cow<'a, [u8]> {
        let rb = self.row_bytes();
        match self.layout {
            Layout::Ggml => std::borrow::Cow::Borrowed(&self.data[r * rb..(r + 1) * rb]),
            l => {
                let (gr, gbytes, bs) = (l.group_rows(), self.group_bytes(), self.ty.type_size());
                let group = &self.data[r / gr * gbytes..][..gbytes];
                let mut out = vec![0u8; rb];
                for (b, gb) in group.chunks_exact(gr * bs).enumerate() {
                    unpack_block(l, gb, r % gr, &mut out[b * bs..(b + 1) * bs]);
                }
                std::borrow::Cow::Owned(out)
            }
        }
    }

    /// Dequantizes row `r` into `out` (`cols` elements).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) -> Result<(), MatError> {
        dequantize(self.ty, &self.row(r), out).map_err(MatError::Quant)
    }
}

/// An owned weight matrix in a layout rebuilt for decode ([`pack`], [`pack_for_decode`]): the
/// same bytes per weight as the ggml matrix it came from, arranged for its type's packed
/// kernels. [`PackedMatrix::view`] is what the products take.
pub struct PackedMatrix {
    ty: GgmlType,
    cols: usize,
    rows: usize,
    layout: Layout,
    /// The packed bytes, starting on a cache line (a Q4_Kx8 group block is 18 whole lines, so
    /// no 32-byte load then straddles two), in huge pages where the OS gives them
    /// ([`crate::pages`]).
    data: PackedBytes,
}

/// Alignment of a packed matrix's first byte.
const PACKED_ALIGN: usize = 64;

impl PackedMatrix {
    /// `len` zero bytes starting on a [`PACKED_ALIGN`] boundary, in a matrix of `ty`, `cols`,
    /// `rows` and `layout`.
    fn zeroed(ty: GgmlType, cols: usize, rows: usize, layout: Layout, len: usize) -> PackedMatrix {
        PackedMatrix { ty, cols, rows, layout, data: PackedBytes::zeroed(len, PACKED_ALIGN) }
    }

    /// The matrix as the products take it.
    pub fn view(&self) -> QMatrix<'_> {
        QMatrix { ty: self.ty, cols: self.cols, rows: self.rows, data: self.data.bytes(), layout: self.layout }
    }

    /// Bytes of the packed matrix.
    pub fn nbytes(&self) -> usize {
        self.data.bytes().len()
    }
}

/// Rebuilds a ggml-layout matrix in `layout` (the layout of its type: Q5_0 into
/// [`Layout::Q5_0x8`], Q4_0 into [`Layout::Q4_0x8`], Q8_0 into [`Layout::Q8_0x8`], Q4_K into
/// [`Layout::Q4_Kx8`], Q6_K into [`Layout::Q6_Kx8`]; else `None`). Lossless: the products give
/// the same results within their rounding, and [`QMatrix::row`] gives back the original bytes.
pub fn pack(w: &QMatrix<'_>, layout: Layout) -> Option<PackedMatrix> {
    pack_with(w, layout, &|_| {})
}

/// Source bytes packed between two calls of a [`pack_with`] callback.
const PACK_BATCH_BYTES: usize = 4 << 20;

/// [`pack`], handing each run of `w`'s bytes (about [`PACK_BATCH_BYTES`], whole groups of rows)
/// to `consumed` as soon as it has been packed, so a caller can give a mapped file's pages back
/// as it goes instead of holding a large matrix twice.
pub fn pack_with(w: &QMatrix<'_>, layout: Layout, consumed: &dyn Fn(&[u8])) -> Option<PackedMatrix> {
    if w.layout != Layout::Ggml || w.check_size().is_err() || layout.weight_type() != Some(w.ty) {
        return None;
    }
    let mut p = PackedMatrix::zeroed(w.ty, w.cols, w.rows, layout, packed_nbytes(layout, w.cols, w.rows)?);
    let (nb, rb, gr) = (w.cols / w.ty.block_size(), w.row_bytes(), layout.group_rows());
    let gbytes = layout.group_bytes(w.ty, nb);
    let batch_rows = (PACK_BATCH_BYTES / (rb * gr).max(1)).max(1) * gr;
    let out = p.data.bytes_mut();
    for r0 in (0..w.rows).step_by(batch_rows) {
        let r1 = (r0 + batch_rows).min(w.rows);
        let src = &w.data[r0 * rb..r1 * rb];
        pack_into(layout, src, nb, r1 - r0, &mut out[r0 / gr * gbytes..r1.div_ceil(gr) * gbytes]);
        consumed(src);
    }
    Some(p)
}

/// The layout this CPU's best kernels decode `w` fastest in, or `None` where the file's own
/// layout is best (every type but Q4_0, Q5_0, Q8_0, Q4_K and Q6_K, and those where only the
/// scalar packed kernel exists: on AArch64, and Q8_0 without AVX-512 VNNI).
pub fn decode_layout(w: &QMatrix<'_>) -> Option<Layout> {
    let layout = match w.ty {
        GgmlType::Q5_0 => Layout::Q5_0x8,
        GgmlType::Q4_K => Layout::Q4_Kx8,
        GgmlType::Q6_K => Layout::Q6_Kx8,
        GgmlType::Q4_0 => Layout::Q4_0x8,
        GgmlType::Q8_0 => Layout::Q8_0x8,
        _ => return None,
    };
    Kernels::best().packed_isa(layout).is_some_and(|i| i != crate::dot::Isa::Scalar).then_some(layout)
}

/// `w` rebuilt in its [`decode_layout`], or `None` where the file's own layout is best.
pub fn pack_for_decode(w: &QMatrix<'_>) -> Option<PackedMatrix> {
    pack(w, decode_layout(w)?)
}

/// Fewest weight bytes in one chunk of a decode job: claiming a chunk costs a shared atomic
/// increment (tens of nanoseconds), small next to reading this much (a few microseconds).
pub const MATVEC_MIN_CHUNK_BYTES: usize = 32 * 1024;

/// Most weight bytes in one chunk of a decode job, so that the last chunks even out a thread
/// that was slowed down (a megabyte is about 60 us of one core's share of the bandwidth).
pub const MATVEC_MAX_CHUNK_BYTES: usize = 1024 * 1024;

/// Chunks per thread a decode job aims at, between those bounds.
pub const MATVEC_CHUNKS_PER_THREAD: usize = 16;

/// Below this many weight bytes (over all the products of a call) decode runs on the calling
/// thread: starting the other threads costs more than it saves here.
pub const SERIAL_BYTES: usize = 64 * 1024;

/// Prefill tasks per pool thread, at least, when tasks grow with the work per row: enough to
/// even out a thread that is slowed down.
pub const GEMM_TASKS_PER_THREAD: usize = 8;

/// Weight rows per prefill task, at least (a multiple of the tile height).
pub const GEMM_TASK_ROWS: usize = 16;
/// Fewest `weight bytes x activation rows` one prefill task covers. With few activation rows
/// (several sequences decoded together) a 16-row task is a few hundred nanoseconds of work, less
/// than rayon's cost of scheduling it, so tasks grow until they do as much as a decode task.
pub const GEMM_MIN_TASK_WORK: usize = 64 * 1024;

/// Weight rows per prefill task for a matrix of `rows` rows of `row_bytes` bytes against `n`
/// activation rows on `threads` threads: [`GEMM_TASK_ROWS`], grown to [`GEMM_MIN_TASK_WORK`]
/// while that leaves every thread several tasks.
fn gemm_task_rows(rows: usize, row_bytes: usize, n: usize, threads: usize) -> usize {
    let by_work = GEMM_MIN_TASK_WORK.div_ceil(row_bytes.max(1) * n.max(1));
    let by_balance = rows.div_ceil(threads.max(1) * GEMM_TASKS_PER_THREAD);
    by_work.min(by_balance).max(GEMM_TASK_ROWS).div_ceil(TILE) * TILE
}

/// Activation rows a prefill task takes at a time, so they stay in L2 while its weight tiles
/// pass over them.
pub const GEMM_ACT_BLOCK: usize = 64;

/// `out[t][r] = sum_c W[r][c] * x[t][c]` for `n` input vectors `x` (`n * cols`) into `out`
/// (`n * rows`), with the best kernels of this CPU.
///
/// The activations are quantized to the weight type's [`VecDotType`] first, as ggml does, so the
/// result differs from [`matmul_reference`] by that rounding (about 0.4% of each block's
/// largest activation, relative). Errors: the shapes of `x` and `out`, a data size that does not
/// match the matrix, and types with neither a dot product nor a dequantizer.
pub fn matmul(w: &QMatrix<'_>, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), MatError> {
    matmul_with(Kernels::best(), w, x, n, out)
}

/// [`matmul`] with the kernels of a given table (tests and benchmarks run every variant).
pub fn matmul_with(k: &Kernels, w: &QMatrix<'_>, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), MatError> {
    matmul_many_with(k, &[w], x, n, &mut [out])
}

/// Several products of one input: `outs[i] = ws[i] x` for `n` input vectors `x` (`n * cols`,
/// every matrix has `cols` columns), as [`matmul`] computes each.
///
/// The input is quantized once per activation format (the Q, K and V projections, or the FFN's
/// gate and up, share one quantization where their weight types agree), and for decode (`n ==
/// 1`) all the products run as one parallel job ([`crate::pool::run`]), their rows shared out in
/// chunks, so the threads are started and joined once for the lot. Results are
/// those of [`matmul`] for each matrix, bit for bit. Errors as [`matmul`]'s, for any matrix;
/// when one is malformed, none is computed.
pub fn matmul_many(ws: &[&QMatrix<'_>], x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), MatError> {
    matmul_many_with(Kernels::best(), ws, x, n, outs)
}

/// [`matmul_many`] with the kernels of a given table.
pub fn matmul_many_with(k: &Kernels, ws: &[&QMatrix<'_>], x: &[f32], n: usize, outs: &mut [&mut [f32]]) -> Result<(), MatError> {
    matmul_many_impl(k, ws, x, n, outs, None)
}

/// A gated FFN's first half: `out = act(gate x) * (up x)` element-wise, for `n` input vectors
/// (`out`: `[n][rows]`), with the results of [`matmul_many`] for both products followed by
/// [`crate::ops::gated_act`], bit for bit. For decode the two products run as one job whose
/// chunks cover the same rows of both matrices, and each chunk applies `act` to its rows as
/// soon as they are computed, so that work is shared by the threads and done while the other
/// chunks stream in, instead of after the job on one thread.
pub fn matmul_gated(gate: &QMatrix<'_>, up: &QMatrix<'_>, x: &[f32], n: usize, act: fn(f32) -> f32, out: &mut [f32]) -> Result<(), MatError> {
    matmul_gated_with(Kernels::best(), gate, up, x, n, act, out)
}

/// [`matmul_gated`] with the kernels of a given table.
pub fn matmul_gated_with(
    k: &Kernels,
    gate: &QMatrix<'_>,
    up: &QMatrix<'_>,
    x: &[f32],
    n: usize,
    act: fn(f32) -> f32,
    out: &mut [f32],
) -> Result<(), MatError> {
    if gate.rows != up.rows {
        return Err(MatError::Shape { what: "up rows (as many as gate rows)", expected: gate.rows, got: up.rows });
    }
    let mut up_out = vec![0f32; out.len()];
    matmul_many_impl(k, &[gate, up], x, n, &mut [out, &mut up_out], Some(act))
}

/// [`matmul_many_with`], and with `gated` (two matrices) [`matmul_gated_with`], whose result
/// lands in `outs[0]`.
fn matmul_many_impl(
    k: &Kernels,
    ws: &[&QMatrix<'_>],
    x: &[f32],
    n: usize,
    outs: &mut [&mut [f32]],
    gated: Option<fn(f32) -> f32>,
) -> Result<(), MatError> {
    let lens: Vec<usize> = outs.iter().map(|o| o.len()).collect();
    check_products(k, ws, x, n, &lens)?;
    let ptrs: Vec<SharedOut> = outs.iter_mut().map(|o| SharedOut(o.as_mut_ptr())).collect();
    // SAFETY: the outputs are borrowed mutably for the whole call and their lengths were checked.
    unsafe { run_products(k, ws, x, n, &ptrs, gated, Runner::Pool) }
}

/// [`matmul_many`] as one op of a team region ([`crate::team`]), for one input vector
/// (decode): every thread of the team calls it with the same arguments, each quantizes the
/// input for itself (the same bytes), the threads claim the rows in chunks, and all return
/// after a barrier with the outputs complete. Results are those of [`matmul_many`], bit for
/// bit. Errors as [`matmul_many`]'s (the same on every thread, before any work).
///
/// # Safety
///
/// `outs[i]` (`ws[i].rows` elements) is read or written by no thread during the call but
/// through this op (the team's collective-op discipline).
pub unsafe fn matmul_many_team(ctx: &Ctx<'_>, ws: &[&QMatrix<'_>], x: &[f32], outs: &[&TeamVec]) -> Result<(), MatError> {
    // SAFETY: passed on from the caller.
    unsafe { team_products(ctx, ws, x, outs, None) }
}

/// [`matmul_gated`] as one op of a team region, for one input vector: as
/// [`matmul_many_team`], each chunk of rows of both products finished with `act` by the
/// thread that computed it. Results are those of [`matmul_gated`], bit for bit.
///
/// # Safety
///
/// As [`matmul_many_team`], for `out` (`gate.rows` elements).
pub unsafe fn matmul_gated_team(
    ctx: &Ctx<'_>,
    gate: &QMatrix<'_>,
    up: &QMatrix<'_>,
    x: &[f32],
    act: fn(f32) -> f32,
    out: &TeamVec,
) -> Result<(), MatError> {
    if gate.rows != up.rows {
        return Err(MatError::Shape { what: "up rows (as many as gate rows)", expected: gate.rows, got: up.rows });
    }
    // Each thread's `up` rows: written and read back by the thread that claims them.
    let up_out = TeamVec::new(out.len());
    // SAFETY: passed on from the caller; `up_out` is this thread's own.
    unsafe { team_products(ctx, &[gate, up], x, &[out, &up_out], Some(act)) }
}

/// The body of [`matmul_many_team`] and [`matmul_gated_team`].
///
/// # Safety
///
/// As [`matmul_many_team`].
unsafe fn team_products(ctx: &Ctx<'_>, ws: &[&QMatrix<'_>], x: &[f32], outs: &[&TeamVec], gated: Option<fn(f32) -> f32>) -> Result<(), MatError> {
    let k = Kernels::best();
    let lens: Vec<usize> = outs.iter().map(|o| o.len()).collect();
    let n = ws.first().map_or(0, |w| x.len().checked_div(w.cols).unwrap_or(0));
    check_products(k, ws, x, n, &lens)?;
    let all_fast = ws.iter().all(|w| k.dot_fn(w.ty).is_some() && VecDotType::for_weight(w.ty).is_some());
    if n == 1 && all_fast && ctx.nth() > 1 {
        // A thread that arrives when every chunk is taken need not quantize the input.
        if !ctx.next_op_open() {
            ctx.skip_op();
            return Ok(());
        }
        let ptrs: Vec<SharedOut> = outs.iter().map(|o| SharedOut(o.ptr())).collect();
        // SAFETY: the outputs are this op's (the caller's promise), lengths checked; the team's
        // threads write disjoint chunks of them.
        unsafe { run_products(k, ws, x, n, &ptrs, gated, Runner::Team(ctx)) }
    } else {
        // Batches, types without a dot product, a team of one: thread 0 runs the whole op.
        let mut result = Ok(());
        let ok = ctx.single_ok(|| {
            // SAFETY: only this thread touches the outputs during the op.
            let mut views: Vec<&mut [f32]> = outs.iter().map(|o| unsafe { o.get_mut() }).collect();
            result = matmul_many_impl(k, ws, x, n, &mut views, gated);
            result.is_ok()
        });
        match result {
            Err(e) => Err(e),
            // The other threads learn of thread 0's error (which it returns) this way.
            Ok(()) if !ok => Err(MatError::Shape { what: "a product of the team (see thread 0's error)", expected: 0, got: 0 }),
            Ok(()) => Ok(()),
        }
    }
}

/// Errors when the products `ws` of `n` input vectors `x` into outputs of `out_lens` elements
/// are malformed.
fn check_products(k: &Kernels, ws: &[&QMatrix<'_>], x: &[f32], n: usize, out_lens: &[usize]) -> Result<(), MatError> {
    if ws.len() != out_lens.len() {
        return Err(MatError::Shape { what: "matmul outputs (one per matrix)", expected: ws.len(), got: out_lens.len() });
    }
    for (w, &out) in ws.iter().zip(out_lens) {
        if x.len() != n * w.cols {
            return Err(MatError::Shape { what: "matmul input", expected: n * w.cols, got: x.len() });
        }
        if out != n * w.rows {
            return Err(MatError::Shape { what: "matmul output", expected: n * w.rows, got: out });
        }
        if let Some((_, vdt)) = fast_kernels(k, w) {
            if !w.cols.is_multiple_of(vdt.block_size()) {
                return Err(MatError::Shape { what: "matmul input row (whole blocks)", expected: w.cols.next_multiple_of(vdt.block_size()), got: w.cols });
            }
        }
        if fast_kernels(k, w).is_some() || w.layout != Layout::Ggml {
            // The kernels read raw memory, so the matrix must be exactly what it claims to be
            // (its fields are public; `QMatrix::new` checks this too).
            w.check_size()?;
        }
    }
    Ok(())
}

/// The dot product and activation format of `w`'s type, where the kernel table has them.
fn fast_kernels(k: &Kernels, w: &QMatrix<'_>) -> Option<(DotFn, VecDotType)> {
    match (k.dot_fn(w.ty), VecDotType::for_weight(w.ty)) {
        (Some(dot), Some(vdt)) => Some((dot, vdt)),
        _ => None,
    }
}

/// Runs checked products (see [`check_products`]) into `outs[i]` (`n * ws[i].rows`
/// elements), decode jobs on `runner`.
///
/// # Safety
///
/// Each `outs[i]` points to `n * ws[i].rows` elements that nothing else touches during the
/// call; with [`Runner::Pool`] the caller's thread alone calls this, with [`Runner::Team`] every
/// thread of the team does (then only decode jobs may arise: `n` within
/// [`matvec_batch_max`], every type with a dot product).
unsafe fn run_products(
    k: &Kernels,
    ws: &[&QMatrix<'_>],
    x: &[f32],
    n: usize,
    outs: &[SharedOut],
    gated: Option<fn(f32) -> f32>,
    runner: Runner<'_, '_>,
) -> Result<(), MatError> {
    if n == 0 {
        return Ok(());
    }
    // The formats the matrices need (at most a few); the input is quantized once per format,
    // here for a fork-join, and in a team by each thread when it claims its first chunk (the
    // input cannot change while a chunk of the op is left: see `crate::team`).
    let mut vdts: Vec<VecDotType> = Vec::with_capacity(2);
    for w in ws {
        if let Some((_, vdt)) = fast_kernels(k, w) {
            if !vdts.contains(&vdt) {
                vdts.push(vdt);
            }
        }
    }
    let cols = ws.first().map_or(0, |w| w.cols);
    let quantize = || -> Result<Vec<QuantizedActs>, MatError> {
        vdts.iter()
            .map(|&vdt| QuantizedActs::new(k, vdt, x, n, cols).map_err(|_| MatError::Shape { what: "matmul input row", expected: cols, got: cols }))
            .collect()
    };
    // (A team quantizes on the first chunk a thread claims. It cannot fail there:
    // `check_products` has checked that the rows are whole blocks.)
    let make = || quantize().unwrap_or_default();
    let acts = LazyActs { cell: std::sync::OnceLock::new(), make: &make };
    if matches!(runner, Runner::Pool) {
        let _ = acts.cell.set(quantize()?);
    }
    let mut jobs = Vec::with_capacity(ws.len());
    for (w, &out) in ws.iter().zip(outs) {
        // SAFETY: `out` holds `n * w.rows` elements, this call's alone (the caller's promise).
        let out_slice = || unsafe { std::slice::from_raw_parts_mut(out.get(), n * w.rows) };
        let Some((dot, vdt)) = fast_kernels(k, w) else {
            matmul_reference(w, x, n, out_slice())?;
            continue;
        };
        let Some(a) = vdts.iter().position(|&v| v == vdt) else { continue };
        if n <= matvec_batch_max(w.ty) {
            let kernel = match w.layout {
                Layout::Ggml => k.matvec_fn(w.ty).map_or(RowKernel::Dot(dot), RowKernel::Rows4),
                _ => RowKernel::Packed8(k.packed_fn(w.layout)),
            };
            jobs.push(MatvecJob::new(kernel, w, &acts, a, n, out));
        } else if let Some(a) = acts.get(a) {
            gemm(dot, k.tile_fn(w.ty), w, a, out_slice());
        }
    }
    // The gate applied inside the decode job when both products are in it, else here.
    let fused = gated.is_some() && jobs.len() == 2;
    if !jobs.is_empty() {
        matvec(&mut jobs, if fused { gated } else { None }, runner);
    }
    drop(jobs);
    if let (Some(act), false, [g, u]) = (gated, fused, outs) {
        // SAFETY: both hold `n * rows` elements, this call's alone.
        let (g, u) = unsafe { (std::slice::from_raw_parts_mut(g.get(), n * ws[0].rows), std::slice::from_raw_parts(u.get(), n * ws[1].rows)) };
        crate::ops::gated_act(g, u, act);
    }
    Ok(())
}

/// Where the chunks of a decode job run: a fork-join of [`crate::pool::run`] started by the one
/// thread that called the product, or the threads of a team region, which all called it.
#[derive(Clone, Copy)]
enum Runner<'c, 't> {
    Pool,
    Team(&'c Ctx<'t>),
}

impl Runner<'_, '_> {
    /// Threads that will share the chunks.
    fn threads(self) -> usize {
        match self {
            Runner::Pool => rayon::current_num_threads(),
            Runner::Team(ctx) => ctx.nth(),
        }
    }

    /// Calls `body(c)` once for each chunk `c` in `0..n_chunks`, spread over the threads, and
    /// returns when all are done (in a team, after the op's barrier).
    fn for_chunks(self, n_chunks: usize, body: &(dyn Fn(usize) + Sync)) {
        match self {
            Runner::Pool => {
                let next = AtomicUsize::new(0);
                crate::pool::run(self.threads().min(n_chunks), &|_| loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= n_chunks {
                        break;
                    }
                    body(c);
                });
            }
            Runner::Team(ctx) => ctx.parallel(n_chunks, &mut |c| body(c)),
        }
    }
}

/// The kernel a decode product runs, by the matrix's type and layout.
#[derive(Clone, Copy)]
enum RowKernel {
    /// One row at a time.
    Dot(DotFn),
    /// Up to four rows per call (ggml layout).
    Rows4(TileFn),
    /// A group of eight rows per call, from a packed layout ([`Layout::Q5_0x8`],
    /// [`Layout::Q4_Kx8`]).
    Packed8(TileFn),
}

impl RowKernel {
    /// Rows per call; chunks of a job are whole groups.
    fn group(self) -> usize {
        match self {
            RowKernel::Dot(_) | RowKernel::Rows4(_) => TILE,
            RowKernel::Packed8(_) => 8,
        }
    }
}

/// The quantized input of a product call, one entry per activation format, made on first use.
struct LazyActs<'a> {
    cell: std::sync::OnceLock<Vec<QuantizedActs>>,
    make: &'a (dyn Fn() -> Vec<QuantizedActs> + Sync),
}

impl LazyActs<'_> {
    /// Format `i` of the input (quantized now if it was not yet).
    fn get(&self, i: usize) -> Option<&QuantizedActs> {
        self.cell.get_or_init(self.make).get(i)
    }
}

/// One decode product: `out[t][r] = W[r] . a[t]` for the one or few (`n`) activation rows of
/// `acts` (several sequences decoded together).
struct MatvecJob<'w, 'a> {
    kernel: RowKernel,
    w: &'a QMatrix<'w>,
    acts: &'a LazyActs<'a>,
    /// Which of the formats of `acts` this product reads.
    act: usize,
    n: usize,
    /// `n * w.rows` outputs, the job's alone for as long as it lives.
    out: SharedOut,
    /// Rows per chunk, and this job's first chunk in the call's numbering.
    chunk_rows: usize,
    first_chunk: usize,
}

impl<'w, 'a> MatvecJob<'w, 'a> {
    /// `out`: `n * w.rows` outputs, the job's alone while it lives.
    fn new(kernel: RowKernel, w: &'a QMatrix<'w>, acts: &'a LazyActs<'a>, act: usize, n: usize, out: SharedOut) -> Self {
        MatvecJob { kernel, w, acts, act, n, out, chunk_rows: w.rows.max(1), first_chunk: 0 }
    }

    fn chunks(&self) -> usize {
        self.w.rows.div_ceil(self.chunk_rows)
    }

    /// Weight bytes times activation rows: the work of the whole product.
    fn work(&self) -> usize {
        self.w.data.len() * self.n
    }

    /// Computes the outputs of weight rows `r0..r1` for every activation row: a group of
    /// weight rows, once read from memory, meets every activation row while it is in L1.
    ///
    /// # Safety
    ///
    /// `r0 <= r1 <= rows`, `r0` a multiple of the kernel's group, and no other thread touches
    /// these outputs meanwhile.
    unsafe fn rows(&self, r0: usize, r1: usize) {
        let group = self.kernel.group();
        debug_assert!(r0 <= r1 && r1 <= self.w.rows && r0 % group == 0);
        let w = self.w;
        let Some(acts) = self.acts.get(self.act) else {
            debug_assert!(false, "the input could not be quantized (the shapes were checked)");
            return;
        };
        let rb = w.row_bytes();
        let nb = acts.blocks_per_row();
        for r in (r0..r1).step_by(group) {
            let mr = group.min(r1 - r);
            // A group of eight packed rows is stored whole (the last one padded).
            let wt = match self.kernel {
                RowKernel::Packed8(_) => w.data[r / group * w.group_bytes()..].as_ptr(),
                _ => w.data[r * rb..(r + mr) * rb].as_ptr(),
            };
            for t in 0..acts.rows() {
                // SAFETY: `wt` holds `mr` (1..=4) whole weight rows, or one whole packed group
                // (the data size was checked), activation row `t` exists with its side data,
                // and the outputs `t * rows + r .. + mr` lie in `out` (still borrowed, see the
                // field) and are this caller's alone; the kernels run on this CPU (their table
                // was handed out).
                unsafe {
                    let o = self.out.get().add(t * w.rows + r);
                    match self.kernel {
                        RowKernel::Rows4(f) | RowKernel::Packed8(f) => f(&acts.tile_args(wt, rb, mr, t, 1, o, 1)),
                        RowKernel::Dot(dot) => {
                            let (a, aux) = (acts.row_ptr(t), acts.side_ptr(t));
                            for i in 0..mr {
                                *o.add(i) = dot(nb, wt.add(i * rb), a, aux);
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Runs decode products: on the calling thread when they are small (on a fork-join), else as
/// chunks of rows (in order, matrix by matrix) that the threads of `runner` claim until none
/// is left, so a thread that starts late or is slowed down by another process simply takes
/// fewer. In a team every chunk is claimed by the team's threads whatever the size (they are
/// running anyway).
///
/// With `gated`, `jobs` are a gate and an up product of the same rows: each chunk covers the
/// same rows of both and then sets `gate = act(gate) * up` on them.
fn matvec(jobs: &mut [MatvecJob<'_, '_>], gated: Option<fn(f32) -> f32>, runner: Runner<'_, '_>) {
    let threads = runner.threads();
    let total: usize = jobs.iter().map(MatvecJob::work).sum();
    if let (Some(act), [g, u]) = (gated, &mut *jobs) {
        return matvec_gated(g, u, act, total, runner);
    }
    if matches!(runner, Runner::Pool) && (total < SERIAL_BYTES || threads == 1) {
        for j in jobs.iter() {
            // SAFETY: all rows, on this thread only.
            unsafe { j.rows(0, j.w.rows) };
        }
        return;
    }
    let chunk_bytes = (total / (threads * MATVEC_CHUNKS_PER_THREAD)).clamp(MATVEC_MIN_CHUNK_BYTES, MATVEC_MAX_CHUNK_BYTES);
    let mut n_chunks = 0;
    for j in jobs.iter_mut() {
        let rb = (j.w.row_bytes() * j.n).max(1);
        // Whole groups of rows, for the multi-row kernels.
        let group = j.kernel.group();
        j.chunk_rows = (chunk_bytes / rb).max(1).div_ceil(group) * group;
        j.first_chunk = n_chunks;
        n_chunks += j.chunks();
    }
    let jobs = &*jobs;
    runner.for_chunks(n_chunks, &|c| {
        // The job holding chunk `c` (a call has only a few).
        let Some(j) = jobs.iter().rev().find(|j| j.first_chunk <= c) else { return };
        let r0 = (c - j.first_chunk) * j.chunk_rows;
        let r1 = (r0 + j.chunk_rows).min(j.w.rows);
        // SAFETY: each chunk is claimed by one thread only and chunks cover disjoint rows;
        // `for_chunks` returns only when every thread is done, while the outputs are the job's.
        unsafe { j.rows(r0, r1) };
    });
}

/// [`matvec`] for a gate and an up product (`total` bytes of work): chunks of the same rows of
/// both, each finished with `act`.
fn matvec_gated(g: &MatvecJob<'_, '_>, u: &MatvecJob<'_, '_>, act: fn(f32) -> f32, total: usize, runner: Runner<'_, '_>) {
    let threads = runner.threads();
    let rows = g.w.rows;
    debug_assert_eq!(rows, u.w.rows);
    let n = g.n;
    // Rows `r0..r1` of both products, then the gate on them.
    let chunk = |r0: usize, r1: usize| {
        // SAFETY: the caller of `chunk` owns rows `r0..r1` of both outputs (see below); `r0` is
        // a multiple of both kernels' groups.
        unsafe {
            g.rows(r0, r1);
            u.rows(r0, r1);
            let (go, uo) = (g.out.get(), u.out.get());
            for t in 0..n {
                for r in r0..r1 {
                    let i = t * rows + r;
                    *go.add(i) = act(*go.add(i)) * *uo.add(i);
                }
            }
        }
    };
    if matches!(runner, Runner::Pool) && (total < SERIAL_BYTES || threads == 1) {
        chunk(0, rows);
        return;
    }
    let chunk_bytes = (total / (threads * MATVEC_CHUNKS_PER_THREAD)).clamp(MATVEC_MIN_CHUNK_BYTES, MATVEC_MAX_CHUNK_BYTES);
    let rb = ((g.w.row_bytes() + u.w.row_bytes()) * n).max(1);
    let group = g.kernel.group().max(u.kernel.group());
    let chunk_rows = (chunk_bytes / rb).max(1).div_ceil(group) * group;
    let n_chunks = rows.div_ceil(chunk_rows);
    // Each chunk is claimed by one thread only and chunks cover disjoint rows; `for_chunks`
    // returns only when every thread is done, while the outputs are the jobs'.
    runner.for_chunks(n_chunks, &|c| chunk(c * chunk_rows, ((c + 1) * chunk_rows).min(rows)));
}

/// Most activation rows the decode kernels take (one pass over the weights, each group of four
/// rows reused from L1 for every activation row) before the GEMM tiles do better. Several
/// sequences decoded together are such products. Measured on the 2-vCPU EPYC (docs/PERFORMANCE.md,
/// "Several sequences"): with 2 to 4 rows the decode kernels beat the tiles or tie for every type;
/// beyond that the tiles, which unpack each weight block once for four activation rows, win for
/// the types whose unpacking is the bottleneck (Q5_0, the K-quants), while 8-bit weights (no
/// unpacking; their decode kernel runs well above the memory bandwidth) stay memory-bound and
/// keep the decode kernel up to 8 rows.
pub const MATVEC_BATCH_MAX: usize = 4;

fn matvec_batch_max(ty: GgmlType) -> usize {
    if ty == GgmlType::Q8_0 {
        2 * MATVEC_BATCH_MAX
    } else {
        MATVEC_BATCH_MAX
    }
}

/// A raw output pointer shared by tasks (decode chunks, prefill tasks) that write disjoint parts
/// of it.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);

// SAFETY: the pointer is only written through, by tasks whose output elements are disjoint (see
// `gemm`), while the slice it points into is borrowed mutably by the caller.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// `out[t][r] = W[r] . a[t]` for every activation row of `acts`, over tasks of
/// [`gemm_task_rows`] weight rows, with `tile` where the type has one.
fn gemm(dot: DotFn, tile: Option<TileFn>, w: &QMatrix<'_>, acts: &QuantizedActs, out: &mut [f32]) {
    let (rows, n) = (w.rows, acts.rows());
    let rb = w.row_bytes();
    let nb = acts.blocks_per_row();
    debug_assert_eq!(out.len(), n * rows);
    let shared = SharedOut(out.as_mut_ptr());
    let threads = rayon::current_num_threads();
    let packed = w.layout != Layout::Ggml;
    let gr = w.layout.group_rows();
    let task_rows = gemm_task_rows(rows, rb, n, threads).div_ceil(gr) * gr;
    let task = |task: usize| {
        let out = shared.get();
        let (r0, r1) = (task * task_rows, ((task + 1) * task_rows).min(rows));
        // A packed matrix: the task's rows back in ggml's layout, once per task (the tiles then
        // reuse them for every activation row, so this costs little next to them).
        let unpacked: Vec<u8> = if packed {
            let group_bytes = w.group_bytes();
            let mut buf = vec![0u8; (r1 - r0) * rb];
            for g in (r0..r1).step_by(gr) {
                let k = gr.min(r1 - g);
                unpack_rows(w.layout, &w.data[g / gr * group_bytes..][..group_bytes], nb, k, &mut buf[(g - r0) * rb..]);
            }
            buf
        } else {
            Vec::new()
        };
        let (base, base_row) = if packed { (&unpacked[..], r0) } else { (w.data, 0) };
        for tb in (0..n).step_by(GEMM_ACT_BLOCK) {
            let te = (tb + GEMM_ACT_BLOCK).min(n);
            for rt in (r0..r1).step_by(TILE) {
                let mr = TILE.min(r1 - rt);
                let wt = base[(rt - base_row) * rb..].as_ptr();
                for t in (tb..te).step_by(TILE) {
                    let nr = TILE.min(te - t);
                    // SAFETY (both arms): weight rows `rt..rt + mr` and activation rows
                    // `t..t + nr` exist, with their side data (bounds of the loops; the data size
                    // was checked), and the outputs `(t + j) * rows + rt + i` lie in
                    // `out` and belong to this task's rows only, so no two tasks write the same
                    // element. The kernels run on this CPU (their table was handed out).
                    unsafe {
                        let o = out.add(t * rows + rt);
                        if let Some(tile) = tile {
                            tile(&acts.tile_args(wt, rb, mr, t, nr, o, rows));
                        } else {
                            for j in 0..nr {
                                let (a, aux) = (acts.row_ptr(t + j), acts.side_ptr(t + j));
                                for i in 0..mr {
                                    *o.add(j * rows + i) = dot(nb, wt.add(i * rb), a, aux);
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    let tasks = rows.div_ceil(task_rows);
    if threads == 1 {
        (0..tasks).for_each(task);
    } else {
        (0..tasks).into_par_iter().for_each(task);
    }
}

/// Weight rows per parallel task: enough work to amortise scheduling, few enough to balance.
const ROWS_PER_TASK: usize = 16;

/// The reference product: each weight row dequantized to `f32` once and dotted with every input
/// vector, rows split over rayon. Same contract as [`matmul`], without the activation rounding.
pub fn matmul_reference(w: &QMatrix<'_>, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), MatError> {
    if x.len() != n * w.cols {
        return Err(MatError::Shape { what: "matmul input", expected: n * w.cols, got: x.len() });
    }
    if out.len() != n * w.rows {
        return Err(MatError::Shape { what: "matmul output", expected: n * w.rows, got: out.len() });
    }
    // Each task computes a block of weight rows for every input, transposed: [rows_in_task][n].
    let blocks: Vec<Result<Vec<f32>, MatError>> = (0..w.rows.div_ceil(ROWS_PER_TASK))
        .into_par_iter()
        .map(|task| {
            let r0 = task * ROWS_PER_TASK;
            let r1 = (r0 + ROWS_PER_TASK).min(w.rows);
            let mut row = vec![0f32; w.cols];
            let mut acc = vec![0f32; (r1 - r0) * n];
            for r in r0..r1 {
                w.dequantize_row(r, &mut row)?;
                for t in 0..n {
                    acc[(r - r0) * n + t] = dot_f32(&row, &x[t * w.cols..(t + 1) * w.cols]);
                }
            }
            Ok(acc)
        })
        .collect();
    for (task, block) in blocks.into_iter().enumerate() {
        let block = block?;
        let r0 = task * ROWS_PER_TASK;
        let nr = block.len() / n.max(1);
        for i in 0..nr {
            for t in 0..n {
                out[t * w.rows + r0 + i] = block[i * n + t];
            }
        }
    }
    Ok(())
}

/// Dot product with eight independent accumulators (lets the compiler vectorise it).
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_matmul_matches_naive() {
        let (cols, rows, n) = (64, 37, 3);
        let w: Vec<f32> = (0..cols * rows).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
        let x: Vec<f32> = (0..cols * n).map(|i| ((i * 104729) % 89) as f32 / 40.0 - 1.0).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let m = QMatrix::new(GgmlType::F32, cols, rows, &bytes).unwrap();
        let mut out = vec![0f32; rows * n];
        matmul(&m, &x, n, &mut out).unwrap();
        for t in 0..n {
            for r in 0..rows {
                let expect: f32 = (0..cols).map(|c| w[r * cols + c] * x[t * cols + c]).sum();
                assert!((out[t * rows + r] - expect).abs() < 1e-4, "t{t} r{r}");
            }
        }
    }

    use crate::dot::tests::{dequant, magnitude, quantize_ref, random_acts, random_weights, tolerance, Acts, Rng, Scales};
    use crate::dot::{Isa, WEIGHT_TYPES};

    /// Checks `got` (from `matmul_with`) against `matmul_reference` output by output. The bound
    /// is what quantizing the activations can change, `sum |w_i| |x_i - q(x)_i|`, plus the `f32`
    /// rounding bound of the dot tests (and the f16 rounding of Q8_1's stored sum).
    fn check_against_reference(k: &Kernels, w: &QMatrix<'_>, x: &[f32], n: usize, got: &[f32]) {
        let mut want = vec![0f32; n * w.rows];
        matmul_reference(w, x, n, &mut want).unwrap();
        let vdt = VecDotType::for_weight(w.ty).unwrap();
        for t in 0..n {
            let xt = &x[t * w.cols..(t + 1) * w.cols];
            let a = quantize_ref(vdt, xt);
            let xq = dequant(vdt.ggml_type(), &a, w.cols);
            for r in 0..w.rows {
                let wr = &*w.row(r);
                let wd = dequant(w.ty, wr, w.cols);
                let shift: f64 = wd.iter().zip(xt.iter().zip(&xq)).map(|(&p, (&u, &v))| f64::from(p).abs() * f64::from(u - v).abs()).sum();
                let mag = magnitude(w.ty, wr, &a, w.cols) + wd.iter().zip(xt).map(|(&p, &u)| f64::from(p * u).abs()).sum::<f64>();
                let extra = if vdt == VecDotType::Q8_1 { 1e-3 * mag } else { 0.0 };
                let tol = 1.001 * shift + tolerance(w.cols, mag) + extra;
                let (g, e) = (got[t * w.rows + r], want[t * w.rows + r]);
                assert!(
                    (f64::from(g) - f64::from(e)).abs() <= tol,
                    "{} {} {}x{} n {n} (t {t}, r {r}): matmul {g}, reference {e}, tolerance {tol}",
                    k.isa(), w.ty, w.cols, w.rows
                );
            }
        }
    }

    #[test]
    fn matmul_matches_the_reference_for_every_type_and_table() {
        let mut rng = Rng::new(5);
        for k in Kernels::available() {
            for ty in WEIGHT_TYPES {
                // Three blocks per row; 37 rows is no multiple of the tile or the task.
                let cols = 3 * ty.block_size().max(32);
                let rows = 37;
                let data = random_weights(ty, rows * cols / ty.block_size(), &mut rng, Scales::Normal);
                let w = QMatrix::new(ty, cols, rows, &data).unwrap();
                // n = 70 spans two activation blocks of a prefill task, with a partial tile.
                for n in [1usize, 2, 5, 70] {
                    let x = random_acts(n * cols, &mut rng, Acts::Spiky);
                    let mut out = vec![f32::NAN; n * rows];
                    matmul_with(k, &w, &x, n, &mut out).unwrap();
                    check_against_reference(k, &w, &x, n, &out);
                }
            }
        }
    }

    #[test]
    fn threaded_matvec_matches_the_reference() {
        // Large enough to be split over threads, with a partial last task.
        let mut rng = Rng::new(9);
        for ty in WEIGHT_TYPES {
            let cols = 2048;
            let rb = ty.row_nbytes(cols as u64).unwrap() as usize;
            let rows = (3 * MATVEC_MIN_CHUNK_BYTES / rb).max(3 * SERIAL_BYTES / rb) + 5;
            let data = random_weights(ty, rows * cols / ty.block_size(), &mut rng, Scales::Mixed);
            let w = QMatrix::new(ty, cols, rows, &data).unwrap();
            let x = random_acts(cols, &mut rng, Acts::Normal);
            let mut out = vec![f32::NAN; rows];
            matmul(&w, &x, 1, &mut out).unwrap();
            check_against_reference(Kernels::best(), &w, &x, 1, &out);
        }
    }

    #[test]
    fn matmul_many_equals_separate_products() {
        // Mixed formats (two share Q8_0 activations), one type without a dot product (Q8_K, the
        // reference path), sizes over and under the serial threshold, with partial chunks.
        let mut rng = Rng::new(13);
        let cols = 1024;
        let mats: Vec<(GgmlType, usize)> = vec![(GgmlType::Q5_0, 301), (GgmlType::Q4_K, 77), (GgmlType::Q8_0, 130), (GgmlType::Q8_K, 5)];
        let datas: Vec<Vec<u8>> = mats
            .iter()
            .map(|&(ty, rows)| {
                if ty == GgmlType::Q8_K {
                    let mut q = vec![0u8; rows * cols / ty.block_size() * ty.type_size()];
                    crate::quants::quantize(ty, &random_acts(rows * cols, &mut rng, Acts::Normal), &mut q).unwrap();
                    q
                } else {
                    random_weights(ty, rows * cols / ty.block_size(), &mut rng, Scales::Mixed)
                }
            })
            .collect();
        let ws: Vec<QMatrix<'_>> = mats.iter().zip(&datas).map(|(&(ty, rows), d)| QMatrix::new(ty, cols, rows, d).unwrap()).collect();
        let wrefs: Vec<&QMatrix<'_>> = ws.iter().collect();
        for k in Kernels::available() {
            for n in [1usize, 3] {
                let x = random_acts(n * cols, &mut rng, Acts::Spiky);
                let mut outs: Vec<Vec<f32>> = ws.iter().map(|w| vec![f32::NAN; n * w.rows]).collect();
                let mut views: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
                matmul_many_with(k, &wrefs, &x, n, &mut views).unwrap();
                for (w, got) in ws.iter().zip(&outs) {
                    let mut want = vec![f32::NAN; n * w.rows];
                    matmul_with(k, w, &x, n, &mut want).unwrap();
                    assert_eq!(got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "{} {} n {n}", k.isa(), w.ty);
                }
            }
        }
        // A wrong output length anywhere: an error, and nothing computed.
        let x = random_acts(cols, &mut rng, Acts::Normal);
        let (mut a, mut b) = (vec![f32::NAN; ws[0].rows], vec![0f32; ws[1].rows + 1]);
        let r = matmul_many(&wrefs[..2], &x, 1, &mut [&mut a, &mut b]);
        assert!(matches!(r, Err(MatError::Shape { .. })));
        assert!(a.iter().all(|v| v.is_nan()));
    }

    #[test]
    fn packed_matrices_match_the_reference_on_every_table() {
        // Rows no multiple of the group of eight (and fewer than one group), one block per row
        // and several; n = 1..4 runs the packed decode kernel, 70 the tiles over unpacked rows.
        let mut rng = Rng::new(17);
        for (ty, layout) in [(GgmlType::Q5_0, Layout::Q5_0x8), (GgmlType::Q4_K, Layout::Q4_Kx8), (GgmlType::Q6_K, Layout::Q6_Kx8), (GgmlType::Q4_0, Layout::Q4_0x8), (GgmlType::Q8_0, Layout::Q8_0x8)] {
            let (bs, ts) = (ty.block_size(), ty.type_size());
            for (nb, rows) in [(1usize, 1usize), (3, 37), (20, 8), (5, 13), (16, 21)] {
                let cols = nb * bs;
                let data = random_weights(ty, rows * nb, &mut rng, Scales::Mixed);
                let w = QMatrix::new(ty, cols, rows, &data).unwrap();
                let p = pack(&w, layout).unwrap();
                let pv = p.view();
                assert_eq!(p.nbytes(), rows.div_ceil(8) * 8 * nb * ts);
                for r in 0..rows {
                    assert_eq!(&*pv.row(r), &*w.row(r), "{ty} row {r} restored");
                }
                for k in Kernels::available() {
                    for n in [1usize, 2, 4, 70] {
                        let x = random_acts(n * cols, &mut rng, Acts::Spiky);
                        let mut got = vec![f32::NAN; n * rows];
                        matmul_with(k, &pv, &x, n, &mut got).unwrap();
                        check_against_reference(k, &pv, &x, n, &got);
                        // The scalar packed kernels sum as the scalar row kernels do, the tiles
                        // read the unpacked rows, and the VNNI Q5_0x8 kernel sums as the VBMI
                        // ggml kernel does (rows of whole groups of four blocks): all
                        // bit-identical to the ggml layout's products.
                        #[cfg(target_arch = "x86_64")]
                        let vbmi = ty == GgmlType::Q5_0
                            && k.isa() == Isa::Avx512Vnni
                            && std::is_x86_feature_detected!("avx512vbmi")
                            && nb % 4 == 0;
                        #[cfg(not(target_arch = "x86_64"))]
                        let vbmi = false;
                        if k.isa() == Isa::Scalar || n > MATVEC_BATCH_MAX || vbmi {
                            let mut want = vec![f32::NAN; n * rows];
                            matmul_with(k, &w, &x, n, &mut want).unwrap();
                            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                            assert_eq!(bits(&got), bits(&want), "{} {ty} {cols}x{rows} n {n}", k.isa());
                        }
                    }
                }
            }
            // Big enough to be split over threads in chunks of whole groups, with a partial group.
            let cols = 2048usize;
            let rows = 3 * MATVEC_MIN_CHUNK_BYTES / (cols / bs * ts) + 5;
            let data = random_weights(ty, rows * cols / bs, &mut rng, Scales::Mixed);
            let w = QMatrix::new(ty, cols, rows, &data).unwrap();
            let p = pack(&w, layout).unwrap();
            let x = random_acts(cols, &mut rng, Acts::Normal);
            let mut got = vec![f32::NAN; rows];
            matmul(&p.view(), &x, 1, &mut got).unwrap();
            check_against_reference(Kernels::best(), &p.view(), &x, 1, &got);
            // A packed matrix with the wrong size is refused.
            let bad = QMatrix { ty, cols: bs, rows: 9, data: &vec![0u8; 8 * ts], layout };
            assert!(matches!(matmul(&bad, &vec![0.0; bs], 1, &mut [0.0; 9]), Err(MatError::DataSize { .. })));
        }
        // Other types and layouts are not packed.
        assert!(pack(&QMatrix::new(GgmlType::Q4_0, 32, 1, &[0u8; 18]).unwrap(), Layout::Q5_0x8).is_none());
        assert!(pack(&QMatrix::new(GgmlType::Q5_0, 256, 1, &[0u8; 176]).unwrap(), Layout::Q4_Kx8).is_none());
        let q4k = QMatrix { ty: GgmlType::Q4_K, cols: 256, rows: 8, data: &[0u8; 8 * 144], layout: Layout::Q5_0x8 };
        assert!(matches!(matmul(&q4k, &[0.0; 256], 1, &mut [0.0; 8]), Err(MatError::DataSize { .. })));
    }

    #[test]
    fn matmul_gated_equals_the_products_then_the_gate() {
        // Packed Q5_0 and Q4_K pairs (groups of eight) and mixed types (groups of eight, four
        // and one), over and under the serial threshold, decode and prefill.
        let mut rng = Rng::new(21);
        let act = crate::ops::gelu_tanh;
        let cases = [
            (GgmlType::Q5_0, GgmlType::Q5_0, 640usize, 2051usize),
            (GgmlType::Q4_K, GgmlType::Q8_0, 256, 301),
            (GgmlType::Q5_0, GgmlType::Q6_K, 256, 13),
            (GgmlType::Q4_K, GgmlType::Q4_K, 512, 1029),
            (GgmlType::Q4_K, GgmlType::Q5_0, 256, 21),
            (GgmlType::Q6_K, GgmlType::Q4_K, 256, 45),
            (GgmlType::Q4_0, GgmlType::Q4_0, 128, 1500),
        ];
        for (tg, tu, cols, rows) in cases {
            let dg = random_weights(tg, rows * cols / tg.block_size(), &mut rng, Scales::Mixed);
            let du = random_weights(tu, rows * cols / tu.block_size(), &mut rng, Scales::Mixed);
            let (g, u) = (QMatrix::new(tg, cols, rows, &dg).unwrap(), QMatrix::new(tu, cols, rows, &du).unwrap());
            let packed = |w: &QMatrix<'_>| [Layout::Q5_0x8, Layout::Q4_Kx8, Layout::Q6_Kx8, Layout::Q4_0x8, Layout::Q8_0x8].into_iter().find_map(|l| pack(w, l));
            let (pg, pu) = (packed(&g), packed(&u));
            let g = pg.as_ref().map_or(g, |p| p.view());
            let u = pu.as_ref().map_or(u, |p| p.view());
            for k in Kernels::available() {
                for n in [1usize, 3, 6] {
                    let x = random_acts(n * cols, &mut rng, Acts::Spiky);
                    let mut got = vec![f32::NAN; n * rows];
                    matmul_gated_with(k, &g, &u, &x, n, act, &mut got).unwrap();
                    let (mut wg, mut wu) = (vec![f32::NAN; n * rows], vec![f32::NAN; n * rows]);
                    matmul_with(k, &g, &x, n, &mut wg).unwrap();
                    matmul_with(k, &u, &x, n, &mut wu).unwrap();
                    crate::ops::gated_act(&mut wg, &wu, act);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&got), bits(&wg), "{} {tg} {tu} {cols}x{rows} n {n}", k.isa());
                }
            }
        }
        let d = random_weights(GgmlType::Q8_0, 4, &mut rng, Scales::Normal);
        let (a, b) = (QMatrix::new(GgmlType::Q8_0, 64, 2, &d).unwrap(), QMatrix::new(GgmlType::Q8_0, 32, 4, &d).unwrap());
        assert!(matches!(matmul_gated(&a, &b, &[0.0; 64], 1, act, &mut [0.0; 2]), Err(MatError::Shape { .. })));
    }

    #[test]
    fn matmul_keeps_the_reference_errors() {
        let k = Kernels::best();
        // No dot product and no dequantizer: the reference's error.
        let m = QMatrix::new(GgmlType::IQ2_XXS, 256, 1, &[0u8; 66]).unwrap();
        assert_eq!(
            matmul(&m, &[0.0; 256], 1, &mut [0.0; 1]),
            Err(MatError::Quant(QuantError::Unsupported { ty: GgmlType::IQ2_XXS, op: crate::quants::QuantOp::Dequantize }))
        );
        // A matrix built by hand with too little data is refused before any kernel reads it.
        let bad = QMatrix { ty: GgmlType::Q4_0, cols: 64, rows: 2, data: &[0u8; 36], layout: Layout::Ggml };
        assert!(matches!(matmul_with(k, &bad, &[0.0; 64], 1, &mut [0.0; 2]), Err(MatError::DataSize { .. })));
        // Q8_K weights have no dot product and go through the reference.
        let q8k = vec![0u8; 292];
        let m = QMatrix::new(GgmlType::Q8_K, 256, 1, &q8k).unwrap();
        assert_eq!(matmul(&m, &[1.0; 256], 1, &mut [5.0; 1]), Ok(()));
        assert!(Isa::Scalar.is_available());
    }

    #[test]
    fn wrong_sizes_are_errors() {
        assert!(QMatrix::new(GgmlType::Q4_0, 64, 2, &[0u8; 71]).is_err());
        assert!(QMatrix::new(GgmlType::Q4_K, 100, 1, &[0u8; 144]).is_err());
        let m = QMatrix::new(GgmlType::F32, 2, 1, &[0u8; 8]).unwrap();
        assert!(matmul(&m, &[0.0; 3], 1, &mut [0.0; 1]).is_err());
    }
}
