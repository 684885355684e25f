"""Workloads that share prefixes (workloads/sessions.py) and what prefix caching makes of them."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import make_engine
from workloads import make_requests
from workloads.errors import SpecError
from workloads.sessions import parse_sessions, parse_system_prompts

COMMON = dict(seed=3, rate=2.0, prompt_len="uniform:20:200", output_len="uniform:5:60")


def test_multi_turn_prompts_resend_the_history_after_the_previous_turn():
    specs = make_requests(**COMMON, num_requests=40, sessions="multi-turn:turns=4,think=2")
    assert len(specs) == 40 and [s.request_id for s in specs] == list(range(40))
    for prev, turn in zip(specs, specs[1:]):
        if turn.after < 0:
            continue
        assert turn.after == prev.request_id and turn.think_s >= 0
        history = prev.content                               # the previous prompt and its response
        assert turn.content[:len(history)] == history
        assert turn.prompt_tokens == prev.prompt_tokens + prev.output_tokens + turn.content[len(history)][1]
    firsts = [s for s in specs if s.after < 0]
    assert len(firsts) == 10 and all(len(s.content) == 2 for s in firsts)    # 4 turns each: 10 sessions


def test_agentic_sessions_share_one_context_and_add_tool_results():
    specs = make_requests(**COMMON, num_requests=30, sessions="agentic:context=3000,turns=6,tool=150,think=0.5")
    assert all(s.content[0] == (0, 3000) for s in specs)
    later = [s for s in specs if s.after >= 0]
    assert later and all(s.content[-2][1] == 150 for s in later)        # the tool result before the response


def test_system_prompts_lead_a_share_of_the_prompts():
    plain = make_requests(**COMMON, num_requests=2000)
    specs = make_requests(**COMMON, num_requests=2000, system_prompts="3:500:0.6")
    with_prompt = [s for s in specs if s.content]
    assert {s.content for s in with_prompt} == {((-1, 500),), ((-2, 500),), ((-3, 500),)}
    assert len(with_prompt) / len(specs) == pytest.approx(0.6, abs=0.03)
    assert np.mean([s.prompt_tokens for s in specs]) == pytest.approx(
        np.mean([s.prompt_tokens for s in plain]) + 0.6 * 500, rel=0.05)


@pytest.mark.parametrize("text, message", [
    ("chat:turns=2", "--sessions: unknown kind 'chat'; choose multi-turn or agentic (e.g. multi-turn:turns=4,think=5)"),
    ("multi-turn:turns=2", "--sessions multi-turn: missing think (e.g. multi-turn:turns=1,think=1)"),
    ("multi-turn:turns=2,think=1,tool=3", "--sessions multi-turn: unknown setting 'tool=3'; settings: turns, think, max"),
    ("agentic:context=1,turns=0,tool=1,think=1", "--sessions agentic: turns, context, tool and max must be positive "
     "integers and think a non-negative number of seconds, got 'agentic:context=1,turns=0,tool=1,think=1'"),
])
def test_bad_session_specs_are_one_line(text, message):
    with pytest.raises(SpecError) as exc:
        parse_sessions(text)
    assert str(exc.value) == message


def test_bad_system_prompts_are_one_line():
    with pytest.raises(SpecError, match="^--system-prompts: expected N:LEN or N:LEN:SHARE"):
        parse_system_prompts("4")
    with pytest.raises(SpecError, match=r"^--system-prompts: N and LEN must be positive and SHARE in \(0, 1\]"):
        parse_system_prompts("4:100:1.5")


@pytest.mark.parametrize("fast_path", [True, False])
def test_each_turn_hits_the_whole_previous_turn_in_whole_blocks(fast_path):
    # With ample KV, turn k reuses every full block the previous turn stored: its prompt and all but the last
    # response token (the last sampled token is never fed back).
    specs = make_requests(**COMMON, num_requests=24, sessions="multi-turn:turns=4,think=1")
    res = make_engine(specs, prefix_caching=True, fast_path=fast_path).run()
    df = res.requests.set_index("request_id")
    for s in specs:
        prev = specs[s.after] if s.after >= 0 else None
        expected = 0 if prev is None else (prev.prompt_tokens + prev.output_tokens - 1) // 16 * 16
        assert df.cached_tokens[s.request_id] == expected
        if prev is not None:
            assert df.arrival_s[s.request_id] == pytest.approx(df.finish_s[prev.request_id] + s.think_s)


def test_scenario_options_reach_the_workload():
    from simulator.api import simulate
    from simulator.config import SimConfig
    cfg = SimConfig(sessions="multi-turn:turns=3,think=1", system_prompts="2:256", prompt_len="uniform:20:200",
                    output_len="uniform:5:60", num_requests=30, rate=2.0, prefix_caching=True)
    res = simulate(cfg)
    df = res.requests
    assert len(df) == 30 and (df.status == "finished").all()
    assert (df.cached_tokens > 0).mean() > 0.5          # later turns hit their history, first ones the system prompt
    assert res.summary()["prefix_cache_hit_rate"] > 0.3
