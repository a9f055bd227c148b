"""Offline engine benchmark: KV cache vs recompute, continuous vs static batching, greedy and beam,
and the peers (Hugging Face generate() and CTranslate2) on the same weights.

    python -m loadtests.bench_engine [--quick] [--json PATH] [--threads 2] [--no-peers]
                                     [--no-prepack | --quantize int8]

Same weights and the same requests for every mode, in one run; prints a table of generated
tokens per second and the ratios `cache_vs_nocache_b1` (128 new tokens, or 32 with --quick)
and `continuous_vs_static` (greedy, the bundled model). The peers get our weights through
`model.convert` (to-hf, to-ct2), batches of --max-running requests, fp32, the same threads.
With --quantize int8 our Linear layers are int8 on both sides of the cache comparison, and
CTranslate2 runs with its int8_float32 compute type on 1 thread (its best setting here); HF
generate() stays fp32.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from model.checkpoint import load_checkpoint, save_checkpoint
from model.config import TransformerConfig
from model.cpu_kernels import prepacked, quantized
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
    """Batch 1 without a cache: every step re-runs the decoder over the whole prefix (and
    projects only the last position onto the vocabulary, as a lean recompute loop would)."""
    config = model.config
    memory = model.encode(torch.tensor([src]))
    tokens = [config.decoder_start_token_id]
    start = time.perf_counter()
    for _ in range(num_new):
        logits = model.decode(torch.tensor([tokens]), memory, last_only=True)
        tokens.append(int(logits[0, -1].argmax()))
    return num_new / (time.perf_counter() - start)


# The Linear layers measured: "packed" (oneDNN-packed fp32, the server's default), "plain"
# (F.linear) or "int8" (--quantize int8). The no-cache loop runs on the same kernels.
KERNELS = {"plain": lambda m: m, "packed": prepacked, "int8": quantized}


def engine_run(
    model: Transformer,
    tokenizer: Tokenizer,
    requests: list[tuple[list[int], SamplingParams]],
    static: bool,
    max_running: int,
    weights: str,
    keep_outputs: bool = False,
) -> dict:
    scheduler = SchedulerConfig(
        max_running_requests=max_running, max_waiting_requests=10**6, static_batching=static
    )
    config = EngineConfig(
        kv_cache_mb=1024,
        scheduler=scheduler,
        prepack_weights=weights == "packed",
        quantize="int8" if weights == "int8" else None,
    )
    engine = LLMEngine(model, tokenizer, config)
    start = time.perf_counter()
    request_ids = [engine.add_request(ids, params).request_id for ids, params in requests]
    steps, outputs = 0, []
    while engine.has_unfinished:
        outputs += [o for o in engine.step() if o.finished]
        steps += 1
    seconds = time.perf_counter() - start
    num_tokens = sum(len(o.token_ids) for o in outputs)
    latencies = [o.timings_ms["total_ms"] for o in outputs]
    result = {
        "tokens": num_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(num_tokens / seconds, 1),
        "steps": steps,
        "median_latency_ms": round(statistics.median(latencies), 1),
    }
    if keep_outputs:  # in request order
        by_id = {o.request_id: o.token_ids for o in outputs}
        result["outputs"] = [by_id[i] for i in request_ids]
    return result


def cache_rows(model, tokenizer, lengths: list[int], repeats: int, weights: str) -> dict:
    src = list(range(10, 30))
    nocache_model = KERNELS[weights](model)  # the same kernels on both sides
    rows = {}
    for n in lengths:
        params = SamplingParams(max_new_tokens=n, ignore_eos=True)
        cached, uncached = [], []
        for _ in range(repeats):  # interleaved, medians
            uncached.append(nocache_tokens_per_s(nocache_model, src, n))
            cached.append(
                engine_run(model, tokenizer, [(src, params)], False, 1, weights)["tokens_per_s"]
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


# -- the peers on the same weights: Hugging Face generate() and CTranslate2 --------------------


def export_peers(checkpoint: Path, out: Path, weights: str) -> tuple:
    """Our checkpoint as a transformers model and a CTranslate2 translator (model.convert)."""
    import transformers
    from transformers import AutoModelForSeq2SeqLM

    from model.convert import to_ctranslate2, to_hf

    transformers.logging.set_verbosity_error()  # the computed sinusoid tables are "missing"
    to_hf(checkpoint, out / "hf")
    to_ctranslate2(checkpoint, out / "ct2")
    hf = AutoModelForSeq2SeqLM.from_pretrained(out / "hf").eval()
    if weights == "int8":  # its best setting here: with 2 threads its int8 ran 5-20x slower
        return hf, CT2Process(out / "ct2", 1, "int8_float32")
    return hf, CT2Process(out / "ct2", torch.get_num_threads(), "float32")


_translator = None  # the CTranslate2 model, in the CT2Process worker


def _ct2_load(model_dir: str, threads: int, compute_type: str) -> None:
    import ctranslate2

    global _translator
    _translator = ctranslate2.Translator(
        model_dir, device="cpu", compute_type=compute_type, inter_threads=1, intra_threads=threads
    )


def _ct2_translate(tokens: list[list[str]], options: dict) -> list[list[str]]:
    assert _translator is not None
    return [r.hypotheses[0] for r in _translator.translate_batch(tokens, **options)]


class CT2Process:
    """CTranslate2 in a process of its own: once it has run in ours, its OpenMP runtime left
    PyTorch at about half speed for the rest of the process (measured: 313-345 → 142-197 tok/s
    at batch 1), which would make every later figure unfair."""

    def __init__(self, model_dir: Path, threads: int, compute_type: str):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        self.pool = ProcessPoolExecutor(
            1,
            multiprocessing.get_context("spawn"),
            _ct2_load,
            (str(model_dir), threads, compute_type),
        )
        self.translate([["<unk>"]])  # load the model before anything is timed

    def translate(self, tokens: list[list[str]], **options) -> list[list[str]]:
        return self.pool.submit(_ct2_translate, tokens, options).result()


def id_tokenizer(config: TransformerConfig) -> Tokenizer:
    """A vocabulary of `config.vocab_size` placeholder tokens, for a random model's peers."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    names = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {t: i for i, t in enumerate(names + [f"t{i}" for i in range(4, config.vocab_size)])}
    return Tokenizer(HFTokenizer(models.WordLevel(vocab, unk_token="<unk>")))


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


