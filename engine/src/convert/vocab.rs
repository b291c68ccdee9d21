//! The tokenizer metadata (`tokenizer.ggml.*`) of a converted model, from the checkpoint's
//! tokenizer files, following llama.cpp's converter (`_set_vocab_sentencepiece`,
//! `_set_vocab_llama_hf`, `_set_vocab_gpt2` and gguf-py's `SpecialVocab`), without running
//! Python or the `tokenizers` library:
//!
//! 1. `tokenizer.model` (SentencePiece protobuf): `tokenizer.ggml.model = "llama"` with the
//!    pieces, scores and types of the model; `added_tokens.json` and `tokenizer_config.json`'s
//!    `added_tokens_decoder` override entries; padded to `vocab_size` with `[PADn]` tokens.
//! 2. `tokenizer.json` holding a BPE model with byte fallback (a SentencePiece vocabulary that
//!    transformers converted): `"llama"` as well. Such files carry merges, not scores, so each
//!    token's score is minus the rank of the first merge that produces it, which makes
//!    llama.cpp's score-ordered SPM merging apply merges in the BPE order. (llama.cpp's own
//!    converter writes -1000 for every score here.)
//! 3. any other `tokenizer.json` with a BPE model: byte-level BPE, `"gpt2"`, with its merges.
//!    `tokenizer.ggml.pre` is chosen from the pre-tokenizer's structure (GPT-2's ByteLevel
//!    regex, Llama 3's or Qwen 2's split pattern); llama.cpp hashes the tokenization of a test
//!    string instead. Other pre-tokenizers are refused.
//!
//! Special-token ids come from `tokenizer_config.json` (`bos_token`, ... matched against
//! `tokenizer.json`'s `added_tokens`) and then `config.json` (`bos_token_id`, ...); whether to
//! add BOS/EOS from the post-processor template and `add_bos_token`/`add_eos_token`; the chat
//! template from `tokenizer_config.json` or `chat_template.jinja`.
//!
//! Not covered: WordPiece/Unigram `tokenizer.json` models, `merges.txt`/`vocab.json`-only
//! tokenizers, tiktoken files, and added tokens whose text the tokenizer would normalize.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::hparams::{ConvArch, HfHparams};
use super::sentencepiece::{self, PieceType};
use super::ConvertError;
use crate::gguf::{GgufFile, MetaArray, MetaValue};

/// GGUF token types (llama.cpp's `llama_token_type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

/// Llama 3's pre-tokenizer split pattern, as its `tokenizer.json` holds it.
pub const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen 2's pre-tokenizer split pattern.
pub const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer metadata to write.
pub struct VocabMeta {
    pub kvs: Vec<(String, MetaValue)>,
    /// Tokens in the vocabulary (rows the embedding keeps).
    pub n_tokens: usize,
    /// Where it came from, for the report.
    pub source: String,
    pub notes: Vec<String>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ConvertError + '_ {
    move |source| ConvertError::Io { path: path.to_path_buf(), source }
}

fn read_json(path: &Path) -> Result<Option<Map<String, Value>>, ConvertError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(io_err(path))?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(m)) => Ok(Some(m)),
        Ok(_) => Err(ConvertError::Json { path: path.to_path_buf(), reason: "the top level is not an object".into() }),
        Err(e) => Err(ConvertError::Json { path: path.to_path_buf(), reason: e.to_string() }),
    }
}

fn tok_err(path: &Path, reason: impl Into<String>) -> ConvertError {
    ConvertError::Tokenizer { path: path.to_path_buf(), reason: reason.into() }
}

/// llama.cpp's `does_token_look_special`.
fn looks_special(t: &str) -> bool {
    matches!(t, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (t.starts_with("<|") && t.ends_with("|>"))
        || (t.starts_with("<｜") && t.ends_with("｜>"))
        || (t.starts_with("<unused") && t.ends_with('>'))
}

/// An `added_tokens` entry of `tokenizer.json`.
struct Added {
    id: usize,
    content: String,
    special: bool,
}

fn added_tokens(tj: Option<&Map<String, Value>>, path: &Path) -> Result<Vec<Added>, ConvertError> {
    let Some(Value::Array(list)) = tj.and_then(|t| t.get("added_tokens")) else { return Ok(Vec::new()) };
    list.iter()
        .map(|a| {
            let id = a.get("id").and_then(Value::as_u64).ok_or_else(|| tok_err(path, "an added token has no id"))?;
            let content = a
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| tok_err(path, format!("added token {id} has no content")))?;
            Ok(Added { id: id as usize, content: content.to_string(), special: a.get("special").and_then(Value::as_bool).unwrap_or(false) })
        })
        .collect()
}

