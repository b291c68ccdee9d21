#!/usr/bin/env python3
"""llama.cpp's full logits rows for each Gemma 3 reference prompt and its greedy continuation, for
a position-by-position comparison with our fast path (the ignored test
`fast_path_logits_distance_to_llama_cpp` in tests/gemma3_reference.rs reads them).

The prompt is evaluated as one batch, the continuation (llama.cpp's own greedy tokens from
tests/fixtures/gemma3/llamacpp.json) one token at a time, with the settings of
make_gemma3_llamacpp.py (f16 KV cache, no flash attention: llama-cpp-python's default). Rows are
kept from position max(0, n_prompt - 8) on (all logits of a 627-token prompt would be 650 MB).

    /tmp/llvenv/bin/python tests/scripts/dump_gemma3_llamacpp_logits.py [OUT_DIR] [MODEL.gguf]

writes OUT_DIR/index.json (per case: tokens, n_prompt, first row, row offset in the file) and
OUT_DIR/logits.f32 (the rows, little-endian f32, n_vocab per row). It also writes
OUT_DIR/logits_seq.f32, the same rows with the prompt evaluated one token at a time: llama.cpp's
distance from itself when only its batching (so its kernels' summation order) changes, the floor
below which no other engine's distance can be expected to go.
"""

import json
import os
import sys

import numpy as np
from llama_cpp import Llama, __version__

HERE = os.path.dirname(os.path.abspath(__file__))
FIX = os.path.join(HERE, "..", "fixtures", "gemma3")
TAIL = 8


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma3-llamacpp-logits"
    model = sys.argv[2] if len(sys.argv) > 2 else os.path.expanduser("~/.cache/engine/models/gemma-3-270m-q4_k_m.gguf")
    os.makedirs(out, exist_ok=True)
    ref = json.load(open(os.path.join(FIX, "hf_reference.json")))
    theirs = json.load(open(os.path.join(FIX, "llamacpp.json")))
    llm = Llama(model_path=model, n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True, verbose=False, n_threads=2)
    cases = []
    row = 0
    with open(os.path.join(out, "logits.f32"), "wb") as f, open(os.path.join(out, "logits_seq.f32"), "wb") as fs:
        for c, t in zip(ref["cases"], theirs["cases"]):
            ids, greedy = c["ids"], t["greedy"]
            first = max(0, len(ids) - TAIL) if len(ids) > 64 else 0
            for sequential in (False, True):
                llm.reset()
                if sequential:
                    rows = []
                    for i, tok in enumerate(ids):
                        llm.eval([tok])
                        if i >= first:
                            rows.append(np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32))
                else:
                    llm.eval(ids)
                    rows = [np.asarray(llm.scores[p], dtype=np.float32) for p in range(first, len(ids))]
                for tok in greedy:
                    llm.eval([tok])
                    rows.append(np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float32))
                if not sequential:
                    # The fixture's continuation must still be what this llama.cpp chooses.
                    chosen = [int(np.argmax(r)) for r in rows[len(ids) - first - 1 : -1]]
                    assert chosen == greedy, (c["text"], chosen, greedy)
                for r in rows:
                    (fs if sequential else f).write(r.astype("<f4").tobytes())
            cases.append({"text": c["text"], "tokens": ids + greedy, "n_prompt": len(ids), "first": first, "row": row, "n_rows": len(rows)})
            row += len(rows)
            print(c["text"][:30], len(ids), len(rows), flush=True)
    json.dump({"reference": f"llama.cpp via llama-cpp-python {__version__}, f16 KV, no flash attention", "n_vocab": len(rows[0]), "cases": cases},
              open(os.path.join(out, "index.json"), "w"))


if __name__ == "__main__":
    main()
