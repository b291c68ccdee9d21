//! `engine bench`: throughput in llama-bench's terms, so numbers compare with llama.cpp's.
//!
//! Tests: `ppN` (prompt processing: N tokens in one batch), `tgN` (text generation: N tokens one
//! at a time), `pgP,T` (both, counted together), each optionally at a depth `d` (that many tokens
//! already in the cache, not timed). Every test runs once to warm up, then `-r` times; rows give
//! mean ± standard deviation of tokens/s. `-o json` uses llama-bench's field names, plus ours.
//!
//! `--parallel N` runs each test on N sequences at once, each with its own KV cache, as
//! llama-batched-bench does: N prompts prefilled together, then N tokens per decode step in one
//! forward call (the weights are read once per step for all of them); tokens/s counts every
//! sequence's tokens, and the KV column is all N caches together. On the GPU the N prompts are
//! prefilled one after the other, a depth fill is evaluated once per test and copied into every
//! sequence and every run (llama.cpp's `llama_memory_seq_cp`), and `--parallel-fit` tests as
//! many sequences as fit in GPU memory.
//!
//! `--lazy-layers` makes the listed layers stream (sink + window) from the first token, as a
//! file's `lighttransfer.*` flags would: what the hybrid model saves in memory and time.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use engine::gguf::GgufFile;
use engine::lighttransfer::{HybridMode, HybridOptions};
use engine::model::kv_cache::{KvType, LayerKind};
use engine::model::{eval_batch, Logits, Model, Session, SessionParams};
use engine::sampling::Rng;
use serde_json::{json, Value};

use crate::common::{human_bytes, DeviceArgs};

#[derive(clap::Args)]
pub struct Args {
    /// Model files (repeat or separate with commas); default: the default model.
    #[arg(short = 'm', long = "model", value_delimiter = ',')]
    models: Vec<PathBuf>,
    /// Prompt lengths to test (0: none).
    #[arg(short = 'p', long = "n-prompt", value_delimiter = ',', default_value = "512")]
    n_prompt: Vec<usize>,
    /// Generation lengths to test (0: none).
    #[arg(short = 'n', long = "n-gen", value_delimiter = ',', default_value = "128")]
    n_gen: Vec<usize>,
    /// Prompt-then-generation tests, as PP,TG (repeatable).
    #[arg(long = "pg")]
    pg: Vec<String>,
    /// Depths: tokens already in the cache before each test.
    #[arg(short = 'd', long = "n-depth", value_delimiter = ',', default_value = "0")]
    depth: Vec<usize>,
    /// Repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    reps: u32,
    /// Thread counts to test.
    #[arg(short = 't', long = "threads", value_delimiter = ',')]
    threads: Vec<usize>,
    /// Prompt batch size.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
    /// KV cache type.
    #[arg(long = "kv-type", default_value = "f16", value_parser = ["f16", "f32"])]
    kv_type: String,
    /// Lazy fractions to test (LightTransfer-Test on the prompt, or on the depth fill for tg
    /// tests); 0 runs the model as it is. Identification time is part of the timed prompt.
    #[arg(long = "lazy", value_delimiter = ',', default_value = "0")]
    lazy: Vec<f32>,
    /// Sequence counts to test: that many sequences prefilled and decoded together.
    #[arg(long = "parallel", value_delimiter = ',', default_value = "1")]
    parallel: Vec<usize>,
    /// GPU: test as many sequences as fit in GPU memory (after the weights) instead of the
    /// `--parallel` counts.
    #[arg(long = "parallel-fit")]
    parallel_fit: bool,
    /// These layers stream (keep sink + window positions) from the first token (e.g. 0,2,4).
    #[arg(long = "lazy-layers", value_delimiter = ',')]
    lazy_layers: Option<Vec<usize>>,
    /// Sink positions lazy layers keep.
    #[arg(long = "sink", default_value_t = engine::lighttransfer::DEFAULT_SINK)]
    sink: u32,
    /// Recent positions lazy layers keep.
    #[arg(long = "window", default_value_t = engine::lighttransfer::DEFAULT_WINDOW)]
    window: u32,
    /// Output format.
    #[arg(short = 'o', long = "output", default_value = "md", value_parser = ["md", "json", "csv"])]
    output: String,
    #[command(flatten)]
    device: DeviceArgs,
}

/// One test to run.
#[derive(Clone, Copy, Debug)]
struct Test {
    n_prompt: usize,
    n_gen: usize,
    depth: usize,
}