/// Reads the tokenizer of the checkpoint in `dir`.
pub fn from_dir(dir: &Path, h: &HfHparams) -> Result<VocabMeta, ConvertError> {
    let spm_path = dir.join("tokenizer.model");
    let tj_path = dir.join("tokenizer.json");
    let tj = read_json(&tj_path)?;
    let tc = read_json(&dir.join("tokenizer_config.json"))?;
    let mut notes = Vec::new();
    let mut kvs: Vec<(String, MetaValue)> = Vec::new();
    let (tokens, source, is_bpe) = if spm_path.is_file() {
        let (tokens, add_prefix) = spm_from_model(dir, &spm_path, h, tc.as_ref())?;
        push_list(&mut kvs, "llama", "default", &tokens, true);
        // Gemma 3 never adds a space prefix (llama.cpp writes false); otherwise the model says.
        let prefix = if h.arch == ConvArch::Gemma3 { false } else { prefix_override(tc.as_ref()).unwrap_or(add_prefix) };
        kvs.push(("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(prefix)));
        (tokens, format!("{} (SentencePiece)", spm_path.display()), false)
    } else if let Some(tj) = &tj {
        let model = tj.get("model").and_then(Value::as_object).ok_or_else(|| tok_err(&tj_path, "no \"model\" object"))?;
        let ty = model.get("type").and_then(Value::as_str).unwrap_or("");
        if ty != "BPE" {
            return Err(tok_err(&tj_path, format!("model type {ty:?} is not supported (BPE is)")));
        }
        if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
            let (tokens, prefix) = spm_from_tokenizer_json(&tj_path, tj, model, h)?;
            push_list(&mut kvs, "llama", "default", &tokens, true);
            let prefix = if h.arch == ConvArch::Gemma3 { false } else { prefix_override(tc.as_ref()).unwrap_or(prefix) };
            kvs.push(("tokenizer.ggml.add_space_prefix".into(), MetaValue::Bool(prefix)));
            notes.push("tokenizer.json is an SPM-style BPE (byte fallback): scores derived from merge ranks".into());
            (tokens, format!("{} (SPM-style BPE)", tj_path.display()), false)
        } else {
            let pre = detect_pre(&tj_path, tj)?;
            let tokens = bpe_tokens(&tj_path, tj, model, h)?;
            push_list(&mut kvs, "gpt2", pre, &tokens, false);
            let merges = bpe_merges(&tj_path, model)?;
            kvs.push(("tokenizer.ggml.merges".into(), MetaValue::Array(MetaArray::String(merges))));
            (tokens, format!("{} (byte-level BPE, pre {pre})", tj_path.display()), true)
        }
    } else {
        return Err(ConvertError::NoTokenizer { dir: dir.to_path_buf() });
    };
    let _ = is_bpe;
    special_vocab(&mut kvs, dir, tj.as_ref(), tc.as_ref(), &h.raw, tokens.len())?;
    Ok(VocabMeta { kvs, n_tokens: tokens.len(), source, notes })
}

/// `tokenizer_config.json`'s `add_prefix_space`, which llama.cpp's Llama converter honours.
fn prefix_override(tc: Option<&Map<String, Value>>) -> Option<bool> {
    tc.and_then(|t| t.get("add_prefix_space")).and_then(Value::as_bool)
}

/// One vocabulary entry.
#[derive(Clone, Debug)]
struct Tok {
    text: String,
    score: f32,
    ty: i32,
}

fn push_list(kvs: &mut Vec<(String, MetaValue)>, model: &str, pre: &str, tokens: &[Tok], scores: bool) {
    kvs.push(("tokenizer.ggml.model".into(), MetaValue::String(model.into())));
    kvs.push(("tokenizer.ggml.pre".into(), MetaValue::String(pre.into())));
    kvs.push(("tokenizer.ggml.tokens".into(), MetaValue::Array(MetaArray::String(tokens.iter().map(|t| t.text.clone()).collect()))));
    if scores {
        kvs.push(("tokenizer.ggml.scores".into(), MetaValue::Array(MetaArray::F32(tokens.iter().map(|t| t.score).collect()))));
    }
    kvs.push(("tokenizer.ggml.token_type".into(), MetaValue::Array(MetaArray::I32(tokens.iter().map(|t| t.ty).collect()))));
}

/// Applies `added_tokens.json` and `tokenizer_config.json`'s `added_tokens_decoder`, as
/// `_create_vocab_sentencepiece` does.
fn apply_added(dir: &Path, tc: Option<&Map<String, Value>>, tokens: &mut [Tok]) -> Result<(), ConvertError> {
    let n = tokens.len();
    let added_path = dir.join("added_tokens.json");
    if let Some(added) = read_json(&added_path)? {
        for (text, id) in added {
            match id.as_u64() {
                Some(id) if (id as usize) < n => {
                    tokens[id as usize] = Tok { text, score: -1000.0, ty: USER_DEFINED };
                }
                Some(_) => {}
                None => return Err(tok_err(&added_path, format!("id of {text:?} is not an integer"))),
            }
        }
    }
    if let Some(Value::Object(dec)) = tc.and_then(|t| t.get("added_tokens_decoder")) {
        for (id, data) in dec {
            let Ok(id) = id.parse::<usize>() else { continue };
            if id >= n {
                continue;
            }
            let Some(content) = data.get("content").and_then(Value::as_str) else { continue };
            let special = data.get("special").and_then(Value::as_bool).unwrap_or(false);
            let (text, ty) = if special || looks_special(content) {
                (content.to_string(), CONTROL)
            } else {
                (content.replace('\u{2581}', " "), USER_DEFINED)
            };
            tokens[id] = Tok { text, score: -1000.0, ty };
        }
    }
    Ok(())
}

fn pad_tokens(n: usize) -> Vec<Tok> {
    (0..n).map(|i| Tok { text: format!("[PAD{i}]"), score: -10000.0, ty: UNUSED }).collect()
}

fn spm_from_model(
    dir: &Path,
    path: &Path,
    h: &HfHparams,
    tc: Option<&Map<String, Value>>,
) -> Result<(Vec<Tok>, bool), ConvertError> {
    let bytes = std::fs::read(path).map_err(io_err(path))?;
    let model = sentencepiece::parse(&bytes).map_err(|e| tok_err(path, e.to_string()))?;
    let mut tokens = pad_tokens(h.n_vocab);
    for (id, p) in model.pieces.iter().enumerate().take(h.n_vocab) {
        // As llama.cpp: user-defined pieces of the model count as normal tokens.
        let ty = match p.kind {
            PieceType::Unknown => UNKNOWN,
            PieceType::Control => CONTROL,
            PieceType::Unused => UNUSED,
            PieceType::Byte => BYTE,
            PieceType::Normal | PieceType::UserDefined => NORMAL,
        };
        tokens[id] = Tok { text: p.piece.clone(), score: p.score, ty };
    }
    apply_added(dir, tc, &mut tokens)?;
    Ok((tokens, model.add_dummy_prefix))
}

fn vocab_map<'a>(path: &Path, model: &'a Map<String, Value>) -> Result<&'a Map<String, Value>, ConvertError> {
    model.get("vocab").and_then(Value::as_object).ok_or_else(|| tok_err(path, "model.vocab is not an object"))
}

