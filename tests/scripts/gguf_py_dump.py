#!/usr/bin/env python3
"""Canonical JSON dump of a GGUF file, as read by the PyPI `gguf` package (gguf-py, llama.cpp's own
Python reader). `tests/gguf_oracles.rs` compares it with the same dump computed from our reader.

Usage:
    gguf_py_dump.py FILE          dump FILE
    gguf_py_dump.py --type-table  dump gguf.constants.GGML_QUANT_SIZES

The dump, one JSON object:
    version, alignment, data_offset (absolute),
    fields:  [{key, type, value}] in file order, without gguf-py's GGUF.* pseudo-fields;
             type is the GGUFValueType name (UINT8 .. FLOAT64, BOOL, STRING, ARRAY);
             scalars: integers as JSON integers, bools as JSON booleans, strings as JSON strings,
             FLOAT32 / FLOAT64 as their bit patterns in lower-case hex ("0x3fc00000"), so that
             no float formatting stands between the two readers and NaN payloads survive;
             arrays: {"elem": TYPE, "items": [...]}, recursively for arrays of arrays.
    tensors: [{name, type, shape (ggml order), n_bytes, offset (relative to the data section),
              sha256 (hex of the raw bytes)}] in file order.

Values are rebuilt from the parts gguf-py parsed (ReaderField.parts), not from the file bytes, so
the dump is gguf-py's reading of the file. ReaderField.contents() flattens arrays of arrays, which
is why the parts are walked here instead.
"""

import hashlib
import json
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

# gguf-py puts these three pseudo-fields first; they are not metadata keys.
PSEUDO_FIELDS = 3


def scalar(t, part):
    """One scalar from its numpy part (an array of one element)."""
    if t == GGUFValueType.FLOAT32:
        return "0x%08x" % int(part.view(np.uint32)[0])
    if t == GGUFValueType.FLOAT64:
        return "0x%016x" % int(part.view(np.uint64)[0])
    if t == GGUFValueType.BOOL:
        return bool(part[0])
    return int(part[0])


def walk(t, parts, i):
    """Decodes one value of type t from parts[i:]; returns (value, next index)."""
    if t == GGUFValueType.STRING:
        # parts: length, bytes
        return bytes(parts[i + 1]).decode("utf-8"), i + 2
    if t == GGUFValueType.ARRAY:
        # parts: element type, count, then each element's parts
        elem = GGUFValueType(int(parts[i][0]))
        count = int(parts[i + 1][0])
        i += 2
        items = []
        for _ in range(count):
            v, i = walk(elem, parts, i)
            items.append(v)
        return {"elem": elem.name, "items": items}, i
    return scalar(t, parts[i]), i + 1


def dump(path):
    r = GGUFReader(path)
    fields = []
    for field in list(r.fields.values())[PSEUDO_FIELDS:]:
        # parts: key length, key bytes, value type, then the value's parts
        t = GGUFValueType(int(field.parts[2][0]))
        assert field.types[0] == t, (field.name, field.types, t)
        value, end = walk(t, field.parts, 3)
        assert end == len(field.parts), (field.name, end, len(field.parts))
        fields.append({"key": field.name, "type": t.name, "value": value})
    tensors = []
    for t in r.tensors:
        raw = t.data.tobytes()
        assert len(raw) == t.n_bytes, (t.name, len(raw), t.n_bytes)
        tensors.append({
            "name": t.name,
            "type": GGMLQuantizationType(t.tensor_type).name,
            "shape": [int(d) for d in t.shape],
            "n_bytes": int(t.n_bytes),
            "offset": int(t.data_offset) - int(r.data_offset),
            "sha256": hashlib.sha256(raw).hexdigest(),
        })
    version = int(r.fields["GGUF.version"].parts[0][0])
    return {
        "version": version,
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "fields": fields,
        "tensors": tensors,
    }


def type_table():
    return [
        {"name": t.name, "id": int(t), "block_size": int(b), "type_size": int(s)}
        for t, (b, s) in GGML_QUANT_SIZES.items()
    ]


def main(argv):
    if len(argv) != 2:
        sys.stderr.write(__doc__)
        return 2
    out = type_table() if argv[1] == "--type-table" else dump(argv[1])
    # UTF-8 whatever the locale says.
    sys.stdout.buffer.write(json.dumps(out, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
