#!/usr/bin/env bash
# Everything the GPU machine is for, in one call (its time is scarce and each call starts it
# bare): the GPU tests, the issue-7 speed table against llama.cpp's reference models, and the
# hybrid-throughput targets. Binaries come from this machine (the GPU machine has no Rust):
#   cargo build --release --bin engine
#   cargo test --release -p engine-cuda --no-run
#   cargo test --release -p engine --test gpu_parity --test gpu_batched --test gpu_lighttransfer --no-run
# then copy target/release/engine and the four test executables (target/release/deps/<name>-<hash>,
# renamed <name>) into an ignored folder (say devbin/), carry it, and run there:
#   BIN=devbin benches/gpu_all.sh [tests|speed|hybrid]...   (default: all three)
set -uo pipefail
BIN=${BIN:-devbin}
E="$BIN/engine"
T=${TMPDIR:-/tmp}
parts=("$@")
[ ${#parts[@]} -eq 0 ] && parts=(tests speed hybrid)
model() { # preset type file
    [ -f "$T/$3" ] || "$E" synth --arch llama --preset "$1" --type "$2" -o "$T/$3" -t "$(nproc)" --fast >/dev/null
}
for part in "${parts[@]}"; do
    case "$part" in
    tests)
        for t in parity gpu_parity gpu_batched gpu_lighttransfer; do
            echo "== $t"
            "$BIN/$t" --nocapture --test-threads=1 2>&1 | grep -E "test result|NMSE|perplexity|ratios|candidates|truncate|panicked|error[^s]" | grep -v "abs error"
        done
        ;;
    speed)
        model llama3-8b q4_k_m l8b.gguf & model llama3-8b q4_0 l8b0.gguf & model llama3.2-1b q4_k_m l1b.gguf & wait
        "$E" bench -m "$T/l8b.gguf" -ngl 99 -p 512 -n 128 -d 0,8192 -r 2
        "$E" bench -m "$T/l8b0.gguf,$T/l1b.gguf" -ngl 99 -p 512 -n 128 -r 2
        ;;
    hybrid)
        model llama3-8b q4_k_m l8b.gguf
        ENGINE="$E" MODEL="$T/l8b.gguf" bash "$(dirname "$0")/gpu_hybrid_throughput.sh"
        ;;
    *) echo "unknown part $part (tests, speed, hybrid)" >&2; exit 2 ;;
    esac
done