/// The merges of a BPE model as "left right" strings (the pair format's spaces become U+0120,
/// as gguf-py writes them).
fn bpe_merges(path: &Path, model: &Map<String, Value>) -> Result<Vec<String>, ConvertError> {
    let Some(Value::Array(list)) = model.get("merges") else { return Err(tok_err(path, "model.merges is missing")) };
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) if pair.len() == 2 => {
                let part = |v: &Value| {
                    v.as_str().map(|s| s.replace(' ', "\u{120}")).ok_or_else(|| tok_err(path, "a merge is not two strings"))
                };
                Ok(format!("{} {}", part(&pair[0])?, part(&pair[1])?))
            }
            _ => Err(tok_err(path, format!("unknown merge format {m}"))),
        })
        .collect()
}

/// tokenizer.json with a byte-fallback BPE model, as a SentencePiece-style vocabulary.
fn spm_from_tokenizer_json(
    path: &Path,
    tj: &Map<String, Value>,
    model: &Map<String, Value>,
    h: &HfHparams,
) -> Result<(Vec<Tok>, bool), ConvertError> {
    let vocab = vocab_map(path, model)?;
    let mut tokens = pad_tokens(h.n_vocab);
    let mut by_text: HashMap<&str, usize> = HashMap::new();
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| tok_err(path, format!("vocab id of {text:?} is not an integer")))? as usize;
        if id >= h.n_vocab {
            return Err(tok_err(path, format!("token {text:?} has id {id}, beyond vocab_size {}", h.n_vocab)));
        }
        let ty = if is_byte_token(text) { BYTE } else { NORMAL };
        tokens[id] = Tok { text: text.clone(), score: 0.0, ty };
        by_text.insert(text.as_str(), id);
    }
    // Scores: minus the rank of the first merge producing each token; tokens no merge produces
    // (single characters) come after every merge, in id order. Byte and special tokens score 0.
    let merges = bpe_merges(path, model)?;
    let n_merges = merges.len();
    let mut ranked = vec![None; h.n_vocab];
    for (rank, m) in merges.iter().enumerate() {
        let Some((a, b)) = m.split_once(' ') else { continue };
        let joined = format!("{}{}", a.replace('\u{120}', " "), b.replace('\u{120}', " "));
        if let Some(&id) = by_text.get(joined.as_str()) {
            if ranked[id].is_none() {
                ranked[id] = Some(rank);
            }
        }
    }
    for (id, t) in tokens.iter_mut().enumerate() {
        if t.ty == NORMAL {
            t.score = match ranked[id] {
                Some(r) => -(r as f32),
                None => -((n_merges + id) as f32),
            };
        }
    }
    for a in added_tokens(Some(tj), path)? {
        if a.id >= h.n_vocab {
            continue;
        }
        let ty = if a.special { CONTROL } else { USER_DEFINED };
        tokens[a.id] = Tok { text: a.content, score: if a.special { 0.0 } else { -1000.0 }, ty };
    }
    // The space prefix: a Metaspace pre-tokenizer that prepends, or a Prepend("▁") normalizer.
    let prepend = |v: Option<&Value>| -> bool {
        fn walk(v: &Value, found: &mut bool) {
            match v.get("type").and_then(Value::as_str) {
                Some("Metaspace") => {
                    let scheme = v.get("prepend_scheme").and_then(Value::as_str);
                    let legacy = v.get("add_prefix_space").and_then(Value::as_bool);
                    if matches!(scheme, Some("first" | "always")) || legacy == Some(true) {
                        *found = true;
                    }
                }
                Some("Prepend") => *found |= v.get("prepend").and_then(Value::as_str) == Some("\u{2581}"),
                Some("Sequence") => {
                    for key in ["normalizers", "pretokenizers"] {
                        if let Some(Value::Array(a)) = v.get(key) {
                            a.iter().for_each(|x| walk(x, found));
                        }
                    }
                }
                _ => {}
            }
        }
        let mut found = false;
        if let Some(v) = v {
            walk(v, &mut found);
        }
        found
    };
    let prefix = prepend(tj.get("normalizer")) || prepend(tj.get("pre_tokenizer"));
    Ok((tokens, prefix))
}

