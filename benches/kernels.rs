//! CPU kernels (issue 3): what the machine can do, and how close the kernels come to it.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo bench -p engine-benches --bench kernels -- \
//!     --measurement-time 5 --warm-up-time 2 --sample-size 10
//! ```
//!
//! - `bandwidth/read_sum`: two threads summing 1 GiB of `u64` with AVX2 (1 GB = 10^9 bytes).
//! - `matvec/<type>`: `matmul` with one activation row (decode) over a weight matrix of 4096
//!   columns and at least 256 MiB, far beyond the 32 MiB L3; throughput is weight bytes read.
//!   Q5_0 also as `matvec/Q5_0x8`: the same matrix in the layout the engine rebuilds Q5_0 in
//!   for decode (`ggml_kernels::repack`).
//! - `matvec_model/<shape>`: decode shapes of the default model (the Q8_0 output projection and
//!   small matrices; the Q5_0 one also as `Q5_0x8`).
//! - `gemm/<type>/<isa>`: `matmul` with 512 activation rows (prefill) over a 2048 x 2048 matrix;
//!   throughput is `2 * rows * cols * n` operations (elements/s = FLOP/s).
//! - `peak/<op>`: register-only loops of the instructions the kernels use, on two threads;
//!   throughput is operations (two per multiply-add).
//!
//! Threads: rayon's global pool (set `RAYON_NUM_THREADS=2` on larger machines to compare with
//! the two-core figures in docs/PERFORMANCE.md).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ggml_kernels::dot::{Isa, Kernels, WEIGHT_TYPES};
use ggml_kernels::matmul::{matmul, matmul_with, pack_for_decode, QMatrix};
use ggml_kernels::probe::{self, PeakOp};
use ggml_kernels::quants::float16::{f32_to_bf16, f32_to_f16};
use ggml_kernels::GgmlType;

/// xorshift64*: fast enough to fill hundreds of MiB.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    /// Uniform in [-1, 1).
    fn sym(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Byte offsets of the f16 scale fields of each block, which must hold sane values (random bits
/// could be NaN or subnormal, which some CPUs process slowly).
fn scale_fields(ty: GgmlType) -> &'static [usize] {
    use GgmlType as T;
    match ty {
        T::Q4_0 | T::Q5_0 | T::Q8_0 | T::IQ4_NL | T::IQ4_XS => &[0],
        T::Q4_1 | T::Q5_1 | T::Q4_K | T::Q5_K => &[0, 2],
        T::Q2_K => &[80, 82],
        T::Q3_K => &[108],
        T::Q6_K => &[208],
        _ => &[],
    }
}

/// `rows` random rows of `cols` elements of `ty`: random quant bits, scales near 0.01.
fn random_matrix(ty: GgmlType, cols: usize, rows: usize, seed: u64) -> Vec<u8> {
    let mut rng = Rng(seed | 1);
    let len = ty.tensor_nbytes(&[cols as u64, rows as u64]).expect("matrix size") as usize;
    let mut data = vec![0u8; len];
    match ty {
        GgmlType::F32 => {
            for c in data.chunks_exact_mut(4) {
                c.copy_from_slice(&rng.sym().to_le_bytes());
            }
        }
        GgmlType::F16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_f16(rng.sym()).to_le_bytes());
            }
        }
        GgmlType::BF16 => {
            for c in data.chunks_exact_mut(2) {
                c.copy_from_slice(&f32_to_bf16(rng.sym()).to_le_bytes());
            }
        }
        _ => {
            for c in data.chunks_mut(8) {
                let v = rng.next().to_le_bytes();
                c.copy_from_slice(&v[..c.len()]);
            }
            let scale = f32_to_f16(0.01).to_le_bytes();
            for b in data.chunks_exact_mut(ty.type_size()) {
                for &off in scale_fields(ty) {
                    b[off..off + 2].copy_from_slice(&scale);
                }
            }
        }
    }
    data
}

fn random_acts(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng(seed | 1);
    (0..n).map(|_| rng.sym() * 2.0).collect()
}

fn bandwidth(c: &mut Criterion) {
    const BYTES: usize = 1 << 30;
    let mut g = c.benchmark_group("bandwidth");
    g.throughput(Throughput::BytesDecimal(BYTES as u64));
    g.bench_function("read_sum/2_threads", |b| {
        // Every page written before timing, so the kernel maps them all.
        let buf: Vec<u64> = (0..(BYTES / 8) as u64).collect();
        b.iter(|| black_box(probe::sum_u64_threads(&buf, 2)))
    });
    g.bench_function("read_sum/1_thread", |b| {
        let buf: Vec<u64> = (0..(BYTES / 8) as u64).collect();
        b.iter(|| black_box(probe::sum_u64(&buf)))
    });
    g.finish();
}

