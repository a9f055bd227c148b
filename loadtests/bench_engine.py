"""Offline engine benchmark: KV cache vs recompute, continuous vs static batching, greedy and beam.

    python -m loadtests.bench_engine [--quick] [--json PATH] [--threads 2]

Same weights and the same requests for every mode, in one run; prints a table of generated
tokens per second and the ratios `cache_vs_nocache_b1` (128 new tokens, or 32 with --quick)
and `continuous_vs_static` (greedy, the bundled model).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint
from model.config import TransformerConfig
from model.cpu_kernels import prepacked
from model.tokenizer import Tokenizer
from model.transformer import Transformer
from service.engine import EngineConfig, LLMEngine, SamplingParams, SchedulerConfig

BUNDLED = Path(__file__).resolve().parents[1] / "model" / "checkpoints" / "en-de"


def base_model(tokenizer: Tokenizer) -> Transformer:
    """A Transformer-base-sized random model (d_model 512, 6+6 layers, vocab 16k)."""
    torch.manual_seed(0)
    config = TransformerConfig(
        vocab_size=16000, d_model=512, num_heads=8, num_encoder_layers=6, num_decoder_layers=6,
        d_ff=2048, max_positions=512, norm_first=True,
    )  # fmt: skip
    return Transformer(config).eval()


@torch.inference_mode()
def nocache_tokens_per_s(model: Transformer, src: list[int], num_new: int) -> float:
    """Batch 1 without a cache: every step re-runs the decoder over the whole prefix."""
    config = model.config
    memory = model.encode(torch.tensor([src]))
    tokens = [config.decoder_start_token_id]
    start = time.perf_counter()
    for _ in range(num_new):
        logits = model.decode(torch.tensor([tokens]), memory)
        tokens.append(int(logits[0, -1].argmax()))
    return num_new / (time.perf_counter() - start)


def engine_run(
    model: Transformer,
    tokenizer: Tokenizer,
    requests: list[tuple[list[int], SamplingParams]],
    static: bool,
    max_running: int,
    prepack: bool,
) -> dict:
    scheduler = SchedulerConfig(
        max_running_requests=max_running, max_waiting_requests=10**6, static_batching=static
    )
    config = EngineConfig(kv_cache_mb=1024, scheduler=scheduler, prepack_weights=prepack)
    engine = LLMEngine(model, tokenizer, config)
    start = time.perf_counter()
    for ids, params in requests:
        engine.add_request(ids, params)
    steps, outputs = 0, []
    while engine.has_unfinished:
        outputs += [o for o in engine.step() if o.finished]
        steps += 1
    seconds = time.perf_counter() - start
    num_tokens = sum(len(o.token_ids) for o in outputs)
    latencies = [o.timings_ms["total_ms"] for o in outputs]
    return {
        "tokens": num_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(num_tokens / seconds, 1),
        "steps": steps,
        "median_latency_ms": round(statistics.median(latencies), 1),
    }


def cache_rows(model, tokenizer, lengths: list[int], repeats: int, prepack: bool) -> dict:
    src = list(range(10, 30))
    nocache_model = prepacked(model) if prepack else model  # the same kernels on both sides
    rows = {}
    for n in lengths:
        params = SamplingParams(max_new_tokens=n, ignore_eos=True)
        cached, uncached = [], []
        for _ in range(repeats):  # interleaved, medians
            uncached.append(nocache_tokens_per_s(nocache_model, src, n))
            cached.append(
                engine_run(model, tokenizer, [(src, params)], False, 1, prepack)["tokens_per_s"]
            )
        rows[n] = {
            "nocache_tokens_per_s": round(statistics.median(uncached), 1),
            "cache_tokens_per_s": round(statistics.median(cached), 1),
        }
        rows[n]["ratio"] = round(rows[n]["cache_tokens_per_s"] / rows[n]["nocache_tokens_per_s"], 2)
    return rows


def mixed_requests(
    tokenizer: Tokenizer, vocab: int, n: int, beam: int, natural_eos: bool, seed: int = 0
) -> list[tuple[list[int], SamplingParams]]:
    """Sources of 4–60 tokens; random-weight models never say EOS, so their lengths vary by
    max_new_tokens (8–96) instead."""
    rng = random.Random(seed)
    requests = []
    for _ in range(n):
        src = [rng.randrange(4, vocab) for _ in range(rng.randrange(4, 60))] + [2]
        max_new = 96 if natural_eos else rng.randrange(8, 97)
        params = SamplingParams(max_new_tokens=max_new, beam_size=beam, ignore_eos=not natural_eos)
        requests.append((src, params))
    return requests


def corpus_requests(n: int, beam: int, tokenizer: Tokenizer, seed: int = 0):
    """Real English sentences for the bundled translator (its test split when built)."""
    path = Path("data/corpus/test.tsv")
    if path.exists():
        lines = [ln.split("\t")[0] for ln in path.read_text().splitlines()[1:] if ln]
    else:
        lines = ["Open the file", "Save the document as PDF", "The printer is not ready."]
    rng = random.Random(seed)
    texts = [rng.choice(lines) for _ in range(n)]
    params = SamplingParams(max_new_tokens=96, beam_size=beam)
    return [(tokenizer.encode(t) + [tokenizer.eos_id], params) for t in texts]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a reduced run of about a minute")
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-running", type=int, default=32, help="the batch budget of both modes")
    p.add_argument("--no-prepack", action="store_true", help="plain F.linear weights")
    args = p.parse_args()
    prepack = not args.no_prepack
    torch.set_num_threads(args.threads)
    num_requests = 64 if args.quick else 256
    lengths = [32] if args.quick else [32, 64, 128]
    repeats = 1 if args.quick else 3

    bundled, tokenizer = load_checkpoint(BUNDLED)
    models = (
        {"bundled": bundled} if args.quick else {"bundled": bundled, "base": base_model(tokenizer)}
    )
    report: dict = {
        "prepack_weights": prepack,
        "threads": args.threads,
        "num_requests": num_requests,
        "models": {},
    }
    for name, model in models.items():
        print(f"== {name}: {model.num_parameters() / 1e6:.1f}M parameters", flush=True)
        figures: dict = {
            "cache_vs_nocache": cache_rows(model, tokenizer, lengths, repeats, prepack)
        }
        for n, row in figures["cache_vs_nocache"].items():
            print(f"b1, {n} new tokens: no cache {row['nocache_tokens_per_s']} tok/s, "
                  f"cache {row['cache_tokens_per_s']} tok/s, ×{row['ratio']}", flush=True)  # fmt: skip
        for beam in (1, 4):
            if name == "bundled":
                requests = corpus_requests(num_requests, beam, tokenizer)
            else:
                vocab = model.config.vocab_size
                requests = mixed_requests(tokenizer, vocab, num_requests, beam, natural_eos=False)
            label = "greedy" if beam == 1 else f"beam{beam}"
            runs: dict[str, list[dict]] = {"static": [], "continuous": []}
            for _ in range(repeats if name == "bundled" else 1):  # interleaved; medians
                for mode in runs:
                    runs[mode].append(
                        engine_run(
                            model, tokenizer, requests, mode == "static", args.max_running, prepack
                        )
                    )
            for mode, results in runs.items():
                result = sorted(results, key=lambda r: r["tokens_per_s"])[len(results) // 2]
                result["runs_tokens_per_s"] = [r["tokens_per_s"] for r in results]
                figures[f"{label}_{mode}"] = result
                print(f"{label:6} {mode:10} {result['tokens_per_s']:8.1f} tok/s "
                      f"(median of {result['runs_tokens_per_s']}; {result['tokens']} tokens, "
                      f"{result['steps']} steps, median latency {result['median_latency_ms']} ms)",
                      flush=True)  # fmt: skip
            figures[f"{label}_continuous_vs_static"] = round(
                figures[f"{label}_continuous"]["tokens_per_s"]
                / figures[f"{label}_static"]["tokens_per_s"],
                2,
            )
        report["models"][name] = figures
    bundled_figures = report["models"]["bundled"]
    report["continuous_vs_static"] = bundled_figures["greedy_continuous_vs_static"]
    longest = max(lengths)
    source = report["models"].get("base", bundled_figures)
    report["cache_vs_nocache_b1"] = source["cache_vs_nocache"][longest]["ratio"]
    print(f"continuous_vs_static {report['continuous_vs_static']}  "
          f"cache_vs_nocache_b1 ({longest} tokens) {report['cache_vs_nocache_b1']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
