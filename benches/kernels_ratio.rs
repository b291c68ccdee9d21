//! Decode (matrix-vector) speed as a fraction of the memory bandwidth, measured side by side.
//!
//! ```sh
//! RAYON_NUM_THREADS=2 cargo bench -p engine-benches --bench kernels_ratio [-- TYPE...]
//! RAYON_NUM_THREADS=2 cargo bench -p engine-benches --bench kernels_ratio -- probe   # bandwidth only
//! RAYON_NUM_THREADS=1 cargo bench -p engine-benches --bench kernels_ratio -- l2 [TYPE...]
//! RAYON_NUM_THREADS=2 cargo bench -p engine-benches --bench kernels_ratio -- output
//! ```
//!
//! `output` measures, as the types above, the default model's output projection (Q8_0, 640
//! columns, 262,144 rows, 178 MB: three quarters of a decode step's weight reads).
//!
//! `l2` measures the kernels' own ceiling instead: a matrix of about [`L2_BYTES`] (in the L2
//! cache of one core) multiplied over and over, GB/s of its bytes, with no probe. A kernel
//! that reaches less than half the probe's bandwidth per thread here cannot keep up with memory.
//!
//! On a shared machine the read bandwidth swings with the neighbours' load (on the dev VM
//! between about 21 and 40 GB/s within minutes), so a bandwidth figure and a kernel figure taken
//! minutes apart do not make a ratio. This harness alternates, in each of [`ROUNDS`] rounds, the
//! bandwidth probe (two threads summing 1 GiB) and one `matmul` with one activation row over a
//! matrix of 4096 columns and at least 256 MiB, for each type, and prints the best (fastest) of
//! each and their ratio, the median ratio of the rounds, and the median ratio of the rounds whose
//! probe read at least [`FAST_SHARE`] of the best probe (the fast regime, where the kernels'
//! compute shows), with their count. Q5_0 is measured twice: in ggml's
//! layout and in the one the engine rebuilds it in for decode (`Q5_0x8`). Not a criterion
//! benchmark: it prints one table and exits.

use std::hint::black_box;
use std::time::Instant;

use ggml_kernels::dot::{Kernels, WEIGHT_TYPES};
use ggml_kernels::matmul::{matmul, pack_for_decode, QMatrix};
use ggml_kernels::probe;
use ggml_kernels::quants::float16::{f32_to_bf16, f32_to_f16};
use ggml_kernels::GgmlType;

/// Rounds per type.
const ROUNDS: usize = 15;
/// A round is of the fast regime when its probe reads at least this share of the type's best
/// probe (the host switches between about 31 and 47-50 GB/s within seconds).
const FAST_SHARE: f64 = 0.9;
const COLS: usize = 4096;
const MIN_BYTES: usize = 256 << 20;
const PROBE_BYTES: usize = 1 << 30;
/// Bytes of the matrix of `l2` mode.
const L2_BYTES: usize = 512 << 10;

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

