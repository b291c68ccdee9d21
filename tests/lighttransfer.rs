//! LightTransfer end to end: streaming layers are exact (batched prefill equals token-by-token
//! decoding) and hold exactly sink + window positions; the KV saving at 32K context; `engine lazy`
//! writes flags that the PyPI `gguf` package reads and that `engine run` then uses with no
//! identification step; `engine run --lazy` chooses on the prompt.

use std::process::Command;

use engine::gguf::GgufFile;
use engine::lighttransfer::{HybridOptions, HybridSpec, StreamParams};
use engine::model::kv_cache::{KvCache, KvCacheParams, KvType, LayerKind};
use engine::model::{Logits, Model, Session, SessionParams};
use engine_tests::{bin::engine_bin, default_model};

fn last_logits(model: &Model<'_>, kinds: &[LayerKind], tokens: &[u32], n_batch: usize) -> Vec<f32> {
    let params = SessionParams { n_ctx: 256, n_batch, kv_type: KvType::F32, layer_kinds: Some(kinds.to_vec()) };
    let mut s = Session::new(model, &params).unwrap();
    let mut out = Vec::new();
    for chunk in tokens.chunks(n_batch) {
        out = s.eval(chunk, Logits::Last).unwrap();
    }
    out
}

#[test]
fn streaming_batched_prefill_equals_token_by_token_decoding() {
    let Some(path) = default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    model.exact_matmul = true;
    let kinds: Vec<LayerKind> = model.native_layer_kinds().iter().map(|k| k.streaming(4, 24)).collect();
    let tokens: Vec<u32> = (0..80u32).map(|i| 2 + (i * 7919) % 5000).collect();
    let batched = last_logits(&model, &kinds, &tokens, 80);
    let stepwise = last_logits(&model, &kinds, &tokens, 1);
    let worst = batched.iter().zip(&stepwise).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 2e-3, "batched and token-by-token logits differ by {worst}");
    // And streaming really changes the result compared with full attention at this length.
    let native = last_logits(&model, &model.native_layer_kinds(), &tokens, 80);
    let diff = batched.iter().zip(&native).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-2, "streaming layers gave the same logits as full attention ({diff})");
}

#[test]
fn streaming_sliding_window_layers_see_sinks_only_within_their_window() {
    // gemma3-tiny: a sliding window of 8 on 5 of its 6 layers. Their streaming form keeps the
    // native window as a bound on the sinks too.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma3-tiny.gguf");
    let preset = engine::synth::preset("gemma3-tiny").unwrap();
    engine::synth::synthesize(&engine::synth::SynthParams { preset, ftype: engine::quant_mix::FileType::F32, seed: 7, fast: false }, &path, None).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let mut model = Model::load(&file).unwrap();
    model.exact_matmul = true;
    let native = model.native_layer_kinds();
    let kinds: Vec<LayerKind> = native.iter().map(|k| k.streaming(2, 3)).collect();
    assert!(kinds.contains(&LayerKind::Streaming { sink: 2, window: 3, native_window: Some(8) }), "{kinds:?}");
    let tokens: Vec<u32> = (0..40u32).map(|i| 1 + (i * 37) % 300).collect();
    // Exact under batching: the whole prompt at once equals one token at a time.
    let batched = last_logits(&model, &kinds, &tokens, 40);
    let stepwise = last_logits(&model, &kinds, &tokens, 1);
    let worst = batched.iter().zip(&stepwise).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "batched and token-by-token logits differ by {worst}");
    // Sinks over the whole prefix (what a full layer's streaming form sees) is another model.
    let over_prefix: Vec<LayerKind> = native.iter().map(|_| LayerKind::Full.streaming(2, 3)).collect();
    let other = last_logits(&model, &over_prefix, &tokens, 40);
    let diff = batched.iter().zip(&other).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(diff > 1e-3, "sinks beyond the native window changed nothing ({diff})");
    // A streaming window as wide as the native one adds nothing to what the layer sees: the
    // native model exactly.
    let wide: Vec<LayerKind> = native.iter().map(|&k| if k == LayerKind::Full { k } else { k.streaming(2, 8) }).collect();
    let same = last_logits(&model, &wide, &tokens, 40);
    let reference = last_logits(&model, &native, &tokens, 40);
    let worst = same.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "streaming(2, 8) of a window-8 layer differs from it by {worst}");
}

