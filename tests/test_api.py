"""The HTTP contract (../shared/API.md) against a real server on loopback, with real clients:
httpx, the `openai` package and `huggingface_hub.InferenceClient`. Tiny random models."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import socket
import threading
import time
from types import SimpleNamespace

import httpx
import openai
import prometheus_client
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError
from prometheus_client.parser import text_string_to_metric_families

from service.api import routes_chat, routes_openai
from service.api.errors import ApiError
from service.api.generation import Context, start
from service.api.settings import Settings
from service.api.unreadable import Unreadable
from service.engine import FinishReason, RemoteEngine, RequestOutput, RequestTooLong
from tests.server import (
    ServerThread,
    engines_in_a_process,
    free_port,
    needs_engine_thread,
    tiny_checkpoints,
)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[str]:
    return tiny_checkpoints(tmp_path_factory.mktemp("models"))


def settings(models: list[str], **overrides) -> Settings:
    fields = dict(
        models=models, port=free_port(), max_input_tokens=64, max_new_tokens=64,
        kv_cache_mb=16, block_size=4, request_timeout_s=60, max_queued_requests=256,
        max_body_bytes=20_000, keepalive_s=5,
    )  # fmt: skip
    fields.update(overrides)
    return Settings(**fields)


@pytest.fixture(scope="module")
def server(models):
    with ServerThread(settings(models)) as running:
        yield running


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def sse_data(response: httpx.Response) -> list:
    """The `data:` payloads of an SSE response, JSON-decoded ("[DONE]" kept as is)."""
    events = []
    for block in response.text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line.removeprefix("data: ")
                events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


def metrics(client: httpx.Client) -> dict[str, float]:
    """Every sample as 'name{label=value,...}' → value, parsed by prometheus_client."""
    return parse_metrics(client.get("/metrics").text)


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def wait_idle(server: ServerThread, model_id: str) -> None:
    engine = server.engine(model_id)
    for _ in range(200):
        if isinstance(engine, RemoteEngine):  # the engine process: its last step's word
            stats = engine.last_stats
            if not engine.num_requests and stats and not stats.num_running + stats.blocks_used:
                return
        elif not engine.has_unfinished and engine.blocks.num_used == 0:
            return
        time.sleep(0.02)
    raise AssertionError("the engine did not become idle")


# -- operations -----------------------------------------------------------------------------


def test_an_idle_server_reports_its_gauges_and_a_dead_engine_fails_liveness(models):
    with ServerThread(settings(models)) as running, httpx.Client(base_url=running.url) as c:
        idle = metrics(c)  # before any request: the HPA's queue metric is there, at 0
        for model in ("tiny-mt", "tiny-lm"):
            for gauge in ("requests_waiting", "requests_running", "kv_cache_usage_ratio"):
                assert idle[f"attnserve_{gauge}{{model={model}}}"] == 0
        assert c.get("/health").status_code == 200
        running.app.state.registry.models["tiny-lm"].async_engine.shutdown()  # its thread ends
        dead = c.get("/health")
        assert dead.status_code == 503 and dead.json() == {
            "status": "failed",
            "stopped": ["tiny-lm"],
        }


def test_health_ready_info_and_models(client):
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").status_code == 200
    info = client.get("/info").json()
    assert {m["id"] for m in info["models"]} == {"tiny-mt", "tiny-lm"}
    mt = next(m for m in info["models"] if m["id"] == "tiny-mt")
    assert mt["architecture"] == "encoder-decoder" and mt["num_parameters"] > 0
    assert mt["limits"]["max_input_tokens"] == 64
    listing = client.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [m["object"] for m in listing["data"]] == ["model", "model"]


def test_openapi_documents_each_routes_error_shape_and_event_streams(client):
    spec = client.get("/openapi.json").json()
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's, not ours

    def responses(path):
        return spec["paths"][path]["post"]["responses"]

    for path, shape in [("/v1/completions", "OpenAIError"), ("/v1/translate", "NativeError"),
                        ("/generate", "NativeError")]:  # fmt: skip
        for codes in ("4XX", "5XX"):
            schema = responses(path)[codes]["content"]["application/json"]["schema"]
            assert schema["$ref"].endswith(f"/{shape}"), (path, schema)
    assert list(responses("/generate_stream")["200"]["content"]) == ["text/event-stream"]
    for path in ("/v1/translate", "/v1/completions", "/"):
        assert "text/event-stream" in responses(path)["200"]["content"]


def test_docs_pages_load_their_scripts_from_this_server(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert "/docs-assets/" in html and "cdn" not in html, html
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "redoc.standalone.js"):
        assert client.get(f"/docs-assets/{asset}").status_code == 200


@needs_engine_thread
def test_quantize_int8_serves_the_offline_int8_engines_tokens(models):
    """`--quantize int8`: /info says so, the server runs the int8 model, and its greedy
    translation is the offline int8 engine's."""
    from model.cpu_kernels import Int8Linear
    from service.engine import EngineConfig, LLMEngine, SamplingParams

    path = dict(m.split("=", 1) for m in models)["tiny-mt"]
    offline = LLMEngine.from_checkpoint(path, EngineConfig(quantize="int8"))
    expected = offline.generate(["Open the file"], SamplingParams(max_new_tokens=12))[0].text
    with (
        ServerThread(settings(models, quantize="int8")) as server,
        httpx.Client(base_url=server.url, timeout=60) as c,
    ):
        assert isinstance(server.engine("tiny-mt").runner.model.packed_head, Int8Linear)
        mt = next(m for m in c.get("/info").json()["models"] if m["id"] == "tiny-mt")
        assert mt["quantize"] == "int8"
        body = {"text": "Open the file", "beam_size": 1, "max_new_tokens": 12}
        r = c.post("/v1/translate", json=body)
        assert r.status_code == 200, r.text
        assert r.json()["translations"][0]["text"] == expected


def test_every_response_carries_a_request_id_and_server_timing(client):
    r = client.post(
        "/v1/translate", json={"text": "Open the file"}, headers={"X-Request-Id": "abc-1"}
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "abc-1"
    assert (
        "queue;dur=" in r.headers["server-timing"] and "decode;dur=" in r.headers["server-timing"]
    )
    assert client.get("/health").headers["x-request-id"]
    for unfit in (b"a" * 129, b"a\tb", "ünïcode".encode()):  # too long, a tab, not ASCII
        echoed = client.get("/health", headers={"X-Request-Id": unfit}).headers["x-request-id"]
        assert echoed.encode() != unfit and len(echoed) == 32  # a new one


# -- translation ------------------------------------------------------------------------------


def test_translate_one_text_and_a_batch(client):
    one = client.post("/v1/translate", json={"text": "Open the file", "beam_size": 1}).json()
    assert one["model"] == "tiny-mt"
    assert set(one["timings"]) == {"queue_ms", "prefill_ms", "decode_ms", "total_ms"}
    assert one["usage"]["input_tokens"] > 0
    batch = client.post(
        "/v1/translate",
        json={"text": ["Save the document as PDF", "Open the file"], "beam_size": 1},
    ).json()
    assert len(batch["translations"]) == 2
    assert batch["translations"][1]["text"] == one["translations"][0]["text"]
    # a batch's (and a split text's) timings are its slowest text's: the parts add up
    # a large batch is fine while the queue can take it (256 here); larger ones are refused
    texts = ["Open the file"] * 100
    large = client.post("/v1/translate", json={"text": texts, "beam_size": 1})
    assert [t["text"] for t in large.json()["translations"]] == [
        one["translations"][0]["text"]
    ] * 100
    # a batch's (and a split text's) timings are its slowest text's: the parts add up
    split = {"text": "Open the file. Save it as PDF.\nClose it.", "beam_size": 4}
    split = client.post("/v1/translate", json=split).json()
    for timings in (batch["timings"], large.json()["timings"], split["timings"]):
        parts = timings["queue_ms"] + timings["prefill_ms"] + timings["decode_ms"]
        assert parts == pytest.approx(timings["total_ms"], abs=0.05)
    over = client.post("/v1/translate", json={"text": texts * 3, "beam_size": 1})
    assert over.status_code == 422 and over.json()["error"].startswith("text: 300 generations")


def test_translate_keeps_what_the_model_cannot_read_from_it_and_loses_none(client):
    """Other scripts and emoji: the model is given placeholders, and each run comes back."""
    both = {"text": ["日本語", "🍕 42"], "return_scores": True, "return_alignments": True}
    r = client.post("/v1/translate", json=both).json()  # nothing to read: their own translation
    assert [t["text"] for t in r["translations"]] == ["日本語", "🍕 42"]
    assert [t["score"] for t in r["translations"]] == [0.0, 0.0]
    assert r["usage"] == {"input_tokens": 0, "output_tokens": 0}
    text = "The word שלום עולם means 🍕 here"
    body = {"text": text, "beam_size": 1, "return_alignments": True}
    translation = client.post("/v1/translate", json=body).json()["translations"][0]
    assert "שלום עולם" in translation["text"] and "🍕" in translation["text"]
    given = "".join(translation["alignments"]["source_tokens"])  # what the model read
    assert given == "The word {0} means {1} here</s>"
    events = sse_data(client.post("/v1/translate", json={"text": text, "stream": True}))
    pieces = [e["text"] for e in events[:-2]]
    assert "".join(pieces) == events[-2]["text"] == translation["text"]
    beams = client.post("/v1/translate", json={"text": text, "num_hypotheses": 2}).json()
    assert all("🍕" in h["text"] for h in beams["translations"][0]["hypotheses"])
    # the OpenAI and TGI routes give the model the text as it is
    completion = {"model": "tiny-mt", "prompt": "日本語", "temperature": 0}
    assert client.post("/v1/completions", json=completion).json()["usage"]["prompt_tokens"] > 1


def test_translate_n_best_is_sorted_by_score(client):
    body = {"text": "Datei öffnen", "beam_size": 4, "num_hypotheses": 3, "return_scores": True}
    (translation,) = client.post("/v1/translate", json=body).json()["translations"]
    scores = [h["score"] for h in translation["hypotheses"]]
    assert len(scores) == 3 and scores == sorted(scores, reverse=True)
    assert translation["text"] == translation["hypotheses"][0]["text"]
    assert translation["score"] == scores[0]
    greedy = body | {"beam_size": 1, "num_hypotheses": 1, "max_new_tokens": 12}
    (translation,) = client.post("/v1/translate", json=greedy).json()["translations"]
    assert translation["score"] < 0  # its mean log-probability, as a beam's score would be
    # the same shape as a beam search's: its one hypothesis
    assert translation["hypotheses"] == [
        {"text": translation["text"], "score": translation["score"]}
    ]
    sampled = greedy | {"temperature": 0.8, "seed": 1}
    assert client.post("/v1/translate", json=sampled).json()["translations"][0]["score"] < 0


def test_a_text_given_whole_keeps_its_edges_from_the_model(client):
    """A byte order mark or a line break at the edges never reaches the model, split or not
    (the OpenAI routes give a text whole when the request sets max_tokens, as chat UIs do)."""
    body = {"text": "Save the document as PDF", "beam_size": 1, "split_sentences": False}
    plain = client.post("/v1/translate", json=body).json()
    edged = client.post("/v1/translate", json=body | {"text": "\ufeff" + body["text"] + "\n"})
    edged = edged.json()
    assert edged["translations"][0]["text"] == "\ufeff" + plain["translations"][0]["text"] + "\n"
    assert edged["usage"] == plain["usage"]
    chat = {"model": "tiny-mt", "temperature": 0, "max_tokens": 20}
    said = {"role": "user", "content": "Save the document as PDF"}
    alone = client.post("/v1/chat/completions", json=chat | {"messages": [said]}).json()
    said = said | {"content": "\ufeff" + said["content"]}
    bom = client.post("/v1/chat/completions", json=chat | {"messages": [said]}).json()
    assert bom["choices"][0]["message"]["content"] == (
        "\ufeff" + alone["choices"][0]["message"]["content"]
    )
    assert bom["usage"]["prompt_tokens"] == alone["usage"]["prompt_tokens"]


def test_a_chat_messages_text_parts_are_its_lines(client):
    chat = {"model": "tiny-mt", "temperature": 0, "max_tokens": 20}
    parts = [{"type": "text", "text": "Open the file"}, {"type": "text", "text": "Save"}]
    as_parts = {"messages": [{"role": "user", "content": parts}]}
    as_lines = {"messages": [{"role": "user", "content": "Open the file\nSave"}]}
    answers = [
        client.post("/v1/chat/completions", json=chat | m).json() for m in (as_parts, as_lines)
    ]
    assert answers[0]["choices"] == answers[1]["choices"]
    assert answers[0]["usage"] == answers[1]["usage"]


def test_a_blank_text_is_its_own_translation_and_leaves_the_batch_whole(server, client):
    """A column of UI strings with empty cells: every other text is translated, in order."""
    texts = ["Open the file", "", " \t\n", "\u200b\ufeff", "Save as"]
    for extra in ({}, {"beam_size": 1}, {"return_scores": True, "return_alignments": True}):
        r = client.post("/v1/translate", json={"text": texts, "max_new_tokens": 12} | extra)
        assert r.status_code == 200, r.text
        got = r.json()["translations"]
        alone = [
            client.post("/v1/translate", json={"text": t, "max_new_tokens": 12} | extra).json()
            for t in texts
        ]
        assert got == [a["translations"][0] for a in alone]
        assert [t["text"] for t in got[1:4]] == texts[1:4]  # kept as they are
        assert all(t["finish_reason"] == "stop" for t in got[1:4])
        assert r.json()["usage"] == {
            "input_tokens": sum(a["usage"]["input_tokens"] for a in alone),
            "output_tokens": sum(a["usage"]["output_tokens"] for a in alone),
        }
        assert alone[1]["usage"] == {"input_tokens": 0, "output_tokens": 0}
    scored = client.post("/v1/translate", json={"text": "", "return_scores": True}).json()
    assert scored["translations"][0]["hypotheses"] == [{"text": "", "score": 0.0}]
    events = sse_data(client.post("/v1/translate", json={"text": "  ", "stream": True}))
    assert events[-1] == "[DONE]" and events[-2]["text"] == "  "
    assert events[-2]["finish_reason"] == "stop"
    assert "".join(e["text"] for e in events[:-2]) == "  "  # the deltas spell it, as always
    # the generation routes still refuse a blank input: a prompt of nothing is a mistake there
    r = client.post("/generate", json={"inputs": " "})
    assert r.status_code == 422 and "only whitespace" in r.text
    wait_idle(server, "tiny-mt")


def test_streamed_translation_concatenates_to_the_non_streamed_text(client):
    body = {"text": "Save the document as PDF", "beam_size": 1, "max_new_tokens": 40}
    whole = client.post("/v1/translate", json=body).json()["translations"][0]["text"]
    r = client.post("/v1/translate", json=body | {"stream": True})
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse_data(r)
    # every stream tells caches and proxies (nginx buffers by default) not to hold it back
    streams = [
        ("/v1/translate", body | {"stream": True}),
        ("/generate_stream", {"inputs": "Open"}),
        ("/", {"inputs": "Open", "stream": True}),
        ("/v1/completions", {"model": "tiny-lm", "prompt": "Open", "stream": True}),
        (
            "/v1/completions",
            {"model": "tiny-lm", "prompt": "Open", "stream": True, "echo": True, "max_tokens": 0},
        ),  # fmt: skip
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "Open"}], "stream": True},
        ),
    ]
    for path, ask in streams:
        headers = client.post(path, json=ask).headers
        assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no", path
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["finish_reason"] in ("stop", "length") and final["text"] == whole
    assert "".join(e["text"] for e in events[:-2]) == whole
    assert all(isinstance(e["token"]["id"], int) for e in events[:-2])
    assert all(e["text"] for e in events[:-2])  # one event per new piece of text, none for EOS
    assert "score" not in final
    scored = body | {"return_scores": True}
    score = client.post("/v1/translate", json=scored).json()["translations"][0]["score"]
    assert (
        sse_data(client.post("/v1/translate", json=scored | {"stream": True}))[-2]["score"] == score
    )


