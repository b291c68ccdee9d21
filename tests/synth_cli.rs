//! `engine synth` from the command line: a tiny model written and readable, the same file for the
//! same seed (with and without `--fast`), and bad arguments (unknown preset, type or
//! architecture, an architecture that does not match the preset, an output that cannot be
//! written) refused with one error line, a non-zero exit and no file left behind; Ctrl-C in the
//! middle of a write leaves the output path as it was and no temporary file.

use std::path::Path;
use std::process::{Command, Output};

use engine::gguf::GgufFile;
use engine::model::Model;
use engine_tests::bin::engine_bin;

fn synth(args: &[&str], out: &Path) -> Output {
    Command::new(engine_bin()).arg("synth").args(args).arg("-o").arg(out).arg("--quiet").output().unwrap()
}

/// Runs a bad invocation: it must fail with exactly one stderr line holding `expect`, write
/// nothing to stdout, and leave no file in `dir`.
fn refused(args: &[&str], out: &Path, expect: &str, dir: &Path) {
    let o = synth(args, out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{args:?} succeeded");
    assert_eq!(stderr.lines().count(), 1, "{args:?}: expected one error line, got {stderr:?}");
    assert!(stderr.starts_with("error: ") && stderr.contains(expect), "{args:?}: {stderr:?} lacks {expect:?}");
    assert!(o.stdout.is_empty());
    let left: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.is_empty(), "{args:?} left {left:?}");
}

#[test]
fn writes_a_model_our_loader_accepts_and_the_same_one_again() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    for out in [&a, &b] {
        let o = synth(&["--arch", "qwen2", "--preset", "qwen2-tiny", "--type", "q4_k_m", "--seed", "5"], out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let file = GgufFile::open(&a).unwrap();
    let model = Model::load(&file).unwrap();
    assert_eq!(model.cfg.n_layer, 3);
    assert_eq!(file.get_str("general.name").unwrap(), Some("qwen2-tiny"));
}

/// `--fast`: the same file for the same seed, a model the loader accepts, with as many bytes of
/// tensor data as the normal file but other bytes, and the option recorded in
/// `general.description`.
#[test]
fn fast_writes_the_same_loadable_model_again() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--arch", "qwen2", "--preset", "qwen2-tiny", "--type", "q4_k_m", "--seed", "5"];
    let (normal, a, b) = (dir.path().join("n.gguf"), dir.path().join("a.gguf"), dir.path().join("b.gguf"));
    let o = synth(&args, &normal);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for out in [&a, &b] {
        let o = synth(&[&args[..], &["--fast"]].concat(), out);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let (file, normal) = (GgufFile::open(&a).unwrap(), GgufFile::open(&normal).unwrap());
    assert_eq!(file.data_section_len(), normal.data_section_len());
    assert_ne!(file.bytes()[file.data_offset() as usize..], normal.bytes()[normal.data_offset() as usize..]);
    Model::load(&file).unwrap();
    let description = file.get_str("general.description").unwrap().unwrap_or_default();
    assert!(description.ends_with("--seed 5 --fast"), "{description:?}");
}

#[test]
fn bad_arguments_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("m.gguf");
    refused(&["--arch", "llama", "--preset", "llama-huge", "--type", "f32"], &out, "unknown preset \"llama-huge\"", d);
    refused(&["--arch", "llama", "--preset", "gemma3-tiny", "--type", "f32"], &out, "preset \"gemma3-tiny\" is a gemma3 model, not llama", d);
    refused(&["--arch", "gpt2", "--preset", "llama-tiny", "--type", "f32"], &out, "unknown architecture \"gpt2\"", d);
    refused(&["--arch", "llama", "--preset", "llama-tiny", "--type", "q3_k"], &out, "unknown type \"q3_k\"", d);
    // Unwritable outputs: a directory that does not exist, and a directory.
    let missing = d.join("no/such/dir/m.gguf");
    refused(&["--arch", "llama", "--preset", "llama-tiny", "--type", "f32"], &missing, "no/such/dir", d);
    refused(&["--arch", "llama", "--preset", "llama-tiny", "--type", "f32"], d, "is a directory", d);
}

/// Ctrl-C (SIGINT) while the model is being written: a one-line error, the file already at the
/// output path unchanged, and no temporary file left in its directory (RELIABILITY.md's fault
/// injection). A 1B-shaped Q4_K_M model takes well over the time to see its temporary file grow.
#[cfg(unix)]
#[test]
fn ctrl_c_during_a_write_leaves_the_old_file_and_nothing_else() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    std::fs::write(&out, b"what the user had").unwrap();
    let mut child = Command::new(engine_bin())
        .args(["synth", "--arch", "llama", "--preset", "llama3.2-1b", "--type", "q4_k_m", "-t", "1", "--quiet", "-o"])
        .arg(&out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the temporary file holds some of the model.
    let start = Instant::now();
    let partial = loop {
        let grown = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap()).find(|e| {
            e.file_name().to_string_lossy().ends_with(".partial") && e.metadata().map(|m| m.len() > (1 << 20)).unwrap_or(false)
        });
        if let Some(e) = grown {
            break e.path();
        }
        assert!(child.try_wait().unwrap().is_none(), "synth ended before its temporary file grew");
        assert!(start.elapsed() < Duration::from_secs(120), "no temporary file after two minutes");
        std::thread::sleep(Duration::from_millis(20));
    };
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "synth succeeded after Ctrl-C");
    assert_eq!(stderr.lines().count(), 1, "expected one error line, got {stderr:?}");
    assert!(stderr.starts_with("error: ") && stderr.contains("stopped by Ctrl-C"), "{stderr:?}");
    assert_eq!(std::fs::read(&out).unwrap(), b"what the user had", "the output path changed");
    assert!(!partial.exists(), "temporary file {} left behind", partial.display());
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, vec![std::ffi::OsString::from("m.gguf")], "files left: {left:?}");
}
