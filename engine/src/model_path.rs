//! Where models live: `-m PATH` when given, else the default model in the cache.
//!
//! The default model is Gemma 3 270M (base), Q4_K_M. `models/fetch.py` downloads it into the
//! cache directory and checks its hash; when it is missing, the error says exactly that command.

use std::path::{Path, PathBuf};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "gemma-3-270m-q4_k_m.gguf";
/// Its size in bytes.
pub const DEFAULT_MODEL_SIZE: u64 = 253_113_024;
/// Its SHA-256.
pub const DEFAULT_MODEL_SHA256: &str = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818";
/// The command that fetches it (run from the repository root).
pub const FETCH_COMMAND: &str = "python3 models/fetch.py";

#[derive(Debug, thiserror::Error)]
pub enum ModelPathError {
    #[error("model file {0} does not exist")]
    Missing(PathBuf),
    #[error(
        "the default model is not in the cache ({path}).\n  fetch it with:  {FETCH_COMMAND}\n  (or pass -m PATH to use another GGUF file)"
    )]
    DefaultMissing { path: PathBuf },
    #[error(
        "the cached default model {path} has {found} bytes, expected {DEFAULT_MODEL_SIZE}; fetch it again with:  {FETCH_COMMAND} --force"
    )]
    DefaultWrongSize { path: PathBuf, found: u64 },
    #[error("no cache directory: set ENGINE_CACHE_DIR, XDG_CACHE_HOME or HOME")]
    NoCacheDir,
}

/// The directory models are cached in: `$ENGINE_CACHE_DIR`, else `$XDG_CACHE_HOME/engine/models`,
/// else `~/.cache/engine/models`. `models/fetch.py` uses the same rule.
pub fn cache_dir() -> Result<PathBuf, ModelPathError> {
    let nonempty = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(d) = nonempty("ENGINE_CACHE_DIR") {
        return Ok(d);
    }
    if let Some(d) = nonempty("XDG_CACHE_HOME") {
        return Ok(d.join("engine").join("models"));
    }
    nonempty("HOME").map(|h| h.join(".cache").join("engine").join("models")).ok_or(ModelPathError::NoCacheDir)
}

/// Path of the default model in the cache (whether or not it is there).
pub fn default_model_path() -> Result<PathBuf, ModelPathError> {
    Ok(cache_dir()?.join(DEFAULT_MODEL_FILE))
}

/// Resolves the model to load: `explicit` when given, else the cached default model.
pub fn resolve(explicit: Option<&Path>) -> Result<PathBuf, ModelPathError> {
    if let Some(p) = explicit {
        // Existence only: the reader reports directories, FIFOs and malformed files itself.
        return if p.exists() { Ok(p.to_path_buf()) } else { Err(ModelPathError::Missing(p.to_path_buf())) };
    }
    let path = default_model_path()?;
    match std::fs::metadata(&path) {
        Err(_) => Err(ModelPathError::DefaultMissing { path }),
        Ok(m) if m.len() != DEFAULT_MODEL_SIZE => Err(ModelPathError::DefaultWrongSize { path, found: m.len() }),
        Ok(_) => Ok(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_missing_path_is_named() {
        let err = resolve(Some(Path::new("/nonexistent/model.gguf"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/model.gguf"), "{err}");
    }

    #[test]
    fn missing_default_model_says_how_to_fetch_it() {
        let err = ModelPathError::DefaultMissing { path: PathBuf::from("/c/x.gguf") };
        let msg = err.to_string();
        assert!(msg.contains(FETCH_COMMAND) && msg.contains("/c/x.gguf"), "{msg}");
    }
}
