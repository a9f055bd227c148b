"""The engines for an asyncio server: one thread runs them all (`EngineThread`), or with
`--engine-process` one process (`EngineProcess`, engine_process.py); each request streams its
outputs through an asyncio.Queue; a consumer that goes away aborts its request."""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import uuid
import weakref
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, TypeVar, cast

from service.engine.engine import LLMEngine
from service.engine.request import RequestOutput, SamplingParams

if TYPE_CHECKING:
    from service.engine.engine_process import EngineProcess, RemoteEngine

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineThread:
    """The one thread of the process that runs torch: every model's steps, one model after
    another, and the other model work the server has (loading, warm-up, prompt logprobs,
    alignments), submitted with `call` or `submit` and run between steps.

    Why one thread. torch's CPU ops run on an OpenMP team that belongs to the thread calling
    them, and its worker threads stay. Once libgomp manages more threads than there are cores
    (a second thread that ever ran an op: an engine thread per model, or the thread that loaded
    the models), it stops spinning between parallel regions, so every op then waits for its
    team to be woken up: a step of the bundled model took 1.6x as long (docs/engine.md). And
    two models' steps at once would oversubscribe the cores anyway; one after the other they
    do not.
    """

    def __init__(self) -> None:
        self._engines: list[AsyncEngine] = []
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Future]] = SimpleQueue()
        self._wake = threading.Event()
        self._stopping = False
        self._stop_lock = threading.Lock()  # no job is queued once the loop may have drained
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)
        self._thread.start()

    def add(self, engine: AsyncEngine) -> None:
        """Start stepping `engine` whenever it has requests."""
        if engine not in self._engines:
            self._engines = [*self._engines, engine]  # replaced, not changed: the loop reads it
        self._wake.set()

    def remove(self, engine: AsyncEngine, timeout: float = 10.0) -> None:
        """Stop stepping `engine`; the thread itself stops (after its step) with the last one."""
        self._engines = [e for e in self._engines if e is not engine]
        if not self._engines:
            self.stop(timeout)

    def stop(self, timeout: float = 10.0) -> None:
        with self._stop_lock:
            self._stopping = True
        self._wake.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def runs(self, engine: AsyncEngine) -> bool:
        return self._thread.is_alive() and engine in self._engines

    def wake(self) -> None:
        self._wake.set()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        """Run `fn(*args)` on this thread, between steps; its result comes in the future."""
        future: Future[T] = Future()
        with self._stop_lock:
            if self._stopping:
                future.set_exception(RuntimeError("the engine thread has stopped"))
                return future
            self._jobs.put((functools.partial(fn, *args), future))
        self._wake.set()
        return future

    def run_method(self, engine: AsyncEngine, method: str, *args: Any) -> Future:
        """`engine`'s `method(*args)` on this thread, between steps (`AsyncEngine.run`)."""
        return self.submit(getattr(_local(engine), method), *args)

    def call(self, fn: Callable[..., T], *args: Any) -> T:
        """`fn(*args)` run on this thread; from another thread, wait for it."""
        if threading.current_thread() is self._thread:
            return fn(*args)
        return self.submit(fn, *args).result()

    def _run_jobs(self) -> None:
        while True:
            try:
                fn, future = self._jobs.get_nowait()
            except Empty:
                return
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as error:  # the caller gets it
                    future.set_exception(error)

    def _loop(self) -> None:
        while not self._stopping:
            self._run_jobs()
            busy = [e for e in self._engines if _local(e).has_unfinished]
            if not busy:
                if self._jobs.empty():
                    self._wake.wait(timeout=0.5)  # woken by work; the timeout rechecks _stopping
                    self._wake.clear()
                continue
            for engine in busy:  # one step each, in turn
                engine.step()
        while not self._jobs.empty():  # submitted as it stopped: nothing will run them
            _, future = self._jobs.get_nowait()
            future.set_exception(RuntimeError("the engine thread has stopped"))


