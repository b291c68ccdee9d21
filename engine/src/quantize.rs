//! GGUF to GGUF quantization, as `llama-quantize` does it.
//!
//! Each tensor's type comes from [`crate::quant_mix`] for the requested [`FileType`] (the
//! Q4_K_M-style mixes, the block-size fallbacks); tensors of one dimension (norms, biases) are
//! F32. A tensor already of its target type is copied byte for byte; any other is dequantized
//! and quantized again, a block of rows at a time, rows in parallel (rayon), streamed to
//! [`GgufWriter::write_atomic`]. Quantizing a tensor that is already quantized loses precision
//! twice, so it is refused unless [`QuantizeParams::allow_requantize`] is set (llama.cpp's
//! `--allow-requantize`); the refusal comes before anything is written.
//!
//! Every metadata key of the input is kept in order (including `lighttransfer.*`), with
//! `general.file_type` set to the new type and `general.quantization_version` to 2. Writing
//! over the input (also through a link) is refused.

use std::io::{self, Write};
use std::path::Path;

use ggml_kernels::quants::{can_dequantize, can_quantize, dequantize, quantize as quantize_row};
use ggml_kernels::GgmlType;
use rayon::prelude::*;

use crate::gguf::{GgufError, GgufFile, GgufWriter, MetaValue, Progress, TensorData, TensorInfo};
use crate::quant_mix::{tensor_type, FileType, MixContext};

#[derive(Debug, thiserror::Error)]
pub enum QuantizeError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("tensor {name:?} is already quantized ({ty}); requantizing to {target} loses precision twice: pass --allow-requantize to do it anyway")]
    Requantize { name: String, ty: GgmlType, target: GgmlType },
    #[error("tensor {name:?}: cannot convert {from} to {to} (no kernel)")]
    Unsupported { name: String, from: GgmlType, to: GgmlType },
    #[error("bad input: {0}")]
    Input(String),
}

/// What to produce.
#[derive(Clone, Copy, Debug)]
pub struct QuantizeParams {
    pub ftype: FileType,
    /// Dequantize and quantize again tensors that are already quantized.
    pub allow_requantize: bool,
}

/// One tensor's fate.
#[derive(Clone, Debug)]
pub struct TensorJob<'a> {
    pub info: &'a TensorInfo,
    pub target: GgmlType,
}

impl TensorJob<'_> {
    /// True when the data is copied unchanged.
    pub fn is_copy(&self) -> bool {
        self.info.ty == self.target
    }
}

#[derive(Clone, Debug)]
pub struct QuantizeReport {
    pub size_in: u64,
    pub size_out: u64,
    pub n_tensors: usize,
    /// Tensors converted (the others were copied).
    pub n_converted: usize,
    /// Of those, tensors that were quantized before.
    pub n_requantized: usize,
    /// Tensors per output type, in type-id order.
    pub types: Vec<(GgmlType, usize)>,
}

/// The mix context of a model file: layers, whether the output matrix is its own tensor, query
/// heads per KV head.
fn mix_context(f: &GgufFile) -> Result<MixContext, QuantizeError> {
    let arch = f.get_str("general.architecture")?.ok_or_else(|| GgufError::MissingKey("general.architecture".into()))?;
    let n_layer = match f.get_as::<u32>(&format!("{arch}.block_count"))? {
        Some(n) => n as usize,
        // No block count: count the blocks.
        None => f
            .tensors()
            .iter()
            .filter_map(|t| t.name.strip_prefix("blk.").and_then(|r| r.split('.').next()).and_then(|s| s.parse::<usize>().ok()))
            .max()
            .map_or(0, |m| m + 1),
    };
    let n_head = f.get_as::<u32>(&format!("{arch}.attention.head_count"))?.unwrap_or(1).max(1);
    let n_head_kv = f.get_as::<u32>(&format!("{arch}.attention.head_count_kv"))?.unwrap_or(n_head).max(1);
    Ok(MixContext {
        n_layer,
        has_output: f.tensor("output.weight").is_some(),
        n_gqa: (n_head / n_head_kv) as usize,
    })
}

