//! Gemma 3 270M against Hugging Face transformers' own forward pass (float32, the GGUF
//! dequantized), from the fixture `tests/fixtures/gemma3/hf_reference.json` made by
//! `tests/scripts/make_gemma3_reference.py`.
//!
//! The model definition, on the exact path (`Model::exact_matmul`: f32 products of dequantized
//! weights, so the math is the reference's up to summation order), with an f32 KV cache:
//! - the top-1 token at every checked position equals the reference's, except where the
//!   reference's own top-2 margin is below `TIE_MARGIN`;
//! - each of the reference's top-K logits, and the row's log-sum-exp, differ from ours by at
//!   most `LOGIT_TOL` (`LOGIT_TOL_F16` with an f16 KV cache);
//! - the greedy continuation (32 tokens) equals the reference's.
//!
//! The fast path (activations quantized to 8 bits for integer dot products, f16 KV cache: what
//! llama.cpp computes) is held to llama.cpp's own distance from the same reference, per prompt
//! (`tests/fixtures/gemma3/llamacpp.json`, from `tests/scripts/make_gemma3_llamacpp.py`): ours
//! must stay within `FAST_PATH_FACTOR` times llama.cpp's distance from the float32 model, per
//! prompt. Which prompt a rounding difference hits moves with every kernel change, so the bound
//! is per prompt and loose; across prompts the two are alike (ours 0.6-1.3, llama.cpp's
//! 0.59-1.25 on the short prompts; 0.7 against llama.cpp's 6.85 on the 627-token prompt).

use engine::gguf::GgufFile;
use engine::model::kv_cache::KvType;
use engine::model::{Logits, Model, Session, SessionParams};
use serde_json::Value;

const LOGIT_TOL: f32 = 0.002;
const LOGIT_TOL_F16: f32 = 0.1;
const TIE_MARGIN: f32 = 0.05;
/// The fast path's bound, as a multiple of llama.cpp's own largest difference per prompt.
const FAST_PATH_FACTOR: f32 = 2.0;
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
        if margin >= TIE_MARGIN.max(2.0 * tol) {
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

/// llama.cpp's largest logit distance from the reference, per prompt.
fn llama_cpp_distances() -> Vec<f32> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gemma3/llamacpp.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    doc["cases"].as_array().unwrap().iter().map(|c| c["max_diff_from_hf"].as_f64().unwrap() as f32).collect()
}

fn run(exact: bool, kv_type: KvType, tol: impl Fn(usize) -> f32, greedy: bool) {
    let Some(path) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    model.exact_matmul = exact;
    let n_vocab = model.cfg.n_vocab;
    let params = SessionParams { n_ctx: 1024, kv_type, ..SessionParams::default() };
    let mut worst = 0f32;
    for (ci, case) in cases().into_iter().enumerate() {
        let tol = tol(ci);
        let mut s = Session::new(&model, &params).unwrap();
        let n = case.ids.len();
        let first = if n > 64 { n - LONG_TAIL } else { 0 };
        if first > 0 {
            s.eval(&case.ids[..first], Logits::Last).unwrap();
        }
        let logits = s.eval(&case.ids[first..], Logits::All).unwrap();
        let case_worst = check_rows(&case, first, &logits, n_vocab, tol);
        eprintln!("{:?}: largest difference {case_worst} (bound {tol})", &case.text[..case.text.len().min(30)]);
        worst = worst.max(case_worst);
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
    eprintln!("largest logit difference from the reference (exact {exact}, {kv_type:?} KV): {worst}");
}

#[test]
fn exact_path_logits_and_greedy_match_transformers_with_f32_kv() {
    run(true, KvType::F32, |_| LOGIT_TOL, true);
}

#[test]
fn exact_path_logits_match_transformers_with_f16_kv() {
    run(true, KvType::F16, |_| LOGIT_TOL_F16, false);
}

#[test]
fn fast_path_stays_near_llama_cpps_distance_from_transformers() {
    let llama = llama_cpp_distances();
    run(false, KvType::F16, |i| FAST_PATH_FACTOR * llama[i], false);
}

/// llama.cpp's greedy continuations (f16 KV), per prompt.
fn llama_cpp_greedy() -> Vec<Vec<u32>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/gemma3/llamacpp.json");
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["greedy"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect())
        .collect()
}

