"""`--engine-process`: the engines in a process of their own give the same answers as in the
server's thread, and a dead engine process fails its requests and the server's liveness rather
than leaving them hanging. (The Makefile also runs all of test_api.py this way.)"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import pytest

from service.api.settings import Settings
from tests.server import ServerThread, free_port, tiny_checkpoints


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    return tiny_checkpoints(tmp_path_factory.mktemp("models"))


def settings(models: list[str], **overrides) -> Settings:
    fields = dict(models=models, port=free_port(), max_new_tokens=64, threads=1)
    return Settings(**(fields | overrides))


def comparable(answer: dict) -> dict:
    """An answer without what differs from one call to the next (ids, clocks)."""
    volatile = {"id", "created", "timings", "system_fingerprint"}
    return {key: value for key, value in answer.items() if key not in volatile}


REQUESTS = [  # (path, body): greedy, beams with n-best and alignments, seeded sampling, logprobs
    ("/v1/translate", {"text": ["Open the file", "Größe ändern", "Save"], "max_new_tokens": 20}),
    (
        "/v1/translate",
        {
            "text": "Save the document as PDF", "beam_size": 4, "num_hypotheses": 3,
            "return_scores": True, "return_alignments": True, "max_new_tokens": 16,
        },
    ),
    (
        "/v1/completions",
        {
            "model": "tiny-lm", "prompt": ["Open the", "Datei"], "max_tokens": 12,
            "temperature": 0, "logprobs": 2, "echo": True,
        },
    ),
    (
        "/v1/completions",
        {"model": "tiny-lm", "prompt": "Open", "max_tokens": 12, "temperature": 0.9, "seed": 7},
    ),
    (
        "/generate",
        {
            "model": "tiny-lm", "inputs": "Open the file",
            "parameters": {"max_new_tokens": 10, "details": True, "decoder_input_details": True},
        },
    ),
]  # fmt: skip


def test_answers_are_the_same_as_with_the_engines_in_the_servers_thread(models):
    with (
        ServerThread(settings(models)) as in_thread,
        ServerThread(settings(models, engine_process=True)) as in_process,
    ):
        for path, body in REQUESTS:
            expected = httpx.post(in_thread.url + path, json=body, timeout=60)
            got = httpx.post(in_process.url + path, json=body, timeout=60)
            assert expected.status_code == got.status_code == 200, (path, got.text)
            assert comparable(got.json()) == comparable(expected.json()), (path, body)
        # a batch sent all at once is batched in the engine process: the same tokens
        texts = [f"Open file {i}" for i in range(12)]
        answers: dict[int, str] = {}

        def one(i: int) -> None:
            body = {"text": texts[i], "max_new_tokens": 20}
            r = httpx.post(f"{in_process.url}/v1/translate", json=body, timeout=60)
            answers[i] = r.json()["translations"][0]["text"]

        workers = [threading.Thread(target=one, args=(i,)) for i in range(len(texts))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        alone = httpx.post(
            f"{in_thread.url}/v1/translate", json={"text": texts, "max_new_tokens": 20}, timeout=60
        ).json()["translations"]
        assert [answers[i] for i in range(len(texts))] == [t["text"] for t in alone]


def test_the_metrics_come_from_the_engine_process(models):
    with ServerThread(settings(models, engine_process=True)) as running:
        body = {"text": "Open the file", "max_new_tokens": 8}
        assert httpx.post(f"{running.url}/v1/translate", json=body).status_code == 200
        text = httpx.get(f"{running.url}/metrics").text
        steps = [
            line
            for line in text.splitlines()
            if line.startswith('attnserve_step_duration_seconds_count{model="tiny-mt"}')
        ]
        assert steps and float(steps[0].split()[-1]) >= 1  # its steps, reported over the pipe
        assert running.engine("tiny-mt").num_requests == 0  # the finish came back too


def test_a_dead_engine_process_fails_its_requests_with_503_and_the_server_its_liveness(models):
    overrides = dict(engine_process=True, max_running_requests=1, max_new_tokens=400)
    with (
        ServerThread(settings(models, **overrides)) as running,
        httpx.Client(base_url=running.url, timeout=60) as c,
    ):
        pid = running.app.state.registry.thread.pid
        long = {"model": "tiny-lm", "prompt": "Open", "max_tokens": 400, "ignore_eos": True}
        with c.stream("POST", "/v1/completions", json=long | {"stream": True}) as r:
            lines = r.iter_lines()
            next(lines)  # it runs
            os.kill(pid, signal.SIGSTOP)  # in the middle of its 400 tokens
            answer: dict = {}

            def queued() -> None:  # sent, and waiting behind the first
                answer["r"] = httpx.post(f"{running.url}/v1/completions", json=long, timeout=60)

            waiting = threading.Thread(target=queued)
            waiting.start()
            for _ in range(500):
                if running.engine("tiny-lm").num_requests == 2:
                    break
                time.sleep(0.01)
            assert running.engine("tiny-lm").num_requests == 2
            os.kill(pid, signal.SIGKILL)
            events = [line for line in lines if line]
        waiting.join(30)
        assert answer["r"].status_code == 503, answer["r"].text
        assert "the engine process stopped" in answer["r"].json()["error"]["message"]
        assert "the engine process stopped" in events[-2]  # the stream's error event, then [DONE]
        assert running.engine("tiny-lm").num_requests == 0
        assert c.get("/health").status_code == 503  # restart me
        assert c.post("/v1/completions", json=long).status_code == 503
