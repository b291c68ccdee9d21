#!/usr/bin/env python3
"""LightTransfer evaluation grid on the default model (Gemma 3 270M), as issue 5 asks, scaled to
what a 2-core machine runs: context 1024, lazy layers keep sink 4 + window 124 (= context / 8).

For lazy fractions 0 / 0.25 / 0.5 / 0.75 of the candidate layers, the lazy set is chosen four ways:
by lazy ratio (measured by `engine lazy` on a calibration text that is NOT the evaluation text), at
random (seeded), the first candidates, and the last candidates. Each cell reports perplexity on the
GPL-3 text (llama-perplexity's method) and passkey accuracy, with the lazy layers streaming from
the first token, and the KV cache bytes.

Candidates (`--candidates`):
  all     every layer whose span exceeds sink + window: at context 1024 all 18 (Gemma's
          sliding-window layers see 512 positions, more than 128);
  global  only the full-attention layers (5, 11, 17), what the paper's own defaults (window 1020,
          wider than Gemma's 512) would leave as candidates.

The table goes into `--out` between markers named after the setting, so hand-written analysis
around it survives a rerun:

    python3 scripts/lighttransfer_grid.py [--engine target/release/engine] [--candidates all|global]
        [--ctx 1024] [--out docs/LIGHTTRANSFER.md]
"""

import argparse
import os
import random
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXT = os.path.join(ROOT, "tests/fixtures/text/gpl-3.txt")
CALIB = [os.path.join(ROOT, "tests/fixtures/text", f) for f in ("gfdl-1.3.txt", "apache-2.0.txt")]
SINK = 4
FRACTIONS = [0.0, 0.25, 0.5, 0.75]
PPL_CHUNKS, TRIALS, DEPTH = 3, 8, 0.5


def run(cmd):
    t = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{p.stderr}")
    return p.stdout, p.stderr, time.time() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default=os.path.join(ROOT, "target/release/engine"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs/LIGHTTRANSFER.md"))
    ap.add_argument("--candidates", choices=["all", "global"], default="all")
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    eng, ctx = args.engine, args.ctx
    window = ctx // 8 - SINK

    # Lazy ratios on the calibration text (both files joined).
    calib = "/tmp/lighttransfer_calib.txt"
    with open(calib, "w") as f:
        f.write("\n\n".join(open(p).read() for p in CALIB))
    out, _, secs = run([eng, "lazy", "--calib", calib, "-o", "/tmp/lighttransfer_probe.gguf", "--ratio", "0.5",
                        "--sink", str(SINK), "--window", str(window), "--chunk", str(ctx)])
    ratios, kinds = {}, {}
    for line in out.splitlines():
        m = re.match(r"\s*(\d+)\s+(full|sliding-window|streaming)\s+(\S+)\s", line)
        if m:
            kinds[int(m.group(1))] = m.group(2)
            if m.group(3) != "-":
                ratios[int(m.group(1))] = float(m.group(3))
    os.unlink("/tmp/lighttransfer_probe.gguf")
    n_layer = len(kinds)
    cands = sorted(ratios) if args.candidates == "all" else sorted(i for i in ratios if kinds[i] == "full")
    by_ratio = sorted(cands, key=lambda i: -ratios[i])
    print("ratios:", {i: round(r, 3) for i, r in sorted(ratios.items())}, f"({secs:.0f} s)", "candidates:", cands, flush=True)

    rng = random.Random(7)
    shuffled = list(cands)
    rng.shuffle(shuffled)
    selections = {
        "lazy ratio": lambda k: sorted(by_ratio[:k]),
        "random": lambda k: sorted(shuffled[:k]),
        "first": lambda k: cands[:k],
        "last": lambda k: cands[len(cands) - k:],
    }
    rows, done = [], {}
    for frac in FRACTIONS:
        k = int(frac * len(cands) + 0.5)
        for name, pick in selections.items():
            if k == 0 and name != "lazy ratio":
                continue
            layers = pick(k)
            if tuple(layers) in done:
                # The same set under another name (few candidates): reuse the measurement.
                rows.append((frac, name, layers, *done[tuple(layers)]))
                print(rows[-1], "(same set as above)", flush=True)
                continue
            hybrid = ["--lazy-layers", ",".join(map(str, layers))] if layers else ["--no-hybrid"]
            hybrid += ["--sink", str(SINK), "--window", str(window)]
            out, _, t1 = run([eng, "perplexity", "-f", TEXT, "-c", str(ctx), "--chunks", str(PPL_CHUNKS), *hybrid])
            ppl = re.search(r"PPL = ([0-9.]+) \+/- ([0-9.]+)", out)
            out2, _, t2 = run([eng, "eval", "passkey", "-c", str(ctx), "--depth", str(DEPTH), "--trials", str(TRIALS), *hybrid])
            pk = re.search(r"accuracy (\d+)/(\d+) = ([0-9.]+), kv cache (.+)$", out2.strip())
            row = (frac, "none" if k == 0 else name, layers, float(ppl.group(1)), float(ppl.group(2)),
                   f"{pk.group(1)}/{pk.group(2)}", pk.group(4).strip())
            rows.append(row)
            done[tuple(layers)] = row[3:]
            print(row, f"({t1 + t2:.0f} s)", flush=True)

    base = rows[0][3]
    tag = f"grid candidates={args.candidates} ctx={ctx}"
    block = [f"<!-- {tag} begin (written by scripts/lighttransfer_grid.py) -->",
             f"Context {ctx}; a lazy layer keeps {SINK} sink + {window} recent positions; candidates: "
             f"{args.candidates} ({', '.join(map(str, cands))}). Perplexity: `engine perplexity -f "
             f"tests/fixtures/text/gpl-3.txt -c {ctx} --chunks {PPL_CHUNKS}` (± one standard error); passkey: "
             f"`engine eval passkey -c {ctx} --depth {DEPTH} --trials {TRIALS}`; lazy ratios: `engine lazy "
             f"--chunk {ctx} --sink {SINK} --window {window}` on the calibration text.",
             "",
             "Mean lazy ratio per layer (calibration): "
             + ", ".join(f"{i}{'' if kinds[i] == 'sliding-window' else ' (global)'}: {ratios[i]:.3f}" for i in sorted(ratios)) + ".",
             "",
             "| lazy fraction | selection | lazy layers | perplexity | Δ vs full | passkey | KV cache |",
             "|---:|---|---|---:|---:|---:|---:|"]
    for frac, name, layers, ppl, err, pk, kv in rows:
        block.append(f"| {frac:.2f} | {name} | {','.join(map(str, layers)) or '-'} | {ppl:.3f} ± {err:.3f} | "
                     f"{(ppl / base - 1) * 100:+.1f}% | {pk} | {kv} |")
    block.append(f"<!-- {tag} end -->")
    text = open(args.out).read() if os.path.exists(args.out) else ""
    begin, end = f"<!-- {tag} begin", f"<!-- {tag} end -->"
    if begin in text and end in text:
        a, b = text.index(begin), text.index(end) + len(end)
        text = text[:a] + "\n".join(block) + text[b:]
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
