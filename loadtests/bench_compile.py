"""Eager vs `--compile` (torch.compile of the serving forward), the bundled translator.

    python -m loadtests.bench_compile      # ~2 minutes, most of it compiling

Prints generated tokens/s at batch 1 (128 new tokens) and with 16 rows (64 new tokens each),
two runs per mode after a warm-up, and whether the tokens equal eager's.
"""

from __future__ import annotations

import time

import torch

from model.checkpoint import load_checkpoint
from service.engine import EngineConfig, LLMEngine, SamplingParams

BUNDLED = "model/checkpoints/en-de"


def run(engine_config: EngineConfig, rows: int, new_tokens: int) -> tuple[float, list[list[int]]]:
    model, tokenizer = load_checkpoint(BUNDLED)
    engine = LLMEngine(model, tokenizer, engine_config)
    src = list(range(10, 30)) + [tokenizer.eos_id]
    params = SamplingParams(max_new_tokens=new_tokens, ignore_eos=True)
    ids = [engine.add_request(src[i % 5 :], params).request_id for i in range(rows)]
    start, done = time.perf_counter(), {}
    while engine.has_unfinished:
        done |= {o.request_id: o.token_ids for o in engine.step() if o.finished}
    return rows * new_tokens / (time.perf_counter() - start), [done[i] for i in ids]


def main() -> None:
    torch.set_num_threads(2)
    for rows, new_tokens in ((1, 128), (16, 64)):
        eager = EngineConfig(kv_cache_mb=64)
        _, expected = run(eager, rows, new_tokens)
        eager_rates = [run(eager, rows, new_tokens)[0] for _ in range(2)]
        compiled = EngineConfig(kv_cache_mb=64, compile=True)
        start = time.perf_counter()
        _, tokens = run(compiled, rows, new_tokens)  # compiles
        compile_s = time.perf_counter() - start
        compiled_rates = [run(compiled, rows, new_tokens)[0] for _ in range(2)]
        print(f"{rows} rows: eager {[round(r) for r in eager_rates]} tok/s, compiled "
              f"{[round(r) for r in compiled_rates]} tok/s (first run with compiling {compile_s:.0f} s), "
              f"same tokens: {tokens == expected}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
