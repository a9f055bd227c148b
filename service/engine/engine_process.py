"""The engines in a process of their own (`--engine-process`), as vLLM's engine core and TGI's
shards run apart from their HTTP servers.

Why. A busy Python thread beside the engine's thread cost it ~40% of its throughput through the
GIL they share, and the event loop of a loaded server is such a thread (docs/engine.md, "What the event loop
costs the engine"). In a process of their own, the engine's steps share no GIL with it.

    HTTP process                                        engine process (spawned)
    AsyncEngine.generate → RemoteEngine.add_request ──pipe──▶ serve(): LLMEngine.add_request
    AsyncEngine.deliver ◀── EngineProcess._read ◀──pipe── every step: its outputs and stats

`EngineProcess` stands where `EngineThread` stands, and `RemoteEngine` where `LLMEngine` does:
`AsyncEngine` and the HTTP layer run on either pair. A `RemoteEngine` has the model's tokenizer
and limits here (`Intake`), so it refuses a request at once, with the engine's own errors, and
counts the requests it sent until their last output comes back; the model and its KV cache are
only in the engine process.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import pickle
import signal
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch

from model.checkpoint import load_tokenizer
from model.config import TransformerConfig
from service.engine.block_manager import BlockManager
from service.engine.config import EngineConfig, StepStats
from service.engine.engine import LLMEngine
from service.engine.intake import Intake, cache_blocks
from service.engine.request import (
    FinishReason,
    Request,
    RequestOutput,
    SamplingParams,
)
from service.engine.scheduler import Scheduler

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from service.engine.async_engine import AsyncEngine

log = logging.getLogger(__name__)

# The error of the requests in flight when the engine process dies: a 503, as the drain's.
ENGINE_GONE = "the engine process stopped"


class EngineProcess:
    """Starts the engine process, which loads and warms up every model (the constructor waits
    for that: RuntimeError if it fails), and carries requests there and outputs back."""

    def __init__(self, paths: dict[str, Path], config: EngineConfig):
        context = multiprocessing.get_context("spawn")  # not fork: torch's threads do not fork
        self._conn, child_conn = context.Pipe()
        self._process = context.Process(
            target=serve, args=(paths, config, child_conn), name="attnserve-engine", daemon=True
        )
        self._process.start()
        child_conn.close()  # the child's end: ours would keep the pipe open if the child died
        try:
            kind, payload = self._conn.recv()
        except EOFError:  # it died without a word (killed, or out of memory)
            self._process.join(10)
            kind, payload = "error", f"it exited with code {self._process.exitcode}"
        if kind != "ready":
            self._process.join(10)
            raise RuntimeError(f"the engine process did not start: {payload}")
        self.engines = {
            model_id: RemoteEngine(model_id, path, config, payload[model_id], self)
            for model_id, path in paths.items()
        }
        self._async_engines: dict[str, AsyncEngine] = {}
        self._send_lock = threading.Lock()  # the event loop and `run`'s callers both send
        self._calls: dict[int, Future] = {}
        self._call_ids = itertools.count()
        self._alive = True
        self._reader = threading.Thread(target=self._read, name="engine-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int | None:
        return self._process.pid

    # -- what AsyncEngine asks of where its engine runs (as of EngineThread) ---------------------

    def add(self, engine: AsyncEngine) -> None:
        self._async_engines[_remote(engine).model_id] = engine

    def remove(self, engine: AsyncEngine, timeout: float = 10.0) -> None:
        self._async_engines.pop(_remote(engine).model_id, None)
        if not self._async_engines:
            self.stop(timeout)

    def runs(self, engine: AsyncEngine) -> bool:
        return self._alive and self._async_engines.get(_remote(engine).model_id) is engine

    def wake(self) -> None:
        """Nothing to do: what is sent wakes the engine process."""

    def run_method(self, engine: AsyncEngine, method: str, *args: Any) -> Future:
        """`method(*args)` of the model's engine, there, between its steps."""
        future: Future = Future()
        call_id = next(self._call_ids)
        self._calls[call_id] = future
        if not self.send(("call", call_id, _remote(engine).model_id, method, args)):
            self._calls.pop(call_id, None)
            future.set_exception(RuntimeError(ENGINE_GONE))
        return future

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the engine process after its current step."""
        self.send(("stop",))
        self._process.join(timeout)
        if self._process.is_alive():
            self._process.kill()
            self._process.join()
        self._alive = False

    # -- the pipe ---------------------------------------------------------------------------------

    def send(self, message: tuple) -> bool:
        """Send `message` to the engine process; False if it is gone."""
        with self._send_lock:
            try:
                self._conn.send(message)
                return True
            except (OSError, ValueError):  # the pipe is broken or closed
                return False

    def _read(self) -> None:
        """The reader thread: every message from the engine process, until it goes away."""
        while True:
            try:
                message = self._conn.recv()
            except (EOFError, OSError):
                break
            try:
                self._receive(message)
            except Exception:  # one message gone wrong must not stop every other stream
                log.exception("a message from the engine process failed")
        self._alive = False
        self._fail_everything(ENGINE_GONE)

    def _receive(self, message: tuple) -> None:
        kind, *args = message
        if kind == "step":
            model_id, outputs, stats = args
            self.engines[model_id].stepped(outputs, stats)
            engine = self._async_engines.get(model_id)
            if engine is not None:
                engine.deliver(outputs)
        elif kind == "result":
            call_id, ok, value = args
            future = self._calls.pop(call_id)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)

    def _fail_everything(self, error: str) -> None:
        """The engine process is gone: every request it had finishes failed, every call too."""
        for model_id, llm in self.engines.items():
            outputs = [_failed(request_id, error) for request_id in llm.unfinished()]
            llm.stepped(outputs, None)
            engine = self._async_engines.get(model_id)
            if engine is not None:
                engine.deliver(outputs)
        for call_id in list(self._calls):
            self._calls.pop(call_id).set_exception(RuntimeError(error))


class RemoteEngine(Intake):
    """A model's engine as the HTTP process sees it: what `LLMEngine` offers the HTTP layer,
    with the steps in the engine process."""

    def __init__(
        self,
        model_id: str,
        path: Path,
        config: EngineConfig,
        description: dict,
        process: EngineProcess,
    ):
        self.model_id = model_id
        self.config = config
        self.model_config = TransformerConfig.load(Path(path) / "config.json")
        self.tokenizer = load_tokenizer(path, self.model_config)
        # the engine's own block count, for Intake's arithmetic: nothing is allocated here
        self.blocks = BlockManager(cache_blocks(self.model_config, config), config.block_size)
        self.scheduler = Scheduler(config.scheduler, self.blocks, self.is_encoder_decoder)
        self.on_step = None  # called with each step's StepStats, on the reader thread
        self.last_stats: StepStats | None = None
        self._description = description
        self._process = process
        self._requests: dict[str, Request] = {}  # sent, and their last output not back yet
        self._lock = threading.Lock()
        self._ids = itertools.count()

    def describe(self) -> dict:
        return dict(self._description)

    @property
    def num_waiting(self) -> int:
        return self.last_stats.num_waiting if self.last_stats else 0

    def unfinished(self) -> list[str]:
        with self._lock:
            return list(self._requests)

    def _enqueue(self, request: Request) -> None:
        """Send an accepted request to the engine process (Intake.add_request)."""
        message = (
            "add", self.model_id, request.request_id, request.input_ids, request.params,
            request.timings.arrival,
        )  # fmt: skip
        if not self._process.send(message):
            raise RuntimeError(ENGINE_GONE)

    def abort(self, request_id: str, error: str | None = None) -> None:
        if request_id in self._requests:
            self._process.send(("abort", self.model_id, request_id, error))

    def stepped(self, outputs: list[RequestOutput], stats: StepStats | None) -> None:
        """A step's outputs and stats came back (on the reader thread)."""
        with self._lock:
            for output in outputs:
                if output.finished:
                    self._requests.pop(output.request_id, None)
        if stats is not None:
            self.last_stats = stats
            if self.on_step is not None:
                try:
                    self.on_step(stats)
                except Exception:  # as LLMEngine's: a metrics hook must not lose the outputs
                    log.exception("the on_step callback failed")


