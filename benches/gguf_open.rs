//! Opening the default model and reading its metadata: the cost every command pays first.
//!
//! `cargo bench -p engine-benches --bench gguf_open`. Besides the criterion timings it prints the
//! resident memory of the file mapping after an open, to show that opening touches no tensor data.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::gguf::{GgufFile, OpenOptions, ValueType};

/// Opens the file and reads what a model loader reads first: architecture, hyperparameters and
/// the tokenizer arrays (walked, not copied).
fn open_and_read(path: &std::path::Path, opts: OpenOptions) -> usize {
    let f = GgufFile::open_with(path, opts).expect("open");
    let arch = f.get_str("general.architecture").ok().flatten().unwrap_or("").to_string();
    let mut n = f.require::<u32>(&format!("{arch}.block_count")).unwrap_or(0) as usize;
    if let Ok(Some(tokens)) = f.get_array("tokenizer.ggml.tokens", ValueType::String) {
        n += tokens.strings().map(|it| it.map(str::len).sum::<usize>()).unwrap_or(0);
    }
    n + f.tensors().len()
}

fn bench(c: &mut Criterion) {
    let Ok(path) = engine::model_path::resolve(None) else {
        eprintln!("gguf_open: default model not in the cache; run `python3 models/fetch.py` first");
        return;
    };
    let rss = {
        let file = GgufFile::open(&path).expect("open");
        for (_, v) in file.metadata() {
            black_box(v.render(Some(4)));
        }
        engine::memstat::mapping_rss_kib(&path)
    };
    eprintln!("gguf_open: after open + metadata read, the file mapping has {rss:?} KiB resident (file {} KiB)",
        std::fs::metadata(&path).map(|m| m.len() / 1024).unwrap_or(0));
    c.bench_function("gguf_open_default_model_mmap", |b| b.iter(|| black_box(open_and_read(&path, OpenOptions::default()))));
}

criterion_group!(benches, bench);
criterion_main!(benches);
