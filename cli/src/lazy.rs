//! `engine lazy`: LightTransfer's offline selection. Runs a calibration text in chunks, measures
//! every layer's lazy ratio at the end of each chunk, chooses the lazy set (the fraction `--ratio`
//! of the candidate layers with the highest mean ratio) and writes a copy of the model with the
//! `lighttransfer.*` flags (atomically; tensors byte-identical).

use std::path::PathBuf;

use anyhow::{bail, Context};
use engine::gguf::GgufWriter;
use engine::lighttransfer::{choose_lazy, HybridSpec, LazyProbe, Selection, StreamParams, DEFAULT_SINK, DEFAULT_WINDOW};
use engine::model::{Logits, Model, Session, SessionParams};
use engine::tokenizer::TokenizeOptions;

use crate::common::{init_threads, open_model, tokenizer, ModelArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Output GGUF file.
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Calibration text.
    #[arg(long = "calib")]
    calib: PathBuf,
    /// Fraction of the candidate layers to make lazy.
    #[arg(long = "ratio", default_value_t = 0.5)]
    ratio: f32,
    /// Sink positions a lazy layer keeps.
    #[arg(long = "sink", default_value_t = DEFAULT_SINK)]
    sink: u32,
    /// Recent positions a lazy layer keeps.
    #[arg(long = "window", default_value_t = DEFAULT_WINDOW)]
    window: u32,
    /// Queries at the end of each chunk whose attention gives the ratio.
    #[arg(long = "w-last", default_value_t = 16)]
    w_last: usize,
    /// Tokens per calibration chunk (default: 2 * (sink + window), at least 256).
    #[arg(long = "chunk")]
    chunk: Option<usize>,
    /// Use at most this many chunks.
    #[arg(long = "chunks")]
    chunks: Option<usize>,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&args.ratio) {
        bail!("--ratio {} is out of range (0 to 1)", args.ratio);
    }
    if args.window == 0 || args.w_last == 0 {
        bail!("--window and --w-last must be at least 1");
    }
    init_threads(args.model.threads)?;
    let text = std::fs::read_to_string(&args.calib).with_context(|| format!("reading {}", args.calib.display()))?;
    let file = open_model(&args.model)?;
    let tok = tokenizer(&file)?;
    let model = Model::load(&file).context("loading the model")?;
    let stream = StreamParams { sink: args.sink, window: args.window };
    let chunk = args.chunk.unwrap_or((2 * (args.sink + args.window) as usize).max(256));
    if chunk <= (args.sink + args.window) as usize {
        bail!("--chunk {chunk} must be longer than sink + window ({}): no layer would be a candidate", args.sink + args.window);
    }
    let tokens = tok.tokenize(&text, TokenizeOptions { add_special: false, parse_special: false });
    let n_chunks = (tokens.len() / chunk).min(args.chunks.unwrap_or(usize::MAX));
    if n_chunks == 0 {
        bail!("the calibration text has {} tokens, fewer than one chunk of {chunk}", tokens.len());
    }
    let native = model.native_layer_kinds();
    let n_layer = model.cfg.n_layer;
    let params = SessionParams { n_ctx: chunk + 1, n_batch: args.model.batch_size as usize, ..SessionParams::default() };
    let mut session = Session::new(&model, &params)?;
    let mut sums = vec![0f64; n_layer];
    let mut counts = vec![0usize; n_layer];
    let mut selected = vec![0usize; n_layer];
    eprintln!("calibrating on {n_chunks} chunks of {chunk} tokens (sink {}, window {}, w_last {})", stream.sink, stream.window, args.w_last);
    for c in 0..n_chunks {
        let mut ids = Vec::with_capacity(chunk + 1);
        ids.extend(tok.bos());
        ids.extend_from_slice(&tokens[c * chunk..(c + 1) * chunk]);
        session.reset();
        session.cache.probe = Some(LazyProbe::new(n_layer, stream, args.w_last, ids.len(), Selection::Measure));
        session.eval(&ids, Logits::None)?;
        let probe = session.cache.probe.take().context("the probe went missing")?;
        let chosen = choose_lazy(&probe.ratios, args.ratio);
        for (il, r) in probe.ratios.iter().enumerate() {
            if let Some(r) = r {
                sums[il] += *r as f64;
                counts[il] += 1;
            }
            selected[il] += chosen[il] as usize;
        }
        eprint!("\rchunk {}/{n_chunks}", c + 1);
    }
    eprintln!();
    let means: Vec<Option<f32>> = (0..n_layer).map(|i| (counts[i] > 0).then(|| (sums[i] / counts[i] as f64) as f32)).collect();
    let lazy = choose_lazy(&means, args.ratio);
    println!("{:>5}  {:<15}  {:>10}  {:>9}  lazy", "layer", "kind", "mean ratio", "selected");
    for il in 0..n_layer {
        let ratio = means[il].map(|r| format!("{r:.4}")).unwrap_or_else(|| "-".into());
        println!("{il:>5}  {:<15}  {ratio:>10}  {:>4}/{:<4}  {}", native[il].label(), selected[il], n_chunks, if lazy[il] { "yes" } else { "" });
    }
    let n_cand = means.iter().filter(|m| m.is_some()).count();
    let n_lazy = lazy.iter().filter(|&&l| l).count();
    println!("{n_lazy} of {n_cand} candidate layers lazy ({} layers in all)", n_layer);

    let calibration = format!(
        "calib={} chunks={n_chunks} chunk={chunk} w_last={} ratio={} sink={} window={} selection=mean-lazy-ratio",
        args.calib.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
        args.w_last,
        args.ratio,
        stream.sink,
        stream.window
    );
    let spec = HybridSpec {
        lazy,
        stream,
        // A non-candidate keeps everything it would attend to: its ratio is 1 by definition.
        ratios: Some(means.iter().map(|m| m.unwrap_or(1.0)).collect()),
        calibration: Some(calibration),
    };
    let mut writer = GgufWriter::from_file(&file)?;
    spec.write_to(&mut writer)?;
    let size = writer.write_atomic(&args.output, None).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("wrote {} ({size} bytes)", args.output.display());
    Ok(())
}
