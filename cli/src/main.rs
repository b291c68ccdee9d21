//! `engine`: the command-line front end. Each subcommand lives in its own module; errors from the
//! library crates arrive as typed errors and leave here as one line on stderr with a non-zero exit.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod chat;
mod common;
mod convert;
mod eval;
mod inspect;
mod lazy;
mod perplexity;
mod quantize;
mod run;
mod synth;
mod tokenize;

#[derive(Parser)]
#[command(name = "engine", version, about = "A native LLM inference engine for GGUF models, with hybrid (LightTransfer) attention")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measure throughput (llama-bench conventions: pp512, tg128, depth, mean ± stddev).
    Bench(bench::Args),
    /// Chat with a model (interactive; the default model when no -m is given).
    Chat(chat::Args),
    /// Convert a Hugging Face checkpoint directory (safetensors) to GGUF.
    Convert(convert::Args),
    /// Evaluations: passkey retrieval.
    Eval(eval::Args),
    /// Print the header, metadata and tensor table of a GGUF file.
    Inspect(inspect::Args),
    /// Find lazy layers on a calibration text and write the hybrid flags (LightTransfer).
    Lazy(lazy::Args),
    /// Perplexity of a text file, by llama.cpp's method.
    Perplexity(perplexity::Args),
    /// Quantize a GGUF file to another type (llama.cpp's tensor mixes).
    Quantize(quantize::Args),
    /// Generate text from a prompt (one shot).
    Run(run::Args),
    /// Write a random-weight model of a named shape (test presets, real model shapes).
    Synth(synth::Args),
    /// Print the token ids of a text under a model's tokenizer.
    Tokenize(tokenize::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(common::rewrite_ngl(std::env::args_os()));
    let result = match cli.command {
        Command::Bench(args) => bench::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Convert(args) => convert::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Lazy(args) => lazy::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Run(args) => run::run(args),
        Command::Synth(args) => synth::run(args),
        Command::Tokenize(args) => tokenize::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A reader that went away (`engine inspect F | head`) is not an error.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The chain of causes on one line, the most specific last; a cause whose text the line already
/// holds (errors that print their source in their own message) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace('\n', " ")
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
}

/// `-m PATH` or, when absent, the default model (shared by every subcommand that loads a model).
pub fn resolve_model(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    Ok(engine::model_path::resolve(explicit.as_deref())?)
}
