//! NaN injected into weights is reported (RELIABILITY.md, "Fault injection"), never run on:
//! - a NaN or infinite weight is refused when the model loads, naming the tensor and the
//!   element or block (a quantized block's scales are what can be non-finite);
//! - logits that overflow from finite weights (every output-norm weight 3e38) make `engine run`
//!   and `engine perplexity` stop with an error naming the position, and `engine chat` report
//!   it and go on to the next command.
//!
//! Never a panic, never a token sampled from NaN. (The GPU's decode steps are held to the same
//! error by `engine/tests/gpu_parity.rs`.)

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use engine::gguf::GgufFile;
use engine_tests::bin::engine_bin;

/// A tiny Llama-shaped Q8_0 model (`engine synth`) with `patch` applied to the bytes of
/// `tensor`'s data (a copy at `name` in `dir`).
fn patched(dir: &Path, name: &str, tensor: &str, patch: impl FnOnce(&mut [u8])) -> PathBuf {
    let base = dir.join("base.gguf");
    if !base.exists() {
        let o = Command::new(engine_bin())
            .args(["synth", "--arch", "llama", "--preset", "llama-tiny", "--type", "q8_0", "--quiet", "-o"])
            .arg(&base)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let (start, len) = {
        let file = GgufFile::open(&base).unwrap();
        let t = file.tensor(tensor).unwrap_or_else(|| panic!("no tensor {tensor}"));
        ((file.data_offset() + t.offset) as usize, t.nbytes as usize)
    };
    let mut bytes = std::fs::read(&base).unwrap();
    patch(&mut bytes[start..start + len]);
    let out = dir.join(name);
    std::fs::write(&out, bytes).unwrap();
    out
}

fn engine(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(engine_bin()).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// `engine run` on `model` fails with `expect` on stderr, no panic, and `stdout` on stdout.
fn run_fails(model: &Path, expect: &str, stdout: &str) {
    let run = engine(&["run", "-m", model.to_str().unwrap(), "-p", "hello there", "-n", "4", "--temp", "0"], b"");
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{}: run succeeded: {err}", model.display());
    assert!(err.contains(expect), "{}: {err}", model.display());
    assert!(!err.contains("panicked"), "{}: {err}", model.display());
    assert_eq!(String::from_utf8_lossy(&run.stdout).trim_end(), stdout, "{}", model.display());
}

#[test]
fn non_finite_weights_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    // Row 5 of the output matrix (64 columns: two Q8_0 blocks a row): its first block's f16
    // scale made NaN.
    let nan_scale = patched(dir.path(), "nan-scale.gguf", "output.weight", |data| {
        let row_bytes = data.len() / 320; // llama-tiny: 320 tokens
        data[5 * row_bytes..5 * row_bytes + 2].copy_from_slice(&0x7E00u16.to_le_bytes());
    });
    run_fails(&nan_scale, "error: loading the model: tensor \"output.weight\": block 10 has a scale of NaN", "");
    // An infinite scale in a layer's product.
    let inf_scale = patched(dir.path(), "inf-scale.gguf", "blk.1.ffn_down.weight", |data| {
        data[34..36].copy_from_slice(&0x7C00u16.to_le_bytes());
    });
    run_fails(&inf_scale, "tensor \"blk.1.ffn_down.weight\": block 1 has a scale of inf", "");
    // A float tensor.
    let nan_norm = patched(dir.path(), "nan-norm.gguf", "output_norm.weight", |data| {
        data[8..12].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    run_fails(&nan_norm, "tensor \"output_norm.weight\": element 2 is NaN", "");
}

#[test]
fn logits_that_overflow_stop_with_the_position() {
    let dir = tempfile::tempdir().unwrap();
    let huge = patched(dir.path(), "huge-norm.gguf", "output_norm.weight", |data| {
        for w in data.chunks_exact_mut(4) {
            w.copy_from_slice(&3.0e38f32.to_le_bytes());
        }
    });
    let m = huge.to_str().unwrap();
    // Nothing generated: stdout holds the prompt only.
    run_fails(&huge, "error: non-finite logits at position ", "hello there");

    let text = dir.path().join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(40)).unwrap();
    let ppl = engine(&["perplexity", "-m", m, "-f", text.to_str().unwrap(), "-c", "64"], b"");
    let err = String::from_utf8_lossy(&ppl.stderr);
    assert!(!ppl.status.success(), "perplexity succeeded: {err}");
    // The first scored position of the first chunk (the second half of 64).
    assert!(err.contains("error: non-finite logits at position 32"), "perplexity: {err}");
    assert!(!String::from_utf8_lossy(&ppl.stdout).contains("Final estimate"), "perplexity printed an estimate");

    // The REPL reports it and takes the next command.
    let chat = engine(&["chat", "-m", m, "-n", "4"], b"hello\n/exit\n");
    let err = String::from_utf8_lossy(&chat.stderr);
    assert!(chat.status.success(), "chat: {err}");
    assert!(err.contains("error: non-finite logits at position "), "chat: {err}");
    assert!(!err.contains("panicked"), "chat: {err}");
}
