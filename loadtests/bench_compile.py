"""Eager vs `--compile` (torch.compile of the serving forward), the bundled translator.

    python -m loadtests.bench_compile      # ~2 minutes, most of it compiling

Prints generated tokens/s at batch 1 (128 new tokens) and with 16 rows (64 new tokens each),
for plain and oneDNN-packed weights, three interleaved runs per mode after a warm-up run that
compiles, and whether the tokens equal eager's. Each mode keeps one engine for all its runs:
a new engine (a new model object) would compile again.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from model.checkpoint import load_checkpoint
from service.engine import EngineConfig, LLMEngine, SamplingParams

BUNDLED = "model/checkpoints/en-de"


def run(engine: LLMEngine, rows: int, new_tokens: int) -> tuple[float, list[list[int]]]:
    src = list(range(10, 30)) + [engine.tokenizer.eos_id]
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    ids = [engine.add_request(src[i % 5 :], params).request_id for i in range(rows)]
    start, done = time.perf_counter(), {}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    return rows * new_tokens / (time.perf_counter() - start), [done[i] for i in ids]


def main() -> None:
    argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args()
    torch.set_num_threads(2)
    model, tokenizer = load_checkpoint(BUNDLED)
    for prepack in (False, True):
        engines = {
            mode: LLMEngine(
                model, tokenizer, EngineConfig(kv_cache_mb=64, prepack_weights=prepack, compile=c)
            )
            for mode, c in (("eager", False), ("compiled", True))
        }
        for rows, new_tokens in ((1, 128), (16, 64)):
            first = {}
            for mode, engine in engines.items():  # the compiled engine compiles here
                start = time.perf_counter()
                first[mode] = (run(engine, rows, new_tokens)[1], time.perf_counter() - start)
            rates: dict[str, list[float]] = {mode: [] for mode in engines}
            for _ in range(3):
                for mode, engine in engines.items():
                    rates[mode].append(run(engine, rows, new_tokens)[0])
            same = first["compiled"][0] == first["eager"][0]
            print(f"prepack={prepack}, {rows} rows: "
                  + ", ".join(f"{m} {round(statistics.median(r))} tok/s {[round(x) for x in r]}"
                              for m, r in rates.items())
                  + f" (first compiled run {first['compiled'][1]:.0f} s), same tokens: {same}",
                  flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