fn matvec(c: &mut Criterion) {
    const COLS: usize = 4096;
    const MIN_BYTES: usize = 256 << 20;
    let mut g = c.benchmark_group("matvec");
    for ty in WEIGHT_TYPES {
        let rb = ty.row_nbytes(COLS as u64).expect("row size") as usize;
        let rows = MIN_BYTES.div_ceil(rb).div_ceil(64) * 64;
        g.throughput(Throughput::BytesDecimal((rows * rb) as u64));
        g.bench_function(BenchmarkId::from_parameter(ty.name()), |b| {
            let data = random_matrix(ty, COLS, rows, 42);
            let w = QMatrix::new(ty, COLS, rows, &data).expect("matrix");
            let x = random_acts(COLS, 7);
            let mut out = vec![0f32; rows];
            b.iter(|| {
                matmul(&w, black_box(&x), 1, &mut out).expect("matmul");
                black_box(out[rows / 2])
            })
        });
        // Q5_0 also in the layout the engine rebuilds it in for decode (`Q5_0x8`, same bytes).
        let data = random_matrix(ty, COLS, rows, 42);
        let w = QMatrix::new(ty, COLS, rows, &data).expect("matrix");
        if let Some(p) = pack_for_decode(&w) {
            drop(data);
            g.bench_function(BenchmarkId::from_parameter(format!("{:?}", p.view().layout)), |b| {
                let w = p.view();
                let x = random_acts(COLS, 7);
                let mut out = vec![0f32; rows];
                b.iter(|| {
                    matmul(&w, black_box(&x), 1, &mut out).expect("matmul");
                    black_box(out[rows / 2])
                })
            });
        }
    }
    g.finish();
}

/// Decode shapes of the default model (Gemma 3 270M Q4_K_M: `n_embd` 640, `n_ff` 2048,
/// 262,144-token vocabulary): the Q8_0 output projection (178 MB, about three quarters of a
/// token's weight reads), and the per-layer matrices, small enough that the cost of waking the
/// thread pool shows: `ffn_gate`/`ffn_up` (Q5_0), `ffn_down` (Q6_K), `attn_output` (Q4_K).
fn matvec_model_shapes(c: &mut Criterion) {
    let mut g = c.benchmark_group("matvec_model");
    let shapes = [
        (GgmlType::Q8_0, 640, 262_144),
        (GgmlType::Q5_0, 640, 2048),
        (GgmlType::Q6_K, 2048, 640),
        (GgmlType::Q4_K, 1024, 640),
    ];
    for (ty, cols, rows) in shapes {
        let bytes = ty.tensor_nbytes(&[cols as u64, rows as u64]).expect("matrix size");
        g.throughput(Throughput::BytesDecimal(bytes));
        g.bench_function(format!("{}_{cols}x{rows}", ty.name()), |b| {
            let data = random_matrix(ty, cols, rows, 44);
            let w = QMatrix::new(ty, cols, rows, &data).expect("matrix");
            let x = random_acts(cols, 9);
            let mut out = vec![0f32; rows];
            b.iter(|| {
                matmul(&w, black_box(&x), 1, &mut out).expect("matmul");
                black_box(out[rows / 2])
            })
        });
        let data = random_matrix(ty, cols, rows, 44);
        if let Some(p) = pack_for_decode(&QMatrix::new(ty, cols, rows, &data).expect("matrix")) {
            g.bench_function(format!("{:?}_{cols}x{rows}", p.view().layout), |b| {
                let w = p.view();
                let x = random_acts(cols, 9);
                let mut out = vec![0f32; rows];
                b.iter(|| {
                    matmul(&w, black_box(&x), 1, &mut out).expect("matmul");
                    black_box(out[rows / 2])
                })
            });
        }
    }
    g.finish();
}

fn gemm(c: &mut Criterion) {
    const N: usize = 512;
    const ROWS: usize = 2048;
    const COLS: usize = 2048;
    let mut g = c.benchmark_group("gemm");
    g.throughput(Throughput::Elements((2 * ROWS * COLS * N) as u64));
    for ty in [GgmlType::Q4_0, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::Q6_K] {
        for k in Kernels::available().iter().filter(|k| k.isa() != Isa::Scalar) {
            let id = BenchmarkId::new(ty.name(), k.isa().name());
            g.bench_function(id, |b| {
                let data = random_matrix(ty, COLS, ROWS, 43);
                let w = QMatrix::new(ty, COLS, ROWS, &data).expect("matrix");
                let x = random_acts(N * COLS, 8);
                let mut out = vec![0f32; N * ROWS];
                b.iter(|| {
                    matmul_with(k, &w, black_box(&x), N, &mut out).expect("matmul");
                    black_box(out[N * ROWS / 2])
                })
            });
        }
    }
    g.finish();
}

fn peak(c: &mut Criterion) {
    const ITERS: u64 = 2_000_000;
    let mut g = c.benchmark_group("peak");
    for (name, op) in [("maddubs_madd_add", PeakOp::Maddubs), ("vpdpbusd", PeakOp::Vpdpbusd), ("fma_f32", PeakOp::Fma)] {
        if !op.is_available() {
            continue;
        }
        let ops = 2 * 2 * ITERS * probe::PEAK_CHAINS * op.macs_per_seq();
        g.throughput(Throughput::Elements(ops));
        g.bench_function(format!("{name}/2_threads"), |b| b.iter(|| black_box(probe::peak_loop_threads(op, ITERS, 2))));
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(5)).sample_size(10);
    targets = bandwidth, matvec, matvec_model_shapes, gemm, peak
}
criterion_main!(benches);
