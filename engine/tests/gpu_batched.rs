//! Several sequences in one GPU session (`GpuSession::with_sequences`): prompts of different
//! lengths prefilled into their own runs of cache slots, then decode steps of every sequence at
//! once (`eval_parallel`: batched products, one attention launch over all the caches). Each
//! sequence must get the logits the CPU gives it alone (`model::Session`), within the bound of
//! `gpu_parity.rs`, so no sequence sees another's keys; a sequence copied from another
//! (`copy_sequence`) must continue exactly as its source. Skips (and says so) without a GPU.

mod common;

use common::{every_other_streaming, gpus, nmse, tiny_model, tokens};
use engine::gguf::GgufFile;
use engine::gpu::{GpuModel, GpuSession};
use engine::model::kv_cache::KvType;
use engine::model::{Logits, Model, Session, SessionParams};
use engine::quant_mix::FileType;

/// Largest NMSE of a GPU row of logits against the CPU's (as `gpu_parity.rs`).
const NMSE_BOUND: f64 = 5e-3;

fn check_finite(v: &[f32]) {
    assert!(v.iter().all(|x| x.is_finite()), "non-finite logits");
}

#[test]
fn parallel_sequences_match_each_alone() {
    let Some(_) = gpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    // (preset, file type, every other layer streaming with this sink + window)
    let cases: &[(&str, FileType, Option<(u32, u32)>)] = &[
        ("llama-tiny", FileType::Q4KM, None),
        ("llama-tiny", FileType::Q4_0, Some((4, 8))),
        ("gemma3-tiny", FileType::Q4KM, None),
        ("qwen2-tiny", FileType::Q8_0, None),
    ];
    for &(name, ftype, lazy) in cases {
        let path = tiny_model(dir.path(), name, ftype, 5);
        let file = GgufFile::open(&path).unwrap();
        let model = Model::load(&file).unwrap();
        let kinds = every_other_streaming(model.native_layer_kinds(), lazy);
        let params = SessionParams { n_ctx: 80, n_batch: 16, kv_type: KvType::F16, layer_kinds: Some(kinds) };
        let gm = GpuModel::upload(&model, 0).unwrap();
        let n_vocab = model.cfg.n_vocab;
        let mut next = tokens(0x2545_f491_4f6c_dd1d, n_vocab);
        // Three prompts of different lengths (one over two prompt batches), six decode steps.
        let prompts: Vec<Vec<u32>> = [9usize, 40, 23].iter().map(|&n| (0..n).map(|_| next()).collect()).collect();
        let steps: Vec<Vec<u32>> = (0..6).map(|_| (0..3).map(|_| next()).collect()).collect();

        let mut gpu = GpuSession::with_sequences(&gm, &params, 3).unwrap();
        let mut worst = 0f64;
        let mut cpu: Vec<Session> = (0..3).map(|_| Session::new(&model, &params).unwrap()).collect();
        for (s, p) in prompts.iter().enumerate() {
            let g = gpu.eval_seq(s, p, Logits::Last).unwrap();
            let c = cpu[s].eval(p, Logits::Last).unwrap();
            check_finite(&g);
            let e = nmse(&g, &c);
            assert!(e <= NMSE_BOUND, "{name} {ftype}: sequence {s} prompt: NMSE {e:.3e}");
            worst = worst.max(e);
        }
        for (i, step) in steps.iter().enumerate() {
            let g = gpu.eval_parallel(step).unwrap().to_vec();
            assert_eq!(g.len(), 3 * n_vocab);
            for s in 0..3 {
                let c = cpu[s].eval(&step[s..s + 1], Logits::Last).unwrap();
                let row = &g[s * n_vocab..(s + 1) * n_vocab];
                check_finite(row);
                let e = nmse(row, &c);
                assert!(e <= NMSE_BOUND, "{name} {ftype}: step {i} sequence {s}: NMSE {e:.3e}");
                worst = worst.max(e);
            }
        }
        assert_eq!((gpu.n_past_of(0), gpu.n_past_of(1), gpu.n_past_of(2)), (15, 46, 29));
        // A step of the first two sequences leaves the third where it was.
        let g = gpu.eval_parallel(&steps[0][..2]).unwrap().to_vec();
        assert_eq!(g.len(), 2 * n_vocab);
        for s in 0..2 {
            let c = cpu[s].eval(&steps[0][s..s + 1], Logits::Last).unwrap();
            let e = nmse(&g[s * n_vocab..(s + 1) * n_vocab], &c);
            assert!(e <= NMSE_BOUND, "{name} {ftype}: partial step, sequence {s}: NMSE {e:.3e}");
        }
        assert_eq!((gpu.n_past_of(0), gpu.n_past_of(1), gpu.n_past_of(2)), (16, 47, 29));

        // A copied sequence continues as its source: same token, same logits.
        let mut two = GpuSession::with_sequences(&gm, &params, 2).unwrap();
        two.eval_seq(0, &prompts[1], Logits::None).unwrap();
        two.copy_sequence(0, 1).unwrap();
        assert_eq!(two.n_past_of(1), prompts[1].len());
        let t = steps[0][1];
        let g = two.eval_parallel(&[t, t]).unwrap().to_vec();
        let (a, b) = g.split_at(n_vocab);
        assert!(nmse(a, b) <= 1e-10, "{name} {ftype}: a copied sequence differs from its source: {:.3e}", nmse(a, b));
        let mut alone = Session::new(&model, &params).unwrap();
        alone.eval(&prompts[1], Logits::None).unwrap();
        let c = alone.eval(&[t], Logits::Last).unwrap();
        let e = nmse(b, &c);
        assert!(e <= NMSE_BOUND, "{name} {ftype}: copied sequence vs CPU: NMSE {e:.3e}");

        // Errors, not panics: more tokens than sequences, a sequence out of range.
        assert!(two.eval_parallel(&[t, t, t]).is_err());
        assert!(two.eval_parallel(&[]).is_err());
        assert!(two.eval_seq(2, &[t], Logits::Last).is_err());
        assert!(two.copy_sequence(0, 5).is_err());
        println!("{name:>12} {ftype} lazy {lazy:?}: 3 sequences, worst NMSE against the CPU alone {worst:.3e}");
    }
}

