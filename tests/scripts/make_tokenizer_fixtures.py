#!/usr/bin/env python3
"""Reference token ids from llama.cpp (through llama-cpp-python) for tests/tokenizer_gemma3.rs.

Loads the default model's vocabulary only (vocab_only=True), tokenizes every prompt of
tests/fixtures/tokenizer/prompts.json with llama_tokenize (add_special=True; parse_special=False
for "cases", True for "parse_special_cases"), and 300 random strings made of pieces that meet
at odd boundaries (RANDOM_PIECES, fixed seed; the first 100 also with parse_special=True), detokenizes the ids again with llama_detokenize
(remove_special=False, unparse_special=False), and records each token's attributes where they are
not plain "normal", and the end-of-generation tokens. Writes
tests/fixtures/tokenizer/gemma3_llamacpp.json, and the same for the small vocabularies in
tests/fixtures/tokenizer/vocabs/ (see VOCABS) into tests/fixtures/tokenizer/vocabs_llamacpp.json.

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


# Small vocabularies from llama.cpp's own tokenizer tests (models/ggml-vocab-*.gguf, in the
# llama.cpp sources that llama-cpp-python vendors), committed in tests/fixtures/tokenizer/vocabs/:
# GPT-2 (byte-level BPE) and Phi-3 (SPM with a space prefix, and llama.cpp's Phi-3 rule that
# special tokens swallow the whitespace after them). GPT-2's vocabulary is also checked under the
# Llama 3 and Qwen 2 pre-tokenizers, by rewriting its tokenizer.ggml.pre.
VOCABS = [
    ("gpt-2", "ggml-vocab-gpt-2.gguf", None),
    ("gpt-2_as_llama-bpe", "ggml-vocab-gpt-2.gguf", "llama-bpe"),
    ("gpt-2_as_qwen2", "ggml-vocab-gpt-2.gguf", "qwen2"),
    ("gpt-2_as_dbrx", "ggml-vocab-gpt-2.gguf", "dbrx"),
    ("phi-3", "ggml-vocab-phi-3.gguf", None),
]


def with_pre(image: bytes, pre: str) -> bytes:
    """The GGUF image with the string value of tokenizer.ggml.pre replaced (a vocabulary-only
    file: no tensor data follows the metadata, so nothing else moves)."""
    key = b"tokenizer.ggml.pre"
    at = image.index(len(key).to_bytes(8, "little") + key) + 8 + len(key)
    assert int.from_bytes(image[at:at + 4], "little") == 8, "tokenizer.ggml.pre is not a string"
    n = int.from_bytes(image[at + 4:at + 12], "little")
    new = pre.encode()
    return image[:at + 4] + len(new).to_bytes(8, "little") + new + image[at + 12 + n:]


def vocab_fixtures(prompts: dict, tmpdir: Path) -> dict:
    texts = [c for c in prompts["cases"]] + random_cases(150, seed=7)
    out = {}
    for name, file, pre in VOCABS:
        image = (FIXTURES / "vocabs" / file).read_bytes()
        if pre is not None:
            image = with_pre(image, pre)
        path = tmpdir / f"{name}.gguf"
        path.write_bytes(image)
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        def compact(r: dict) -> list:
            # [ids, detokenized bytes as hex]; the texts are stored once, in "texts".
            return [r["ids"], r["detok_hex"]]

        out[name] = {
            "file": file,
            "pre": pre,
            "cases": [compact(record(vocab, c, False)) for c in texts],
            "parse_special_cases": [compact(record(vocab, c, True)) for c in texts[:60]],
        }
        del llm
    return {"texts": [c["text"] for c in texts], "vocabs": out}


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

    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        vocabs = vocab_fixtures(prompts, Path(tmp))
    vocab_doc = {
        "about": "Written by tests/scripts/make_tokenizer_fixtures.py: llama.cpp's token ids for the prompts "
        "and 150 random strings under the vocabularies in tests/fixtures/tokenizer/vocabs/.",
        "reference": doc["reference"],
        "format": "vocabs[name].cases[i] = [ids, detokenized bytes as hex] for texts[i] (add_special, "
        "parse_special=False); parse_special_cases likewise for the first 60 texts with parse_special=True",
        **vocabs,
    }
    vocab_out = args.out.with_name("vocabs_llamacpp.json")
    vocab_out.write_text(json.dumps(vocab_doc, ensure_ascii=False, indent=0) + "\n", encoding="utf-8")
    print(f"{vocab_out}: {', '.join(vocabs['vocabs'])}", file=sys.stderr)
    n_rt = sum(c["roundtrip"] for c in doc["cases"])
    print(f"{args.out}: {len(doc['cases'])} cases ({n_rt} round-trip), "
          f"{len(doc['parse_special_cases'])} parse_special cases, {len(doc['random_cases'])} random, "
          f"{len(doc['random_parse_special_cases'])} random parse_special", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
