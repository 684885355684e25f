"""Closed-loop arrivals (simulator/arrivals.py): conversation turns after a finish, and --max-concurrency.

Hand-checked on the conftest's cost model: 10 ms a step + 0.1 ms a prefill token.
"""
from __future__ import annotations

import pytest

from conftest import make_engine
from workloads.spec import RequestSpec


def rounded(series):
    return [round(x, 6) for x in series]


@pytest.mark.parametrize("fast_path", [True, False])
def test_max_concurrency_one_serves_requests_one_after_another(fast_path):
    # Three 100-token prompts with 2 outputs each, all due at 0: prefill 0.020, decode 0.030 (done). With one
    # client slot, B arrives when A finishes (0.030): 0.050, 0.060; C at 0.060: 0.080, 0.090.
    specs = [RequestSpec(i, 0.0, 100, 2) for i in range(3)]
    res = make_engine(specs, max_concurrency=1, fast_path=fast_path).run()
    df = res.requests
    assert rounded(df.arrival_s) == [0.0, 0.03, 0.06]
    assert rounded(df.finish_s) == [0.03, 0.06, 0.09]
    assert rounded(df.ttft_s) == [0.02, 0.02, 0.02]                 # measured from when the client sent it
    assert res.kv.num_running.max() == 1


def test_max_concurrency_keeps_a_later_arrival_time():
    # Two slots: C is due at 1.0 s, long after A and B finished, so it arrives at its own time.
    specs = [RequestSpec(0, 0.0, 100, 2), RequestSpec(1, 0.0, 100, 2), RequestSpec(2, 1.0, 100, 2)]
    res = make_engine(specs, max_concurrency=2).run()
    assert rounded(res.requests.arrival_s) == [0.0, 0.0, 1.0]


@pytest.mark.parametrize("fast_path", [True, False])
def test_next_turn_arrives_think_time_after_the_previous_finishes(fast_path):
    # A finishes at 0.030; its next turn B arrives 0.5 s later, at 0.530: prefill 200 -> 0.560, decode -> 0.570.
    specs = [RequestSpec(0, 0.0, 100, 2), RequestSpec(1, 0.0, 200, 2, after=0, think_s=0.5)]
    res = make_engine(specs, fast_path=fast_path).run()
    df = res.requests
    assert rounded(df.arrival_s) == [0.0, 0.53]
    assert rounded(df.finish_s) == [0.03, 0.57]


def test_a_rejected_turn_still_releases_the_next_one():
    specs = [RequestSpec(0, 0.0, 5000, 2), RequestSpec(1, 0.0, 100, 2, after=0, think_s=0.25)]
    res = make_engine(specs, max_model_len=4096).run()
    df = res.requests
    assert list(df.status) == ["rejected", "finished"]
    assert rounded(df.arrival_s) == [0.0, 0.25]


def test_a_turn_must_follow_an_earlier_request():
    specs = [RequestSpec(0, 0.0, 100, 2, after=1), RequestSpec(1, 0.0, 100, 2)]
    with pytest.raises(ValueError, match="^request 0 follows request 1, which is not an earlier request"):
        make_engine(specs).run()


def test_a_finish_says_when_it_may_bring_the_next_arrival_forward():
    # The engine recomputes its next arrival only after finishes that may move it: one that frees a slot of a
    # full server, or one that releases a conversation's next turn.
    from simulator.arrivals import ArrivalQueue
    specs = [RequestSpec(0, 0.0, 10, 2), RequestSpec(1, 5.0, 10, 2), RequestSpec(2, 0.0, 10, 2, after=0, think_s=1.0)]
    queue = ArrivalQueue(specs, max_concurrency=2)
    assert [(s.request_id, t) for s, t in queue.pop_until(6.0)] == [(0, 0.0), (1, 5.0)]
    assert queue.gated and queue.next_s() == float("inf")
    assert queue.finished(0, 7.0) is True                  # a slot opens, and turn 2 is due at 8.0
    assert queue.next_s() == 8.0
    assert [(s.request_id, t) for s, t in queue.pop_until(8.0)] == [(2, 8.0)]
    open_loop = ArrivalQueue([RequestSpec(0, 0.0, 10, 2), RequestSpec(1, 3.0, 10, 2)])
    list(open_loop.pop_until(0.0))
    assert open_loop.finished(0, 1.0) is False and open_loop.next_s() == 3.0



def test_the_plain_queue_pops_what_the_one_at_a_time_path_pops():
    # An open-loop queue with no cap reads arrivals off its sorted times (a slice per call); it must give what
    # the general path (one pop at a time, heap and list merged) gives: for ties, unsorted input, and requests
    # fed as a router feeds them, which join the sorted list when they come last and the heap when not.
    import random
    from simulator.arrivals import ArrivalQueue
    rng, kinds = random.Random(5), set()
    for _ in range(300):
        times = [round(rng.uniform(0, 10), rng.choice([0, 1, 3])) for _ in range(rng.randint(0, 30))]
        specs = [RequestSpec(i, t, 10, 2) for i, t in enumerate(times)]
        rng.shuffle(specs)
        feeds = sorted((RequestSpec(100 + i, round(rng.uniform(0, 12), 1), 10, 2) for i in range(rng.randint(0, 6))),
                       key=lambda s: s.arrival_s)
        plain, general = ArrivalQueue(specs), ArrivalQueue(specs)
        general._plain = False                                  # forces the one-at-a-time path
        got, want, fed = [], [], []
        for until in sorted(rng.uniform(0, 12) for _ in range(8)) + [12.0]:
            while feeds and feeds[0].arrival_s <= until:        # a router feeds a request as it arrives
                spec = feeds.pop(0)
                plain.add(spec)
                general.add(spec)
                fed.append(spec.request_id)
                kinds.add("heap" if plain.heap else "list")
            got.append([(spec.request_id, t) for spec, t in plain.pop_until(until)])
            want.append([(spec.request_id, t) for spec, t in general.pop_until(until)])
            assert got[-1] == sorted(got[-1], key=lambda p: (p[1], p[0]))      # in (time, request id) order
            assert plain.next_s() == general.next_s() and plain.ended == general.ended
        assert got == want
        assert sorted(rid for step in got for rid, _ in step) == sorted([s.request_id for s in specs] + fed)
        assert plain.ended and not feeds
    assert kinds == {"heap", "list"}
