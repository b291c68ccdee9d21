//! Tokenizers of other vocabularies against llama.cpp: GPT-2 (byte-level BPE; also under the
//! Llama 3, Qwen 2 and DBRX pre-tokenizers, by rewriting `tokenizer.ggml.pre`) and Phi-3 (SPM
//! with a space prefix and llama.cpp's Phi-3 whitespace rule). The vocabulary files are llama.cpp's
//! own test vocabularies (`fixtures/tokenizer/vocabs/`); the ids are llama.cpp's
//! (`fixtures/tokenizer/vocabs_llamacpp.json`, from `scripts/make_tokenizer_fixtures.py`).

use std::path::PathBuf;

use engine::gguf::{GgufFile, GgufWriter, MetaValue};
use engine::tokenizer::{DecodeOptions, PreTokenizer, TokenizeOptions, Tokenizer, TokenizerError, TokenizerModel};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer")
}

fn reference() -> Value {
    let path = fixtures().join("vocabs_llamacpp.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

/// The vocabulary file, with `tokenizer.ggml.pre` replaced when `pre` is given.
fn tokenizer(file: &str, pre: Option<&str>) -> Result<Tokenizer, TokenizerError> {
    let gguf = GgufFile::open(fixtures().join("vocabs").join(file)).expect("open vocabulary");
    match pre {
        None => Tokenizer::from_gguf(&gguf),
        Some(pre) => {
            let mut w = GgufWriter::from_file(&gguf).expect("copy");
            w.set("tokenizer.ggml.pre", MetaValue::String(pre.to_string())).expect("set pre");
            let mut image = Vec::new();
            w.write_to(&mut image, None).expect("write");
            Tokenizer::from_gguf(&GgufFile::from_bytes(&image).expect("reopen"))
        }
    }
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn check(name: &str) {
    let fx = reference();
    let texts: Vec<&str> = fx["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    let v = &fx["vocabs"][name];
    let t = tokenizer(v["file"].as_str().unwrap(), v["pre"].as_str()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut bad = Vec::new();
    let mut n = 0;
    for (key, parse_special) in [("cases", false), ("parse_special_cases", true)] {
        for (i, case) in v[key].as_array().unwrap().iter().enumerate() {
            n += 1;
            let want = ids_of(&case[0]);
            let got = t.tokenize(texts[i], TokenizeOptions { add_special: true, parse_special });
            if got != want {
                bad.push(format!("{key}[{i}] {:?}\n   llama.cpp {want:?}\n   ours      {got:?}", texts[i]));
                continue;
            }
            let decoded = t.detokenize(&got, DecodeOptions::default()).unwrap();
            if hex(&decoded) != case[1].as_str().unwrap() {
                bad.push(format!("{key}[{i}] {:?}: decoded {:?}", texts[i], String::from_utf8_lossy(&decoded)));
            }
        }
    }
    assert!(bad.is_empty(), "{name}: {} of {n} cases disagree with llama.cpp:\n{}", bad.len(), bad.join("\n"));
}

#[test]
fn gpt2_bpe_matches_llama_cpp() {
    check("gpt-2");
    let t = tokenizer("ggml-vocab-gpt-2.gguf", None).unwrap();
    assert_eq!(t.model(), TokenizerModel::Bpe(PreTokenizer::Gpt2));
    assert!(!t.add_bos());
}

#[test]
fn llama3_pre_tokenizer_matches_llama_cpp() {
    check("gpt-2_as_llama-bpe");
    // The Llama 3 family adds a BOS.
    assert!(tokenizer("ggml-vocab-gpt-2.gguf", Some("llama-bpe")).unwrap().add_bos());
}

#[test]
fn qwen2_pre_tokenizer_matches_llama_cpp() {
    check("gpt-2_as_qwen2");
}

#[test]
fn dbrx_pre_tokenizer_matches_llama_cpp() {
    check("gpt-2_as_dbrx");
}

#[test]
fn phi3_spm_matches_llama_cpp() {
    check("phi-3");
    assert!(tokenizer("ggml-vocab-phi-3.gguf", None).unwrap().add_space_prefix());
}

#[test]
fn unknown_or_missing_pre_tokenizer_is_refused() {
    let e = tokenizer("ggml-vocab-gpt-2.gguf", Some("starcoder")).err().unwrap();
    assert!(matches!(e, TokenizerError::UnsupportedPreTokenizer(ref p) if p == "starcoder"), "{e}");
    let e = tokenizer("ggml-vocab-gpt-2.gguf", Some("no-such-pre")).err().unwrap();
    assert!(e.to_string().contains("refusing to guess"), "{e}");

    let gguf = GgufFile::open(fixtures().join("vocabs/ggml-vocab-gpt-2.gguf")).unwrap();
    let mut w = GgufWriter::from_file(&gguf).unwrap();
    w.remove("tokenizer.ggml.pre");
    let mut image = Vec::new();
    w.write_to(&mut image, None).unwrap();
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(&image).unwrap()).err().unwrap();
    assert!(matches!(e, TokenizerError::MissingPreTokenizer), "{e}");
}

#[test]
fn malformed_merges_are_refused() {
    let gguf = GgufFile::open(fixtures().join("vocabs/ggml-vocab-gpt-2.gguf")).unwrap();
    let mut w = GgufWriter::from_file(&gguf).unwrap();
    let merges = match w.get("tokenizer.ggml.merges") {
        Some(MetaValue::Array(engine::gguf::MetaArray::String(m))) => m.clone(),
        _ => panic!("no merges"),
    };
    let mut broken = merges.clone();
    broken[7] = "nospace".to_string();
    w.set("tokenizer.ggml.merges", MetaValue::Array(engine::gguf::MetaArray::String(broken))).unwrap();
    let mut image = Vec::new();
    w.write_to(&mut image, None).unwrap();
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(&image).unwrap()).err().unwrap();
    assert!(matches!(e, TokenizerError::MalformedMerge { rank: 7, .. }), "{e}");

    w.remove("tokenizer.ggml.merges");
    let mut image = Vec::new();
    w.write_to(&mut image, None).unwrap();
    let e = Tokenizer::from_gguf(&GgufFile::from_bytes(&image).unwrap()).err().unwrap();
    assert!(matches!(e, TokenizerError::MissingKey("tokenizer.ggml.merges")), "{e}");
}
