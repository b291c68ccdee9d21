//! The default model's tokenizer against llama.cpp: every prompt of
//! `fixtures/tokenizer/prompts.json`, and 300 random strings made to meet at odd boundaries, must
//! give exactly the ids llama.cpp gave (`fixtures/tokenizer/gemma3_llamacpp.json`, written by
//! `scripts/make_tokenizer_fixtures.py` with llama-cpp-python),
//! decode to the same bytes, and round-trip wherever llama.cpp's does. Token attributes after
//! llama.cpp's load-time fix-ups and the end-of-generation set are compared too.

use std::path::PathBuf;

use engine::gguf::GgufFile;
use engine::tokenizer::{DecodeOptions, TokenizeOptions, Tokenizer};
use serde_json::Value;

fn fixture() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/tokenizer/gemma3_llamacpp.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture JSON")
}

fn tokenizer() -> Option<Tokenizer> {
    let path = engine_tests::default_model()?;
    let file = GgufFile::open(&path).expect("open the default model");
    Some(Tokenizer::from_gguf(&file).expect("build the tokenizer"))
}

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array().expect("ids").iter().map(|x| x.as_u64().expect("id") as u32).collect()
}

fn from_hex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
}

/// Checks one list of cases; returns one line per disagreement.
fn check_cases(t: &Tokenizer, cases: &[Value], parse_special: bool) -> Vec<String> {
    let mut bad = Vec::new();
    let opts = TokenizeOptions { add_special: true, parse_special };
    for c in cases {
        let name = c["name"].as_str().expect("name");
        let text = c["text"].as_str().expect("text");
        let want = ids_of(&c["ids"]);
        let got = t.tokenize(text, opts);
        if got != want {
            bad.push(format!("{name}: ids differ\n   llama.cpp {want:?}\n   ours      {got:?}"));
            continue;
        }
        let decoded = t.detokenize(&got, DecodeOptions::default()).expect("detokenize");
        if decoded != from_hex(c["detok_hex"].as_str().expect("detok_hex")) {
            bad.push(format!("{name}: detokenized text differs from llama.cpp's: {:?}", String::from_utf8_lossy(&decoded)));
        }
        if c["roundtrip"].as_bool() == Some(true) && decoded != text.as_bytes() {
            bad.push(format!("{name}: llama.cpp round-trips, we do not"));
        }
        // The streaming decoder gives the same text as decoding at once.
        let mut d = t.stream_decoder(false);
        let mut streamed = String::new();
        for &id in &got {
            streamed.push_str(&d.push(id).expect("push"));
        }
        streamed.push_str(&d.finish());
        if streamed != String::from_utf8_lossy(&decoded) {
            bad.push(format!("{name}: streamed text {streamed:?} differs"));
        }
    }
    bad
}

#[test]
fn ids_match_llama_cpp_for_user_text() {
    let Some(t) = tokenizer() else { return };
    let fx = fixture();
    let cases = fx["cases"].as_array().expect("cases");
    assert!(cases.len() >= 40, "only {} cases", cases.len());
    let bad = check_cases(&t, cases, false);
    assert!(bad.is_empty(), "{} of {} cases disagree with llama.cpp:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn ids_match_llama_cpp_with_parse_special() {
    let Some(t) = tokenizer() else { return };
    let fx = fixture();
    let cases = fx["parse_special_cases"].as_array().expect("parse_special_cases");
    let bad = check_cases(&t, cases, true);
    assert!(bad.is_empty(), "{} of {} cases disagree with llama.cpp:\n{}", bad.len(), cases.len(), bad.join("\n"));
}

#[test]
fn ids_match_llama_cpp_for_random_strings() {
    let Some(t) = tokenizer() else { return };
    let fx = fixture();
    for (key, parse_special) in [("random_cases", false), ("random_parse_special_cases", true)] {
        let cases = fx[key].as_array().expect(key);
        let bad = check_cases(&t, cases, parse_special);
        assert!(bad.is_empty(), "{key}: {} of {} disagree with llama.cpp:\n{}", bad.len(), cases.len(), bad.join("\n"));
    }
}

#[test]
fn special_tokens_and_attributes_match_llama_cpp() {
    let Some(t) = tokenizer() else { return };
    let fx = fixture();
    assert_eq!(t.n_vocab() as u64, fx["n_vocab"].as_u64().unwrap());
    assert_eq!(t.bos().map(i64::from), fx["bos"].as_i64());
    assert_eq!(t.eos().map(i64::from), fx["eos"].as_i64());
    assert_eq!(t.special_tokens().eot.map(i64::from).unwrap_or(-1), fx["eot"].as_i64().unwrap());
    assert_eq!(t.eog_tokens(), ids_of(&fx["eog"]).as_slice());
    // Runs of [first, last, attr] over the tokens whose attributes are not plain NORMAL.
    let mut runs: Vec<[u64; 3]> = Vec::new();
    for id in 0..t.n_vocab() as u32 {
        let a = t.token_attr(id).unwrap().0 as u64;
        if a == 4 {
            continue;
        }
        match runs.last_mut() {
            Some(r) if r[1] + 1 == id as u64 && r[2] == a => r[1] = id as u64,
            _ => runs.push([id as u64, id as u64, a]),
        }
    }
    let want: Vec<[u64; 3]> = fx["attr_runs_not_normal"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let r = r.as_array().unwrap();
            [r[0].as_u64().unwrap(), r[1].as_u64().unwrap(), r[2].as_u64().unwrap()]
        })
        .collect();
    assert_eq!(runs, want);
}

#[test]
fn cli_prints_the_same_ids() {
    let Some(model) = engine_tests::default_model() else { return };
    let fx = fixture();
    let case = fx["cases"].as_array().unwrap().iter().find(|c| c["name"] == "user_typed_chat_markup").unwrap();
    let out = std::process::Command::new(engine_tests::bin::engine_bin())
        .args(["tokenize", "--ids", "-m"])
        .arg(&model)
        .args(["-p", case["text"].as_str().unwrap()])
        .output()
        .expect("run engine tokenize");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed: Value = serde_json::from_slice(&out.stdout).expect("one JSON array");
    assert_eq!(ids_of(&printed), ids_of(&case["ids"]));
    let lines = String::from_utf8(out.stdout).unwrap();
    assert_eq!(lines.lines().count(), 1);

    // Without --ids: one "id -> 'piece'" line per token; the BOS shown by its text.
    let out = std::process::Command::new(engine_tests::bin::engine_bin())
        .args(["tokenize", "-p", "Hello world", "-m"])
        .arg(&model)
        .output()
        .expect("run engine tokenize");
    let text = String::from_utf8(out.stdout).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(first.trim_start(), "2 -> '<bos>'");
    assert_eq!(text.lines().count(), 3, "{text}");
}

/// Building the tokenizer for the 262,144-token vocabulary is cheap (the budget is loose, for
/// debug builds and busy machines; the benchmark measures it properly).
#[test]
fn building_is_fast() {
    let Some(path) = engine_tests::default_model() else { return };
    let file = GgufFile::open(&path).unwrap();
    let _ = Tokenizer::from_gguf(&file).unwrap();
    let start = std::time::Instant::now();
    let t = Tokenizer::from_gguf(&file).unwrap();
    let took = start.elapsed();
    assert_eq!(t.n_vocab(), 262_144);
    assert!(took.as_millis() < 1000, "building took {took:?}");
}
