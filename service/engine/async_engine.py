"""The engine for an asyncio server: its loop runs in a thread of its own; each request streams
its outputs through an asyncio.Queue; a consumer that goes away aborts its request."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
import weakref
from collections.abc import AsyncIterator

from service.engine.engine import LLMEngine
from service.engine.request import RequestOutput, SamplingParams

log = logging.getLogger(__name__)


class AsyncEngine:
    def __init__(self, engine: LLMEngine):
        self.llm = engine
        self._streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="engine", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, timeout: float = 10.0) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread.is_alive()

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
        self._wake.set()
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
        self._wake.set()

    def fail_all(self, error: str) -> None:
        """Finish every request still streaming as failed with `error`: their consumers get
        that at the next step (the server's drain ran out of time)."""
        for request_id in list(self._streams):
            self.llm.abort(request_id, error)
        self._wake.set()

    def _loop(self) -> None:
        while not self._stopping:
            if not self.llm.has_unfinished:
                self._wake.wait(timeout=0.5)  # woken by new work; the timeout rechecks _stopping
                self._wake.clear()
                continue
            try:
                outputs = self.llm.step()
            except Exception:  # the engine finishes failed requests itself; this is a last resort
                log.exception("engine loop error")
                continue
            for output in outputs:
                stream = self._streams.get(output.request_id)
                if stream is not None:
                    loop, queue = stream
                    loop.call_soon_threadsafe(queue.put_nowait, output)