/// `engine perplexity -ngl`: llama-perplexity's method on a GPU session gives the CPU's value
/// within 1% (the criterion against llama.cpp) on random-weight models and text.
#[test]
fn perplexity_on_the_gpu_matches_the_cpu() {
    let Some(_) = gpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, ftype) in [("llama-tiny", FileType::Q4KM), ("gemma3-tiny", FileType::Q8_0)] {
        let path = tiny_model(dir.path(), name, ftype, 9);
        let file = GgufFile::open(&path).unwrap();
        let model = Model::load(&file).unwrap();
        let gm = GpuModel::upload(&model, 0).unwrap();
        let n_ctx = 64;
        let params = SessionParams { n_ctx, n_batch: n_ctx, kv_type: KvType::F16, layer_kinds: None };
        let n_vocab = model.cfg.n_vocab as u64;
        let mut seed = 77u64;
        let tokens: Vec<u32> = (0..3 * n_ctx + 5)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((seed >> 33) % n_vocab) as u32
            })
            .collect();
        let mut cpu = Session::new(&model, &params).unwrap();
        let c = engine::perplexity::perplexity(&mut cpu, &tokens, Some(1), n_ctx, None, |_, _| {}).unwrap();
        let mut gpu = GpuSession::new(&gm, &params).unwrap();
        let g = engine::perplexity::perplexity(&mut gpu, &tokens, Some(1), n_ctx, None, |_, _| {}).unwrap();
        assert_eq!((c.n_chunks, c.n_scored), (g.n_chunks, g.n_scored));
        let rel = (g.ppl - c.ppl).abs() / c.ppl;
        println!("{name:>12} {ftype}: perplexity cpu {:.4} gpu {:.4} ({:.3}%)", c.ppl, g.ppl, 100.0 * rel);
        assert!(g.ppl.is_finite() && rel <= 0.01, "{name}: cpu {} gpu {}", c.ppl, g.ppl);
    }
}

/// `engine chat -ngl` goes back to the cached prefix of a conversation: the GPU session's
/// `truncate` keeps what the CPU's keeps (the same answer, then the same logits after it), and
/// refuses, as the CPU does, to go back past what a sliding window already dropped.
#[test]
fn truncate_on_the_gpu_as_on_the_cpu() {
    let Some(_) = gpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, ftype) in [("llama-tiny", FileType::Q8_0), ("gemma3-tiny", FileType::Q4KM)] {
        let path = tiny_model(dir.path(), name, ftype, 21);
        let file = GgufFile::open(&path).unwrap();
        let model = Model::load(&file).unwrap();
        let gm = GpuModel::upload(&model, 0).unwrap();
        let params = SessionParams { n_ctx: 128, n_batch: 16, kv_type: KvType::F16, layer_kinds: None };
        let mut next = tokens(0xfeed_beef, model.cfg.n_vocab);
        let prompt: Vec<u32> = (0..100).map(|_| next()).collect();
        let again: Vec<u32> = (0..5).map(|_| next()).collect();
        for keep in [99usize, 90, 60, 10] {
            let mut cpu = Session::new(&model, &params).unwrap();
            let mut gpu = GpuSession::new(&gm, &params).unwrap();
            cpu.eval(&prompt, Logits::None).unwrap();
            gpu.eval(&prompt, Logits::None).unwrap();
            let (c_ok, g_ok) = (cpu.truncate(keep), gpu.truncate(keep).unwrap());
            assert_eq!(c_ok, g_ok, "{name}: truncate to {keep}");
            assert_eq!(cpu.n_past(), gpu.n_past(), "{name}: truncate to {keep}");
            let c = cpu.eval(&again, Logits::Last).unwrap();
            let g = gpu.eval(&again, Logits::Last).unwrap();
            let e = nmse(&g, &c);
            assert!(e <= NMSE_BOUND, "{name}: after truncating to {keep}: NMSE {e:.3e}");
            println!("{name:>12} {ftype}: truncate to {keep}: {c_ok}, then NMSE {e:.2e}");
        }
    }
}
