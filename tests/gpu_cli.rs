//! The GPU options of the commands, on a machine without a usable GPU: `run`, `bench`,
//! `perplexity` and `chat` with `-ngl 99` each fail with one clear line naming why (no panic,
//! nothing on stdout), and `bench --parallel-fit` asks for the GPU. On a machine with a GPU the
//! test says so and checks nothing (the GPU paths are tested in `engine/tests/gpu_*.rs`).

use std::io::Write;
use std::process::{Command, Stdio};

use engine_tests::{bin::engine_bin, default_model};

#[test]
fn gpu_options_without_a_gpu_fail_clearly() {
    if engine_cuda::probe().is_ok() {
        println!("skipped: this machine has a usable GPU");
        return;
    }
    let Some(model) = default_model() else { return };
    let text = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(text.path(), "the quick brown fox jumps over the lazy dog. ".repeat(200)).unwrap();
    let m = model.to_str().unwrap();
    let t = text.path().to_str().unwrap();
    let cases: [&[&str]; 4] = [
        &["run", "-m", m, "-p", "hello", "-n", "4", "-ngl", "99"],
        &["bench", "-m", m, "-p", "8", "-n", "2", "-r", "1", "-ngl", "99"],
        &["perplexity", "-m", m, "-f", t, "-c", "64", "-ngl", "99"],
        &["chat", "-m", m, "-ngl", "99"],
    ];
    for args in cases {
        let mut child = Command::new(engine_bin())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(b"/exit\n").unwrap();
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded without a GPU");
        assert!(err.contains("no usable CUDA GPU"), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.stdout.is_empty(), "{args:?} printed {:?}", String::from_utf8_lossy(&out.stdout));
    }
    let out = Command::new(engine_bin()).args(["bench", "-m", m, "-p", "8", "-n", "0", "--parallel-fit"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--parallel-fit is for the GPU"));
}