/// Our fast path's greedy continuations against llama.cpp's (the fixture's, llama-cpp-python
/// 0.3.36 on this x86 CPU, f16 KV cache, no flash attention).
///
/// The fast path computes what llama.cpp's x86 CPU backend computes wherever that is a choice of
/// numerics: Q8_0 activations times `127 / max|x|`, ties to even; GELU from ggml's f16 table;
/// against the f16 cache, the scaled query and the softmax weights rounded to f16; RoPE angles by
/// repeated f32 products. For one token every tensor then equals llama.cpp's within the last bits
/// of the products, which sum their floats in another order (about 1e-7 relative; before these
/// changes the attention output alone differed by 2e-4). Those last bits still decide, every few
/// thousand elements, on which side of an 8-bit rounding boundary an activation falls, and after
/// 18 layers each such flip moves the logits by tenths: llama.cpp moves as much against itself
/// when only its batching changes. With the prompt evaluated one token at a time, its logits
/// stand 1.00 (mean of the per-position largest difference; rms 0.251) from its own batched
/// ones, ours 1.03 (0.255) from them (`fast_path_logits_distance_to_llama_cpp`), and its greedy
/// continuations part from the fixture's on two of the six prompts ("Once upon a time" after 1
/// token, Zürich after 11, with margins up to 0.2 between its two candidates). Equality in full
/// therefore cannot be required of the fast path on every prompt; see the bounds below. It is
/// required, and holds, of llama.cpp's numerics (`Model::use_llamacpp_numerics`, which keeps
/// llama.cpp's summation orders too): `tests/llamacpp_numerics.rs`.
#[test]
fn fast_path_greedy_continuations_equal_llama_cpps() {
    let Some(path) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let n_vocab = model.cfg.n_vocab;
    let params = SessionParams { n_ctx: 1024, ..SessionParams::default() };
    let mut report = Vec::new();
    for (case, theirs) in cases().iter().zip(llama_cpp_greedy()) {
        let mut s = Session::new(&model, &params).unwrap();
        let logits = s.eval(&case.ids, Logits::Last).unwrap();
        let mut next = argmax(&logits[logits.len() - n_vocab..]);
        let mut ours = vec![next];
        // Our logit of our token less our logit of llama.cpp's, at the first token where they differ.
        let mut gap = if next == theirs[0] { None } else { Some(logits[logits.len() - n_vocab + next as usize] - logits[logits.len() - n_vocab + theirs[0] as usize]) };
        while ours.len() < theirs.len() {
            let logits = s.eval(&[next], Logits::Last).unwrap();
            next = argmax(&logits);
            let t = theirs[ours.len()];
            if gap.is_none() && next != t && ours == theirs[..ours.len()] {
                gap = Some(logits[next as usize] - logits[t as usize]);
            }
            ours.push(next);
        }
        let prefix = |other: &[u32]| ours.iter().zip(other).take_while(|(a, b)| a == b).count();
        report.push((case.text.chars().take(24).collect::<String>(), prefix(&theirs), prefix(&case.greedy), gap));
    }
    eprintln!("greedy tokens equal before the first difference (llama.cpp, transformers, our logit gap where we part from llama.cpp): {report:?}");
    // Engines whose products sum in different orders part ways at near-ties (llama.cpp with
    // itself, batched or not, on margins up to 0.2; this engine with itself when a kernel sums
    // in another order). A continuation must equal llama.cpp's, or part from it where our logits
    // of the two tokens are within NEAR_TIE, or follow llama.cpp's or the float32 model's for at
    // least MIN_PREFIX tokens; and some must equal llama.cpp's in full.
    const MIN_PREFIX: usize = 8;
    const NEAR_TIE: f32 = 0.25;
    for (text, llama, hf, gap) in &report {
        let near_tie = gap.is_some_and(|g| g < NEAR_TIE);
        assert!(
            *llama == 32 || near_tie || *llama >= MIN_PREFIX || *hf >= MIN_PREFIX,
            "{text:?}: {llama} tokens as llama.cpp's, {hf} as transformers', parting from llama.cpp's by {gap:?}"
        );
    }
    let full = report.iter().filter(|r| r.1 == 32).count();
    assert!(full >= 1, "none of {} continuations equals llama.cpp's in full", report.len());
}