/// Chooses every tensor's output type and checks that each conversion can be done.
pub fn plan<'a>(f: &'a GgufFile, p: &QuantizeParams) -> Result<Vec<TensorJob<'a>>, QuantizeError> {
    let ctx = mix_context(f)?;
    let mut jobs = Vec::with_capacity(f.tensors().len());
    for info in f.tensors() {
        let n_dims = info.dims().iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
        let target = if n_dims < 2 { GgmlType::F32 } else { tensor_type(p.ftype, &info.name, info.dims(), info.ty, &ctx) };
        if target != info.ty {
            if info.ty.is_quantized() && !p.allow_requantize {
                return Err(QuantizeError::Requantize { name: info.name.clone(), ty: info.ty, target });
            }
            if !can_dequantize(info.ty) || !can_quantize(target) {
                return Err(QuantizeError::Unsupported { name: info.name.clone(), from: info.ty, to: target });
            }
        }
        jobs.push(TensorJob { info, target });
    }
    Ok(jobs)
}

/// Bytes of output rows converted per step.
const STEP_BYTES: usize = 16 << 20;

/// Converts one tensor's rows from its type to `target`, a block of rows at a time.
fn convert_tensor(src: &[u8], info: &TensorInfo, target: GgmlType, out: &mut dyn Write) -> io::Result<()> {
    let err = |reason: String| io::Error::other(format!("tensor {:?}: {reason}", info.name));
    let cols = info.dims()[0];
    let rows = (info.n_elements() / cols.max(1)) as usize;
    let src_row = info.ty.row_nbytes(cols).map_err(|e| err(e.to_string()))? as usize;
    let dst_row = target.row_nbytes(cols).map_err(|e| err(e.to_string()))? as usize;
    let cols = cols as usize;
    let step = (STEP_BYTES / dst_row.max(1)).clamp(1, rows.max(1));
    let mut buf = vec![0u8; step * dst_row];
    let mut row0 = 0;
    while row0 < rows {
        let n = step.min(rows - row0);
        let dst = &mut buf[..n * dst_row];
        let from = &src[row0 * src_row..(row0 + n) * src_row];
        dst.par_chunks_mut(dst_row).zip(from.par_chunks(src_row)).enumerate().try_for_each_init(
            || vec![0f32; cols],
            |x, (i, (d, s))| {
                dequantize(info.ty, s, x).map_err(|e| err(e.to_string()))?;
                if let Some(j) = x.iter().position(|v| !v.is_finite()) {
                    return Err(err(format!("row {} element {j} is {}", row0 + i, x[j])));
                }
                quantize_row(target, x, d).map_err(|e| err(e.to_string()))
            },
        )?;
        out.write_all(dst)?;
        row0 += n;
    }
    Ok(())
}

/// Quantizes `input` into `out` atomically; `progress` is called after each tensor.
pub fn quantize(input: &GgufFile, out: &Path, p: &QuantizeParams, progress: Option<Progress<'_>>) -> Result<QuantizeReport, QuantizeError> {
    let jobs = plan(input, p)?;
    let mut w = GgufWriter::new();
    for (key, value) in input.metadata() {
        w.set(key, value.to_owned_value())?;
    }
    w.set("general.file_type", MetaValue::U32(p.ftype.id()))?;
    w.set("general.quantization_version", MetaValue::U32(2))?;
    w.protect_input(input.path().to_path_buf());
    let (mut n_converted, mut n_requantized) = (0, 0);
    for job in &jobs {
        let info = job.info;
        let data = input.tensor_data(info);
        let td = if job.is_copy() {
            TensorData::Bytes(std::borrow::Cow::Borrowed(data))
        } else {
            n_converted += 1;
            if info.ty.is_quantized() {
                n_requantized += 1;
            }
            let target = job.target;
            TensorData::Stream(Box::new(move |o: &mut dyn Write| convert_tensor(data, info, target, o)))
        };
        w.add_tensor(&info.name, job.target, info.dims(), td)?;
    }
    let size_out = w.write_atomic(out, progress)?;
    let mut types: Vec<(GgmlType, usize)> = Vec::new();
    for job in &jobs {
        match types.iter_mut().find(|(t, _)| *t == job.target) {
            Some(e) => e.1 += 1,
            None => types.push((job.target, 1)),
        }
    }
    types.sort_by_key(|(t, _)| t.id());
    Ok(QuantizeReport { size_in: input.file_len(), size_out, n_tensors: jobs.len(), n_converted, n_requantized, types })
}

/// Bytes the output's tensor data will take (for a progress bar).
pub fn output_tensor_bytes(jobs: &[TensorJob<'_>]) -> u64 {
    jobs.iter().map(|j| j.target.tensor_nbytes(j.info.dims()).unwrap_or(0)).sum()
}
