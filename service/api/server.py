"""Runs the app under uvicorn with a graceful drain: on SIGTERM (or Ctrl-C) /ready turns 503,
new generation requests are refused, in-flight ones finish (up to the drain timeout), then exit."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI

from service.api.app import create_app
from service.api.generation import SHUT_DOWN
from service.api.settings import Settings

log = logging.getLogger("attnserve")


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI, drain_timeout_s: float):
        super().__init__(config)
        self.app = app
        self.drain_timeout_s = drain_timeout_s
        self._draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining or self.app.state.status != "ready":
            return super().handle_exit(sig, frame)  # a second signal, or not up yet: stop now
        self._draining = True
        self.app.state.status = "draining"
        log.info("%s: draining before exit", signal.Signals(sig).name)
        asyncio.get_event_loop().call_soon_threadsafe(
            lambda: asyncio.ensure_future(self._drain_then_exit(sig, frame))
        )

    def _num_in_flight(self) -> int:
        """Requests not answered yet: handlers running, and engine requests still generating
        (a stream's handler returns at once; its body is sent while its request runs)."""
        return self.app.state.num_in_flight + self.app.state.registry.num_in_flight

    async def _drain_then_exit(self, sig: int, frame: FrameType | None) -> None:
        deadline = time.monotonic() + self.drain_timeout_s
        while self._num_in_flight() > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if self._num_in_flight() > 0:  # out of time: answer what is left (503, or an error
            # event that ends its stream) rather than leave it to uvicorn's cancellation
            log.info("drain timeout: %d requests still in flight get a 503", self._num_in_flight())
            self.app.state.registry.fail_all(SHUT_DOWN)
            answered_by = time.monotonic() + 2  # one engine step, and the handlers' replies
            while self._num_in_flight() > 0 and time.monotonic() < answered_by:
                await asyncio.sleep(0.05)
        log.info("drained (%d still in flight); exiting", self._num_in_flight())
        self.should_exit = (
            True  # not super().handle_exit: uvicorn would re-raise the signal (exit ≠ 0)
        )


def serve(settings: Settings) -> None:
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=5,
        workers=1,  # one process, one engine per model: scale out with replicas
    )
    server = DrainingServer(config, app, settings.drain_timeout_s)

    def stop() -> None:
        server.should_exit = True

    app.state.on_failure = stop
    server.run()
    if app.state.status == "failed":
        sys.exit("the models could not be loaded (see the log above)")
