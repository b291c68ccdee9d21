//! Several sequences evaluated together (`engine::model::eval_batch`, behind `engine bench
//! --parallel`) give each sequence the logits it gets alone, a LightTransfer-Test prefill runs
//! layer-major so that its KV memory stays near `P` full layers plus one, and a decode step run
//! as one parallel region of several threads (`Model::decode_team`) gives the logits of the
//! fork-join path bit for bit.

use std::path::Path;

use engine::gguf::GgufFile;
use engine::lighttransfer::{HybridOptions, StreamParams};
use engine::model::kv_cache::{KvType, LayerKind};
use engine::model::{eval_batch, Logits, Model, ModelError, Session, SessionParams};
use engine::quant_mix::FileType;
use engine::synth::{self, SynthParams};
use engine_tests::default_model;

fn synth_model(dir: &Path, preset: &str, ftype: FileType) -> std::path::PathBuf {
    let path = dir.join(format!("{preset}.gguf"));
    let p = synth::preset(preset).unwrap();
    synth::synthesize(&SynthParams { preset: p, ftype, seed: 7, fast: false }, &path, None).unwrap();
    path
}

fn params(n_ctx: usize, n_batch: usize) -> SessionParams {
    SessionParams { n_ctx, n_batch, kv_type: KvType::F32, layer_kinds: None }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0
}

/// Prompts of different lengths (so the sequences sit at different positions), prefilled
/// together, then `steps` decode steps of one token each, all sequences in one call per step;
/// each step's logits are compared with the same sequence evaluated alone.
fn check_batched_equals_alone(model: &Model<'_>, n_batch: usize, steps: usize, tol: f32) {
    let n_vocab = model.cfg.n_vocab as u32;
    let prompts: Vec<Vec<u32>> =
        [5usize, 17, 30].iter().enumerate().map(|(s, &n)| (0..n as u32).map(|i| 1 + (i * 31 + s as u32 * 97) % (n_vocab - 1)).collect()).collect();
    let p = params(64, n_batch);
    let mut together: Vec<Session> = prompts.iter().map(|_| Session::new(model, &p).unwrap()).collect();
    let mut alone: Vec<Session> = prompts.iter().map(|_| Session::new(model, &p).unwrap()).collect();

    let mut refs: Vec<&mut Session> = together.iter_mut().collect();
    let toks: Vec<&[u32]> = prompts.iter().map(|v| v.as_slice()).collect();
    let mut got = eval_batch(&mut refs, &toks, Logits::Last).unwrap();
    let mut worst = 0f32;
    let mut fed: Vec<u32> = Vec::new();
    for step in 0..=steps {
        for (i, s) in alone.iter_mut().enumerate() {
            let want = if step == 0 { s.eval(&prompts[i], Logits::Last).unwrap() } else { s.eval(&[fed[i]], Logits::Last).unwrap() };
            let d = max_abs_diff(&got[i], &want);
            worst = worst.max(d);
            assert!(d <= tol, "sequence {i}, step {step}: batched and alone differ by {d}");
            assert_eq!(argmax(&got[i]), argmax(&want), "sequence {i}, step {step}: another top token");
        }
        if step == steps {
            break;
        }
        // Greedy: each sequence's next token, one per sequence, all in one call.
        fed = got.iter().map(|l| argmax(l) as u32).collect();
        let mut refs: Vec<&mut Session> = together.iter_mut().collect();
        let step_toks: Vec<[u32; 1]> = fed.iter().map(|&t| [t]).collect();
        let toks: Vec<&[u32]> = step_toks.iter().map(|v| v.as_slice()).collect();
        got = eval_batch(&mut refs, &toks, Logits::Last).unwrap();
    }
    for (a, b) in together.iter().zip(&alone) {
        assert_eq!(a.n_past(), b.n_past());
    }
    eprintln!("{}: {} sequences, {steps} steps, worst logit difference {worst:e}", model.cfg.arch.name(), prompts.len());
}

#[test]
fn batched_sequences_get_the_logits_they_get_alone_exact_path() {
    // f32 products from dequantized weights: the batch changes nothing but the grouping.
    let dir = tempfile::tempdir().unwrap();
    for preset in ["llama-tiny", "qwen2-tiny", "mistral-tiny", "gemma3-tiny"] {
        let path = synth_model(dir.path(), preset, FileType::F32);
        let file = GgufFile::open(&path).unwrap();
        let mut model = Model::load(&file).unwrap();
        model.exact_matmul = true;
        check_batched_equals_alone(&model, 512, 6, 1e-4);
        // Prompts split into several rounds of batches of 8.
        check_batched_equals_alone(&model, 8, 2, 1e-4);
    }
}

