"""SSE framing helpers: keep-alive comments while nothing is ready, and a clean close."""

import asyncio

from service.api.generation import sse_event, with_keepalive


def test_keepalive_comments_fill_long_waits_and_events_pass_through_in_order():
    closed = []

    async def slow_events():
        try:
            yield sse_event({"n": 1})
            await asyncio.sleep(0.35)
            yield sse_event("[DONE]")
        finally:
            closed.append(True)

    async def collect():
        return [chunk async for chunk in with_keepalive(slow_events(), interval_s=0.1)]

    chunks = asyncio.run(collect())
    assert chunks[0] == 'data: {"n": 1}\n\n' and chunks[-1] == "data: [DONE]\n\n"
    assert 2 <= chunks.count(": keep-alive\n\n") <= 4
    assert closed == [True]


def test_closing_the_stream_early_closes_the_source():
    closed = []

    async def endless():
        try:
            while True:
                await asyncio.sleep(1)
                yield "x"
        finally:
            closed.append(True)

    async def read_one_and_leave():
        stream = with_keepalive(endless(), interval_s=0.05)
        assert await stream.__anext__() == ": keep-alive\n\n"
        await stream.aclose()

    asyncio.run(read_one_and_leave())
    assert closed == [True]
