//! Chat templates and conversations.
//!
//! A template turns a list of messages into the model's prompt format. Templates stored in GGUF
//! files (`tokenizer.chat_template`) are code written by the file's author, so they are rendered
//! by minijinja in a sandbox: no loader (no file system), no access to the environment or to
//! processes, a recursion limit, a fuel limit (bounded work, and so bounded loops), and a cap on
//! the rendered size. Built-in templates cover Gemma, Llama 3 and ChatML for files without one.
//!
//! Message text typed by a person stays plain text: the template is rendered with a placeholder
//! for each message's content, the template's own text is tokenized with special tokens parsed
//! (`<start_of_turn>`), and each message's content is tokenized with special tokens *not* parsed.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

use crate::gguf::GgufFile;
use crate::model::config::Arch;
use crate::tokenizer::{TokenId, TokenizeOptions, Tokenizer};

/// Work a render may do (minijinja's fuel: roughly one unit per instruction).
pub const TEMPLATE_FUEL: u64 = 2_000_000;
/// Nesting of calls, includes and blocks.
pub const TEMPLATE_RECURSION: usize = 64;
/// Largest rendered prompt, in bytes.
pub const TEMPLATE_MAX_OUTPUT: usize = 4 << 20;
/// Largest template source accepted.
pub const TEMPLATE_MAX_SOURCE: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    #[error("chat template {name}: {detail}")]
    Template { name: String, detail: String },
    #[error("chat template {name}: rendered prompt is larger than {TEMPLATE_MAX_OUTPUT} bytes")]
    TooLarge { name: String },
    #[error("unknown built-in chat template {0:?} (known: gemma, llama3, chatml)")]
    UnknownBuiltin(String),
    #[error("reading tokenizer.chat_template: {0}")]
    Gguf(#[from] crate::gguf::GgufError),
}

/// A chat message.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Message {
        Message { role: role.to_string(), content: content.to_string() }
    }
}

/// The templates built in, for files that carry none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Builtin {
    Gemma,
    Llama3,
    ChatMl,
}

impl Builtin {
    pub fn from_name(name: &str) -> Option<Builtin> {
        match name {
            "gemma" | "gemma3" => Some(Builtin::Gemma),
            "llama3" => Some(Builtin::Llama3),
            "chatml" => Some(Builtin::ChatMl),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Gemma => "gemma",
            Builtin::Llama3 => "llama3",
            Builtin::ChatMl => "chatml",
        }
    }

    /// The usual template of an architecture's instruction-tuned models.
    pub fn for_arch(arch: Arch) -> Builtin {
        match arch {
            Arch::Gemma3 => Builtin::Gemma,
            Arch::Llama => Builtin::Llama3,
            Arch::Qwen2 => Builtin::ChatMl,
        }
    }

    fn source(self) -> &'static str {
        match self {
            // Gemma has no system role: a system message is put before the first user message.
            Builtin::Gemma => concat!(
                "{{ bos_token }}",
                "{% set ns = namespace(system='') %}",
                "{% for m in messages %}",
                "{% if m.role == 'system' %}{% set ns.system = m.content + '\n\n' %}",
                "{% else %}<start_of_turn>{{ 'model' if m.role == 'assistant' else m.role }}\n",
                "{% if m.role == 'user' %}{{ ns.system }}{% set ns.system = '' %}{% endif %}",
                "{{ m.content }}<end_of_turn>\n{% endif %}",
                "{% endfor %}",
                "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
            ),
            Builtin::Llama3 => concat!(
                "{{ bos_token }}",
                "{% for m in messages %}<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content }}<|eot_id|>{% endfor %}",
                "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
            ),
            Builtin::ChatMl => concat!(
                "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}",
                "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
            ),
        }
    }
}

/// A parsed chat template, ready to render.
pub struct ChatTemplate {
    name: String,
    env: Environment<'static>,
}

/// Marks a message's content in the rendered text: private-use characters no template emits.
const MARK: char = '\u{F8FF}';

fn raise_exception(msg: String) -> Result<String, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

impl ChatTemplate {
    /// Parses template source. `name` is used in messages ("gguf", "gemma", a file name).
    pub fn parse(name: &str, source: &str) -> Result<ChatTemplate, ChatError> {
        let err = |e: JinjaError| ChatError::Template { name: name.to_string(), detail: e.to_string() };
        if source.len() > TEMPLATE_MAX_SOURCE {
            return Err(ChatError::Template { name: name.to_string(), detail: format!("source is larger than {TEMPLATE_MAX_SOURCE} bytes") });
        }
        let mut env = Environment::new();
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(TEMPLATE_RECURSION);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned("chat", source.to_string()).map_err(err)?;
        Ok(ChatTemplate { name: name.to_string(), env })
    }

    pub fn builtin(b: Builtin) -> Result<ChatTemplate, ChatError> {
        Self::parse(b.name(), b.source())
    }

