"""`python -m service` as a real process: flags, API key, graceful drain on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.server import ROOT, free_port, start_server, tiny_checkpoints


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    return tiny_checkpoints(tmp_path_factory.mktemp("models"))


def wait_until_accepted(url: str, num_requests: int) -> None:
    """Until the translation engine has taken `num_requests` requests: queued, running or
    finished (the gauges move at each engine step)."""
    for _ in range(500):
        text = httpx.get(f"{url}/metrics").text
        taken = sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith(
                (
                    "attnserve_requests_waiting{",
                    "attnserve_requests_running{",
                    "attnserve_request_finished_total{",
                )
            )
            and 'model="tiny-mt"' in line
        )
        if taken >= num_requests:
            return
        time.sleep(0.02)
    raise AssertionError(f"the server never took {num_requests} requests")


# The engines in the server's thread (the default), or in a process of their own.
ENGINES = pytest.mark.parametrize("engines", [[], ["--engine-process"]], ids=["thread", "process"])


@ENGINES
def test_sigterm_drains_in_flight_requests_then_exits_cleanly(models, engines):
    # One request runs at a time, so the streams queued behind a batch end well after uvicorn's
    # own 5 s grace period: only the drain keeps them alive that long (enough of them that the
    # engine process, faster than the engine thread, also takes that long).
    num_streams = 90
    process, url = start_server(models, "--threads", "1", "--max-running-requests", "1", *engines)
    try:
        assert httpx.get(f"{url}/info").json()["models"][0]["limits"]["max_new_tokens"] == 64
        slow = {"text": [f"Open file {i}" for i in range(16)], "beam_size": 8}
        result: dict = {"streams": []}

        def in_flight() -> None:
            result["response"] = httpx.post(f"{url}/v1/translate", json=slow, timeout=120)

        def streaming() -> None:  # its handler returns at once; its body is sent while it runs
            body = {"text": "Open file", "stream": True, "max_new_tokens": 64}
            with httpx.stream("POST", f"{url}/v1/translate", json=body, timeout=120) as r:
                lines = [line for line in r.iter_lines() if line]
            result["streams"].append((lines[-1], time.monotonic()))

        threads = [threading.Thread(target=in_flight)]
        threads += [threading.Thread(target=streaming) for _ in range(num_streams)]
        for thread in threads:
            thread.start()
        wait_until_accepted(url, 16 + num_streams)  # the batch's texts and the streams
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        time.sleep(0.2)
        assert httpx.get(f"{url}/ready").status_code == 503  # draining: out of the load balancer
        refused = httpx.post(f"{url}/v1/translate", json={"text": "Open"})
        assert refused.status_code == 503
        for thread in threads:
            thread.join(120)
        assert result["response"].status_code == 200  # nothing accepted is lost
        assert len(result["response"].json()["translations"]) == 16
        assert [last for last, _ in result["streams"]] == ["data: [DONE]"] * num_streams
        last_end = max(end for _, end in result["streams"])
        assert last_end - signalled > 5, "the streams must outlast uvicorn's grace period"
        assert process.wait(30) == 0
    finally:
        process.kill()


@ENGINES
def test_when_the_drain_runs_out_of_time_what_is_left_gets_a_503_not_a_cut(models, engines):
    process, url = start_server(
        models, "--threads", "1", "--max-running-requests", "1", "--drain-timeout-s", "1", *engines
    )
    try:
        slow = {"text": [f"Open file {i}" for i in range(16)], "beam_size": 8}
        result: dict = {"streams": []}

        def in_flight() -> None:
            result["response"] = httpx.post(f"{url}/v1/translate", json=slow, timeout=120)

        def streaming() -> None:
            body = {"text": "Open file", "stream": True, "max_new_tokens": 64}
            with httpx.stream("POST", f"{url}/v1/translate", json=body, timeout=120) as r:
                result["streams"].append([line for line in r.iter_lines() if line])

        threads = [threading.Thread(target=in_flight)]
        threads += [threading.Thread(target=streaming) for _ in range(20)]
        for thread in threads:
            thread.start()
        wait_until_accepted(url, 16 + 20)
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        for thread in threads:
            thread.join(60)
        response = result["response"]  # finished, or the API's 503, never uvicorn's bare 500
        assert response.status_code in (200, 503), response.text
        assert response.status_code == 200 or response.json()["error_type"] == "not_ready"
        assert len(result["streams"]) == 20
        for lines in result["streams"]:  # each one finished, or ended by an error event
            assert lines[-1] == "data: [DONE]"
        cut = [lines for lines in result["streams"] if '"error_type": "not_ready"' in lines[-2]]
        assert cut, "some streams were still queued when the drain ran out"
        assert process.wait(30) == 0
        assert time.monotonic() - signalled < 4, "no waiting out uvicorn's grace period"
    finally:
        process.kill()


def test_api_key_is_required_when_configured(models):
    process, url = start_server(models[:1], "--api-key", "s3cret")
    try:
        body = {"text": "Open", "beam_size": 1}
        assert httpx.post(f"{url}/v1/translate", json=body).status_code == 401
        ok = httpx.post(
            f"{url}/v1/translate", json=body, headers={"Authorization": "Bearer s3cret"}
        )
        assert ok.status_code == 200
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key
        # the playground and the API's docs load without it (the page asks for the key); the
        # models' details and TGI's POST / do not
        for page in ("/", "/docs", "/redoc", "/openapi.json", "/docs-assets/swagger-ui.css"):
            assert httpx.get(f"{url}{page}").status_code == 200, page
        assert httpx.get(f"{url}/info").status_code == 401
        assert httpx.post(f"{url}/", json={"inputs": "Open"}).status_code == 401
        lower = httpx.post(  # the scheme is case-insensitive (RFC 7235)
            f"{url}/v1/translate", json=body, headers={"Authorization": "bearer s3cret"}
        )
        assert lower.status_code == 200
        wrong = httpx.post(f"{url}/v1/translate", json=body, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


@ENGINES
def test_a_model_that_cannot_load_makes_the_process_exit_with_an_error(tmp_path, engines):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    args = [sys.executable, "-m", "service", "--port", str(free_port()), "--log-level", "error"]
    process = subprocess.Popen([*args, "--model", f"broken={broken}", *engines], cwd=ROOT)
    try:
        assert process.wait(60) != 0
    finally:
        process.kill()
