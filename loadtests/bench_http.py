"""HTTP benchmark of the server's /v1/translate: one sentence at a time (latency, the client's
beside the server's own timings), then many clients at once (throughput).

    python -m loadtests.bench_http [--url URL] [--json PATH] [-- server flags]

Without --url it starts `python -m service` on a free loopback port (the bundled models, plus any
server flags given after `--`), and stops it at the end. The sentences are the bundled
translator's test split (data/corpus/test.tsv) when it is built, else a few fixed ones. The
client runs on the same machine as the server: on a small one it takes CPU from it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

FALLBACK = ["Open the file", "Save the document as PDF", "The printer is not ready."]


def sentences(n: int, seed: int) -> list[str]:
    path = Path("data/corpus/test.tsv")
    lines = FALLBACK
    if path.exists():
        lines = [ln.split("\t")[0] for ln in path.read_text().splitlines()[1:] if ln]
    rng = random.Random(seed)
    return [rng.choice(lines) for _ in range(n)]


def median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 1)


def p90_ms(seconds: list[float]) -> float:
    return round(statistics.quantiles(seconds, n=10)[-1] * 1000, 1)


def request(model: str | None, text: str, beam: int) -> dict:
    return {"text": text, "beam_size": beam} | ({"model": model} if model else {})


def one_at_a_time(url: str, model: str | None, texts: list[str], beam: int) -> dict:
    """Each sentence alone: the client's latency and the server's timings of the same requests."""
    walls, timings = [], []
    with httpx.Client(base_url=url, timeout=120) as client:
        for text in texts[:3]:  # warm
            client.post("/v1/translate", json=request(model, text, beam))
        for text in texts:
            start = time.perf_counter()
            r = client.post("/v1/translate", json=request(model, text, beam))
            walls.append(time.perf_counter() - start)
            r.raise_for_status()
            timings.append(r.json()["timings"] | {"tokens": r.json()["usage"]["output_tokens"]})
    row = {"latency_ms": median_ms(walls), "p90_ms": p90_ms(walls)}
    for key in ("queue_ms", "prefill_ms", "decode_ms", "total_ms", "tokens"):
        row[f"server_{key}"] = round(statistics.median(t[key] for t in timings), 1)
    return row


async def at_once(url: str, model: str | None, texts: list[str], clients: int) -> dict:
    """`clients` clients, each sending its next sentence (greedy) as soon as the last is back."""
    walls, tokens = [], 0
    todo = list(texts)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal tokens
        while todo:
            text = todo.pop()
            start = time.perf_counter()
            r = await client.post("/v1/translate", json=request(model, text, 1))
            walls.append(time.perf_counter() - start)
            r.raise_for_status()
            tokens += r.json()["usage"]["output_tokens"]

    limits = httpx.Limits(max_connections=clients)
    before = engine_steps(url)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(clients)))
        seconds = time.perf_counter() - start
    steps = {name: value - before[name] for name, value in engine_steps(url).items()}
    num_steps = max(1.0, steps["attnserve_step_duration_seconds_count"])
    return {
        "clients": clients,
        "requests": len(texts),
        "tokens_per_s": round(tokens / seconds, 1),
        "requests_per_s": round(len(texts) / seconds, 1),
        "latency_ms": median_ms(walls),
        "p90_ms": p90_ms(walls),
        # the server's own view of the same time: how many steps, how full, how long each
        "engine_steps": int(steps["attnserve_step_duration_seconds_count"]),
        "mean_step_rows": round(steps["attnserve_batch_size_sum"] / num_steps, 1),
        "mean_step_ms": round(1000 * steps["attnserve_step_duration_seconds_sum"] / num_steps, 2),
    }


def engine_steps(url: str) -> dict[str, float]:
    """The server's step counters (/metrics), summed over its models."""
    wanted = {
        "attnserve_step_duration_seconds_count", "attnserve_step_duration_seconds_sum",
        "attnserve_batch_size_sum",
    }  # fmt: skip
    totals = dict.fromkeys(wanted, 0.0)
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics").text):
        for sample in family.samples:
            if sample.name in wanted:
                totals[sample.name] += sample.value
    return totals


def run(url: str, model: str | None, num_sequential: int, num_concurrent: int, clients: int):
    report = {"one_at_a_time": {}}
    texts = sentences(num_sequential, seed=0)
    for beam in (1, 4):
        report["one_at_a_time"][f"beam{beam}"] = one_at_a_time(url, model, texts, beam)
    report["at_once"] = asyncio.run(at_once(url, model, sentences(num_concurrent, 1), clients))
    return report


def wait_ready(url: str, timeout_s: float, alive: Callable[[], bool] = lambda: True) -> bool:
    """Whether the server at `url` says /ready within `timeout_s`, while `alive()` holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and alive():
        try:
            if httpx.get(f"{url}/ready").status_code == 200:
                return True
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    return False


def start_server(flags: list[str]) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "service", "--port", str(port), *flags]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    if not wait_ready(url, 300, lambda: server.poll() is None):
        server.kill()
        raise RuntimeError(f"the server did not become ready: {' '.join(command)}")
    return server, url


def print_table(report: dict) -> None:
    print("one sentence at a time    client median / p90 ms   server: queue / prefill / decode ms")
    for name, row in report["one_at_a_time"].items():
        print(
            f"  {name:8s} ({row['server_tokens']:.0f} tokens)  "
            f"{row['latency_ms']:8.1f} / {row['p90_ms']:<8.1f}"
            f"   {row['server_queue_ms']} / {row['server_prefill_ms']} / {row['server_decode_ms']}"
        )
    row = report["at_once"]
    print(
        f"{row['clients']} clients, {row['requests']} sentences, greedy: "
        f"{row['tokens_per_s']} tokens/s, {row['requests_per_s']} requests/s, "
        f"latency median {row['latency_ms']} ms, p90 {row['p90_ms']} ms\n"
        f"  the server's engine meanwhile: {row['engine_steps']} steps of "
        f"{row['mean_step_rows']} rows, {row['mean_step_ms']} ms each"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--url", help="a running server (default: start one)")
    p.add_argument("--model", help="the translation model's id (default: the server's)")
    p.add_argument("--requests", type=int, default=40, help="sentences sent one at a time")
    p.add_argument("--concurrent-requests", type=int, default=256)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.add_argument("server_flags", nargs="*", help="after --: flags for the server started")
    args = p.parse_args()
    server = None
    url = args.url
    if url is None:
        server, url = start_server(args.server_flags)
    try:
        report = run(url, args.model, args.requests, args.concurrent_requests, args.clients)
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
