//! `engine tokenize [-m MODEL] -p TEXT`: the token ids of a text, printed like llama.cpp's
//! `llama-tokenize` (one `id -> 'piece'` line per token, or `--ids` for one JSON array).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use engine::gguf::GgufFile;
use engine::tokenizer::{TokenizeOptions, Tokenizer};

#[derive(clap::Args)]
pub struct Args {
    /// The GGUF model whose tokenizer to use (default: the cached default model).
    #[arg(short = 'm', long = "model")]
    model: Option<PathBuf>,
    /// The text to tokenize.
    #[arg(short = 'p', long = "prompt", allow_hyphen_values = true)]
    prompt: String,
    /// Print only the ids, as one JSON array on one line.
    #[arg(long)]
    ids: bool,
    /// Do not add the BOS token the model asks for.
    #[arg(long)]
    no_bos: bool,
    /// Turn control-token strings in the text ("<start_of_turn>") into those tokens.
    #[arg(long)]
    parse_special: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let path = crate::resolve_model(args.model)?;
    let file = GgufFile::open(&path)?;
    let tokenizer = Tokenizer::from_gguf(&file).with_context(|| format!("{}: tokenizer", path.display()))?;
    let opts = TokenizeOptions { add_special: !args.no_bos, parse_special: args.parse_special };
    let ids = tokenizer.tokenize(&args.prompt, opts);

    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.ids {
        // "[2, 9259, 1902]", as llama-tokenize writes it (and valid JSON).
        let list: Vec<String> = ids.iter().map(u32::to_string).collect();
        writeln!(out, "[{}]", list.join(", "))?;
    } else {
        for &id in &ids {
            // Special tokens shown by their text, as llama-tokenize does.
            let piece = tokenizer.token_to_piece(id, true)?;
            writeln!(out, "{id:6} -> '{}'", String::from_utf8_lossy(&piece))?;
        }
    }
    out.flush().context("writing to stdout")?;
    Ok(())
}