def peer_run(
    kind: str, peer, tokenizer: Tokenizer, requests, batch_size: int, min_new: int = 0
) -> dict:
    """Static batches of `batch_size` in request order (these libraries batch per call).

    Every request arrives at the start, so its latency is the time until its batch is done.
    Tokens are counted as the engine counts them: up to and including EOS.
    """
    from model.decoding import pad_batch

    eos = tokenizer.eos_id
    start = time.perf_counter()
    outputs, latencies = [], []
    for i in range(0, len(requests), batch_size):
        chunk = requests[i : i + batch_size]
        beam, max_new = chunk[0][1].beam_size, max(p.max_new_tokens for _, p in chunk)
        if kind == "hf":
            src, valid = pad_batch([ids for ids, _ in chunk], tokenizer.pad_id)
            with torch.inference_mode():
                generated = peer.generate(
                    input_ids=src, attention_mask=valid.long(), num_beams=beam, do_sample=False,
                    max_new_tokens=max_new, min_new_tokens=min_new, forced_eos_token_id=None,
                )  # fmt: skip
            outputs += [_until_eos(row[1:], eos) for row in generated.tolist()]
        else:
            results = peer.translate(
                [[tokenizer.hf.id_to_token(t) for t in ids] for ids, _ in chunk],
                beam_size=beam, max_decoding_length=max_new, min_decoding_length=min_new,
                max_batch_size=batch_size,
            )  # fmt: skip
            for hypothesis in results:  # CTranslate2 drops the EOS it ended with
                ids = [tokenizer.hf.token_to_id(t) for t in hypothesis]
                outputs.append(ids + [eos] if len(ids) < max_new else ids)
        latencies += [time.perf_counter() - start] * len(chunk)
    seconds = time.perf_counter() - start
    num_tokens = sum(len(o) for o in outputs)
    return {
        "tokens": num_tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(num_tokens / seconds, 1),
        "median_latency_ms": round(1000 * statistics.median(latencies), 1),
        "outputs": outputs,
    }


