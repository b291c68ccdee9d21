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
