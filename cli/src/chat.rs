//! `engine chat`: the interactive REPL.
//!
//! With a chat template (the file's, a built-in chosen with `--chat-template`, or none for base
//! models) each line is a user turn; without one the model continues the text (completion mode).
//! The conversation stays in the KV cache between turns: each turn renders the whole
//! conversation, keeps the cached prefix that still matches, and evaluates only the rest.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};
use engine::chat::{Builtin, ChatTemplate, Message};
use engine::generate::{generate, Conversation, GenStats, GenerateParams, StopReason};
use engine::model::{Model, Session};
use engine::sampling::{Sampler, SamplerParams};
use engine::tokenizer::{TokenizeOptions, Tokenizer};
use rustyline::error::ReadlineError;

use crate::common::{describe_hybrid, human_bytes, init_threads, open_model, tokenizer, DeviceArgs, HybridArgs, ModelArgs, SamplingArgs};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    hybrid: HybridArgs,
    /// Chat template: a built-in name (gemma, llama3, chatml), `file` (the model's own), or
    /// `none` (completion mode). Default: the model's own, else completion mode.
    #[arg(long = "chat-template")]
    chat_template: Option<String>,
    /// System prompt.
    #[arg(long = "system")]
    system: Option<String>,
    /// Most tokens per reply (-1: until the model ends its turn or the context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = 512, allow_negative_numbers = true)]
    n_predict: i64,
    /// History file (default: chat_history.txt in the model cache directory).
    #[arg(long = "history")]
    history: Option<PathBuf>,
    #[command(flatten)]
    device: DeviceArgs,
}

const HELP: &str = "\
commands:
  /help               this text
  /reset              forget the conversation
  /system TEXT        set the system prompt (and reset)
  /set KEY VALUE      temp, top-k, top-p, min-p, seed, n (tokens per reply, -1: no limit)
  /stats              speed of the last reply, context used, KV cache by layer kind
  /save FILE          save the conversation as JSON
  /load FILE          load a conversation saved with /save
  /exit               leave (or Ctrl-D)
A line ending in \\ continues on the next line. Ctrl-C stops a reply.";

/// The saved form of a conversation.
#[derive(serde::Serialize, serde::Deserialize)]
struct Saved {
    format: String,
    system: Option<String>,
    messages: Vec<Message>,
}

const SAVE_FORMAT: &str = "engine-chat-1";

