#!/usr/bin/env python3
"""Reference logits for Gemma 3 270M from Hugging Face transformers (float32).

transformers loads the default GGUF model, dequantizes every tensor to float32, and runs its own
`modeling_gemma3` forward pass: an implementation no one here wrote, of the original model
definition. For each prompt the fixture stores the input ids, and for every position the top-K
token ids with their logits and the log-sum-exp of the whole row; plus the greedy continuation.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers gguf numpy
    /tmp/hfvenv/bin/python tests/scripts/make_gemma3_reference.py [MODEL.gguf]

writes tests/fixtures/gemma3/hf_reference.json. Prompts are tokenized by transformers' tokenizer
(built from the GGUF); the fixture keeps the ids, so the test does not depend on any tokenizer.
"""

import json
import os
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TOP_K = 32
N_GREEDY = 32
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "gemma3", "hf_reference.json")

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
    "Once upon a time, in a small village by the sea, there lived",
    "1, 2, 3, 4, 5, 6, 7, 8,",
    "Zürich, København and Kraków are cities in",
]


def long_prompt():
    # Over 512 tokens, so that the sliding-window layers (window 512) drop their oldest keys.
    words = ("the quick brown fox jumps over the lazy dog while seven wizards quietly hex "
             "a jolly box of mixed pickles near the old stone bridge").split()
    text = " ".join(words[i % len(words)] for i in range(620))
    return text + ". In summary, the fox"


def main():
    model_path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/engine/models/gemma-3-270m-q4_k_m.gguf")
    d, name = os.path.split(model_path)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    cases = []
    for text in PROMPTS + [long_prompt()]:
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            logits = model(ids).logits[0].float()
            greedy = model.generate(ids, max_new_tokens=N_GREEDY, do_sample=False)[0, ids.shape[1]:]
        lse = torch.logsumexp(logits, dim=-1)
        top = torch.topk(logits, TOP_K, dim=-1)
        cases.append({
            "text": text,
            "ids": ids[0].tolist(),
            "top_ids": top.indices.tolist(),
            "top_logits": [[round(float(v), 5) for v in row] for row in top.values],
            "lse": [round(float(v), 5) for v in lse],
            "greedy": greedy.tolist(),
        })
        print(f"{len(ids[0])} tokens: {text[:40]!r} -> {tok.decode(greedy)!r}", flush=True)
    meta = {"reference": "transformers " + __import__("transformers").__version__ + ", float32, GGUF dequantized",
            "model": name, "top_k": TOP_K}
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"meta": meta, "cases": cases}, f)
    print("wrote", OUT)


if __name__ == "__main__":
    main()
