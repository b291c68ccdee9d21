//! Helpers shared by the integration tests: building GGUF images by hand, finding the default
//! model, locating the `engine` binary.

pub mod bin;
pub mod craft;

use std::path::PathBuf;

/// The default model, if it is in the cache. Tests that need it say so and skip otherwise,
/// except under CI, where `.ci/run` fetches it first and its absence is a failure.
pub fn default_model() -> Option<PathBuf> {
    let path = engine::model_path::default_model_path().ok()?;
    if path.exists() {
        Some(path)
    } else if std::env::var_os("CI").is_some() {
        panic!("CI must fetch the default model first ({}): {}", engine::model_path::FETCH_COMMAND, path.display());
    } else {
        eprintln!("skipped: default model not in the cache ({})", path.display());
        None
    }
}

/// Whether python3 with the PyPI `gguf` package (and numpy) is here. Outside CI its absence
/// skips the caller's check (with a message); under CI it fails the test.
pub fn python_gguf_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import gguf, numpy"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("CI needs python3 with the PyPI `gguf` package (pip install gguf)");
        }
        eprintln!("skipped: python3 with the PyPI `gguf` package is not available (pip install gguf)");
    }
    ok
}
