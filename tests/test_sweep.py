"""compare / sweep / report: axis parsing, the cross product, capacity bisection, parallel determinism, the CLI."""
from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from typer.testing import CliRunner

from cli import app
from simulator import SimConfig, SimResult, compare
from simulator.runs.capacity import CapacitySearch, load_axis, meets_slos, run_sweep
from simulator.runs.options import OPTIONS_BY_FIELD
from simulator.runs.outputs import folder_name, load_inputs
from simulator.runs.parallel import Runner
from simulator.present.report import report_figures
from simulator.runs.sweep import AxisError, expand, expand_range, label_of, parse_axis, run_comparison, split_list

TINY = dict(num_requests=40, prompt_len="512", output_len="64")
TINY_FLAGS = ["--num-requests", "40", "--prompt-len", "512", "--output-len", "64"]


# ---- parsing --------------------------------------------------------------------------------------------------
def test_split_list_keeps_key_value_pieces_with_their_spec():
    assert split_list("--prompt-len", "512,lognormal:mean=600,sigma=0.8,sharegpt") == [
        "512", "lognormal:mean=600,sigma=0.8", "sharegpt"]
    with pytest.raises(AxisError, match=r"^--rate: empty value in '5,,10'"):
        split_list("--rate", "5,,10")


def test_ranges_include_stop_and_avoid_float_drift():
    rate, seqs = OPTIONS_BY_FIELD["rate"], OPTIONS_BY_FIELD["max_num_seqs"]
    values = expand_range(rate, "2:40:2")
    assert len(values) == 20 and values[0] == 2.0 and values[-1] == 40.0
    assert expand_range(rate, "0.1:0.3:0.1") == [0.1, 0.2, 0.3]
    assert expand_range(seqs, "1:4") == [1, 2, 3, 4]


@pytest.mark.parametrize("text, message", [
    ("5:1", r"^--rate: empty range '5:1' \(start 5 is above stop 1\)$"),
    ("2:40:0", r"^--rate: range step must be positive in '2:40:0'$"),
    ("1:2:3:4", r"^--rate: bad range '1:2:3:4'; write start:stop:step"),
    ("a:4", r"^--rate: bad range 'a:4': expected a number, got 'a'$"),
    ("0:1e6:1", r"^--rate: range '0:1e6:1' has 1000001 points; at most 1000$"),
])
def test_bad_ranges_are_one_line_errors(text, message):
    with pytest.raises(AxisError, match=message):
        parse_axis("rate", text)


def test_parse_axis_mixes_lists_and_ranges_and_rejects_repeats():
    assert parse_axis("rate", "1,2,5:20:5") == (1.0, 2.0, 5.0, 10.0, 15.0, 20.0)
    assert parse_axis("chunked_prefill", "on,off") == (True, False)
    assert parse_axis("batching", "static,continuous") == ("static", "continuous")
    with pytest.raises(AxisError, match=r"^--rate: 5 listed more than once$"):
        parse_axis("rate", "5,2:6:3")
    with pytest.raises(AxisError, match=r"^--chunked-prefill: expected on or off, got 'maybe'$"):
        parse_axis("chunked_prefill", "on,maybe")


# ---- the cross product ----------------------------------------------------------------------------------------
def test_expand_is_the_cross_product_with_load_axes_varying_fastest():
    axes = {"rate": (5.0, 10.0), "batching": ("static", "continuous"), "kv": ("paged",)}
    scenarios = expand(SimConfig(**TINY), axes)
    assert [s.label for s in scenarios] == ["static / rate=5", "static / rate=10",
                                            "continuous / rate=5", "continuous / rate=10"]
    assert [(s.config.batching, s.config.rate, s.config.kv) for s in scenarios] == [
        ("static", 5.0, "paged"), ("static", 10.0, "paged"), ("continuous", 5.0, "paged"),
        ("continuous", 10.0, "paged")]
    assert label_of({"chunked_prefill": True, "gpu": "l4"}) == "chunked-prefill=on / l4"


def test_expand_errors_name_the_problem():
    with pytest.raises(AxisError, match=r"^--rate: no values"):
        expand(SimConfig(), {"rate": ()})
    with pytest.raises(AxisError, match=r"^2500 scenarios in the cross product; at most 2000"):
        expand(SimConfig(), {"seed": tuple(range(50)), "rate": tuple(range(1, 51))})
    with pytest.raises(AxisError, match=r"^scenario 'tp=0': tp must be at least 1, got 0$"):
        expand(SimConfig(), {"tp": (1, 0)})