def test_no_repeat_ngram_size_bans_repeated_ngrams_of_a_translation(client):
    body = {"text": "Save the document as PDF", "max_new_tokens": 30}
    for beam_size in (1, 4):  # the random model repeats itself without the ban
        plain = client.post("/v1/translate", json=body | {"beam_size": beam_size}).json()
        r = client.post(
            "/v1/translate", json=body | {"beam_size": beam_size, "no_repeat_ngram_size": 1}
        )
        assert r.status_code == 200, r.text
        assert r.json()["translations"][0]["text"] != plain["translations"][0]["text"]
    events = sse_data(
        client.post("/v1/translate", json=body | {"stream": True, "no_repeat_ngram_size": 1})
    )
    ids = [event["token"]["id"] for event in events[:-2]]
    assert len(ids) > 5 and len(set(ids)) == len(ids)  # no token twice


def test_alignments_show_where_each_target_token_looked(server, client):
    body = {"text": ["Open the file", "Größe 🎉 ändern"], "return_alignments": True}
    response = client.post("/v1/translate", json=body).json()
    engine = server.engine("tiny-mt")
    targets = [t["alignments"]["target_tokens"] for t in response["translations"]]
    assert sum(map(len, targets)) == response["usage"]["output_tokens"]  # one row per token
    for text, translation in zip(body["text"], response["translations"], strict=True):
        alignments = translation["alignments"]
        # what the model read and wrote: 🎉, which it has only in bytes, is a placeholder there
        masked = Unreadable(engine.tokenizer).mask(text)
        src = engine.input_ids(masked.source)
        assert len(alignments["source_tokens"]) == len(src)
        assert "".join(alignments["source_tokens"]) == masked.source + "</s>"
        written = "".join(alignments["target_tokens"]).removesuffix("</s>")
        assert masked.restore(written) == translation["text"]
        weights = alignments["weights"]
        assert len(weights) == len(alignments["target_tokens"])
        assert all(len(row) == len(src) and abs(sum(row) - 1) < 1e-3 for row in weights)
        assert alignments["pairs"] == [[i, row.index(max(row))] for i, row in enumerate(weights)]
    streamed = sse_data(
        client.post(
            "/v1/translate",
            json={"text": "Open the file", "stream": True, "return_alignments": True},
        )  # fmt: skip
    )[-2]
    plain = client.post(
        "/v1/translate", json={"text": "Open the file", "beam_size": 1, "return_alignments": True}
    ).json()["translations"][0]
    assert streamed["alignments"] == plain["alignments"]


def test_a_text_of_several_lines_is_translated_line_by_line_keeping_its_layout(client):
    """Each non-blank line is translated as if alone; line breaks, blank lines and indentation
    stay where they were (the model was trained on single lines)."""
    lines = ["Open the file", "Save the document as PDF", "Größe ändern"]
    text = f"{lines[0]}\n\n  {lines[1]}  \r\n{lines[2]}\n"
    for extra in ({"beam_size": 1}, {"beam_size": 4, "num_hypotheses": 2, "return_scores": True}):
        body = {"max_new_tokens": 12} | extra
        alone = client.post("/v1/translate", json=body | {"text": [*lines, lines[0]]}).json()
        whole = client.post("/v1/translate", json=body | {"text": [text, lines[0]]}).json()
        got = [t["text"] for t in alone["translations"]]
        (translation, single) = whole["translations"]
        assert translation["text"] == f"{got[0]}\n\n  {got[1]}  \r\n{got[2]}\n"
        assert single["text"] == got[0]  # a batch may mix texts of one line and of several
        assert whole["usage"] == alone["usage"]
        if "num_hypotheses" in extra:
            scores = [h["score"] for h in translation["hypotheses"]]
            assert len(scores) == 2 and scores == sorted(scores, reverse=True)
            assert translation["hypotheses"][0]["text"] == translation["text"]
            assert translation["score"] == scores[0]
    streamed = sse_data(
        client.post("/v1/translate", json={"text": text, "stream": True, "max_new_tokens": 12})
    )
    final = streamed[-2]
    greedy = client.post("/v1/translate", json={"text": text, "beam_size": 1, "max_new_tokens": 12})
    assert final["text"] == greedy.json()["translations"][0]["text"]
    assert "".join(e["text"] for e in streamed[:-2]) == final["text"]
    assert final["usage"] == greedy.json()["usage"]


def test_line_separators_in_a_stream_are_escaped_so_line_readers_see_whole_events(server):
    """U+2028 is kept between segments; raw in an event, str.splitlines (httpx's iter_lines,
    and so huggingface_hub's streams) would cut the event in two."""
    text = "Open the file.\u2028Save it.\x85Close it.\u2029"
    with httpx.Client(base_url=server.url, timeout=60) as c:
        body = {"text": text, "stream": True, "beam_size": 1, "max_new_tokens": 8}
        with c.stream("POST", "/v1/translate", json=body) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "\u2028" in events[-1]["text"] and events[-1]["text"].endswith("\u2029")
    assert "".join(e["text"] for e in events[:-1]) == events[-1]["text"]
    client = InferenceClient(base_url=f"{server.url}/models/tiny-mt")
    chunks = client.chat_completion(
        [{"role": "user", "content": text}], max_tokens=None, temperature=0, stream=True
    )
    assert "\u2028" in "".join(chunk.choices[0].delta.content or "" for chunk in chunks)


SENTENCES = ["Open the file.", "Save the document as PDF!"]


def test_sentences_are_translated_one_by_one_unless_split_sentences_is_false(client):
    body = {"beam_size": 1, "max_new_tokens": 12}
    alone = client.post("/v1/translate", json=body | {"text": SENTENCES}).json()["translations"]
    text = "  ".join(SENTENCES)
    split = client.post("/v1/translate", json=body | {"text": text}).json()["translations"][0]
    assert split["text"] == f"{alone[0]['text']}  {alone[1]['text']}"
    # split_sentences: false (as DeepL's option) gives the text to the model whole, as the
    # OpenAI routes do with logprobs
    whole = client.post("/v1/translate", json=body | {"text": text, "split_sentences": False})
    ask = {"model": "tiny-mt", "prompt": text, "temperature": 0, "logprobs": 0}
    completion = client.post("/v1/completions", json=ask | {"max_tokens": 12}).json()
    assert whole.json()["translations"][0]["text"] == completion["choices"][0]["text"]
    assert whole.json()["translations"][0]["text"] != split["text"]


def test_the_openai_routes_split_a_translation_unless_an_option_is_about_the_whole(client):
    text = "  ".join(SENTENCES)
    translate = {"text": text, "beam_size": 1}
    # completions' default max_tokens is 16 and chat's what fits: each segment's
    split_16 = client.post("/v1/translate", json=translate | {"max_new_tokens": 16}).json()
    ask = {"model": "tiny-mt", "prompt": text, "temperature": 0}
    completion = client.post("/v1/completions", json=ask).json()["choices"][0]
    assert completion["text"] == split_16["translations"][0]["text"]
    split_fit = client.post("/v1/translate", json=translate).json()["translations"][0]["text"]
    chat = {"model": "tiny-mt", "messages": [{"role": "user", "content": text}]}
    chat |= {"temperature": 0, "n": 2}
    choices = client.post("/v1/chat/completions", json=chat).json()["choices"]
    assert [c["message"]["content"] for c in choices] == [split_fit] * 2
    chunks = sse_data(client.post("/v1/chat/completions", json=chat | {"stream": True}))
    for k in range(2):  # each choice's deltas spell its text
        streamed = [
            c["delta"].get("content", "")
            for e in chunks[:-1]
            for c in e["choices"]
            if c["index"] == k
        ]  # fmt: skip (a raw client's: no null content, ever)
        assert "".join(streamed) == split_fit
    deltas = [c["delta"] for e in chunks[:-1] for c in e["choices"]]
    assert all(None not in d.values() for d in deltas) and "tool_calls" not in str(deltas)
    # An option about the whole completion gives the text whole, since each would apply per
    # segment: the client's own max tokens, stop, min_tokens, ignore_eos, logprobs (whose
    # tokens then spell the text).
    whole_16 = translate | {"split_sentences": False, "max_new_tokens": 16}
    whole = client.post("/v1/translate", json=whole_16).json()["translations"][0]["text"]
    assert whole != completion["text"]
    for option in ({"max_tokens": 16}, {"logprobs": 0}, {"stop": ["zzz"]}, {"min_tokens": 1}):
        got = client.post("/v1/completions", json=ask | option).json()
        assert got["choices"][0]["text"] == whole, option
    chat_whole = chat | {"max_completion_tokens": 16, "n": 1}
    got = client.post("/v1/chat/completions", json=chat_whole).json()["choices"][0]
    assert got["message"]["content"] == whole
    # and so does split_sentences: false, as on /v1/translate
    unsplit = client.post("/v1/completions", json=ask | {"split_sentences": False}).json()
    assert unsplit["choices"][0]["text"] == whole
    # The client's own split_sentences true decides: the options then apply to each segment.
    for option in ({"max_tokens": 16}, {"stop": ["zzz"]}, {"min_tokens": 1}):
        got = client.post("/v1/completions", json=ask | option | {"split_sentences": True})
        assert got.json()["choices"][0]["text"] == split_16["translations"][0]["text"], option
    chat_split = chat_whole | {"split_sentences": True}
    got = client.post("/v1/chat/completions", json=chat_split).json()["choices"][0]
    assert got["message"]["content"] == split_16["translations"][0]["text"]
    # but logprobs cover the whole completion
    both = client.post("/v1/completions", json=ask | {"logprobs": 0, "split_sentences": True})
    assert both.status_code == 400 and both.json()["error"]["param"] == "logprobs"


def test_the_tgi_routes_split_a_translation_unless_an_option_is_about_the_whole(server, client):
    """As the OpenAI routes, so InferenceClient.translation() translates each line and
    sentence too. The tokens' texts still spell generated_text, streamed or not."""
    text = " " + "  ".join(SENTENCES) + "\nClose it.\n"
    # TGI's default max_new_tokens, 100, is lowered to the server's limit, 64, per segment
    translate = {"text": text, "beam_size": 1, "max_new_tokens": 64}
    split = client.post("/v1/translate", json=translate).json()
    expected = split["translations"][0]["text"]
    body = {"model": "tiny-mt", "inputs": text, "parameters": {"details": True}}
    result = client.post("/generate", json=body).json()
    streamed = sse_data(client.post("/generate_stream", json=body))
    hub = InferenceClient(base_url=server.url).translation(text).translation_text
    assert result["generated_text"] == hub == expected
    tokens = result["details"]["tokens"]
    assert result["details"]["generated_tokens"] == len(tokens) == split["usage"]["output_tokens"]
    assert result["details"]["input_length"] == split["usage"]["input_tokens"]
    eos = "</s>" if tokens[-1]["special"] else ""
    assert "".join(t["text"] for t in tokens) == expected + eos
    assert [(e["token"]["id"], e["token"]["text"]) for e in streamed] == [
        (t["id"], t["text"]) for t in tokens
    ]
    assert streamed[-1]["generated_text"] == expected
    # An option about the whole generation gives the text whole: the client's own
    # max_new_tokens, stop, truncate (token ids), or split_sentences false.
    whole = client.post("/v1/translate", json=translate | {"split_sentences": False}).json()
    assert whole["translations"][0]["text"] != expected
    for option in ({"max_new_tokens": 64}, {"stop": ["zzz"]}, {"split_sentences": False}):
        got = client.post("/generate", json={"inputs": text, "parameters": option}).json()
        assert got["generated_text"] == whole["translations"][0]["text"], option
    # The client's own split_sentences true decides: the options then apply to each segment.
    for option in ({"max_new_tokens": 64}, {"stop": ["zzz"]}):
        option |= {"split_sentences": True}
        got = client.post("/generate", json={"inputs": text, "parameters": option}).json()
        assert got["generated_text"] == expected, option
    # but truncate cuts the whole input's tokens
    both = {"inputs": text, "parameters": {"truncate": 8, "split_sentences": True}}
    refused = client.post("/generate", json=both)
    assert refused.status_code == 422 and "truncate" in refused.json()["error"]


@needs_engine_thread
def test_a_split_translations_tgi_tokens_carry_the_text_between_segments(models):
    """The text between segments starts the next segment's first token; a segment's EOS has no
    text, and the last EOS has what is left of the text, then "</s>", as for a text whole."""
    with ServerThread(settings(models)) as running:
        runner = running.engine("tiny-mt").runner
        eos = running.engine("tiny-mt").model_config.eos_token_id
        decode = runner.decode

        def eos_second(requests):  # EOS after one token: each segment's translation is a word
            logits = [t.clone() for t in decode(requests)]
            for request, t in zip(requests, logits, strict=True):
                for row, beam in enumerate(request.beams):
                    if len(beam.tokens) > 1:  # the decoder's start and one token
                        t[row, eos] = 1e4
            return logits

        runner.decode = eos_second
        body = {"model": "tiny-mt", "inputs": "  Open it.\n\nClose it.\n", "parameters": {
            "details": True}}  # fmt: skip
        result = httpx.post(f"{running.url}/generate", json=body).json()
        streamed = sse_data(httpx.post(f"{running.url}/generate_stream", json=body))
        words = httpx.post(
            f"{running.url}/v1/translate", json={"text": ["Open it.", "Close it."], "beam_size": 1}
        ).json()["translations"]
    first, second = (w["text"] for w in words)
    tokens = [(t["text"], t["special"]) for t in result["details"]["tokens"]]
    assert tokens == [(f"  {first}", False), ("", True), (f"\n\n{second}", False), ("\n</s>", True)]
    assert result["generated_text"] == f"  {first}\n\n{second}\n"
    assert [e["token"] for e in streamed] == result["details"]["tokens"]


def test_tgi_token_texts_keep_the_text_of_a_segment_that_ended_without_a_token(server):
    """A segment whose deadline passed between two steps has no token of its own: the text
    around it waits for the next token, or goes with a stream's made-up last event."""
    from service.api.tgi_tokens import TokenTexts
    from service.engine import split_text

    served = server.app.state.registry.models["tiny-mt"]
    segments = split_text(" Open it.\n\nSave it. Close it.\n")
    assert segments is not None and len(segments.sources) == 3
    decode = served.llm.tokenizer.decode
    first, third = served.llm.tokenizer.encode("Datei"), served.llm.tokenizer.encode("öffnen")

    def spelled(parts: list[list[int] | None], last_made_up: bool = False) -> str:
        texts = TokenTexts(served, segments)
        out = []
        for k, ids in enumerate(parts):
            is_last_part = k == len(parts) - 1
            if ids is None:  # the segment ended without a token
                left = texts.without_token(is_last_part)
                out.append(left if is_last_part and last_made_up else "")
                assert left == "" or is_last_part
            for j, token in enumerate(ids or []):
                ends = j == len(ids) - 1
                out.append(texts.token(token, ends, ends and is_last_part))
        return "".join(out)

    assert spelled([first, None, third]) == segments.join([decode(first), "", decode(third)])
    assert spelled([first, third, None], last_made_up=True) == segments.join(
        [decode(first), decode(third), ""]
    )


