//! The default model through our reader and `engine inspect`: the facts issue 2 names.
//!
//! Gemma 3 270M Q4_K_M has 236 tensors of types F32, Q5_0, Q4_K, Q8_0 and Q6_K and 33 metadata
//! keys; the tensor byte sizes plus alignment padding must fill the tensor-data section exactly.

use std::collections::BTreeSet;
use std::process::Command;

use engine::gguf::GgufFile;
use engine_tests::{bin::engine_bin, default_model};

#[test]
fn tensor_sizes_fill_the_data_section_exactly() {
    let Some(path) = default_model() else { return };
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.tensors().len(), 236);
    assert_eq!(f.kv_count(), 33);
    let types: BTreeSet<&str> = f.tensors().iter().map(|t| t.ty.name()).collect();
    assert_eq!(types, BTreeSet::from(["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]));
    // Walk the tensors in file order: each starts at the previous end rounded up to the alignment,
    // and the last one ends exactly at the end of the file (after its own padding).
    let mut tensors: Vec<_> = f.tensors().iter().collect();
    tensors.sort_by_key(|t| t.offset);
    let mut expected_offset = 0u64;
    for t in &tensors {
        assert_eq!(t.offset, expected_offset, "tensor {} is not where the previous one ends", t.name);
        expected_offset = (t.offset + t.nbytes).div_ceil(f.alignment()) * f.alignment();
    }
    assert_eq!(expected_offset, f.data_section_len(), "tensors + padding != data section");
    assert_eq!(f.data_offset() + f.data_section_len(), f.file_len());
}

#[test]
fn opening_touches_no_tensor_data() {
    let Some(path) = default_model() else { return };
    let f = GgufFile::open(&path).unwrap();
    for (_, v) in f.metadata() {
        std::hint::black_box(v.render(Some(4)));
    }
    let Some(resident_kib) = engine::memstat::mapping_rss_kib(&path) else {
        eprintln!("skipped: /proc/self/smaps not available");
        return;
    };
    // The header and metadata take the first 6.5 MB; the kernel maps a little around each fault.
    // Anything near the 235 MiB of tensor data would mean the open read tensors.
    let header_kib = f.data_offset() / 1024;
    assert!(resident_kib <= header_kib + 1024, "{resident_kib} KiB resident, header is {header_kib} KiB");
    drop(f);
}

#[test]
fn inspect_lists_every_key_and_tensor() {
    let Some(path) = default_model() else { return };
    let f = GgufFile::open(&path).unwrap();
    let out = Command::new(engine_bin()).arg("inspect").arg(&path).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    for key in f.keys() {
        assert!(text.lines().any(|l| l.trim_start().starts_with(key)), "key {key} missing from inspect output");
    }
    for t in f.tensors() {
        let line = text.lines().find(|l| l.split_whitespace().nth(1) == Some(t.name.as_str()));
        let line = line.unwrap_or_else(|| panic!("tensor {} missing", t.name));
        assert!(line.contains(t.ty.name()) && line.contains(&t.nbytes.to_string()), "{line}");
    }
    assert!(text.contains("246587904 bytes (246587904 in tensors, 0 padding)"), "data section summary");
    // Long arrays are summarised unless --full.
    assert!(text.contains("262136 more"));
    let full = Command::new(engine_bin()).args(["inspect", "--full"]).arg(&path).output().unwrap();
    let full = String::from_utf8(full.stdout).unwrap();
    assert!(!full.contains("262136 more") && full.contains("\"<unused0>\""));
}

#[test]
fn inspect_json_is_one_document_with_the_same_content() {
    let Some(path) = default_model() else { return };
    let out = Command::new(engine_bin()).args(["inspect", "--json"]).arg(&path).output().unwrap();
    assert!(out.status.success());
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json parses");
    assert_eq!(doc["tensors"].as_array().unwrap().len(), 236);
    assert_eq!(doc["metadata"].as_array().unwrap().len(), 33);
    assert_eq!(doc["version"], 3);
    let sum: u64 = doc["tensors"].as_array().unwrap().iter().map(|t| t["bytes"].as_u64().unwrap()).sum();
    assert_eq!(sum, doc["data_size"].as_u64().unwrap());
    let by_type = doc["totals"].as_object().unwrap();
    assert_eq!(by_type.keys().cloned().collect::<Vec<_>>(), ["F32", "Q4_K", "Q5_0", "Q6_K", "Q8_0"]);
    let tokens = doc["metadata"].as_array().unwrap().iter().find(|m| m["key"] == "tokenizer.ggml.tokens").unwrap();
    assert_eq!(tokens["type"], "array[string]");
    assert_eq!(tokens["len"], 262144);
    assert_eq!(tokens["truncated"], true);
}

#[test]
fn inspect_no_mmap_prints_the_same() {
    let Some(path) = default_model() else { return };
    let a = Command::new(engine_bin()).arg("inspect").arg(&path).output().unwrap();
    let b = Command::new(engine_bin()).args(["inspect", "--no-mmap"]).arg(&path).output().unwrap();
    assert!(a.status.success() && b.status.success());
    assert_eq!(a.stdout, b.stdout);
}