/// Position by position, how far our fast path's logits stand from llama.cpp's, on each prompt
/// and llama.cpp's greedy continuation (the prompt as one batch, then one token at a time, as
/// llama.cpp ran). The rows come from `tests/scripts/dump_gemma3_llamacpp_logits.py` (in
/// `ENGINE_LLAMACPP_LOGITS`, default `/tmp/gemma3-llamacpp-logits`); a measuring tool, not a check:
/// `cargo test --release -p engine-tests --test gemma3_reference -- --ignored --nocapture distance`.
///
/// Per row it takes the largest |difference| over the vocabulary and the root mean square; beside
/// ours it reports llama.cpp's distance from itself with the prompt evaluated one token at a time
/// (`logits_seq.f32`), the floor of what matching its numerics can reach without its summation
/// order. `ENGINE_OURS_LOGITS=FILE` also writes our rows there, in the same order.
#[test]
#[ignore]
fn fast_path_logits_distance_to_llama_cpp() {
    let Some(path) = engine_tests::default_model() else { return };
    let dir = std::env::var("ENGINE_LLAMACPP_LOGITS").unwrap_or_else(|_| "/tmp/gemma3-llamacpp-logits".into());
    let index: Value = serde_json::from_str(&std::fs::read_to_string(format!("{dir}/index.json")).expect("index.json")).expect("json");
    let read = |name: &str| -> Option<Vec<f32>> {
        let bytes = std::fs::read(format!("{dir}/{name}")).ok()?;
        Some(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let theirs = read("logits.f32").expect("logits.f32");
    let seq = read("logits_seq.f32");
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let n_vocab = model.cfg.n_vocab;
    assert_eq!(index["n_vocab"].as_u64(), Some(n_vocab as u64));
    let params = SessionParams { n_ctx: 1024, ..SessionParams::default() };
    let mut dump = std::env::var("ENGINE_OURS_LOGITS").ok().map(|p| std::fs::File::create(p).expect("ENGINE_OURS_LOGITS"));
    // (largest |difference|, root mean square) of two rows.
    let stats = |a: &[f32], b: &[f32]| -> (f32, f64) {
        let (mut max, mut sq) = (0f32, 0f64);
        for (x, y) in a.iter().zip(b) {
            max = max.max((x - y).abs());
            sq += ((x - y) as f64).powi(2);
        }
        (max, (sq / a.len() as f64).sqrt())
    };
    // Sums over all rows: [ours max, ours rms, floor max, floor rms], and the row count.
    let (mut total, mut all_rows) = ([0f64; 4], 0usize);
    for c in index["cases"].as_array().unwrap() {
        let tokens: Vec<u32> = c["tokens"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect();
        let (n_prompt, first, row0) = (c["n_prompt"].as_u64().unwrap() as usize, c["first"].as_u64().unwrap() as usize, c["row"].as_u64().unwrap() as usize);
        let mut s = Session::new(&model, &params).unwrap();
        if first > 0 {
            s.eval(&tokens[..first], Logits::Last).unwrap();
        }
        let mut ours = s.eval(&tokens[first..n_prompt], Logits::All).unwrap();
        for &t in &tokens[n_prompt..] {
            ours.extend(s.eval(&[t], Logits::Last).unwrap());
        }
        let n_rows = ours.len() / n_vocab;
        if let Some(f) = dump.as_mut() {
            use std::io::Write;
            f.write_all(&ours.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()).unwrap();
        }
        let (mut line, mut sums, mut parted, mut equal) = (String::new(), [0f64; 4], 0usize, 0usize);
        for r in 0..n_rows {
            let row = |v: &[f32], i: usize| v[i * n_vocab..(i + 1) * n_vocab].to_vec();
            let (a, b) = (row(&ours, r), row(&theirs, row0 + r));
            let (max, rms) = stats(&a, &b);
            let (fmax, frms) = seq.as_ref().map_or((0.0, 0.0), |q| stats(&row(q, row0 + r), &b));
            for (acc, v) in sums.iter_mut().zip([max as f64, rms, fmax as f64, frms]) {
                *acc += v;
            }
            let differs = argmax(&a) != argmax(&b);
            equal += (max < 1e-3) as usize;
            parted += differs as usize;
            line += &format!(" {max:.3}{}", if differs { "*" } else { "" });
        }
        let text: String = c["text"].as_str().unwrap().chars().take(20).collect();
        let m = |i: usize| sums[i] / n_rows as f64;
        eprintln!(
            "{text:?}: {n_rows} rows, mean of max|d| {:.4} (llama.cpp's floor {:.4}), mean rms {:.4} (floor {:.4}), top-1 differs at {parted}, equal within 1e-3 at {equal}\n  max|d| per row:{line}",
            m(0),
            m(2),
            m(1),
            m(3)
        );
        for (t, s) in total.iter_mut().zip(sums) {
            *t += s;
        }
        all_rows += n_rows;
    }
    let m = |i: usize| total[i] / all_rows as f64;
    eprintln!(
        "over {all_rows} rows: mean of the per-row largest |logit difference| from llama.cpp {:.4} (llama.cpp's own, prompt one token at a time: {:.4}); mean rms {:.4} ({:.4})",
        m(0),
        m(2),
        m(1),
        m(3)
    );
}
