"""llama.cpp's intermediate tensors for one evaluation of the default model, for the op-by-op
check of our llama.cpp numerics (tests/llamacpp_numerics.rs, `ops_match_a_llama_cpp_dump` and
`logits_match_a_llama_cpp_dump`, ignored: measuring tools).

    /tmp/llvenv/bin/python tests/scripts/dump_llamacpp_tensors.py OUTDIR TOKENS_JSON [PRE_JSON [MODEL]]

Evaluates PRE as one batch (when given), then TOKENS as one batch, and writes every f32 tensor of
the second evaluation that llama.cpp's graph callback (`cb_eval`) reports to OUTDIR/NAME.f32
(NAME#k for the k-th repeat of a name), the graph (names, ops, shapes, sources) to
OUTDIR/graph.json, and TOKENS' logit rows to OUTDIR/logits.f32. DUMP_ONLY=REGEX keeps only the
tensors whose names match.
"""
import ctypes, json, sys, os
import numpy as np
import llama_cpp
from llama_cpp import llama_cpp as C

class T(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int32), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4),
                ("op", ctypes.c_int32), ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
                ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p), ("view_offs", ctypes.c_size_t),
                ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]

out = sys.argv[1]; toks = json.loads(sys.argv[2]); pre = json.loads(sys.argv[3]) if len(sys.argv) > 3 else []
os.makedirs(out, exist_ok=True)
import re
ONLY = re.compile(os.environ["DUMP_ONLY"]) if os.environ.get("DUMP_ONLY") is not None else None
rec = {"on": False, "list": [], "seen": {}}
def name_of(p):
    return T.from_address(p).name.decode() if p else None
@C.ggml_backend_sched_eval_callback
def cb(t, ask, ud):
    if ask: return True
    if not rec["on"]: return True
    x = T.from_address(t)
    if ONLY is not None and not ONLY.search(x.name.decode()): return True
    nm = x.name.decode(); ne = list(x.ne); nb = list(x.nb)
    srcs = [name_of(s) for s in x.src if s]
    entry = {"name": nm, "op": x.op, "type": x.type, "ne": ne, "src": srcs}
    if x.type == 0 and x.data:
        # gather with strides
        base = x.data
        arr = np.zeros((ne[3], ne[2], ne[1], ne[0]), np.float32)
        for i3 in range(ne[3]):
            for i2 in range(ne[2]):
                for i1 in range(ne[1]):
                    off = base + i1*nb[1] + i2*nb[2] + i3*nb[3]
                    if nb[0] == 4:
                        arr[i3, i2, i1] = np.ctypeslib.as_array((ctypes.c_float * ne[0]).from_address(off))
                    else:
                        arr[i3, i2, i1] = [ctypes.c_float.from_address(off + i0*nb[0]).value for i0 in range(ne[0])]
        k = rec["seen"].get(nm, 0); rec["seen"][nm] = k + 1
        fn = f"{nm}" + (f"#{k}" if k else "")
        arr.tofile(os.path.join(out, fn + ".f32")); entry["file"] = fn
    rec["list"].append(entry)
    return True

from llama_cpp import Llama
model = sys.argv[4] if len(sys.argv) > 4 else os.path.expanduser("~/.cache/engine/models/gemma-3-270m-q4_k_m.gguf")
llm = Llama(model_path=model, n_ctx=1024, n_batch=1024, n_ubatch=1024, logits_all=True, verbose=False, n_threads=2)
llm.context_params.cb_eval = cb
# rebuild the context with the callback
from llama_cpp._internals import LlamaContext
llm._ctx = LlamaContext(model=llm._model, params=llm.context_params, verbose=False)
llm._batch = llama_cpp._internals.LlamaBatch(n_tokens=1024, embd=0, n_seq_max=1, verbose=False)
llm.reset()
if pre: llm.eval(pre)
rec["on"] = True
llm.eval(toks)
rec["on"] = False
n0 = len(pre)
np.asarray(llm.scores[n0:n0+len(toks)], np.float32).tofile(os.path.join(out, "logits.f32"))
json.dump(rec["list"], open(os.path.join(out, "graph.json"), "w"))
print(len(rec["list"]), "tensors")
