//! `engine convert DIR -o OUT.gguf --outtype TYPE [--vocab-from FILE.gguf]`: a Hugging Face
//! checkpoint directory to GGUF (see `engine::convert`), atomically, with a progress bar on a
//! terminal and a summary on stderr.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use engine::convert::{self, ConvertParams};
use engine::quant_mix::{FileType, ALL_FILE_TYPES};
use indicatif::{ProgressBar, ProgressStyle};

#[derive(clap::Args)]
pub struct Args {
    /// Checkpoint directory: config.json, model.safetensors (or shards with
    /// model.safetensors.index.json), tokenizer.model and/or tokenizer.json.
    dir: PathBuf,
    /// Output GGUF file (written atomically).
    #[arg(short = 'o', long = "outfile")]
    output: PathBuf,
    /// Output type: f32, f16, bf16, q8_0 (as llama.cpp's converter), or any type `engine
    /// quantize` knows (q4_0, q4_k_m, ...), applied directly to the checkpoint's weights.
    #[arg(long, default_value = "f16")]
    outtype: String,
    /// Take the tokenizer metadata (every tokenizer.* key) from this GGUF file instead of the
    /// checkpoint's tokenizer files.
    #[arg(long = "vocab-from")]
    vocab_from: Option<PathBuf>,
    /// CPU threads (default: all available).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn parse_ftype(name: &str) -> anyhow::Result<FileType> {
    FileType::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = ALL_FILE_TYPES.iter().map(|t| t.name()).collect();
        anyhow::anyhow!("unknown type {name:?} (known: {})", known.join(", "))
    })
}

/// A byte-counting progress bar on stderr when it is a terminal.
pub fn bar(total: u64, quiet: bool) -> ProgressBar {
    let bar = if quiet || !std::io::stderr().is_terminal() { ProgressBar::hidden() } else { ProgressBar::new(total) };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::common::stop_writes_on_ctrl_c()?;
    let outtype = parse_ftype(&args.outtype)?;
    let threads = crate::common::init_threads(args.threads)?;
    let params = ConvertParams { dir: args.dir.clone(), outtype, vocab_from: args.vocab_from.clone() };
    let start = Instant::now();
    let prepared = convert::prepare(&params)?;
    let h = &prepared.hparams;
    eprintln!(
        "{}: {} -> {} n_embd={} n_layer={} n_head={}/{} head_dim={} n_ff={} n_vocab={}",
        args.dir.display(),
        h.hf_arch,
        h.arch.gguf_name(),
        h.n_embd,
        h.n_layer,
        h.n_head,
        h.n_head_kv,
        h.head_dim,
        h.n_ff,
        prepared.vocab.n_tokens
    );
    eprintln!("tokenizer: {}", prepared.vocab.source);
    for note in &prepared.notes {
        eprintln!("note: {note}");
    }
    let total = prepared.tensor_bytes();
    let bar = bar(total, args.quiet);
    let mut on_tensor = |_done: usize, _total: usize, written: u64| bar.set_position(written.min(total));
    let report = prepared.write(&args.output, Some(&mut on_tensor))?;
    bar.finish_and_clear();
    let types: Vec<String> = report.types.iter().map(|(t, n)| format!("{t} {n}")).collect();
    eprintln!(
        "wrote {}: {} tensors ({}), {} parameters, {outtype}, {} in {:.1} s ({threads} threads)",
        args.output.display(),
        report.n_tensors,
        types.join(", "),
        report.n_params,
        crate::common::human_bytes(report.bytes),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
