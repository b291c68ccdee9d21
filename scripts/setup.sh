#!/usr/bin/env bash
# Installs what the tests need beyond the Rust toolchain: the Python packages used as independent
# oracles, and the default model. Idempotent: a second run does nothing but check.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "error: cargo not found; install Rust (https://rustup.rs)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "error: python3 not found" >&2; exit 1; }
if ! python3 -c 'import gguf, numpy' 2>/dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
python3 models/fetch.py
