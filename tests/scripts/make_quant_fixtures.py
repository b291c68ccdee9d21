#!/usr/bin/env python3
"""Quantization fixtures from an independent oracle: the numpy (de)quantizers of the PyPI `gguf`
package (gguf-py, `gguf/quants.py`). `ggml-kernels/tests/quants_oracle.rs` checks our kernels
against them.

Usage:
    make_quant_fixtures.py [OUT_DIR]      default: tests/fixtures/quants next to this script

Deterministic: a fixed seed, and no dependence on anything but numpy and gguf. Written with gguf
0.19.0 and numpy 2.x.

For every type it writes OUT_DIR/<TYPE>.bin (TYPE as ggml names it, e.g. Q4_K.bin), holding:
    q_in    f32 input rows: Gaussian, Gaussian with outliers, all zeros, tiny values (1e-6 and
            1e-20 scale), all positive, all negative, block scales spread over five decades,
            half-integers (rounding ties), a constant row, llama.cpp's test-quantize-fns data
            (0.1 + 2 cos(i)), one non-zero per 32, and a heavy-tailed row;
    q_out   gguf-py's encoding of q_in, where gguf-py can quantize that type;
    dq_in   random valid encoded rows: random bytes with every f16 scale field overwritten by a
            finite value (zero, subnormal, and magnitudes 1e-4..10 of either sign); for F16 and
            BF16 random bit patterns including infinities and NaNs;
    dq_out  gguf-py's decoding of dq_in, where gguf-py can dequantize that type.

File format (little-endian throughout):
    magic     4 bytes  b"QFX1"
    type id   u32      the GGML type id
    count     u32      number of records
    records:  tag      8 bytes, ASCII, NUL-padded ("q_in", "q_out", "dq_in", "dq_out")
              n_rows   u32
              n_per_row u32  elements per row (for encoded records too)
              n_bytes  u32   length of the data that follows
              data     n_bytes bytes: f32 values, or encoded rows back to back
"""

import os
import struct
import sys

import numpy as np
from gguf import quants
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType as T

SEED = 20240521
N_PER_ROW = 512  # whole blocks for block sizes 32 and 256
N_DQ_ROWS = 8

# Types under test, and the byte offsets of their f16 scale fields within one block.
F16_FIELDS = {
    T.F16: None,
    T.BF16: None,
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q8_1: [0, 2],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
    T.Q8_K: [],  # its scale is an f32 at offset 0, set separately
    T.IQ4_NL: [0],
    T.IQ4_XS: [0],
}


# gguf-py 0.19.0 still sizes Q8_1 as 40 bytes (the old f32 d and s); ggml's block_q8_1 has been
# two f16s and 32 quants, 36 bytes, since ggml switched it to ggml_half2.
BLOCK_BYTES_OVERRIDE = {T.Q8_1: 36}


def block_sizes(qtype: T) -> tuple[int, int]:
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    return block_size, BLOCK_BYTES_OVERRIDE.get(qtype, type_size)