#[test]
fn lazy_layers_allocate_exactly_sink_plus_window() {
    let Some(path) = default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let model = Model::load(&file).unwrap();
    let mut lazy = vec![false; model.cfg.n_layer];
    lazy[5] = true;
    lazy[11] = true;
    let spec = HybridSpec { lazy, stream: StreamParams { sink: 4, window: 60 }, ratios: None, calibration: None };
    let native = model.native_layer_kinds();
    let params = SessionParams { n_ctx: 8192, layer_kinds: Some(spec.layer_kinds(&native)), ..SessionParams::default() };
    let s = Session::new(&model, &params).unwrap();
    for (il, layer) in s.cache.layers.iter().enumerate() {
        match il {
            5 | 11 => {
                assert_eq!(layer.n_slots(), 64, "layer {il}");
                assert_eq!(layer.bytes(), 64 * 2 * 256 * 2, "layer {il}: 64 slots of K and V, 256 f16 each");
            }
            17 => assert_eq!(layer.n_slots(), 8192, "a full layer holds the whole context"),
            _ => assert_eq!(layer.n_slots(), 512 + 512, "native sliding window + batch margin"),
        }
    }
}

#[test]
fn half_lazy_at_32k_needs_at_most_55_percent_of_the_kv_bytes() {
    // A Llama-style model: every layer full attention (32 layers, 8 KV heads of 128, f16).
    let params = KvCacheParams { n_ctx: 32768, n_batch: 512, ty: KvType::F16, k_row: 1024, v_row: 1024 };
    let full = vec![LayerKind::Full; 32];
    let stream = StreamParams::default();
    // Half of the candidates (all 32 layers are candidates at 32K) lazy.
    let lazy = engine::lighttransfer::choose_lazy(&vec![Some(0.5f32); 32], 0.5);
    let hybrid: Vec<LayerKind> = lazy.iter().map(|&l| if l { stream.kind(LayerKind::Full) } else { LayerKind::Full }).collect();
    let bytes = |kinds: &[LayerKind]| -> u64 {
        // Sizes from the allocator's own arithmetic, on a narrow row so the test stays small.
        let small = KvCacheParams { k_row: 8, v_row: 8, ..params.clone() };
        KvCache::new(&small, kinds, None).unwrap().bytes() as u64 * (params.k_row / 8) as u64
    };
    let (b_full, b_hybrid) = (bytes(&full), bytes(&hybrid));
    assert_eq!(b_full, 32 * 32768 * 2048 * 2);
    let ratio = b_hybrid as f64 / b_full as f64;
    assert!(ratio <= 0.55, "hybrid KV is {:.1}% of full", ratio * 100.0);
    eprintln!("32K context, 16 of 32 layers lazy: {} MiB vs {} MiB ({:.1}%)", b_hybrid >> 20, b_full >> 20, ratio * 100.0);
}

#[test]
fn options_resolve_as_documented() {
    let native = vec![LayerKind::Full; 4];
    let spec = HybridSpec { lazy: vec![true, false, true, false], stream: StreamParams { sink: 2, window: 10 }, ratios: None, calibration: None };
    // The file's flags apply; the command line overrides the window.
    let opts = HybridOptions { window: Some(20), ..HybridOptions::default() };
    match opts.resolve(Some(&spec), &native).unwrap() {
        engine::lighttransfer::HybridMode::Static { kinds, lazy } => {
            assert_eq!(lazy, vec![0, 2]);
            assert_eq!(kinds[0], LayerKind::Streaming { sink: 2, window: 20, native_window: None });
        }
        m => panic!("{m:?}"),
    }
    // --no-hybrid ignores them; --lazy 0 too.
    let off = HybridOptions { ignore_file: true, ..HybridOptions::default() };
    assert_eq!(off.resolve(Some(&spec), &native).unwrap(), engine::lighttransfer::HybridMode::Native);
    let zero = HybridOptions { lazy_fraction: Some(0.0), ..HybridOptions::default() };
    assert_eq!(zero.resolve(Some(&spec), &native).unwrap(), engine::lighttransfer::HybridMode::Native);
    // Out-of-range settings are errors.
    for bad in [
        HybridOptions { lazy_fraction: Some(1.5), ..HybridOptions::default() },
        HybridOptions { threshold: Some(-0.1), ..HybridOptions::default() },
        HybridOptions { w_last: 0, ..HybridOptions::default() },
        HybridOptions { lazy_layers: Some(vec![9]), ..HybridOptions::default() },
    ] {
        assert!(bad.resolve(None, &native).is_err(), "{bad:?}");
    }
}