fn is_byte_token(t: &str) -> bool {
    let b = t.as_bytes();
    b.len() == 6 && t.starts_with("<0x") && t.ends_with('>') && b[3].is_ascii_hexdigit() && b[4].is_ascii_hexdigit()
}

/// `tokenizer.ggml.pre` from the pre-tokenizer's structure.
fn detect_pre(path: &Path, tj: &Map<String, Value>) -> Result<&'static str, ConvertError> {
    let pt = tj.get("pre_tokenizer").filter(|v| !v.is_null());
    let Some(pt) = pt else {
        return Err(tok_err(path, "byte-level BPE without a pre-tokenizer is not supported"));
    };
    let list: Vec<&Value> = match pt.get("type").and_then(Value::as_str) {
        Some("Sequence") => match pt.get("pretokenizers") {
            Some(Value::Array(a)) => a.iter().collect(),
            _ => return Err(tok_err(path, "pre_tokenizer Sequence without pretokenizers")),
        },
        _ => vec![pt],
    };
    let kind = |v: &Value| v.get("type").and_then(Value::as_str).unwrap_or("").to_string();
    let byte_level_ok = |v: &Value, regex: bool| {
        kind(v) == "ByteLevel"
            && v.get("add_prefix_space").and_then(Value::as_bool) != Some(true)
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true) == regex
    };
    match list.as_slice() {
        [bl] if byte_level_ok(bl, true) => Ok("gpt2"),
        [split, bl] if kind(split) == "Split" && byte_level_ok(bl, false) => {
            let pattern = split.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str).unwrap_or("");
            match pattern {
                LLAMA3_PATTERN => Ok("llama-bpe"),
                QWEN2_PATTERN => Ok("qwen2"),
                other => Err(tok_err(
                    path,
                    format!("pre-tokenizer split pattern {other:?} is not one this converter knows (GPT-2, Llama 3, Qwen 2)"),
                )),
            }
        }
        _ => {
            let kinds: Vec<String> = list.iter().map(|v| kind(v)).collect();
            Err(tok_err(path, format!("pre-tokenizer [{}] is not one this converter knows (GPT-2, Llama 3, Qwen 2)", kinds.join(", "))))
        }
    }
}

