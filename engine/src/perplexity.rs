//! Perplexity, by the method of llama.cpp's `llama-perplexity`, so the two are comparable on the
//! same text: the tokens are cut into chunks of `n_ctx`; each chunk starts with BOS (replacing
//! its first token) and is evaluated from an empty cache; the second half of each chunk is
//! scored (position `j` predicts token `j + 1`, for `n_ctx/2 <= j < n_ctx - 1`).

use crate::generate::Evaluate;
use crate::model::{Logits, ModelError};

#[derive(Debug, thiserror::Error)]
pub enum PerplexityError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("the text has {n_tokens} tokens; perplexity with -c {n_ctx} needs at least {} (two chunks)", 2 * n_ctx)]
    TooShort { n_tokens: usize, n_ctx: usize },
    #[error("-c {n_ctx} is too small: chunks need at least 4 tokens")]
    ContextTooSmall { n_ctx: usize },
    #[error("-c {n_ctx} is larger than the session's context ({session_ctx})")]
    ContextTooLarge { n_ctx: usize, session_ctx: usize },
}

/// The estimate and its uncertainty, as llama.cpp prints them.
#[derive(Clone, Debug)]
pub struct Perplexity {
    pub ppl: f64,
    /// One standard error of `ppl` (llama.cpp's `+/-`).
    pub stderr: f64,
    pub n_chunks: usize,
    pub n_scored: usize,
}

/// Scores `tokens` in chunks of `n_ctx`. `on_chunk(i, running_ppl)` is called after each chunk.
pub fn perplexity<S: Evaluate + ?Sized>(
    session: &mut S,
    tokens: &[u32],
    bos: Option<u32>,
    n_ctx: usize,
    max_chunks: Option<usize>,
    mut on_chunk: impl FnMut(usize, f64),
) -> Result<Perplexity, PerplexityError> {
    if n_ctx < 4 {
        return Err(PerplexityError::ContextTooSmall { n_ctx });
    }
    if n_ctx > session.n_ctx() {
        return Err(PerplexityError::ContextTooLarge { n_ctx, session_ctx: session.n_ctx() });
    }
    if tokens.len() < 2 * n_ctx {
        return Err(PerplexityError::TooShort { n_tokens: tokens.len(), n_ctx });
    }
    let n_vocab = session.n_vocab();
    let n_chunks = (tokens.len() / n_ctx).min(max_chunks.unwrap_or(usize::MAX));
    let first = n_ctx / 2;
    let (mut nll, mut nll2, mut count) = (0f64, 0f64, 0usize);
    for c in 0..n_chunks {
        let mut chunk = tokens[c * n_ctx..(c + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.reset()?;
        let logits = session.eval(&chunk, Logits::From(first))?;
        for (row, j) in logits.chunks_exact(n_vocab).zip(first..n_ctx - 1) {
            let target = chunk[j + 1] as usize;
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
            let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
            let v = (max + sum.ln()) - row[target] as f64;
            nll += v;
            nll2 += v * v;
            count += 1;
        }
        on_chunk(c, (nll / count as f64).exp());
    }
    let mean = nll / count as f64;
    let var = nll2 / count as f64 - mean * mean;
    let ppl = mean.exp();
    let stderr = if var > 0.0 && count > 1 { (var / (count - 1) as f64).sqrt() * ppl } else { 0.0 };
    Ok(Perplexity { ppl, stderr, n_chunks, n_scored: count })
}
