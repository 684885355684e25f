"""prefix-caching: what reusing cached prompt blocks buys on multi-turn chat, and the Mooncake trace's reuse.

Part 1, multi-turn chat: closed-loop sessions (each turn re-sends the history plus a new message, a think time
after each response), Llama-3.1-8B on one H100, prefix caching on and off. SGLang's authors report prefix-cache
hit rates of 50-99% on their multi-call benchmarks with RadixAttention, and up to 6.4x throughput from it
(Zheng et al., SGLang, NeurIPS 2024, arXiv:2312.07104; LMSYS blog, January 2024).

Part 2, the Mooncake conversation trace (Kimi, FAST'25 release): the hit rate its `hash_ids` allow with an
unlimited cache (every earlier prefix kept), servesim's with unlimited KV, and servesim's with one H100's KV
cache. The Mooncake release notes describe the traces as having "up to 50% cache hit ratio"
(kvcache-ai/Mooncake FAST25-release/README.md).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from simulator.api import simulate, workload
from simulator.config import SimConfig
from simulator.experiments.base import Experiment, ExperimentResult, claim
from workloads.prefix import ideal_prefix_hits
from workloads.traces import read_trace

CHAT = SimConfig(sessions="multi-turn:turns=6,think=5", prompt_len="lognormal:mean=400,sigma=0.8",
                 output_len="sharegpt", chunked_prefill=True, seed=0)
RATES = (1.0, 2.0, 4.0)                      # new sessions per second
MOONCAKE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "traces" / "mooncake_fast25" / \
    "conversation_trace.jsonl"
LONG = dict(max_model_len=131_072, chunked_prefill=True)


def chat_rows(num: int) -> pd.DataFrame:
    rows = []
    for rate in RATES:
        for on in (False, True):
            s = simulate(CHAT.replace(rate=rate, num_requests=num, prefix_caching=on)).summary()
            rows.append({"part": "multi-turn", "rate": rate, "prefix_caching": on,
                         "hit_rate": s["prefix_cache_hit_rate"], "ttft_mean_s": s["ttft_mean_s"],
                         "ttft_p99_s": s["ttft_p99_s"], "total_token_throughput": s["total_token_throughput"],
                         "busy_s": s["busy_s"], "completed": s["completed"]})
    return pd.DataFrame(rows)


def mooncake_rows(num: int) -> pd.DataFrame:
    if not MOONCAKE.is_file():
        return pd.DataFrame()
    specs = read_trace(MOONCAKE, max_requests=num)
    ideal = sum(ideal_prefix_hits(specs, 16)) / sum(s.prompt_tokens for s in specs)
    rows = [{"part": "mooncake", "setting": "ideal (hash ids, unlimited cache)", "hit_rate": ideal}]
    for label, extra in (("servesim, unlimited KV", {"kv_capacity_tokens": 1 << 27}),
                         ("servesim, one H100 (default KV)", {})):
        cfg = SimConfig(trace=str(MOONCAKE), num_requests=num, prefix_caching=True, **LONG, **extra)
        s = simulate(cfg, requests=specs).summary()
        rows.append({"part": "mooncake", "setting": label, "hit_rate": s["prefix_cache_hit_rate"],
                     "ttft_mean_s": s["ttft_mean_s"], "completed": s["completed"],
                     "evictions": s["prefix_cache_evictions"]})
    return pd.DataFrame(rows)


def run(quick: bool = False) -> ExperimentResult:
    chat = chat_rows(200 if quick else 1200)
    moon = mooncake_rows(100 if quick else 1000)
    on, off = chat[chat.prefix_caching], chat[~chat.prefix_caching]
    top = RATES[-1]
    gain = float(off[off.rate == top].busy_s.iloc[0] / on[on.rate == top].busy_s.iloc[0])
    claims = [
        claim("multi-turn chat: share of prompt tokens served from the prefix cache", "50-99% (SGLang)",
              float(on.hit_rate.min()), "{:.1%}", lo=0.5, hi=0.99),
        claim(f"multi-turn chat at {top:g} sessions/s: GPU work for the same requests, off / on (a throughput gain "
              "at saturation)", "up to 6.4x (SGLang, RadixAttention)", gain, "{:.2f}x", lo=1.0, hi=6.4),
        claim("multi-turn chat: mean TTFT falls with caching (off / on, every rate)", "lower latency (SGLang)",
              float((off.ttft_mean_s.to_numpy() / on.ttft_mean_s.to_numpy()).min()), "{:.2f}x", lo=1.0),
    ]
    if len(moon):
        ideal, unlimited, h100 = moon.hit_rate.tolist()
        claims += [
            claim("Mooncake conversation trace: ideal hit rate from its hash ids", "up to 50% (Mooncake release)",
                  ideal, "{:.1%}", hi=0.5),
            claim("Mooncake conversation trace: servesim with unlimited KV reaches the ideal (difference)",
                  "exact by construction", abs(unlimited - ideal), "{:.4f}", hi=1e-9),
            claim("Mooncake conversation trace: one H100's KV cache keeps less than the ideal (ratio)",
                  "a local cache reaches less: Mooncake's case for a disaggregated KV store", h100 / ideal,
                  "{:.2f}", hi=1.0),
        ]
    data = pd.concat([chat, moon], ignore_index=True)
    return ExperimentResult(name=EXPERIMENT.name, title=EXPERIMENT.title, source=EXPERIMENT.source,
                            claims=tuple(claims), data=data, figure=figure(chat, moon), notes=(EXPERIMENT.setup,))


def figure(chat: pd.DataFrame, moon: pd.DataFrame) -> go.Figure:
    fig = make_subplots(rows=1, cols=2, subplot_titles=("multi-turn chat: mean TTFT", "Mooncake conversation: "
                                                        "prefix-cache hit rate"))
    for on, color in ((False, "#EF553B"), (True, "#636EFA")):
        rows = chat[chat.prefix_caching == on]
        fig.add_trace(go.Bar(x=[f"{r:g}/s" for r in rows.rate], y=rows.ttft_mean_s * 1e3, marker_color=color,
                             name=f"prefix caching {'on' if on else 'off'}"), row=1, col=1)
    if len(moon):
        fig.add_trace(go.Bar(x=moon.setting, y=moon.hit_rate, marker_color="#00CC96", name="hit rate",
                             text=[f"{v:.1%}" for v in moon.hit_rate], textposition="outside"), row=1, col=2)
    fig.update_yaxes(title_text="mean TTFT (ms)", row=1, col=1)
    fig.update_yaxes(title_text="cached / prompt tokens", tickformat=".0%", row=1, col=2)
    fig.update_xaxes(title_text="new sessions per second", row=1, col=1)
    fig.update_layout(template="plotly_white", height=460, barmode="group", legend={"orientation": "h", "y": -0.25},
                      title={"x": 0.01, "text": "prefix-caching: multi-turn chat and the Mooncake trace "
                                                "(Llama-3.1-8B, H100)"})
    return fig


EXPERIMENT = Experiment(
    name="prefix-caching",
    title="Prefix caching on multi-turn chat, and the Mooncake conversation trace's reuse",
    source="Zheng et al., SGLang: Efficient Execution of Structured Language Model Programs (NeurIPS 2024, "
           "arXiv:2312.07104) and LMSYS blog (Jan 2024); Qin et al., Mooncake (FAST'25), trace release notes",
    claim="Multi-turn chat re-sends its history, so 50-99% of prompt tokens hit the prefix cache and TTFT and GPU "
          "work fall; the Mooncake conversation trace allows up to ~50% reuse, of which one GPU's cache keeps less.",
    setup="Llama-3.1-8B bf16 on one H100-SXM, continuous batching with chunked prefill, paged KV. Chat: sessions "
          "of 6 turns, messages lognormal (median 400 tokens), ShareGPT responses, think time 5 s (exponential), "
          f"{', '.join(f'{r:g}' for r in RATES)} new sessions/s, 1200 requests each. Mooncake: the first 1000 "
          "requests of the conversation trace, max_model_len 131072.",
    run_fn=run,
)