    pub fn builtin_named(name: &str) -> Result<ChatTemplate, ChatError> {
        Builtin::from_name(name).ok_or_else(|| ChatError::UnknownBuiltin(name.to_string())).and_then(Self::builtin)
    }

    /// The template stored in the file, if any.
    pub fn from_gguf(file: &GgufFile) -> Result<Option<ChatTemplate>, ChatError> {
        match file.get_str("tokenizer.chat_template")? {
            Some(src) => Self::parse("tokenizer.chat_template", src).map(Some),
            None => Ok(None),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders `messages` to text; `bos` and `eos` are the texts of those tokens.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool, bos: &str, eos: &str) -> Result<String, ChatError> {
        let err = |e: JinjaError| ChatError::Template { name: self.name.clone(), detail: e.to_string() };
        let tmpl = self.env.get_template("chat").map_err(err)?;
        let out = tmpl
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => bos,
                eos_token => eos,
            })
            .map_err(err)?;
        if out.len() > TEMPLATE_MAX_OUTPUT {
            return Err(ChatError::TooLarge { name: self.name.clone() });
        }
        Ok(out)
    }

    /// Renders and tokenizes `messages`: the template's text with special tokens parsed, each
    /// message's content as plain text.
    pub fn tokenize(&self, messages: &[Message], add_generation_prompt: bool, tok: &Tokenizer) -> Result<Vec<TokenId>, ChatError> {
        let marked: Vec<Message> =
            messages.iter().enumerate().map(|(i, m)| Message { role: m.role.clone(), content: format!("{MARK}{i}{MARK}") }).collect();
        let text = |id: Option<TokenId>| id.and_then(|i| tok.token_text(i)).unwrap_or("");
        let rendered = self.render(&marked, add_generation_prompt, text(tok.bos()), text(tok.eos()))?;
        let special = TokenizeOptions { add_special: false, parse_special: true };
        let plain = TokenizeOptions { add_special: false, parse_special: false };
        let mut out = Vec::new();
        let mut rest = rendered.as_str();
        while let Some(start) = rest.find(MARK) {
            let after = &rest[start + MARK.len_utf8()..];
            let Some(end) = after.find(MARK) else { break };
            let index: Option<usize> = after[..end].parse().ok();
            match index.and_then(|i| messages.get(i)) {
                Some(m) => {
                    tok.tokenize_into(&rest[..start], special, &mut out);
                    tok.tokenize_into(&m.content, plain, &mut out);
                    rest = &after[end + MARK.len_utf8()..];
                }
                None => break,
            }
        }
        tok.tokenize_into(rest, special, &mut out);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_parse_and_render() {
        for b in [Builtin::Gemma, Builtin::Llama3, Builtin::ChatMl] {
            ChatTemplate::parse(b.name(), b.source()).unwrap();
        }
        let msgs = [Message::new("system", "Be brief."), Message::new("user", "Hi"), Message::new("assistant", "Hello!")];
        let gemma = ChatTemplate::builtin(Builtin::Gemma).unwrap().render(&msgs, true, "<bos>", "<eos>").unwrap();
        assert_eq!(
            gemma,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>model\n"
        );
        let chatml = ChatTemplate::builtin(Builtin::ChatMl).unwrap().render(&msgs[1..2], true, "", "").unwrap();
        assert_eq!(chatml, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    }

    #[test]
    fn a_template_bomb_runs_out_of_fuel() {
        let t = ChatTemplate::parse("bomb", "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}").unwrap();
        let err = t.env.get_template("chat").unwrap().render(context! {}).unwrap_err();
        assert!(err.to_string().contains("fuel"), "{err}");
    }

    #[test]
    fn templates_cannot_reach_files_or_the_environment() {
        for src in ["{% include '/etc/passwd' %}", "{% import '/etc/passwd' as p %}", "{{ env }}{{ os.environ }}"] {
            let t = ChatTemplate::parse("evil", src).unwrap();
            let r = t.env.get_template("chat").unwrap().render(context! {});
            match r {
                Err(_) => {}
                Ok(s) => assert!(!s.contains("root:"), "{src} rendered {s:?}"),
            }
        }
    }

    #[test]
    fn one_huge_string_does_not_get_through() {
        // A single instruction that builds a huge string costs one unit of fuel: the size cap
        // (or minijinja's own limit on repetition) must stop it.
        let t = ChatTemplate::parse("big", "{{ 'x' * 100000000 }}").unwrap();
        let err = t.render(&[], false, "", "").unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let t = ChatTemplate::parse("bigger", "{{ 'x' * 10000000000 }}").unwrap();
        assert!(t.render(&[], false, "", "").is_err());
    }

    #[test]
    fn deep_recursion_is_stopped() {
        let src = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}";
        let t = ChatTemplate::parse("recursive", src).unwrap();
        assert!(t.env.get_template("chat").unwrap().render(context! {}).is_err());
    }
}
