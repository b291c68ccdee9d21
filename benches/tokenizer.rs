//! The tokenizer of the default model: building it from the GGUF metadata (262,144 tokens), and
//! tokenizing ~100 KB of mixed text (English prose, code, several scripts, whitespace runs); the
//! same text through byte-level BPE (llama.cpp's GPT-2 test vocabulary).
//!
//! `cargo bench -p engine-benches --bench tokenizer`. Besides criterion's timings it prints the
//! tokens per second of one pass, the figure a perplexity run over megabytes of text pays.

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use engine::gguf::GgufFile;
use engine::tokenizer::{TokenizeOptions, Tokenizer};

const PROSE: &str = "It was the best of times, it was the worst of times, it was the age of wisdom, it was \
the age of foolishness, it was the epoch of belief, it was the epoch of incredulity, it was the season of \
Light, it was the season of Darkness, it was the spring of hope, it was the winter of despair, we had \
everything before us, we had nothing before us, we were all going direct to Heaven, we were all going \
direct the other way. In 1859, 3,000,000 copies were sold; about 12.5% went abroad.\n\n";

const CODE: &str = "fn main() {\n    let xs: Vec<u32> = (0..100).filter(|x| x % 3 == 0).collect();\n    \
for (i, x) in xs.iter().enumerate() {\n        println!(\"{i}: {x:>8}\");\n    }\n}\n\n";

const MIXED: &str = "Größenwahn und Straße. 你好，世界！这是一个测试。こんにちは世界。안녕하세요. \
مرحبا بالعالم. Привет, мир! नमस्ते दुनिया. I love 🍕 and 🚀, 👨‍👩‍👧‍👦.\n";

/// About `bytes` bytes of text: prose, code and other scripts in turn.
fn corpus(bytes: usize) -> String {
    let mut s = String::with_capacity(bytes + 1024);
    while s.len() < bytes {
        s.push_str(PROSE);
        s.push_str(CODE);
        s.push_str(MIXED);
    }
    s
}

fn bench(c: &mut Criterion) {
    let Ok(path) = engine::model_path::resolve(None) else {
        eprintln!("tokenizer: default model not in the cache; run `python3 models/fetch.py` first");
        return;
    };
    let file = GgufFile::open(&path).expect("open");
    let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    let text = corpus(100 * 1024);
    let opts = TokenizeOptions::default();

    let start = Instant::now();
    let n = tok.tokenize(&text, opts).len();
    let secs = start.elapsed().as_secs_f64();
    eprintln!(
        "tokenizer: {} bytes -> {n} tokens in {:.2} ms: {:.2} M tokens/s, {:.1} MB/s",
        text.len(),
        secs * 1e3,
        n as f64 / secs / 1e6,
        text.len() as f64 / secs / 1e6
    );

    c.bench_function("tokenizer_build_gemma3_262k", |b| b.iter(|| black_box(Tokenizer::from_gguf(&file).expect("tokenizer"))));

    let mut g = c.benchmark_group("tokenize");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("gemma3_100kb_mixed", |b| b.iter(|| black_box(tok.tokenize(black_box(&text), opts))));
    // Byte-level BPE on llama.cpp's GPT-2 test vocabulary (in the repository).
    let gpt2_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tokenizer/vocabs/ggml-vocab-gpt-2.gguf");
    if let Ok(gpt2_file) = GgufFile::open(&gpt2_path) {
        let gpt2 = Tokenizer::from_gguf(&gpt2_file).expect("gpt-2 tokenizer");
        g.bench_function("gpt2_bpe_100kb_mixed", |b| b.iter(|| black_box(gpt2.tokenize(black_box(&text), opts))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