impl Test {
    fn name(&self) -> String {
        let base = match (self.n_prompt, self.n_gen) {
            (p, 0) => format!("pp{p}"),
            (0, g) => format!("tg{g}"),
            (p, g) => format!("pp{p}+tg{g}"),
        };
        if self.depth > 0 {
            format!("{base} @ d{}", self.depth)
        } else {
            base
        }
    }
}

/// What a row of results says.
struct Row {
    fields: Value,
}

const BUILD_COMMIT: &str = env!("ENGINE_BUILD_COMMIT");

fn cpu_info() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1)).map(|s| s.trim().to_string()))
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// llama.cpp's name for a `general.file_type`.
fn ftype_name(ftype: Option<u32>) -> &'static str {
    match ftype {
        Some(0) => "all F32",
        Some(1) => "F16",
        Some(2) => "Q4_0",
        Some(3) => "Q4_1",
        Some(7) => "Q8_0",
        Some(8) => "Q5_0",
        Some(9) => "Q5_1",
        Some(10) => "Q2_K - Medium",
        Some(11) => "Q3_K - Small",
        Some(12) => "Q3_K - Medium",
        Some(13) => "Q3_K - Large",
        Some(14) => "Q4_K - Small",
        Some(15) => "Q4_K - Medium",
        Some(16) => "Q5_K - Small",
        Some(17) => "Q5_K - Medium",
        Some(18) => "Q6_K",
        Some(25) => "IQ4_NL - 4.5 bpw",
        Some(30) => "IQ4_XS - 4.25 bpw",
        Some(32) => "BF16",
        _ => "unknown type",
    }
}

/// llama-bench's `model_type`: architecture, size label, file type. Files without
/// `general.size_label` (random-weight ones, say) get a label from the parameter count.
fn model_type(file: &GgufFile, arch: &str, n_params: u64) -> String {
    let size = match file.get_str("general.size_label").ok().flatten() {
        Some(label) => label.to_string(),
        None => size_label(n_params),
    };
    let ftype = file.get_as::<u32>("general.file_type").ok().flatten();
    format!("{arch} {size} {}", ftype_name(ftype))
}

/// A parameter count as a size label: `8.0B`, `1.2B`, `268M`.
fn size_label(n_params: u64) -> String {
    let n = n_params as f64;
    if n >= 1e9 {
        format!("{:.1}B", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.0}M", n / 1e6)
    } else {
        format!("{:.0}K", n / 1e3)
    }
}

