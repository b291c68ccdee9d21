//! The llama.cpp-numerics mode (`ggml_kernels::llamacpp`, `Model::llamacpp_numerics`) against
//! llama.cpp itself.
//!
//! `ops_match_a_llama_cpp_dump` (ignored, a measuring tool) replays each op of one forward pass
//! from the tensors llama.cpp computed (`tests/scripts/dump_llamacpp_tensors.py` writes them),
//! feeding each op llama.cpp's own inputs, and counts the elements that differ from llama.cpp's
//! outputs.

use engine::gguf::GgufFile;
use ggml_kernels::attention::{AttnMask, AttnShape, KvView};
use ggml_kernels::llamacpp;
use ggml_kernels::matmul::QMatrix;
use half::f16;

fn dump_dir() -> String {
    std::env::var("ENGINE_LLAMACPP_DUMP").unwrap_or_else(|_| "/tmp/ggx/bos".into())
}

fn load(name: &str) -> Vec<f32> {
    let bytes = std::fs::read(format!("{}/{name}.f32", dump_dir())).unwrap_or_else(|e| panic!("{name}: {e}"));
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// A JSON fixture of `tests/fixtures/gemma3`.
fn fixture(name: &str) -> serde_json::Value {
    let p = format!("{}/fixtures/gemma3/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A JSON array of token ids.
fn u32s(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn report(label: &str, ours: &[f32], theirs: &[f32]) -> usize {
    assert_eq!(ours.len(), theirs.len(), "{label}: lengths");
    let differ = ours.iter().zip(theirs).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
    let max = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    eprintln!("{label:<28} {differ:>7} of {:>8} differ, max |d| {max:e}", ours.len());
    for (i, (a, b)) in ours.iter().zip(theirs).enumerate().filter(|(_, (a, b))| a.to_bits() != b.to_bits()).take(3) {
        eprintln!("    [{i}] ours {a:e} theirs {b:e}");
    }
    differ
}

#[test]
#[ignore]
fn ops_match_a_llama_cpp_dump() {
    let Some(path) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let mat = |name: &str| {
        let t = file.tensor(name).unwrap();
        QMatrix::new(t.ty, t.ne[0] as usize, t.ne[1] as usize, file.tensor_data(t)).unwrap()
    };
    let vecw = |name: &str| -> Vec<f32> {
        let t = file.tensor(name).unwrap();
        file.tensor_data(t).chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    };
    let eps = 1e-6f32;
    let mm = |w: &str, x: &[f32]| {
        let m = mat(w);
        let n = x.len() / m.cols;
        let mut out = vec![0f32; n * m.rows];
        llamacpp::matmul(&m, x, n, &mut out).unwrap();
        out
    };
    let mut bad = 0;
    let n_layers: usize = std::env::var("LAYERS").ok().and_then(|s| s.parse().ok()).unwrap_or(1);
    for il in 0..n_layers {
        let l = |s: &str| format!("{s}-{il}");
        let b = |s: &str| format!("blk.{il}.{s}");
        let x = if il == 0 { load("inp_scaled") } else { load(&format!("l_out-{}", il - 1)) };
        let mut h = vec![0f32; x.len()];
        llamacpp::rms_norm(&x, &vecw(&b("attn_norm.weight")), eps, &mut h);
        bad += report(&l("attn_norm"), &h, &load(&l("attn_norm")));
        let an = load(&l("attn_norm"));
        bad += report(&l("Qcur (q5_0)"), &mm(&b("attn_q.weight"), &an), &load(&l("Qcur")));
        bad += report(&l("Kcur"), &mm(&b("attn_k.weight"), &an), &load(&l("Kcur")));
        bad += report(&l("Vcur (q8_0)"), &mm(&b("attn_v.weight"), &an), &load(&l("Vcur")));
        let mut qn = load(&l("Qcur"));
        llamacpp::rms_norm_inplace(&mut qn, &vecw(&b("attn_q_norm.weight")), eps);
        bad += report(&l("Qcur_normed"), &qn, &load(&l("Qcur_normed")));
        // RoPE (NeoX, 256 dimensions) of llama.cpp's normed queries, as ggml's rotate_pairs
        // compiled with contraction: which of the products is fused.
        {
            let base: f32 = if il % 6 == 5 { 1_000_000.0 } else { 10_000.0 };
            let theirs = load(&format!("{}#2", l("Qcur")));
            let theta_scale = base.powf(-2.0 / 256.0);
            for variant in 0..4 {
                let mut ours = qn.clone();
                for (t, row) in ours.chunks_exact_mut(1024).enumerate() {
                    let mut theta = t as f32;
                    let mut cs = vec![];
                    for _ in 0..128 {
                        cs.push((theta.cos(), theta.sin()));
                        theta *= theta_scale;
                    }
                    for head in row.chunks_exact_mut(256) {
                        for (i, &(c, sn)) in cs.iter().enumerate() {
                            let (x0, x1) = (head[i], head[i + 128]);
                            let (a, b) = match variant {
                                0 => (x0 * c - x1 * sn, x0 * sn + x1 * c),
                                1 => (x0.mul_add(c, -(x1 * sn)), x0.mul_add(sn, x1 * c)),
                                2 => ((-x1).mul_add(sn, x0 * c), x1.mul_add(c, x0 * sn)),
                                _ => (x0.mul_add(c, -(x1 * sn)), x1.mul_add(c, x0 * sn)),
                            };
                            head[i] = a;
                            head[i + 128] = b;
                        }
                    }
                }
                report(&format!("{} rope variant {variant}", l("Qcur")), &ours, &theirs);
            }
        }
        // Attention from llama.cpp's roped q, k and its v (this eval's rows only: the cache of
        // earlier tokens is not in the dump unless the eval is the whole sequence).
        let (q, k, v) = (load(&format!("{}#2", l("Qcur"))), load(&format!("{}#2", l("Kcur"))), load(&l("Vcur")));
        let n = q.len() / 1024;
        let s = AttnShape { n_head: 4, n_head_kv: 1, head_dim: 256, head_dim_v: 256, scale: 0.0625 };
        let kh: Vec<f16> = k.iter().map(|&x| f16::from_f32(x)).collect();
        let vh: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        let pos0: i64 = std::env::var("POS0").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
        let qpos: Vec<i64> = (0..n as i64).map(|i| pos0 + i).collect();
        if pos0 == 0 {
            let mask = if il % 6 == 5 { AttnMask::CAUSAL } else { AttnMask::sliding(512) };
            let mut o = vec![0f32; n * 1024];
            llamacpp::attention(&s, &q, &qpos, KvView::F16(&kh), KvView::F16(&vh), &qpos, mask, &mut o);
            bad += report(&l("kqv_out"), &o, &load(&l("kqv_out")));
        }
        let attn = load(&l("kqv_out"));
        let o = mm(&b("attn_output.weight"), &attn);
        let mut pn = o.clone();
        llamacpp::rms_norm_inplace(&mut pn, &vecw(&b("post_attention_norm.weight")), eps);
        bad += report(&l("attn_post_norm (q4_k)"), &pn, &load(&l("attn_post_norm")));
        let fnorm = load(&l("ffn_norm"));
        let g = mm(&b("ffn_gate.weight"), &fnorm);
        let u = mm(&b("ffn_up.weight"), &fnorm);
        bad += report(&l("ffn_gate"), &g, &load(&l("ffn_gate")));
        bad += report(&l("ffn_up"), &u, &load(&l("ffn_up")));
        let mut gg = g.clone();
        llamacpp::geglu(&mut gg, &u);
        bad += report(&l("ffn_geglu"), &gg, &load(&l("ffn_geglu")));
        bad += report(&l("ffn_out (q6_k)"), &mm(&b("ffn_down.weight"), &load(&l("ffn_geglu"))), &load(&l("ffn_out")));
    }
    let rn = load("result_norm");
    bad += report("result_output (q8_0)", &mm("token_embd.weight", &rn), &load("result_output"));
    assert_eq!(bad, 0, "{bad} elements differ from llama.cpp's");
}

/// The whole forward pass against a dump's logits: the dump of `tokens` evaluated after `pre`
/// (`ENGINE_LLAMACPP_DUMP`, `PRE` and `TOKENS` as JSON arrays), bit for bit.
#[test]
#[ignore]
fn logits_match_a_llama_cpp_dump() {
    use engine::model::{Logits, Model, Session, SessionParams};
    let Some(path) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    model.use_llamacpp_numerics().unwrap();
    let ids = |v: &str| -> Vec<u32> { serde_json::from_str(&std::env::var(v).unwrap_or_else(|_| "[]".into())).unwrap() };
    let (pre, toks) = (ids("PRE"), ids("TOKENS"));
    let mut s = Session::new(&model, &SessionParams { n_ctx: 1024, ..SessionParams::default() }).unwrap();
    if !pre.is_empty() {
        s.eval(&pre, Logits::Last).unwrap();
    }
    let ours = s.eval(&toks, Logits::All).unwrap();
    let bad = report("logits", &ours, &load("logits"));
    assert_eq!(bad, 0);
}

/// Issue 4's criterion: with llama.cpp's numerics, greedy 32-token continuations of the committed
/// prompts equal llama.cpp's (`tests/fixtures/gemma3/llamacpp.json`: llama-cpp-python 0.3.36 on
/// this x86 CPU, the prompt as one batch, then one token at a time, f16 KV cache), token for
/// token, on every prompt (the emulation gives the same bits on any CPU). The fast path parts from
/// them at near-ties (`gemma3_reference`'s `fast_path_greedy_continuations_equal_llama_cpps`);
/// these logits are llama.cpp's own bits.
#[test]
fn greedy_continuations_equal_llama_cpps_with_its_numerics() {
    use engine::model::{Logits, Model, Session, SessionParams};
    let Some(path) = engine_tests::default_model() else { return };
    let (hf, llama) = (fixture("hf_reference.json"), fixture("llamacpp.json"));
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    model.use_llamacpp_numerics().unwrap();
    let n_vocab = model.cfg.n_vocab;
    // The first of equal maxima, as numpy's argmax (the fixture's).
    let argmax = |row: &[f32]| row.iter().enumerate().fold(0, |b, (i, &v)| if v > row[b] { i } else { b }) as u32;
    let mut failures = Vec::new();
    for (case, theirs) in hf["cases"].as_array().unwrap().iter().zip(llama["cases"].as_array().unwrap()) {
        let (ids, want) = (u32s(&case["ids"]), u32s(&theirs["greedy"]));
        let mut s = Session::new(&model, &SessionParams { n_ctx: 1024, ..SessionParams::default() }).unwrap();
        let logits = s.eval(&ids, Logits::Last).unwrap();
        let mut ours = vec![argmax(&logits[logits.len() - n_vocab..])];
        while ours.len() < want.len() {
            let logits = s.eval(&ours[ours.len() - 1..], Logits::Last).unwrap();
            ours.push(argmax(&logits));
        }
        let same = ours.iter().zip(&want).take_while(|(a, b)| a == b).count();
        eprintln!("{:?}: {same} of {} tokens as llama.cpp's", case["text"].as_str().unwrap().chars().take(24).collect::<String>(), want.len());
        if same != want.len() {
            failures.push((case["text"].as_str().unwrap().to_string(), same));
        }
    }
    assert!(failures.is_empty(), "continuations that part from llama.cpp's (prompt, tokens equal): {failures:?}");
}

/// With llama.cpp's numerics, the logits are llama.cpp's bits: a SHA-256 of each case's f32 rows
/// (`tests/fixtures/gemma3/llamacpp_logits.json`, from `tests/scripts/make_llamacpp_logit_hashes.py`)
/// over one token, batches under and over 8 tokens, and a 627-token prompt past the 512-token
/// sliding window.
#[test]
fn logits_equal_llama_cpps_bit_for_bit_with_its_numerics() {
    use engine::model::{Logits, Model, Session, SessionParams};
    use sha2::{Digest, Sha256};
    let Some(path) = engine_tests::default_model() else { return };
    let fix = fixture("llamacpp_logits.json");
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    model.use_llamacpp_numerics().unwrap();
    let n_vocab = model.cfg.n_vocab;
    let mut failures = Vec::new();
    // A case whose `pre` is the previous case's tokens continues that session.
    let mut prev: Option<(Vec<u32>, Session<'_, '_>)> = None;
    for c in fix["cases"].as_array().unwrap() {
        let (pre, tokens) = (u32s(&c["pre"]), u32s(&c["tokens"]));
        let mut s = match prev.take() {
            Some((t, s)) if !pre.is_empty() && t == pre => s,
            _ => {
                let mut s = Session::new(&model, &SessionParams { n_ctx: 1024, ..SessionParams::default() }).unwrap();
                if !pre.is_empty() {
                    s.eval(&pre, Logits::Last).unwrap();
                }
                s
            }
        };
        let which = if c["rows"] == "last" { Logits::Last } else { Logits::All };
        let rows = s.eval(&tokens, which).unwrap();
        let bytes: Vec<u8> = rows.iter().flat_map(|v| v.to_le_bytes()).collect();
        let hash: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        let last = &rows[rows.len() - n_vocab..];
        let (arg, max) = last.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b });
        let name = c["name"].as_str().unwrap();
        eprintln!("{name}: {} rows, sha256 {}…, last row's top token {arg} at {max}", rows.len() / n_vocab, &hash[..16]);
        if hash != c["sha256"].as_str().unwrap() {
            failures.push(format!("{name}: top {arg} at {max}, llama.cpp's {} at {}", c["last_argmax"], c["last_max"]));
        }
        prev = Some((tokens, s));
    }
    assert!(failures.is_empty(), "logits that differ from llama.cpp's: {failures:?}");
}

/// `engine run --numerics llamacpp`: greedy text on stdout is llama.cpp's continuation (the
/// fixture's tokens, detokenized); a model the mode does not cover is an error that says so.
#[test]
fn run_with_llamacpp_numerics_prints_llama_cpps_continuation() {
    use engine::tokenizer::Tokenizer;
    use engine_tests::bin::engine_bin;
    use std::process::Command;
    let Some(path) = engine_tests::default_model() else { return };
    let (hf, llama) = (fixture("hf_reference.json"), fixture("llamacpp.json"));
    let (text, greedy) = (hf["cases"][0]["text"].as_str().unwrap(), &llama["cases"][0]["greedy"]);
    let want: Vec<u32> = u32s(greedy).into_iter().take(12).collect();
    let file = GgufFile::open(&path).unwrap();
    let tok = Tokenizer::from_gguf(&file).unwrap();
    let want_text = tok.detokenize_lossy(&want, engine::tokenizer::DecodeOptions::default()).unwrap();
    let out = Command::new(engine_bin())
        .args(["run", "-m", path.to_str().unwrap(), "-p", text, "-n", "12", "--temp", "0", "--numerics", "llamacpp", "--no-display-prompt"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim_end(), want_text.trim_end());

    // A Llama-family model: not covered, said so, no panic.
    let dir = tempfile::tempdir().unwrap();
    let tiny = dir.path().join("tiny.gguf");
    let o = Command::new(engine_bin()).args(["synth", "--arch", "llama", "--preset", "llama-tiny", "--type", "q8_0", "--quiet", "-o"]).arg(&tiny).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = Command::new(engine_bin()).args(["run", "-m", tiny.to_str().unwrap(), "-p", "hi", "-n", "2", "--numerics", "llamacpp"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("llama.cpp's numerics cover gemma3 only") && !err.contains("panicked"), "{err}");

    // A Gemma 3 model with weights of a type it does not cover (Q4_0), and the GPU asked for.
    let q40 = dir.path().join("g3-q4_0.gguf");
    let o = Command::new(engine_bin()).args(["synth", "--arch", "gemma3", "--preset", "gemma3-tiny", "--type", "q4_0", "--quiet", "-o"]).arg(&q40).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for (args, expect) in [
        (vec!["run", "-m", q40.to_str().unwrap(), "-p", "hi", "-n", "2", "--numerics", "llamacpp"], "llama.cpp's numerics do not cover Q4_0 weights"),
        (vec!["run", "-m", path.to_str().unwrap(), "-p", "hi", "-n", "2", "-ngl", "99", "--numerics", "llamacpp"], "--numerics llamacpp computes on the CPU"),
    ] {
        let out = Command::new(engine_bin()).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(expect) && !err.contains("panicked"), "{args:?}: {err}");
    }
}
