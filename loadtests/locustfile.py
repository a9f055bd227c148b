"""Load test of a running attnserve server with locust: the mix a translation service sees
(beam search, greedy, small batches, streamed translations, a chat client's translations) plus
TGI `/generate` and OpenAI `/v1/completions` on the generation model when the server has one.

    make serve                                     # one terminal
    make loadtest                                  # another: 16 users for 60 s, prints a table
    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:8000   # web UI, :8089

The users find the models in `GET /info` (the first translation model translates, the first
generation model generates), so the file works against any deployment.

A 429 is the server refusing load it cannot take, which is its job: it is reported under its
own name (`... [429 overloaded]`) as a success when it carries `Retry-After`, and as a failure
without it. Any other status but 200, or a body that breaks the contract, is a failure.
A stream's entry is the time to its last event; it also reports the time to its first token as
`... [first token]`.
"""

from __future__ import annotations

import json
import random
import time

from locust import HttpUser, between, task
from locust.exception import StopUser

SENTENCES = [
    "Open the file",
    "Save the document as PDF",
    "The printer is not ready.",
    "Do you want to save the changes you made to this document?",
    "Select the folder where the backup should be stored.",
    "The connection to the server was lost. Please try again later.",
    "Delete all selected items?",
    "Show hidden files and folders",
    "An update is available. Restart the application to install it.",
    "The password must contain at least eight characters.",
    "Copy",
    "Your changes have been saved.",
    "Could not open the file because it is in use by another program.",
    "Print the current page",
    "Check for updates automatically",
]


class AttnserveUser(HttpUser):
    wait_time = between(0.1, 1.0)
    translate_model: str | None = None
    generate_model: str | None = None

    def on_start(self) -> None:
        with self.client.get("/info", catch_response=True) as response:
            if response.status_code != 200:
                response.failure(f"/info: {response.status_code}")
                raise StopUser()
            models = response.json()["models"]
        by_task: dict[str, str] = {}
        for model in models:
            by_task.setdefault(model["task"], model["id"])
        self.translate_model = by_task.get("translation")
        self.generate_model = by_task.get("generation")

    # -- translation ---------------------------------------------------------------------------

    @task(4)
    def translate_beam(self) -> None:
        self._translate([random.choice(SENTENCES)], beam_size=4, name="/v1/translate beam 4")

    @task(4)
    def translate_greedy(self) -> None:
        self._translate([random.choice(SENTENCES)], beam_size=1, name="/v1/translate greedy")

    @task(1)
    def translate_batch(self) -> None:
        self._translate(random.sample(SENTENCES, 4), beam_size=4, name="/v1/translate batch of 4")

    @task(3)
    def translate_stream(self) -> None:
        if self.translate_model is None:
            return
        body = {"model": self.translate_model, "text": random.choice(SENTENCES), "stream": True}
        self._stream("/v1/translate", body, "/v1/translate stream", _translate_done)

    @task(1)
    def chat_stream(self) -> None:
        """A chat client's translation (OpenAI's chat schema: the last user message)."""
        if self.translate_model is None:
            return
        message = {"role": "user", "content": random.choice(SENTENCES)}
        body = {"model": self.translate_model, "messages": [message], "temperature": 0,
                "max_tokens": 48, "stream": True}  # fmt: skip
        self._stream("/v1/chat/completions", body, "/v1/chat/completions stream", _completion_done)

    def _translate(self, texts: list[str], beam_size: int, name: str) -> None:
        if self.translate_model is None:
            return
        body = {"model": self.translate_model, "text": texts, "beam_size": beam_size}
        with self.client.post("/v1/translate", json=body, name=name, catch_response=True) as r:
            if _overloaded(r, name):
                return
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif len(r.json()["translations"]) != len(texts):
                r.failure("one translation per text expected")

    # -- generation ----------------------------------------------------------------------------

    @task(1)
    def tgi_generate(self) -> None:
        if self.generate_model is None:
            return
        body = {
            "model": self.generate_model,
            "inputs": "The file",
            "parameters": {"max_new_tokens": 48, "do_sample": True, "temperature": 0.8},
        }
        name = "/generate"
        with self.client.post("/generate", json=body, name=name, catch_response=True) as r:
            if _overloaded(r, name):
                return
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
            elif "generated_text" not in r.json():
                r.failure("no generated_text")

    @task(1)
    def openai_completion_stream(self) -> None:
        if self.generate_model is None:
            return
        body = {"model": self.generate_model, "prompt": "Click", "max_tokens": 48, "stream": True}
        self._stream("/v1/completions", body, "/v1/completions stream", _completion_done)

    # -- server-sent events --------------------------------------------------------------------

    def _stream(self, path: str, body: dict, name: str, is_last) -> None:
        """POST a streaming request; report the whole stream's time and the first token's."""
        start = time.perf_counter()
        first_token_ms = None
        final_event = done = False
        with self.client.post(path, json=body, name=name, stream=True, catch_response=True) as r:
            if _overloaded(r, name):
                return
            if r.status_code != 200:
                r.failure(f"{r.status_code}: {r.text[:200]}")
                return
            buffer = b""
            for chunk in r.iter_content(chunk_size=None):  # as the chunks arrive
                buffer += chunk
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if not event.startswith(b"data: "):
                        continue  # a keep-alive comment
                    data = event.removeprefix(b"data: ").strip()
                    if data == b"[DONE]":
                        done = True
                        continue
                    payload = json.loads(data)
                    if first_token_ms is None and _has_text(payload):
                        first_token_ms = (time.perf_counter() - start) * 1000
                    if "error" in payload:
                        r.failure(f"error event: {payload}")
                        return
                    final_event = final_event or is_last(payload)
            r.request_meta["response_time"] = (time.perf_counter() - start) * 1000  # whole stream
            if not (final_event and done):
                r.failure("the stream ended without its final event and [DONE]")
                return
        if first_token_ms is not None:
            self.environment.events.request.fire(
                request_type="POST",
                name=f"{name} [first token]",
                response_time=first_token_ms,
                response_length=0,
                exception=None,
                context={},
            )


def _overloaded(response, name: str) -> bool:
    """A 429: reported under its own name; a success only with its Retry-After header."""
    if response.status_code != 429:
        return False
    response.request_meta["name"] = f"{name} [429 overloaded]"
    if response.headers.get("Retry-After"):
        response.success()
    else:
        response.failure("429 without Retry-After")
    return True


def _has_text(event: dict) -> bool:
    """Whether an event carries generated text (chat's first chunk only says the role)."""
    choices = event.get("choices", [])
    return bool(
        event.get("text")
        or any(c.get("text") or (c.get("delta") or {}).get("content") for c in choices)
    )


def _translate_done(event: dict) -> bool:
    return "finish_reason" in event


def _completion_done(event: dict) -> bool:
    return any(choice.get("finish_reason") for choice in event.get("choices", []))
