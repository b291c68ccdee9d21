//! What LightTransfer-Test identification costs: prefill of a 1024-token prompt on the default
//! model with and without the lazy-ratio probe (measurement only, so both runs do the same
//! attention work afterwards). The bound: identification at most 2% of prefill time.
//!
//! `cargo bench -p engine-benches --bench lighttransfer`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use engine::gguf::GgufFile;
use engine::lighttransfer::{LazyProbe, Selection, StreamParams};
use engine::model::{Logits, Model, Session, SessionParams};

const N: usize = 1024;

fn bench(c: &mut Criterion) {
    let Ok(path) = engine::model_path::resolve(None) else {
        eprintln!("lighttransfer: default model not in the cache; run `python3 models/fetch.py` first");
        return;
    };
    let file = GgufFile::open(&path).expect("open");
    let model = Model::load(&file).expect("load");
    let tokens: Vec<u32> = (0..N as u32).map(|i| 2 + (i * 7919) % 200_000).collect();
    let params = SessionParams { n_ctx: N + 1, n_batch: N, ..SessionParams::default() };
    let stream = StreamParams { sink: 4, window: 124 };
    let mut g = c.benchmark_group("prefill1024");
    g.sample_size(10);
    g.bench_function("native", |b| {
        b.iter(|| {
            let mut s = Session::new(&model, &params).unwrap();
            black_box(s.eval(&tokens, Logits::Last).unwrap())
        })
    });
    g.bench_function("with_lazy_ratio_probe", |b| {
        b.iter(|| {
            let mut s = Session::new(&model, &params).unwrap();
            s.cache.probe = Some(LazyProbe::new(model.cfg.n_layer, stream, 16, N, Selection::Measure));
            black_box(s.eval(&tokens, Logits::Last).unwrap())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
