//! Which GGML type each tensor of a model gets in a file of a given type (`general.file_type`),
//! as llama.cpp's quantizer chooses it (`llama_tensor_get_type` in `src/llama-quant.cpp`).
//!
//! A "Q4_K_M" file is not all Q4_K: llama.cpp keeps norms and biases in F32, gives the output
//! matrix (and the token embeddings when they double as the output) Q6_K, gives `attn_v` and
//! `ffn_down` Q6_K in the layers `use_more_bits` picks (the first and last eighth and every third
//! layer between), and falls back to a block-32 type when a row length is not a multiple of 256
//! (Q4_K -> Q5_0, Q6_K -> Q8_0). The other K-quant and IQ4 mixes (Q2_K, Q3_K_M, Q4_K_S,
//! Q5_K_S, Q5_K_M, IQ4_NL, IQ4_XS) follow llama.cpp's rules for `attn_v`, `ffn_down` and
//! `attn_output` the same way (without an importance matrix). [`tensor_type`] is that decision as
//! one function, used by `engine synth`, `engine convert` and `engine quantize`.
//!
//! llama.cpp counts `attn_v` and `ffn_down` tensors as it visits them in layer order; for the
//! dense models here that count is the layer index, which [`tensor_type`] reads from the name.

use ggml_kernels::GgmlType;

/// The file types this engine writes, with llama.cpp's `LLAMA_FTYPE_*` ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileType {
    /// `LLAMA_FTYPE_ALL_F32`
    F32,
    /// `LLAMA_FTYPE_MOSTLY_F16`: matrices F16, vectors F32.
    F16,
    /// `LLAMA_FTYPE_MOSTLY_BF16`: matrices BF16, vectors F32.
    BF16,
    /// `LLAMA_FTYPE_MOSTLY_Q8_0`
    Q8_0,
    /// `LLAMA_FTYPE_MOSTLY_Q4_0`: Q4_0, the output matrix Q6_K.
    Q4_0,
    /// `LLAMA_FTYPE_MOSTLY_Q4_1`
    Q4_1,
    /// `LLAMA_FTYPE_MOSTLY_Q5_0`
    Q5_0,
    /// `LLAMA_FTYPE_MOSTLY_Q5_1`
    Q5_1,
    /// `LLAMA_FTYPE_MOSTLY_Q2_K`: Q2_K, `attn_v` Q3_K (Q4_K with 4+ query heads per KV head),
    /// `ffn_down` and `attn_output` Q3_K.
    Q2K,
    /// `LLAMA_FTYPE_MOSTLY_Q3_K_M`: Q3_K, `attn_v` Q5_K in the first two layers else Q4_K,
    /// `ffn_down` Q5_K in the first sixteenth else Q4_K, `attn_output` Q4_K.
    Q3KM,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_S`: Q4_K, `attn_v` of the first four layers and `ffn_down` of
    /// the first eighth Q5_K.
    Q4KS,
    /// `LLAMA_FTYPE_MOSTLY_Q4_K_M`: Q4_K with the Q6_K mix described above.
    Q4KM,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_S`: Q5_K.
    Q5KS,
    /// `LLAMA_FTYPE_MOSTLY_Q5_K_M`: Q5_K, `attn_v` and `ffn_down` Q6_K where `use_more_bits`.
    Q5KM,
    /// `LLAMA_FTYPE_MOSTLY_Q6_K`
    Q6K,
    /// `LLAMA_FTYPE_MOSTLY_IQ4_NL`: IQ4_NL, `attn_v` Q5_K with 4+ query heads per KV head,
    /// `ffn_down` of the first eighth Q5_K.
    IQ4NL,
    /// `LLAMA_FTYPE_MOSTLY_IQ4_XS`: as IQ4_NL, with IQ4_XS.
    IQ4XS,
}

