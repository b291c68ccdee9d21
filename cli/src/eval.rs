//! `engine eval passkey`: long-context retrieval. A random 5-digit key is hidden at a relative
//! depth of a filler text that fills the context; the model is asked for it and answers greedily.
//! Accuracy over `--trials` keys, with every hybrid option (the lazy layers can be given, read
//! from the file, or chosen on each prompt with `--lazy`).

use anyhow::{bail, Context};
use engine::model::{Logits, Model, Session};
use engine::sampling::{argmax, Rng};
use engine::tokenizer::TokenizeOptions;

use crate::common::{describe_hybrid, human_bytes, init_threads, open_model, tokenizer, HybridArgs, ModelArgs};

#[derive(clap::Subcommand)]
pub enum Task {
    /// Passkey retrieval at a given context length and depth.
    Passkey(PasskeyArgs),
}

#[derive(clap::Args)]
pub struct PasskeyArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    hybrid: HybridArgs,
    /// Relative depth of the key in the filler (0 = start, 1 = end).
    #[arg(long = "depth", default_value_t = 0.5)]
    depth: f32,
    /// Number of keys to try.
    #[arg(long = "trials", default_value_t = 10)]
    trials: usize,
    /// Seed of the keys.
    #[arg(long = "seed", default_value_t = 42)]
    seed: u64,
}

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    task: Task,
}

const FILLER: &str = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
const QUESTION: &str = "\nWhat is the pass key? The pass key is";

pub fn run(args: Args) -> anyhow::Result<()> {
    let Task::Passkey(a) = args.task;
    if !(0.0..=1.0).contains(&a.depth) {
        bail!("--depth {} is out of range (0 to 1)", a.depth);
    }
    if a.trials == 0 {
        bail!("--trials must be at least 1");
    }
    init_threads(a.model.threads)?;
    let file = open_model(&a.model)?;
    let tok = tokenizer(&file)?;
    let model = Model::load(&file).context("loading the model")?;
    let mode = a.hybrid.mode(&file, &model)?;
    let native = model.native_layer_kinds();
    let mut params = a.model.session_params(model.cfg.n_ctx_train, 4096);
    params.layer_kinds = Some(mode.kinds(&native));
    let n_ctx = params.n_ctx;
    let plain = TokenizeOptions { add_special: false, parse_special: false };
    let filler = tok.tokenize(FILLER, plain);
    let question = tok.tokenize(QUESTION, plain);
    let mut rng = Rng::new(a.seed);
    let mut correct = 0;
    let mut kv_bytes = 0;
    let mut note = None;
    const ANSWER_TOKENS: usize = 8;
    for trial in 0..a.trials {
        let key = 10_000 + (rng.next_u64() % 90_000) as u32;
        let needle = tok.tokenize(&format!(" The pass key is {key}. Remember it. {key} is the pass key. "), plain);
        // Filler so that the whole prompt plus the answer fits the context.
        let budget = n_ctx.saturating_sub(needle.len() + question.len() + ANSWER_TOKENS + 2);
        if budget < filler.len() {
            bail!("-c {n_ctx} is too small for the passkey prompt");
        }
        let mut hay: Vec<u32> = filler.iter().copied().cycle().take(budget).collect();
        // Cut at a filler sentence boundary near the requested depth.
        let at = ((budget as f32 * a.depth) as usize / filler.len()) * filler.len();
        hay.splice(at..at, needle.iter().copied());
        let mut prompt = Vec::with_capacity(hay.len() + question.len() + 1);
        prompt.extend(tok.bos());
        prompt.extend_from_slice(&hay);
        prompt.extend_from_slice(&question);

        let mut session = Session::new(&model, &params)?;
        session.cache.probe = mode.probe(&native, prompt.len());
        let mut logits = session.eval(&prompt, Logits::Last)?;
        if let Some(p) = session.cache.probe.take() {
            note = describe_hybrid(&mode, Some(&p));
        }
        let mut answer = Vec::new();
        for _ in 0..ANSWER_TOKENS {
            let t = argmax(&logits);
            if tok.is_eog(t) {
                break;
            }
            answer.push(t);
            logits = session.eval(&[t], Logits::Last)?;
        }
        let text = tok.detokenize_lossy(&answer, Default::default())?;
        let ok = text.contains(&key.to_string());
        correct += ok as usize;
        kv_bytes = session.cache.bytes();
        eprintln!("trial {}: key {key}, answer {:?} {}", trial + 1, text.trim(), if ok { "ok" } else { "wrong" });
    }
    if let Some(n) = note.or_else(|| describe_hybrid(&mode, None)) {
        eprintln!("hybrid: {n}");
    }
    println!(
        "passkey: context {n_ctx}, depth {}, accuracy {}/{} = {:.3}, kv cache {}",
        a.depth,
        correct,
        a.trials,
        correct as f64 / a.trials as f64,
        human_bytes(kv_bytes as u64)
    );
    Ok(())
}
