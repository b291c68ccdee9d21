//! The generation loop shared by `engine run` and `engine chat`: evaluate the prompt, then sample,
//! stream and feed back one token at a time until an end-of-generation token, the token limit,
//! a full context, or a stop request.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::lighttransfer::LazyProbe;
use crate::model::kv_cache::LayerKind;
use crate::model::{Logits, ModelError, Session, SessionParams};
use crate::sampling::{Sampler, SamplingError};
use crate::tokenizer::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("the prompt has {n_prompt} tokens but the context holds {n_ctx} ({n_past} already used); use a larger -c or a shorter prompt")]
    PromptTooLong { n_prompt: usize, n_past: usize, n_ctx: usize },
    #[error("writing the output: {0}")]
    Output(#[from] std::io::Error),
    #[error("decoding a token: {0}")]
    Decode(String),
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    EndOfGeneration,
    TokenLimit,
    ContextFull,
    Interrupted,
}

/// Counts and timings of one generation.
#[derive(Clone, Debug)]
pub struct GenStats {
    pub n_prompt: usize,
    pub prompt_time: Duration,
    /// Tokens sampled (an ending end-of-generation token included).
    pub n_gen: usize,
    /// Single-token forward passes run while generating.
    pub n_decode: usize,
    pub gen_time: Duration,
    pub stop: StopReason,
    /// The generated tokens the session now holds (an ending end-of-generation token is not
    /// among them: it was never evaluated).
    pub tokens: Vec<u32>,
}

impl GenStats {
    pub fn prompt_tps(&self) -> f64 {
        self.n_prompt as f64 / self.prompt_time.as_secs_f64().max(1e-9)
    }

    pub fn gen_tps(&self) -> f64 {
        self.n_decode as f64 / self.gen_time.as_secs_f64().max(1e-9)
    }
}

/// Settings of one generation.
pub struct GenerateParams<'s> {
    /// Most tokens to generate; `None`: until end of generation or a full context.
    pub n_predict: Option<usize>,
    /// Set from another thread (Ctrl-C) to stop after the current token.
    pub stop: Option<&'s AtomicBool>,
}

/// What [`generate`] (and [`crate::perplexity::perplexity`]) runs on: a CPU [`Session`] or a
/// [`crate::gpu::GpuSession`].
pub trait Evaluate {
    /// Evaluates `tokens` after what the session holds; the logits `which` asks for.
    fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, crate::model::ModelError>;
    fn n_past(&self) -> usize;
    fn n_ctx(&self) -> usize;
    /// Logits per position.
    fn n_vocab(&self) -> usize;
    /// Forgets everything the session holds.
    fn reset(&mut self) -> Result<(), crate::model::ModelError>;
}

impl Evaluate for Session<'_, '_> {
    fn eval(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>, crate::model::ModelError> {
        Session::eval(self, tokens, which)
    }
    fn n_past(&self) -> usize {
        Session::n_past(self)
    }
    fn n_ctx(&self) -> usize {
        Session::n_ctx(self)
    }
    fn n_vocab(&self) -> usize {
        self.model.cfg.n_vocab
    }
    fn reset(&mut self) -> Result<(), crate::model::ModelError> {
        Session::reset(self);
        Ok(())
    }
}

/// What a chat holds: a session that can also go back to a prefix of what it holds, start over
/// with the native layers, run LightTransfer-Test on its first prompt and report its KV cache;
/// the CPU's [`Session`] or a [`crate::gpu::GpuSession`].
pub trait Conversation: Evaluate {
    /// Keeps only the first `n` positions; false when the cache could not go back that far (a
    /// sliding window already dropped what position `n` needs), and it is then empty.
    fn truncate(&mut self, n: usize) -> Result<bool, ModelError>;
    /// Starts over with caches for `params` (layers LightTransfer-Test made lazy go back).
    fn restart(&mut self, params: &SessionParams) -> Result<(), ModelError>;
    /// Arms (or disarms) LightTransfer-Test for the next prompt.
    fn set_probe(&mut self, probe: Option<LazyProbe>);
    /// The probe, after the prompt it measured.
    fn take_probe(&mut self) -> Option<LazyProbe>;
    /// Each layer's kind and KV bytes.
    fn kv_layers(&self) -> Vec<(LayerKind, usize)>;
}

impl Conversation for Session<'_, '_> {
    fn truncate(&mut self, n: usize) -> Result<bool, ModelError> {
        Ok(Session::truncate(self, n))
    }
    fn restart(&mut self, params: &SessionParams) -> Result<(), ModelError> {
        *self = Session::new(self.model, params)?;
        Ok(())
    }
    fn set_probe(&mut self, probe: Option<LazyProbe>) {
        self.cache.probe = probe;
    }
    fn take_probe(&mut self) -> Option<LazyProbe> {
        self.cache.probe.take()
    }
    fn kv_layers(&self) -> Vec<(LayerKind, usize)> {
        self.cache.layers.iter().map(|l| (l.kind, l.bytes())).collect()
    }
}

/// Evaluates `prompt` after what `session` holds, then generates, calling `on_text` with each
/// piece of text as soon as it forms whole UTF-8 characters. Generated tokens (all but an ending
/// end-of-generation token) are appended to the session.
pub fn generate<S: Evaluate + ?Sized>(
    session: &mut S,
    tokenizer: &Tokenizer,
    sampler: &mut Sampler,
    prompt: &[u32],
    params: &GenerateParams<'_>,
    mut on_text: impl FnMut(&str) -> std::io::Result<()>,
) -> Result<GenStats, GenerateError> {
    let n_ctx = session.n_ctx();
    if session.n_past() + prompt.len() >= n_ctx {
        return Err(GenerateError::PromptTooLong { n_prompt: prompt.len(), n_past: session.n_past(), n_ctx });
    }
    let stopped = || params.stop.is_some_and(|s| s.load(Ordering::Relaxed));
    for &t in prompt {
        sampler.accept(t);
    }
    let t0 = Instant::now();
    let mut logits = session.eval(prompt, Logits::Last)?;
    let prompt_time = t0.elapsed();

    let t1 = Instant::now();
    let mut decoder = tokenizer.stream_decoder(false);
    let mut n_gen = 0;
    let mut n_decode = 0;
    let mut tokens = Vec::new();
    let stop = loop {
        if stopped() {
            break StopReason::Interrupted;
        }
        let token = sampler.sample(&mut logits)?;
        n_gen += 1;
        if tokenizer.is_eog(token) {
            break StopReason::EndOfGeneration;
        }
        sampler.accept(token);
        let text = decoder.push(token).map_err(|e| GenerateError::Decode(e.to_string()))?;
        if !text.is_empty() {
            on_text(&text)?;
        }
        // Every token shown is also evaluated, so the session holds the whole conversation.
        logits = session.eval(&[token], Logits::Last)?;
        tokens.push(token);
        n_decode += 1;
        if params.n_predict.is_some_and(|n| n_gen >= n) {
            break StopReason::TokenLimit;
        }
        if session.n_past() + 1 >= n_ctx {
            break StopReason::ContextFull;
        }
    };
    let rest = decoder.finish();
    if !rest.is_empty() {
        on_text(&rest)?;
    }
    Ok(GenStats { n_prompt: prompt.len(), prompt_time, n_gen, n_decode, gen_time: t1.elapsed(), stop, tokens })
}