def input_rows(rng: np.random.Generator) -> np.ndarray:
    n = N_PER_ROW
    rows = []
    rows.append(rng.standard_normal(n))
    r = rng.standard_normal(n)
    idx = rng.choice(n, size=n // 64, replace=False)
    r[idx] *= rng.uniform(30, 100, size=idx.size)
    rows.append(r)
    rows.append(np.zeros(n))
    rows.append(rng.standard_normal(n) * 1e-6)
    rows.append(rng.standard_normal(n) * 1e-20)
    rows.append(rng.uniform(0.5, 2.0, n))
    rows.append(-rng.uniform(0.1, 3.0, n))
    rows.append(rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-3, 2, n // 32), 32))
    rows.append(rng.integers(-16, 17, n) / 2.0)
    rows.append(np.full(n, 0.7))
    rows.append(0.1 + 2 * np.cos(np.arange(n, dtype=np.float32)))
    r = np.zeros(n)
    r[np.arange(0, n, 32) + rng.integers(0, 32, n // 32)] = rng.standard_normal(n // 32) * 5
    rows.append(r)
    rows.append(rng.standard_t(2.0, n))
    return np.stack(rows).astype(np.float32)


def f16_scale_values(rng: np.random.Generator, size: int) -> np.ndarray:
    """Finite f16 scales: mostly magnitudes 1e-4..10 of either sign, some zeros and subnormals."""
    v = rng.choice([-1.0, 1.0], size) * 10.0 ** rng.uniform(-4, 1, size)
    kind = rng.integers(0, 20, size)
    v[kind == 0] = 0.0
    v[kind == 1] = rng.integers(1, 1024, (kind == 1).sum()) * 2.0**-24  # subnormal halves
    return v.astype(np.float16)


def random_encoded_rows(rng: np.random.Generator, qtype: T) -> np.ndarray:
    block_size, type_size = block_sizes(qtype)
    n_blocks = N_DQ_ROWS * N_PER_ROW // block_size
    if qtype in (T.F16, T.BF16):
        bits = rng.integers(0, 1 << 16, N_DQ_ROWS * N_PER_ROW, dtype=np.uint32).astype(np.uint16)
        specials = [0x0000, 0x8000, 0x0001, 0x7C00, 0xFC00, 0x7E00, 0x7C01, 0x7F80, 0xFF80, 0x7FC0, 0x7F81]
        bits[: len(specials)] = specials
        return bits.view(np.uint8).reshape(N_DQ_ROWS, -1)
    blocks = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint32).astype(np.uint8)
    for off in F16_FIELDS[qtype]:
        blocks[:, off : off + 2] = f16_scale_values(rng, n_blocks).view(np.uint8).reshape(n_blocks, 2)
    if qtype == T.Q8_K:
        d = (rng.choice([-1.0, 1.0], n_blocks) * 10.0 ** rng.uniform(-6, 0, n_blocks)).astype(np.float32)
        blocks[:, 0:4] = d.view(np.uint8).reshape(n_blocks, 4)
    return blocks.reshape(N_DQ_ROWS, -1)


def oracle_quantize(x: np.ndarray, qtype: T):
    try:
        return quants.quantize(x, qtype)
    except NotImplementedError:
        return None


def oracle_dequantize(data: np.ndarray, qtype: T):
    try:
        return quants.dequantize(data, qtype)
    except NotImplementedError:
        return None


def record(tag: str, n_rows: int, n_per_row: int, data: np.ndarray) -> bytes:
    raw = np.ascontiguousarray(data).tobytes()
    return tag.encode().ljust(8, b"\0") + struct.pack("<III", n_rows, n_per_row, len(raw)) + raw


def main() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "..", "fixtures", "quants")
    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(SEED)
    x = input_rows(rng)
    total = 0
    for qtype in F16_FIELDS:
        recs = [record("q_in", x.shape[0], N_PER_ROW, x)]
        q = oracle_quantize(x, qtype)
        if q is not None:
            recs.append(record("q_out", x.shape[0], N_PER_ROW, q.view(np.uint8)))
        enc = random_encoded_rows(rng, qtype)
        recs.append(record("dq_in", N_DQ_ROWS, N_PER_ROW, enc))
        dq = oracle_dequantize(enc, qtype)
        if dq is not None:
            dq = dq.astype(np.float32, copy=False)
            assert dq.shape == (N_DQ_ROWS, N_PER_ROW), (qtype.name, dq.shape)
            recs.append(record("dq_out", N_DQ_ROWS, N_PER_ROW, dq))
        blob = b"QFX1" + struct.pack("<II", int(qtype), len(recs)) + b"".join(recs)
        with open(os.path.join(out_dir, f"{qtype.name}.bin"), "wb") as f:
            f.write(blob)
        total += len(blob)
        have = ["quantize" if q is not None else "", "dequantize" if dq is not None else ""]
        print(f"{qtype.name:7} {len(blob):7} bytes  oracle: {', '.join(h for h in have if h) or 'none'}")
    print(f"total {total} bytes")


if __name__ == "__main__":
    main()