class AsyncEngine:
    """One model's engine, seen from the event loop: `generate` and `abort`. Its steps run on
    `thread` (an `EngineThread` of its own unless given one to share) once `start` is called;
    or, with `--engine-process`, `engine` is a `RemoteEngine` and `thread` the `EngineProcess`
    whose steps run it (engine_process.py)."""

    def __init__(
        self,
        engine: LLMEngine | RemoteEngine,
        thread: EngineThread | EngineProcess | None = None,
    ):
        self.llm = engine
        self.thread = thread or EngineThread()
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}

    def start(self) -> None:
        self.thread.add(self)

    def shutdown(self, timeout: float = 10.0) -> None:
        self.thread.remove(self, timeout)

    @property
    def is_running(self) -> bool:
        return self.thread.runs(self)

    async def run(self, method: str, *args: Any) -> Any:
        """The engine's `method(*args)` (a forward pass of the plain model: `alignment`,
        `prompt_logprobs`) where its steps run, between two of them."""
        return await asyncio.wrap_future(self.thread.run_method(self, method, *args))

    def generate(
        self,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        request_id: str | None = None,
        arrival: float | None = None,
    ) -> AsyncIterator[RequestOutput]:
        """Queue a request now and return its outputs, step by step; the last one is finished.

        Raises RequestTooLong or EngineOverloaded right here, before anything is queued.
        Closing the iterator early, cancelling the task reading it, or dropping it unread
        aborts the request.
        """
        request_id = request_id if request_id is not None else uuid.uuid4().hex
        if request_id in self._streams:  # not replaced: its consumer would wait forever
            raise ValueError(f"request id {request_id!r} is already in use")
        queue: asyncio.Queue[RequestOutput] = asyncio.Queue()
        self._streams[request_id] = (asyncio.get_running_loop(), queue)  # before the engine sees it
        try:
            self.llm.add_request(prompt, params, request_id, arrival)
        except Exception:
            self._streams.pop(request_id, None)
            raise
        self.thread.wake()
        outputs = self._outputs(request_id, queue)
        # An iterator dropped before it was ever read runs none of its code (no `finally`), so
        # its request would run on unread: abort it when the iterator goes away. A no-op for
        # one that finished or was closed, whose `finally` has already removed the stream.
        weakref.finalize(outputs, self._abort_if_unread, request_id)
        return outputs

    def _abort_if_unread(self, request_id: str) -> None:
        if request_id in self._streams:
            self.abort(request_id)

    async def _outputs(
        self, request_id: str, queue: asyncio.Queue[RequestOutput]
    ) -> AsyncIterator[RequestOutput]:
        finished = False
        try:
            while not finished:
                output = await queue.get()
                finished = output.finished
                yield output
        finally:
            self._streams.pop(request_id, None)
            if not finished:
                self.abort(request_id)

    def abort(self, request_id: str) -> None:
        """Cancel a request, whether or not its outputs were ever read."""
        self._streams.pop(request_id, None)
        self.llm.abort(request_id)
        self.thread.wake()

    def fail_all(self, error: str) -> None:
        """Finish every request still streaming as failed with `error`: their consumers get
        that at the next step (the server's drain ran out of time)."""
        for request_id in list(self._streams):
            self.llm.abort(request_id, error)
        self.thread.wake()

    def step(self) -> None:
        """One engine step, its outputs handed to their streams (on the engine thread)."""
        try:
            outputs = _local(self).step()
        except Exception:  # the engine finishes failed requests itself; this is a last resort
            log.exception("engine loop error")
            return
        self.deliver(outputs)

    def deliver(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their streams' event loops (from any thread but theirs)."""
        # One wake-up of each event loop per step, not one per output: each costs the engine
        # thread a write to the loop's self-pipe and the loop a turn.
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, RequestOutput]]]
        deliveries = {}
        for output in outputs:
            stream = self._streams.get(output.request_id)
            if stream is not None:
                loop, queue = stream
                deliveries.setdefault(loop, []).append((queue, output))
        for loop, items in deliveries.items():
            loop.call_soon_threadsafe(_deliver, items)


def _local(engine: AsyncEngine) -> LLMEngine:
    """The engine an EngineThread runs: an LLMEngine of its own process."""
    return cast(LLMEngine, engine.llm)


def _deliver(items: list[tuple[asyncio.Queue, RequestOutput]]) -> None:
    for queue, output in items:
        queue.put_nowait(output)
