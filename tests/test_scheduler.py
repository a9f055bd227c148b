"""The scheduler and the block manager alone, with hand-made requests and no model at all."""

from service.engine.block_manager import BlockManager
from service.engine.request import FinishReason, Request, RequestStatus, SamplingParams
from service.engine.scheduler import Scheduler, SchedulerConfig


class FakeDetokenizer:
    text = ""
    stopped_on = None


def request(name: str, num_input: int, max_new_tokens: int = 8, beam_size: int = 1) -> Request:
    params = SamplingParams(max_new_tokens=max_new_tokens, beam_size=beam_size)
    return Request(name, [5] * num_input, params, FakeDetokenizer(), [1], eos_id=2)  # type: ignore[arg-type]


def scheduler(num_blocks=64, block_size=4, **config) -> Scheduler:
    return Scheduler(SchedulerConfig(**config), BlockManager(num_blocks, block_size), True)


def fake_step(s: Scheduler) -> list[str]:
    """Schedule, then pretend the model ran: every scheduled beam gains one token."""
    out = s.schedule()
    for r in out.prefill:
        for beam in r.beams:
            beam.num_cached = len(beam.tokens)
    for r in out.decode:
        for beam in r.beams:
            beam.num_cached += 1
    for r in out.prefill + out.decode:
        r.output_ids.append(7)
        r.beams[0].tokens.append(7)
    return [r.request_id for r in out.prefill]


def test_admission_stops_at_max_running_requests_in_arrival_order():
    s = scheduler(max_running_requests=2)
    for name in "abc":
        s.add(request(name, 3))
    assert fake_step(s) == ["a", "b"]
    assert [r.request_id for r in s.waiting] == ["c"]
    s.finish(s.running[0], FinishReason.STOP)
    assert fake_step(s) == ["c"]


def test_admission_respects_the_token_budget_but_never_starves_a_long_request():
    s = scheduler(max_tokens_per_step=20)
    s.add(request("long", 30))
    s.add(request("short", 3))
    assert fake_step(s) == ["long"]  # over the budget on its own: runs alone
    assert fake_step(s) == ["short"]


def test_admission_waits_for_free_blocks_and_keeps_fifo_order():
    s = scheduler(num_blocks=8, block_size=4)  # 7 usable blocks
    s.add(request("a", 16))  # 4 cross blocks + 1 decoder block
    s.add(request("b", 8))  # 2 + 1: does not fit next to a
    s.add(request("c", 1))  # 1 + 1 would fit, but must not overtake b
    assert fake_step(s) == ["a"]
    assert [r.request_id for r in s.waiting] == ["b", "c"]
    s.finish(s.running[0], FinishReason.STOP)
    assert fake_step(s) == ["b", "c"]


def test_a_request_that_cannot_grow_preempts_the_newest_and_resumes_later():
    s = scheduler(num_blocks=7, block_size=2)  # 6 usable
    s.add(request("old", 2))  # 1 cross + 1 decoder block
    s.add(request("new", 2))
    assert fake_step(s) == ["old", "new"]  # 4 blocks used
    for _ in range(4):
        fake_step(s)  # both grow a block every 2 steps, until the pool is exhausted
    assert s.num_preemptions >= 1
    preempted = [r for r in s.waiting]
    assert [r.request_id for r in preempted] == ["new"]
    assert preempted[0].status == RequestStatus.WAITING
    assert preempted[0].beams[0].block_table == [] and preempted[0].cross_blocks == []
    assert len(preempted[0].beams[0].tokens) > 1, "generated tokens are kept for recompute"


def test_reserve_mode_admits_only_what_can_finish():
    s = scheduler(num_blocks=11, block_size=4, reserve_full_length=True)  # 10 usable
    s.add(request("a", 4, max_new_tokens=15))  # 1 cross + 4 decoder blocks at full length
    s.add(request("b", 4, max_new_tokens=15))
    s.add(request("c", 4, max_new_tokens=15))
    assert fake_step(s) == ["a", "b"]
    for _ in range(14):
        fake_step(s)
    assert s.num_preemptions == 0
    assert [r.request_id for r in s.waiting] == ["c"]