/// Every file type, in the order the CLI lists them.
pub const ALL_FILE_TYPES: [FileType; 17] = [
    FileType::F32,
    FileType::F16,
    FileType::BF16,
    FileType::Q8_0,
    FileType::Q4_0,
    FileType::Q4_1,
    FileType::Q5_0,
    FileType::Q5_1,
    FileType::Q2K,
    FileType::Q3KM,
    FileType::Q4KS,
    FileType::Q4KM,
    FileType::Q5KS,
    FileType::Q5KM,
    FileType::Q6K,
    FileType::IQ4NL,
    FileType::IQ4XS,
];

impl FileType {
    /// The value of `general.file_type`.
    pub fn id(self) -> u32 {
        match self {
            FileType::F32 => 0,
            FileType::F16 => 1,
            FileType::Q4_0 => 2,
            FileType::Q4_1 => 3,
            FileType::Q8_0 => 7,
            FileType::Q5_0 => 8,
            FileType::Q5_1 => 9,
            FileType::Q2K => 10,
            FileType::Q3KM => 12,
            FileType::Q4KS => 14,
            FileType::Q4KM => 15,
            FileType::Q5KS => 16,
            FileType::Q5KM => 17,
            FileType::Q6K => 18,
            FileType::IQ4NL => 25,
            FileType::IQ4XS => 30,
            FileType::BF16 => 32,
        }
    }

    /// The file type with `general.file_type` id `id`.
    pub fn from_id(id: u32) -> Option<FileType> {
        ALL_FILE_TYPES.into_iter().find(|t| t.id() == id)
    }

    /// The name on the command line (llama-quantize's, lower case).
    pub fn name(self) -> &'static str {
        match self {
            FileType::F32 => "f32",
            FileType::F16 => "f16",
            FileType::BF16 => "bf16",
            FileType::Q8_0 => "q8_0",
            FileType::Q4_0 => "q4_0",
            FileType::Q4_1 => "q4_1",
            FileType::Q5_0 => "q5_0",
            FileType::Q5_1 => "q5_1",
            FileType::Q2K => "q2_k",
            FileType::Q3KM => "q3_k_m",
            FileType::Q4KS => "q4_k_s",
            FileType::Q4KM => "q4_k_m",
            FileType::Q5KS => "q5_k_s",
            FileType::Q5KM => "q5_k_m",
            FileType::Q6K => "q6_k",
            FileType::IQ4NL => "iq4_nl",
            FileType::IQ4XS => "iq4_xs",
        }
    }

    /// The type named `name` (case-insensitive).
    pub fn from_name(name: &str) -> Option<FileType> {
        ALL_FILE_TYPES.into_iter().find(|t| t.name().eq_ignore_ascii_case(name))
    }

    /// The type most matrices get (llama.cpp's `llama_ftype_get_default_type`).
    pub fn default_type(self) -> GgmlType {
        match self {
            FileType::F32 => GgmlType::F32,
            FileType::F16 => GgmlType::F16,
            FileType::BF16 => GgmlType::BF16,
            FileType::Q8_0 => GgmlType::Q8_0,
            FileType::Q4_0 => GgmlType::Q4_0,
            FileType::Q4_1 => GgmlType::Q4_1,
            FileType::Q5_0 => GgmlType::Q5_0,
            FileType::Q5_1 => GgmlType::Q5_1,
            FileType::Q2K => GgmlType::Q2_K,
            FileType::Q3KM => GgmlType::Q3_K,
            FileType::Q4KS | FileType::Q4KM => GgmlType::Q4_K,
            FileType::Q5KS | FileType::Q5KM => GgmlType::Q5_K,
            FileType::Q6K => GgmlType::Q6_K,
            FileType::IQ4NL => GgmlType::IQ4_NL,
            FileType::IQ4XS => GgmlType::IQ4_XS,
        }
    }
}

impl std::fmt::Display for FileType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What the choice needs to know about the whole model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixContext {
    /// Transformer blocks (llama.cpp's `n_layer`; also its count of `attn_v` tensors).
    pub n_layer: usize,
    /// The model has a separate `output.weight`; without one the token embeddings are the output
    /// matrix too and are quantized like it.
    pub has_output: bool,
    /// Query heads per KV head (llama.cpp's `n_gqa()`); 1 when unknown.
    pub n_gqa: usize,
}

