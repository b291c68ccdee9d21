#!/usr/bin/env python3
"""Tiny random-weight Hugging Face checkpoints, one per architecture `engine convert` reads, with
reference logits and token ids from transformers.

    /tmp/hfvenv/bin/python tests/scripts/make_tiny_hf_checkpoints.py

(a venv with torch, transformers >= 5, tokenizers, sentencepiece, safetensors) writes
tests/fixtures/hf_tiny/<arch>/: what `save_pretrained` writes (config.json, *.safetensors, the
tokenizer files) plus `reference.json`:

    {"ids": [...], "logits": [[...] per position], "n_vocab": N,
     "tokenize": [{"text": ..., "ids": [...]}, ...]}

`ids` is a fixed prompt's token ids (BOS first where the tokenizer adds one); `logits` are
transformers' float32 logits at every position of `ids` (rounded to 6 significant digits);
`tokenize` holds the ids transformers' own tokenizer gives for a few strings, so the test can
check the tokenizer metadata the converter writes.

Each checkpoint exercises a different part of the converter:

- llama:   bf16 weights in two shards (model.safetensors.index.json), untied lm_head, linear RoPE
           scaling (factor 2), a byte-level BPE tokenizer with Llama 3's pre-tokenizer (llama-bpe).
- mistral: f16 weights, sliding window 8 (shorter than the prompt), an SPM-style tokenizer.json
           (BPE with byte fallback, converted from a SentencePiece model; no tokenizer.model).
- qwen2:   f32 weights, Q/K/V biases, tied embeddings, a byte-level BPE tokenizer with Qwen 2's
           pre-tokenizer, config vocab_size larger than the tokenizer (padded vocabulary).
- gemma3:  bf16 weights, 7 layers (5 sliding with window 4, 1 global, 1 sliding), head_dim 32
           != hidden/heads, a SentencePiece tokenizer.model (and tokenizer.json), config
           vocab_size larger than the tokenizer (the converter drops the extra embedding rows).

Weights are drawn with a fixed seed at scales that make the logits far from uniform.
"""

import json
import math
import os
import shutil
import sys
import tempfile

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (AutoModelForCausalLM, AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig,
                          LlamaForCausalLM, MistralConfig, MistralForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "fixtures", "hf_tiny")
CORPUS = os.path.join(HERE, "..", "fixtures", "text", "gpl-3.txt")

PROMPT = "The GNU General Public License is a free, copyleft license for software and other works."
TOKENIZE_TEXTS = [
    "Hello world",
    " leading space and  two spaces",
    "copyleft 2007, 3.14 -- ok?",
    "Zürich ünïcode ☃ and 😀",
    "line one\nline two\n\n\ttab",
]

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def corpus_lines():
    with open(CORPUS, encoding="utf-8") as f:
        lines = [l.rstrip("\n") for l in f]
    return lines[:400] + TOKENIZE_TEXTS


def byte_level_bpe(pattern, specials, bos, eos, vocab_size, ignore_merges):
    """A byte-level BPE tokenizer (GPT-2 style) with a Split pre-tokenizer on `pattern`."""
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(corpus_lines(), trainer)
    tok.add_special_tokens(specials)
    if bos is not None:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bos_id)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)


def train_spm(workdir, add_dummy_prefix, ids):
    """A SentencePiece BPE model with byte fallback; returns the path of its .model file."""
    import sentencepiece as spm
    text = os.path.join(workdir, "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus_lines()) + "\n")
    prefix = os.path.join(workdir, "spm")
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=prefix, vocab_size=420, model_type="bpe", byte_fallback=True,
        character_coverage=1.0, add_dummy_prefix=add_dummy_prefix, remove_extra_whitespaces=False,
        split_digits=True, allow_whitespace_only_pieces=True, normalization_rule_name="identity",
        minloglevel=2, bos_piece="<bos>" if ids.get("bos_id") == 2 else "<s>",
        eos_piece="<eos>" if ids.get("eos_id") == 1 else "</s>", **ids)
    return prefix + ".model"


def spm_tokenizer(workdir, name, add_dummy_prefix, ids, tokenizer_config):
    """A SentencePiece model loaded by transformers (which converts it to a tokenizer.json)."""
    model_file = train_spm(workdir, add_dummy_prefix, ids)
    d = os.path.join(workdir, name)
    os.makedirs(d, exist_ok=True)
    shutil.copy(model_file, os.path.join(d, "tokenizer.model"))
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tokenizer_config, f)
    return AutoTokenizer.from_pretrained(d), model_file


