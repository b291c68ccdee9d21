#!/usr/bin/env bash
# The test command: installs what the tests need (scripts/setup.sh), then runs every test of the
# workspace. Extra arguments go to `cargo test` (for example `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
python3 -m unittest discover -s models -p 'test_*.py'
cargo test --workspace "$@"