/// llama.cpp's `get_vocab_base`: ids 0..vocab_size, added tokens typed CONTROL or
/// USER_DEFINED, holes filled with `[PADn]`.
fn bpe_tokens(path: &Path, tj: &Map<String, Value>, model: &Map<String, Value>, h: &HfHparams) -> Result<Vec<Tok>, ConvertError> {
    let vocab = vocab_map(path, model)?;
    let added = added_tokens(Some(tj), path)?;
    let mut tokens: Vec<Option<Tok>> = vec![None; h.n_vocab];
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| tok_err(path, format!("vocab id of {text:?} is not an integer")))? as usize;
        if id >= h.n_vocab {
            return Err(tok_err(path, format!("token {text:?} has id {id}, beyond vocab_size {}", h.n_vocab)));
        }
        tokens[id] = Some(Tok { text: text.clone(), score: 0.0, ty: NORMAL });
    }
    for a in added {
        if a.id >= h.n_vocab {
            return Err(tok_err(path, format!("added token {:?} has id {}, beyond vocab_size {}", a.content, a.id, h.n_vocab)));
        }
        let tok = if a.special || looks_special(&a.content) {
            Tok { text: a.content, score: 0.0, ty: CONTROL }
        } else {
            Tok { text: a.content.replace('\u{2581}', " "), score: 0.0, ty: USER_DEFINED }
        };
        tokens[a.id] = Some(tok);
    }
    Ok(tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| Tok { text: format!("[PAD{i}]"), score: 0.0, ty: UNUSED }))
        .collect())
}

