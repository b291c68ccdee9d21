//! Decode attention speed against memory bandwidth.
//!
//! ```sh
//! cargo run --release -p engine-cuda --example attn_bw
//! ```
//!
//! For each model shape and cache: `attention_decode_batch` over several copies of a random f16
//! KV cache (together well over the L2 cache, so each call reads from device memory), `ITERS`
//! calls timed with CUDA events, the median of `REPS` runs. The bandwidth counts the key and
//! value rows of the visible slots (each read once per KV head) over the time of the two
//! kernels (partials and merge). A device-to-device copy gives the measured ceiling.

use engine_cuda::{CudaBackend, CudaError};
use ggml_kernels::attention::{AttnMask, AttnShape};
use half::f16;

const ITERS: usize = 50;
const REPS: usize = 5;
/// At least this many bytes of cache copies per case (the H100's L2 is 50 MB, the H200's 60 MB).
const ROTATE_BYTES: usize = 256 << 20;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Case {
    name: &'static str,
    shape: AttnShape,
    /// Sequences (tokens) per call and slots per sequence.
    n_seq: usize,
    n_slots: usize,
    /// Positions held at the start of each sequence's slots (the rest empty).
    held: usize,
}

fn main() -> Result<(), CudaError> {
    let gpu = match CudaBackend::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("no CUDA device: {e}");
            return Ok(());
        }
    };
    println!("device: {} ({} SMs)", gpu.info().name, gpu.multiprocessors());
    for (heads, regs, local, blocks) in gpu.attention_decode_occupancy()? {
        println!("attn_decode_g{heads}: {regs} registers, {local} B local, {blocks} blocks per SM");
    }

    // Ceiling: a device-to-device copy of 512 MiB (bytes read + written).
    let n = 256usize << 20;
    let src = gpu.alloc::<f16>(n)?;
    let mut dst = gpu.alloc::<f16>(n)?;
    gpu.copy(&src, &mut dst)?;
    let ms = gpu.time_ms(|| (0..10).try_for_each(|_| gpu.copy(&src, &mut dst)))?;
    println!("device copy: {:.0} GB/s (read + write)", (4 * n * 10) as f64 / (ms as f64 * 1e-3) / 1e9);
    drop((src, dst));

    let llama = AttnShape { n_head: 32, n_head_kv: 8, head_dim: 128, head_dim_v: 128, scale: 1.0 / (128f32).sqrt() };
    let qwen = AttnShape { n_head: 28, n_head_kv: 4, head_dim: 128, head_dim_v: 128, scale: 1.0 / (128f32).sqrt() };
    let gemma = AttnShape { n_head: 4, n_head_kv: 1, head_dim: 256, head_dim_v: 256, scale: 1.0 / 16.0 };
    let cases = [
        Case { name: "Llama-3-8B", shape: llama, n_seq: 1, n_slots: 129, held: 129 },
        Case { name: "Llama-3-8B", shape: llama, n_seq: 1, n_slots: 4096, held: 64 },
        Case { name: "Llama-3-8B", shape: llama, n_seq: 1, n_slots: 8320, held: 8320 },
        Case { name: "Llama-3-8B", shape: llama, n_seq: 1, n_slots: 32_896, held: 32_896 },
        Case { name: "Llama-3-8B", shape: llama, n_seq: 8, n_slots: 4096, held: 4096 },
        Case { name: "Qwen2.5-7B", shape: qwen, n_seq: 1, n_slots: 8320, held: 8320 },
        Case { name: "Gemma-3-270M", shape: gemma, n_seq: 1, n_slots: 8320, held: 8320 },
    ];
    for c in &cases {
        let s = &c.shape;
        let total = c.n_seq * c.n_slots;
        let row = s.n_head_kv * (s.head_dim + s.head_dim_v) * 2;
        let copies = (ROTATE_BYTES / (total * row).max(1)).clamp(1, 16);
        let kv: Vec<f16> = (0..total * s.n_head_kv * s.head_dim.max(s.head_dim_v))
            .map(|i| f16::from_f32(((i * 31) % 97) as f32 / 97.0 - 0.5))
            .collect();
        let mut caches = Vec::with_capacity(copies);
        for _ in 0..copies {
            caches.push((gpu.upload(&kv[..total * s.n_head_kv * s.head_dim])?, gpu.upload(&kv[..total * s.n_head_kv * s.head_dim_v])?));
        }
        let kpos: Vec<i32> = (0..total).map(|i| if i % c.n_slots < c.held { (i % c.n_slots) as i32 } else { -1 }).collect();
        let kpos = gpu.upload(&kpos)?;
        let q = gpu.upload(&vec![0.1f32; c.n_seq * s.n_head * s.head_dim])?;
        let qpos = gpu.upload(&vec![c.held as i32; c.n_seq])?;
        let base = gpu.upload(&(0..c.n_seq).map(|i| (i * c.n_slots) as i32).collect::<Vec<_>>())?;
        let mut part = gpu.alloc::<f32>(CudaBackend::attention_partials_batch(s, c.n_slots, c.n_seq))?;
        let mut out = gpu.alloc::<f32>(c.n_seq * s.n_head * s.head_dim_v)?;
        let mut lse = gpu.alloc::<f32>(c.n_seq * s.n_head)?;
        let mut run = |i: usize| {
            let (k, v) = &caches[i % copies];
            gpu.attention_decode_batch(s, &q, &qpos, &base, c.n_slots, k, v, &kpos, AttnMask::CAUSAL, true, &mut part, &mut out, &mut lse, None)
        };
        run(0)?;
        let mut us = Vec::with_capacity(REPS);
        for _ in 0..REPS {
            let ms = gpu.time_ms(|| (0..ITERS).try_for_each(&mut run))?;
            us.push(ms as f64 * 1e3 / ITERS as f64);
        }
        let us = median(&mut us);
        let bytes = c.n_seq * c.held * row;
        println!(
            "{} {}/{} heads, dim {}: {} x {} slots ({} held, KV read {:.1} MB): {us:.1} us/call, {:.0} GB/s",
            c.name,
            s.n_head,
            s.n_head_kv,
            s.head_dim,
            c.n_seq,
            c.n_slots,
            c.held,
            bytes as f64 / 1e6,
            bytes as f64 / (us * 1e-6) / 1e9
        );
    }
    Ok(())
}
