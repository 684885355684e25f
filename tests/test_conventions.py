"""CLI conventions and what a run reports about itself: bare flags, --quiet with a machine format, report.html,
saturation, goodput without an SLO, MFU/MBU per GPU, charts that say why they are empty, roofline labels."""
from __future__ import annotations

import json
import math

import pandas as pd
from typer.testing import CliRunner

import cli
from simulator import SimConfig, simulate
from simulator.present.report import SATURATED, best_labels, report_figures, ReportInputs, summary_frame

runner = CliRunner()
TINY = ["--num-requests", "40", "--prompt-len", "64", "--output-len", "16"]


def test_bare_flag_means_on_and_help_shows_flags_as_flags(tmp_path):
    result = runner.invoke(cli.app, ["run", *TINY, "--chunked-prefill", "--summary-only", "--no-report", "-q",
                                     "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "o" / "config.json").read_text())
    assert config["chunked_prefill"] is True and config["summary_only"] is True
    help_text = runner.invoke(cli.app, ["run", "--help"]).output
    assert "--quiet" in help_text and "--help" in help_text and "<bool>" not in help_text


def test_quiet_still_prints_a_machine_format_and_run_writes_its_report(tmp_path):
    result = runner.invoke(cli.app, ["run", *TINY, "--format", "json", "--quiet", "--out", str(tmp_path / "o")])
    assert json.loads(result.stdout)["completed"] == 40
    assert (tmp_path / "o" / "report.html").is_file()
    runner.invoke(cli.app, ["run", *TINY, "--no-report", "-q", "--out", str(tmp_path / "n")])
    assert not (tmp_path / "n" / "report.html").exists()


def test_saturation_is_reported_in_the_summary_and_the_table(tmp_path):
    over = simulate(SimConfig(rate=1000, num_requests=200, prompt_len="256", output_len="256"))
    s = over.summary()
    assert s["saturated"] is True and s["offered_rate"] > 5 * s["request_throughput"]
    assert s["ttft_growth"] > 1                       # the queue grows: TTFT rises faster than time passes
    under = simulate(SimConfig(rate=1, num_requests=60, prompt_len="256", output_len="64")).summary()
    assert under["saturated"] is False and abs(under["ttft_growth"]) < 0.1
    result = runner.invoke(cli.app, ["run", "--rate", "1000", "--num-requests", "200", "--prompt-len", "256",
                                     "--output-len", "256", "--no-report", "--out", str(tmp_path / "o")])
    assert "SATURATED: offered" in result.stdout and "latency grows with" in result.stdout


def test_goodput_without_an_slo_is_not_a_number(tmp_path):
    s = simulate(SimConfig(num_requests=20, prompt_len="64", output_len="16")).summary()
    assert s["goodput"] is None and s["slo_attainment"] is None
    slo = simulate(SimConfig(num_requests=20, prompt_len="64", output_len="16", slo_ttft_s=10.0)).summary()
    assert slo["slo_attainment"] == 1.0
    result = runner.invoke(cli.app, ["run", *TINY, "--no-report", "--out", str(tmp_path / "o")])
    assert "n/a (no SLO given" in result.stdout


def test_mfu_and_mbu_are_per_gpu():
    """Hand check from the steps: one GPU's bytes per busy second over one GPU's peak (tp shards, pp stages)."""
    for tp, pp in ((4, 1), (2, 2)):
        r = simulate(SimConfig(model="llama-3.1-70b", tp=tp, pp=pp, num_requests=20, prompt_len="128",
                               output_len="32"))
        busy = r.steps.duration_s.sum()
        peak_bw = r.meta["gpu"]["hbm_bytes_per_s"]
        assert math.isclose(r.summary()["mbu"], r.steps.bytes.sum() / busy / peak_bw / pp, rel_tol=1e-9)
        assert 0.05 < r.summary()["mbu"] < 1


def test_saturated_rows_are_never_best():
    frame = summary_frame([("a", {"ttft_p50_s": 0.01, "saturated": True}), ("b", {"ttft_p50_s": 0.5}),
                           ("c", {"ttft_p50_s": 0.9})])
    assert frame[SATURATED].tolist() == [True, False, False]
    assert best_labels(frame)["TTFT p50 ms"] == {"b"}


def test_charts_with_nothing_to_show_say_why():
    summary_only = simulate(SimConfig(num_requests=20, prompt_len="64", output_len="16", summary_only=True))
    figs = dict(report_figures(ReportInputs([("s", summary_only)])))
    for name in ("kv-memory", "queue", "step-timeline"):
        assert "needs per-step rows" in figs[name].layout.annotations[-1].text
    full = simulate(SimConfig(num_requests=20, prompt_len="64", output_len="16"))
    figs = dict(report_figures(ReportInputs([("f", full)])))
    assert "No preemptions in any scenario" in figs["preemptions"].layout.annotations[-1].text
    assert "Paged KV cache: no external fragmentation" in figs["fragmentation"].layout.annotations[-1].text


def test_roofline_labels_do_not_overlap_and_the_title_names_the_step():
    from simulator.present.explain import label_positions
    points = [(1.0, 1e12, "aaaa", 10), (1.02, 1.01e12, "bbbb", 10), (1.0, 1e12, "cccc", 10), (100.0, 1e14, "d", 8)]
    spots = label_positions(points, x_range=(0.1, 1000), y_range=(1e10, 1e16))
    assert spots["d"] == "top center" and len({spots["aaaa"], spots["bbbb"], spots["cccc"]}) == 3
    result = runner.invoke(cli.app, ["explain", "--phase", "decode", "--batch", "8", "--bandwidth-scale", "2",
                                     "--html", "roof.html"], catch_exceptions=False)
    assert result.exit_code == 0
    import pathlib
    text = pathlib.Path("roof.html").read_text()
    pathlib.Path("roof.html").unlink()
    assert "decode, batch 8, 1024 context tokens each (what-if: bandwidth x2)" in text


def test_compare_table_fits_120_columns(tmp_path):
    result = runner.invoke(cli.app, ["compare", "--num-requests", "40", "--prompt-len", "64", "--output-len", "256",
                                     "--batching", "static,continuous", "--rate", "1,200",
                                     "--jobs", "1", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0
    assert max(len(line) for line in result.stdout.splitlines()) <= 120
    rows = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert rows.saturated.tolist().count(True) >= 1 and "SATURATED" in result.stdout
