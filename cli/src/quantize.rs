//! `engine quantize IN OUT TYPE [--allow-requantize]`: GGUF to GGUF with llama.cpp's tensor type
//! mixes (see `engine::quantize`), atomically, printing the size before and after.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use engine::gguf::GgufFile;
use engine::quantize::{self, QuantizeParams};

#[derive(clap::Args)]
pub struct Args {
    /// Input GGUF file.
    input: PathBuf,
    /// Output GGUF file (written atomically; must not be the input).
    output: PathBuf,
    /// Type: q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_m, q4_k_s, q4_k_m, q5_k_s, q5_k_m, q6_k,
    /// iq4_nl, iq4_xs, f16, bf16, f32.
    #[arg(value_name = "TYPE")]
    ty: String,
    /// Dequantize and quantize again tensors that are already quantized (loses precision).
    #[arg(long)]
    allow_requantize: bool,
    /// CPU threads (default: all available).
    #[arg(short = 't', long = "threads")]
    threads: Option<usize>,
    /// No progress bar.
    #[arg(short = 'q', long)]
    quiet: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    crate::common::stop_writes_on_ctrl_c()?;
    let ftype = crate::convert::parse_ftype(&args.ty)?;
    let threads = crate::common::init_threads(args.threads)?;
    let input = GgufFile::open(&args.input).with_context(|| format!("loading {}", args.input.display()))?;
    let params = QuantizeParams { ftype, allow_requantize: args.allow_requantize };
    let jobs = quantize::plan(&input, &params)?;
    let total = quantize::output_tensor_bytes(&jobs);
    drop(jobs);
    let start = Instant::now();
    let bar = crate::convert::bar(total, args.quiet);
    let mut on_tensor = |_done: usize, _total: usize, written: u64| bar.set_position(written.min(total));
    let report = quantize::quantize(&input, &args.output, &params, Some(&mut on_tensor))?;
    bar.finish_and_clear();
    let types: Vec<String> = report.types.iter().map(|(t, n)| format!("{t} {n}")).collect();
    eprintln!(
        "{} -> {}: {ftype}; {} tensors ({}), {} converted ({} requantized), {} in {:.1} s ({threads} threads)",
        args.input.display(),
        args.output.display(),
        report.n_tensors,
        types.join(", "),
        report.n_converted,
        report.n_requantized,
        crate::common::human_bytes(report.size_out),
        start.elapsed().as_secs_f64()
    );
    eprintln!(
        "size: {} bytes ({}) before, {} bytes ({}) after",
        report.size_in,
        crate::common::human_bytes(report.size_in),
        report.size_out,
        crate::common::human_bytes(report.size_out)
    );
    Ok(())
}
