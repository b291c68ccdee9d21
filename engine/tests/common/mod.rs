//! What the GPU tests share: the skip without a GPU, random-weight models, random token streams,
//! the error measure and the layer kinds with streaming (lazy) layers.
#![allow(dead_code)] // (each test file uses its part)

use std::path::{Path, PathBuf};

use engine::model::kv_cache::LayerKind;
use engine::quant_mix::FileType;
use engine::synth::{preset, synthesize, SynthParams};

/// The GPUs, or `None` after saying why the test is skipped.
pub fn gpus() -> Option<Vec<engine_cuda::DeviceInfo>> {
    match engine_cuda::probe() {
        Ok(d) => {
            println!("device: {} (cc {}.{})", d[0].name, d[0].compute_capability.0, d[0].compute_capability.1);
            Some(d)
        }
        Err(e) => {
            println!("skipped: {e}");
            None
        }
    }
}

/// A random-weight model of a tiny preset in `dir`.
pub fn tiny_model(dir: &Path, name: &str, ftype: FileType, seed: u64) -> PathBuf {
    let path = dir.join(format!("{name}-{ftype}-{seed}.gguf"));
    synthesize(&SynthParams { preset: preset(name).unwrap(), ftype, seed, fast: false }, &path, None).unwrap();
    path
}

/// Token ids below `n_vocab` from a xorshift stream.
pub fn tokens(seed: u64, n_vocab: usize) -> impl FnMut() -> u32 {
    let mut s = seed;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s % n_vocab as u64) as u32
    }
}

/// Normalised mean squared error of `a` against `b`: `sum (a - b)^2 / sum b^2`.
pub fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (x, y) in a.iter().zip(b) {
        num += (*x as f64 - *y as f64).powi(2);
        den += (*y as f64).powi(2);
    }
    num / den.max(1e-30)
}

/// The native kinds with every odd layer streaming (`sink`, `window`), when `lazy` says so.
pub fn every_other_streaming(native: Vec<LayerKind>, lazy: Option<(u32, u32)>) -> Vec<LayerKind> {
    native
        .into_iter()
        .enumerate()
        .map(|(il, k)| match lazy {
            Some((sink, window)) if il % 2 == 1 => LayerKind::Streaming { sink, window, native_window: None },
            _ => k,
        })
        .collect()
}
