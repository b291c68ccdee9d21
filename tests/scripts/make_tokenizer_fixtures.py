#!/usr/bin/env python3
"""Reference token ids from llama.cpp (through llama-cpp-python) for tests/tokenizer_gemma3.rs.

Loads the default model's vocabulary only (vocab_only=True), tokenizes every prompt of
tests/fixtures/tokenizer/prompts.json with llama_tokenize (add_special=True; parse_special=False
for "cases", True for "parse_special_cases"), and 300 random strings made of pieces that meet
at odd boundaries (RANDOM_PIECES, fixed seed; the first 100 also with parse_special=True), detokenizes the ids again with llama_detokenize
(remove_special=False, unparse_special=False), and records each token's attributes where they are
not plain "normal", and the end-of-generation tokens. Writes
tests/fixtures/tokenizer/gemma3_llamacpp.json.

    python3 -m venv /tmp/llvenv && /tmp/llvenv/bin/pip install llama-cpp-python
    /tmp/llvenv/bin/python tests/scripts/make_tokenizer_fixtures.py [--model PATH]

Building llama-cpp-python compiles llama.cpp from source (several minutes on two cores).
"""

import argparse
import ctypes
import json
import os
import random
import sys
from pathlib import Path

import llama_cpp

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"
DEFAULT_MODEL_FILE = "gemma-3-270m-q4_k_m.gguf"


def default_model() -> Path:
    # The same rule as engine::model_path::cache_dir.
    if os.environ.get("ENGINE_CACHE_DIR"):
        d = Path(os.environ["ENGINE_CACHE_DIR"])
    elif os.environ.get("XDG_CACHE_HOME"):
        d = Path(os.environ["XDG_CACHE_HOME"]) / "engine" / "models"
    else:
        d = Path.home() / ".cache" / "engine" / "models"
    return d / DEFAULT_MODEL_FILE


def tokenize(vocab, text: bytes, add_special: bool, parse_special: bool) -> list:
    cap = len(text) + 8
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, cap, add_special, parse_special)
    if n < 0:
        cap = -n
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, text, len(text), buf, cap, add_special, parse_special)
    if n < 0:
        raise RuntimeError(f"llama_tokenize failed ({n}) on {text!r}")
    return list(buf[:n])


def detokenize(vocab, ids: list) -> bytes:
    arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
    cap = 64 + 64 * len(ids)
    buf = ctypes.create_string_buffer(cap)
    n = llama_cpp.llama_detokenize(vocab, arr, len(ids), buf, cap, False, False)
    if n < 0:
        raise RuntimeError(f"llama_detokenize needs {-n} bytes")
    return buf.raw[:n]


def attr_ranges(vocab, n_vocab: int) -> list:
    """[first_id, last_id, attr] runs of tokens whose attributes are not exactly NORMAL (4)."""
    runs = []
    for i in range(n_vocab):
        a = int(llama_cpp.llama_vocab_get_attr(vocab, i))
        if a == 4:
            continue
        if runs and runs[-1][1] == i - 1 and runs[-1][2] == a:
            runs[-1][1] = i
        else:
            runs.append([i, i, a])
    return runs


# Pieces random strings are made of: every kind of character the prompts have, plus fragments of
# special-token strings, so that merges, byte fallback and special-token splitting meet at odd
# boundaries.
RANDOM_PIECES = (
    list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
    + list(" \t\n\r.,;:!?'\"()[]{}<>/\\|-_=+*&^%$#@~`")
    + ["  ", "   ", "\n\n", "\t\t", " \n", "\r\n"]
    + list("éèàüößñçÅØæœ") + ["e\u0301"]
    + list("你好世界日本語こんにちはカタカナ한국어") + list("مرحبا") + list("Привет") + list("नमस्ते")
    + ["😀", "🍕", "👍🏽", "👨\u200d👩\u200d👧", "🏳️\u200d🌈", "\u200b", "\u00a0", "\ufeff", "𝔘", "𓀀", "\U0010FFFF"]
    + ["▁", "<", ">", "</", "<s>", "</s>", "<b>", "</b>", "<bos>", "<eos>", "<start_of_turn>",
       "<end_of_turn>", "<unk>", "<pad>", "<0x41>", "<0x", "[multimodal]", "<table>", "<start_of_image>"]
    + ["the", " the", "ing", "tion", " and", "123", "4567", "http://", "def ", "return"]
)


def random_cases(n: int, seed: int) -> list:
    rng = random.Random(seed)
    cases = []
    for i in range(n):
        k = rng.choice([0, 1, 2, 3, 5, 8, 13, 21, 34])
        text = "".join(rng.choice(RANDOM_PIECES) for _ in range(k))
        cases.append({"name": f"random_{i:03}", "text": text})
    return cases


def record(vocab, case: dict, parse_special: bool) -> dict:
    text = case["text"]
    ids = tokenize(vocab, text.encode("utf-8"), True, parse_special)
    detok = detokenize(vocab, ids)
    try:
        detok_text = detok.decode("utf-8")
    except UnicodeDecodeError:
        detok_text = None
    return {
        "name": case["name"],
        "text": text,
        "ids": ids,
        "detok": detok_text,
        "detok_hex": detok.hex(),
        "roundtrip": detok == text.encode("utf-8"),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=default_model())
    ap.add_argument("--out", type=Path, default=FIXTURES / "gemma3_llamacpp.json")
    args = ap.parse_args()

    prompts = json.loads((FIXTURES / "prompts.json").read_text(encoding="utf-8"))
    llm = llama_cpp.Llama(model_path=str(args.model), vocab_only=True, verbose=False)
    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)

    doc = {
        "about": "Written by tests/scripts/make_tokenizer_fixtures.py: llama.cpp's token ids for "
        "tests/fixtures/tokenizer/prompts.json under the default model's vocabulary.",
        "reference": f"llama-cpp-python {llama_cpp.__version__} (llama.cpp vendored in it), vocab_only=True",
        "model": args.model.name,
        "n_vocab": n_vocab,
        "bos": llama_cpp.llama_vocab_bos(vocab),
        "eos": llama_cpp.llama_vocab_eos(vocab),
        "eot": llama_cpp.llama_vocab_eot(vocab),
        "eog": [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)],
        "attr_runs_not_normal": attr_ranges(vocab, n_vocab),
        "cases": [record(vocab, c, False) for c in prompts["cases"]],
        "parse_special_cases": [record(vocab, c, True) for c in prompts["parse_special_cases"]],
    }
    # All prompts as one text: fragments of every kind next to each other.
    joined = {"name": "all_prompts_joined", "text": "".join(c["text"] for c in prompts["cases"])}
    doc["cases"].append(record(vocab, joined, False))
    # Random strings, a fixed seed: user text, and the same strings with special tokens parsed.
    rand = random_cases(300, seed=20240601)
    doc["random_cases"] = [record(vocab, c, False) for c in rand]
    doc["random_parse_special_cases"] = [record(vocab, c, True) for c in rand[:100]]
    args.out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    n_rt = sum(c["roundtrip"] for c in doc["cases"])
    print(f"{args.out}: {len(doc['cases'])} cases ({n_rt} round-trip), "
          f"{len(doc['parse_special_cases'])} parse_special cases, {len(doc['random_cases'])} random, "
          f"{len(doc['random_parse_special_cases'])} random parse_special", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
