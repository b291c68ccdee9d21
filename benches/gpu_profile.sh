#!/usr/bin/env bash
# Where a decode token's time goes on the GPU, with Nsight Compute (`ncu`; the GPU machine has
# no nsys): (1) the duration of every kernel of a few decode tokens of a Llama-3-8B-shaped
# Q4_K_M model, as CSV; (2) the full sections (speed of light, memory, warp stalls, occupancy)
# of a few decode products. Usage, on the GPU machine:
#   ENGINE=devbin/x/engine OUT=/some/dir benches/gpu_profile.sh
set -uo pipefail
E=${ENGINE:-target/release/engine}
M=${MODEL:-/tmp/l8b.gguf}
O=${OUT:-/tmp}
NCU=$(command -v ncu || ls /usr/local/cuda*/bin/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu on this machine" >&2; exit 1; }
[ -f "$M" ] || "$E" synth --arch llama --preset llama3-8b --type q4_k_m -o "$M" -t "$(nproc)" >/dev/null
# A 4-token prompt and 6 generated tokens; the graph's kernels are profiled node by node.
RUN=("$E" run -m "$M" -ngl 99 -p "one two three" -n 6 --temp 0)
"$NCU" --graph-profiling node --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv \
    "${RUN[@]}" >"$O/durations.csv" 2>"$O/durations.err"
echo "durations: $(grep -c '"gpu__time_duration.sum"' "$O/durations.csv") kernels"
"$NCU" --graph-profiling node --kernel-name regex:'matvec' --launch-skip 600 --launch-count 12 \
    --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section Occupancy \
    --section LaunchStats --section SchedulerStats "${RUN[@]}" >"$O/sections.txt" 2>&1
tail -c 3000 "$O/sections.txt"