def test_unknown_values_in_a_list_fail_before_anything_runs(tmp_path):
    with pytest.raises(AxisError, match=r"^--batching foo: unknown batching policy 'foo'; choose one of"):
        run_comparison(SimConfig(**TINY), {"batching": ("static", "foo")}, jobs=1)
    with pytest.raises(AxisError, match=r"^--gpu nope: unknown GPU"):
        run_comparison(SimConfig(**TINY), {"gpu": ("l4", "nope")}, jobs=1)


def test_folder_names_are_ordered_and_safe():
    assert folder_name(3, "static / contiguous / rate=5") == "03-static_contiguous_rate=5"
    assert folder_name(12, "a100 @ 1.5/s") == "12-a100_1.5_s"


# ---- capacity search ------------------------------------------------------------------------------------------
def drive(search: CapacitySearch, threshold: float) -> list[list[float]]:
    """Run the search against 'meets the SLOs iff rate <= threshold'; return the rounds of rates tried."""
    rounds = []
    while rates := search.next_rates():
        rounds.append(rates)
        for rate in rates:
            search.record(rate, rate <= threshold)
    return rounds


def test_bisection_brackets_the_threshold_within_tolerance():
    search = CapacitySearch((2.0, 4.0, 6.0, 8.0, 10.0), tolerance=0.02)
    rounds = drive(search, threshold=7.3)
    assert rounds == [[2.0, 4.0, 6.0, 8.0, 10.0], [7.0], [7.5], [7.25], [7.375]]
    assert search.capacity() == (7.25, "=")  # 7.375 - 7.25 <= 2% of 7.375


def test_search_doubles_when_every_rate_passes_and_halves_when_none_does():
    up = CapacitySearch((1.0, 2.0), max_outside=3)
    assert drive(up, threshold=1e9) == [[1.0, 2.0], [4.0], [8.0], [16.0]]
    assert up.capacity() == (16.0, ">=")
    down = CapacitySearch((4.0,), tolerance=0.1)
    assert drive(down, threshold=1.1) == [[4.0], [2.0], [1.0], [1.5], [1.25], [1.125], [1.062]]
    assert down.capacity() == (1.062, "=")  # 1.125 - 1.062 <= 10% of 1.125; probes keep 4 significant digits
    never = CapacitySearch((4.0,), max_outside=2)
    drive(never, threshold=0.0)
    assert never.capacity() == (1.0, "<")


def test_capacity_is_below_the_first_failure_even_if_a_higher_rate_passes():
    search = CapacitySearch((2.0, 4.0, 6.0), tolerance=0.5)
    for rate, ok in ((2.0, True), (4.0, False), (6.0, True)):
        search.record(rate, ok)
    assert search.bracket() == (2.0, 4.0)


def test_meets_slos_uses_attainment_and_never_nan():
    assert meets_slos({"slo_attainment": 0.9}, 0.9) and not meets_slos({"slo_attainment": 0.89}, 0.9)
    assert not meets_slos({"slo_attainment": float("nan")}, 0.5)


def test_sweep_needs_a_load_axis_and_an_slo():
    with pytest.raises(AxisError, match=r"^sweep needs a load axis: give one of --rate, --batch-size"):
        load_axis({"gpu": ("l4", "h100-sxm"), "rate": (5.0,)})
    assert load_axis({"batch_size": (4, 8), "gpu": ("l4", "a10g")}) == "batch_size"
    with pytest.raises(AxisError, match=r"^sweep needs an SLO to find capacity"):
        run_sweep(SimConfig(**TINY), {"rate": (5.0, 10.0)}, jobs=1)


def test_real_sweep_finds_a_capacity_between_a_pass_and_a_fail():
    base = SimConfig(**TINY, slo_ttft_s=0.2, slo_tpot_s=0.05)
    out = run_sweep(base, {"rate": (50.0, 100.0, 150.0, 200.0)}, jobs=1, tolerance=0.05)
    sims = out.simulations
    row = out.capacity.iloc[0]
    assert row["bound"] == "=" and len(out.capacity) == 1
    cap = row["capacity_rate_per_s"]
    failing_above = sims[(sims.rate_per_s > cap) & ~sims.meets_slo].rate_per_s.min()
    assert sims.set_index("rate_per_s").loc[cap, "meets_slo"]
    assert failing_above - cap <= 0.05 * failing_above
    assert (sims.kind == "search").sum() >= 1  # bisection ran beyond the listed rates
    assert out.at_capacity[0].config["rate"] == cap
    assert row["slo_attainment"] >= 0.9 and row["simulations"] == len(sims)


