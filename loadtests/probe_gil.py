"""What the HTTP side's Python costs the engine: the offline engine runs the bundled translator
on test sentences (256 by default) alone, then beside a Python busy loop (a stand-in for the event loop, busy
`--duty` of the time) in a thread of the same process, which holds the GIL while it runs, then
in a process of its own, which does not. Prints tokens/s and ms per step, rounds interleaved.

    python -m loadtests.probe_gil [--threads 1] [--rounds 3] [--duty 0.3] [--sentences 256]
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time

import torch

from loadtests.bench_engine import BUNDLED, corpus_requests, engine_run
from model.checkpoint import load_checkpoint

# where the busy loop runs: (its stop event, its worker)
BUSY_KINDS = {
    "thread": (threading.Event, threading.Thread),
    "process": (multiprocessing.Event, multiprocessing.Process),
}


def busy(stop, duty: float, period_s: float = 0.01) -> None:
    """Pure Python for `duty` of every `period_s`, asleep the rest."""
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < duty * period_s:
            pass
        time.sleep((1 - duty) * period_s)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duty", type=float, default=0.3, help="the busy loop's share of the time")
    p.add_argument("--max-running", type=int, default=16)
    p.add_argument("--sentences", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, tokenizer = load_checkpoint(BUNDLED)
    requests = corpus_requests(args.sentences, 1, tokenizer)
    engine_run(model, tokenizer, requests, False, args.max_running, "packed")  # warm-up
    for _ in range(args.rounds):
        for beside in ("nothing", *BUSY_KINDS):
            worker = None
            if beside in BUSY_KINDS:
                new_event, new_worker = BUSY_KINDS[beside]
                stop = new_event()
                worker = new_worker(target=busy, args=(stop, args.duty))
                worker.start()
            result = engine_run(model, tokenizer, requests, False, args.max_running, "packed")
            if worker is not None:
                stop.set()
                worker.join()
            ms_per_step = 1000 * result["seconds"] / result["steps"]
            print(f"beside {beside:8} {result['tokens_per_s']:8.1f} tokens/s  "
                  f"{ms_per_step:5.2f} ms/step ({result['steps']} steps)", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
