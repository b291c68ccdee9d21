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
    /// Draw the per-layer mean ratios as a bar chart (PNG): lazy layers orange, full blue,
    /// non-candidates grey; a grid line every 0.1.
    #[arg(long = "report")]
    report: Option<PathBuf>,
}

/// Writes a bar chart of `ratios` (one bar per layer) to `path`, atomically.
fn draw_report(path: &std::path::Path, ratios: &[Option<f32>], lazy: &[bool]) -> anyhow::Result<()> {
    const BAR: u32 = 24;
    const GAP: u32 = 8;
    const H: u32 = 300;
    const MARGIN: u32 = 20;
    let n = ratios.len() as u32;
    let width = MARGIN * 2 + n * (BAR + GAP);
    let height = H + MARGIN * 2;
    let mut img = vec![255u8; (width * height * 3) as usize];
    let mut put = |x: u32, y: u32, rgb: [u8; 3]| {
        if x < width && y < height {
            let i = ((y * width + x) * 3) as usize;
            img[i..i + 3].copy_from_slice(&rgb);
        }
    };
    // Grid lines at 0.1 steps, the 1.0 line darker.
    for step in 0..=10 {
        let y = MARGIN + H - H * step / 10;
        let c = if step == 10 || step == 0 { [120, 120, 120] } else { [225, 225, 225] };
        for x in MARGIN..width - MARGIN {
            put(x, y, c);
        }
    }
    for (i, r) in ratios.iter().enumerate() {
        let (value, color) = match r {
            Some(v) if lazy[i] => (*v, [230, 126, 34]),
            Some(v) => (*v, [52, 101, 164]),
            None => (1.0, [190, 190, 190]),
        };
        let h = (value.clamp(0.0, 1.0) * H as f32) as u32;
        let x0 = MARGIN + GAP / 2 + i as u32 * (BAR + GAP);
        for x in x0..x0 + BAR {
            for y in MARGIN + H - h..MARGIN + H {
                put(x, y, color);
            }
        }
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let tmp = tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("creating a file in {}", dir.display()))?;
    {
        let mut enc = png::Encoder::new(std::io::BufWriter::new(tmp.as_file()), width, height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().context("writing the PNG header")?;
        w.write_image_data(&img).context("writing the PNG")?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
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
        // The ratio is measured on the queries of the batch that ends the prompt: the last
        // `w_last` tokens go in a call of their own, so that batch holds all of them (1 + chunk
        // tokens in batches of n_batch would otherwise leave a final batch of one query).
        let split = engine::lighttransfer::probe_split(ids.len(), args.w_last, params.n_batch);
        session.eval(&ids[..split], Logits::None)?;
        session.eval(&ids[split..], Logits::None)?;
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
    if let Some(report) = &args.report {
        draw_report(report, &means, &lazy)?;
        eprintln!("wrote {}", report.display());
    }
    let spec = HybridSpec {
        lazy,
        stream,
        // A non-candidate keeps everything it would attend to: its ratio is 1 by definition.
        ratios: Some(means.iter().map(|m| m.unwrap_or(1.0)).collect()),
        calibration: Some(calibration),
    };
    let mut writer = GgufWriter::from_file(&file)?;
    spec.write_to(&mut writer)?;
    // (Only now: Ctrl-C during the calibration above still ends the command at once.)
    crate::common::stop_writes_on_ctrl_c()?;
    let size = writer.write_atomic(&args.output, None).with_context(|| format!("writing {}", args.output.display()))?;
    eprintln!("wrote {} ({size} bytes)", args.output.display());
    Ok(())
}