#[test]
fn batched_sequences_get_the_logits_they_get_alone_quantized() {
    // Q8_0 weights and 8-bit activations: a sequence alone and the batch run different kernels
    // (decode kernels for a few rows, GEMM tiles for more), whose f32 sums are ordered
    // differently (5e-5 relative at most, tests in ggml-kernels); where such a difference moves
    // an activation across a rounding boundary of the next layer's 8-bit quantization, the
    // logits move by one quantization step's worth, so the bound is that of the quantization.
    let dir = tempfile::tempdir().unwrap();
    for preset in ["llama-tiny", "gemma3-tiny"] {
        let path = synth_model(dir.path(), preset, FileType::Q8_0);
        let file = GgufFile::open(&path).unwrap();
        let model = Model::load(&file).unwrap();
        check_batched_equals_alone(&model, 512, 6, 0.1);
    }
}

#[test]
fn batched_decode_on_the_default_model() {
    let Some(path) = default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    // The f32 path: batching changes nothing but the grouping of the products.
    model.exact_matmul = true;
    check_batched_equals_alone(&model, 512, 3, 1e-3);
    // The 8-bit activation path: one sequence runs the matrix-vector kernels, several the GEMM
    // tiles; their sums differ in the last bits, and re-quantizing the next layer's activations
    // can turn such a difference into one rounding step of an 8-bit value, so the logits move by
    // about as much as the activation quantization itself does (0.6-1.3 against float32 references;
    // docs/PERFORMANCE.md), and the greedy tokens stay the same.
    model.exact_matmul = false;
    check_batched_equals_alone(&model, 512, 4, 3.0);
}

/// Greedy decode of `steps` tokens after a prompt, on `threads` threads, with the decode steps
/// as one parallel region (`team`) or a fork-join per product; every step's logits.
fn greedy_logits(model: &Model<'_>, threads: usize, steps: usize) -> Vec<Vec<f32>> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let n_vocab = model.cfg.n_vocab as u32;
        let prompt: Vec<u32> = (0..9u32).map(|i| 1 + (i * 37) % (n_vocab - 1)).collect();
        let mut s = Session::new(model, &SessionParams { kv_type: KvType::F16, ..params(64, 512) }).unwrap();
        let mut out = vec![s.eval(&prompt, Logits::Last).unwrap()];
        for _ in 0..steps {
            let next = argmax(out.last().unwrap()) as u32;
            out.push(s.eval(&[next], Logits::Last).unwrap());
        }
        out
    })
}

/// The team's decode and the fork-join's, step by step, bit for bit.
fn check_team_equals_fork_join(file: &GgufFile, threads: usize, steps: usize) {
    let mut team = Model::load(file).unwrap();
    team.decode_team = true;
    let mut fork_join = Model::load(file).unwrap();
    fork_join.decode_team = false;
    let (a, b) = (greedy_logits(&team, threads, steps), greedy_logits(&fork_join, threads, steps));
    for (step, (a, b)) in a.iter().zip(&b).enumerate() {
        let same = a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(same, "{} on {threads} threads, step {step}: the team's logits differ by {}", team.cfg.arch.name(), max_abs_diff(a, b));
    }
}

#[test]
fn team_decode_equals_the_fork_join_bit_for_bit() {
    // Integer products in the packed layouts (Q4_K, Q6_K, Q5_0, Q8_0 ...), f16 KV cache; two
    // and three threads (an odd team splits heads and rows unevenly).
    let dir = tempfile::tempdir().unwrap();
    for preset in ["llama-tiny", "qwen2-tiny", "mistral-tiny", "gemma3-tiny"] {
        for ftype in [FileType::Q4KM, FileType::Q8_0, FileType::Q5_0] {
            let path = dir.path().join(format!("{preset}-{ftype:?}.gguf"));
            let p = synth::preset(preset).unwrap();
            synth::synthesize(&SynthParams { preset: p, ftype, seed: 11, fast: false }, &path, None).unwrap();
            let file = GgufFile::open(&path).unwrap();
            for threads in [2, 3] {
                check_team_equals_fork_join(&file, threads, 12);
            }
        }
    }
    if let Some(path) = default_model() {
        let file = GgufFile::open(&path).unwrap();
        check_team_equals_fork_join(&file, 2, 6);
    }
}