def test_a_texts_segments_count_against_the_queue_and_an_error_names_the_line(client):
    over = client.post("/v1/translate", json={"text": "Open it.\n" * 300})
    assert over.status_code == 422
    assert (
        over.json()["error"]
        == "text: 300 segments (lines and sentences) in one request, over the 288 the server "
        "holds at once (running and queued)"  # 32 running + 256 queued
    )
    chat = {"model": "tiny-mt", "messages": [{"role": "user", "content": "Open it.\n" * 300}]}
    refused = client.post("/v1/chat/completions", json=chat)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    long = client.post("/v1/translate", json={"text": ["Open", f"Open\n\n{'word ' * 200}"]})
    assert long.status_code == 422 and long.json()["error"].startswith("text[1], line 3: ")


def test_a_multi_line_texts_alignments_join_its_lines_block_by_block(client):
    lines = ["Open the file", "Größe ändern"]
    body = {"beam_size": 1, "max_new_tokens": 12, "return_alignments": True}
    alone = [
        client.post("/v1/translate", json=body | {"text": line}).json()["translations"][0]
        for line in lines
    ]
    text = "\n".join(lines)
    (joined,) = client.post("/v1/translate", json=body | {"text": text}).json()["translations"]
    streamed = sse_data(client.post("/v1/translate", json=body | {"text": text, "stream": True}))
    assert streamed[-2]["alignments"] == joined["alignments"]
    a, b = (t["alignments"] for t in alone)
    merged = joined["alignments"]
    assert merged["source_tokens"] == a["source_tokens"] + b["source_tokens"]
    assert merged["target_tokens"] == a["target_tokens"] + b["target_tokens"]
    n, m = len(a["source_tokens"]), len(b["source_tokens"])
    # block-diagonal: the first line's targets look only at its own source, and so on
    assert merged["weights"] == [row + [0.0] * m for row in a["weights"]] + [
        [0.0] * n + row for row in b["weights"]
    ]
    offset = len(a["target_tokens"])
    assert merged["pairs"] == a["pairs"] + [[i + offset, j + n] for i, j in b["pairs"]]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"text": []}, "text"),
        ({"text": "hi", "temperature": -1}, "temperature"),
        ({"text": "hi", "temperature": 0.7, "beam_size": 4}, "beam_size"),
        ({"text": "hi", "beam_size": 2, "num_hypotheses": 3}, "num_hypotheses"),
        ({"text": "hi", "temperature": 0.7, "num_hypotheses": 2}, "num_hypotheses must be 1"),
        ({"text": "hi", "max_new_tokens": 10_000}, "max_new_tokens"),
        ({"text": "hi", "model": "nope"}, "model"),
        ({"text": "hi", "model": "tiny-lm"}, "model"),
        ({"text": ["a", "b"], "stream": True}, "stream"),
        ({"text": "word " * 200}, "text"),
        ({"text": ["Open", "word " * 200]}, "text[1]"),  # which text of the batch
        ({"text": ["Open", None]}, "text: item 1 must be a string, not None"),
        ({"text": "hi", "colour": "red"}, "colour"),
        ({"txt": "hi"}, "text"),
        ({"text": "hi", "beam_size": "4"}, "beam_size"),  # types are strict, as TGI's
        ({"text": "hi", "return_scores": "yes"}, "return_scores"),
        ({"text": "hi", "no_repeat_ngram_size": -1}, "no_repeat_ngram_size"),
    ],
)
def test_bad_translation_requests_get_422_naming_the_field(client, body, field):
    r = client.post("/v1/translate", json=body)
    assert r.status_code == 422, r.text
    error = r.json()
    assert error["error_type"] == "validation"
    assert field in error["error"]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"prompt": []}, "prompt"),
        ({"prompt": ["a", ""]}, "prompt"),
        ({"prompt": None}, "prompt"),
        ({"model": "tiny-mt", "prompt": "a", "echo": True}, "echo"),  # a source is not echoed
        ({"prompt": "word " * 200, "echo": True, "logprobs": 1}, "prompt"),  # checked first
        ({"prompt": "word " * 200, "echo": True, "max_tokens": 0}, "prompt"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),  # 0 only with echo
        ({"prompt": "a", "seed": 2**64}, "seed"),
        ({"prompt": ["a"] * 64, "n": 16}, "n"),  # 1,024 generations: more than the queue holds
        ({"prompt": "a", "model": "gpt-4"}, "model"),
        ({"prompt": "a", "max_tokens": "4"}, "max_tokens"),
        ({"prompt": "a", "presence_penalty": -2.5}, "presence_penalty"),
        ({"prompt": "a", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"prompt": "a", "logit_bias": {"5": 101}}, "logit_bias"),
        ({"prompt": "a", "logit_bias": {"99999": 1}}, "logit_bias"),  # not in the vocabulary
        ({"prompt": "a", "suffix": "!"}, "suffix"),
        ({"prompt": "a", "stream": 1}, "stream"),
        ({"prompt": "a", "logit_bias": {"²": 1}}, "logit_bias"),  # a digit to isdigit(), not int()
        (
            {"prompt": "a", "logit_bias": {"9" * 5000: 1}},
            "logit_bias",
        ),  # int() refuses > 4300 digits
        ({"prompt": "a", "stop": [1]}, "stop"),
        ({"prompt": "a", "stop": ["a"] * 5}, "stop"),
        ({"prompt": "a", "stream_options": {"include_usage": True}}, "stream_options"),
        ({"prompt": "a", "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
    ],
)
def test_bad_completions_get_400_with_the_field_as_param(client, body, param):
    r = client.post("/v1/completions", json={"model": "tiny-lm"} | body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert "Value error" not in error["message"] and "constrained" not in error["message"]


def test_max_new_tokens_over_a_translation_models_limit_is_lowered_and_a_generators_refused(
    models,
):
    """The tiny models have 512 positions, so at most 511 new tokens; this server allows 600.
    A translation's max_new_tokens is an upper bound (API.md's example asks for 256, more
    than the bundled translator's 135); a prompt shares a generator's positions (vLLM, TGI)."""
    with ServerThread(settings(models, max_new_tokens=600)) as big:
        ask = {"text": "Open the file", "beam_size": 1, "max_new_tokens": 600}
        lowered = httpx.post(f"{big.url}/v1/translate", json=ask, timeout=60)
        assert lowered.status_code == 200, lowered.text
        assert lowered.json()["usage"]["output_tokens"] <= 511
        over = httpx.post(f"{big.url}/v1/translate", json=ask | {"max_new_tokens": 601})
        assert over.status_code == 422, over.text
        assert over.json()["error"] == "max_new_tokens: 601 is over this server's limit of 600"
        tgi = {"inputs": "Open", "parameters": {"max_new_tokens": 600}}
        refused = httpx.post(f"{big.url}/models/tiny-lm/generate", json=tgi)
        assert refused.status_code == 422, refused.text
        message = "parameters.max_new_tokens: 600 is over this model's limit of 511"
        assert refused.json()["error"] == message


def test_openai_default_max_tokens_is_lowered_to_what_fits_and_a_clients_own_is_refused(models):
    """A KV cache of 8 blocks of 4 slots: a 20-token prompt leaves room for fewer than OpenAI's
    default of 16 new tokens."""
    block = 2 * 2 * 4 * 32 * 4  # K and V, 2 layers, 4 slots, d_model 32, fp32 (the tiny models)
    with ServerThread(settings(models, kv_cache_mb=8 * block / 2**20)) as small:
        ask = {"model": "tiny-lm", "prompt": [5] * 20, "ignore_eos": True}
        fitted = httpx.post(f"{small.url}/v1/completions", json=ask, timeout=60)
        assert fitted.status_code == 200, fitted.text
        assert 0 < fitted.json()["usage"]["completion_tokens"] < 16
        assert fitted.json()["choices"][0]["finish_reason"] == "length"
        own = httpx.post(f"{small.url}/v1/completions", json=ask | {"max_tokens": 16}, timeout=60)
        assert own.status_code == 400 and own.json()["error"]["param"] == "max_tokens", own.text


def test_a_bad_prompt_of_a_list_is_named_by_its_index(client):
    r = client.post("/v1/completions", json={"model": "tiny-lm", "prompt": ["Open", ""]})
    assert r.json()["error"]["message"] == "prompt: item 1 must be a non-empty string, not ''"
    r = client.post("/v1/completions", json={"model": "tiny-lm", "prompt": [[5, 6], []]})
    message = "prompt: item 1 must be a non-empty list of token ids (integers ≥ 0)"
    assert r.json()["error"]["message"] == message
    r = client.post("/v1/completions", json={"model": "tiny-lm", "prompt": [5, -1]})
    message = "prompt: token 1 must be a token id (an integer ≥ 0), not -1"
    assert r.json()["error"]["message"] == message


@pytest.mark.parametrize(
    "parameters, field",
    [
        ({"top_p": 1.0}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"temperature": 0}, "temperature"),
        ({"repetition_penalty": 0}, "repetition_penalty"),
        ({"stop": [""]}, "stop"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"seed": -1}, "seed"),
        ({"top_n_tokens": 11}, "top_n_tokens"),
        ({"best_of": 2}, "best_of"),
        ({"grammar": {"type": "json", "value": {}}}, "grammar"),
        ({"watermark": True}, "watermark"),
        ({"truncate": 0}, "truncate"),
        ({"typical_p": 1.0}, "typical_p"),
        ({"decoder_input_details": True}, "decoder_input_details"),
        ({"adapter_id": "lora-1"}, "adapter_id"),
        ({"frequency_penalty": 3.0}, "frequency_penalty"),
        ({"max_new_tokens": "4"}, "max_new_tokens"),
        ({"details": "true"}, "details"),
    ],
)
def test_bad_tgi_parameters_get_422_naming_the_field(client, parameters, field):
    r = client.post("/generate", json={"inputs": "Open", "parameters": parameters})
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and field in r.json()["error"]


def test_empty_tgi_inputs_are_named_as_a_string(client):
    r = client.post("/generate", json={"inputs": ""})
    assert r.status_code == 422 and r.json()["error"] == "inputs: must not be empty", r.text


@pytest.mark.parametrize(
    "path, body, field",
    [
        # JSON's \\ud800 escapes are valid JSON but decode to lone surrogates, not text
        ("/v1/translate", rb'{"text": "\ud800"}', "text"),
        ("/v1/translate", rb'{"text": ["Open", "Open \ud83d file"]}', "text"),
        ("/generate", rb'{"inputs": "\ud800"}', "inputs"),
        ("/generate", rb'{"inputs": "Open", "parameters": {"stop": ["\udfff"]}}', "stop"),
        ("/v1/completions", rb'{"model": "tiny-lm", "prompt": "Open \ud83d"}', "prompt"),
        ("/v1/completions", rb'{"model": "tiny-lm", "prompt": "a", "stop": "\ud800"}', "stop"),
        # 1e999 is valid JSON too, and overflows to infinity
        ("/generate", rb'{"inputs": "a", "parameters": {"repetition_penalty": 1e999}}', "repetition_penalty"),
        ("/generate_stream", rb'{"inputs": "a", "parameters": {"temperature": -1e999}}', "temperature"),
        ("/v1/completions", rb'{"prompt": "a", "repetition_penalty": 1e999}', "repetition_penalty"),
        ("/v1/translate", rb'{"text": "a", "length_penalty": 1e999}', "length_penalty"),
        ("/v1/translate", rb'{"text": "a", "timeout_s": 1e999}', "timeout_s"),
    ],
)  # fmt: skip
def test_text_that_is_not_unicode_and_infinite_numbers_are_refused_naming_the_field(
    client, path, body, field
):
    r = client.post(path, content=body, headers={"content-type": "application/json"})
    if path.startswith("/v1/completions"):
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field
        message = r.json()["error"]["message"]
    else:
        assert r.status_code == 422, r.text
        message = r.json()["error"]
        assert field in message
    assert b"\\ud" not in body or "not valid Unicode" in message, message


def test_bodies_that_cannot_be_decoded_are_422_saying_why(client):
    json_type = {"content-type": "application/json"}
    r = client.post("/v1/translate", content=b'{"text": "\xff"}', headers=json_type)
    assert r.status_code == 422 and "utf-8" in r.json()["error"], r.text
    r = client.post("/generate", content=b"[" * 10_000, headers=json_type)
    assert r.status_code == 422 and r.json()["error_type"] == "validation", r.text
    r = client.post("/v1/translate", content=b"", headers=json_type)
    assert (
        r.status_code == 422 and r.json()["error"] == "the body is empty: a JSON object is required"
    )
    r = client.get("/v1/completions")  # a route that exists, with the wrong method
    assert r.status_code == 405 and r.headers["allow"] == "POST" and "message" in r.json()["error"]
    assert client.post("/health").headers["allow"] == "GET, HEAD"  # every method of the path
    assert client.put("/").headers["allow"] == "GET, HEAD, POST"  # the playground, TGI's route


