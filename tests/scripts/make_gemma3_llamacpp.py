#!/usr/bin/env python3
"""llama.cpp's view of the Gemma 3 reference prompts: its greedy 32-token continuations, and how
far its logits stand from Hugging Face's float32 forward pass (tests/fixtures/gemma3/hf_reference.json).

The Rust test holds our fast path (quantized activations, f16 KV cache, as llama.cpp computes)
to llama.cpp's own distance from the float32 reference, and compares greedy continuations.

    /tmp/llvenv/bin/python tests/scripts/make_gemma3_llamacpp.py [MODEL.gguf]
"""

import json
import os
import sys

import numpy as np
from llama_cpp import Llama, __version__

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "gemma3")


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser("~/.cache/engine/models/gemma-3-270m-q4_k_m.gguf")
    ref = json.load(open(os.path.join(FIX, "hf_reference.json")))
    llm = Llama(model_path=model, n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True, verbose=False, n_threads=2)
    cases = []
    for c in ref["cases"]:
        ids = c["ids"]
        llm.reset()
        llm.eval(ids)
        scores = np.asarray(llm.scores[: len(ids)], dtype=np.float64)
        worst = 0.0
        for pos, (top, vals) in enumerate(zip(c["top_ids"], c["top_logits"])):
            row = scores[pos]
            m = row.max()
            lse = m + np.log(np.exp(row - m).sum())
            worst = max(worst, abs(lse - c["lse"][pos]), max(abs(row[i] - v) for i, v in zip(top, vals)))
        greedy = []
        nxt = int(np.argmax(scores[len(ids) - 1]))
        for _ in range(len(c["greedy"])):
            greedy.append(nxt)
            llm.eval([nxt])
            nxt = int(np.argmax(np.asarray(llm.scores[llm.n_tokens - 1])))
        cases.append({"text": c["text"], "max_diff_from_hf": round(worst, 5), "greedy": greedy})
        print(len(ids), round(worst, 4), greedy[:8], flush=True)
    with open(os.path.join(FIX, "llamacpp.json"), "w") as f:
        json.dump({"reference": f"llama.cpp via llama-cpp-python {__version__}, f16 KV", "cases": cases}, f)


if __name__ == "__main__":
    main()