#[test]
fn batched_errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let path = synth_model(dir.path(), "llama-tiny", FileType::F32);
    let file = GgufFile::open(&path).unwrap();
    let (m1, m2) = (Model::load(&file).unwrap(), Model::load(&file).unwrap());
    let mut a = Session::new(&m1, &params(8, 8)).unwrap();
    let mut b = Session::new(&m2, &params(8, 8)).unwrap();
    let e = eval_batch(&mut [&mut a, &mut b], &[&[1], &[2]], Logits::Last).err().unwrap();
    assert!(e.to_string().contains("one model"), "{e}");
    let mut c = Session::new(&m1, &params(8, 8)).unwrap();
    let e = eval_batch(&mut [&mut a, &mut c], &[&[1], &[2; 9]], Logits::Last).err().unwrap();
    assert!(matches!(e, ModelError::ContextFull { need: 9, n_ctx: 8 }), "{e}");
    assert_eq!((a.n_past(), c.n_past()), (0, 0), "nothing evaluated when one sequence is refused");
    let e = eval_batch(&mut [&mut a], &[&[1], &[2]], Logits::Last).err().unwrap();
    assert!(e.to_string().contains("1 sessions but 2 token lists"), "{e}");
}

#[test]
fn lighttransfer_test_prefill_holds_p_full_layers_plus_one() {
    // Gemma-3-tiny's six layers, all run as full attention; a prompt of 6 batches and one token
    // (so a plain split into batches would end with a batch of a single query).
    let dir = tempfile::tempdir().unwrap();
    let path = synth_model(dir.path(), "gemma3-tiny", FileType::F32);
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let n_layer = model.cfg.n_layer;
    let (n_ctx, n_batch, n_prompt) = (256usize, 16usize, 97usize);
    let prompt: Vec<u32> = (0..n_prompt as u32).map(|i| 1 + (i * 53) % 300).collect();
    let full = vec![LayerKind::Full; n_layer];
    let p = SessionParams { layer_kinds: Some(full.clone()), ..params(n_ctx, n_batch) };

    // Without LightTransfer: every layer full, and the reference logits of the prompt.
    let mut plain = Session::new(&model, &p).unwrap();
    let want = plain.eval(&prompt, Logits::Last).unwrap();
    let full_layer = plain.cache.layers[0].bytes();
    assert_eq!(plain.cache.peak_bytes(), n_layer * full_layer);

    // LightTransfer-Test with half of the layers lazy: P = 3 of 6 stay full.
    let stream = StreamParams { sink: 2, window: 14 };
    let opts = HybridOptions { lazy_fraction: Some(0.5), sink: Some(stream.sink), window: Some(stream.window), ..HybridOptions::default() };
    let mode = opts.resolve(None, &full).unwrap();
    let mut s = Session::new(&model, &p).unwrap();
    assert_eq!(s.cache.resident_bytes(), 0, "nothing allocated before the first token");
    s.cache.probe = mode.probe(&full, n_prompt);
    let got = s.eval(&prompt, Logits::Last).unwrap();
    let probe = s.cache.probe.take().unwrap();
    assert_eq!(probe.made_lazy.len(), n_layer / 2, "{probe:?}");
    let keep_full = n_layer - probe.made_lazy.len();
    let stream_layer = (stream.sink + stream.window) as usize * full_layer / n_ctx;
    let bound = (keep_full + 1) * full_layer + probe.made_lazy.len() * stream_layer;
    let peak = s.cache.peak_bytes();
    eprintln!("peak KV during the prefill: {peak} bytes; P + 1 full layers: {bound}; all full: {}", n_layer * full_layer);
    assert!(peak <= bound, "peak KV during the prefill {peak} > P + 1 full layers ({bound})");
    // The prompt's logits do not depend on the order (layers are cut after their attention).
    let d = max_abs_diff(&got, &want);
    assert!(d <= 1e-5, "layer-major prefill changed the logits by {d}");
    // After the prefill the lazy layers hold exactly sink + window positions.
    for &l in &probe.made_lazy {
        assert_eq!(s.cache.layers[l].n_slots(), (stream.sink + stream.window) as usize);
    }
    assert_eq!(s.cache.resident_bytes(), keep_full * full_layer + probe.made_lazy.len() * stream_layer);
    // And decoding goes on from there.
    let next = s.eval(&[7], Logits::Last).unwrap();
    assert!(next.iter().all(|v| v.is_finite()));

    // The ratios rest on the last w_last queries, as in a prefill of one batch (token-major).
    let mut one = Session::new(&model, &SessionParams { n_batch: n_prompt, ..p.clone() }).unwrap();
    one.cache.probe = mode.probe(&full, n_prompt);
    one.eval(&prompt, Logits::Last).unwrap();
    let whole = one.cache.probe.take().unwrap();
    assert_eq!(whole.made_lazy, probe.made_lazy);
    for (il, (a, b)) in probe.ratios.iter().zip(&whole.ratios).enumerate() {
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!((a - b).abs() <= 1e-5, "layer {il}: ratio {a} layer-major, {b} in one batch");
    }
}
