//! `engine perplexity -m MODEL -f FILE -c CTX`: llama.cpp's perplexity method and output, so
//! the two can be compared on the same text (`Final estimate: PPL = <value> +/- <stderr>`).

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use engine::model::{Model, Session};
use engine::tokenizer::TokenizeOptions;

use crate::common::{describe_hybrid, init_threads, open_model, tokenizer, DeviceArgs, HybridArgs, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Hybrid layers: stored flags or --lazy-layers stream from the first token of every chunk
    /// (test-time selection, --lazy, is for generation, not perplexity).
    #[command(flatten)]
    hybrid: HybridArgs,
    /// The text to score.
    #[arg(short = 'f', long = "file")]
    file: PathBuf,
    /// Score at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
    #[command(flatten)]
    device: DeviceArgs,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    init_threads(args.model.threads)?;
    let text = std::fs::read_to_string(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let file = open_model(&args.model)?;
    let tok = tokenizer(&file)?;
    let mut model = Model::load(&file).context("loading the model")?;
    args.model.apply_numerics(&mut model)?;
    // -c is the chunk size here, as in llama-perplexity (default 512 there too).
    let mode = args.hybrid.mode(&file, &model)?;
    if matches!(mode, engine::lighttransfer::HybridMode::Test { .. }) {
        anyhow::bail!("perplexity takes a fixed lazy set (--lazy-layers, or the file's flags), not --lazy/--lazy-threshold");
    }
    if let Some(h) = describe_hybrid(&mode, None) {
        eprintln!("hybrid: {h}");
    }
    let mut params = args.model.session_params(model.cfg.n_ctx_train, 512);
    params.layer_kinds = Some(mode.kinds(&model.native_layer_kinds()));
    let n_ctx = params.n_ctx;
    params.n_batch = params.n_batch.max(n_ctx);
    let gpu = if args.device.cuda(model.cfg.n_layer)? {
        let g = engine::gpu::GpuModel::upload(&model, 0).context("loading the model onto the GPU")?;
        eprintln!("device: CUDA, {}", g.device_name());
        Some(g)
    } else {
        None
    };
    let mut cpu_session;
    let mut gpu_session;
    let session: &mut dyn engine::generate::Evaluate = match &gpu {
        Some(g) => {
            gpu_session = engine::gpu::GpuSession::new(g, &params)?;
            &mut gpu_session
        }
        None => {
            cpu_session = Session::new(&model, &params)?;
            &mut cpu_session
        }
    };
    let t = Instant::now();
    let tokens = tok.tokenize(&text, TokenizeOptions { add_special: true, parse_special: false });
    eprintln!("tokenized {} bytes into {} tokens in {:.0} ms", text.len(), tokens.len(), t.elapsed().as_secs_f64() * 1e3);
    let bos = if tok.add_bos() { tok.bos() } else { None };
    eprintln!("calculating perplexity over {} chunks, n_ctx={n_ctx}", (tokens.len() / n_ctx).min(args.chunks.unwrap_or(usize::MAX)));
    let t = Instant::now();
    let result = engine::perplexity::perplexity(session, &tokens, bos, n_ctx, args.chunks, |i, ppl| {
        print!("[{}]{ppl:.4},", i + 1);
        let _ = std::io::stdout().flush();
    })?;
    println!();
    eprintln!("{} tokens scored in {:.1} s", result.n_scored, t.elapsed().as_secs_f64());
    println!("Final estimate: PPL = {:.4} +/- {:.5}", result.ppl, result.stderr);
    Ok(())
}
