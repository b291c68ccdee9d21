//! Matrix-vector bandwidth of the CUDA decode kernels.
//!
//! ```sh
//! cargo run --release -p engine-cuda --example matvec_bw [-- TYPE...]
//! ```
//!
//! For each weight type and shape: several copies of a random matrix (together well over the
//! L2 cache, so every call reads from device memory), one quantized activation vector, and
//! `ITERS` products timed with CUDA events around the whole run, repeated `REPS` times. The
//! bandwidth counts the bytes each product must move: the weights, the Q8_1 activations and the
//! f32 output. A device-to-device copy gives the measured ceiling (bytes read plus written).

use engine_cuda::{CudaBackend, CudaError, DeviceMatrix, MatvecKernel, Q8_1_BYTES};
use ggml_kernels::attention::{AttnMask, AttnShape};
use ggml_kernels::matmul::QMatrix;
use ggml_kernels::GgmlType;
use half::f16;

const ITERS: usize = 200;
const REPS: usize = 5;
/// At least this many bytes of weight copies per case (the H100's L2 is 50 MB, the H200's 60 MB).
const ROTATE_BYTES: usize = 512 << 20;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Random blocks of `ty` with small, finite f16 scales at the offsets the format keeps them.
fn random_matrix(ty: GgmlType, cols: usize, rows: usize, rng: &mut Rng) -> Vec<u8> {
    let n = ty.tensor_nbytes(&[cols as u64, rows as u64]).expect("valid shape") as usize;
    let mut bytes: Vec<u8> = (0..n.div_ceil(8)).flat_map(|_| rng.next().to_le_bytes()).take(n).collect();
    let scale = f16::from_f32(0.01).to_le_bytes();
    let offsets: &[usize] = match ty {
        GgmlType::Q4_K => &[0, 2],
        GgmlType::Q6_K => &[208],
        _ => &[0],
    };
    for block in bytes.chunks_exact_mut(ty.type_size()) {
        for &o in offsets {
            block[o..o + 2].copy_from_slice(&scale);
        }
    }
    bytes
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<(), CudaError> {
    let gpu = match CudaBackend::new(0) {
        Ok(g) => g,
        Err(e) => {
            println!("no CUDA device: {e}");
            return Ok(());
        }
    };
    let info = gpu.info().clone();
    // Vendor datasheet peaks: H100 SXM 3.35 TB/s, H100 PCIe 2.0 TB/s, H100 NVL 3.9 TB/s, H200 4.8 TB/s.
    let peak_gbs = if info.name.contains("H200") {
        4800.0
    } else if info.name.contains("H100") && info.name.contains("PCIe") {
        2000.0
    } else if info.name.contains("H100") && info.name.contains("NVL") {
        3900.0
    } else if info.name.contains("H100") {
        3350.0
    } else {
        f64::NAN
    };
    println!(
        "device: {} ({} MiB, cc {}.{}), assumed peak {peak_gbs} GB/s",
        info.name,
        info.total_memory >> 20,
        info.compute_capability.0,
        info.compute_capability.1
    );
    println!("multiprocessors: {}", gpu.multiprocessors());
    for m in gpu.modules() {
        println!("  {} -> {}: {} bytes ({:?}, {:.0} ms)", m.file, m.target, m.image.len(), m.origin, m.millis);
    }

    // Measured ceiling: device-to-device copy of 1 GiB.
    let n = 1usize << 30;
    let src = gpu.alloc::<u8>(n)?;
    let mut dst = gpu.alloc::<u8>(n)?;
    for _ in 0..3 {
        gpu.copy(&src, &mut dst)?;
    }
    let mut copies: Vec<f64> = (0..REPS)
        .map(|_| gpu.time_ms(|| (0..10).try_for_each(|_| gpu.copy(&src, &mut dst))).map(|ms| ms as f64 / 10.0))
        .collect::<Result<_, _>>()?;
    let copy_ms = median(&mut copies);
    let copy_gbs = 2.0 * n as f64 / (copy_ms * 1e-3) / 1e9;
    println!("d2d copy 1 GiB: {copy_ms:.3} ms, {copy_gbs:.0} GB/s (read + write) = {:.1}% of peak", 100.0 * copy_gbs / peak_gbs);
    drop((src, dst));

    println!();
    println!("| type | cols x rows | kernel | weights MB | us/call median [min, max] | GB/s | % of peak | % of d2d copy |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut rng = Rng(0x1234_5678_9abc_def1);
    // Llama 3 8B's FFN matrices both ways (ffn_up/gate: 4096 x 14336, ffn_down: 14336 x 4096),
    // attn_q/attn_output (4096 x 4096) and attn_k/attn_v (4096 x 1024).
    // Arguments, if any, name the types to measure (e.g. `Q4_K Q6_K`).
    let only: Vec<String> = std::env::args().skip(1).collect();
    let mut cases = Vec::new();
    for ty in engine_cuda::MATVEC_TYPES.into_iter().filter(|t| only.is_empty() || only.iter().any(|o| o.eq_ignore_ascii_case(&t.to_string()))) {
        cases.extend([(ty, 4096, 14_336), (ty, 14_336, 4096), (ty, 4096, 4096), (ty, 4096, 1024)]);
    }
    for (ty, cols, rows) in cases {
        let host = random_matrix(ty, cols, rows, &mut rng);
        let n_copies = ROTATE_BYTES.div_ceil(host.len()).clamp(2, 32);
        let qm = QMatrix::new(ty, cols, rows, &host).expect("valid matrix");
        let mats: Vec<DeviceMatrix> = (0..n_copies).map(|_| gpu.upload_matrix(&qm)).collect::<Result<_, _>>()?;
        let x: Vec<f32> = (0..cols).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let xd = gpu.upload(&x)?;
        let mut xq = gpu.alloc::<u8>(cols / 32 * Q8_1_BYTES)?;
        gpu.quantize_q8_1(&xd, &mut xq)?;
        let mut out = gpu.alloc::<f32>(rows)?;
        let auto = gpu.auto_matvec(ty, rows, cols);
        for kernel in MatvecKernel::ALL {
            for i in 0..20 {
                gpu.matvec_with(kernel, &mats[i % n_copies], &xq, &mut out)?;
            }
            gpu.synchronize()?;
            let mut per_call: Vec<f64> = (0..REPS)
                .map(|_| {
                    gpu.time_ms(|| (0..ITERS).try_for_each(|i| gpu.matvec_with(kernel, &mats[i % n_copies], &xq, &mut out)))
                        .map(|ms| ms as f64 * 1e3 / ITERS as f64)
                })
                .collect::<Result<_, _>>()?;
            let (lo, hi) = (per_call.iter().copied().fold(f64::INFINITY, f64::min), per_call.iter().copied().fold(0.0, f64::max));
            let us = median(&mut per_call);
            let bytes = host.len() + xq.len() + rows * 4;
            let gbs = bytes as f64 / (us * 1e-6) / 1e9;
            println!(
                "| {ty} | {cols} x {rows} | {kernel:?}{} | {:.1} | {us:.2} [{lo:.2}, {hi:.2}] | {gbs:.0} | {:.1}% | {:.1}% |",
                if kernel == auto { " (auto)" } else { "" },
                host.len() as f64 / 1e6,
                100.0 * gbs / peak_gbs,
                100.0 * gbs / copy_gbs
            );
        }
    }

    // Activation quantization of a 4096-vector, and one decode attention step.
    let x: Vec<f32> = (0..4096).map(|i| (i as f32 * 0.37).sin()).collect();
    let xd = gpu.upload(&x)?;
    let mut xq = gpu.alloc::<u8>(4096 / 32 * Q8_1_BYTES)?;
    let ms = gpu.time_ms(|| (0..ITERS).try_for_each(|_| gpu.quantize_q8_1(&xd, &mut xq)))?;
    println!();
    println!("quantize_q8_1 n=4096: {:.2} us/call", ms as f64 * 1e3 / ITERS as f64);

    for n_slots in [4096usize, 32_768] {
        let s = AttnShape { n_head: 32, n_head_kv: 8, head_dim: 128, head_dim_v: 128, scale: 1.0 / (128f32).sqrt() };
        let kv: Vec<f16> = (0..n_slots * 8 * 128).map(|i| f16::from_f32(((i * 31) % 97) as f32 / 97.0 - 0.5)).collect();
        let (k, v) = (gpu.upload(&kv)?, gpu.upload(&kv)?);
        let q = gpu.upload(&vec![0.1f32; 32 * 128])?;
        let kpos = gpu.upload(&(0..n_slots as i32).collect::<Vec<_>>())?;
        let mut out = gpu.alloc::<f32>(32 * 128)?;
        let mut lse = gpu.alloc::<f32>(32)?;
        let qpos = n_slots as i64 - 1;
        let run = |out: &mut _, lse: &mut _| gpu.attention_decode(&s, &q, qpos, &k, &v, &kpos, AttnMask::CAUSAL, out, lse);
        run(&mut out, &mut lse)?;
        let ms = gpu.time_ms(|| (0..50).try_for_each(|_| run(&mut out, &mut lse)))?;
        let us = ms as f64 * 1e3 / 50.0;
        let bytes = 2 * n_slots * 8 * 128 * 2;
        println!(
            "attention decode 32/8 heads, dim 128, {n_slots} slots (f16 KV {:.1} MB): {us:.1} us/call, {:.0} GB/s of KV",
            bytes as f64 / 1e6,
            bytes as f64 / (us * 1e-6) / 1e9
        );
    }
    Ok(())
}
