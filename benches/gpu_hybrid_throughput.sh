#!/usr/bin/env bash
# Issue 7's hybrid-throughput targets, on a GPU machine: a Llama-3-8B-shaped model (random
# weights, Q4_K_M, made here by `engine synth --fast`) with every other layer streaming (16 of 32 lazy:
# sink 4 + window 1020 positions, plus the GPU's batch margin of -b positions) against the same
# model with every layer full:
#   1. 16K context, as many sequences as fit in GPU memory, decoded together (target: lazy
#      throughput >= 1.8x the full model's);
#   2. one sequence at depth 32K (target: >= 1.25x).
# The depth fill is evaluated once per test and copied into every sequence (engine bench's GPU
# path); tokens/s counts every sequence's tokens. Usage:
#   ENGINE=path/to/engine MODEL=/tmp/l8b.gguf benches/gpu_hybrid_throughput.sh
set -euo pipefail
E=${ENGINE:-target/release/engine}
M=${MODEL:-/tmp/l8b.gguf}
[ -f "$M" ] || "$E" synth --arch llama --preset llama3-8b --type q4_k_m -o "$M" -t "$(nproc)" --fast >/dev/null
HALF=$(seq -s, 1 2 31)
for lazy in "" "--lazy-layers $HALF"; do
    # shellcheck disable=SC2086
    "$E" bench -m "$M" -ngl 99 -b 256 -p 0 -n 32 -d 16384 -r 2 --parallel-fit $lazy
    # shellcheck disable=SC2086
    "$E" bench -m "$M" -ngl 99 -b 256 -p 0 -n 64 -d 32768 -r 2 $lazy
done
