#!/usr/bin/env python3
"""llama.cpp's pp/tg throughput on this machine, through llama-cpp-python, for a side-by-side
with `engine bench` in the same run (llama-bench itself is not shipped by the package).

pp N: one llama_eval of N random tokens into an empty cache; tg N: N single-token evals.
Each test runs once to warm up, then REPS times; prints mean and standard deviation in t/s.

    /tmp/llvenv/bin/python benches/llamacpp_bench.py MODEL.gguf [THREADS] [REPS]
"""

import random
import statistics
import sys
import time

from llama_cpp import Llama


def main():
    model = sys.argv[1]
    threads = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    reps = int(sys.argv[3]) if len(sys.argv) > 3 else 5
    llm = Llama(model_path=model, n_ctx=1024, n_batch=512, n_ubatch=512, n_threads=threads,
                n_threads_batch=threads, verbose=False, logits_all=False)
    n_vocab = llm.n_vocab()
    rng = random.Random(1234)

    def pp(n):
        toks = [rng.randrange(n_vocab) for _ in range(n)]
        llm.reset()
        t = time.perf_counter()
        llm.eval(toks)
        return n / (time.perf_counter() - t)

    def tg(n):
        llm.reset()
        tok = rng.randrange(n_vocab)
        t = time.perf_counter()
        for _ in range(n):
            llm.eval([tok])
        return n / (time.perf_counter() - t)

    for name, fn, n in (("pp512", pp, 512), ("tg128", tg, 128)):
        fn(n)
        samples = [fn(n) for _ in range(reps)]
        print(f"llama.cpp {name}: {statistics.mean(samples):.2f} ± {statistics.stdev(samples):.2f} t/s "
              f"({threads} threads, {reps} reps)", flush=True)


if __name__ == "__main__":
    main()
