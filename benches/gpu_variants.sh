#!/usr/bin/env bash
# Decode speed of kernel-tuning variants in one GPU call: `engine bench` once per variant, each
# variant a value of ENGINE_CUDA_DEFINES (the kernels' #ifndef knobs, see cuda/src/nvrtc.rs),
# the first usually "" (the defaults). Models are made here by `engine synth` when missing.
#   BIN=devbin/x MODELS="l8b.gguf l1b.gguf" ARGS="-p 0 -n 128 -r 2" \
#     benches/gpu_variants.sh "" "MV2_MIN_BLOCKS=2" ...
set -uo pipefail
BIN=${BIN:-devbin}
E="$BIN/engine"
T=${TMPDIR:-/tmp}
MODELS=${MODELS:-l8b.gguf}
ARGS=${ARGS:--p 0 -n 128 -r 2}
synth() { # file
    case "$1" in
    l8b.gguf) set -- "$1" llama3-8b q4_k_m ;;
    l8b0.gguf) set -- "$1" llama3-8b q4_0 ;;
    l1b.gguf) set -- "$1" llama3.2-1b q4_k_m ;;
    *) echo "unknown model $1" >&2; return 1 ;;
    esac
    [ -f "$T/$1" ] || "$E" synth --arch llama --preset "$2" --type "$3" -o "$T/$1" -t "$(nproc)" >/dev/null
}
for m in $MODELS; do synth "$m" & done
wait
for m in $MODELS; do
    for v in "$@"; do
        echo "== $m defines [$v]"
        # shellcheck disable=SC2086
        ENGINE_CUDA_DEFINES="$v" "$E" bench -m "$T/$m" -ngl 99 $ARGS 2>&1 | grep -E "^\||error" | grep -v -- "---"
    done
done