struct Chat<'m> {
    /// The CPU's session or the GPU's.
    session: Box<dyn Conversation + 'm>,
    tok: &'m Tokenizer,
    template: Option<ChatTemplate>,
    sampler_params: SamplerParams,
    sampler: Sampler,
    n_predict: Option<usize>,
    system: Option<String>,
    messages: Vec<Message>,
    /// Tokens the session holds, in order.
    cached: Vec<u32>,
    last: Option<GenStats>,
    stop: Arc<AtomicBool>,
    mode: engine::lighttransfer::HybridMode,
    native: Vec<engine::model::kv_cache::LayerKind>,
    /// What LightTransfer-Test chose on the first prompt.
    hybrid_note: Option<String>,
    params: engine::model::SessionParams,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let sampler_params = args.sampling.params()?;
    let n_predict = parse_n(args.n_predict)?;
    init_threads(args.model.threads)?;
    if args.model.model.is_none() {
        ensure_default_model()?;
    }
    let file = open_model(&args.model)?;
    let tok = tokenizer(&file)?;
    let mut model = Model::load(&file).context("loading the model")?;
    args.model.apply_numerics(&mut model)?;
    let template = match args.chat_template.as_deref() {
        None | Some("file") => {
            let t = ChatTemplate::from_gguf(&file)?;
            if t.is_none() && args.chat_template.is_some() {
                bail!("the model has no chat template (tokenizer.chat_template); name a built-in one instead");
            }
            t
        }
        Some("none") => None,
        Some(name) => Some(ChatTemplate::builtin_named(name)?),
    };
    // Hybrid layers: the file's flags run from the first token; with --lazy the lazy set is
    // chosen on the first prompt and kept for the rest of the conversation (later turns append
    // to the same caches; /reset goes back to the native layers and chooses again).
    let mode = args.hybrid.mode(&file, &model)?;
    let native = model.native_layer_kinds();
    let mut params = args.model.session_params(model.cfg.n_ctx_train, 4096);
    params.layer_kinds = Some(mode.kinds(&native));
    let cuda = args.device.cuda(model.cfg.n_layer)?;
    if cuda && model.llamacpp_numerics {
        bail!("--numerics llamacpp computes on the CPU; run it without -ngl");
    }
    let gpu = if cuda {
        Some(engine::gpu::GpuModel::upload(&model, 0).context("loading the model onto the GPU")?)
    } else {
        None
    };
    let session: Box<dyn Conversation> = match &gpu {
        Some(g) => Box::new(engine::gpu::GpuSession::new(g, &params)?),
        None => Box::new(Session::new(&model, &params)?),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        ctrlc::set_handler(move || stop.store(true, Ordering::Relaxed)).context("installing the Ctrl-C handler")?;
    }
    let mut chat = Chat {
        session,
        tok: &tok,
        template,
        sampler: Sampler::new(sampler_params.clone())?,
        sampler_params,
        n_predict,
        system: args.system.clone(),
        messages: Vec::new(),
        cached: Vec::new(),
        last: None,
        stop,
        mode,
        native,
        hybrid_note: None,
        params,
    };

    eprintln!("engine chat: {} ({}, {} positions of context)", file.path().display(), model.cfg.describe(), chat.session.n_ctx());
    if let Some(g) = &gpu {
        eprintln!("device: CUDA, {}", g.device_name());
    }
    match &chat.template {
        Some(t) => eprintln!("chat template: {}", t.name()),
        None => eprintln!(
            "completion mode: this model has no chat template, so the model continues your text \
             (for an instruction-tuned model without one, pass --chat-template {})",
            Builtin::for_arch(model.cfg.arch).name()
        ),
    }
    eprintln!("/help for commands, Ctrl-C stops a reply, Ctrl-D or /exit leaves");

    let mut rl = rustyline::DefaultEditor::new().context("starting the line editor")?;
    let history = args.history.clone().or_else(|| engine::model_path::cache_dir().ok().map(|d| d.join("chat_history.txt")));
    if let Some(h) = &history {
        let _ = rl.load_history(h);
    }
    loop {
        let line = match read_input(&mut rl) {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => return Err(e),
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let _ = rl.add_history_entry(line);
        if let Some(cmd) = line.strip_prefix('/') {
            match chat.command(cmd) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    continue;
                }
            }
        }
        if let Err(e) = chat.turn(line) {
            eprintln!("\nerror: {e:#}");
        }
    }
    if let Some(h) = &history {
        if let Some(dir) = h.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let _ = rl.save_history(h);
    }
    Ok(())
}

fn parse_n(n: i64) -> anyhow::Result<Option<usize>> {
    match n {
        -1 => Ok(None),
        n if n > 0 => Ok(Some(n as usize)),
        n => bail!("n = {n}: use a positive count of tokens, or -1 for no limit"),
    }
}

/// Reads one input, joining lines that end in a backslash. `None` at end of input (Ctrl-D).
fn read_input(rl: &mut rustyline::DefaultEditor) -> anyhow::Result<Option<String>> {
    let mut text = String::new();
    let mut prompt = "> ";
    loop {
        match rl.readline(prompt) {
            Ok(line) => match line.strip_suffix('\\') {
                Some(head) => {
                    text.push_str(head);
                    text.push('\n');
                    prompt = "… ";
                }
                None => {
                    text.push_str(&line);
                    return Ok(Some(text));
                }
            },
            Err(ReadlineError::Interrupted) => {
                eprintln!("(Ctrl-D or /exit to leave)");
                text.clear();
                prompt = "> ";
            }
            Err(ReadlineError::Eof) => return Ok(None),
            Err(e) => return Err(e).context("reading input"),
        }
    }
}

