"""llama.cpp's logits, bit for bit, for the llama.cpp-numerics test: a SHA-256 of the f32 bytes
of the logit rows of a few evaluations of the default model (tests/fixtures/gemma3/llamacpp_logits.json).

Each case evaluates `pre` as one batch (when given), then `tokens` as one batch, and hashes the
rows of `tokens` (all of them, or the last only: `rows`). The cases cover what selects llama.cpp's
kernels: one token (the vector dot products), a batch under 8 tokens (llamafile's GEMM, the
repacked Q4_K GEMM and GEMV), a batch of 8 or more (ggml's tiled Q6_K product), and a prompt
longer than the 512-token sliding window.

    /tmp/llvenv/bin/python tests/scripts/make_llamacpp_logit_hashes.py [MODEL.gguf]
"""

import hashlib
import json
import os
import sys

import numpy as np
from llama_cpp import Llama, __version__

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "gemma3")


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/engine/models/gemma-3-270m-q4_k_m.gguf")
    ref = json.load(open(os.path.join(FIX, "hf_reference.json")))["cases"]
    greedy = json.load(open(os.path.join(FIX, "llamacpp.json")))["cases"]
    llm = Llama(model_path=model, n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True, verbose=False, n_threads=2)
    cases = [
        ("BOS alone", [], [2], "all"),
        ("a 6-token prompt", [], ref[0]["ids"], "all"),
        ("one token after it", ref[0]["ids"], greedy[0]["greedy"][:1], "all"),
        ("a 16-token prompt", [], ref[2]["ids"], "all"),
        ("one token after it", ref[2]["ids"], greedy[2]["greedy"][:1], "all"),
        ("a 627-token prompt, last row", [], ref[5]["ids"], "last"),
        ("one token after it", ref[5]["ids"], greedy[5]["greedy"][:1], "all"),
    ]
    out = []
    for name, pre, tokens, rows in cases:
        llm.reset()
        if pre:
            llm.eval(pre)
        llm.eval(tokens)
        n0 = len(pre)
        logits = np.asarray(llm.scores[n0 : n0 + len(tokens)], dtype=np.float32)
        if rows == "last":
            logits = logits[-1:]
        last = logits[-1]
        out.append({
            "name": name,
            "pre": pre,
            "tokens": tokens,
            "rows": rows,
            "sha256": hashlib.sha256(np.ascontiguousarray(logits).astype("<f4").tobytes()).hexdigest(),
            "last_argmax": int(np.argmax(last)),
            "last_max": float(last.max()),
        })
        print(name, out[-1]["sha256"][:16], out[-1]["last_argmax"], flush=True)
    with open(os.path.join(FIX, "llamacpp_logits.json"), "w") as f:
        json.dump({"reference": f"llama.cpp via llama-cpp-python {__version__}, this x86 CPU (AVX2 build), f16 KV, 2 threads", "cases": out}, f, indent=1)


if __name__ == "__main__":
    main()