/// Random quant bits with sane scales (as in `kernels.rs`).
fn random_matrix(ty: GgmlType, cols: usize, rows: usize) -> Vec<u8> {
    let mut s = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        s.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let len = ty.tensor_nbytes(&[cols as u64, rows as u64]).expect("matrix size") as usize;
    let mut data = vec![0u8; len];
    let sym = |v: u64| (v >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
    match ty {
        GgmlType::F32 => data.chunks_exact_mut(4).for_each(|c| c.copy_from_slice(&sym(next()).to_le_bytes())),
        GgmlType::F16 => data.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&f32_to_f16(sym(next())).to_le_bytes())),
        GgmlType::BF16 => data.chunks_exact_mut(2).for_each(|c| c.copy_from_slice(&f32_to_bf16(sym(next())).to_le_bytes())),
        _ => {
            for c in data.chunks_mut(8) {
                let v = next().to_le_bytes();
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

fn main() {
    let wanted: Vec<GgmlType> = std::env::args().skip(1).filter_map(|a| GgmlType::from_name(&a)).collect();
    let types: Vec<GgmlType> = if wanted.is_empty() { WEIGHT_TYPES.to_vec() } else { wanted };
    // The pool's size, as rayon picks it.
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n: &usize| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let probe_buf: Vec<u64> = (0..(PROBE_BYTES / 8) as u64).collect();
    // `-- probe`: only the bandwidth, best of three (the denominator for end-to-end decode runs
    // taken between such probes).
    if std::env::args().nth(1).as_deref() == Some("probe") {
        let best = (0..3)
            .map(|_| {
                let t = Instant::now();
                black_box(probe::sum_u64_threads(&probe_buf, threads));
                PROBE_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0f64, f64::max);
        println!("probe: {best:.1} GB/s ({threads} threads, best of 3)");
        // The same in 2 MiB pages, as the packed weights are held (`ggml_kernels::pages`):
        // without a TLB miss every 4 KiB.
        let mut huge = ggml_kernels::pages::PackedBytes::zeroed(PROBE_BYTES, 64);
        // SAFETY: any bytes are valid u64s; `align_to_mut` takes only the aligned middle.
        let (_, words, _) = unsafe { huge.bytes_mut().align_to_mut::<u64>() };
        words.iter_mut().enumerate().for_each(|(i, w)| *w = i as u64);
        let best_huge = (0..3)
            .map(|_| {
                let t = Instant::now();
                black_box(probe::sum_u64_threads(words, threads));
                (words.len() * 8) as f64 / t.elapsed().as_secs_f64() / 1e9
            })
            .fold(0f64, f64::max);
        println!("probe-huge: {best_huge:.1} GB/s ({threads} threads, best of 3, huge pages: {})", huge.in_huge_pages());
        return;
    }
    if std::env::args().nth(1).as_deref() == Some("l2") {
        let types: Vec<GgmlType> = std::env::args().skip(2).filter_map(|a| GgmlType::from_name(&a)).collect();
        let types = if types.is_empty() { WEIGHT_TYPES.to_vec() } else { types };
        println!("kernels_ratio l2: {threads} threads, matrices of {} KiB, best of 9 rounds of 200 products", L2_BYTES >> 10);
        println!("| type | kernel | matvec GB/s (best) |");
        println!("|---|---|---|");
        for ty in types {
            let rb = ty.row_nbytes(COLS as u64).expect("row size") as usize;
            let rows = L2_BYTES.div_ceil(rb).div_ceil(8) * 8;
            let data = random_matrix(ty, COLS, rows);
            let w = QMatrix::new(ty, COLS, rows, &data).expect("matrix");
            let isa = Kernels::best().matvec_isa(ty).or(Kernels::best().dot_isa(ty)).map_or("-", |i| i.name());
            println!("| {} | {isa} | {:.1} |", ty.name(), l2_speed(&w));
            if let Some(p) = pack_for_decode(&w) {
                let v = p.view();
                let isa = Kernels::best().packed_isa(v.layout).map_or("-", |i| i.name());
                println!("| {} ({:?}) | {isa} | {:.1} |", ty.name(), v.layout, l2_speed(&v));
            }
        }
        return;
    }
    let output = std::env::args().nth(1).as_deref() == Some("output");
    println!(
        "kernels_ratio: {} rounds per type, {threads} threads, best table {}, load average {}",
        ROUNDS,
        Kernels::best().isa(),
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    println!(
        "| type | kernel | matvec GB/s (best) | bandwidth GB/s (best, same rounds) | best / best | median of round ratios | median of the fast rounds (count) |"
    );
    println!("|---|---|---|---|---|---|---|");
    if output {
        let (ty, cols, rows) = (GgmlType::Q8_0, 640, 262_144);
        let data = random_matrix(ty, cols, rows);
        let w = QMatrix::new(ty, cols, rows, &data).expect("matrix");
        let isa = Kernels::best().matvec_isa(ty).or(Kernels::best().dot_isa(ty)).map_or("-", |i| i.name());
        measure("Q8_0 640 x 262144 (output)", isa, &w, &probe_buf, threads);
        if let Some(p) = pack_for_decode(&w) {
            let v = p.view();
            let isa = Kernels::best().packed_isa(v.layout).map_or("-", |i| i.name());
            measure(&format!("Q8_0 640 x 262144 (output, {:?})", v.layout), isa, &v, &probe_buf, threads);
        }
        return;
    }
    for ty in types {
        let rb = ty.row_nbytes(COLS as u64).expect("row size") as usize;
        let rows = MIN_BYTES.div_ceil(rb).div_ceil(64) * 64;
        let data = random_matrix(ty, COLS, rows);
        let w = QMatrix::new(ty, COLS, rows, &data).expect("matrix");
        let isa = Kernels::best().matvec_isa(ty).or(Kernels::best().dot_isa(ty)).map_or("-", |i| i.name());
        measure(ty.name(), isa, &w, &probe_buf, threads);
        // Q5_0 also in the layout the engine rebuilds it in for decode (the same bytes).
        if let Some(p) = pack_for_decode(&w) {
            let v = p.view();
            let isa = Kernels::best().packed_isa(v.layout).map_or("-", |i| i.name());
            drop(data);
            measure(&format!("{} ({:?})", ty.name(), v.layout), isa, &v, &probe_buf, threads);
        }
    }
}

/// Alternates the probe and one product over `w` for [`ROUNDS`] rounds and prints the table
/// row (GB/s of the matrix's bytes).
fn measure(name: &str, isa: &str, w: &QMatrix<'_>, probe_buf: &[u64], threads: usize) {
    let x: Vec<f32> = (0..w.cols).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
    let mut out = vec![0f32; w.rows];
    matmul(w, &x, 1, &mut out).expect("matmul");
    let (mut best_mv, mut best_bw) = (0f64, 0f64);
    let mut ratios = Vec::with_capacity(ROUNDS);
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        black_box(probe::sum_u64_threads(probe_buf, threads));
        let bw = PROBE_BYTES as f64 / t.elapsed().as_secs_f64() / 1e9;
        let t = Instant::now();
        matmul(w, black_box(&x), 1, &mut out).expect("matmul");
        let mv = w.data.len() as f64 / t.elapsed().as_secs_f64() / 1e9;
        best_mv = best_mv.max(mv);
        best_bw = best_bw.max(bw);
        ratios.push(mv / bw);
        rounds.push((bw, mv / bw));
    }
    ratios.sort_by(f64::total_cmp);
    // The rounds of the fast regime: probe within `FAST_SHARE` of the best probe.
    let mut fast: Vec<f64> = rounds.iter().filter(|r| r.0 >= FAST_SHARE * best_bw).map(|r| r.1).collect();
    fast.sort_by(f64::total_cmp);
    println!(
        "| {name} | {isa} | {best_mv:.1} | {best_bw:.1} | {:.0}% | {:.0}% | {:.0}% ({}) |",
        100.0 * best_mv / best_bw,
        100.0 * ratios[ROUNDS / 2],
        100.0 * fast[(fast.len() - 1) / 2],
        fast.len()
    );
}

/// GB/s of `w`'s bytes over repeated products (best of 9 rounds of 200), `w` staying in cache.
fn l2_speed(w: &QMatrix<'_>) -> f64 {
    let x: Vec<f32> = (0..w.cols).map(|i| ((i * 7919) % 101) as f32 / 50.0 - 1.0).collect();
    let mut out = vec![0f32; w.rows];
    let mut best = 0f64;
    for _ in 0..9 {
        let t = Instant::now();
        for _ in 0..200 {
            matmul(w, black_box(&x), 1, &mut out).expect("matmul");
        }
        best = best.max(200.0 * w.data.len() as f64 / t.elapsed().as_secs_f64() / 1e9);
    }
    best
}
