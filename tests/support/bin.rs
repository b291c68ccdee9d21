//! Locating the `engine` binary for tests that run the command line.
//!
//! `CARGO_BIN_EXE_engine` exists only for tests of the package that owns the binary (`engine-cli`),
//! so tests here find the binary next to their own executable (`target/<profile>/deps/test-hash`
//! -> `target/<profile>/engine`). `cargo test -p engine-tests` does not build it, so the first call
//! runs `cargo build -p engine-cli` for the same profile once per test process: a no-op when the
//! binary is up to date, and it keeps a stale binary from being tested.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

/// The `engine` binary of this build, built first if needed. Panics (failing the test) when it
/// cannot be built.
pub fn engine_bin() -> PathBuf {
    static BIN: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BIN.get_or_init(locate_and_build) {
        Ok(path) => path.clone(),
        Err(e) => panic!("cannot provide the engine binary: {e}"),
    }
}

fn locate_and_build() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    // target/<profile>/deps/<test> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .ok_or_else(|| format!("unexpected test executable location {}", exe.display()))?;
    let bin = profile_dir.join(format!("engine{}", std::env::consts::EXE_SUFFIX));
    let target_dir = profile_dir.parent().ok_or_else(|| format!("no target directory above {}", profile_dir.display()))?;
    // The `test` profile and `dev` share `target/debug`; other profiles have their own directory.
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_string(),
        Some(name) => name.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(cargo)
        .args(["build", "--quiet", "-p", "engine-cli", "--bin", "engine", "--profile", &profile])
        .arg("--target-dir")
        .arg(target_dir)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!("cargo build -p engine-cli failed ({status})"));
    }
    if !bin.is_file() {
        return Err(format!("{} does not exist after cargo build", bin.display()));
    }
    Ok(bin)
}