#[test]
fn engine_lazy_writes_flags_gguf_py_reads_and_run_uses_them() {
    let Some(path) = default_model() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("hybrid.gguf");
    let calib = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/text/gpl-3.txt");
    let r = Command::new(engine_bin())
        .args(["lazy", "-m"])
        .arg(&path)
        .args(["--calib", calib, "--ratio", "0.5", "--sink", "4", "--window", "60", "--chunk", "128", "--chunks", "2", "-o"])
        .arg(&out)
        .arg("--report")
        .arg(dir.path().join("report.png"))
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let table = String::from_utf8_lossy(&r.stdout);
    assert!(table.contains("9 of 18 candidate layers lazy"), "{table}");
    let png = std::fs::read(dir.path().join("report.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "the report is a PNG");
    // IHDR: width = 2 * 20 + 18 * (24 + 8) = 616, height = 340.
    assert_eq!(u32::from_be_bytes(png[16..20].try_into().unwrap()), 616);
    assert_eq!(u32::from_be_bytes(png[20..24].try_into().unwrap()), 340);

    // Tensors byte-identical, flags as the spec says.
    let (a, b) = (GgufFile::open(&path).unwrap(), GgufFile::open(&out).unwrap());
    for (x, y) in a.tensors().iter().zip(b.tensors()) {
        assert_eq!((x.name.as_str(), a.tensor_data(x)), (y.name.as_str(), b.tensor_data(y)));
    }
    let spec = HybridSpec::from_gguf(&b, 18).unwrap().unwrap();
    assert_eq!(spec.lazy.iter().filter(|&&l| l).count(), 9);
    assert_eq!(spec.stream, StreamParams { sink: 4, window: 60 });

    // The PyPI gguf package reads the keys intact.
    if engine_tests::python_gguf_available() {
        let py = Command::new("python3")
            .arg("-c")
            .arg(
                "import sys, gguf\nr = gguf.GGUFReader(sys.argv[1])\n\
                 f = r.fields\n\
                 print(f['lighttransfer.version'].contents(), f['lighttransfer.sink_tokens'].contents(), f['lighttransfer.window'].contents())\n\
                 print(','.join('1' if v else '0' for v in f['lighttransfer.lazy_layers'].contents()))\n\
                 print(len(f['lighttransfer.lazy_ratios'].contents()), f['lighttransfer.calibration'].contents())",
            )
            .arg(&out)
            .output()
            .unwrap();
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
        let text = String::from_utf8_lossy(&py.stdout);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "1 4 60");
        let flags: String = spec.lazy.iter().map(|&l| if l { "1" } else { "0" }).collect::<Vec<_>>().join(",");
        assert_eq!(lines[1], flags);
        assert!(lines[2].starts_with("18 calib=gpl-3.txt"), "{}", lines[2]);
    }

    // engine run uses the stored layers from the first token, with no identification.
    let r = Command::new(engine_bin()).args(["run", "-m"]).arg(&out).args(["-p", "Hello", "-n", "4", "--temp", "0"]).output().unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("hybrid:     static, lazy layers"), "{err}");
    assert!(err.contains("streaming 9 layers"), "{err}");
    assert!(!err.contains("LightTransfer-Test"), "{err}");
}

#[test]
fn run_lazy_chooses_on_the_prompt() {
    let Some(path) = default_model() else { return };
    let prompt = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/text/gpl-3.txt")).unwrap();
    let prompt: String = prompt.chars().take(800).collect();
    let r = Command::new(engine_bin())
        .args(["run", "-m"])
        .arg(&path)
        .args(["-p", &prompt, "-n", "2", "--temp", "0", "--lazy", "0.5", "--sink", "4", "--window", "60", "--no-display-prompt"])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    let err = String::from_utf8_lossy(&r.stderr);
    let line = err.lines().find(|l| l.starts_with("hybrid:")).unwrap_or_else(|| panic!("{err}"));
    assert!(line.contains("LightTransfer-Test"), "{line}");
    // 18 candidates (the prompt is longer than 64 positions), half lazy.
    let lazy = line.split("lazy layers [").nth(1).unwrap().split(']').next().unwrap();
    assert_eq!(lazy.split(',').count(), 9, "{line}");
    assert!(err.contains("streaming 9 layers"), "{err}");
}
