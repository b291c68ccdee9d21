//! The model's tensors, found by their GGUF names and checked against the hyperparameters.
//!
//! Matrices stay in the file's map ([`QMatrix`] borrows it); the small norm and bias vectors are
//! converted to f32 once. A layer matrix or output projection whose type the CPU kernels decode
//! faster in another layout (Q4_0, Q5_0, Q8_0, Q4_K, Q6_K: see `ggml_kernels::repack`) also gets
//! an owned copy in that layout, built once before the first CPU forward pass
//! ([`super::Model::prepare_cpu`]); the GPU uploads the file's bytes and never builds it.

use std::sync::OnceLock;

use ggml_kernels::matmul::{decode_layout, pack_with, PackedMatrix, QMatrix};
use ggml_kernels::quants::dequantize;
use ggml_kernels::quants::finite::first_non_finite;

use crate::gguf::{GgufFile, TensorInfo};

use super::config::{Arch, ModelConfig};
use super::ModelError;

/// A layer's weight matrix: the file's bytes, and the CPU's own copy where it has a faster
/// layout for the type.
pub struct Matrix<'a> {
    /// The matrix as the file stores it (borrowed from the map).
    pub file: QMatrix<'a>,
    /// The decode layout of `file`, or `None` where the file's layout is the CPU's best; built
    /// on first use.
    packed: OnceLock<Option<PackedMatrix>>,
}

impl<'a> Matrix<'a> {
    pub fn new(file: QMatrix<'a>) -> Self {
        Matrix { file, packed: OnceLock::new() }
    }

    /// What the CPU products read: the rebuilt layout where there is one (built by the first
    /// call), else the file's. `ENGINE_CPU_REPACK=0` keeps every matrix in the file's layout
    /// (for comparisons).
    pub fn cpu(&self) -> QMatrix<'_> {
        self.prepare(&|_| {});
        match self.packed.get() {
            Some(Some(p)) => p.view(),
            _ => self.file,
        }
    }

    /// Builds the CPU's own copy where there is a faster layout (once; later calls return at
    /// once), handing each run of the file's bytes to `consumed` as soon as it is packed.
    pub fn prepare(&self, consumed: &dyn Fn(&[u8])) {
        static OFF: OnceLock<bool> = OnceLock::new();
        let off = *OFF.get_or_init(|| std::env::var("ENGINE_CPU_REPACK").is_ok_and(|v| v == "0"));
        self.packed.get_or_init(|| if off { None } else { decode_layout(&self.file).and_then(|l| pack_with(&self.file, l, consumed)) });
    }

    /// Bytes of the CPU's own copy (0 when there is none or it is not built yet).
    pub fn owned_bytes(&self) -> usize {
        self.packed.get().and_then(|p| p.as_ref()).map_or(0, |p| p.nbytes())
    }
}

/// One transformer block.
pub struct LayerWeights<'a> {
    /// `[n_embd]`
    pub attn_norm: Vec<f32>,
    /// `[n_embd] -> [n_head * head_dim]`
    pub wq: Matrix<'a>,
    /// `[n_embd] -> [n_head_kv * head_dim]`
    pub wk: Matrix<'a>,
    /// `[n_embd] -> [n_head_kv * head_dim_v]`
    pub wv: Matrix<'a>,
    /// `[n_head * head_dim_v] -> [n_embd]`
    pub wo: Matrix<'a>,
    /// Qwen2's Q/K/V biases.
    pub bq: Option<Vec<f32>>,
    pub bk: Option<Vec<f32>>,
    pub bv: Option<Vec<f32>>,
    /// Gemma 3's per-head Q/K RMSNorms, `[head_dim]`.
    pub q_norm: Option<Vec<f32>>,
    pub k_norm: Option<Vec<f32>>,
    /// Gemma 3's norm of the attention output, `[n_embd]`.
    pub post_attn_norm: Option<Vec<f32>>,
    /// `[n_embd]`
    pub ffn_norm: Vec<f32>,
    /// `[n_embd] -> [n_ff]`
    pub ffn_gate: Matrix<'a>,
    pub ffn_up: Matrix<'a>,
    /// `[n_ff] -> [n_embd]`
    pub ffn_down: Matrix<'a>,
    /// Gemma 3's norm of the FFN output, `[n_embd]`.
    pub post_ffw_norm: Option<Vec<f32>>,
}

pub struct Weights<'a> {
    /// `[n_embd] x n_vocab` rows.
    pub token_embd: QMatrix<'a>,
    /// `[n_embd]`
    pub output_norm: Vec<f32>,
    /// `[n_embd] -> [n_vocab]`; the embedding matrix itself when the output is tied (`file`
    /// is then `token_embd`'s bytes), with the CPU's own copy where it has a faster layout.
    pub output: Matrix<'a>,
    pub layers: Vec<LayerWeights<'a>>,
}

impl<'a> LayerWeights<'a> {
    /// The seven matrices, in the order wq, wk, wv, wo, ffn_gate, ffn_up, ffn_down.
    pub fn matrices(&self) -> [&Matrix<'a>; 7] {
        [&self.wq, &self.wk, &self.wv, &self.wo, &self.ffn_gate, &self.ffn_up, &self.ffn_down]
    }
}

