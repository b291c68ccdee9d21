#!/usr/bin/env python3
"""Reference logits for the tiny random-weight presets (Llama, Mistral, Qwen2, Gemma 3) from
Hugging Face transformers (float32).

For each preset the script has `engine synth` write the model (f32, a fixed seed), loads that GGUF
with transformers (which dequantizes it and runs its own `modeling_llama` / `modeling_mistral` /
`modeling_qwen2` / `modeling_gemma3` forward pass, an implementation no one here wrote), and stores
for a few fixed token sequences the logits of every position. The fixture also records the synth
parameters and the SHA-256 of the file and of its tensor data, so that the Rust test
(`tests/llama_family_reference.rs`), which regenerates the model with `engine::synth`, notices when
synth's output changed and asks for this script to be run again.

    python3 -m venv /tmp/hfvenv && /tmp/hfvenv/bin/pip install torch transformers gguf numpy
    /tmp/hfvenv/bin/python tests/scripts/make_llama_reference.py [ENGINE_BINARY]

writes tests/fixtures/llama_family/<preset>.json. Without ENGINE_BINARY the script builds
`engine` with cargo (dev profile) and uses target/debug/engine.

What transformers' GGUF loader does, and what this script adds so that its model is the one
llama.cpp (and our engine) would run from the same file:
- Llama/Mistral: it un-permutes attn_q/attn_k (llama.cpp's converter permutes them for ggml's
  adjacent-pair RoPE); our file's Q/K are random in GGUF layout, so both sides agree by design.
- Gemma 3: it subtracts 1 from every `*norm.weight` (GGUF holds 1 + w). Its config keeps
  transformers' default query_pre_attn_scalar = 256, which GGUF does not carry; llama.cpp scales
  queries by 1/sqrt(head_dim) (`f_attention_scale`) for every size but 27B, so the script sets
  query_pre_attn_scalar = head_dim.
- Mistral: llama.cpp's Mistral files say `general.architecture = llama`; transformers then builds
  a LlamaForCausalLM without the window (it switches to Mistral only when general.name is exactly
  "mistral", and even then drops `attention.sliding_window`). The script rebuilds the model as
  MistralForCausalLM with the file's sliding window and the same weights.
- Qwen2: nothing (no permutation, NeoX RoPE, Q/K/V biases).
Attention runs in the "eager" implementation, in float32.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import transformers
from gguf import GGUFReader
from transformers import AutoModelForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
OUT_DIR = os.path.join(ROOT, "tests", "fixtures", "llama_family")

# preset -> (--arch, seed). The seeds are arbitrary but fixed: the Rust test uses the same.
PRESETS = {
    "llama-tiny": ("llama", 11),
    "mistral-tiny": ("mistral", 12),
    "qwen2-tiny": ("qwen2", 13),
    "gemma3-tiny": ("gemma3", 14),
}
# Token sequences: BOS then random ids. 40 tokens is five times the tiny sliding windows (8).
SEQ_LENS = [12, 40]
ROUND = 6


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    v = f.contents()
    return v


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_tensor_data(reader):
    """SHA-256 over every tensor's bytes, in file order, padding excluded."""
    h = hashlib.sha256()
    for t in reader.tensors:
        h.update(np.ascontiguousarray(t.data).tobytes())
    return h.hexdigest()


def load_reference(path, reader):
    d, name = os.path.split(path)
    model, info = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    arch = field(reader, "general.architecture")
    cfg = model.config
    rebuild = None
    if arch == "gemma3":
        cfg.query_pre_attn_scalar = int(field(reader, "gemma3.attention.key_length"))
        rebuild = type(model)
    window = field(reader, f"{arch}.attention.sliding_window")
    if arch == "llama" and window is not None:
        args = cfg.to_dict()
        for k in ("model_type", "architectures", "transformers_version"):
            args.pop(k, None)
        args["sliding_window"] = int(window)
        cfg = transformers.MistralConfig(**args)
        cfg._attn_implementation = "eager"
        rebuild = transformers.MistralForCausalLM
    if rebuild is not None:
        new = rebuild(cfg)
        new.load_state_dict(model.state_dict(), strict=True)
        model = new
    model.eval()
    return model


def main():
    if len(sys.argv) > 1:
        engine = sys.argv[1]
    else:
        subprocess.run(["cargo", "build", "--quiet", "-p", "engine-cli", "--bin", "engine"], cwd=ROOT, check=True)
        engine = os.path.join(ROOT, "target", "debug", "engine")
    os.makedirs(OUT_DIR, exist_ok=True)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for preset, (arch, seed) in PRESETS.items():
            path = os.path.join(tmp, preset + ".gguf")
            subprocess.run([engine, "synth", "--arch", arch, "--preset", preset, "--type", "f32",
                            "--seed", str(seed), "-o", path, "--quiet"], check=True)
            reader = GGUFReader(path)
            n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
            bos = int(field(reader, "tokenizer.ggml.bos_token_id"))
            model = load_reference(path, reader)
            rng = np.random.default_rng(seed)
            sequences = []
            min_margin = float("inf")
            for n in SEQ_LENS:
                ids = [bos] + rng.integers(0, n_vocab, size=n - 1).tolist()
                with torch.no_grad():
                    logits = model(torch.tensor([ids])).logits[0].float()
                top2 = torch.topk(logits, 2, dim=-1).values
                min_margin = min(min_margin, float((top2[:, 0] - top2[:, 1]).min()))
                sequences.append({
                    "ids": ids,
                    "logits": [[round(float(v), ROUND) for v in row] for row in logits],
                })
            doc = {
                "meta": {
                    "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                                 "float32, eager attention",
                    "model_class": type(model).__name__,
                    "script": "tests/scripts/make_llama_reference.py",
                },
                "synth": {"preset": preset, "arch": arch, "type": "f32", "seed": seed},
                "file_sha256": sha256_file(path),
                "tensor_data_sha256": sha256_tensor_data(reader),
                "n_vocab": n_vocab,
                "min_top2_margin": round(min_margin, ROUND),
                "sequences": sequences,
            }
            out = os.path.join(OUT_DIR, preset + ".json")
            with open(out, "w") as f:
                json.dump(doc, f, separators=(",", ":"))
                f.write("\n")
            print(f"{preset}: {type(model).__name__}, n_vocab {n_vocab}, "
                  f"smallest top-2 margin {min_margin:.4f}, wrote {os.path.relpath(out, ROOT)} "
                  f"({os.path.getsize(out)} bytes)", flush=True)


if __name__ == "__main__":
    main()
