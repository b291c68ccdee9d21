//! `engine bench` output: the markdown table has llama-bench's shape, `-o json` is one JSON
//! array with llama-bench's field names (plus ours), `-o csv` has a header and one row per test,
//! and a failure leaves no partial JSON behind.

use std::process::Command;

use engine_tests::{bin::engine_bin, default_model};

fn bench(model: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(engine_bin())
        .args(["bench", "-m"])
        .arg(model)
        .args(["-p", "16", "-n", "4", "-r", "2", "-t", "1"])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn markdown_table_has_llama_bench_shape() {
    let Some(model) = default_model() else { return };
    let out = bench(&model, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
    assert_eq!(&header[..7], ["model", "size", "params", "backend", "threads", "test", "t/s"]);
    assert!(lines[1].starts_with("| ---") && lines[1].contains("---: |"), "{}", lines[1]);
    let rows: Vec<&str> = lines[2..].iter().copied().filter(|l| l.starts_with('|')).collect();
    assert_eq!(rows.len(), 2);
    assert!(rows[0].contains(" pp16 ") && rows[1].contains(" tg4 "));
    for r in &rows {
        assert_eq!(r.matches('|').count(), lines[0].matches('|').count(), "{r}");
        assert!(r.contains(" ± "), "{r}");
    }
    assert!(text.contains("build: "), "the table is stamped with the build");
}

#[test]
fn json_output_parses_with_llama_bench_fields() {
    let Some(model) = default_model() else { return };
    let out = bench(&model, &["-o", "json", "-d", "0,8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let rows = doc.as_array().expect("an array");
    assert_eq!(rows.len(), 4, "pp16 and tg4 at depths 0 and 8");
    for key in [
        "model_filename", "model_type", "model_size", "model_n_params", "backends", "cpu_info", "gpu_info", "build_commit",
        "n_threads", "n_prompt", "n_gen", "n_depth", "avg_ts", "stddev_ts", "samples_ts", "kv_bytes", "lazy_fraction",
        "n_parallel",
    ] {
        assert!(rows.iter().all(|r| r.get(key).is_some()), "missing {key}");
    }
    assert_eq!(rows[0]["samples_ts"].as_array().unwrap().len(), 2);
    assert_eq!(rows[2]["n_depth"], 8);
    assert!(rows.iter().all(|r| r["avg_ts"].as_f64().unwrap() > 0.0));
}

#[test]
fn csv_has_a_header_and_a_row_per_test() {
    let Some(model) = default_model() else { return };
    let out = bench(&model, &["-o", "csv"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("build_commit,cpu_info"));
    assert_eq!(lines.len(), 3);
}

#[test]
fn a_failure_leaves_no_partial_output() {
    let out = Command::new(engine_bin()).args(["bench", "-m", "/nonexistent.gguf", "-o", "json"]).output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "stdout: {}", String::from_utf8_lossy(&out.stdout));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error:") && err.contains("/nonexistent.gguf"));
}

#[test]
fn parallel_sequences_are_rows_of_their_own() {
    let Some(model) = default_model() else { return };
    let out = bench(&model, &["-o", "json", "--parallel", "1,3"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON document");
    let rows = doc.as_array().expect("an array");
    assert_eq!(rows.len(), 4, "pp16 and tg4, for 1 and 3 sequences");
    let par: Vec<u64> = rows.iter().map(|r| r["n_parallel"].as_u64().unwrap()).collect();
    assert_eq!(par, [1, 1, 3, 3]);
    // Three sequences hold three caches.
    let kv = |i: usize| rows[i]["kv_bytes"].as_u64().unwrap();
    assert_eq!(kv(2), 3 * kv(0));
    assert_eq!(kv(3), 3 * kv(1));
    assert!(rows.iter().all(|r| r["avg_ts"].as_f64().unwrap() > 0.0));

    let out = bench(&model, &["--parallel", "2"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.lines().any(|l| l.contains(" tg4 x2 ")), "{text}");

    let out = bench(&model, &["--parallel", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--parallel must be at least 1"));
}

#[test]
fn lazy_layers_stream_from_the_first_token() {
    let Some(model) = default_model() else { return };
    // Gemma 3 270M: layers 5 and 11 are global. The first row, pp16 at depth 256, has caches of
    // 256 + 16 + 1 = 273 positions; streaming layers keep sink + window = 4 + 124.
    let args = ["-o", "json", "-d", "256"];
    let native = bench(&model, &args);
    assert!(native.status.success(), "{}", String::from_utf8_lossy(&native.stderr));
    let lazy = bench(&model, &[&args[..], &["--lazy-layers", "5,11", "--sink", "4", "--window", "124"]].concat());
    assert!(lazy.status.success(), "{}", String::from_utf8_lossy(&lazy.stderr));
    let row = |o: &std::process::Output| -> serde_json::Value {
        let doc: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
        doc.as_array().expect("an array")[0].clone()
    };
    let (n, l) = (row(&native), row(&lazy));
    assert_eq!((n["n_prompt"].as_u64(), n["n_depth"].as_u64()), (Some(16), Some(256)));
    assert_eq!(l["lazy_layers"], serde_json::json!([5, 11]));
    assert!(n["lazy_layers"].is_null());
    // Two layers keep 128 instead of 273 positions of f16 K and V (1 KV head of 256 dims each).
    let per_pos = 2 * 256 * 2;
    let saved = n["kv_bytes"].as_u64().unwrap() - l["kv_bytes"].as_u64().unwrap();
    assert_eq!(saved, 2 * (273 - 128) * per_pos, "native {} lazy {}", n["kv_bytes"], l["kv_bytes"]);

    let md = bench(&model, &["--lazy-layers", "5,11"]);
    assert!(md.status.success());
    assert!(String::from_utf8_lossy(&md.stdout).contains(" tg4 lazy2/18 "), "{}", String::from_utf8_lossy(&md.stdout));

    let bad = bench(&model, &["--lazy-layers", "18"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("layer 18 does not exist"), "{}", String::from_utf8_lossy(&bad.stderr));

    let fit = bench(&model, &["--parallel-fit"]);
    assert!(!fit.status.success());
    assert!(String::from_utf8_lossy(&fit.stderr).contains("--parallel-fit is for the GPU"));
}