struct Loader<'a> {
    f: &'a GgufFile,
}

impl<'a> Loader<'a> {
    fn info(&self, name: &str) -> Result<&'a TensorInfo, ModelError> {
        self.f.tensor(name).ok_or_else(|| ModelError::MissingTensor(name.to_string()))
    }

    fn check_shape(&self, t: &TensorInfo, shape: &[usize]) -> Result<(), ModelError> {
        let want: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        if t.dims() != want.as_slice() {
            return Err(ModelError::TensorShape { name: t.name.clone(), expected: want, got: t.dims().to_vec() });
        }
        Ok(())
    }

    /// A matrix of `rows` rows of `cols` elements; its weights must be finite (every element of
    /// a float matrix, every block scale of a quantized one: see
    /// `ggml_kernels::quants::finite`, which says why the products would not report them).
    fn matrix(&self, name: &str, cols: usize, rows: usize) -> Result<QMatrix<'a>, ModelError> {
        let t = self.info(name)?;
        self.check_shape(t, &[cols, rows])?;
        let data = self.f.tensor_data(t);
        let m = QMatrix::new(t.ty, cols, rows, data).map_err(|e| ModelError::Tensor(name.to_string(), e.to_string()))?;
        match first_non_finite(t.ty, data) {
            Ok(None) => Ok(m),
            Ok(Some(bad)) => Err(ModelError::Tensor(name.to_string(), bad.to_string())),
            Err(e) => Err(ModelError::Tensor(name.to_string(), e.to_string())),
        }
    }

    /// A vector of `n` elements as f32; it must be finite.
    fn vector(&self, name: &str, n: usize) -> Result<Vec<f32>, ModelError> {
        let t = self.info(name)?;
        self.check_shape(t, &[n])?;
        let mut out = vec![0f32; n];
        dequantize(t.ty, self.f.tensor_data(t), &mut out).map_err(|e| ModelError::Tensor(name.to_string(), e.to_string()))?;
        if let Some(i) = out.iter().position(|v| !v.is_finite()) {
            return Err(ModelError::Tensor(name.to_string(), format!("element {i} is {}", out[i])));
        }
        Ok(out)
    }

    fn opt_vector(&self, name: &str, n: usize) -> Result<Option<Vec<f32>>, ModelError> {
        if self.f.tensor(name).is_some() {
            self.vector(name, n).map(Some)
        } else {
            Ok(None)
        }
    }
}

impl<'a> Weights<'a> {
    pub fn load(f: &'a GgufFile, cfg: &ModelConfig) -> Result<Weights<'a>, ModelError> {
        let l = Loader { f };
        let (e, hd, hdv) = (cfg.n_embd, cfg.head_dim, cfg.head_dim_v);
        let token_embd = l.matrix("token_embd.weight", e, cfg.n_vocab)?;
        let output = Matrix::new(if f.tensor("output.weight").is_some() { l.matrix("output.weight", e, cfg.n_vocab)? } else { token_embd });
        let gemma = cfg.arch == Arch::Gemma3;
        let qwen = cfg.arch == Arch::Qwen2;
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            let n = |s: &str| format!("blk.{il}.{s}");
            let req = |name: String, len: usize, on: bool| -> Result<Option<Vec<f32>>, ModelError> {
                if on { l.vector(&name, len).map(Some) } else { l.opt_vector(&name, len) }
            };
            layers.push(LayerWeights {
                attn_norm: l.vector(&n("attn_norm.weight"), e)?,
                wq: Matrix::new(l.matrix(&n("attn_q.weight"), e, cfg.n_head * hd)?),
                wk: Matrix::new(l.matrix(&n("attn_k.weight"), e, cfg.n_head_kv * hd)?),
                wv: Matrix::new(l.matrix(&n("attn_v.weight"), e, cfg.n_head_kv * hdv)?),
                wo: Matrix::new(l.matrix(&n("attn_output.weight"), cfg.n_head * hdv, e)?),
                bq: req(n("attn_q.bias"), cfg.n_head * hd, qwen)?,
                bk: req(n("attn_k.bias"), cfg.n_head_kv * hd, qwen)?,
                bv: req(n("attn_v.bias"), cfg.n_head_kv * hdv, qwen)?,
                q_norm: req(n("attn_q_norm.weight"), hd, gemma)?,
                k_norm: req(n("attn_k_norm.weight"), hd, gemma)?,
                post_attn_norm: req(n("post_attention_norm.weight"), e, gemma)?,
                ffn_norm: l.vector(&n("ffn_norm.weight"), e)?,
                ffn_gate: Matrix::new(l.matrix(&n("ffn_gate.weight"), e, cfg.n_ff)?),
                ffn_up: Matrix::new(l.matrix(&n("ffn_up.weight"), e, cfg.n_ff)?),
                ffn_down: Matrix::new(l.matrix(&n("ffn_down.weight"), cfg.n_ff, e)?),
                post_ffw_norm: req(n("post_ffw_norm.weight"), e, gemma)?,
            });
        }
        Ok(Weights { token_embd, output_norm: l.vector("output_norm.weight", e)?, output, layers })
    }
}
