//! `engine convert` and `engine quantize`.
//!
//! Convert:
//! - one tiny random-weight Hugging Face checkpoint per architecture (`tests/fixtures/hf_tiny/`,
//!   made by `tests/scripts/make_tiny_hf_checkpoints.py` with transformers), converted to F32:
//!   our logits at every position of a fixed prompt equal transformers' within
//!   `LOGIT_TOL` (absolute, plus `LOGIT_RTOL` of the logit's size), the argmax is the same
//!   wherever transformers' top-2 margin exceeds the tolerance, and our tokenizer (built from
//!   the written metadata) gives the ids transformers' tokenizer gives for a few strings
//!   (SentencePiece's, for the SentencePiece vocabularies);
//! - the Gemma 3 270M round trip: the default model dequantized to a safetensors checkpoint
//!   (Hugging Face names and layout, a `config.json` like Google's, `tokenizer.model` and
//!   `tokenizer_config.json` written from the GGUF vocabulary), converted back to F32: same
//!   tokenizer arrays as the original, and the same 16 greedy tokens;
//! - clear errors (missing config.json, unsupported architecture, missing, extra and misshapen
//!   tensors, an unreadable dtype, a non-finite weight) and no output file left on error.
//!
//! Quantize (the default model, requantized with `--allow-requantize`): Q8_0, Q4_0 and Q4_K_M
//! files keep every metadata key (a `lighttransfer.*` set included), set `general.file_type`,
//! and run; Q4_K_M reproduces the original's llama.cpp type mix exactly (so every tensor is
//! copied); without `--allow-requantize` it is refused; OUT == IN is refused; an error midway
//! leaves no file.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use engine::convert::{self, ConvertParams};
use engine::gguf::{GgufFile, GgufWriter, MetaArray, MetaValue, TensorData};
use engine::model::kv_cache::KvType;
use engine::model::{Logits, Model, Session, SessionParams};
use engine::quant_mix::FileType;
use engine::quantize::{self, QuantizeError, QuantizeParams};
use engine::tokenizer::{TokenizeOptions, Tokenizer};
use engine_tests::bin::engine_bin;
use ggml_kernels::GgmlType;
use serde_json::{json, Value};

/// Largest allowed |ours - transformers| of a logit, plus `LOGIT_RTOL * |logit|`. Both sides
/// compute in f32 from the same weights; the difference is summation order.
const LOGIT_TOL: f32 = 2e-4;
const LOGIT_RTOL: f32 = 2e-5;