fn mean_std(samples: &[f64]) -> (f64, f64) {
    let n = samples.len() as f64;
    let mean = samples.iter().sum::<f64>() / n;
    let var = if samples.len() > 1 { samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Runs one test once on `n_seq` sequences together; returns tokens/s (all sequences' tokens)
/// and the KV bytes of all caches. With a hybrid `mode`, each sequence's layers are chosen on its
/// depth fill (for tg) or on its timed prompt (for pp), from fresh sessions.
fn run_once(
    model: &Model<'_>,
    params: &SessionParams,
    mode: &HybridMode,
    t: &Test,
    n_seq: usize,
    rng: &mut Rng,
) -> anyhow::Result<(f64, u64)> {
    let n_vocab = model.cfg.n_vocab as u64;
    let native = model.native_layer_kinds();
    let mut random = |n: usize| -> Vec<u32> { (0..n).map(|_| (rng.next_u64() % n_vocab) as u32).collect() };
    let mut sessions: Vec<Session> = (0..n_seq).map(|_| Session::new(model, params)).collect::<Result<_, _>>()?;
    if t.depth > 0 {
        for s in &mut sessions {
            let fill = random(t.depth);
            s.cache.probe = mode.probe(&native, t.depth);
            s.eval(&fill, Logits::None)?;
            s.cache.probe = None;
        }
    }
    let prompts: Vec<Vec<u32>> = (0..n_seq).map(|_| random(t.n_prompt)).collect();
    let tokens: Vec<[u32; 1]> = (0..n_seq).map(|_| [random(1)[0]]).collect();
    if t.depth == 0 && t.n_prompt > 0 {
        for s in &mut sessions {
            s.cache.probe = mode.probe(&native, t.n_prompt);
        }
    }
    let start = Instant::now();
    if n_seq == 1 {
        // One sequence: the session's own path (layer-major when a probe is set).
        let s = &mut sessions[0];
        if t.n_prompt > 0 {
            s.eval(&prompts[0], Logits::Last)?;
        }
        for _ in 0..t.n_gen {
            s.eval(&tokens[0], Logits::Last)?;
        }
    } else {
        let mut refs: Vec<&mut Session> = sessions.iter_mut().collect();
        if t.n_prompt > 0 {
            let p: Vec<&[u32]> = prompts.iter().map(|p| p.as_slice()).collect();
            eval_batch(&mut refs, &p, Logits::Last)?;
        }
        let step: Vec<&[u32]> = tokens.iter().map(|t| t.as_slice()).collect();
        for _ in 0..t.n_gen {
            eval_batch(&mut refs, &step, Logits::Last)?;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let kv: u64 = sessions.iter().map(|s| s.cache.bytes() as u64).sum();
    Ok(((n_seq * (t.n_prompt + t.n_gen)) as f64 / secs.max(1e-9), kv))
}

/// A test's sessions on the GPU: `n_seq` sequences, plus one holding the depth fill (evaluated
/// once, copied into the others before every run).
struct GpuBench<'m> {
    session: engine::gpu::GpuSession<'m>,
    n_seq: usize,
    depth_filled: bool,
}

impl<'m> GpuBench<'m> {
    fn new(model: &'m engine::gpu::GpuModel, params: &SessionParams, t: &Test, n_seq: usize) -> anyhow::Result<GpuBench<'m>> {
        let extra = usize::from(t.depth > 0);
        let session = engine::gpu::GpuSession::with_sequences(model, params, n_seq + extra)?;
        Ok(GpuBench { session, n_seq, depth_filled: false })
    }

    /// [`run_once`] on the GPU. With LightTransfer-Test (`mode`), the layers are chosen on the
    /// depth fill (for tg) or on the first sequence's timed prompt (for pp: the caller gives
    /// each run a fresh bench).
    fn run_once(&mut self, t: &Test, mode: &HybridMode, native: &[LayerKind], rng: &mut Rng) -> anyhow::Result<(f64, u64)> {
        let s = &mut self.session;
        let n_vocab = s.model.cfg.n_vocab as u64;
        let mut random = |n: usize| -> Vec<u32> { (0..n).map(|_| (rng.next_u64() % n_vocab) as u32).collect() };
        if t.depth > 0 {
            let template = self.n_seq;
            if !self.depth_filled {
                s.probe = mode.probe(native, t.depth);
                s.eval_seq(template, &random(t.depth), Logits::None)?;
                s.probe = None;
                self.depth_filled = true;
            }
            for seq in 0..self.n_seq {
                s.copy_sequence(template, seq)?;
            }
        } else {
            s.reset()?;
            if t.n_prompt > 0 {
                s.probe = mode.probe(native, t.n_prompt);
            }
        }
        let prompts: Vec<Vec<u32>> = (0..self.n_seq).map(|_| random(t.n_prompt)).collect();
        let tokens: Vec<u32> = (0..self.n_seq).map(|_| random(1)[0]).collect();
        s.model.be.synchronize().map_err(engine::gpu::GpuError::from)?;
        let start = Instant::now();
        if t.n_prompt > 0 {
            for (seq, p) in prompts.iter().enumerate() {
                s.eval_seq(seq, p, Logits::Last)?;
            }
        }
        for _ in 0..t.n_gen {
            if self.n_seq == 1 {
                s.decode_step(0, tokens[0])?;
            } else {
                s.eval_parallel(&tokens)?;
            }
        }
        let secs = start.elapsed().as_secs_f64();
        s.probe = None;
        // The KV of the sequences tested (not the depth template).
        let kv = s.kv_bytes() as u64 / s.n_seq() as u64 * self.n_seq as u64;
        Ok(((self.n_seq * (t.n_prompt + t.n_gen)) as f64 / secs.max(1e-9), kv))
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let mut tests: Vec<Test> = Vec::new();
    for &d in &args.depth {
        tests.extend(args.n_prompt.iter().filter(|&&p| p > 0).map(|&p| Test { n_prompt: p, n_gen: 0, depth: d }));
        tests.extend(args.n_gen.iter().filter(|&&g| g > 0).map(|&g| Test { n_prompt: 0, n_gen: g, depth: d }));
        for pg in &args.pg {
            let (p, g) = pg.split_once(',').with_context(|| format!("--pg {pg:?}: expected PP,TG"))?;
            let p: usize = p.trim().parse().with_context(|| format!("--pg {pg:?}: {p:?} is not a count"))?;
            let g: usize = g.trim().parse().with_context(|| format!("--pg {pg:?}: {g:?} is not a count"))?;
            tests.push(Test { n_prompt: p, n_gen: g, depth: d });
        }
    }
    if tests.is_empty() {
        bail!("nothing to run: every -p, -n and --pg is empty or 0");
    }
    if args.batch == 0 {
        bail!("--batch-size must be at least 1");
    }
    let models = if args.models.is_empty() { vec![crate::resolve_model(None)?] } else { args.models.clone() };
    let threads = if args.threads.is_empty() {
        vec![std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)]
    } else {
        args.threads.clone()
    };
    if threads.contains(&0) {
        bail!("--threads must be at least 1");
    }
    if args.parallel.contains(&0) {
        bail!("--parallel must be at least 1");
    }

    let md = args.output == "md";
    let stdout = std::io::stdout();
    // (The table's header comes with its first row, so a failure before any leaves no table.)
    let mut header = md;
    let mut rows: Vec<Row> = Vec::new();
    let mut rng = Rng::new(1234);
    for path in &models {
        let path = crate::resolve_model(Some(path.clone()))?;
        let file = GgufFile::open(&path).with_context(|| format!("loading {}", path.display()))?;
        let model = Model::load(&file).with_context(|| format!("loading {}", path.display()))?;
        let arch = model.cfg.arch.name();
        let n_params: u64 = file.tensors().iter().map(|t| t.n_elements()).sum();
        let mtype = model_type(&file, arch, n_params);
        let size = model.weight_bytes();
        let gpu = if args.device.cuda(model.cfg.n_layer)? {
            Some(engine::gpu::GpuModel::upload(&model, 0).context("loading the model onto the GPU")?)
        } else {
            None
        };
        let (backend, gpu_info) = match &gpu {
            Some(g) => ("CUDA", format!("{}; prefill: {}", g.device_name(), g.prefill_path())),
            None => ("CPU", String::new()),
        };
        for &nt in &threads {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(nt).build().context("starting the thread pool")?;
            // (lazy fraction, sequences or None for "as many as fit", test)
            let mut cases: Vec<(f32, Option<usize>, &Test)> = Vec::new();
            for &lazy in &args.lazy {
                if args.parallel_fit {
                    cases.extend(tests.iter().map(|t| (lazy, None, t)));
                } else {
                    for &n_seq in &args.parallel {
                        cases.extend(tests.iter().map(|t| (lazy, Some(n_seq), t)));
                    }
                }
            }
            for (lazy, n_seq, t) in cases {
                let n_ctx = t.depth + t.n_prompt + t.n_gen + 1;
                let mut params = SessionParams {
                    n_ctx,
                    n_batch: args.batch,
                    kv_type: if args.kv_type == "f32" { KvType::F32 } else { KvType::F16 },
                    layer_kinds: None,
                };
                let mode = if lazy > 0.0 || args.lazy_layers.is_some() {
                    let opts = HybridOptions {
                        lazy_fraction: (lazy > 0.0).then_some(lazy),
                        sink: Some(args.sink),
                        window: Some(args.window),
                        ignore_file: true,
                        lazy_layers: args.lazy_layers.clone(),
                        ..HybridOptions::default()
                    };
                    opts.resolve(None, &model.native_layer_kinds())?
                } else {
                    HybridMode::Native
                };
                if let HybridMode::Static { kinds, .. } = &mode {
                    params.layer_kinds = Some(kinds.clone());
                }
                let n_seq = match (n_seq, &gpu) {
                    (Some(n), _) => n,
                    (None, Some(g)) => {
                        let extra = usize::from(t.depth > 0);
                        let fit = engine::gpu::GpuSession::fit_sequences(g, &params)?.saturating_sub(extra);
                        if fit == 0 {
                            bail!("{}: not one sequence of {n_ctx} positions fits in GPU memory", t.name());
                        }
                        fit
                    }
                    (None, None) => bail!("--parallel-fit is for the GPU (-ngl / --device cuda)"),
                };
                let runs: Vec<(f64, u64)> = if let Some(g) = &gpu {
                    // LightTransfer-Test on a timed prompt cuts layers: a fresh session each run.
                    let fresh = matches!(mode, HybridMode::Test { .. }) && t.depth == 0;
                    let native = model.native_layer_kinds();
                    let mut b = GpuBench::new(g, &params, t, n_seq)?;
                    b.run_once(t, &mode, &native, &mut rng)?; // warm-up
                    let mut runs = Vec::new();
                    for _ in 0..args.reps {
                        if fresh {
                            drop(b);
                            b = GpuBench::new(g, &params, t, n_seq)?;
                        }
                        runs.push(b.run_once(t, &mode, &native, &mut rng)?);
                    }
                    runs
                } else {
                    pool.install(|| -> anyhow::Result<Vec<(f64, u64)>> {
                        run_once(&model, &params, &mode, t, n_seq, &mut rng)?; // warm-up
                        (0..args.reps).map(|_| run_once(&model, &params, &mode, t, n_seq, &mut rng)).collect()
                    })?
                };
                let samples: Vec<f64> = runs.iter().map(|r| r.0).collect();
                let (avg, std) = mean_std(&samples);
                let kv = runs.last().map(|r| r.1).unwrap_or(0);
                let mut test_name = t.name();
                if lazy > 0.0 {
                    test_name = format!("{test_name} lazy{lazy}");
                }
                if let (HybridMode::Static { lazy, .. }, 0.0) = (&mode, lazy) {
                    test_name = format!("{test_name} lazy{}/{}", lazy.len(), model.cfg.n_layer);
                }
                if n_seq > 1 {
                    test_name = format!("{test_name} x{n_seq}");
                }
                if md {
                    let mut out = stdout.lock();
                    if std::mem::take(&mut header) {
                        writeln!(out, "| model                          |       size |     params | backend    | threads |            test |                  t/s |   kv cache |")?;
                        writeln!(out, "| ------------------------------ | ---------: | ---------: | ---------- | ------: | --------------: | -------------------: | ---------: |")?;
                    }
                    writeln!(
                        out,
                        "| {:<30} | {:>10} | {:>8.2} M | {:<10} | {:>7} | {:>15} | {:>20} | {:>10} |",
                        mtype,
                        human_bytes(size),
                        n_params as f64 / 1e6,
                        backend,
                        nt,
                        test_name,
                        format!("{avg:.2} ± {std:.2}"),
                        human_bytes(kv)
                    )?;
                    out.flush()?;
                }
                rows.push(Row {
                    fields: json!({
                        "build_commit": BUILD_COMMIT,
                        "cpu_info": cpu_info(),
                        "gpu_info": gpu_info,
                        "backends": backend,
                        "model_filename": path.display().to_string(),
                        "model_type": mtype,
                        "model_size": size,
                        "model_n_params": n_params,
                        "n_batch": args.batch,
                        "n_threads": nt,
                        "type_k": args.kv_type,
                        "type_v": args.kv_type,
                        "n_prompt": t.n_prompt,
                        "n_gen": t.n_gen,
                        "n_depth": t.depth,
                        "avg_ts": avg,
                        "stddev_ts": std,
                        "samples_ts": samples,
                        "kv_bytes": kv,
                        "lazy_fraction": lazy,
                        "lazy_layers": match &mode { HybridMode::Static { lazy, .. } => json!(lazy), _ => json!(null) },
                        "n_parallel": n_seq,
                    }),
                });
            }
        }
    }
    match args.output.as_str() {
        "json" => {
            let all: Vec<Value> = rows.into_iter().map(|r| r.fields).collect();
            println!("{}", serde_json::to_string_pretty(&all)?);
        }
        "csv" => {
            const COLS: [&str; 17] = [
                "build_commit",
                "cpu_info",
                "gpu_info",
                "backends",
                "model_filename",
                "model_type",
                "model_size",
                "model_n_params",
                "n_threads",
                "n_prompt",
                "n_gen",
                "n_depth",
                "avg_ts",
                "stddev_ts",
                "kv_bytes",
                "lazy_fraction",
                "n_parallel",
            ];
            println!("{}", COLS.join(","));
            for r in rows {
                let cells: Vec<String> = COLS
                    .iter()
                    .map(|c| match &r.fields[*c] {
                        Value::String(s) => format!("\"{}\"", s.replace('"', "\"\"")),
                        v => v.to_string(),
                    })
                    .collect();
                println!("{}", cells.join(","));
            }
        }
        _ => {
            println!();
            let gpus: Vec<String> = rows.iter().filter_map(|r| r.fields["gpu_info"].as_str().filter(|s| !s.is_empty()).map(String::from)).collect();
            println!("build: {BUILD_COMMIT}, cpu: {}, gpu: {}", cpu_info(), gpus.first().map_or("none", |s| s.as_str()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_from_parameter_counts() {
        assert_eq!(size_label(8_030_261_248), "8.0B");
        assert_eq!(size_label(1_235_814_400), "1.2B");
        assert_eq!(size_label(268_098_176), "268M");
        assert_eq!(size_label(52_000), "52K");
    }
}
