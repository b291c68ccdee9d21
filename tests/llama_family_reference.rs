//! The Llama family (Llama, Mistral with its sliding window, Qwen2) and Gemma 3 against Hugging
//! Face transformers, on random-weight tiny models.
//!
//! Each fixture `tests/fixtures/llama_family/<preset>.json` (made by
//! `tests/scripts/make_llama_reference.py`) holds transformers' float32 logits at every position
//! of a few token sequences, for the model `engine synth` writes for that preset (f32, a fixed
//! seed). The test regenerates the model with `engine::synth` in a temporary directory, checks
//! that it is byte for byte the file the reference saw (SHA-256), runs it with an f32 KV cache,
//! and requires
//! - every logit within `LOGIT_TOL` of the reference's, and
//! - the same argmax at every position (the fixtures' smallest top-2 margin is far above
//!   `LOGIT_TOL`, so a tie cannot excuse a difference).
//!
//! Each sequence is evaluated twice: in one batch, and in chunks of `CHUNK` tokens, so that the
//! sliding-window layers also run from a cache that already dropped positions.
//! The longer sequence (40 tokens) is five times the tiny presets' window (8).

use std::path::Path;

use engine::gguf::GgufFile;
use engine::model::kv_cache::KvType;
use engine::model::{Logits, Model, Session, SessionParams};
use engine::quant_mix::FileType;
use engine::synth::{self, SynthParams};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Largest |ours - reference| over all logits (f32 weights and KV cache: the same math up to
/// summation order; the fixtures round to 1e-6).
const LOGIT_TOL: f32 = 1e-4;
/// Tokens per call in the chunked pass.
const CHUNK: usize = 5;
const REGENERATE: &str = "/tmp/hfvenv/bin/python tests/scripts/make_llama_reference.py";

struct Fixture {
    preset: String,
    arch: String,
    seed: u64,
    file_sha256: String,
    tensor_data_sha256: String,
    n_vocab: usize,
    sequences: Vec<(Vec<u32>, Vec<f32>)>,
}

fn fixture(preset: &str) -> Fixture {
    let path = format!("{}/fixtures/llama_family/{preset}.json", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
    let s = &doc["synth"];
    assert_eq!(s["type"], "f32", "{path}: the reference is for f32 files");
    let sequences = doc["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| {
            let ids = q["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
            let logits = q["logits"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32))
                .collect();
            (ids, logits)
        })
        .collect();
    Fixture {
        preset: s["preset"].as_str().unwrap().to_string(),
        arch: s["arch"].as_str().unwrap().to_string(),
        seed: s["seed"].as_u64().unwrap(),
        file_sha256: doc["file_sha256"].as_str().unwrap().to_string(),
        tensor_data_sha256: doc["tensor_data_sha256"].as_str().unwrap().to_string(),
        n_vocab: doc["n_vocab"].as_u64().unwrap() as usize,
        sequences,
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Regenerates the fixture's model at `path` and checks it is the file the reference saw.
fn regenerate(fx: &Fixture, path: &Path) {
    let preset = synth::resolve(&fx.arch, &fx.preset).unwrap();
    synth::synthesize(&SynthParams { preset, ftype: FileType::F32, seed: fx.seed, fast: false }, path, None).unwrap();
    let file_hash = hex(&Sha256::digest(std::fs::read(path).unwrap()));
    let file = GgufFile::open(path).unwrap();
    let mut h = Sha256::new();
    for t in file.tensors() {
        h.update(file.tensor_data(t));
    }
    let data_hash = hex(&h.finalize());
    assert!(
        data_hash == fx.tensor_data_sha256,
        "{}: engine synth now writes different tensor data (SHA-256 {data_hash}, the fixture's reference was computed for \
         {}); synth changed, so regenerate the fixtures: {REGENERATE}",
        fx.preset,
        fx.tensor_data_sha256
    );
    assert!(
        file_hash == fx.file_sha256,
        "{}: engine synth now writes different metadata (file SHA-256 {file_hash}, fixture {}); the tensor data is \
         unchanged, but the hyperparameters may not be: regenerate the fixtures: {REGENERATE}",
        fx.preset,
        fx.file_sha256
    );
}

fn argmax(row: &[f32]) -> usize {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
}

/// Compares logits rows; returns the largest difference.
fn compare(preset: &str, what: &str, ours: &[f32], reference: &[f32], n_vocab: usize) -> f32 {
    assert_eq!(ours.len(), reference.len(), "{preset} {what}: logit count");
    let mut worst = 0f32;
    for (pos, (a, b)) in ours.chunks_exact(n_vocab).zip(reference.chunks_exact(n_vocab)).enumerate() {
        let (i, d) = a.iter().zip(b).map(|(x, y)| (x - y).abs()).enumerate().fold((0, 0f32), |m, (i, d)| if d > m.1 { (i, d) } else { m });
        assert!(d <= LOGIT_TOL, "{preset} {what} position {pos}: token {i} ours {} reference {} (|diff| {d} > {LOGIT_TOL})", a[i], b[i]);
        assert_eq!(argmax(a), argmax(b), "{preset} {what} position {pos}: argmax differs");
        worst = worst.max(d);
    }
    worst
}

fn check(preset: &str) {
    let fx = fixture(preset);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{preset}.gguf"));
    regenerate(&fx, &path);
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    assert_eq!(model.cfg.n_vocab, fx.n_vocab);
    let n_vocab = fx.n_vocab;
    let mut worst = 0f32;
    for (ids, reference) in &fx.sequences {
        let params = SessionParams { n_ctx: 64, n_batch: 64, kv_type: KvType::F32, layer_kinds: None };
        let mut s = Session::new(&model, &params).unwrap();
        let ours = s.eval(ids, Logits::All).unwrap();
        worst = worst.max(compare(preset, &format!("{} tokens, one batch", ids.len()), &ours, reference, n_vocab));

        let mut s = Session::new(&model, &SessionParams { n_batch: CHUNK, ..params }).unwrap();
        let mut ours = Vec::new();
        for chunk in ids.chunks(CHUNK) {
            ours.extend(s.eval(chunk, Logits::All).unwrap());
        }
        worst = worst.max(compare(preset, &format!("{} tokens, chunks of {CHUNK}", ids.len()), &ours, reference, n_vocab));
    }
    eprintln!("{preset}: largest logit difference from transformers {worst:.2e} (tolerance {LOGIT_TOL:.0e})");
}

#[test]
fn llama_tiny_matches_transformers() {
    check("llama-tiny");
}

#[test]
fn mistral_tiny_with_sliding_window_matches_transformers() {
    check("mistral-tiny");
}

#[test]
fn qwen2_tiny_matches_transformers() {
    check("qwen2-tiny");
}

#[test]
fn gemma3_tiny_matches_transformers() {
    check("gemma3-tiny");
}