fn fixture(arch: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/hf_tiny").join(arch)
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

fn convert_f32(dir: &Path, out: &Path) -> convert::ConvertReport {
    let p = ConvertParams { dir: dir.to_path_buf(), outtype: FileType::F32, vocab_from: None };
    convert::convert(&p, out, None).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// Converts the tiny checkpoint of `arch` and compares with transformers.
fn tiny_matches_transformers(arch: &str, gguf_arch: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(format!("{arch}.gguf"));
    let report = convert_f32(&fixture(arch), &out);
    assert_eq!(report.arch, gguf_arch);
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(fixture(arch).join("reference.json")).unwrap()).unwrap();
    let ids: Vec<u32> = reference["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
    let rows: Vec<Vec<f32>> = reference["logits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect())
        .collect();

    let file = GgufFile::open(&out).unwrap();
    assert_eq!(file.get_str("general.architecture").unwrap(), Some(gguf_arch));
    assert_eq!(file.get_as::<u32>("general.file_type").unwrap(), Some(0));
    let model = Model::load(&file).unwrap();
    let n_vocab = model.cfg.n_vocab;
    let mut s = Session::new(&model, &SessionParams { n_ctx: 256, kv_type: KvType::F32, ..SessionParams::default() }).unwrap();
    let logits = s.eval(&ids, Logits::All).unwrap();
    let mut worst = 0f32;
    for (pos, (ours, theirs)) in logits.chunks_exact(n_vocab).zip(&rows).enumerate() {
        let n = theirs.len().min(n_vocab);
        for (i, (&a, &b)) in ours[..n].iter().zip(&theirs[..n]).enumerate() {
            let d = (a - b).abs();
            worst = worst.max(d);
            assert!(d <= LOGIT_TOL + LOGIT_RTOL * b.abs(), "{arch} position {pos} token {i}: ours {a}, transformers {b}");
        }
        let mut sorted: Vec<f32> = theirs[..n].to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        if sorted[0] - sorted[1] > 2.0 * (LOGIT_TOL + LOGIT_RTOL * sorted[0].abs()) {
            assert_eq!(argmax(&ours[..n]), argmax(&theirs[..n]), "{arch} position {pos}: argmax differs");
        }
    }
    eprintln!("{arch}: {} positions, largest logit difference {worst:e}", rows.len());

    // The tokenizer metadata: our tokenizer gives transformers' ids.
    let tok = Tokenizer::from_gguf(&file).unwrap();
    for case in reference["tokenize"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        // SentencePiece's own ids where the fixture has them (transformers' fast tokenizer adds
        // no second "▁" before text that starts with a space; SentencePiece and llama.cpp do).
        let ids = if case.get("spm_ids").is_some() { &case["spm_ids"] } else { &case["ids"] };
        let want: Vec<u32> = ids.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(tok.tokenize(text, TokenizeOptions::default()), want, "{arch}: tokens of {text:?}");
    }
}

#[test]
fn tiny_llama_matches_transformers() {
    tiny_matches_transformers("llama", "llama");
}

#[test]
fn tiny_mistral_matches_transformers() {
    tiny_matches_transformers("mistral", "llama");
}

#[test]
fn tiny_qwen2_matches_transformers() {
    tiny_matches_transformers("qwen2", "qwen2");
}

#[test]
fn tiny_gemma3_matches_transformers() {
    tiny_matches_transformers("gemma3", "gemma3");
}

#[test]
fn converted_metadata_follows_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let get = |arch: &str| {
        let out = dir.path().join(format!("{arch}.gguf"));
        convert_f32(&fixture(arch), &out);
        GgufFile::open(&out).unwrap()
    };
    let llama = get("llama");
    assert_eq!(llama.get_str("tokenizer.ggml.model").unwrap(), Some("gpt2"));
    assert_eq!(llama.get_str("tokenizer.ggml.pre").unwrap(), Some("llama-bpe"));
    assert_eq!(llama.get_str("llama.rope.scaling.type").unwrap(), Some("linear"));
    assert_eq!(llama.get_as::<f32>("llama.rope.scaling.factor").unwrap(), Some(2.0));
    assert_eq!(llama.get_as::<u32>("llama.rope.dimension_count").unwrap(), Some(16));
    assert!(llama.tensor("output.weight").is_some());
    assert!(llama.get("tokenizer.ggml.merges").is_some());
    let mistral = get("mistral");
    assert_eq!(mistral.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    assert_eq!(mistral.get_as::<u32>("llama.attention.sliding_window").unwrap(), Some(8));
    assert_eq!(mistral.get_as::<bool>("tokenizer.ggml.add_space_prefix").unwrap(), Some(true));
    let qwen = get("qwen2");
    assert_eq!(qwen.get_str("tokenizer.ggml.pre").unwrap(), Some("qwen2"));
    assert!(qwen.tensor("output.weight").is_none(), "tied embeddings: no output.weight");
    assert!(qwen.tensor("blk.0.attn_q.bias").is_some());
    // config vocab_size is 5 more than the tokenizer: padded with [PADn] tokens.
    let tokens = qwen.get_array("tokenizer.ggml.tokens", engine::gguf::ValueType::String).unwrap().unwrap();
    let last: Vec<&str> = tokens.strings().unwrap().skip(tokens.len() - 1).collect();
    assert_eq!(last, [format!("[PAD{}]", tokens.len() - 1)]);
    let gemma = get("gemma3");
    assert_eq!(gemma.get_as::<u32>("gemma3.attention.sliding_window").unwrap(), Some(4));
    assert_eq!(gemma.get_as::<u32>("gemma3.attention.key_length").unwrap(), Some(32));
    assert_eq!(gemma.get_as::<bool>("tokenizer.ggml.add_space_prefix").unwrap(), Some(false));
    assert_eq!(gemma.get_str("tokenizer.ggml.model").unwrap(), Some("llama"));
    // Norms carry Gemma's +1: the checkpoint stores offsets near 0, the GGUF values near 1.
    let norm = gemma.tensor("blk.0.attn_norm.weight").unwrap();
    let v: Vec<f32> = gemma.tensor_data(norm).chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    let mean = v.iter().sum::<f32>() / v.len() as f32;
    assert!((mean - 1.0).abs() < 0.1, "mean of attn_norm {mean}");
}

#[test]
fn convert_to_quantized_types() {
    let dir = tempfile::tempdir().unwrap();
    for (ft, want_matrix) in [(FileType::F16, GgmlType::F16), (FileType::BF16, GgmlType::BF16), (FileType::Q8_0, GgmlType::Q8_0), (FileType::Q4_0, GgmlType::Q4_0)] {
        let out = dir.path().join(format!("llama-{ft}.gguf"));
        let p = ConvertParams { dir: fixture("llama"), outtype: ft, vocab_from: None };
        convert::convert(&p, &out, None).unwrap();
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(f.get_as::<u32>("general.file_type").unwrap(), Some(ft.id()));
        assert_eq!(f.tensor("blk.0.attn_q.weight").unwrap().ty, want_matrix, "{ft}");
        assert_eq!(f.tensor("blk.0.attn_norm.weight").unwrap().ty, GgmlType::F32, "{ft}");
        let model = Model::load(&f).unwrap();
        let mut s = Session::new(&model, &SessionParams { n_ctx: 64, ..SessionParams::default() }).unwrap();
        assert!(s.eval(&[1, 2, 3], Logits::Last).unwrap().iter().all(|v| v.is_finite()));
    }
}

// ---- error cases ----

/// A writable copy of a fixture directory.
fn copy_fixture(arch: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(fixture(arch)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let p = dir.join("config.json");
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(&p, serde_json::to_string_pretty(&v).unwrap()).unwrap();
}

/// The header of a single-file safetensors checkpoint: (header length, header JSON).
fn st_header(path: &Path) -> (usize, serde_json::Map<String, Value>) {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let v: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    (n, v.as_object().unwrap().clone())
}

/// Runs `engine convert` on `dir` and expects one error line holding `expect` and no output.
fn convert_refused(dir: &Path, expect: &str) {
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("out.gguf");
    let o = Command::new(engine_bin()).arg("convert").arg(dir).arg("-o").arg(&out).args(["--outtype", "f32", "-q"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{}: succeeded", dir.display());
    let last = stderr.lines().last().unwrap_or("");
    assert!(last.starts_with("error: ") && last.contains(expect), "{stderr:?} lacks {expect:?}");
    let left: Vec<_> = std::fs::read_dir(out_dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "left {left:?}");
}

#[test]
fn convert_errors_are_clear() {
    let tmp = tempfile::tempdir().unwrap();
    let case = |name: &str| {
        let d = tmp.path().join(name);
        copy_fixture("qwen2", &d);
        d
    };
    // No config.json.
    let d = case("no-config");
    std::fs::remove_file(d.join("config.json")).unwrap();
    convert_refused(&d, "no config.json");
    // Not a directory.
    convert_refused(&fixture("qwen2").join("config.json"), "not a directory");
    // Unsupported architecture.
    let d = case("arch");
    edit_config(&d, |c| {
        c.insert("architectures".into(), json!(["GPT2LMHeadModel"]));
    });
    convert_refused(&d, "unsupported architecture GPT2LMHeadModel");
    // A layer the checkpoint does not have: missing tensors.
    let d = case("missing");
    edit_config(&d, |c| {
        c.insert("num_hidden_layers".into(), json!(3));
        c.remove("layer_types");
    });
    convert_refused(&d, "\"model.layers.2.input_layernorm.weight\" is missing");
    // Fewer layers than the checkpoint: extra tensors.
    let d = case("extra");
    edit_config(&d, |c| {
        c.insert("num_hidden_layers".into(), json!(1));
        c.remove("layer_types");
    });
    convert_refused(&d, "not part of a Qwen2ForCausalLM model");
    // A shape that disagrees with config.json.
    let d = case("shape");
    edit_config(&d, |c| {
        c.insert("intermediate_size".into(), json!(128));
    });
    convert_refused(&d, "config.json implies");
    // A dtype we cannot read: rewrite one tensor's dtype in the header (F32 -> I32, same size).
    let d = case("dtype");
    let st = d.join("model.safetensors");
    let (n, mut header) = st_header(&st);
    header["model.norm.weight"]["dtype"] = json!("I32");
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap();
    assert!(text.len() <= n);
    text.push_str(&" ".repeat(n - text.len()));
    let mut bytes = std::fs::read(&st).unwrap();
    bytes[8..8 + n].copy_from_slice(text.as_bytes());
    std::fs::write(&st, bytes).unwrap();
    convert_refused(&d, "dtype I32");
    // A non-finite weight: reported with the tensor's name; no file left.
    let d = case("nan");
    let st = d.join("model.safetensors");
    let (n, header) = st_header(&st);
    let start = header["model.layers.1.mlp.down_proj.weight"]["data_offsets"][0].as_u64().unwrap() as usize;
    let mut bytes = std::fs::read(&st).unwrap();
    let at = 8 + n + start + 4 * 7;
    bytes[at..at + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(&st, bytes).unwrap();
    convert_refused(&d, "\"blk.1.ffn_down.weight\" (model.layers.1.mlp.down_proj.weight): element 7 is NaN");
    // No tokenizer files.
    let d = case("no-tokenizer");
    std::fs::remove_file(d.join("tokenizer.json")).unwrap();
    convert_refused(&d, "no tokenizer.model or tokenizer.json");
}

// ---- Gemma 3 270M round trip ----

/// Hugging Face name of a Gemma 3 GGUF tensor.
fn gemma_hf_name(gguf: &str) -> String {
    match gguf {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.").unwrap();
    let (il, tail) = rest.split_once('.').unwrap();
    let hf = match tail {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "attn_q_norm.weight" => "self_attn.q_norm.weight",
        "attn_k_norm.weight" => "self_attn.k_norm.weight",
        "post_attention_norm.weight" => "post_attention_layernorm.weight",
        "ffn_norm.weight" => "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        other => panic!("unexpected tensor {other}"),
    };
    format!("model.layers.{il}.{hf}")
}

/// Writes the GGUF's weights as one F32 safetensors file with Hugging Face names and layout
/// (norms stored as Gemma's offsets from 1).
fn write_safetensors(f: &GgufFile, path: &Path) {
    let mut entries = Vec::new();
    let mut offset = 0u64;
    for t in f.tensors() {
        let n = t.n_elements();
        let shape: Vec<u64> = t.dims().iter().rev().copied().collect();
        entries.push((gemma_hf_name(&t.name), shape, offset, t));
        offset += n * 4;
    }
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), json!({"format": "pt"}));
    for (name, shape, off, t) in &entries {
        header.insert(name.clone(), json!({"dtype": "F32", "shape": shape, "data_offsets": [off, off + t.n_elements() * 4]}));
    }
    let mut text = serde_json::to_string(&Value::Object(header)).unwrap();
    while text.len() % 8 != 0 {
        text.push(' ');
    }
    let mut out = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    out.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    out.write_all(text.as_bytes()).unwrap();
    for (_, _, _, t) in &entries {
        let mut x = vec![0f32; t.n_elements() as usize];
        ggml_kernels::quants::dequantize(t.ty, f.tensor_data(t), &mut x).unwrap();
        if t.name.ends_with("norm.weight") {
            x.iter_mut().for_each(|v| *v -= 1.0);
        }
        for v in x {
            out.write_all(&v.to_le_bytes()).unwrap();
        }
    }
    out.flush().unwrap();
}

/// `tokenizer.model` and `tokenizer_config.json` from the GGUF vocabulary, as Gemma ships them:
/// user-defined pieces are also listed in `added_tokens_decoder`.
fn write_tokenizer(f: &GgufFile, dir: &Path) {
    use engine::convert::sentencepiece::{encode, Piece, PieceType, SpModel};
    use engine::gguf::ValueType;
    let tokens: Vec<String> =
        f.get_array("tokenizer.ggml.tokens", ValueType::String).unwrap().unwrap().strings().unwrap().map(str::to_string).collect();
    let scores: Vec<f32> = f.get_array("tokenizer.ggml.scores", ValueType::F32).unwrap().unwrap().to_vec().unwrap();
    let types: Vec<i32> = f.get_array("tokenizer.ggml.token_type", ValueType::I32).unwrap().unwrap().to_vec().unwrap();
    let mut decoder = serde_json::Map::new();
    let pieces = tokens
        .iter()
        .zip(&scores)
        .zip(&types)
        .enumerate()
        .map(|(id, ((t, &score), &ty))| {
            let kind = match ty {
                2 => PieceType::Unknown,
                3 => PieceType::Control,
                4 => {
                    decoder.insert(id.to_string(), json!({"content": t, "special": false}));
                    PieceType::UserDefined
                }
                5 => PieceType::Unused,
                6 => PieceType::Byte,
                _ => PieceType::Normal,
            };
            Piece { piece: t.clone(), score, kind }
        })
        .collect();
    std::fs::write(dir.join("tokenizer.model"), encode(&SpModel { pieces, add_dummy_prefix: false })).unwrap();
    let tc = json!({"add_bos_token": true, "add_eos_token": false, "added_tokens_decoder": decoder});
    std::fs::write(dir.join("tokenizer_config.json"), serde_json::to_string(&tc).unwrap()).unwrap();
}

fn greedy(model: &Model<'_>, prompt: &[u32], n: usize) -> Vec<u32> {
    greedy_with_margins(model, prompt, n).0
}

/// Greedy tokens and, for each, the top-1 minus top-2 logit.
fn greedy_with_margins(model: &Model<'_>, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<f32>) {
    let mut s = Session::new(model, &SessionParams { n_ctx: 256, kv_type: KvType::F32, ..SessionParams::default() }).unwrap();
    let mut logits = s.eval(prompt, Logits::Last).unwrap();
    let (mut out, mut margins) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let next = argmax(&logits);
        let second = logits.iter().enumerate().filter(|&(i, _)| i != next).map(|(_, &v)| v).fold(f32::NEG_INFINITY, f32::max);
        margins.push(logits[next] - second);
        out.push(next as u32);
        logits = s.eval(&[next as u32], Logits::Last).unwrap();
    }
    (out, margins)
}

#[test]
fn gemma3_270m_round_trip_through_safetensors() {
    let Some(path) = engine_tests::default_model() else { return };
    let orig = GgufFile::open(&path).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ck = tmp.path().join("gemma-3-270m");
    std::fs::create_dir(&ck).unwrap();
    // Google's config.json for Gemma 3 270M (transformers 4 spelling).
    let config = json!({
        "architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text",
        "hidden_size": 640, "intermediate_size": 2048, "num_hidden_layers": 18,
        "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 256, "vocab_size": 262144,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "rope_local_base_freq": 10000.0, "rope_scaling": null, "sliding_window": 512,
        "sliding_window_pattern": 6, "query_pre_attn_scalar": 256, "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": null, "attn_logit_softcapping": null,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0, "tie_word_embeddings": true,
        "torch_dtype": "float32"
    });
    std::fs::write(ck.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    write_safetensors(&orig, &ck.join("model.safetensors"));
    write_tokenizer(&orig, &ck);

    let out = tmp.path().join("roundtrip-f32.gguf");
    let o = Command::new(engine_bin()).arg("convert").arg(&ck).arg("-o").arg(&out).args(["--outtype", "f32", "-q"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let conv = GgufFile::open(&out).unwrap();

    // The tokenizer arrays and special ids come back as they were.
    for key in ["tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"] {
        assert_eq!(conv.get(key).unwrap().to_owned_value(), orig.get(key).unwrap().to_owned_value(), "{key}");
    }
    for key in ["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_space_prefix"] {
        assert_eq!(conv.get(key).map(|v| v.to_owned_value()), orig.get(key).map(|v| v.to_owned_value()), "{key}");
    }
    // Hyperparameters too.
    for (key, _) in orig.metadata().filter(|(k, _)| k.starts_with("gemma3.")) {
        assert_eq!(conv.get(key).map(|v| v.to_owned_value()), orig.get(key).map(|v| v.to_owned_value()), "{key}");
    }
    // Every weight equals the original's dequantized values (norms to within the f32 rounding
    // of subtracting and adding 1).
    for t in orig.tensors() {
        let c = conv.tensor(&t.name).unwrap_or_else(|| panic!("{} missing", t.name));
        assert_eq!((c.ty, c.dims()), (GgmlType::F32, t.dims()), "{}", t.name);
        let mut a = vec![0f32; t.n_elements() as usize];
        ggml_kernels::quants::dequantize(t.ty, orig.tensor_data(t), &mut a).unwrap();
        let b: Vec<f32> = conv.tensor_data(c).chunks_exact(4).map(|x| f32::from_le_bytes(x.try_into().unwrap())).collect();
        let tol = if t.name.ends_with("norm.weight") { 1e-6 } else { 0.0 };
        let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
        assert!(worst <= tol, "{}: largest difference {worst}", t.name);
    }

    // Same greedy continuations. Both models run the exact path (`Model::exact_matmul`: f32
    // products of dequantized weights), so the original's Q4_K/Q5_0/... weights, dequantized,
    // and the round trip's F32 weights (identical values, checked above) give the same
    // arithmetic. (On the fast path the original would multiply by 8-bit activations and the F32
    // model would not, and near-ties could flip.)
    let tok = Tokenizer::from_gguf(&orig).unwrap();
    let tok_conv = Tokenizer::from_gguf(&conv).unwrap();
    let mut m_orig = Model::load(&orig).unwrap();
    let mut m_conv = Model::load(&conv).unwrap();
    m_orig.exact_matmul = true;
    m_conv.exact_matmul = true;
    for text in ["The capital of France is", "def fibonacci(n):", "Water boils at"] {
        let prompt = tok.tokenize(text, TokenizeOptions::default());
        assert_eq!(tok_conv.tokenize(text, TokenizeOptions::default()), prompt);
        let (a, ma) = greedy_with_margins(&m_orig, &prompt, 16);
        let (b, _) = greedy_with_margins(&m_conv, &prompt, 16);
        eprintln!("{text:?}: greedy {a:?}\n  margins {ma:?}");
        assert_eq!(a, b, "{text:?}: greedy continuation of the round-tripped model differs");
    }
}

// ---- quantize ----

/// The default model with a set of lighttransfer.* keys added (written once per test process).
fn model_with_lighttransfer_keys(dir: &Path) -> Option<PathBuf> {
    let path = engine_tests::default_model()?;
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::from_file(&f).unwrap();
    w.set("lighttransfer.version", MetaValue::U32(1)).unwrap();
    let mut lazy = vec![false; 18];
    lazy[3] = true;
    w.set("lighttransfer.lazy_layers", MetaValue::Array(MetaArray::Bool(lazy))).unwrap();
    w.set("lighttransfer.sink_tokens", MetaValue::U32(4)).unwrap();
    w.set("lighttransfer.window", MetaValue::U32(1020)).unwrap();
    let out = dir.join("input.gguf");
    w.write_atomic(&out, None).unwrap();
    Some(out)
}

fn engine(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(engine_bin()).args(args).output().unwrap()
}

#[test]
fn quantize_default_model_keeps_metadata_and_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(input) = model_with_lighttransfer_keys(tmp.path()) else { return };
    let src = GgufFile::open(&input).unwrap();
    let tok = Tokenizer::from_gguf(&src).unwrap();
    let prompt = tok.tokenize("The capital of France is", TokenizeOptions::default());
    let base = greedy(&Model::load(&src).unwrap(), &prompt, 8);
    for (ty, ft) in [("q8_0", FileType::Q8_0), ("q4_0", FileType::Q4_0), ("q4_k_m", FileType::Q4KM)] {
        let out = tmp.path().join(format!("{ty}.gguf"));
        let o = engine(&["quantize".as_ref(), input.as_os_str(), out.as_os_str(), ty.as_ref(), "--allow-requantize".as_ref(), "-q".as_ref()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{ty}: {stderr}");
        assert!(stderr.contains("before") && stderr.contains("after"), "{stderr}");
        let q = GgufFile::open(&out).unwrap();
        // Every key, in order, with its value; general.file_type changed.
        let keys_in: Vec<&str> = src.keys().collect();
        let keys_out: Vec<&str> = q.keys().collect();
        assert_eq!(keys_in, keys_out, "{ty}");
        for (k, v) in src.metadata() {
            if k == "general.file_type" {
                assert_eq!(q.get_as::<u32>(k).unwrap(), Some(ft.id()));
            } else {
                assert!(q.get(k).unwrap().to_owned_value().same_bits(&v.to_owned_value()), "{ty}: {k}");
            }
        }
        assert_eq!(q.tensors().len(), src.tensors().len());
        for t in q.tensors() {
            if t.dims().len() == 1 {
                assert_eq!(t.ty, GgmlType::F32, "{ty}: {}", t.name);
            }
        }
        let model = Model::load(&q).unwrap();
        let g = greedy(&model, &prompt, 8);
        eprintln!("{ty}: {} bytes, greedy {g:?} (input {base:?})", std::fs::metadata(&out).unwrap().len());
        assert_eq!(g.len(), 8);
        if ft == FileType::Q4KM {
            // llama.cpp's own Q4_K_M mix: every tensor keeps its type and bytes.
            for (a, b) in src.tensors().iter().zip(q.tensors()) {
                assert_eq!((a.name.as_str(), a.ty), (b.name.as_str(), b.ty));
                assert!(src.tensor_data(a) == q.tensor_data(b), "{}", a.name);
            }
            assert_eq!(g, base);
        }
        if ft == FileType::Q8_0 {
            assert_eq!(q.tensor("blk.0.attn_q.weight").unwrap().ty, GgmlType::Q8_0);
        }
    }
}

#[test]
fn quantize_refuses_requantizing_without_the_flag_and_out_equal_in() {
    let Some(path) = engine_tests::default_model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("q8.gguf");
    let o = engine(&["quantize".as_ref(), path.as_os_str(), out.as_os_str(), "q8_0".as_ref()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("--allow-requantize") && stderr.contains("already quantized"), "{stderr}");
    assert!(!out.exists());
    // The library says the same before writing anything.
    let f = GgufFile::open(&path).unwrap();
    let p = QuantizeParams { ftype: FileType::Q8_0, allow_requantize: false };
    assert!(matches!(quantize::quantize(&f, &out, &p, None), Err(QuantizeError::Requantize { .. })));
    assert!(std::fs::read_dir(tmp.path()).unwrap().next().is_none());

    // OUT == IN, directly and through a hard link: refused, input untouched.
    let copy = tmp.path().join("model.gguf");
    std::fs::copy(&path, &copy).unwrap();
    let link = tmp.path().join("link.gguf");
    std::fs::hard_link(&copy, &link).unwrap();
    let before = std::fs::metadata(&copy).unwrap();
    for target in [&copy, &link] {
        let o = engine(&["quantize".as_ref(), copy.as_os_str(), target.as_os_str(), "q8_0".as_ref(), "--allow-requantize".as_ref()]);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(stderr.contains("is the input file"), "{stderr}");
    }
    let after = std::fs::metadata(&copy).unwrap();
    assert_eq!((before.len(), before.modified().unwrap()), (after.len(), after.modified().unwrap()));
    let names: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn quantize_error_midway_leaves_no_file() {
    // A small F32 model whose last matrix holds a NaN: the error comes while writing it.
    let tmp = tempfile::tempdir().unwrap();
    let input = tmp.path().join("nan.gguf");
    let mut w = GgufWriter::new();
    w.set("general.architecture", MetaValue::String("llama".into())).unwrap();
    w.set("llama.block_count", MetaValue::U32(1)).unwrap();
    let good: Vec<u8> = (0..64 * 64).flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes()).collect();
    let mut bad = good.clone();
    bad[400..404].copy_from_slice(&f32::NAN.to_le_bytes());
    w.add_tensor("blk.0.attn_q.weight", GgmlType::F32, &[64, 64], TensorData::Bytes(good.into())).unwrap();
    w.add_tensor("blk.0.attn_k.weight", GgmlType::F32, &[64, 64], TensorData::Bytes(bad.into())).unwrap();
    w.write_atomic(&input, None).unwrap();
    let out = tmp.path().join("out.gguf");
    let o = engine(&["quantize".as_ref(), input.as_os_str(), out.as_os_str(), "q8_0".as_ref()]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("blk.0.attn_k.weight") && stderr.contains("NaN"), "{stderr}");
    let names: Vec<String> = std::fs::read_dir(tmp.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["nan.gguf"], "{names:?}");
}