# ---- parallel execution ---------------------------------------------------------------------------------------
def test_results_are_identical_whatever_the_job_count():
    configs = [SimConfig(**TINY, rate=r, batching=b) for r in (20.0, 80.0) for b in ("static", "continuous")]
    labels = [str(i) for i in range(len(configs))]
    with Runner(1) as one:
        serial = one.run(labels, configs)
    with Runner(2) as two:
        parallel = two.run(labels, configs)
    for a, b in zip(serial, parallel):
        assert a.config == b.config
        for frame in ("requests", "steps", "kv"):
            pd.testing.assert_frame_equal(getattr(a, frame), getattr(b, frame))


def test_compare_api_cross_product_lists_and_saved_results(tmp_path):
    runs = compare(SimConfig(**TINY), batching=["static", "continuous"], rate="20,80", jobs=2)
    assert list(runs) == ["static / rate=20", "static / rate=80", "continuous / rate=20", "continuous / rate=80"]
    assert runs["continuous / rate=80"].summary()["completed"] == 40
    saved = SimResult.load(runs["static / rate=80"].save(tmp_path / "saved"))
    again = compare([SimConfig(**TINY, batching="static", rate=20.0), saved], jobs=1)
    assert list(again) == ["rate=20", "rate=80"]
    assert again["rate=80"] is saved  # a result is used as it is, not re-run
    pd.testing.assert_frame_equal(again["rate=20"].steps, runs["static / rate=20"].steps)
    with pytest.raises(AxisError, match=r"^unknown option 'colour'"):
        compare(SimConfig(**TINY), colour=["red"])


# ---- the CLI --------------------------------------------------------------------------------------------------
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_cli_compare_writes_every_output_and_is_independent_of_jobs(tmp_path):
    args = ["compare", "--batching", "static,continuous", "--rate", "20,80", "--slo-ttft", "0.5", *TINY_FLAGS]
    one = invoke(*args, "--jobs", "1", "--out", str(tmp_path / "a"), "--format", "csv")
    two = invoke(*args, "--jobs", "2", "--out", str(tmp_path / "b"), "--format", "csv")
    assert one.exit_code == 0 and two.exit_code == 0
    a = pd.read_csv(tmp_path / "a" / "comparison.csv")
    assert a.equals(pd.read_csv(tmp_path / "b" / "comparison.csv"))
    assert list(a["scenario"]) == ["static / rate=20", "static / rate=80", "continuous / rate=20",
                                   "continuous / rate=80"]
    assert one.stdout.splitlines()[0].startswith("scenario,batching,rate,num_requests,completed")
    manifest = json.loads((tmp_path / "a" / "scenarios.json").read_text())
    assert [e["folder"] for e in manifest["scenarios"]] == [
        "01-static_rate=20", "02-static_rate=80", "03-continuous_rate=20", "04-continuous_rate=80"]
    assert all((tmp_path / "a" / e["folder"] / "steps.csv").is_file() for e in manifest["scenarios"])
    assert (tmp_path / "a" / "load.csv").is_file() and (tmp_path / "a" / "report.html").is_file()


def test_cli_table_json_and_quiet(tmp_path):
    args = ["compare", "--kv", "contiguous,paged", *TINY_FLAGS, "--jobs", "1"]
    table = invoke(*args, "--out", str(tmp_path / "t"))
    assert "servesim compare: 2 scenarios" in table.stdout and "contiguous" in table.stdout
    assert "best value per column" in table.stdout
    records = json.loads(invoke(*args, "--out", str(tmp_path / "j"), "--format", "json").stdout)
    assert [r["scenario"] for r in records] == ["contiguous", "paged"] and records[0]["completed"] == 40
    quiet = invoke(*args, "--out", str(tmp_path / "q"), "--quiet")
    assert quiet.stdout == "" and (tmp_path / "q" / "comparison.csv").is_file()


