"""The locust load test (`loadtests/locustfile.py`) against the real server process: its users
find both models in /info, every kind of request they send succeeds (or is a 429 with
Retry-After), and streams report their time to first token."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from tests.server import ROOT, start_server, tiny_checkpoints

LOCUST = Path(sys.executable).with_name("locust")

EXPECTED = [
    "/v1/translate beam 4",
    "/v1/translate greedy",
    "/v1/translate batch of 4",
    "/v1/translate stream",
    "/v1/translate stream [first token]",
    "/v1/chat/completions stream",
    "/v1/chat/completions stream [first token]",
    "/generate",
    "/v1/completions stream",
    "/v1/completions stream [first token]",
]


def run_locust(url: str) -> dict[str, dict]:
    """One headless locust run of 8 users for 8 s: its stats by request name."""
    run = subprocess.run(
        [str(LOCUST), "-f", "loadtests/locustfile.py", "--host", url, "--headless",
         "--users", "8", "--spawn-rate", "8", "--run-time", "8s", "--json", "--loglevel",
         "WARNING"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    stats = {entry["name"]: entry for entry in json.loads(run.stdout)}
    assert not [s for s in stats.values() if s["num_failures"]], run.stderr[-2000:]
    return stats


def test_locust_load_test_runs_clean_against_the_server(tmp_path):
    """Locust picks its tasks at random by weight, so a short run may never pick a rare one
    (the chat stream is 1 pick in 15): runs are repeated, up to 3, until every kind of request
    has succeeded in one of them. Every run must be free of failures."""
    process, url = start_server(tiny_checkpoints(tmp_path), "--threads", "1")
    succeeded: set[str] = set()
    try:
        for _ in range(3):
            stats = run_locust(url)
            succeeded |= {name for name, entry in stats.items() if entry["num_requests"]}
            if succeeded.issuperset(EXPECTED):
                break
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    missing = [name for name in EXPECTED if name not in succeeded]
    assert not missing, f"no successful requests of {missing} in 3 runs: {sorted(succeeded)}"


def test_http_benchmark_reports_its_figures(tmp_path):
    """`python -m loadtests.bench_http` against a running server: every figure is there and
    counts what was sent."""
    process, url = start_server(tiny_checkpoints(tmp_path), "--threads", "1")
    out = tmp_path / "bench.json"
    try:
        run = subprocess.run(
            [sys.executable, "-m", "loadtests.bench_http", "--url", url, "--model", "tiny-mt",
             "--requests", "4", "--concurrent-requests", "12", "--clients", "3",
             "--json", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(60)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(out.read_text())
    for row in report["one_at_a_time"].values():
        assert row["p90_ms"] >= row["latency_ms"] > 0
        assert row["latency_ms"] >= row["server_total_ms"] > 0
        assert row["server_tokens"] > 0
    concurrent = report["at_once"]
    assert (concurrent["clients"], concurrent["requests"]) == (3, 12)
    assert concurrent["tokens_per_s"] > 0 and concurrent["requests_per_s"] > 0
    # 12 greedy requests of at least one token each: at least one step of one row
    assert concurrent["engine_steps"] >= 1 and concurrent["mean_step_rows"] >= 1
    assert concurrent["mean_step_ms"] > 0
    assert "clients, 12 sentences" in run.stdout


def test_gil_probe_runs_the_engine_three_ways():
    """`python -m loadtests.probe_gil`, reduced: the engine alone, beside a busy thread and
    beside a busy process, each a figure of its own."""
    run = subprocess.run(
        [sys.executable, "-m", "loadtests.probe_gil", "--threads", "1", "--rounds", "1",
         "--sentences", "8"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [line.split() for line in run.stdout.splitlines() if line.startswith("beside")]
    assert [row[1] for row in rows] == ["nothing", "thread", "process"]
    assert all(float(row[2]) > 0 for row in rows)
