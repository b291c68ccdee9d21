//! `engine synth --arch ARCH --preset NAME --type TYPE -o FILE [--seed S] [--fast]`: writes a
//! random-weight model of a named shape (see `engine::synth`), atomically, with a progress bar on
//! a terminal.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use engine::quant_mix::{FileType, ALL_FILE_TYPES};
use engine::synth::{self, SynthParams, DEFAULT_SEED};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Architecture: llama, mistral, qwen2 or gemma3 (must match the preset).
    #[arg(long)]
    arch: String,
    /// Shape: llama-tiny, mistral-tiny, qwen2-tiny, gemma3-tiny, gemma3-270m, llama3-8b,
    /// llama3.2-1b, qwen2.5-7b.
    #[arg(long)]
    preset: String,
    /// File type: f32, f16, q8_0, q4_0 or q4_k_m (llama.cpp's tensor mix).
    #[arg(long = "type")]
    ty: String,
    /// Output GGUF file (written atomically).
    #[arg(short = 'o', long = "output")]
    output: PathBuf,
    /// Random seed: the same preset, type, seed and --fast give the same file.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    seed: u64,
    /// Benchmark-only weights, many times faster to make: each quantized tensor of more than 256
    /// rows quantizes its first 256 rows as without --fast and builds every later row from their
    /// blocks, picked at random; same size, types and weight scale. Float tensors are unchanged.
    #[arg(long)]
    fast: bool,
    /// CPU threads (default: all available).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::common::stop_writes_on_ctrl_c()?;
    let preset = synth::resolve(&args.arch, &args.preset)?;
    let ftype = FileType::from_name(&args.ty).ok_or_else(|| {
        let known: Vec<&str> = ALL_FILE_TYPES.iter().map(|t| t.name()).collect();
        anyhow::anyhow!("unknown type {:?} (known: {})", args.ty, known.join(", "))
    })?;
    let dir = match args.output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        anyhow::bail!("cannot write {}: directory {} does not exist", args.output.display(), dir.display());
    }
    let threads = crate::common::init_threads(args.threads)?;
    let params = SynthParams { preset, ftype, seed: args.seed, fast: args.fast };

    let total = synth::tensor_bytes(&params);
    let bar = if args.quiet || !std::io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(total)
    };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let start = Instant::now();
    let mut on_tensor = |_done: usize, _total: usize, written: u64| bar.set_position(written.min(total));
    // Errors name the output path themselves.
    let size = synth::synthesize(&params, &args.output, Some(&mut on_tensor))?;
    bar.finish_and_clear();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "wrote {}: {} ({} parameters), {ftype}, seed {}{}, {} in {secs:.1} s ({:.0} MiB/s, {threads} threads)",
        args.output.display(),
        preset.name,
        preset.n_params(),
        args.seed,
        if args.fast { ", --fast" } else { "" },
        crate::common::human_bytes(size),
        size as f64 / (1 << 20) as f64 / secs.max(1e-9),
    );
    Ok(())
}