def peer_rows(model: Transformer, checkpoint: Path, tokenizer: Tokenizer, num_requests: int,
              max_running: int, weights: str, tmp: Path) -> dict:  # fmt: skip
    """The bundled model: engine (continuous) vs HF generate() vs CTranslate2, same requests."""
    hf, ct2 = export_peers(checkpoint, tmp, weights)
    rows: dict = {}
    for beam in (1, 4):
        label = "greedy" if beam == 1 else f"beam{beam}"
        requests = corpus_requests(num_requests, beam, tokenizer)
        ours = engine_run(
            model, tokenizer, requests, False, max_running, weights, keep_outputs=True
        )
        row = {"attnserve": ours}
        for kind, peer in (("hf", hf), ("ctranslate2", ct2)):
            result = peer_run(kind, peer, tokenizer, requests, max_running)
            same = sum(a == b for a, b in zip(result.pop("outputs"), ours["outputs"], strict=True))
            result["same_tokens_as_attnserve"] = f"{same}/{len(requests)}"
            row[kind] = result
        ours.pop("outputs")
        rows[label] = row
        for kind, result in row.items():
            print(f"{label:6} {kind:12} {result['tokens_per_s']:8.1f} tok/s, median latency "
                  f"{result['median_latency_ms']} ms {result.get('same_tokens_as_attnserve', '')}",
                  flush=True)  # fmt: skip
    return rows


def peer_b1_row(model: Transformer, checkpoint: Path, tokenizer: Tokenizer, n: int, weights: str,
                tmp: Path, repeats: int) -> dict:  # fmt: skip
    """Batch 1, exactly `n` new tokens (EOS ignored): the latency of one request, three ways."""
    hf, ct2 = export_peers(checkpoint, tmp, weights)
    src = list(range(10, 30)) + [tokenizer.eos_id]
    params = SamplingParams(max_new_tokens=n, ignore_eos=True)
    runs: dict[str, list[float]] = {"attnserve": [], "hf": [], "ctranslate2": []}
    for _ in range(repeats):  # interleaved, medians
        runs["attnserve"].append(
            engine_run(model, tokenizer, [(src, params)], False, 1, weights)["tokens_per_s"]
        )
        for kind, peer in (("hf", hf), ("ctranslate2", ct2)):
            runs[kind].append(
                peer_run(kind, peer, tokenizer, [(src, params)], 1, n)["tokens_per_s"]
            )
    row = {kind: round(statistics.median(values), 1) for kind, values in runs.items()}
    print(f"b1, {n} new tokens: " + ", ".join(f"{k} {v} tok/s" for k, v in row.items()), flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument(
        "--quick",
        action="store_true",
        help="a reduced run (64 requests, 32 new tokens): under a minute",
    )
    p.add_argument("--json", type=Path, help="write every figure here")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-running", type=int, default=32, help="the batch budget of both modes")
    kernels = p.add_mutually_exclusive_group()
    kernels.add_argument("--no-prepack", action="store_true", help="plain F.linear weights")
    kernels.add_argument(
        "--quantize", choices=["int8"], help="int8 Linear layers (CTranslate2: int8_float32)"
    )
    p.add_argument("--no-peers", action="store_true", help="skip HF generate() and CTranslate2")
    args = p.parse_args()
    weights = "int8" if args.quantize else "plain" if args.no_prepack else "packed"
    torch.set_num_threads(args.threads)
    num_requests = 64 if args.quick else 256
    lengths = [32] if args.quick else [32, 64, 128]
    repeats = 1 if args.quick else 3

    bundled, tokenizer = load_checkpoint(BUNDLED)
    models = (
        {"bundled": bundled} if args.quick else {"bundled": bundled, "base": base_model(tokenizer)}
    )
    report: dict = {
        "weights": weights,
        "threads": args.threads,
        "num_requests": num_requests,
        "models": {},
    }
    for name, model in models.items():
        print(f"== {name}: {model.num_parameters() / 1e6:.1f}M parameters", flush=True)
        figures: dict = {
            "cache_vs_nocache": cache_rows(model, tokenizer, lengths, repeats, weights)
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
                            model, tokenizer, requests, mode == "static", args.max_running, weights
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
        if not args.no_peers:
            with tempfile.TemporaryDirectory() as tmp:
                checkpoint, peer_tokenizer = BUNDLED, tokenizer
                if name != "bundled":  # the peers need a vocabulary as large as the model's
                    checkpoint, peer_tokenizer = Path(tmp) / "ours", id_tokenizer(model.config)
                    save_checkpoint(model, peer_tokenizer, checkpoint)
                figures["peers_b1"] = peer_b1_row(
                    model, checkpoint, peer_tokenizer, max(lengths), weights, Path(tmp), repeats
                )
                if name == "bundled":
                    figures["peers"] = peer_rows(
                        model,
                        checkpoint,
                        tokenizer,
                        num_requests,
                        args.max_running,
                        weights,
                        Path(tmp),
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
