//! Gemma 3 270M against Hugging Face transformers' own forward pass (float32, the GGUF
//! dequantized), from the fixture `tests/fixtures/gemma3/hf_reference.json` made by
//! `tests/scripts/make_gemma3_reference.py`.
//!
//! Tolerances, with an f32 KV cache (the math is then the same up to summation order):
//! - the top-1 token at every checked position equals the reference's, except where the
//!   reference's own top-2 margin is below `TIE_MARGIN`;
//! - each of the reference's top-K logits differs from ours by at most `LOGIT_TOL`;
//! - the row's log-sum-exp differs by at most `LOGIT_TOL`.
//! With the default f16 KV cache the same checks run with `LOGIT_TOL_F16`.
//! The greedy continuation (32 tokens) equals the reference's.

use engine::gguf::GgufFile;
use engine::model::kv_cache::KvType;
use engine::model::{Logits, Model, Session, SessionParams};
use serde_json::Value;

const LOGIT_TOL: f32 = 0.002;
const LOGIT_TOL_F16: f32 = 0.1;
const TIE_MARGIN: f32 = 0.05;
/// Positions checked at the end of the long prompt (all logits of 640 positions would cost a
/// 262,144-row projection each).
const LONG_TAIL: usize = 8;

struct Case {
    text: String,
    ids: Vec<u32>,
    top_ids: Vec<Vec<u32>>,
    top_logits: Vec<Vec<f32>>,
    lse: Vec<f32>,
    greedy: Vec<u32>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gemma3/hf_reference.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let u32s = |v: &Value| -> Vec<u32> { v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect() };
    let f32s = |v: &Value| -> Vec<f32> { v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect() };
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            ids: u32s(&c["ids"]),
            top_ids: c["top_ids"].as_array().unwrap().iter().map(u32s).collect(),
            top_logits: c["top_logits"].as_array().unwrap().iter().map(f32s).collect(),
            lse: f32s(&c["lse"]),
            greedy: u32s(&c["greedy"]),
        })
        .collect()
}

fn lse(row: &[f32]) -> f32 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    max + row.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln() as f32
}

fn argmax(row: &[f32]) -> u32 {
    (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap() as u32
}

/// Compares our logits rows for positions `first..` of `case` with the reference.
fn check_rows(case: &Case, first: usize, logits: &[f32], n_vocab: usize, tol: f32) -> f32 {
    let mut worst = 0f32;
    for (i, row) in logits.chunks_exact(n_vocab).enumerate() {
        let pos = first + i;
        let (ids, vals) = (&case.top_ids[pos], &case.top_logits[pos]);
        let margin = vals[0] - vals[1];
        if margin >= TIE_MARGIN {
            assert_eq!(argmax(row), ids[0], "{:?} position {pos}: top-1 differs (reference margin {margin})", case.text);
        }
        for (&id, &v) in ids.iter().zip(vals) {
            let d = (row[id as usize] - v).abs();
            worst = worst.max(d);
            assert!(d <= tol, "{:?} position {pos} token {id}: ours {} reference {v}", case.text, row[id as usize]);
        }
        let d = (lse(row) - case.lse[pos]).abs();
        worst = worst.max(d);
        assert!(d <= tol, "{:?} position {pos}: log-sum-exp ours {} reference {}", case.text, lse(row), case.lse[pos]);
    }
    worst
}

fn run(kv_type: KvType, tol: f32, greedy: bool) {
    let Some(path) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let n_vocab = model.cfg.n_vocab;
    let params = SessionParams { n_ctx: 1024, kv_type, ..SessionParams::default() };
    let mut worst = 0f32;
    for case in cases() {
        let mut s = Session::new(&model, &params).unwrap();
        let n = case.ids.len();
        let first = if n > 64 { n - LONG_TAIL } else { 0 };
        if first > 0 {
            s.eval(&case.ids[..first], Logits::Last).unwrap();
        }
        let logits = s.eval(&case.ids[first..], Logits::All).unwrap();
        worst = worst.max(check_rows(&case, first, &logits, n_vocab, tol));
        if greedy {
            let mut next = argmax(&logits[logits.len() - n_vocab..]);
            let mut out = vec![next];
            while out.len() < case.greedy.len() {
                next = argmax(&s.eval(&[next], Logits::Last).unwrap());
                out.push(next);
            }
            assert_eq!(out, case.greedy, "{:?}: greedy continuation differs", case.text);
        }
    }
    eprintln!("largest logit difference from the reference ({kv_type:?} KV): {worst}");
}

#[test]
fn logits_and_greedy_match_transformers_with_f32_kv() {
    run(KvType::F32, LOGIT_TOL, true);
}

#[test]
fn logits_match_transformers_with_f16_kv() {
    run(KvType::F16, LOGIT_TOL_F16, false);
}
