//! `engine run`: one-shot generation. Only the generated text goes to stdout, streamed as it
//! comes; the summary (speeds, KV cache) goes to stderr.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use engine::generate::{generate, Evaluate, GenStats, GenerateParams};
use engine::model::{Model, Session};
use engine::sampling::Sampler;
use engine::tokenizer::{TokenizeOptions, Tokenizer};

use crate::common::{describe_hybrid, human_bytes, init_threads, open_model, tokenizer, DeviceArgs, HybridArgs, ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    hybrid: HybridArgs,
    #[command(flatten)]
    device: DeviceArgs,
    /// The prompt.
    #[arg(short = 'p', long = "prompt", conflicts_with = "file")]
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Tokens to generate (-1: until end of generation or a full context).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128, allow_negative_numbers = true)]
    n_predict: i64,
    /// Do not print the prompt before the generated text.
    #[arg(long)]
    no_display_prompt: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let prompt = match (&args.prompt, &args.file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading the prompt from {}", f.display()))?,
        (None, None) => anyhow::bail!("give a prompt with -p TEXT or -f FILE"),
    };
    let n_predict = match args.n_predict {
        -1 => None,
        n if n >= 0 => Some(n as usize),
        n => anyhow::bail!("-n {n}: use a count of tokens, or -1 for no limit"),
    };
    let sampler_params = args.sampling.params()?;
    let threads = init_threads(args.model.threads)?;
    let file = open_model(&args.model)?;
    let tok = tokenizer(&file)?;
    let mut model = Model::load(&file).context("loading the model")?;
    args.model.apply_numerics(&mut model)?;
    let mode = args.hybrid.mode(&file, &model)?;
    let native = model.native_layer_kinds();
    let mut params = args.model.session_params(model.cfg.n_ctx_train, 4096);
    params.layer_kinds = Some(mode.kinds(&native));
    let mut sampler = Sampler::new(sampler_params.clone())?;
    let ids = tok.tokenize(&prompt, TokenizeOptions::default());
    let cuda = args.device.cuda(model.cfg.n_layer)?;
    if cuda && model.llamacpp_numerics {
        anyhow::bail!("--numerics llamacpp computes on the CPU; run it without -ngl");
    }
    if cuda {
        let gpu = engine::gpu::GpuModel::upload(&model, 0).context("loading the model onto the GPU")?;
        let mut session = engine::gpu::GpuSession::new(&gpu, &params)?;
        session.probe = mode.probe(&native, ids.len());
        let display = (!args.no_display_prompt).then_some(prompt.as_str());
        let stats = stream_to_stdout(&mut session, &tok, &mut sampler, display, &ids, n_predict)?;
        let probe = session.probe.take();
        eprintln!();
        eprintln!("model:      {} ({}, {})", file.path().display(), model.cfg.describe(), human_bytes(gpu.weight_bytes()));
        eprintln!("device:     CUDA, {}", gpu.device_name());
        eprintln!("prompt:     {} tokens, {:.2} tokens/s", stats.n_prompt, stats.prompt_tps());
        eprintln!("generation: {} tokens, {:.2} tokens/s ({:?})", stats.n_gen, stats.gen_tps(), stats.stop);
        eprintln!("kv cache:   {} for {} positions (f16, on the GPU)", human_bytes(session.kv_bytes() as u64), session.n_ctx());
        if let Some(h) = describe_hybrid(&mode, probe.as_ref()) {
            eprintln!("hybrid:     {h}");
        }
        return Ok(());
    }
    let mut session = Session::new(&model, &params)?;
    session.cache.probe = mode.probe(&native, ids.len());
    let display = (!args.no_display_prompt).then_some(prompt.as_str());
    let stats = stream_to_stdout(&mut session, &tok, &mut sampler, display, &ids, n_predict)?;
    let probe = session.cache.probe.take();

    eprintln!();
    eprintln!("model:      {} ({}, {})", file.path().display(), model.cfg.describe(), human_bytes(model.weight_bytes()));
    eprintln!("prompt:     {} tokens, {:.2} tokens/s", stats.n_prompt, stats.prompt_tps());
    eprintln!("generation: {} tokens, {:.2} tokens/s ({:?})", stats.n_gen, stats.gen_tps(), stats.stop);
    let kv: Vec<String> = session
        .cache
        .bytes_by_kind()
        .iter()
        .map(|(kind, layers, bytes)| format!("{kind} {layers} layers {}", human_bytes(*bytes as u64)))
        .collect();
    eprintln!("kv cache:   {} for {} positions ({})", human_bytes(session.cache.bytes() as u64), session.n_ctx(), kv.join(", "));
    eprintln!(
        "kv memory:  {} allocated, peak {} (a layer allocates at its first token)",
        human_bytes(session.cache.resident_bytes() as u64),
        human_bytes(session.cache.peak_bytes() as u64)
    );
    if let Some(h) = describe_hybrid(&mode, probe.as_ref()) {
        eprintln!("hybrid:     {h}");
    }
    eprintln!(
        "sampling:   seed {}, temp {}, top-k {}, top-p {}, min-p {}; {threads} threads",
        sampler_params.seed, sampler_params.temp, sampler_params.top_k, sampler_params.top_p, sampler_params.min_p
    );
    Ok(())
}

/// Generates after the prompt `ids`, streaming the text to stdout as it comes (after the prompt's
/// text when `display` gives it), and a final newline.
fn stream_to_stdout(
    session: &mut impl Evaluate,
    tok: &Tokenizer,
    sampler: &mut Sampler,
    display: Option<&str>,
    ids: &[u32],
    n_predict: Option<usize>,
) -> anyhow::Result<GenStats> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if let Some(prompt) = display {
        write!(out, "{prompt}")?;
        out.flush()?;
    }
    let stats = generate(session, tok, sampler, ids, &GenerateParams { n_predict, stop: None }, |text| {
        out.write_all(text.as_bytes())?;
        out.flush()
    })?;
    writeln!(out)?;
    Ok(stats)
}