def init_weights(model, gemma_norms):
    """Deterministic weights at useful scales: matrices N(0, 1/fan_in), embeddings N(0, 1),
    norms around 1 (Gemma: its stored offset around 0), biases N(0, 0.1)."""
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[1]))
            elif name.endswith("norm.weight"):
                base = 0.0 if gemma_norms else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def reference(out_dir, ids_prompt, spm_model=None):
    model = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32)
    model.eval()
    tok = AutoTokenizer.from_pretrained(out_dir)
    ids = tok(ids_prompt).input_ids
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    n_vocab = len(tok)
    rows = [[float(f"{v:.6g}") for v in row[:n_vocab].tolist()] for row in logits]
    tokenize = [{"text": t, "ids": tok(t).input_ids} for t in TOKENIZE_TEXTS]
    if spm_model is not None:
        # SentencePiece itself, which llama.cpp's SPM tokenizer follows. transformers' fast
        # tokenizer differs from it on text that starts with a space (it adds no second "▁").
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=spm_model)
        bos = [tok.bos_token_id] if tok("a").input_ids[:1] == [tok.bos_token_id] else []
        for case in tokenize:
            case["spm_ids"] = bos + sp.encode(case["text"])
    doc = {"ids": ids, "n_vocab": n_vocab, "logits": rows, "tokenize": tokenize}
    with open(os.path.join(out_dir, "reference.json"), "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"))
        f.write("\n")
    print(f"{os.path.basename(out_dir)}: {len(ids)} ids, n_vocab {n_vocab}, "
          f"logit range {logits.min():.2f}..{logits.max():.2f}")


def save(model, tok, out_dir, dtype, **kw):
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True, **kw)
    tok.save_pretrained(out_dir)
    for junk in ("generation_config.json",):
        p = os.path.join(out_dir, junk)
        if os.path.exists(p):
            os.remove(p)


def make_llama():
    tok = byte_level_bpe(LLAMA3_PATTERN, ["<|begin_of_text|>", "<|end_of_text|>"], "<|begin_of_text|>",
                         "<|end_of_text|>", 360, ignore_merges=True)
    n = len(tok)
    cfg = LlamaConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rms_norm_eps=1e-5, tie_word_embeddings=False,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 50000.0})
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    init_weights(model, gemma_norms=False)
    out = os.path.join(OUT, "llama")
    save(model, tok, out, torch.bfloat16, max_shard_size="120KB")
    reference(out, PROMPT)


def make_mistral(workdir):
    # transformers converts the SentencePiece model to a tokenizer.json (BPE, byte fallback).
    tok, model_file = spm_tokenizer(workdir, "mistral", True, dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1),
                           {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>",
                            "unk_token": "<unk>", "legacy": False, "add_bos_token": True})
    n = len(tok)
    cfg = MistralConfig(vocab_size=n, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                        rms_norm_eps=1e-5, sliding_window=8, tie_word_embeddings=False,
                        bos_token_id=1, eos_token_id=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(0)
    model = MistralForCausalLM(cfg)
    init_weights(model, gemma_norms=False)
    out = os.path.join(OUT, "mistral")
    save(model, tok, out, torch.float16)
    for f in ("tokenizer.model",):
        p = os.path.join(out, f)
        if os.path.exists(p):
            os.remove(p)
    reference(out, PROMPT, model_file)


def make_qwen2():
    tok = byte_level_bpe(QWEN2_PATTERN, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"], None,
                         "<|endoftext|>", 360, ignore_merges=False)
    n = len(tok)
    cfg = Qwen2Config(vocab_size=n + 5, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      rms_norm_eps=1e-6, tie_word_embeddings=True, eos_token_id=tok.eos_token_id,
                      rope_parameters={"rope_type": "default", "rope_theta": 1000000.0})
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(cfg)
    init_weights(model, gemma_norms=False)
    out = os.path.join(OUT, "qwen2")
    save(model, tok, out, torch.float32)
    reference(out, PROMPT)


def make_gemma3(workdir):
    tok, model_file = spm_tokenizer(workdir, "gemma3", False, dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3),
                                    {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>",
                                     "unk_token": "<unk>", "pad_token": "<pad>", "add_bos_token": True})
    n = len(tok)
    cfg = Gemma3TextConfig(vocab_size=n + 3, hidden_size=64, intermediate_size=96, num_hidden_layers=7,
                           num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32,
                           sliding_window=4, max_position_embeddings=1024, rms_norm_eps=1e-6,
                           bos_token_id=2, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(cfg)
    init_weights(model, gemma_norms=True)
    out = os.path.join(OUT, "gemma3")
    save(model, tok, out, torch.bfloat16)
    shutil.copy(model_file, os.path.join(out, "tokenizer.model"))
    reference(out, PROMPT, model_file)


def main():
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        make_llama()
        make_mistral(work)
        make_qwen2()
        make_gemma3(work)
    for arch in sorted(os.listdir(OUT)):
        d = os.path.join(OUT, arch)
        total = sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))
        print(f"{arch}: {sorted(os.listdir(d))}, {total} bytes")


if __name__ == "__main__":
    sys.exit(main())
