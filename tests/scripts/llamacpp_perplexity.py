#!/usr/bin/env python3
"""Perplexity of a text under llama.cpp (through llama-cpp-python), by llama-perplexity's method.

llama.cpp evaluates every chunk; this script does the scoring exactly as llama-perplexity does
(chunks of n_ctx tokens, BOS replacing each chunk's first token, the second half scored, running
values after each chunk, `Final estimate: PPL = x +/- y`) and writes the figures as JSON, so the
Rust test can compare our perplexity with llama.cpp's on the same text.

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python numpy
    /tmp/llvenv/bin/python tests/scripts/llamacpp_perplexity.py MODEL.gguf TEXT N_CTX OUT.json
"""

import json
import math
import sys

import numpy as np
from llama_cpp import Llama, __version__


def main():
    model, text_path, n_ctx, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    llm = Llama(model_path=model, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True,
                n_threads=2, verbose=False, seed=0)
    text = open(text_path, encoding="utf-8").read()
    tokens = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
    bos = llm.token_bos()
    n_chunks = len(tokens) // n_ctx
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    running = []
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx:(c + 1) * n_ctx])
        chunk[0] = bos
        llm.reset()
        llm.eval(chunk)
        scores = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
        for j in range(first, n_ctx - 1):
            row = scores[j]
            m = row.max()
            lse = m + math.log(np.exp(row - m).sum())
            v = lse - row[chunk[j + 1]]
            nll += v
            nll2 += v * v
            count += 1
        running.append(math.exp(nll / count))
        print(f"[{c + 1}]{running[-1]:.4f},", end="", flush=True)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    stderr = math.sqrt(var / (count - 1)) * ppl
    print(f"\nFinal estimate: PPL = {ppl:.4f} +/- {stderr:.5f}")
    with open(out, "w") as f:
        json.dump({"reference": f"llama.cpp via llama-cpp-python {__version__}", "n_ctx": n_ctx,
                   "n_tokens": len(tokens), "running_ppl": running, "ppl": ppl, "stderr": stderr}, f, indent=1)


if __name__ == "__main__":
    main()