def _remote(engine: AsyncEngine) -> RemoteEngine:
    """The engine an EngineProcess runs, as the HTTP process sees it."""
    return cast(RemoteEngine, engine.llm)


def _failed(request_id: str, error: str) -> RequestOutput:
    """The last output of a request that failed where nothing knows how far it had come (its
    timings are unknown: it counts as never scheduled)."""
    return RequestOutput(
        request_id, [], [], "", [], "", 0, 0, FinishReason.ERROR, error=error, was_scheduled=False
    )


# -- the engine process ---------------------------------------------------------------------------


def serve(paths: dict[str, Path], config: EngineConfig, conn: Connection) -> None:
    """The engine process: load and warm up the models, say "ready", then step whichever have
    requests, taking in what the HTTP process sends between steps. It leaves signals to the
    HTTP process (a Ctrl-C or SIGTERM to the process group must let that one drain) and ends
    when told to or when the HTTP process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if config.num_threads is None:  # leave a core to the HTTP process (docs/engine.md)
        torch.set_num_threads(max(1, torch.get_num_threads() - 1))
    try:
        engines = {
            model_id: LLMEngine.from_checkpoint(path, config) for model_id, path in paths.items()
        }
        for llm in engines.values():  # so the first user does not pay for it
            llm.generate(["Hello"], SamplingParams(max_new_tokens=2))
    except BaseException as error:
        conn.send(("error", f"{type(error).__name__}: {error}"))
        return
    conn.send(("ready", {model_id: llm.describe() for model_id, llm in engines.items()}))
    try:
        while True:
            busy = any(llm.has_unfinished for llm in engines.values())
            wait = 0 if busy else None  # idle: sleep until a message comes
            while conn.poll(wait):
                if not _handle(conn.recv(), engines, conn):
                    return
                wait = 0
            for model_id, llm in engines.items():  # one step each, in turn
                if llm.has_unfinished:
                    conn.send(("step", model_id, _step(llm), llm.last_stats))
    except (EOFError, OSError):  # the HTTP process is gone
        return


def _handle(message: tuple, engines: dict[str, LLMEngine], conn: Connection) -> bool:
    """Act on one message from the HTTP process; False: stop."""
    kind, *args = message
    if kind == "add":
        model_id, request_id, input_ids, params, arrival = args
        try:
            engines[model_id].add_request(input_ids, params, request_id, arrival)
        except Exception as error:  # RemoteEngine refused what would fail: a last resort
            conn.send(("step", model_id, [_failed(request_id, str(error))], None))
    elif kind == "abort":
        model_id, request_id, why = args
        engines[model_id].abort(request_id, why)
    elif kind == "call":
        call_id, model_id, method, call_args = args
        try:
            result = (True, getattr(engines[model_id], method)(*call_args))
        except Exception as failure:  # the caller gets it, as a plain one if it cannot be pickled
            result = (False, failure if _picklable(failure) else RuntimeError(str(failure)))
        conn.send(("result", call_id, *result))
    elif kind == "stop":
        return False
    return True


def _picklable(value: object) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:
        return False


def _step(llm: LLMEngine) -> list[RequestOutput]:
    try:
        return llm.step()
    except Exception:  # the engine finishes failed requests itself; this is a last resort
        log.exception("engine loop error")
        return []