@pytest.mark.parametrize("args, message", [
    (["compare", "--rate", "5:1"], "error: --rate: empty range '5:1' (start 5 is above stop 1)"),
    (["compare", "--kv", "paged,foo"], "error: --kv foo: unknown KV cache manager 'foo'"),
    (["compare", "--rate", ","], "error: --rate: empty value in ','"),
    (["sweep", "--gpu", "l4,a10g", "--slo-ttft", "1"], "error: sweep needs a load axis"),
    (["compare", "--jobs", "0"], "error: --jobs must be at least 1, got 0"),
])
def test_cli_bad_axes_are_one_line_errors_and_write_nothing(tmp_path, args, message):
    result = runner.invoke(app, [*args, *TINY_FLAGS, "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []  # no results folder, no temporary folder left behind


def test_a_failing_scenario_leaves_no_partial_output(tmp_path, monkeypatch):
    import simulator.api

    def explode(config, progress=None):
        if config.batching == "continuous":
            raise ValueError("simulated failure")
        return real(config, progress=progress)
    real = simulator.api.simulate
    monkeypatch.setattr(simulator.api, "simulate", explode)
    result = runner.invoke(app, ["compare", "--batching", "static,continuous", *TINY_FLAGS, "--jobs", "1",
                                 "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.stderr == "error: simulated failure\n"
    assert list(tmp_path.iterdir()) == []


def test_cli_sweep_prints_capacity_and_report_rebuilds(tmp_path):
    out = tmp_path / "sweep"
    result = invoke("sweep", "--rate", "50:200:50", "--slo-ttft", "0.2", "--slo-tpot", "0.05", *TINY_FLAGS,
                    "--jobs", "2", "--out", str(out), "--format", "csv")
    capacity = pd.read_csv(out / "capacity.csv")
    assert result.stdout.startswith("config,capacity_rate_per_s,bound")
    assert capacity["bound"].tolist() == ["="] and 50 <= capacity["capacity_rate_per_s"][0] < 200
    (out / "report.html").unlink()
    rebuilt = invoke("report", str(out), "--format", "json")
    assert (out / "report.html").is_file()
    assert [r["scenario"] for r in json.loads(rebuilt.stdout)] == [
        f"h100-sxm / llama-3.1-8b / continuous / paged @ {capacity['capacity_rate_per_s'][0]:g}/s"]
    inputs = load_inputs([out])
    assert [name for name, _ in report_figures(inputs)][:2] == ["latency-cdf", "load"]


def test_report_compares_saved_run_folders_without_rerunning(tmp_path):
    for name, batching in (("s", "static"), ("c", "continuous")):
        assert invoke("run", "--batching", batching, *TINY_FLAGS, "--out", str(tmp_path / name), "-q").exit_code == 0
    result = invoke("report", str(tmp_path / "s"), str(tmp_path / "c"), "--out", str(tmp_path / "both.html"),
                    "--format", "csv")
    assert pd.read_csv(io.StringIO(result.stdout))["scenario"].tolist() == ["s", "c"]
    assert (tmp_path / "both.html").stat().st_size > 4e6
    bad = runner.invoke(app, ["report", str(tmp_path / "missing")])
    assert bad.exit_code == 2 and "is not a servesim results folder" in bad.stderr


def test_comparison_table_stars_the_best_cell_of_each_column():
    from rich.console import Console

    from simulator.present.tables import comparison_table
    from tests.fake_results import make_fake_result
    fast, slow = make_fake_result(0), make_fake_result(1)
    fast.summary_values |= {"request_throughput": 9.0, "ttft_p99_s": 0.25}
    slow.summary_values |= {"request_throughput": 3.0, "ttft_p99_s": 0.5}
    table = comparison_table([("fast", fast), ("slow", slow)], [{"kv": "paged"}, {"kv": "contiguous"}], "t")
    Console(width=250, record=True, color_system=None).print(table)
    cells = {str(col.header): [str(c).replace("[bold green]", "").replace("[/]", "") for c in col._cells]
             for col in table.columns}
    fast_row, slow_row = ({h: v[i] for h, v in cells.items()} for i in (0, 1))
    assert fast_row["kv"] == "paged" and fast_row["req/s"] == "9*" and slow_row["req/s"] == "3"
    assert fast_row["TTFT p99 ms"] == "250*" and slow_row["TTFT p99 ms"] == "500"
    assert "done" not in cells and "; done 189 in every row" in table.caption  # equal values: in the caption