/// llama.cpp's broad tensor categories (`tensor_get_category`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Category {
    TokenEmbd,
    Output,
    /// `attn_v`, and the fused `attn_qkv` / `attn_kv_b`, which llama.cpp treats alike.
    AttnV,
    AttnOutput,
    FfnDown,
    Other,
}

fn category(name: &str) -> Category {
    if name == "output.weight" {
        Category::Output
    } else if name == "token_embd.weight" || name == "per_layer_token_embd.weight" {
        Category::TokenEmbd
    } else if name.contains("attn_qkv.weight") || name.contains("attn_kv_b.weight") || name.contains("attn_v.weight") {
        Category::AttnV
    } else if name.contains("attn_output.weight") {
        Category::AttnOutput
    } else if name.contains("ffn_down") {
        Category::FfnDown
    } else {
        Category::Other
    }
}

/// llama.cpp's `tensor_allows_quantization`, for the tensors of the architectures here: matrices
/// (2 or more dimensions) whose name ends in `weight`, except norms and MoE gate inputs.
fn allows_quantization(name: &str, ne: &[u64]) -> bool {
    // ggml_n_dims: trailing dimensions of 1 do not count.
    let n_dims = ne.iter().rposition(|&d| d > 1).map_or(1, |i| i + 1);
    n_dims >= 2
        && name.ends_with("weight")
        && !name.contains("_norm.weight")
        && !name.contains("ffn_gate_inp.weight")
}