/// Fetches the default model when it is missing, with the project's own script.
fn ensure_default_model() -> anyhow::Result<()> {
    use engine::model_path::{resolve, ModelPathError, FETCH_COMMAND};
    match resolve(None) {
        Err(ModelPathError::DefaultMissing { path }) => {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fetch.py");
            if !script.is_file() {
                bail!("the default model is not in the cache ({}); fetch it with: {FETCH_COMMAND}", path.display());
            }
            eprintln!("the default model is not in the cache; fetching it ({FETCH_COMMAND}) ...");
            let status = std::process::Command::new("python3").arg(&script).status().context("running python3 models/fetch.py")?;
            if !status.success() {
                bail!("fetching the default model failed ({status}); run `{FETCH_COMMAND}` to see why");
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Chat<'_> {
    /// Runs a slash command; false means leave.
    fn command(&mut self, cmd: &str) -> anyhow::Result<bool> {
        let (name, rest) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
        let rest = rest.trim();
        match name {
            "exit" | "quit" => return Ok(false),
            "help" => println!("{HELP}"),
            "reset" => {
                self.reset();
                println!("(conversation reset)");
            }
            "system" => {
                if self.template.is_none() {
                    bail!("completion mode has no system prompt");
                }
                self.system = (!rest.is_empty()).then(|| rest.to_string());
                self.reset();
                println!("(system prompt {}; conversation reset)", if self.system.is_some() { "set" } else { "cleared" });
            }
            "set" => self.set(rest)?,
            "stats" => self.stats(),
            "save" => {
                if rest.is_empty() {
                    bail!("usage: /save FILE");
                }
                self.save(Path::new(rest))?;
                println!("(saved {} messages to {rest})", self.messages.len());
            }
            "load" => {
                if rest.is_empty() {
                    bail!("usage: /load FILE");
                }
                self.load(Path::new(rest))?;
                println!("(loaded {} messages from {rest})", self.messages.len());
            }
            other => bail!("unknown command /{other}; /help lists the commands"),
        }
        Ok(true)
    }

    fn reset(&mut self) {
        self.messages.clear();
        self.cached.clear();
        self.sampler.reset();
        self.hybrid_note = None;
        // Layers LightTransfer-Test turned lazy go back to their native kind.
        if self.session.restart(&self.params).is_err() {
            let _ = self.session.reset();
        }
    }

    fn set(&mut self, args: &str) -> anyhow::Result<()> {
        let (key, value) = args.split_once(char::is_whitespace).map(|(k, v)| (k, v.trim())).unwrap_or((args, ""));
        let mut p = self.sampler_params.clone();
        let num = |v: &str| -> anyhow::Result<f64> { v.parse::<f64>().with_context(|| format!("{key}: {v:?} is not a number")) };
        match key {
            "temp" => p.temp = num(value)? as f32,
            "top-k" => p.top_k = value.parse().with_context(|| format!("top-k: {value:?} is not a count"))?,
            "top-p" => p.top_p = num(value)? as f32,
            "min-p" => p.min_p = num(value)? as f32,
            "seed" => p.seed = value.parse().with_context(|| format!("seed: {value:?} is not a whole number"))?,
            "n" => {
                self.n_predict = parse_n(value.parse().with_context(|| format!("n: {value:?} is not a whole number"))?)?;
                println!("(n = {value})");
                return Ok(());
            }
            _ => bail!("usage: /set temp|top-k|top-p|min-p|seed|n VALUE"),
        }
        self.sampler = Sampler::new(p.clone())?;
        self.sampler_params = p;
        println!("({key} = {value})");
        Ok(())
    }

    fn stats(&self) {
        match &self.last {
            Some(s) => println!(
                "last reply: prompt {} tokens at {:.1} tokens/s, {} tokens generated at {:.1} tokens/s",
                s.n_prompt,
                s.prompt_tps(),
                s.n_gen,
                s.gen_tps()
            ),
            None => println!("no reply yet"),
        }
        println!("context: {} of {} positions used", self.session.n_past(), self.session.n_ctx());
        let layers = self.session.kv_layers();
        println!("kv cache: {}", human_bytes(layers.iter().map(|l| l.1 as u64).sum()));
        let mut labels: Vec<&str> = Vec::new();
        for (kind, _) in &layers {
            if !labels.contains(&kind.label()) {
                labels.push(kind.label());
            }
        }
        for label in labels {
            let which: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].0.label() == label).collect();
            let bytes: usize = which.iter().map(|&i| layers[i].1).sum();
            let names: Vec<String> = which.iter().map(|i| i.to_string()).collect();
            println!("  {label:<15} {:>3} layers {:>10}  (layers {})", which.len(), human_bytes(bytes as u64), names.join(","));
        }
        let lazy: Vec<usize> = (0..layers.len()).filter(|&i| layers[i].0.label() == "streaming").collect();
        println!("lazy (streaming) layers: {} {lazy:?}", lazy.len());
        if let Some(note) = &self.hybrid_note {
            println!("hybrid: {note}");
        }
    }

    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let saved = Saved { format: SAVE_FORMAT.into(), system: self.system.clone(), messages: self.messages.clone() };
        let json = serde_json::to_vec_pretty(&saved)?;
        let dir = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let mut tmp = tempfile::NamedTempFile::new_in(&dir).with_context(|| format!("creating a file in {}", dir.display()))?;
        tmp.write_all(&json)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    fn load(&mut self, path: &Path) -> anyhow::Result<()> {
        let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let saved: Saved = serde_json::from_slice(&data).with_context(|| format!("{} is not a saved conversation", path.display()))?;
        if saved.format != SAVE_FORMAT {
            bail!("{}: format {:?}, expected {SAVE_FORMAT:?}", path.display(), saved.format);
        }
        if let Some(m) = saved.messages.iter().find(|m| !matches!(m.role.as_str(), "user" | "assistant" | "system")) {
            bail!("{}: unknown role {:?}", path.display(), m.role);
        }
        self.reset();
        self.system = saved.system;
        self.messages = saved.messages;
        Ok(())
    }

    /// The whole conversation as the model sees it, ending with the prompt for its reply.
    fn prompt_tokens(&self, user: &str) -> anyhow::Result<Vec<u32>> {
        match &self.template {
            Some(t) => {
                let mut msgs = Vec::with_capacity(self.messages.len() + 2);
                if let Some(s) = &self.system {
                    msgs.push(Message::new("system", s));
                }
                msgs.extend(self.messages.iter().cloned());
                msgs.push(Message::new("user", user));
                Ok(t.tokenize(&msgs, true, self.tok)?)
            }
            None => {
                // Completion mode: the cached text continues with what was typed.
                let mut ids = self.cached.clone();
                let opts = TokenizeOptions { add_special: ids.is_empty(), parse_special: false };
                self.tok.tokenize_into(user, opts, &mut ids);
                Ok(ids)
            }
        }
    }

    fn turn(&mut self, user: &str) -> anyhow::Result<()> {
        let tokens = self.prompt_tokens(user)?;
        // Keep what the cache holds of this prompt; evaluate the rest.
        let common = self.cached.iter().zip(&tokens).take_while(|(a, b)| a == b).count();
        if common < self.cached.len() {
            if self.session.truncate(common)? {
                self.cached.truncate(common);
            } else {
                self.cached.clear();
            }
        }
        let new = &tokens[self.cached.len()..];
        let n_ctx = self.session.n_ctx();
        if self.session.n_past() + new.len() + 1 >= n_ctx {
            bail!(
                "context full: this turn needs {} positions, {} of {n_ctx} are used; /reset to start over (or a larger -c)",
                new.len() + 1,
                self.session.n_past()
            );
        }
        if self.session.n_past() == 0 {
            self.session.set_probe(self.mode.probe(&self.native, new.len()));
        }
        self.stop.store(false, Ordering::Relaxed);
        let mut reply = String::new();
        let stdout = std::io::stdout();
        let params = GenerateParams { n_predict: self.n_predict, stop: Some(&self.stop) };
        let stats = generate(&mut *self.session, self.tok, &mut self.sampler, new, &params, |text| {
            reply.push_str(text);
            let mut out = stdout.lock();
            out.write_all(text.as_bytes())?;
            out.flush()
        })?;
        println!();
        if let Some(probe) = self.session.take_probe() {
            self.hybrid_note = describe_hybrid(&self.mode, Some(&probe));
        }
        match stats.stop {
            StopReason::Interrupted => eprintln!("[stopped]"),
            StopReason::ContextFull => eprintln!("[context full: /reset to start over]"),
            StopReason::TokenLimit => eprintln!("[reply cut at {} tokens: /set n to change]", stats.n_gen),
            StopReason::EndOfGeneration => {}
        }
        self.cached.extend_from_slice(new);
        self.cached.extend_from_slice(&stats.tokens);
        if self.template.is_some() {
            self.messages.push(Message::new("user", user));
            self.messages.push(Message::new("assistant", &reply));
        }
        self.last = Some(stats);
        Ok(())
    }
}
