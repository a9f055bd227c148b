"""A real attnserve server on a free loopback port, with tiny random models, for the API tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import uvicorn

from loadtests.bench_http import wait_ready
from model.checkpoint import save_checkpoint
from model.tokenizer import Tokenizer, train_tokenizer
from service.api.app import create_app
from service.api.settings import Settings
from tests.conftest import tiny_model

ROOT = Path(__file__).resolve().parents[1]
TEXTS = ["Open the file", "Save the document as PDF", "Größe ändern", "Datei öffnen €"] * 20


def engines_in_a_process() -> bool:
    """Whether servers started here run their engines in a process of their own: the Makefile
    runs the API tests a second time so, with ATTNSERVE_ENGINE_PROCESS=1 (`--engine-process`)."""
    return Settings(models=[]).engine_process


# A test that reaches into the engine in the server's thread (its runner, its thread).
needs_engine_thread = pytest.mark.skipif(
    engines_in_a_process(), reason="patches the engine, which runs in another process here"
)


def tiny_checkpoints(directory: Path) -> list[str]:
    """A tiny translator ("tiny-mt") and generator ("tiny-lm") saved as model directories."""
    tokenizer = Tokenizer(train_tokenizer(TEXTS, vocab_size=300))
    specs = []
    for model_id, architecture in [("tiny-mt", "encoder-decoder"), ("tiny-lm", "decoder-only")]:
        model = tiny_model(architecture, vocab_size=tokenizer.vocab_size, max_positions=512)
        save_checkpoint(model, tokenizer, directory / model_id)
        specs.append(f"{model_id}={directory / model_id}")
    return specs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerThread:
    """uvicorn in a thread (no signal handlers there); `url` once /ready says so."""

    def __init__(self, settings: Settings):
        self.app = create_app(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=settings.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"http://127.0.0.1:{settings.port}"

    def __enter__(self) -> ServerThread:
        self.thread.start()
        if not wait_ready(self.url, 60, self.thread.is_alive):
            raise RuntimeError("the server did not become ready")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def engine(self, model_id: str):
        """The model's LLMEngine, or with engines in a process its RemoteEngine."""
        return self.app.state.registry.models[model_id].llm

    def prompt_logprobs(self, model_id: str, ids: list[int]) -> list[float | None]:
        """The engine's own prompt logprobs, computed where its steps run."""
        engine = self.app.state.registry.models[model_id].async_engine
        return asyncio.run(engine.run("prompt_logprobs", ids))[0]


def start_server(models: list[str], *flags: str) -> tuple[subprocess.Popen, str]:
    """`python -m service` as a process of its own on a free port; returns it and its URL once
    /ready says so."""
    port = free_port()
    args = [sys.executable, "-m", "service", "--port", str(port), "--log-level", "warning"]
    for spec in models:
        args += ["--model", spec]
    env = os.environ | {"ATTNSERVE_MAX_NEW_TOKENS": "64"}  # an env var, overridden by no flag
    process = subprocess.Popen([*args, *flags], cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    if not wait_ready(url, 60, lambda: process.poll() is None):
        process.kill()
        raise RuntimeError("the server did not start")
    return process, url