def test_a_request_refused_before_its_body_is_read_is_counted_for_the_model_its_url_names(client):
    label = "attnserve_requests_total{model=tiny-lm,route=/models/{model_id}/generate,status=422}"
    before = metrics(client).get(label, 0)
    r = client.post(
        "/models/tiny-lm/generate", content=b"{", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    assert metrics(client)[label] == before + 1


def test_null_means_the_default_as_openai_and_tgi_servers_take_it(server, client):
    """The `openai` package sends an explicit None as null."""
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-lm", prompt="Open", max_tokens=4, seed=1)
    nulls = dict(temperature=None, top_p=None, n=None, stream=None, presence_penalty=None)
    assert (
        openai_client.completions.create(**ask, **nulls).choices[0].text  # type: ignore[call-overload]
        == openai_client.completions.create(**ask).choices[0].text
    )
    body = {"inputs": "Open", "parameters": {"max_new_tokens": 4, "do_sample": None, "stop": None}}
    assert client.post("/generate", json=body).status_code == 200
    body = {"text": "Open", "temperature": None, "beam_size": None, "stream": None}
    assert client.post("/v1/translate", json=body).status_code == 200
    # A null that means something of its own keeps it: max_tokens null is "as many as fit".
    r = client.post(
        "/v1/completions",
        json={"model": "tiny-lm", "prompt": "Open", "max_tokens": None, "ignore_eos": True},
    )
    assert r.json()["usage"]["completion_tokens"] > 16  # not OpenAI's default of 16


def test_a_body_that_is_not_json_says_so(client):
    form = {"content-type": "application/x-www-form-urlencoded"}  # curl -d's default
    r = client.post("/v1/translate", content=b'{"text": "hi"}', headers=form)
    assert r.status_code == 422
    assert "Content-Type: application/json" in r.json()["error"]
    # No Content-Type at all (`requests.post(url, data=json.dumps(body))`): read as JSON
    r = client.post("/v1/translate", content=b'{"text": "hi"}')
    assert "content-type" not in r.request.headers and r.status_code == 200, r.text
    r = client.post("/v1/translate", content=b"text=hi")
    assert r.status_code == 422 and "not valid JSON" in r.json()["error"]
    for body in ([1, 2], "text", None):  # JSON, but not an object
        r = client.post("/v1/translate", json=body)
        assert r.status_code == 422 and "a JSON object" in r.json()["error"], r.text
        assert "dictionary" not in r.json()["error"]  # pydantic's words, not the client's


def test_a_request_refused_for_its_model_is_counted_under_that_model(client):
    before = metrics(client)
    wrong_kind = client.post("/v1/translate", json={"text": "x", "model": "tiny-lm"})
    assert wrong_kind.status_code == 422 and "tiny-lm" in wrong_kind.json()["error"]
    invalid = client.post("/v1/translate", json={"text": "x", "model": "tiny-lm", "top_k": -1})
    assert invalid.status_code == 422  # refused as invalid, before the route read the model
    unknown = client.post("/v1/translate", json={"text": "x", "model": "nope"})
    assert unknown.status_code == 422
    after = metrics(client)
    # a generator is served, so named; an unknown model is not
    for model, count in (("tiny-lm", 2), ("", 1)):
        label = f"attnserve_requests_total{{model={model},route=/v1/translate,status=422}}"
        assert after[label] - before.get(label, 0) == count, label


def test_malformed_json_and_oversized_bodies(client):
    r = client.post(
        "/v1/translate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert r.status_code == 422
    r = client.post("/v1/translate", json={"text": "x" * 30_000})
    assert r.status_code == 413

    def chunked():  # no Content-Length: the server counts the bytes
        yield b'{"text": "'
        for _ in range(30):
            yield b"x" * 1_000
        yield b'"}'

    r = client.post(
        "/v1/translate", content=chunked(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413
    r = client.post(
        "/v1/completions", content=chunked(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and "error" in r.json()
    counted = metrics(client)  # logged and counted like any other answer
    assert counted["attnserve_requests_total{model=,route=/v1/translate,status=413}"] >= 2
    assert client.get("/no/such/route").status_code == 404
    packed = gzip.compress(b'{"text": "Open"}')
    for path in ("/v1/translate", "/v1/completions"):  # a compressed body is refused, saying so
        r = client.post(path, content=packed, headers={"content-encoding": "gzip"})
        assert r.status_code == 415 and "Content-Encoding 'gzip'" in r.text, r.text
    assert client.get("/health", headers={"content-encoding": "gzip"}).status_code == 200  # no body
    plain = {"content-encoding": "identity", "content-type": "application/json"}
    assert (
        client.post("/v1/translate", content=b'{"text": "Open"}', headers=plain).status_code == 200
    )
    unknown = client.post("/v1/embeddings", json={})
    assert unknown.status_code == 404  # in OpenAI's shape, saying what there is instead
    assert "/v1/completions" in unknown.json()["error"]["message"]
    # HEAD wherever GET is (load balancers probe with it): GET's status and headers, no body
    for path in ("/health", "/ready", "/metrics", "/info", "/v1/models", "/v1/models/tiny-lm",
                 "/models/tiny-lm/health", "/models/tiny-lm/info", "/", "/openapi.json"):  # fmt: skip
        head, get = client.head(path), client.get(path)
        assert head.status_code == get.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/v1/models/gpt-4").status_code == 404
    assert client.head("/v1/translate").headers["allow"] == "POST"


# -- TGI --------------------------------------------------------------------------------------


def test_tgi_generate_and_compat_route(client):
    body = {"inputs": "Open", "parameters": {"max_new_tokens": 10, "details": True}}
    r = client.post("/generate", json=body, headers={"X-Request-Id": "t1"})
    assert r.status_code == 200
    result = r.json()
    assert isinstance(result["generated_text"], str)
    assert result["details"]["generated_tokens"] == len(result["details"]["tokens"]) <= 10
    assert result["details"]["finish_reason"] in ("length", "eos_token", "stop_sequence")
    listed = client.post("/", json=body).json()
    assert listed[0]["generated_text"] == result["generated_text"]
    plain = sse_data(client.post("/generate_stream", json={"inputs": "Open"}))
    assert all(e["details"] is None for e in plain[:-1] if e != "[DONE]")  # details: not asked


def test_tgi_return_full_text_puts_the_prompt_first_and_a_source_is_refused(client):
    body = {"model": "tiny-lm", "inputs": "Open", "parameters": {"max_new_tokens": 6}}
    new = client.post("/generate", json=body).json()["generated_text"]
    full = body | {"parameters": body["parameters"] | {"return_full_text": True}}
    assert client.post("/generate", json=full).json()["generated_text"] == "Open" + new
    streamed = sse_data(client.post("/generate_stream", json=full))
    assert streamed[-1]["generated_text"] == "Open" + new
    for path in ("/generate", "/generate_stream"):  # as echo on /v1/completions
        r = client.post(path, json=full | {"model": "tiny-mt"})
        assert r.status_code == 422 and "return_full_text" in r.json()["error"], r.text


def test_tgi_details_tokens_are_the_streams_tokens_and_add_up_to_the_text(client):
    """A character split over byte-level tokens comes whole with its last token, as streamed:
    a lone token's decoding ("\ufffd") is never a token's text. A stop string changes no
    token's text (none waits for it, as TGI's tokens do not): its tokens are those without it,
    up to where it stopped."""
    for model in ("tiny-mt", "tiny-lm"):
        for seed in range(6):
            unstopped: list = []
            for stop in ([], ["ö", "e D"]):
                # random tiny models: some outputs split characters, or may begin a stop string
                body = {"model": model, "inputs": "Größe ändern 🎉", "parameters": {
                    "max_new_tokens": 24, "details": True, "do_sample": True, "seed": seed,
                    "stop": stop}}  # fmt: skip
                result = client.post("/generate", json=body).json()
                tokens = [(t["id"], t["text"]) for t in result["details"]["tokens"]]
                assert "".join(text for _, text in tokens) == result["generated_text"]
                streamed = sse_data(client.post("/generate_stream", json=body))
                assert [(e["token"]["id"], e["token"]["text"]) for e in streamed] == tokens
                if not stop:
                    unstopped = tokens
                else:  # the last token also takes what is left (a split character, rendered)
                    assert tokens[:-1] == unstopped[: len(tokens) - 1]


@needs_engine_thread
def test_tgi_eos_token_is_its_own_string_and_left_out_of_generated_text(models):
    """As TGI's: a special token's text is its string ("</s>"), which generated_text leaves out."""
    with ServerThread(settings(models)) as running:
        runner = running.engine("tiny-lm").runner
        eos = running.engine("tiny-lm").model_config.eos_token_id
        decode = runner.decode

        def eos_next(requests):  # every decode step says EOS: the second token ends the text
            logits = [t.clone() for t in decode(requests)]
            for t in logits:
                t[:, eos] = 1e4
            return logits

        runner.decode = eos_next
        body = {"model": "tiny-lm", "inputs": "Open", "parameters": {"details": True}}
        result = httpx.post(f"{running.url}/generate", json=body).json()
        streamed = sse_data(httpx.post(f"{running.url}/generate_stream", json=body))
    tokens = result["details"]["tokens"]
    assert result["details"]["finish_reason"] == "eos_token" and len(tokens) == 2
    assert tokens[-1] | {"logprob": 0} == {"id": eos, "text": "</s>", "logprob": 0, "special": True}
    assert tokens[0]["text"] == result["generated_text"] and not tokens[0]["special"]
    assert [e["token"] for e in streamed] == tokens
    assert streamed[-1]["generated_text"] == result["generated_text"]


def test_tgi_decoder_input_details_list_the_prompts_tokens_with_logprobs(server, client):
    hub = InferenceClient(base_url=f"{server.url}/models/tiny-lm")
    engine = server.engine("tiny-lm")
    result = hub.text_generation(
        "Open the file", max_new_tokens=4, details=True, decoder_input_details=True
    )
    ids = engine.input_ids("Open the file")
    prefill = result.details.prefill
    assert [t.id for t in prefill] == ids
    special = engine.tokenizer.hf.id_to_token  # "<s>": a special token reads as its string
    assert [t.text for t in prefill] == [engine.tokenizer.decode([i]) or special(i) for i in ids]
    expected = server.prompt_logprobs("tiny-lm", ids)
    assert prefill[0].logprob is None
    assert [t.logprob for t in prefill[1:]] == pytest.approx(expected[1:], abs=1e-5)
    body = {"inputs": "Open", "parameters": {"decoder_input_details": True, "details": True}}
    r = client.post("/models/tiny-lm/generate_stream", json=body)
    assert r.status_code == 422 and "streaming" in r.json()["error"]  # as TGI
    r = client.post("/models/tiny-mt/generate", json=body)  # a source has no logprobs
    assert r.status_code == 422 and "decoder_input_details" in r.json()["error"]
    both = client.post("/models/tiny-lm/generate", json=body).json()["details"]
    alone = {"inputs": "Open", "parameters": {"decoder_input_details": True}}
    details = client.post("/models/tiny-lm/generate", json=alone).json()["details"]  # as TGI's
    assert details["prefill"] == both["prefill"] and len(details["prefill"]) >= 2


def test_huggingface_hub_translation_gets_the_translation(server, client):
    hf = InferenceClient(base_url=server.url)  # posts {"inputs", "parameters"} to /
    translated = hf.translation("Open the file")
    body = {"inputs": "Open the file", "parameters": {"max_new_tokens": 64}}
    assert (
        translated.translation_text == client.post("/generate", json=body).json()["generated_text"]
    )
    generated = client.post("/", json={"model": "tiny-lm", "inputs": "Open"}).json()[0]
    assert "translation_text" not in generated  # only translation models
    detailed = {"inputs": "Open the file", "parameters": {"details": True}}
    detailed = client.post("/", json=detailed).json()[0]
    assert detailed["translation_text"] == detailed["generated_text"] == translated.translation_text
    # whitespace alone has nothing to translate, on every route
    for path, body in [
        ("/", {"inputs": " \u200b"}),
        ("/generate", {"inputs": "\n"}),
        ("/generate_stream", {"inputs": "\ufeff"}),
        ("/generate", {"inputs": " \n ", "parameters": {"truncate": 5}}),  # before token ids
        ("/v1/completions", {"model": "tiny-mt", "prompt": ["Open", " "]}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "  "}]}),
    ]:
        r = client.post(path, json=body)
        assert r.status_code == (400 if path.startswith("/v1") else 422), r.text
        assert "is only whitespace" in r.text, r.text
    # transformers' generate() options, as translation() sends them: taken, or refused by name
    short = hf.translation("Open the file", generate_parameters={"max_new_tokens": 2})
    body = {"inputs": "Open the file", "parameters": {"max_new_tokens": 2}}
    assert short.translation_text == client.post("/generate", json=body).json()["generated_text"]
    assert short.translation_text != translated.translation_text
    # read as generate() reads them: "off" values, and sampling options without do_sample
    greedy = {"do_sample": False, "temperature": 0.7, "top_p": 1.0, "top_k": 0}
    assert hf.translation("Open the file", generate_parameters=greedy) == translated
    body = {"inputs": "Open the file", "parameters": {
        "max_new_tokens": 3, "generate_parameters": {"max_new_tokens": 2}}}  # fmt: skip
    given = client.post("/", json=body).json()[0]["generated_text"]
    assert given != short.translation_text  # a parameter given itself wins
    banned = hf.translation("Open the file", generate_parameters={"no_repeat_ngram_size": 1})
    body = {
        "text": "Open the file",
        "beam_size": 1,
        "max_new_tokens": 64,
        "no_repeat_ngram_size": 1,
    }
    native = client.post("/v1/translate", json=body).json()["translations"][0]["text"]
    assert banned.translation_text == native != translated.translation_text
    with pytest.raises(HfHubHTTPError) as refused:
        hf.translation("Open the file", generate_parameters={"num_beams": 4})
    assert refused.value.response.status_code == 422
    assert "generate_parameters: num_beams not supported" in refused.value.response.text


def test_tgi_top_n_tokens_lists_the_likeliest_tokens_best_first(server, client):
    ask = dict(max_new_tokens=6, details=True, top_n_tokens=3)
    details = client.post("/generate", json={"inputs": "Open the", "parameters": ask}).json()[
        "details"
    ]
    assert len(details["top_tokens"]) == len(details["tokens"])
    for chosen, top in zip(details["tokens"], details["top_tokens"], strict=True):
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert len(top) == 3 and top[0]["id"] == chosen["id"]  # greedy: the likeliest is chosen
    hf = InferenceClient(base_url=server.url)
    events = list(hf.text_generation("Open the", stream=True, **ask))
    streamed = [[t.id for t in e.top_tokens] for e in events if e.top_tokens]
    assert streamed == [[t["id"] for t in top] for top in details["top_tokens"]]


def test_tgi_truncate_keeps_the_last_input_tokens(client):
    body = {"model": "tiny-lm", "inputs": "Open the document as PDF", "parameters": {}}
    body["parameters"] = {"max_new_tokens": 4, "details": True, "best_of": None}
    whole = client.post("/generate", json=body).json()["details"]["input_length"]
    body["parameters"]["truncate"] = 2
    assert whole > 2
    r = client.post("/generate", json=body)
    assert r.json()["details"]["input_length"] == int(r.headers["x-prompt-tokens"]) == 2
    # TGI's timing headers, in whole milliseconds
    generated = r.json()["details"]["generated_tokens"]
    assert int(r.headers["x-generated-tokens"]) == generated
    assert int(r.headers["x-total-time"]) >= int(r.headers["x-inference-time"]) >= 0
    body["parameters"]["truncate"] = 10_000  # more than the model takes: refused, as by TGI
    r = client.post("/generate", json=body)
    assert r.status_code == 422 and "parameters.truncate" in r.json()["error"]


def test_tgi_generated_text_keeps_the_stop_sequence_as_tgi_does(client):
    body = {"model": "tiny-lm", "inputs": "Open", "parameters": {"max_new_tokens": 30}}
    text = client.post("/generate", json=body).json()["generated_text"]
    stop = text[len(text) // 2 :][:2].strip() or text[-1]
    body["parameters"] |= {"stop": [stop], "details": True}
    result = client.post("/generate", json=body).json()
    assert result["details"]["finish_reason"] == "stop_sequence"
    assert stop in result["generated_text"]
    assert text.startswith(result["generated_text"].split(stop)[0] + stop)


def test_tgi_stream_tokens_add_up_to_generated_text_with_a_stop_sequence(server, client):
    hf = InferenceClient(base_url=server.url)  # the first model, as the raw requests below
    body = {"inputs": "Open the", "parameters": {"max_new_tokens": 30}}
    text = client.post("/generate", json=body).json()["generated_text"]
    stop = text[len(text) // 2 :][:2].strip() or text[-1]
    whole = hf.text_generation("Open the", max_new_tokens=30, stop=[stop])
    events = list(
        hf.text_generation("Open the", max_new_tokens=30, stop=[stop], stream=True, details=True)
    )
    assert stop in whole
    assert "".join(e.token.text for e in events) == events[-1].generated_text == whole
    assert events[-1].details is not None and events[-1].details.finish_reason == "stop_sequence"
    # API.md: the last event carries `details` even when the request did not ask for them
    r = client.post("/generate_stream", json=body)
    last = [e for e in sse_data(r) if isinstance(e, dict)][-1]
    assert last["details"]["generated_tokens"] >= 1 and last["details"]["finish_reason"]


def test_tgi_stop_sequence_keeps_the_white_space_around_a_translation(client):
    """A translation model's input is given without the white space at its edges, which stays
    around the translation: with a stop sequence too, in the text and in the tokens."""
    body = {"model": "tiny-mt", "inputs": "  Open the file  ", "parameters": {"max_new_tokens": 12}}
    text = client.post("/generate", json=body).json()["generated_text"]
    assert text.startswith("  ") and len(text.strip()) >= 4, text
    stop = text.strip()[2:4]
    body["parameters"] |= {"stop": [stop], "details": True}
    result = client.post("/generate", json=body).json()
    assert result["details"]["finish_reason"] == "stop_sequence"
    assert result["generated_text"].startswith("  ") and stop in result["generated_text"]
    events = [e for e in sse_data(client.post("/generate_stream", json=body)) if e != "[DONE]"]
    assert "".join(e["token"]["text"] for e in events) == events[-1]["generated_text"]
    assert events[-1]["generated_text"] == result["generated_text"]


def test_huggingface_hub_reaches_every_model_through_its_own_base_url(server, client):
    """TGI serves one model, so its client never names one: each model has a base URL."""
    body = {"model": "tiny-lm", "inputs": "Open the", "parameters": {"max_new_tokens": 8}}
    expected = client.post("/generate", json=body).json()["generated_text"]
    lm = InferenceClient(base_url=f"{server.url}/models/tiny-lm")
    # the client posts to the base URL, TGI's `/`, whose generators return the prompt first
    # unless asked not to (TGI's default for its "text-generation" pipeline)
    assert lm.text_generation("Open the", max_new_tokens=8) == "Open the" + expected
    new = lm.text_generation("Open the", max_new_tokens=8, return_full_text=False)
    assert new == expected
    streamed = lm.text_generation("Open the", max_new_tokens=8, stream=True)
    assert "".join(streamed) == expected
    slashed = InferenceClient(base_url=f"{server.url}/models/tiny-lm/")  # as users often write it
    assert slashed.text_generation("Open the", max_new_tokens=8) == "Open the" + expected
    assert client.post("/models/tiny-lm/info", json=body).status_code == 405  # a GET route
    r = client.post("/models/tiny-lm/generate/", json=body)
    assert r.status_code == 200 and r.json()["generated_text"] == expected
    streamed = sse_data(client.post("/models/tiny-lm/generate_stream/", json=body))
    assert streamed[-1]["generated_text"] == expected
    mt = InferenceClient(base_url=f"{server.url}/models/tiny-mt")
    translated = client.post("/v1/translate", json={"text": "Open", "beam_size": 1}).json()
    assert mt.translation("Open").translation_text == translated["translations"][0]["text"]
    r = client.post("/models/tiny-lm/generate", json=body | {"model": "tiny-mt"})
    assert r.status_code == 422 and "model" in r.json()["error"]
    assert client.post("/models/nope/generate", json=body).status_code == 422


def test_model_ids_with_a_slash_are_served_and_retrieved(models):
    lm = next(m for m in models if m.startswith("tiny-lm="))
    with ServerThread(settings([lm.replace("tiny-lm=", "org/tiny-lm=")])) as running:
        openai_client = openai.OpenAI(base_url=f"{running.url}/v1", api_key="unused")
        assert openai_client.models.retrieve("org/tiny-lm").id == "org/tiny-lm"
        done = openai_client.completions.create(model="org/tiny-lm", prompt="Open", max_tokens=3)
        assert done.model == "org/tiny-lm"
        hub = InferenceClient(base_url=f"{running.url}/models/org/tiny-lm")
        assert isinstance(hub.text_generation("Open", max_new_tokens=3), str)


def test_huggingface_hub_client_checks_a_models_health_and_info(server):
    for model in ("tiny-lm", "tiny-mt"):
        # health_check() is refused without a provider; a TGI endpoint is "hf-inference"
        hub = InferenceClient(f"{server.url}/models/{model}", provider="hf-inference")
        assert hub.health_check()
        info = hub.get_endpoint_info()
        assert info["model_id"] == model and info["max_stop_sequences"] == 8
        limits = next(
            m for m in httpx.get(f"{server.url}/info").json()["models"] if m["id"] == model
        )
        assert info["max_input_tokens"] == limits["limits"]["max_input_tokens"]
        assert info["max_total_tokens"] <= limits["max_positions"] * (
            2 if model == "tiny-mt" else 1
        )
    assert httpx.get(f"{server.url}/models/nope/info").status_code == 404
    assert httpx.get(f"{server.url}/models/nope/health").status_code == 404


def test_huggingface_hub_client_streams_with_details(server):
    hf = InferenceClient(base_url=server.url)
    whole = hf.text_generation("Open the", max_new_tokens=12)
    events = list(hf.text_generation("Open the", max_new_tokens=12, stream=True, details=True))
    assert "".join(e.token.text for e in events) == whole
    last = events[-1]
    assert last.generated_text == whole
    assert last.details is not None and last.details.generated_tokens == len(events)
    seeded = [
        hf.text_generation("Datei", max_new_tokens=12, do_sample=True, seed=3, temperature=0.9)
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]
    # typical_p (LangChain's HuggingFaceEndpoint sends 0.95 by default), as TGI: it samples.
    # A tiny mass keeps one token a step, the most typical: the seed no longer matters.
    typical = [
        hf.text_generation("Datei", max_new_tokens=12, typical_p=p, seed=seed)
        for p, seed in ((0.95, 1), (0.95, 2), (0.001, 1), (0.001, 2))
    ]
    assert typical[0] != typical[1] and typical[2] == typical[3]


# -- OpenAI -----------------------------------------------------------------------------------


def test_tokenize_answers_in_tgis_shape_or_vllms_and_detokenize_round_trips(server, client):
    mt, lm = server.engine("tiny-mt"), server.engine("tiny-lm")
    text = "Größe 🎉 ändern"
    # TGI's body: the tokens a translation request gives the model, with where each lies
    tokens = client.post("/tokenize", json={"inputs": text}).json()
    assert [t["id"] for t in tokens] == mt.input_ids(text)  # the source, then </s>
    assert "".join(t["text"] for t in tokens) == text
    assert all(text[t["start"] : t["stop"]] == t["text"] for t in tokens)  # as TGI's
    eos = mt.model_config.eos_token_id
    assert tokens[-1] == {"id": eos, "text": "", "start": len(text), "stop": len(text)}
    truncated = client.post("/tokenize", json={"inputs": text, "parameters": {"truncate": 2}})
    assert truncated.json() == tokens[-2:]  # TGI's truncate keeps the last tokens
    at_base_url = client.post("/models/tiny-mt/tokenize", json={"inputs": text}).json()
    assert at_base_url == tokens
    # vLLM's body
    counted = client.post("/tokenize", json={"model": "tiny-lm", "prompt": text}).json()
    assert counted["tokens"] == lm.input_ids(text) and counted["count"] == len(counted["tokens"])
    assert counted["max_model_len"] == lm.model_config.max_positions
    plain = {"prompt": text, "add_special_tokens": False, "return_token_strs": True}
    bare = client.post("/tokenize", json=plain).json()
    assert bare["tokens"] == mt.tokenizer.encode(text) and len(bare["token_strs"]) == bare["count"]
    back = client.post("/detokenize", json={"model": "tiny-lm", "tokens": counted["tokens"]})
    assert back.json() == {"prompt": text}
    # bad bodies name their field; counting tokens is not a generation in the metrics
    for body, field in [
        ({}, "prompt"),
        ({"inputs": "a", "prompt": "b"}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "a", "model": "nope"}, "model"),
    ]:
        r = client.post("/tokenize", json=body)
        assert r.status_code == 422 and field in r.json()["error"], body
    r = client.post("/detokenize", json={"tokens": [1, 10**6]})
    assert r.status_code == 422 and r.json()["error"].startswith("tokens")
    assert not any("tokenize" in key for key in metrics(client))


def test_a_long_tokenize_does_not_hold_up_the_other_requests(models):
    """Tokenizing a long text takes seconds: the other routes answer meanwhile, each in a
    fraction of that (before, the event loop was blocked until the whole answer was sent)."""
    text = "word " * 40_000
    done = threading.Event()
    with ServerThread(settings(models, max_body_bytes=1_000_000)) as running:
        client = httpx.Client(base_url=running.url, timeout=120)

        def tokenize():
            r = client.post("/tokenize", json={"inputs": text})
            assert r.status_code == 200 and len(r.json()) > 40_000
            done.set()

        worker = threading.Thread(target=tokenize)
        started = time.monotonic()
        worker.start()
        waits = []
        while not done.is_set() and worker.is_alive():
            sent = time.monotonic()
            assert client.get("/health").status_code == 200
            waits.append(time.monotonic() - sent)
        worker.join()
        took = time.monotonic() - started
    assert done.is_set() and len(waits) > 1
    assert max(waits) < took / 3, (max(waits), took)


def test_openai_completions_plain_and_streamed(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    models = [m.id for m in client.models.list()]
    assert models == ["tiny-mt", "tiny-lm"]
    done = client.completions.create(model="tiny-lm", prompt="Open", max_tokens=10, temperature=0)
    assert done.object == "text_completion" and done.usage.completion_tokens <= 10
    text = done.choices[0].text
    stream = client.completions.create(
        model="tiny-lm", prompt="Open", max_tokens=10, temperature=0, stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == done.usage.completion_tokens
    )
    raw = {"model": "tiny-lm", "prompt": "Open", "max_tokens": 10, "stream": True}
    with_usage = raw | {"stream_options": {"include_usage": True}}
    *events, last, done_event = sse_data(
        httpx.post(f"{server.url}/v1/completions", json=with_usage)
    )
    assert done_event == "[DONE]" and last["usage"] and not last["choices"]
    assert all(
        "usage" in e and e["usage"] is None for e in events
    )  # null until the last, as OpenAI's
    plain = sse_data(httpx.post(f"{server.url}/v1/completions", json=raw))[:-1]
    assert not any("usage" in e for e in plain)
    several = client.completions.create(
        model="tiny-lm", prompt=["Open", "Save"], max_tokens=5, n=2, seed=1, logprobs=1
    )
    assert [c.index for c in several.choices] == [0, 1, 2, 3]
    assert len(several.choices[0].logprobs.token_logprobs) == len(
        several.choices[0].logprobs.tokens
    )
    # At a model's base URL, the URL names the model (the body's is a placeholder)
    at_model = openai.OpenAI(base_url=f"{server.url}/models/tiny-lm/v1", api_key="unused")
    there = at_model.completions.create(model="x", prompt="Open", max_tokens=10, temperature=0)
    assert there.model == "tiny-lm" and there.choices[0].text == text
    assert [card.id for card in at_model.models.list()] == ["tiny-lm"]
    assert at_model.models.retrieve("tiny-lm").id == "tiny-lm"
    with pytest.raises(openai.NotFoundError):
        at_model.models.retrieve("tiny-mt")
    # a placeholder is a body's; in the URL it is an unknown model
    placeholder = httpx.post(f"{server.url}/models/tgi/v1/completions", json={"prompt": "Open"})
    assert placeholder.status_code == 422 and "unknown model 'tgi'" in placeholder.text
    wrong_method = httpx.head(f"{server.url}/models/tiny-lm/generate")
    assert wrong_method.status_code == 405 and wrong_method.headers["allow"] == "POST"
    with pytest.raises(openai.UnprocessableEntityError) as refused:  # TGI's shape, as TGI there
        at_model.completions.create(model="x", prompt="Open", max_tokens=10, temperature=-1)
    assert refused.value.response.json()["error_type"] == "validation"
    assert "temperature" in refused.value.response.json()["error"]


def test_openai_chat_completions_translate_the_users_last_message(server, client):
    chat = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused").chat.completions
    messages = [
        {"role": "system", "content": "Translate into German."},
        {"role": "user", "content": "Save"},
        {"role": "assistant", "content": "..."},
        {"role": "user", "content": [{"type": "text", "text": "Open the file"}]},
    ]  # fmt: skip
    ask = dict(model="tiny-mt", messages=messages, temperature=0, max_tokens=12)
    done = chat.create(**ask)
    assert done.object == "chat.completion" and done.choices[0].message.role == "assistant"
    # the same greedy translation as the native route's, of the last message alone
    native = {"text": "Open the file", "beam_size": 1, "max_new_tokens": 12}
    translated = client.post("/v1/translate", json=native).json()
    assert done.choices[0].message.content == translated["translations"][0]["text"]
    assert done.usage.prompt_tokens == translated["usage"]["input_tokens"]
    assert done.usage.completion_tokens == translated["usage"]["output_tokens"]
    chunks = list(chat.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == done.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage == done.usage and not chunks[-1].choices
    # n choices, seeded; logprobs with the likeliest tokens of each step
    several = chat.create(**ask | {"temperature": 1.0}, n=2, seed=3, logprobs=True, top_logprobs=2)
    again = chat.create(**ask | {"temperature": 1.0}, n=2, seed=3)
    assert [c.message.content for c in several.choices] == [
        c.message.content for c in again.choices
    ]
    counted = sum(len(c.logprobs.content) for c in several.choices)
    assert counted == several.usage.completion_tokens
    for choice in several.choices:
        content = choice.logprobs.content
        # the tokens spell the text; a piece of a character reads "\ufffd" (as vLLM's)
        spelled = "".join(t.token for t in content)
        pattern = "".join(".*?" if c == "\ufffd" else re.escape(c) for c in spelled)
        assert re.fullmatch(pattern, choice.message.content, re.DOTALL), (spelled, choice)
        assert all(len(t.top_logprobs) == 2 for t in content)
        assert all(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob for t in content)
    # The role in each choice's first delta only, as OpenAI's: the package's stream helper
    # joins the roles it reads
    with chat.stream(**ask) as stream:
        for _ in stream:  # (get_final_completion() refuses finish_reason "length")
            pass
        assert stream.current_completion_snapshot.choices[0].message.role == "assistant"
    # At a model's base URL, as TGI's chunks (its own client requires them): a fingerprint,
    # and the role in every delta
    raw = client.post("/models/tiny-mt/v1/chat/completions", json=ask | {"stream": True})
    events = [e for e in sse_data(raw) if e != "[DONE]"]
    assert all(e["system_fingerprint"] and e["choices"][0]["delta"]["role"] for e in events)
    short = chat.create(**ask | {"max_tokens": None}, max_completion_tokens=3)
    assert short.usage.completion_tokens == 3
    assert chat.create(**ask | {"max_tokens": 3}, max_completion_tokens=3).usage == short.usage
    # huggingface_hub's chat, at the model's TGI base URL
    hub = InferenceClient(base_url=f"{server.url}/models/tiny-mt")
    answer = hub.chat_completion(messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == done.choices[0].message.content
    streamed = hub.chat_completion(messages, max_tokens=12, temperature=0, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == text
    # ... and at the server's base URL, where it sends model "dummy" (TGI ignores `model`; its
    # docs have the openai package send "tgi"): both mean the default model
    root = InferenceClient(base_url=server.url)
    answer = root.chat_completion(messages, max_tokens=12, temperature=0)
    assert answer.choices[0].message.content == done.choices[0].message.content
    assert chat.create(**ask | {"model": "tgi"}).choices[0].message.content == text
    url = chat.create(**ask | {"model": server.url})  # @huggingface/inference sends its URL
    assert url.choices[0].message.content == text


@pytest.mark.parametrize(
    "change, param",
    [
        ({"model": "tiny-lm"}, "messages"),  # not a chat model: no chat template
        ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hallo"}]}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, "messages"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "messages"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
        ({"tool_choice": 5}, "tool_choice"),
        ({"functions": [{"name": "f"}]}, "functions"),
        ({"function_call": {"name": "f"}}, "functions"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"top_logprobs": 2}, "top_logprobs"),
        ({"max_tokens": 2, "max_completion_tokens": 3}, "max_completion_tokens"),
        ({"max_tokens": 1000}, "max_tokens"),
        ({"max_completion_tokens": 0}, "max_completion_tokens"),
        ({"max_completion_tokens": 1000}, "max_completion_tokens"),
        ({"max_completion_tokens": 2, "min_tokens": 3}, "min_tokens"),
        ({"n": 0}, "n"),
    ],
)  # fmt: skip
def test_bad_chat_requests_get_400_naming_the_field(client, change, param):
    body = {"model": "tiny-mt", "messages": [{"role": "user", "content": "Open"}]} | change
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"].startswith(param) and error["type"] == "invalid_request_error", error
    assert "more problems" not in error["message"] and param in error["message"]


def test_chat_reads_only_the_last_message_and_answers_tgi_errors_at_a_model_url(client):
    earlier = [
        {"role": "function", "name": "f", "content": "{}"},  # deprecated, but never read
        {"role": "assistant", "content": 5},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
    ]
    last = {"role": "user", "content": "Open"}
    body = {"model": "tiny-mt", "messages": [*earlier, last], "max_tokens": 3}
    assert client.post("/v1/chat/completions", json=body).status_code == 200
    # at a model's TGI base URL, TGI's error shape (huggingface_hub reads its error_type)
    r = client.post("/models/tiny-lm/v1/chat/completions", json=body)
    assert r.status_code == 422 and r.json()["error_type"] == "validation", r.text
    assert "no chat template" in r.json()["error"]
    label = "attnserve_requests_total{model=tiny-lm,route=/models/{model_id}/v1/chat/completions,status=422}"
    assert metrics(client)[label] == 1  # refused before it ran, and still counted for its model


def test_openai_logprobs_list_the_top_tokens_and_streamed_offsets_run_on(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-lm", prompt="Open", max_tokens=8, temperature=0, logprobs=3)
    logprobs = client.completions.create(**ask).choices[0].logprobs
    for chosen, lp, top in zip(
        logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True
    ):
        assert len(top) <= 4  # the 3 most likely, and the chosen one if it is not among them
        assert top[chosen] == pytest.approx(lp) == pytest.approx(max(top.values()))  # greedy
    assert max(len(top) for top in logprobs.top_logprobs) >= 3
    streamed = [
        c.choices[0].logprobs for c in client.completions.create(**ask, stream=True) if c.choices
    ]
    offsets = [o for lp in streamed if lp is not None for o in lp.text_offset]
    assert offsets == logprobs.text_offset
    # every token's logprob, the last one's too (it comes with finish_reason)
    values = [v for lp in streamed if lp is not None for v in lp.token_logprobs]
    assert values == logprobs.token_logprobs
    tops = [t for lp in streamed if lp is not None for t in lp.top_logprobs]
    assert tops == logprobs.top_logprobs


def test_logprobs_of_tokens_that_split_a_character(server):
    """A token that holds a piece of a character: chat's `bytes` are its own bytes (joined,
    they rebuild the text), and completions' `text_offset` counts only whole characters."""
    served = SimpleNamespace(llm=server.engine("tiny-mt"))
    text = "Größe 🎉 ändern"
    ids = served.llm.tokenizer.encode(text)
    assert any(served.llm.tokenizer.decode([i]) == "\ufffd" for i in ids)  # a split character
    chat = routes_chat._logprobs(served, ids, [-1.0] * len(ids), [], 0)["content"]
    assert bytes(b for entry in chat for b in entry["bytes"]) == text.encode()
    completion, end = routes_openai._logprobs(served, ids, [-1.0] * len(ids), [], 5)
    pieces = [served.llm.tokenizer.token_bytes(i) for i in ids]
    whole = [len(b"".join(pieces[:i]).decode("utf-8", "ignore")) for i in range(len(ids) + 1)]
    assert completion["text_offset"] == [5 + n for n in whole[:-1]] and end == 5 + len(text)
    # A piece of a character that never completes is a U+FFFD of its own, as in the text
    tokenizer = served.llm.tokenizer
    emoji, you = tokenizer.encode("🎉"), tokenizer.encode(" you")
    ids = emoji[:1] + you + emoji
    assert (
        len(emoji) > 1
        and b"".join(map(tokenizer.token_bytes, ids)).decode("utf-8", "replace") == "\ufffd you🎉"
    )
    completion, end = routes_openai._logprobs(served, ids, [-1.0] * len(ids), [], 0)
    you_offsets = [1 + len(tokenizer.decode(you[:k])) for k in range(len(you))]
    assert completion["text_offset"] == [0, *you_offsets, *[5] * len(emoji)] and end == 6


def test_openai_echo_returns_the_prompt_with_its_logprobs_streamed_or_not(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    engine = server.engine("tiny-lm")
    ask = dict(model="tiny-lm", prompt="Open the file", max_tokens=6, temperature=0, logprobs=2)
    plain = client.completions.create(**ask).choices[0]
    echoed = client.completions.create(**ask, echo=True).choices[0]
    assert echoed.text == "Open the file" + plain.text
    ids = engine.input_ids("Open the file")
    lp = echoed.logprobs
    assert lp.tokens == [engine.tokenizer.decode([i]) for i in ids] + plain.logprobs.tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None  # nothing predicts it
    expected = server.prompt_logprobs("tiny-lm", ids)
    assert lp.token_logprobs[1 : len(ids)] == pytest.approx(expected[1:], abs=1e-5)
    assert lp.token_logprobs[len(ids) :] == plain.logprobs.token_logprobs
    assert all(len(top) >= 2 for top in lp.top_logprobs[1:])
    assert lp.text_offset[len(ids)] == len("Open the file")
    assert [lp.text_offset[k] for k in range(len(ids))] == [0] + [
        len(engine.tokenizer.decode(ids[:k])) for k in range(1, len(ids))
    ]
    # Streamed: the prompt comes first, then the completion; the same tokens and offsets
    chunks = [c.choices[0] for c in client.completions.create(**ask, echo=True, stream=True)]
    assert "".join(c.text for c in chunks) == echoed.text
    assert chunks[0].text == "Open the file"
    streamed = [c.logprobs for c in chunks if c.logprobs]
    assert [t for x in streamed for t in x.tokens] == lp.tokens
    assert [o for x in streamed for o in x.text_offset] == lp.text_offset
    # max_tokens 0: the prompt alone, scored (how scoring scripts read a text's logprobs)
    scored = client.completions.create(**ask | {"max_tokens": 0}, echo=True)
    assert scored.choices[0].text == "Open the file" and scored.usage.completion_tokens == 0
    assert scored.choices[0].logprobs.token_logprobs == lp.token_logprobs[: len(ids)]
    assert scored.choices[0].finish_reason == "length"
    chunks = list(client.completions.create(**ask | {"max_tokens": 0}, echo=True, stream=True))
    assert [c.choices[0].text for c in chunks] == ["Open the file"]
    # Without logprobs, echo is the text alone
    assert client.completions.create(**ask | {"logprobs": None}, echo=True).choices[0].text == (
        echoed.text
    )


def test_openai_streamed_logprobs_keep_tokens_whose_text_was_held_back(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-lm", prompt="Open", max_tokens=8, temperature=0, logprobs=1)
    plain = client.completions.create(**ask).choices[0].logprobs
    k = next(i for i, t in enumerate(plain.tokens[1:-1], 1) if t.strip())
    # Token k's text is the start of this stop string: the stream holds it back, then sends
    # it with the next token, which does not go on to complete the stop string.
    stop = plain.tokens[k] + "\u2603 never"
    streamed = [
        c.choices[0].logprobs
        for c in client.completions.create(**ask, stop=[stop], stream=True)
        if c.choices and c.choices[0].logprobs
    ]
    assert [t for lp in streamed for t in lp.tokens] == plain.tokens
    assert [o for lp in streamed for o in lp.text_offset] == plain.text_offset
    assert [v for lp in streamed for v in lp.token_logprobs] == plain.token_logprobs


def test_openai_logprobs_of_a_text_cut_by_a_stop_string_spell_the_text(server):
    """The stop string starts inside a token: the logprobs end with that token, cut to the
    text before the stop string, streamed or not (and the tokens after it are left out)."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-lm", prompt="Open", max_tokens=12, temperature=0, logprobs=0)
    whole = client.completions.create(**ask).choices[0]
    lp = whole.logprobs
    k = next(i for i, t in enumerate(lp.tokens[:-1]) if len(t) > 1 and "\ufffd" not in t)
    cut = lp.text_offset[k] + 1  # inside token k
    stop = whole.text[cut:]
    assert whole.text.find(stop) == cut
    stopped = client.completions.create(**ask, stop=[stop]).choices[0]
    assert stopped.text == whole.text[:cut] and stopped.finish_reason == "stop"
    assert "".join(stopped.logprobs.tokens) == stopped.text
    assert stopped.logprobs.tokens == [*lp.tokens[:k], lp.tokens[k][:1]]
    assert stopped.logprobs.text_offset == lp.text_offset[: k + 1]
    assert stopped.logprobs.token_logprobs == lp.token_logprobs[: k + 1]
    streamed = [
        c.choices[0].logprobs
        for c in client.completions.create(**ask, stop=[stop], stream=True)
        if c.choices and c.choices[0].logprobs
    ]
    assert [t for x in streamed for t in x.tokens] == stopped.logprobs.tokens
    assert [o for x in streamed for o in x.text_offset] == stopped.logprobs.text_offset
    assert [v for x in streamed for v in x.token_logprobs] == stopped.logprobs.token_logprobs


def test_chat_logprobs_of_a_text_cut_by_a_stop_string_spell_the_text(server):
    """As completions' (above): the token the stop string starts in is the last, cut to its
    bytes before it, streamed or not."""
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-mt", messages=[{"role": "user", "content": "Open the file"}],
               max_tokens=12, temperature=1, seed=1, logprobs=True)  # fmt: skip
    whole = client.chat.completions.create(**ask).choices[0]
    text, tokens = whole.message.content, whole.logprobs.content
    starts = [len(b"".join(bytes(t.bytes) for t in tokens[:i])) for i in range(len(tokens))]

    def cut_at(i: int) -> int:  # one character into token i, in the text's characters
        return len(text.encode()[: starts[i] + 1].decode())

    k = next(  # a token of several characters, whose rest first occurs where it is
        i for i, t in enumerate(tokens[:-1])
        if len(t.token) > 1 and t.token.isascii() and text.find(t.token[1:]) == cut_at(i)
    )  # fmt: skip
    stop, cut = tokens[k].token[1:], cut_at(k)
    stopped = client.chat.completions.create(**ask, stop=[stop]).choices[0]
    assert stopped.message.content == text[:cut] and stopped.finish_reason == "stop"
    got = stopped.logprobs.content
    assert [t.token for t in got] == [t.token for t in tokens[:k]] + [tokens[k].token[:1]]
    assert b"".join(bytes(t.bytes) for t in got) == text[:cut].encode()
    streamed = [
        t
        for c in client.chat.completions.create(**ask, stop=[stop], stream=True)
        if c.choices and c.choices[0].logprobs
        for t in c.choices[0].logprobs.content
    ]
    assert [(t.token, t.bytes) for t in streamed] == [(t.token, t.bytes) for t in got]


def test_openai_streamed_choices_come_together_and_each_equals_its_non_streamed_self(
    server, client
):
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(
        model="tiny-lm", prompt=["Open", "Save the"], n=2, max_tokens=12, seed=5, logprobs=1,
        extra_body={"ignore_eos": True},
    )  # fmt: skip
    plain = openai_client.completions.create(**ask).choices
    chunks = [c for c in openai_client.completions.create(**ask, stream=True) if c.choices]
    for k, choice in enumerate(plain):
        mine = [c.choices[0] for c in chunks if c.choices[0].index == k]
        assert "".join(c.text for c in mine) == choice.text
        assert [t for c in mine if c.logprobs for t in c.logprobs.tokens] == choice.logprobs.tokens
        assert mine[-1].finish_reason == choice.finish_reason == "length"
    indexes = [c.choices[0].index for c in chunks]
    assert indexes != sorted(indexes)  # interleaved as generated, not one choice after another
    # A client that leaves the stream cancels all four choices, not only the one it was reading.
    cancelled = "attnserve_request_finished_total{finish_reason=cancelled,model=tiny-lm}"
    before = metrics(client).get(cancelled, 0)
    raw = {"model": "tiny-lm", "prompt": ["Open", "Save the"], "n": 2, "max_tokens": 64}
    with httpx.stream(
        "POST", f"{server.url}/v1/completions", json=raw | {"ignore_eos": True, "stream": True}
    ) as r:
        next(r.iter_lines())
    wait_idle(server, "tiny-lm")
    for _ in range(100):  # counted as each stream closes, just after the engine is idle
        if metrics(client).get(cancelled, 0) == before + 4:
            break
        time.sleep(0.02)
    assert metrics(client).get(cancelled, 0) == before + 4


def test_openai_prompts_of_token_ids_as_vllm_takes_them(server, client):
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ids = server.engine("tiny-lm").input_ids("Open the")  # what the text prompt becomes
    ask = dict(model="tiny-lm", max_tokens=6, temperature=0)
    by_text = openai_client.completions.create(prompt="Open the", **ask)
    by_ids = openai_client.completions.create(prompt=ids, **ask)
    assert by_ids.choices[0].text == by_text.choices[0].text
    assert by_ids.usage.prompt_tokens == by_text.usage.prompt_tokens == len(ids)
    several = openai_client.completions.create(prompt=[ids, ids[:1]], **ask)
    assert [c.index for c in several.choices] == [0, 1]
    assert several.choices[0].text == by_text.choices[0].text
    for bad in ([ids, "Open"], [10**6], [[]], [-1]):
        r = client.post("/v1/completions", json={"model": "tiny-lm", "prompt": bad})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt", (bad, r.text)


def test_frequency_penalty_is_the_same_on_openai_and_tgi_routes(server, client):
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-lm", prompt="Open", max_tokens=12, temperature=0.0)
    plain = openai_client.completions.create(**ask).choices[0].text
    penalised = openai_client.completions.create(**ask, frequency_penalty=2.0).choices[0].text
    assert penalised != plain  # the tiny random model repeats itself
    parameters = {"max_new_tokens": 12, "frequency_penalty": 2.0}
    tgi = client.post(
        "/generate", json={"model": "tiny-lm", "inputs": "Open", "parameters": parameters}
    )
    assert tgi.json()["generated_text"] == penalised


def test_openai_logit_bias_and_vllm_extensions(server):
    openai_client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    ask = dict(model="tiny-lm", prompt="Open", max_tokens=8, temperature=0.0)
    free = openai_client.completions.create(**ask).choices[0]
    assert free.finish_reason == "length" and free.text
    eos = openai_client.completions.create(**ask, logit_bias={"2": 100}).choices[0]  # 2: EOS
    assert eos.finish_reason == "stop" and eos.text == ""
    vllm = {"top_k": 1, "repetition_penalty": 1.0}  # top_k 1 samples the greedy token
    extras = openai_client.completions.create(**ask | {"temperature": 1.0}, extra_body=vllm)
    assert extras.choices[0].text == free.text
    # min_p 1 keeps only the likeliest token: sampling at any temperature is greedy
    hot = ask | {"temperature": 2.0, "seed": 7}
    near_greedy = openai_client.completions.create(**hot, extra_body={"min_p": 1.0})
    assert near_greedy.choices[0].text == free.text
    assert openai_client.completions.create(**hot).choices[0].text != free.text
    # stop_token_ids: the output ends with the first one (its text left out, as vLLM's; kept
    # with include_stop_str_in_output)
    details = {"max_new_tokens": 8, "details": True}
    body = {"model": "tiny-lm", "inputs": "Open", "parameters": details}
    tokens = httpx.post(f"{server.url}/generate", json=body).json()["details"]["tokens"]
    assert "".join(t["text"] for t in tokens) == free.text
    k = next(i for i, t in enumerate(tokens) if i >= 2 and t["text"])
    first = next(i for i, t in enumerate(tokens) if t["id"] == tokens[k]["id"])
    stopped = openai_client.completions.create(
        **ask, extra_body={"stop_token_ids": [tokens[k]["id"]]}
    ).choices[0]
    assert stopped.finish_reason == "stop"
    assert stopped.text == "".join(t["text"] for t in tokens[:first])
    kept = openai_client.completions.create(
        **ask,
        extra_body={"stop_token_ids": [tokens[k]["id"]], "include_stop_str_in_output": True},
    ).choices[0]
    assert kept.text == "".join(t["text"] for t in tokens[: first + 1])
    # include_stop_str_in_output: the text ends after the stop string, not before it
    stop = tokens[k]["text"]
    cut = openai_client.completions.create(**ask, stop=[stop]).choices[0].text
    kept = (
        openai_client.completions.create(
            **ask, stop=[stop], extra_body={"include_stop_str_in_output": True}
        )
        .choices[0]
        .text
    )
    assert kept == cut + stop and free.text.startswith(kept)
    # vLLM's options we do not implement are refused by name, unless off
    for name, value in [
        ("use_beam_search", True), ("allowed_token_ids", [5]), ("bad_words", ["x"]),
        ("guided_json", {}), ("prompt_logprobs", 1), ("length_penalty", 2.0),
    ]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as refused:
            openai_client.completions.create(**ask, extra_body={name: value})
        assert refused.value.body["param"] == name
    off = {"use_beam_search": False, "allowed_token_ids": None, "length_penalty": 1.0}
    assert openai_client.completions.create(**ask, extra_body=off).choices[0].text == free.text
    for wrong in ({"min_p": "x"}, {"min_p": 1.5}, {"stop_token_ids": [-1]}, {"best_of": 1, "n": 2}):
        r = httpx.post(f"{server.url}/v1/completions", json=ask | wrong)
        assert r.status_code == 400 and r.json()["error"]["param"].split(".")[0] in wrong, r.text


def test_openai_errors_have_the_openai_shape(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:
        client.completions.create(model="tiny-lm", prompt="Open", temperature=5)
    assert bad.value.body["param"] == "temperature"
    card = client.models.retrieve("tiny-lm")
    assert card.id == "tiny-lm"
    info = httpx.get(f"{server.url}/info").json()["models"]
    assert card.max_model_len == next(m for m in info if m["id"] == "tiny-lm")["max_positions"]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")
    with pytest.raises(openai.BadRequestError) as unknown:  # API.md: unknown model is a 400
        client.completions.create(model="gpt-4", prompt="Open")
    assert unknown.value.body["param"] == "model"
    assert unknown.value.body["code"] == "model_not_found"


# -- concurrency, overload, cancellation ----------------------------------------------------------


def test_64_concurrent_identical_greedy_requests_equal_the_request_alone(server):
    body = {"text": "Save the document as PDF", "beam_size": 1, "max_new_tokens": 30}
    with httpx.Client(base_url=server.url, timeout=60) as c:
        alone = c.post("/v1/translate", json=body).json()["translations"][0]["text"]

    async def flood() -> list[str]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            responses = await asyncio.gather(
                *(c.post("/v1/translate", json=body) for _ in range(64))
            )
        return [r.json()["translations"][0]["text"] for r in responses]

    assert asyncio.run(flood()) == [alone] * 64


def test_two_requests_sent_with_one_request_id_both_get_answers(server):
    body = {"text": "Save the document as PDF", "beam_size": 1, "max_new_tokens": 30}

    async def twice() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
            headers = {"X-Request-Id": "retried"}
            return await asyncio.gather(
                *(c.post("/v1/translate", json=body, headers=headers) for _ in range(2))
            )

    first, second = asyncio.run(twice())
    assert first.status_code == second.status_code == 200
    assert first.json()["translations"] == second.json()["translations"]
    assert first.headers["x-request-id"] == second.headers["x-request-id"] == "retried"


def test_extreme_sampling_values_answer_and_leave_other_requests_alone(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    greedy = client.completions.create(model="tiny-lm", prompt="Open", max_tokens=8, temperature=0)
    for extreme in [
        dict(temperature=1e-300),
        dict(temperature=1.0, top_p=1e-300),
        dict(temperature=1.0, seed=2**64 - 1, n=2),  # seed + index wraps around
    ]:
        response = client.completions.create(
            model="tiny-lm", prompt="Open", max_tokens=8, **extreme
        )
        assert all(c.finish_reason in ("length", "stop") for c in response.choices)
    hf = InferenceClient(base_url=server.url)
    hf.text_generation("Open", max_new_tokens=8, do_sample=True, repetition_penalty=1e-300)
    again = client.completions.create(model="tiny-lm", prompt="Open", max_tokens=8, temperature=0)
    assert again.choices[0].text == greedy.choices[0].text
    wait_idle(server, "tiny-lm")


def all_at_once(server: ServerThread, n: int) -> list[httpx.Response]:
    """`n` generations of 64 tokens sent together."""

    async def send() -> list[httpx.Response]:
        body = {"inputs": "Open", "parameters": {"max_new_tokens": 64}, "model": "tiny-lm"}
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as c:
            return await asyncio.gather(*(c.post("/generate", json=body) for _ in range(n)))

    return asyncio.run(send())


def test_a_flood_beyond_the_queue_gets_429_with_retry_after_and_no_5xx(models):
    with ServerThread(settings(models, max_running_requests=1, max_queued_requests=2)) as small:
        responses = all_at_once(small, 30)
        statuses = [r.status_code for r in responses]
        # The running slot and the queue's 2 are served (more if some finished meanwhile);
        # the rest are refused at once.
        assert set(statuses) <= {200, 429} and statuses.count(429) > 0 and statuses.count(200) >= 3
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error_type"] == "overloaded"
        wait_idle(small, "tiny-lm")


def test_a_burst_that_fits_the_running_slots_and_the_queue_is_all_served(models):
    """All at once on an idle server, before a step admits any: 2 to run and 2 to queue."""
    with ServerThread(settings(models, max_running_requests=2, max_queued_requests=2)) as small:
        for _ in range(3):
            assert [r.status_code for r in all_at_once(small, 4)] == [200] * 4
            wait_idle(small, "tiny-lm")


def test_clients_that_disconnect_leave_nothing_running(server, client):
    before = metrics(client)
    cancelled_lm = "attnserve_request_finished_total{finish_reason=cancelled,model=tiny-lm}"
    body = {"inputs": "Open", "parameters": {"max_new_tokens": 64}, "model": "tiny-lm"}
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/generate_stream", json=body) as r,
    ):
        next(r.iter_lines())  # one event, then hang up
    lines = {"text": "\n".join(f"Open file {i}" for i in range(16)), "stream": True}
    with (
        httpx.Client(base_url=server.url, timeout=60) as c,
        c.stream("POST", "/v1/translate", json=lines | {"max_new_tokens": 64}) as r,
    ):
        next(r.iter_lines())  # a text of 16 lines is 16 engine requests: all are aborted
    batch = {"text": [f"Open file {i}" for i in range(64)], "beam_size": 8, "max_new_tokens": 64}
    with pytest.raises(httpx.ReadTimeout):  # non-streaming: give up before the answer
        httpx.post(f"{server.url}/v1/translate", json=batch, timeout=0.5)
    wait_idle(server, "tiny-lm")
    wait_idle(server, "tiny-mt")
    after = metrics(client)
    assert after["attnserve_requests_running{model=tiny-lm}"] == 0
    assert after["attnserve_kv_cache_usage_ratio{model=tiny-lm}"] == 0
    assert after[cancelled_lm] >= before.get(cancelled_lm, 0) + 1
    assert after["attnserve_request_finished_total{finish_reason=cancelled,model=tiny-mt}"] >= 1
    assert after["attnserve_requests_running{model=tiny-mt}"] == 0
    # The non-streamed batch is answered 499 (nginx's "client closed request"), not a 5xx that
    # would page someone: the 64 aborted generations must not read as a server error.
    translate = "attnserve_requests_total{model=tiny-mt,route=/v1/translate,status=%s}"
    for _ in range(100):  # counted when the route returns, just after the engine is idle
        after = metrics(client)
        if after.get(translate % 499, 0) > before.get(translate % 499, 0):
            break
        time.sleep(0.02)
    assert after.get(translate % 499, 0) == before.get(translate % 499, 0) + 1
    assert after.get(translate % 500, 0) == before.get(translate % 500, 0)


def test_refused_bodies_are_counted_under_the_model_they_name_or_their_routes_default(client):
    def counted(model: str, route: str, status: int) -> float:
        key = f"attnserve_requests_total{{model={model},route={route},status={status}}}"
        return metrics(client).get(key, 0)

    cases = [  # body, where it is counted
        ({"model": "tiny-lm", "prompt": "Open", "max_tokens": -1}, "tiny-lm"),
        ({"prompt": "Open", "max_tokens": -1}, "tiny-mt"),  # the first model
        ({"model": "nope", "prompt": "Open", "max_tokens": -1}, ""),  # not a served model
    ]
    for body, model in cases:
        before = counted(model, "/v1/completions", 400)
        assert client.post("/v1/completions", json=body).status_code == 400
        assert counted(model, "/v1/completions", 400) == before + 1, body
    before = counted("tiny-mt", "/v1/translate", 422)
    assert client.post("/v1/translate", json={"text": "Open", "beam_size": 0}).status_code == 422
    assert counted("tiny-mt", "/v1/translate", 422) == before + 1  # the translation model


def test_token_counters_count_a_prompt_once_and_the_tokens_of_cancelled_requests(models):
    with ServerThread(settings(models)) as running, httpx.Client(base_url=running.url) as c:
        lm = "{model=tiny-lm}"
        assert metrics(c).get(f"attnserve_batch_size_count{lm}", 0) == 0  # the warm-up is not
        # every counter of a model has a series from the start, at 0
        fresh = metrics(c)
        for name in ("prompt_tokens", "generation_tokens", "preemptions"):
            assert fresh[f"attnserve_{name}_total{lm}"] == 0, name
        for reason in ("stop", "length", "cancelled", "timeout", "error"):
            key = f"attnserve_request_finished_total{{finish_reason={reason},model=tiny-lm}}"
            assert fresh[key] == 0, reason
        body = {"model": "tiny-lm", "prompt": "Open the", "max_tokens": 5, "ignore_eos": True}
        usage = c.post("/v1/completions", json=body | {"n": 4}).json()["usage"]
        counted = metrics(c)
        assert counted[f"attnserve_prompt_tokens_total{lm}"] == usage["prompt_tokens"]
        assert counted[f"attnserve_generation_tokens_total{lm}"] == usage["completion_tokens"] == 20
        with c.stream(
            "POST", "/v1/completions", json=body | {"max_tokens": 60, "stream": True}
        ) as r:
            next(r.iter_lines())  # one token, then the client leaves
        wait_idle(running, "tiny-lm")
        cancelled = "attnserve_request_finished_total{finish_reason=cancelled,model=tiny-lm}"
        for _ in range(100):
            after = metrics(c)
            if after.get(cancelled, 0) == 1:
                break
            time.sleep(0.02)
        assert after[f"attnserve_prompt_tokens_total{lm}"] == 2 * usage["prompt_tokens"]
        assert after[f"attnserve_generation_tokens_total{lm}"] > 20


def test_metrics_parse_and_the_histograms_move(client):
    before = metrics(client)
    client.post("/v1/translate", json={"text": "Open the file", "beam_size": 1})
    after = metrics(client)
    for name in [
        "attnserve_time_to_first_token_seconds_count{model=tiny-mt}",
        "attnserve_e2e_request_latency_seconds_count{model=tiny-mt}",
        "attnserve_request_queue_time_seconds_count{model=tiny-mt}",
        "attnserve_batch_size_count{model=tiny-mt}",
        "attnserve_step_duration_seconds_count{model=tiny-mt}",
    ]:
        assert after[name] > before.get(name, 0), name
    key = "attnserve_requests_total{model=tiny-mt,route=/v1/translate,status=200}"
    assert after[key] == before.get(key, 0) + 1
    assert after["attnserve_generation_tokens_total{model=tiny-mt}"] > 0


def test_inter_token_latency_counts_the_gaps_between_tokens_and_no_more():
    """A request's token outputs are counted once each: the first in time to first token, the
    others in inter-token latency; a deadline's finish (no token) and a beam search's one
    output at the end add no gap (fake outputs: a deadline mid-decode is a race otherwise)."""
    from service.api.generation import _observed
    from service.api.metrics import Metrics

    def out(new: list[int], done: list[int], reason=None) -> RequestOutput:
        timings = dict.fromkeys(("queue_ms", "prefill_ms", "decode_ms", "total_ms"), 1.0)
        return RequestOutput("r", new, [0.0] * len(new), "", done, "", 3, len(done), reason,
                             timings_ms=timings)  # fmt: skip

    async def observe(outputs: list[RequestOutput]) -> dict[str, float]:
        async def stream():
            for o in outputs:
                yield o

        m = Metrics()
        served = SimpleNamespace(model_id="m", record_finish=lambda: None)
        ctx = SimpleNamespace(metrics=m, arrival=time.perf_counter())
        async for _ in _observed(served, stream(), ctx, 3):
            pass
        text = prometheus_client.generate_latest(m.registry).decode()
        return parse_metrics(text)

    tokens = [out([5], [5]), out([6], [5, 6]), out([7], [5, 6, 7])]
    sampled = [*tokens[:2], out([7], [5, 6, 7], FinishReason.STOP)]
    cut = [*tokens, out([], [5, 6, 7], FinishReason.TIMEOUT)]
    beams = [out([], []), out([], []), out([], [5, 6, 7], FinishReason.STOP)]
    for outputs, gaps in ((sampled, 2), (cut, 2), (beams, 0)):
        counted = asyncio.run(observe(outputs))
        assert counted["attnserve_time_to_first_token_seconds_count{model=m}"] == 1
        assert counted.get("attnserve_inter_token_latency_seconds_count{model=m}", 0) == gaps


def test_the_route_label_is_the_routes_template_not_the_url(client):
    """Clients must not add series by sending new URLs (Prometheus' cardinality)."""
    client.post("/models/tiny-lm/generate", json={"inputs": "Open"})
    for junk in ("/models/tiny-lm/nope", "/models/nope/generate", "/models/x/y/z"):
        assert client.post(junk, json={"inputs": "Open"}).status_code == 422
    families = text_string_to_metric_families(client.get("/metrics").text)
    requests = next(family for family in families if family.name == "attnserve_requests")
    routes = {sample.labels["route"] for sample in requests.samples}
    assert "/models/{model_id}/generate" in routes and "/models/{model_id}" in routes
    assert not any("nope" in route or "/x/" in route for route in routes), routes


# -- deadlines and failures inside generation ----------------------------------------------------


@pytest.fixture
def slow_server(models):
    """tiny-mt never says EOS and each of its steps takes ≥ 10 ms: deadlines are hit on purpose."""
    if engines_in_a_process():
        pytest.skip("patches the engine, which runs in another process here")
    with ServerThread(settings(models, max_running_requests=1)) as running:
        runner = running.engine("tiny-mt").runner
        eos = running.engine("tiny-mt").model_config.eos_token_id
        prefill, decode = runner.prefill, runner.decode

        def slow(step):
            def run(requests):
                time.sleep(0.01)
                logits = [t.clone() for t in step(requests)]
                for t in logits:
                    t[:, eos] = float("-inf")
                return logits

            return run

        runner.prefill, runner.decode = slow(prefill), slow(decode)
        yield running


def test_deadline_in_the_queue_is_504_and_while_running_keeps_partial_text(slow_server):
    hog = {"text": "Open", "beam_size": 1, "max_new_tokens": 40}

    async def scenario():
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as c:
            first = asyncio.ensure_future(c.post("/v1/translate", json=hog))
            await asyncio.sleep(0.1)  # first holds the only running slot for ≥ 0.4 s
            second = await c.post("/v1/translate", json=hog | {"timeout_s": 0.1})
            return await first, second

    first, second = asyncio.run(scenario())
    assert second.status_code == 504 and second.json()["error_type"] == "timeout"
    assert first.status_code == 200
    assert first.json()["usage"]["output_tokens"] == 40
    r = httpx.post(f"{slow_server.url}/v1/translate", json=hog | {"timeout_s": 0.2}, timeout=30)
    assert r.status_code == 200
    (partial,) = r.json()["translations"]
    assert partial["finish_reason"] == "timeout"
    assert 0 < r.json()["usage"]["output_tokens"] < 40
    cut = {"model": "tiny-mt", "prompt": "Open", "max_tokens": 40}
    slow_server.app.state.settings.request_timeout_s = 0.2  # the OpenAI route's deadline
    r = httpx.post(f"{slow_server.url}/v1/completions", json=cut, timeout=30)
    (choice,) = r.json()["choices"]
    assert choice["finish_reason"] == "length"  # OpenAI has no "timeout": cut short
    assert 0 < r.json()["usage"]["completion_tokens"] < 40
    wait_idle(slow_server, "tiny-mt")


def test_a_stream_whose_deadline_passes_in_the_queue_ends_with_an_error_event_of_its_routes_shape(
    slow_server,
):
    hog = {"text": "Open", "beam_size": 1, "max_new_tokens": 40}
    ask = {"model": "tiny-mt", "prompt": "Open", "max_tokens": 10, "stream": True}

    async def streamed(path: str) -> list[str]:
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as c:
            first = asyncio.ensure_future(c.post("/v1/translate", json=hog))
            await asyncio.sleep(0.1)  # first holds the only running slot for ≥ 0.4 s
            slow_server.app.state.settings.request_timeout_s = 0.1
            try:
                r = await c.post(path, json=ask)
            finally:
                slow_server.app.state.settings.request_timeout_s = 60
            assert (await first).status_code == 200
            return [line[6:] for line in r.text.splitlines() if line.startswith("data: ")]

    *events, done = asyncio.run(streamed("/v1/completions"))
    assert done == "[DONE]" and json.loads(events[-1])["error"]["type"]  # OpenAI's shape
    *events, done = asyncio.run(streamed("/models/tiny-mt/v1/completions"))
    assert done == "[DONE]" and json.loads(events[-1])["error_type"] == "timeout"  # TGI's there
    wait_idle(slow_server, "tiny-mt")


def test_cancelled_requests_count_their_tokens_a_beam_search_and_one_still_queued(slow_server):
    beam = {"text": "Open the file", "beam_size": 4, "max_new_tokens": 40}
    queued = {"text": "Save", "beam_size": 1, "max_new_tokens": 40}
    engine = slow_server.engine("tiny-mt")
    mt = "{model=tiny-mt}"

    async def scenario():
        async with httpx.AsyncClient(base_url=slow_server.url, timeout=60) as c:
            before = parse_metrics((await c.get("/metrics")).text)
            running = asyncio.ensure_future(c.post("/v1/translate", json=beam))
            await asyncio.sleep(0.2)  # the beam search holds the only running slot
            waiting = asyncio.ensure_future(c.post("/v1/translate", json=queued))
            await asyncio.sleep(0.1)
            assert engine.scheduler.waiting  # the second one is still queued
            for task in (running, waiting):  # both clients leave
                task.cancel()
            await asyncio.gather(running, waiting, return_exceptions=True)
            return before

    before = asyncio.run(scenario())
    wait_idle(slow_server, "tiny-mt")
    cancelled = "attnserve_request_finished_total{finish_reason=cancelled,model=tiny-mt}"
    with httpx.Client(base_url=slow_server.url) as c:
        for _ in range(100):
            after = metrics(c)
            if after.get(cancelled, 0) == before.get(cancelled, 0) + 2:
                break
            time.sleep(0.02)
    assert after[cancelled] == before.get(cancelled, 0) + 2
    num_input = len(engine.input_ids(beam["text"])) + len(engine.input_ids(queued["text"]))
    prompt = f"attnserve_prompt_tokens_total{mt}"
    assert after[prompt] - before.get(prompt, 0) == num_input
    generated = f"attnserve_generation_tokens_total{mt}"
    assert 0 < after[generated] - before.get(generated, 0) < 40  # the beam search's steps


def test_chat_streams_whose_clients_leave_while_queued_are_cancelled_and_counted(slow_server):
    """A streamed chat request whose client hangs up at once, while it waits for the only
    running slot: it is cancelled (not left in the queue) and counted, prompt included."""
    engine = slow_server.engine("tiny-mt")
    cancelled = "attnserve_request_finished_total{finish_reason=cancelled,model=tiny-mt}"
    prompt = "attnserve_prompt_tokens_total{model=tiny-mt}"
    hog = {"text": "Open", "beam_size": 1, "max_new_tokens": 60}
    chat = {"model": "tiny-mt", "messages": [{"role": "user", "content": "Save"}], "stream": True}
    host, port = slow_server.url.removeprefix("http://").split(":")
    payload = json.dumps(chat).encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    with httpx.Client(base_url=slow_server.url, timeout=60) as c:
        before = metrics(c)
        hogging = threading.Thread(target=c.post, args=("/v1/translate",), kwargs={"json": hog})
        hogging.start()
        while not engine.scheduler.running:
            time.sleep(0.01)
        for _ in range(2):  # send, and hang up at once
            with socket.create_connection((host, int(port))) as conn:
                conn.sendall(request)
            time.sleep(0.05)
        for _ in range(200):
            after = metrics(c)
            if after.get(cancelled, 0) == before.get(cancelled, 0) + 2:
                break
            time.sleep(0.02)
        assert after.get(cancelled, 0) == before.get(cancelled, 0) + 2
        assert not engine.scheduler.waiting and engine.scheduler.running  # the hog goes on
        num_input = len(engine.input_ids("Open")) + 2 * len(engine.input_ids("Save"))
        hogging.join()
        wait_idle(slow_server, "tiny-mt")
        assert metrics(c)[prompt] - before.get(prompt, 0) == num_input


@needs_engine_thread
def test_a_failure_inside_generation_is_a_500_or_an_error_event_and_the_server_lives_on(models):
    with ServerThread(settings(models)) as running:
        runner = running.engine("tiny-lm").runner
        decode = runner.decode

        def broken(requests):
            raise RuntimeError("injected fault")

        runner.decode = broken
        with httpx.Client(base_url=running.url, timeout=30) as c:
            body = {"model": "tiny-lm", "inputs": "Open", "parameters": {"max_new_tokens": 8}}
            r = c.post("/generate", json=body)
            assert r.status_code == 500 and r.json()["error_type"] == "generation"
            events = sse_data(c.post("/generate_stream", json=body))
            assert "error" in events[-1]
            runner.decode = decode
            assert c.post("/generate", json=body).status_code == 200
        wait_idle(running, "tiny-lm")


def test_an_unexpected_error_is_a_json_500_and_the_connection_stays_usable(client, monkeypatch):
    def broken(body, request):
        raise KeyError("a bug")

    monkeypatch.setattr("service.api.routes_translate.sampling_params", broken)
    r = client.post("/v1/translate", json={"text": "Open"})
    assert r.status_code == 500 and r.json()["error_type"] == "generation"
    monkeypatch.undo()
    assert client.post("/v1/translate", json={"text": "Open"}).status_code == 200  # same client


def test_a_batch_refused_part_way_leaves_nothing_queued(models):
    with ServerThread(settings(models, max_running_requests=1, max_queued_requests=2)) as small:
        body = {"text": [f"Open file {i}" for i in range(6)], "beam_size": 1}
        r = httpx.post(f"{small.url}/v1/translate", json=body, timeout=60)
        assert r.status_code == 422 and "text" in r.json()["error"]  # can never fit the queue
        too_long = {"text": ["Open file", "word " * 200], "beam_size": 1}  # the first is queued
        r = httpx.post(f"{small.url}/v1/translate", json=too_long, timeout=60)
        assert r.status_code == 422
        wait_idle(small, "tiny-mt")
        assert small.app.state.registry.models["tiny-mt"].async_engine._streams == {}
        ok = httpx.post(f"{small.url}/v1/translate", json=body | {"text": ["a", "b"]}, timeout=60)
        assert ok.status_code == 200


def test_health_and_ready_answer_while_the_models_load(models, monkeypatch):
    from service.api.registry import ModelRegistry

    loading, load = threading.Event(), ModelRegistry.load

    def slow_load(*args):
        loading.wait(30)
        return load(*args)

    monkeypatch.setattr(ModelRegistry, "load", staticmethod(slow_load))
    server = ServerThread(settings(models))
    server.thread.start()
    try:
        for _ in range(200):  # until it listens
            try:
                health = httpx.get(f"{server.url}/health")
                break
            except httpx.TransportError:
                time.sleep(0.05)
        assert health.status_code == 200
        assert httpx.get(f"{server.url}/ready").status_code == 503
        r = httpx.post(f"{server.url}/v1/translate", json={"text": "Open"})
        assert r.status_code == 503 and r.json()["error_type"] == "not_ready"
        assert httpx.get(f"{server.url}/v1/models").status_code == 503
        loading.set()
        for _ in range(600):
            if httpx.get(f"{server.url}/ready").status_code == 200:
                break
            time.sleep(0.05)
        assert httpx.post(f"{server.url}/v1/translate", json={"text": "Open"}).status_code == 200
    finally:
        loading.set()
        server.__exit__()


@needs_engine_thread
def test_one_thread_runs_the_models(models, monkeypatch):
    """Loading, warm-up, both models' steps, alignments and prompt logprobs all run on one
    thread, the engine thread: torch ops from a second thread would slow every op down (the
    OpenMP teams would outnumber the cores; docs/engine.md)."""
    from service.engine import LLMEngine

    threads: dict[str, set[str]] = {}

    def spy(name, fn):
        def recorded(*args, **kwargs):
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return fn(*args, **kwargs)

        return recorded

    load = LLMEngine.from_checkpoint
    monkeypatch.setattr(LLMEngine, "from_checkpoint", staticmethod(spy("load", load)))
    for name in ("generate", "step", "alignment", "prompt_logprobs"):
        monkeypatch.setattr(LLMEngine, name, spy(name, getattr(LLMEngine, name)))
    with ServerThread(settings(models)) as running, httpx.Client(base_url=running.url) as c:
        translate = {"model": "tiny-mt", "text": "Open the file", "return_alignments": True}
        assert c.post("/v1/translate", json=translate).status_code == 200
        echo = {"model": "tiny-lm", "prompt": "Open the", "echo": True, "logprobs": 1}
        assert c.post("/v1/completions", json=echo | {"max_tokens": 2}).status_code == 200
        details = {"details": True, "decoder_input_details": True, "max_new_tokens": 2}
        body = {"model": "tiny-lm", "inputs": "Open", "parameters": details}
        assert c.post("/generate", json=body).status_code == 200
    assert threads == dict.fromkeys(
        ["load", "generate", "step", "alignment", "prompt_logprobs"], {"engine"}
    )


def test_the_bundled_models_translate_and_generate_end_to_end():
    """The shipped checkpoints, served as `make serve` serves them."""
    with (
        ServerThread(Settings(port=free_port())) as bundled,
        httpx.Client(base_url=bundled.url, timeout=60) as c,
    ):
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["en-de", "en-lm"]
        r = c.post("/v1/translate", json={"text": ["Open the file", "Delete all selected items?"]})
        first, second = (t["text"] for t in r.json()["translations"])
        assert first == "Datei öffnen"
        assert "löschen" in second
        # what the model cannot read comes back as it was, never as stray bytes
        texts = ["The word שלום means peace.", "日本語", "Price: 5 € a month"]
        r = c.post("/v1/translate", json={"text": texts})
        hebrew, japanese, price = (t["text"] for t in r.json()["translations"])
        assert "שלום" in hebrew and "Frieden" in hebrew and japanese == "日本語"
        assert "5 €" in price and "\ufffd" not in hebrew + price
        generated = c.post(
            "/generate", json={"model": "en-lm", "inputs": "Click here to", "parameters": {}}
        ).json()["generated_text"]
        assert generated.strip()
        # /info's limits are what each model can take (under the server's 256): a request sized
        # by them is served. A decoder-only model's prompt and new tokens share its positions.
        mt, lm = c.get("/info").json()["models"]
        assert mt["limits"]["max_new_tokens"] < mt["max_positions"] < 256
        body = {"text": "Open", "max_new_tokens": mt["limits"]["max_new_tokens"]}
        assert c.post("/v1/translate", json=body).status_code == 200
        room = lm["limits"]["max_new_tokens"] - 1  # "Click" is 2 tokens with BOS, not 1
        body = {"model": "en-lm", "prompt": "Click", "max_tokens": room}
        assert c.post("/v1/completions", json=body).status_code == 200


@pytest.mark.parametrize("at_fault, param", [("max_new_tokens", "max_tokens"), ("input", "prompt")])
def test_a_request_too_long_blames_the_field_at_fault(at_fault, param):
    def refuse(*args):
        raise RequestTooLong("does not fit", at_fault)

    served = SimpleNamespace(
        is_translation=False,
        async_engine=SimpleNamespace(is_running=True, generate=refuse),
        llm=SimpleNamespace(input_ids=lambda prompt: [1, 2]),
    )
    ctx = Context(metrics=None, arrival=0.0, input_param="prompt", max_tokens_param="max_tokens")
    with pytest.raises(ApiError) as refused:
        start(served, "hi", None, ctx)
    assert refused.value.param == param and refused.value.status == 422


def test_the_reserve_full_length_setting_reaches_every_engine(models):
    with ServerThread(settings(models, reserve_full_length=True)) as reserving:
        engines = [m.llm for m in reserving.app.state.registry.models.values()]
        assert all(e.config.scheduler.reserve_full_length for e in engines)
        r = httpx.post(f"{reserving.url}/v1/translate", json={"text": "Open"}, timeout=60)
        assert r.status_code == 200, r.text
