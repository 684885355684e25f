"""Workloads whose requests share prefixes: shared system prompts, multi-turn conversations, agentic loops.

- `--system-prompts N:LEN[:SHARE]`: N system prompts of LEN tokens; a share SHARE (default 1) of the requests
  (or sessions) starts with one of them, picked uniformly; the sampled prompt follows it.
- `--sessions multi-turn:turns=T,think=S[,max=TOKENS]`: conversations. Sessions start at --rate per second
  (--arrival process); turn k's prompt is the whole history (every earlier message and response) plus a new
  message of --prompt-len tokens; its response has --output-len tokens. The next turn arrives an exponential
  think time (mean S seconds) after the response finished: a closed loop. A session ends after T turns or
  before a turn longer than TOKENS (default 8192).
- `--sessions agentic:context=C,turns=T,tool=L,think=S[,max=TOKENS]`: agent loops. Every session starts with
  the same C-token context (instructions and tool definitions) and a task of --prompt-len tokens; each later turn
  adds the previous call's output (--output-len) and a tool result of L tokens, after a tool latency of mean S s.

Content ids: system prompt i is content id -(i + 1); messages and responses take fresh ids from 1 on; the
agentic context is id 0. --num-requests caps the requests (turns), --duration the session starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import count

import numpy as np

from workloads.arrivals import ArrivalProcess, arrival_times_s
from workloads.errors import SpecError
from workloads.lengths import LengthDist
from workloads.spec import RequestSpec

SESSION_KINDS = ("multi-turn", "agentic")
SESSION_KEYS = {"multi-turn": ("turns", "think", "max"), "agentic": ("context", "turns", "tool", "think", "max")}
AGENTIC_CONTEXT_ID = 0


@dataclass(frozen=True)
class SystemPrompts:
    count: int
    tokens: int
    share: float = 1.0


@dataclass(frozen=True)
class Sessions:
    kind: str
    turns: int
    think_s: float
    max_tokens: int = 8192
    context_tokens: int = 0          # agentic: the shared leading context
    tool_tokens: int = 0             # agentic: each tool result (0: later turns draw --prompt-len)


def parse_system_prompts(text: str) -> SystemPrompts:
    """'N:LEN[:SHARE]' -> SystemPrompts; one-line SpecError otherwise."""
    parts = str(text).split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        n, tokens = int(parts[0]), int(parts[1])
        share = float(parts[2]) if len(parts) == 3 else 1.0
    except ValueError:
        raise SpecError(f"--system-prompts: expected N:LEN or N:LEN:SHARE (e.g. 4:1024:0.8), got '{text}'") from None
    if n < 1 or tokens < 1 or not 0 < share <= 1:
        raise SpecError(f"--system-prompts: N and LEN must be positive and SHARE in (0, 1], got '{text}'")
    return SystemPrompts(n, tokens, share)


def parse_sessions(text: str) -> Sessions:
    """'multi-turn:turns=4,think=5' or 'agentic:context=6000,turns=10,tool=300,think=0.5' -> Sessions."""
    kind, _, args = str(text).partition(":")
    if kind not in SESSION_KINDS:
        raise SpecError(f"--sessions: unknown kind '{kind}'; choose {' or '.join(SESSION_KINDS)} "
                        "(e.g. multi-turn:turns=4,think=5)")
    values: dict[str, float] = {}
    for item in filter(None, args.split(",")):
        key, eq, value = item.partition("=")
        if key not in SESSION_KEYS[kind] or not eq:
            raise SpecError(f"--sessions {kind}: unknown setting '{item}'; settings: {', '.join(SESSION_KEYS[kind])}")
        try:
            values[key] = float(value)
        except ValueError:
            raise SpecError(f"--sessions {kind}: {key} must be a number, got '{value}'") from None
    needed = [k for k in SESSION_KEYS[kind] if k != "max" and k not in values]
    if needed:
        raise SpecError(f"--sessions {kind}: missing {', '.join(needed)} (e.g. {kind}:"
                        f"{','.join(f'{k}=1' for k in SESSION_KEYS[kind] if k != 'max')})")
    ints = {k: values[k] for k in ("turns", "max", "context", "tool") if k in values}
    if any(v != int(v) or v < 1 for v in ints.values()) or not (math.isfinite(values["think"]) and values["think"] >= 0):
        raise SpecError(f"--sessions {kind}: turns, context, tool and max must be positive integers and think a "
                        f"non-negative number of seconds, got '{text}'")
    return Sessions(kind, int(values["turns"]), values["think"], int(values.get("max", 8192)),
                    int(values.get("context", 0)), int(values.get("tool", 0)))


def with_system_prompts(specs: list[RequestSpec], prompts: SystemPrompts, rng: np.random.Generator) -> list[RequestSpec]:
    """Each request (with probability `share`) starts with one of the system prompts, picked uniformly."""
    picks = _system_picks(len(specs), prompts, rng)
    return [s if p < 0 else RequestSpec(s.request_id, s.arrival_s, s.prompt_tokens + prompts.tokens,
                                        s.output_tokens, ((-(p + 1), prompts.tokens),))
            for s, p in zip(specs, picks.tolist())]


def _system_picks(n: int, prompts: SystemPrompts | None, rng: np.random.Generator) -> np.ndarray:
    """The system prompt of each of `n` requests or sessions (-1: none)."""
    if prompts is None:
        return np.full(n, -1)
    picks = rng.integers(0, prompts.count, size=n)
    return np.where(rng.random(n) < prompts.share, picks, -1)


def generate_sessions(sessions: Sessions, arrival: ArrivalProcess, rate: float, prompt: LengthDist,
                      output: LengthDist, rng: np.random.Generator, *, num_requests: int | None,
                      duration_s: float | None, system: SystemPrompts | None = None) -> list[RequestSpec]:
    """Closed-loop sessions (see the module docstring), requests numbered session by session."""
    max_sessions = None if num_requests is None else int(num_requests)
    starts = arrival_times_s(arrival, rate, rng, num_requests=max_sessions, duration_s=duration_s)
    picks = _system_picks(len(starts), system, rng)
    ids, specs = count(1), []
    for start, pick in zip(starts.tolist(), picks.tolist()):
        lead = () if pick < 0 else ((-(pick + 1), system.tokens),)
        if sessions.context_tokens:
            lead += ((AGENTIC_CONTEXT_ID, sessions.context_tokens),)
        specs += _session(sessions, start, lead, prompt, output, rng, ids, len(specs))
        if num_requests is not None and len(specs) >= num_requests:
            return specs[:int(num_requests)]
    return specs


def _session(sessions: Sessions, start_s: float, lead: tuple, prompt: LengthDist, output: LengthDist,
             rng: np.random.Generator, ids, first_id: int) -> list[RequestSpec]:
    """One session's turns: each prompt is the history so far plus a new message."""
    n = sessions.turns
    messages = prompt.sample(n, rng)
    if sessions.tool_tokens:
        messages[1:] = sessions.tool_tokens                 # agentic: later turns add a tool result
    outputs = output.sample(n, rng)
    thinks = rng.exponential(sessions.think_s, n) if sessions.think_s > 0 else np.zeros(n)
    history, out = lead, []
    for k in range(n):
        pieces = history + ((next(ids), int(messages[k])),)
        prompt_tokens = sum(t for _, t in pieces)
        if prompt_tokens + int(outputs[k]) > sessions.max_tokens:
            break
        response = (next(ids), int(outputs[k]))
        rid = first_id + k
        out.append(RequestSpec(rid, start_s, prompt_tokens, int(outputs[k]), pieces + (response,),
                               after=rid - 1 if k else -1, think_s=float(thinks[k]) if k else 0.0))
        history = pieces + (response,)
    return out