/// llama.cpp's `use_more_bits`: the first and last eighth of the layers, and every third layer
/// in between.
pub fn use_more_bits(i_layer: usize, n_layer: usize) -> bool {
    let (i, n) = (i_layer as i64, n_layer as i64);
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

/// The layer index in a `blk.N.` name.
fn layer_of(name: &str) -> Option<usize> {
    let rest = name.strip_prefix("blk.")?;
    rest[..rest.find('.')?].parse().ok()
}

/// llama.cpp's `tensor_type_fallback`: a type whose block does not divide the row length is
/// replaced by a block-32 type of similar size, and by F16 when even that does not fit.
/// (llama.cpp refuses to quantize such a tensor to Q4_0 or Q8_0 at all; F16 is kept here.)
fn fallback(ty: GgmlType, ncols: u64) -> GgmlType {
    let fits = |t: GgmlType| ncols % t.block_size() as u64 == 0;
    if fits(ty) {
        return ty;
    }
    let alt = match ty {
        GgmlType::Q2_K | GgmlType::Q3_K => GgmlType::Q4_0,
        GgmlType::Q4_K => GgmlType::Q5_0,
        GgmlType::Q5_K => GgmlType::Q5_1,
        GgmlType::Q6_K => GgmlType::Q8_0,
        GgmlType::IQ4_XS => GgmlType::IQ4_NL,
        _ => GgmlType::F16,
    };
    if fits(alt) {
        alt
    } else {
        GgmlType::F16
    }
}

/// The type tensor `name` of shape `ne` (ggml order, row length first) gets in a file of type
/// `ftype`; `src` is its type now, kept for tensors that are not quantized (norms, biases).
pub fn tensor_type(ftype: FileType, name: &str, ne: &[u64], src: GgmlType, ctx: &MixContext) -> GgmlType {
    if !allows_quantization(name, ne) {
        return src;
    }
    let default = ftype.default_type();
    if !default.is_quantized() {
        return default;
    }
    let ncols = ne[0];
    let cat = category(name);
    let i_layer = layer_of(name).unwrap_or(0);
    let n_layer = ctx.n_layer;
    let mut ty = default;
    use FileType as F;
    use GgmlType as G;
    if cat == Category::Output || (cat == Category::TokenEmbd && !ctx.has_output) {
        // The output matrix (or the tied embeddings): Q6_K, or Q8_0 when the row length does
        // not fit the default type's block.
        if ncols % default.block_size() as u64 != 0 {
            ty = G::Q8_0;
        } else if default != G::Q8_0 {
            ty = G::Q6_K;
        }
    } else if cat == Category::TokenEmbd {
        // Untied embeddings keep the default type for the file types here.
    } else if cat == Category::AttnV {
        // llama.cpp counts attn_v tensors in file order; for these dense models that is the layer.
        match ftype {
            F::Q2K => ty = if ctx.n_gqa >= 4 { G::Q4_K } else { G::Q3_K },
            F::Q3KM => ty = if i_layer < 2 { G::Q5_K } else { G::Q4_K },
            F::IQ4NL | F::IQ4XS if ctx.n_gqa >= 4 => ty = G::Q5_K,
            F::Q4KM | F::Q5KM if use_more_bits(i_layer, n_layer) => ty = G::Q6_K,
            F::Q4KS if i_layer < 4 => ty = G::Q5_K,
            _ => {}
        }
    } else if cat == Category::FfnDown {
        match ftype {
            F::Q2K => ty = G::Q3_K,
            F::Q3KM => ty = if i_layer < n_layer / 16 { G::Q5_K } else { G::Q4_K },
            F::Q4KM if use_more_bits(i_layer, n_layer) => ty = G::Q6_K,
            F::IQ4NL | F::IQ4XS if i_layer < n_layer / 8 => ty = G::Q5_K,
            F::Q5KM if use_more_bits(i_layer, n_layer) => ty = G::Q6_K,
            F::Q4KS if i_layer < n_layer / 8 => ty = G::Q5_K,
            _ => {}
        }
    } else if cat == Category::AttnOutput {
        match ftype {
            F::Q2K => ty = G::Q3_K,
            F::Q3KM => ty = G::Q4_K,
            _ => {}
        }
    }
    fallback(ty, ncols)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CTX: MixContext = MixContext { n_layer: 32, has_output: true, n_gqa: 4 };

    fn ty(ftype: FileType, name: &str, ne: &[u64], ctx: &MixContext) -> GgmlType {
        tensor_type(ftype, name, ne, GgmlType::F32, ctx)
    }

    #[test]
    fn file_type_names_and_ids() {
        for t in ALL_FILE_TYPES {
            assert_eq!(FileType::from_name(t.name()), Some(t));
        }
        assert_eq!(FileType::from_name("Q4_K_M"), Some(FileType::Q4KM));
        assert_eq!(FileType::from_name("q4_k"), None);
        assert_eq!(FileType::Q4KM.id(), 15);
        assert_eq!(FileType::Q8_0.id(), 7);
    }

    #[test]
    fn use_more_bits_matches_llama_cpp() {
        // 32 layers: 0..4, 28..32, and (i - 4) % 3 == 2 between.
        let picked: Vec<usize> = (0..32).filter(|&i| use_more_bits(i, 32)).collect();
        assert_eq!(picked, [0, 1, 2, 3, 6, 9, 12, 15, 18, 21, 24, 27, 28, 29, 30, 31]);
        // 18 layers (Gemma 3 270M): what its llama.cpp Q4_K_M file shows.
        let picked: Vec<usize> = (0..18).filter(|&i| use_more_bits(i, 18)).collect();
        assert_eq!(picked, [0, 1, 4, 7, 10, 13, 15, 16, 17]);
    }

    #[test]
    fn q4_k_m_mix() {
        let q = FileType::Q4KM;
        assert_eq!(ty(q, "blk.0.attn_v.weight", &[4096, 1024], &CTX), GgmlType::Q6_K);
        assert_eq!(ty(q, "blk.4.attn_v.weight", &[4096, 1024], &CTX), GgmlType::Q4_K);
        assert_eq!(ty(q, "blk.6.ffn_down.weight", &[14336, 4096], &CTX), GgmlType::Q6_K);
        assert_eq!(ty(q, "blk.7.ffn_down.weight", &[14336, 4096], &CTX), GgmlType::Q4_K);
        assert_eq!(ty(q, "blk.0.attn_q.weight", &[4096, 4096], &CTX), GgmlType::Q4_K);
        assert_eq!(ty(q, "blk.0.ffn_gate.weight", &[4096, 14336], &CTX), GgmlType::Q4_K);
        assert_eq!(ty(q, "output.weight", &[4096, 128256], &CTX), GgmlType::Q6_K);
        assert_eq!(ty(q, "token_embd.weight", &[4096, 128256], &CTX), GgmlType::Q4_K);
        let tied = MixContext { has_output: false, ..CTX };
        assert_eq!(ty(q, "token_embd.weight", &[4096, 128256], &tied), GgmlType::Q6_K);
        // Vectors stay as they are.
        assert_eq!(ty(q, "blk.0.attn_norm.weight", &[4096], &CTX), GgmlType::F32);
        assert_eq!(ty(q, "blk.0.attn_q.bias", &[4096], &CTX), GgmlType::F32);
        assert_eq!(ty(q, "output_norm.weight", &[4096], &CTX), GgmlType::F32);
    }

    #[test]
    fn rows_not_a_multiple_of_256_fall_back() {
        let q = FileType::Q4KM;
        assert_eq!(ty(q, "blk.1.attn_q.weight", &[640, 1024], &CTX), GgmlType::Q5_0);
        assert_eq!(ty(q, "blk.0.attn_v.weight", &[640, 256], &CTX), GgmlType::Q8_0);
        // Tied output with rows that do not fit Q4_K: Q8_0 directly.
        let tied = MixContext { n_layer: 18, has_output: false, n_gqa: 4 };
        assert_eq!(ty(q, "token_embd.weight", &[640, 262144], &tied), GgmlType::Q8_0);
        // Not even a multiple of 32: F16.
        assert_eq!(ty(q, "blk.1.attn_q.weight", &[100, 64], &CTX), GgmlType::F16);
        assert_eq!(ty(FileType::Q4_0, "blk.1.attn_q.weight", &[100, 64], &CTX), GgmlType::F16);
    }

    #[test]
    fn plain_types() {
        for (ft, want) in [(FileType::F32, GgmlType::F32), (FileType::F16, GgmlType::F16), (FileType::Q8_0, GgmlType::Q8_0)] {
            assert_eq!(ty(ft, "blk.0.attn_v.weight", &[4096, 1024], &CTX), want);
            assert_eq!(ty(ft, "output.weight", &[4096, 1024], &CTX), want);
            assert_eq!(ty(ft, "blk.0.ffn_norm.weight", &[4096], &CTX), GgmlType::F32);
        }
        // Q4_0: everything Q4_0 but the output, which gets Q6_K (Q8_0 when rows do not fit it).
        assert_eq!(ty(FileType::Q4_0, "blk.0.attn_v.weight", &[4096, 1024], &CTX), GgmlType::Q4_0);
        assert_eq!(ty(FileType::Q4_0, "output.weight", &[4096, 1024], &CTX), GgmlType::Q6_K);
        assert_eq!(ty(FileType::Q4_0, "output.weight", &[640, 1024], &CTX), GgmlType::Q8_0);
        assert_eq!(ty(FileType::Q4_0, "token_embd.weight", &[640, 1024], &CTX), GgmlType::Q4_0);
    }

    #[test]
    fn other_mixes_follow_llama_cpp() {
        let t = |ft, name: &str, ne: &[u64], ctx: &MixContext| ty(ft, name, ne, ctx);
        let m = [4096u64, 1024];
        let gqa1 = MixContext { n_gqa: 1, ..CTX };
        // Q2_K: attn_v Q4_K with GQA >= 4, else Q3_K; ffn_down and attn_output Q3_K.
        assert_eq!(t(FileType::Q2K, "blk.5.attn_v.weight", &m, &CTX), GgmlType::Q4_K);
        assert_eq!(t(FileType::Q2K, "blk.5.attn_v.weight", &m, &gqa1), GgmlType::Q3_K);
        assert_eq!(t(FileType::Q2K, "blk.5.ffn_down.weight", &m, &CTX), GgmlType::Q3_K);
        assert_eq!(t(FileType::Q2K, "blk.5.attn_output.weight", &m, &CTX), GgmlType::Q3_K);
        assert_eq!(t(FileType::Q2K, "blk.5.attn_q.weight", &m, &CTX), GgmlType::Q2_K);
        // Q3_K_M: attn_v Q5_K in the first two layers; ffn_down Q5_K in the first 1/16.
        assert_eq!(t(FileType::Q3KM, "blk.1.attn_v.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::Q3KM, "blk.2.attn_v.weight", &m, &CTX), GgmlType::Q4_K);
        assert_eq!(t(FileType::Q3KM, "blk.1.ffn_down.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::Q3KM, "blk.2.ffn_down.weight", &m, &CTX), GgmlType::Q4_K);
        assert_eq!(t(FileType::Q3KM, "blk.9.attn_output.weight", &m, &CTX), GgmlType::Q4_K);
        assert_eq!(t(FileType::Q3KM, "blk.9.ffn_up.weight", &m, &CTX), GgmlType::Q3_K);
        // Q4_K_S: attn_v Q5_K in the first four layers, ffn_down in the first eighth.
        assert_eq!(t(FileType::Q4KS, "blk.3.attn_v.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::Q4KS, "blk.4.attn_v.weight", &m, &CTX), GgmlType::Q4_K);
        assert_eq!(t(FileType::Q4KS, "blk.3.ffn_down.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::Q4KS, "blk.4.ffn_down.weight", &m, &CTX), GgmlType::Q4_K);
        // Q5_K_M: Q6_K where use_more_bits; Q5_K_S plain Q5_K.
        assert_eq!(t(FileType::Q5KM, "blk.0.attn_v.weight", &m, &CTX), GgmlType::Q6_K);
        assert_eq!(t(FileType::Q5KM, "blk.5.ffn_down.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::Q5KS, "blk.0.attn_v.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::Q6K, "blk.0.attn_v.weight", &m, &CTX), GgmlType::Q6_K);
        assert_eq!(t(FileType::Q6K, "output.weight", &m, &CTX), GgmlType::Q6_K);
        // IQ4_NL / IQ4_XS: attn_v Q5_K with GQA >= 4, ffn_down Q5_K in the first eighth.
        assert_eq!(t(FileType::IQ4NL, "blk.9.attn_v.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::IQ4NL, "blk.9.attn_v.weight", &m, &gqa1), GgmlType::IQ4_NL);
        assert_eq!(t(FileType::IQ4XS, "blk.0.ffn_down.weight", &m, &CTX), GgmlType::Q5_K);
        assert_eq!(t(FileType::IQ4XS, "blk.9.ffn_down.weight", &m, &CTX), GgmlType::IQ4_XS);
        assert_eq!(t(FileType::IQ4XS, "blk.9.ffn_up.weight", &[640, 1024], &CTX), GgmlType::IQ4_NL);
        assert_eq!(t(FileType::IQ4XS, "output.weight", &m, &CTX), GgmlType::Q6_K);
        // Plain block-32 types; BF16.
        assert_eq!(t(FileType::Q5_1, "blk.0.attn_v.weight", &m, &CTX), GgmlType::Q5_1);
        assert_eq!(t(FileType::Q4_1, "output.weight", &[640, 1024], &CTX), GgmlType::Q8_0);
        assert_eq!(t(FileType::BF16, "blk.0.attn_v.weight", &m, &CTX), GgmlType::BF16);
        assert_eq!(t(FileType::BF16, "blk.0.attn_norm.weight", &[4096], &CTX), GgmlType::F32);
        for ft in ALL_FILE_TYPES {
            assert_eq!(FileType::from_id(ft.id()), Some(ft));
        }
    }
}
