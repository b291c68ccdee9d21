//! LightTransfer-Test on the GPU against the CPU's: the same random-weight models and prompt,
//! a probe on each session; the lazy ratios must agree within `RATIO_TOL` (the two paths
//! quantize activations differently), the chosen layers must be the same wherever the CPU's
//! ratios leave a margin of at least twice that around the cut, and decoding after the cut must
//! give the CPU's logits within the bound of `gpu_parity.rs`, with the lazy layers' caches cut
//! to sink + window (plus the GPU's batch margin). Skips (and says so) without a GPU.

mod common;

use common::{gpus, nmse, tiny_model, tokens};
use engine::gguf::GgufFile;
use engine::gpu::{GpuModel, GpuSession};
use engine::lighttransfer::{LazyProbe, Selection, StreamParams};
use engine::model::kv_cache::{KvType, LayerKind};
use engine::model::{Logits, Model, Session, SessionParams};
use engine::quant_mix::FileType;

const RATIO_TOL: f32 = 0.02;
const NMSE_BOUND: f64 = 5e-3;

#[test]
fn lighttransfer_test_on_the_gpu_chooses_as_the_cpu() {
    let Some(_) = gpus() else { return };
    let dir = tempfile::tempdir().unwrap();
    // (Gemma 3: sliding-window layers among the candidates, measured query by query, and cut to
    // streaming layers that see their sinks within the native window.)
    for (name, ftype) in [("llama-tiny", FileType::Q8_0), ("qwen2-tiny", FileType::Q4KM), ("mistral-tiny", FileType::Q4_0), ("gemma3-tiny", FileType::Q4KM)] {
        let path = tiny_model(dir.path(), name, ftype, 3);
        let file = GgufFile::open(&path).unwrap();
        let model = Model::load(&file).unwrap();
        let gm = GpuModel::upload(&model, 0).unwrap();
        let n_layer = model.cfg.n_layer;
        let params = SessionParams { n_ctx: 128, n_batch: 32, kv_type: KvType::F16, layer_kinds: None };
        let mut next = tokens(0x1234_5678_9abc_def1, model.cfg.n_vocab);
        let prompt: Vec<u32> = (0..70).map(|_| next()).collect();
        let decode: Vec<u32> = (0..6).map(|_| next()).collect();
        let stream = StreamParams { sink: 4, window: 8 };
        let cands: Vec<usize> = (0..n_layer).filter(|&il| stream.is_candidate(model.native_layer_kinds()[il], prompt.len())).collect();
        let keep_full = cands.len() / 2;
        let probe = || LazyProbe::new(n_layer, stream, 16, prompt.len(), Selection::KeepFull(keep_full));

        let mut cpu = Session::new(&model, &params).unwrap();
        cpu.cache.probe = Some(probe());
        let cpu_logits = cpu.eval(&prompt, Logits::Last).unwrap();
        let cp = cpu.cache.probe.take().unwrap();

        let mut gpu = GpuSession::new(&gm, &params).unwrap();
        gpu.probe = Some(probe());
        let gpu_logits = gpu.eval(&prompt, Logits::Last).unwrap();
        let gp = gpu.probe.take().unwrap();
        assert!(nmse(&gpu_logits, &cpu_logits) <= NMSE_BOUND, "{name}: prompt logits");

        for il in 0..n_layer {
            match (cp.ratios[il], gp.ratios[il]) {
                (Some(c), Some(g)) => assert!((c - g).abs() <= RATIO_TOL, "{name}: layer {il}: ratio cpu {c} gpu {g}"),
                (None, None) => assert!(!cands.contains(&il)),
                (c, g) => panic!("{name}: layer {il}: measured on one side only (cpu {c:?}, gpu {g:?})"),
            }
        }
        if cands.len() < 2 {
            // (Mistral's tiny preset: a sliding window no wider than sink + window, so no layer
            // could lose anything by streaming.)
            assert!(gp.made_lazy.len() == cands.len() - keep_full, "{name}: {:?}", gp.made_lazy);
            println!("{name:>12} {ftype}: {} candidates, nothing to choose", cands.len());
            continue;
        }
        let mut sorted: Vec<f32> = cp.ratios.iter().flatten().copied().collect();
        sorted.sort_by(f32::total_cmp);
        let margin = sorted[keep_full] - sorted[keep_full - 1];
        let (mut cl, mut gl) = (cp.made_lazy.clone(), gp.made_lazy.clone());
        cl.sort_unstable();
        gl.sort_unstable();
        if margin >= 2.0 * RATIO_TOL {
            assert_eq!(cl, gl, "{name}: lazy layers (ratios cpu {:?} gpu {:?})", cp.ratios, gp.ratios);
        }
        assert_eq!(gl.len(), cands.len() - keep_full);
        println!("{name:>12} {ftype}: ratios cpu {:?} gpu {:?}; lazy cpu {cl:?} gpu {gl:?}", cp.ratios, gp.ratios);

        // The cut: lazy layers hold sink + window + n_batch slots instead of n_ctx.
        let (k_row, v_row) = (model.cfg.n_head_kv * model.cfg.head_dim, model.cfg.n_head_kv * model.cfg.head_dim_v);
        let per_slot = (k_row + v_row) * 2;
        let expect = (n_layer - gl.len()) * 128 * per_slot + gl.len() * (4 + 8 + 32) * per_slot;
        assert_eq!(gpu.kv_bytes(), expect, "{name}: KV bytes after the cut");

        // Decoding after the cut: the same layers streaming on both (when they chose alike).
        if cl == gl {
            for &t in &decode {
                let c = cpu.eval(&[t], Logits::Last).unwrap();
                let g = gpu.eval(&[t], Logits::Last).unwrap();
                let e = nmse(&g, &c);
                assert!(e <= NMSE_BOUND, "{name}: decode after the cut: NMSE {e:.3e}");
            }
            let kinds: Vec<bool> = (0..n_layer).map(|il| matches!(cpu.cache.layers[il].kind, LayerKind::Streaming { .. })).collect();
            assert_eq!(kinds.iter().filter(|&&k| k).count(), gl.len());
        }
    }
}