/// The content of a `tokenizer_config.json` special-token entry (a string or `{content}`).
fn entry_content(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// gguf-py's `SpecialVocab`: special-token ids, the add-BOS/EOS flags and the chat template.
fn special_vocab(
    kvs: &mut Vec<(String, MetaValue)>,
    dir: &Path,
    tj: Option<&Map<String, Value>>,
    tc: Option<&Map<String, Value>>,
    config: &Map<String, Value>,
    n_vocab: usize,
) -> Result<(), ConvertError> {
    const TYPES: [&str; 7] = ["bos", "eos", "unk", "sep", "pad", "cls", "mask"];
    let mut ids: HashMap<&str, u32> = HashMap::new();
    let mut add: Vec<(&str, bool)> = Vec::new();
    let set_add = |add: &mut Vec<(&'static str, bool)>, typ: &'static str, v: bool, overwrite: bool| {
        match add.iter_mut().find(|(t, _)| *t == typ) {
            Some(e) if overwrite => e.1 = v,
            Some(_) => {}
            None => add.push((typ, v)),
        }
    };
    let path = dir.join("tokenizer.json");
    let added = added_tokens(tj, &path)?;
    let mut bos = tc.and_then(|t| entry_content(t.get("bos_token")));
    let mut eos = tc.and_then(|t| entry_content(t.get("eos_token")));
    if let Some(pp) = tj.and_then(|t| t.get("post_processor")).filter(|v| !v.is_null()) {
        let procs: Vec<&Value> = match pp.get("processors") {
            Some(Value::Array(a)) => a.iter().collect(),
            _ => vec![pp],
        };
        for p in procs {
            match p.get("type").and_then(Value::as_str) {
                Some("ByteLevel") => {
                    set_add(&mut add, "bos", false, false);
                    set_add(&mut add, "eos", false, false);
                }
                Some("RobertaProcessing") => {
                    set_add(&mut add, "bos", true, true);
                    set_add(&mut add, "eos", true, true);
                    set_add(&mut add, "sep", true, true);
                }
                Some("TemplateProcessing") => {
                    let single: Vec<&Value> = match p.get("single") {
                        Some(Value::Array(a)) => a.iter().collect(),
                        _ => Vec::new(),
                    };
                    let special_id =
                        |v: &Value| v.get("SpecialToken").and_then(|s| s.get("id")).and_then(Value::as_str).map(str::to_string);
                    if single.len() > 1 {
                        // A template's leading special token is the BOS (and its trailing one the
                        // EOS) when the config names none.
                        if let Some(first) = special_id(single[0]) {
                            let is_bos = bos.get_or_insert_with(|| first.clone()) == &first;
                            set_add(&mut add, "bos", is_bos, true);
                        }
                        if let Some(last) = single.last().and_then(|v| special_id(v)) {
                            let is_eos = eos.get_or_insert_with(|| last.clone()) == &last;
                            set_add(&mut add, "eos", is_eos, true);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    if let Some(tc) = tc {
        for typ in TYPES {
            if let Some(Value::Bool(b)) = tc.get(&format!("add_{typ}_token")) {
                set_add(&mut add, typ, *b, false);
            }
            let content = match typ {
                "bos" => bos.clone(),
                "eos" => eos.clone(),
                _ => entry_content(tc.get(&format!("{typ}_token"))),
            };
            if let Some(content) = content {
                if let Some(a) = added.iter().find(|a| a.content == content) {
                    if a.id < n_vocab {
                        ids.entry(typ).or_insert(a.id as u32);
                    }
                }
            }
        }
    }
    for typ in TYPES {
        let key = format!("{typ}_token_id");
        if let Some(id) = config.get(&key).and_then(Value::as_u64) {
            if (id as usize) < n_vocab {
                ids.entry(typ).or_insert(id as u32);
            }
        }
    }
    for typ in TYPES {
        if let Some(&id) = ids.get(typ) {
            let key = match typ {
                "unk" => "unknown",
                "sep" => "seperator",
                "pad" => "padding",
                t => t,
            };
            kvs.push((format!("tokenizer.ggml.{key}_token_id"), MetaValue::U32(id)));
        }
    }
    for (typ, v) in add {
        if matches!(typ, "bos" | "eos" | "sep") {
            kvs.push((format!("tokenizer.ggml.add_{typ}_token"), MetaValue::Bool(v)));
        }
    }
    // The chat template: tokenizer_config.json, else chat_template.jinja / chat_template.json.
    let template = match tc.and_then(|t| t.get("chat_template")).filter(|v| !v.is_null()) {
        Some(v) => Some(v.clone()),
        None => {
            let jinja = dir.join("chat_template.jinja");
            let json = dir.join("chat_template.json");
            if jinja.is_file() {
                Some(Value::String(std::fs::read_to_string(&jinja).map_err(io_err(&jinja))?))
            } else {
                read_json(&json)?.and_then(|m| m.get("chat_template").cloned())
            }
        }
    };
    match template {
        Some(Value::String(s)) => kvs.push(("tokenizer.chat_template".into(), MetaValue::String(s))),
        Some(Value::Array(list)) => {
            let mut names = Vec::new();
            for t in list {
                let (Some(name), Some(body)) = (t.get("name").and_then(Value::as_str), t.get("template").and_then(Value::as_str)) else {
                    continue;
                };
                if name == "default" {
                    kvs.push(("tokenizer.chat_template".into(), MetaValue::String(body.into())));
                } else {
                    kvs.push((format!("tokenizer.chat_template.{name}"), MetaValue::String(body.into())));
                    names.push(name.to_string());
                }
            }
            if !names.is_empty() {
                kvs.push(("tokenizer.chat_templates".into(), MetaValue::Array(MetaArray::String(names))));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Every `tokenizer.*` key of an existing GGUF file (`--vocab-from`).
pub fn from_gguf(path: &PathBuf) -> Result<VocabMeta, ConvertError> {
    let f = GgufFile::open(path)?;
    let kvs: Vec<(String, MetaValue)> =
        f.metadata().filter(|(k, _)| k.starts_with("tokenizer.")).map(|(k, v)| (k.to_string(), v.to_owned_value())).collect();
    let n_tokens = match kvs.iter().find(|(k, _)| k == "tokenizer.ggml.tokens") {
        Some((_, MetaValue::Array(MetaArray::String(t)))) => t.len(),
        _ => return Err(tok_err(path, "no tokenizer.ggml.tokens string array")),
    };
    Ok(VocabMeta { kvs, n_tokens, source: format!("{} (--vocab-from)", path.display()), notes: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_looking_tokens() {
        assert!(looks_special("<|im_end|>"));
        assert!(looks_special("<unused12>"));
        assert!(!looks_special("<s>"));
        assert!(is_byte_token("<0x0A>"));
        assert!(!is_byte_token("<0xZZ>"));
    }
}
