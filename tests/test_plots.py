"""Plots and report: hand-checked figure contents, summary ranking, and the self-contained HTML file."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from simulator.present import plots
from simulator.present.report import (SUMMARY_COLUMNS, LoadCurves, ReportInputs, Roofline, best_labels, render_report,
                              report_figures, summary_frame, write_report)
from tests.fake_results import KV_COLUMNS, REQUEST_COLUMNS, STEP_COLUMNS, fake_load_frames, make_fake_result


def test_fake_results_follow_the_contract():
    r = make_fake_result()
    assert list(r.requests.columns) == REQUEST_COLUMNS
    assert list(r.steps.columns) == STEP_COLUMNS
    assert list(r.kv.columns) == KV_COLUMNS


def test_downsample_keeps_short_series_and_averages_equal_count_bins():
    x, y, reduced = plots.downsample([0, 1, 2], [5, 6, 7], max_points=3)
    assert not reduced and x.tolist() == [0, 1, 2] and y.tolist() == [5, 6, 7]
    x, y, reduced = plots.downsample(np.arange(6), [1, 3, 5, 7, 9, 11], max_points=3)
    assert reduced and x.tolist() == [0.5, 2.5, 4.5] and y.tolist() == [2, 6, 10]
    big = np.arange(10_000, dtype=float)
    _, y, _ = plots.downsample(big, big**0.5, max_points=500)
    assert len(y) == 500 and math.isclose(y.mean(), (big**0.5).mean(), rel_tol=1e-5)


def test_cdf_points_exact_for_few_values_and_quantiles_for_many():
    x, y = plots.cdf_points(np.array([3.0, np.nan, 1.0, 2.0]))
    assert x.tolist() == [1, 2, 3] and y.tolist() == pytest.approx([1 / 3, 2 / 3, 1])
    x, y = plots.cdf_points(np.arange(1, 10_001, dtype=float), max_points=5)
    assert x.tolist() == [1, 2500, 5000, 7500, 10000] and y.tolist() == [0, 0.25, 0.5, 0.75, 1]
    assert plots.cdf_points(np.array([np.nan]))[0].size == 0


def test_linear_fit_is_exact_on_a_line_and_none_without_spread():
    assert plots.linear_fit(np.array([0.0, 1, 2, 3]), np.array([1.0, 3, 5, 7])) == pytest.approx((2.0, 1.0))
    assert plots.linear_fit(np.array([4.0, 4, 4]), np.array([1.0, 2, 3])) is None


def test_scenario_colors_are_stable_and_distinct():
    colors = plots.scenario_colors(["a", "b", "c"])
    assert colors == plots.scenario_colors(["a", "b", "c"]) and len(set(colors.values())) == 3
    assert colors["a"] == plots.PALETTE[0]


def test_latency_cdf_has_three_panels_per_scenario_and_one_legend_entry_each():
    runs = {"x": make_fake_result(0).requests, "y": make_fake_result(1).requests}
    fig = plots.latency_cdf_figure(runs)
    assert len(fig.data) == 6
    assert [t.name for t in fig.data if t.showlegend] == ["x", "y"]
    assert {t.line.color for t in fig.data if t.legendgroup == "y"} == {plots.PALETTE[1]}
    finished = runs["x"][runs["x"]["status"] == "finished"]
    tpot = fig.data[1]  # x's TPOT panel, in ms
    assert float(tpot.x[-1]) == pytest.approx(finished["tpot_s"].max() * 1e3, rel=1e-6)
    assert "TPOT (ms)" in [a.text for a in fig.layout.annotations]


def tiny_kv() -> pd.DataFrame:
    return pd.DataFrame({"time_s": [0.0, 1.0, 2.0], "used_tokens": [10, 40, 0], "allocated_tokens": [16, 48, 0],
                         "capacity_tokens": [64, 64, 64], "free_tokens": [48, 16, 64],
                         "largest_free_hole_tokens": [48, 16, 64], "utilization": [10 / 64, 40 / 64, 0],
                         "internal_fragmentation": [6 / 64, 8 / 64, 0], "external_fragmentation": [0, 0.5, 0],
                         "num_running": [1, 2, 0], "num_waiting": [1, 0, 0], "preemptions_total": [0, 1, 1]})


def test_kv_memory_stacks_used_empty_free_to_capacity_with_a_scenario_dropdown():
    fig = plots.kv_memory_figure({"a": tiny_kv(), "b": tiny_kv()})
    used, empty, free = (np.asarray(t.y) for t in fig.data[:3])
    assert used.tolist() == [10, 40, 0] and empty.tolist() == [6, 8, 0] and free.tolist() == [48, 16, 64]
    assert (used + empty + free).tolist() == [64, 64, 64]
    assert [t.visible for t in fig.data] == [True] * 3 + [False] * 3
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["a", "b"]
    assert buttons[1].args[0]["visible"] == [False] * 3 + [True] * 3


def tiny_steps() -> pd.DataFrame:
    r = make_fake_result(0, num_steps=4).steps.copy()
    r["start_s"], r["duration_s"] = [0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 2.0]
    r["num_prefill_tokens"], r["num_decode_tokens"] = [100, 0, 50, 0], [0, 4, 4, 4]
    r["flops"], r["bytes"], r["num_preempted"] = [1e12, 1e9, 5e11, 1e9], [1e9, 1e9, 1e9, 1e9], [0, 2, 0, 1]
    return r


def test_preemptions_are_cumulative_and_end_at_the_total():
    fig = plots.preemption_figure({"a": tiny_steps()})
    assert np.asarray(fig.data[0].y).tolist() == [0, 2, 3]
    assert np.asarray(fig.data[0].x).tolist() == [1.0, 2.0, 5.0]  # step ends where the count changes
    assert fig.data[0].line.shape == "hv"


def test_step_classes_total_flops_bytes_seconds():
    classes = plots.step_classes(tiny_steps())
    assert classes["average step"] == (1e12 + 1e9 + 5e11 + 1e9, 4e9, 5.0)
    assert classes["average decode-only step"] == (2e9, 2e9, 3.0)
    assert classes["average step with prefill"] == (1.5e12, 2e9, 2.0)


def test_roofline_roof_and_points():
    fig = plots.roofline_figure(tiny_steps(), peak_flops_per_s=100e12, peak_bytes_per_s=1e12, label="a")
    roof = fig.data[0]
    xs, ys = np.asarray(roof.x), np.asarray(roof.y)
    assert ys == pytest.approx(np.minimum(100.0, xs * 1.0))  # TFLOP/s: min(peak, bandwidth x intensity)
    prefill = next(t for t in fig.data if t.name == "average step with prefill")
    assert (prefill.x[0], prefill.y[0]) == pytest.approx((750.0, 0.75))
    ridge = next(t for t in fig.data if t.name.startswith("ridge"))
    assert list(ridge.x) == [100.0, 100.0]


def test_load_figure_marks_slos_and_capacity():
    load, capacity = fake_load_frames(("a", "b"))
    fig = plots.load_figure(load, capacity, slo_ttft_s=0.5, slo_tpot_s=0.05)
    assert len(fig.data) == 6
    horizontal = sorted(s.y0 for s in fig.layout.shapes if s.y0 == s.y1)
    vertical = sorted(s.x0 for s in fig.layout.shapes if s.x0 == s.x1)
    assert horizontal == [0.5, 50.0]  # TTFT SLO in s, TPOT SLO in ms
    slo_labels = {a.text: a.y for a in fig.layout.annotations if a.text.startswith("SLO")}
    assert slo_labels == pytest.approx({"SLO 0.5": math.log10(0.5), "SLO 50": math.log10(50)})  # log axes
    assert vertical == [5.0, 5.0, 5.0, 10.0, 10.0, 10.0]  # one capacity line per config, in each panel
    ttft_a = next(t for t in fig.data if t.name == "a" and t.yaxis == "y2")
    assert list(ttft_a.y) == pytest.approx([0.2, 0.4, 0.8])
    assert fig.layout.yaxis2.type == "log" and fig.layout.yaxis3.type == "log"


def test_load_figure_stars_each_capacity_on_its_throughput_curve():
    load, capacity = fake_load_frames(("a", "b"))
    capacity["output_token_throughput"] = [450.0, 900.0]
    fig = plots.load_figure(load, capacity)
    stars = [t for t in fig.data if t.marker.symbol == "star"]
    assert [(t.x[0], t.y[0], t.legendgroup) for t in stars] == [(5.0, 450.0, "a"), (10.0, 900.0, "b")]
    assert [a.text for a in fig.layout.annotations if "capacity" in a.text] == [" capacity 5/s", " capacity 10/s"]


def test_time_series_titles_say_when_binned():
    steps = make_fake_result(0, num_steps=2 * plots.MAX_POINTS).steps
    fig = plots.queue_figure({"a": steps})
    assert len(fig.data[0].x) == plots.MAX_POINTS
    assert fig.layout.xaxis3.title.text == "simulated time (s) (binned means)"
    fig = plots.queue_figure({"a": steps.head(10)})
    assert fig.layout.xaxis3.title.text == "simulated time (s)"


def summaries() -> list[tuple[str, dict]]:
    return [("s1", {"request_throughput": 2.0, "ttft_p99_s": 0.30, "completed": 10, "mfu": float("nan")}),
            ("s2", {"request_throughput": 3.0, "ttft_p99_s": 0.30, "completed": 10, "mfu": 0.2}),
            ("s3", {"request_throughput": 1.0, "ttft_p99_s": 0.45, "completed": 10})]


def test_summary_frame_scales_to_display_units():
    frame = summary_frame(summaries())
    assert list(frame.index) == ["s1", "s2", "s3"]
    assert frame.loc["s1", "TTFT p99 ms"] == pytest.approx(300.0)
    assert math.isnan(frame.loc["s3", "MFU %"]) and frame.loc["s2", "MFU %"] == pytest.approx(20.0)


def test_best_labels_pick_max_or_min_and_ties_and_skip_flat_columns():
    best = best_labels(summary_frame(summaries()))
    assert best["req/s"] == {"s2"}
    assert best["TTFT p99 ms"] == {"s1", "s2"}  # lower is better; a tie highlights both
    assert "done" not in best  # every scenario equal: nothing to highlight
    assert best["MFU %"] == {"s2"}  # NaN never wins
    assert {c.better for c in SUMMARY_COLUMNS} == {"max", "min"}


def report_inputs(n: int = 2, **kw) -> ReportInputs:
    runs = [(f"s{i}", make_fake_result(i, num_requests=50, num_steps=80)) for i in range(n)]
    return ReportInputs(runs, **kw)


def test_report_embeds_plotly_once_and_lists_every_chart():
    load, capacity = fake_load_frames(("s0", "s1"))
    inputs = report_inputs(2, load=LoadCurves(load, capacity, 0.5, 0.05),
                           roofline=Roofline("s0", 989e12, 3.35e12))
    text = render_report(inputs)
    ids = [div_id for div_id, _ in report_figures(inputs)]
    assert ids == ["latency-cdf", "load", "kv-memory", "fragmentation", "queue", "preemptions",
                   "step-timeline", "ttft-vs-prompt", "roofline"]
    assert text.count("* plotly.js v") == 1
    assert text.count("Plotly.newPlot(") == len(ids)
    assert f"<meta name='servesim-charts' content='{len(ids)}'>" in text
    assert "src=\"http" not in text and "src='http" not in text  # nothing fetched: works offline
    assert text.index("<table class=summary>") < text.index("Plotly.newPlot(")


def test_optional_charts_are_left_out_without_their_inputs():
    assert [i for i, _ in report_figures(report_inputs(1))] == [
        "latency-cdf", "kv-memory", "fragmentation", "queue", "preemptions", "step-timeline", "ttft-vs-prompt"]
    with pytest.raises(ValueError, match="at least one scenario"):
        report_figures(ReportInputs([]))


def test_ten_scenario_report_stays_a_few_megabytes(tmp_path):
    runs = [(f"s{i}", make_fake_result(i, num_requests=2000, num_steps=5000)) for i in range(10)]
    path = write_report(tmp_path / "report.html", ReportInputs(runs))
    plotly_js_bytes = 4.9e6
    assert path.stat().st_size < plotly_js_bytes + 1.5e6
    assert not (tmp_path / "report.html.tmp").exists()


def test_report_is_deterministic_and_escapes_labels():
    inputs = report_inputs(1)
    assert render_report(inputs) == render_report(inputs)
    evil = ReportInputs([("</script><b>x", make_fake_result(0, 20, 20))])
    text = render_report(evil)
    assert "</script><b>x" not in text and "&lt;/script&gt;&lt;b&gt;x" in text


def test_best_is_decided_on_the_displayed_value():
    frame = summary_frame([("a", {"tpot_p50_s": 0.0091503}), ("b", {"tpot_p50_s": 0.0091498}),
                           ("c", {"tpot_p50_s": 0.0120})])
    assert best_labels(frame)["TPOT p50 ms"] == {"a", "b"}  # both read 9.15