def test_aborted_and_expired_requests_leave_with_their_blocks():
    s = scheduler()
    a, b, c = request("a", 3), request("b", 3), request("c", 3)
    for r in (a, b, c):
        s.add(r)
    fake_step(s)
    used = s.blocks.num_used
    a.is_aborted = True
    b.deadline = 0.0
    out = s.schedule()
    assert {(r.request_id, r.finish_reason) for r in out.finished} == {
        ("a", FinishReason.CANCELLED),
        ("b", FinishReason.TIMEOUT),
    }
    assert [r.request_id for r in out.decode] == ["c"]
    assert s.blocks.num_used < used
    s.finish(c, FinishReason.STOP)
    assert s.blocks.num_used == 0


def test_shared_blocks_are_copied_before_a_write_and_freed_by_the_last_owner():
    blocks = BlockManager(num_blocks=8, block_size=4)
    parent = blocks.allocate(2)
    child = blocks.share(parent)
    assert blocks.blocks_to_grow(child, 6) == 1  # block 2 is shared: copy on write
    copy = blocks.grow(child, 6)
    assert copy is not None and copy[0] == parent[1] and child[1] == copy[1]
    assert child[0] == parent[0]  # the full first block stays shared
    assert blocks.grow(parent, 6) is None  # parent's last block is its own again
    blocks.free(parent)
    blocks.free(child)
    assert blocks.num_used == 0


def test_a_step_that_encodes_also_encodes_the_sources_next_in_line():
    s = scheduler(max_running_requests=2, encode_ahead=4)
    for name in "abcdef":
        s.add(request(name, 3))
    out = s.schedule()
    assert [r.request_id for r in out.prefill] == ["a", "b"]
    assert [r.request_id for r in out.encode] == ["a", "b", "c", "d"]  # c, d: ahead
    c, d, e, f = s.waiting
    assert c.cross_blocks and d.cross_blocks and not e.cross_blocks and not f.cross_blocks
    assert s.prefill_tokens(c) == 1 and s.prefill_tokens(e) == 3 + 1  # source encoded already
    s.finish(s.running[0], FinishReason.STOP)
    out = s.schedule()
    assert [r.request_id for r in out.prefill] == ["c"] and out.encode == []
    for r in list(s.running):
        s.finish(r, FinishReason.STOP)
    out = s.schedule()
    assert [r.request_id for r in out.prefill] == ["d", "e"]
    assert [r.request_id for r in out.encode] == ["e", "f"]  # d was encoded; f is next in line
    for r in list(s.running) + list(s.waiting):
        s.finish(r, FinishReason.CANCELLED)
    assert s.blocks.num_used == 0


def test_sources_encoded_ahead_give_their_blocks_back_first():
    s = scheduler(num_blocks=11, block_size=2, max_running_requests=1, encode_ahead=3)  # 10
    for name in "abc":
        s.add(request(name, 4))  # 2 cross blocks + 1 decoder block each
    out = s.schedule()
    assert [r.request_id for r in out.encode] == ["a", "b", "c"]
    a, (b, c) = s.running[0], s.waiting
    assert s.blocks.num_used == 3 + 2 + 2
    c.is_aborted = True  # waiting, encoded ahead: leaves with its blocks
    s.schedule()
    assert s.blocks.num_used == 3 + 2 and b.cross_blocks
    for _ in range(13):  # a grows by a block every 2 positions; b's source makes room first
        for beam in a.beams:
            beam.num_cached += 1
            beam.tokens.append(7)
        s.schedule()
    assert s.num_preemptions == 0 and not b.cross_blocks and s.running == [a]
    s.finish(a, FinishReason.STOP)
    out = s.schedule()
    assert out.prefill == [b] and out.encode == [b]  # encoded again when admitted
    s.finish(b, FinishReason.STOP)
    assert s.blocks.num_used == 0


def test_the_head_of_the_queue_takes_blocks_from_sources_encoded_ahead_behind_it():
    s = scheduler(num_blocks=8, block_size=4, max_running_requests=2, encode_ahead=1)  # 7
    s.add(request("a", 4))  # 1 cross + 1 decoder block
    assert fake_step(s) == ["a"]
    c, d = request("c", 12), request("d", 8)  # c: 3 cross + 1 decoder block
    s.add(c)
    s.add(d)
    d.cross_blocks = s.blocks.allocate(2)  # as if encoded ahead: 3 blocks left, c needs 4
    out = s.schedule()
    assert out.prefill == [c] and out.encode == [c]
    assert not d.cross_blocks and list(s.waiting) == [d]  # d gave way, to be encoded again
    for r in list(s.running):
        s.finish(r, FinishReason.STOP)
    assert s.blocks.num_used == 0
