#!/usr/bin/env bash
# Two settings of one engine binary on the GPU machine, alternating within one call (the machines
# are shared and noisy: compare only within a call): decode tg128 of the three benchmark models
# of gpu_all.sh, and the one-sequence hybrid ratio at depth 32K (all layers full against layers
# 1, 3, .., 31 streaming). A and B are environment assignments for `env`, e.g.
#   BIN=devbin A="" B="ENGINE_CUDA_FUSED_NORM=0" benches/gpu_ab.sh [rounds]
#   BIN=devbin A="ENGINE_CUDA_DEFINES=MV_RESID_WARPS=8" B="" benches/gpu_ab.sh 2
set -uo pipefail
BIN=${BIN:-devbin}
E="$BIN/engine"
T=${TMPDIR:-/tmp}
ROUNDS=${1:-2}
A=${A:-}
B=${B:-}
model() { # preset type file
    [ -f "$T/$3" ] || "$E" synth --arch llama --preset "$1" --type "$2" -o "$T/$3" -t "$(nproc)" --fast >/dev/null
}
model llama3-8b q4_k_m l8b.gguf & model llama3-8b q4_0 l8b0.gguf & model llama3.2-1b q4_k_m l1b.gguf & wait
rows() { grep -E "^\| [a-z]|rror" | grep -v "^| model" | sed -E 's/ +\|/|/g' | awk -F'|' '{print $2, $7, $8}'; }
HALF=$(seq -s, 1 2 31)
for r in $(seq 1 "$ROUNDS"); do
    for side in A B; do
        setting=${!side}
        echo "[round $r, $side: ${setting:-defaults}]"
        # shellcheck disable=SC2086
        env $setting "$E" bench -m "$T/l8b.gguf,$T/l8b0.gguf,$T/l1b.gguf" -ngl 99 -p 0 -n 128 -r 3 2>&1 | rows
        for lazy in "" "--lazy-layers $HALF"; do
            # shellcheck disable=SC2086
            env $setting "$E" bench -m "$T/l8b.gguf" -ngl 99 -b 256 -p 0 -n 64 -d 32768 -r 2 $lazy 2>&1 | rows
        done
    done
done
