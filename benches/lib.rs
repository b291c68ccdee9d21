//! Benchmarks live in the `[[bench]]` targets of this package (`cargo bench -p engine-benches`).
