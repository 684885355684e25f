"""Hostile input, generated: no value, config file, trace, GPU file or model config breaks the CLI.

Every property runs the real command in process and asserts the promise of the README: exit 0 with results,
or exit 2 with exactly one line on stderr that starts with `error: ` and holds no traceback; nothing is left
in --out or next to it on an error; no run hangs (a 120 s alarm per invocation catches a hang, far above the
fraction of a second each takes). Sizes stay tiny (3 requests of 8 + 4 tokens), so a valid value runs at once.
The hand-written cases below the properties are the examples of issue #15, one per class.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import cli
from simulator.runs.options import SCENARIO_OPTIONS

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--num-requests", "3", "--prompt-len", "8", "--output-len", "4", "--no-report", "--quiet"]
FUZZ = settings(max_examples=25, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
HANG_S = 120
runner = CliRunner()


@contextlib.contextmanager
def alarm(seconds: int = HANG_S):
    """Fail instead of hanging (SIGALRM interrupts a blocking read or a runaway loop)."""
    def hang(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")
    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def invoke(args: list[str], folder: Path):
    """Run `servesim ARGS` in process inside `folder`; check the one-line-error promise; return the result."""
    before = set(os.listdir(folder))
    with alarm():
        result = runner.invoke(cli.app, args)
    assert not isinstance(result.exception, TimeoutError), f"hang: {args}"
    assert result.exit_code in (0, 2), f"exit {result.exit_code} for {args}: {result.output[-500:]}"
    assert "Traceback" not in result.output
    if result.exit_code:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr[-800:])
        assert len(lines[0]) < 2100
        assert set(os.listdir(folder)) == before, f"left behind by {args}: {set(os.listdir(folder)) - before}"
    return result


def in_tmp(body):
    """Run body(folder) in a fresh temporary folder (hypothesis examples cannot share pytest's tmp_path)."""
    with tempfile.TemporaryDirectory() as tmp:
        return body(Path(tmp))


# ---- values: numbers at and past every edge, text, lists, units, long strings ----
NUMBERS = st.one_of(
    st.sampled_from(["0", "-1", "1", "2.5", "1e15", "1e300", "-1e300", "1e-300", "nan", "inf", "-inf", "1e20",
                     "100000000000000000000", "0x10", "1_000", " 5 ", "5,10", "5:40:5", "", "1/2", "500ms", "0.5s"]),
    st.integers(-10**25, 10**25).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr))
TEXT = st.one_of(st.text(string.printable, max_size=30), st.sampled_from(
    ["on", "off", "yes", "maybe", "continous", "h100", "gamma:cv=1e-200", "gamma:cv=1e200", "uniform:9",
     "lognormal:mean=1e300,sigma=1", "empirical:nope.csv", "x" * 100_000, "a,b", "\x00", "é"]))
VALUE = st.one_of(NUMBERS, TEXT)
# Options whose large valid values mean a large simulation: only small valid values are drawn for them.
SIZE_FIELDS = {"num_requests", "duration_s", "prompt_len", "output_len", "max_concurrency", "speculative_tokens"}
FLAGS = [o for o in SCENARIO_OPTIONS if o.field not in SIZE_FIELDS]


@FUZZ
@given(opt=st.sampled_from(FLAGS), value=VALUE)
def test_any_option_value_runs_or_is_one_line(opt, value):
    in_tmp(lambda d: invoke(["run", *TINY, opt.flag, value, "--out", str(d / "out")], d))


@FUZZ
@given(flag=st.sampled_from(["--num-requests", "--duration", "--prompt-len", "--output-len"]),
       value=st.one_of(st.sampled_from(["0", "-1", "1e300", "nan", "inf", "1e12", "1000000000000", "2.5", "x",
                                        "100000000000000000000", "-5", "1e-300"]), st.integers(-10**30, 6).map(str)))
def test_size_options_refuse_or_run_small(flag, value):
    in_tmp(lambda d: invoke(["run", "--rate", "5", "--prompt-len", "8", "--output-len", "4", "--num-requests",
                             "3", "--no-report", "-q", flag, value, "--out", str(d / "out")], d))


@FUZZ
@given(command=st.sampled_from(["compare", "sweep"]), opt=st.sampled_from(FLAGS), value=VALUE)
def test_compare_and_sweep_values(command, opt, value):
    extra = ["--rate", "4,8"] if command == "sweep" and opt.field != "rate" else []
    in_tmp(lambda d: invoke([command, *TINY[:6], "--jobs", "1", "-q", *extra, opt.flag, value, "--out",
                             str(d / "out")], d))


# ---- files: config files, traces, GPU files, Hugging Face configs ----
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**20, 10**20), st.floats(allow_nan=False),
                    st.text(string.printable, max_size=12), st.sampled_from(["on", "off", "5", "500ms", "1e400"]))
JSONISH = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.text(string.ascii_lowercase, max_size=5), inner, max_size=3), max_leaves=6)
CONFIG_KEYS = [o.field for o in SCENARIO_OPTIONS] + [o.flag[2:] for o in SCENARIO_OPTIONS] + ["bogus", "gpus"]


@FUZZ
@given(data=st.dictionaries(st.sampled_from(CONFIG_KEYS), JSONISH, max_size=4), suffix=st.sampled_from(
    [".yaml", ".toml", ".json"]))
def test_config_files(data, suffix):
    def body(d: Path):
        path = d / f"s{suffix}"
        path.write_text(_toml(data) if suffix == ".toml" else json.dumps(data) if suffix == ".json"
                        else yaml.safe_dump(data))
        invoke(["run", *TINY, "--config", str(path), "--out", str(d / "out")], d)
    in_tmp(body)


def _toml(data: dict) -> str:
    """A TOML rendering of flat values (others written as strings: still hostile input)."""
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)) and v is not None and math.isfinite(v):
            return repr(v)
        return json.dumps(str(v))
    return "".join(f"{json.dumps(k)} = {value(v)}\n" for k, v in data.items())


CELLS = st.one_of(st.integers(-10**20, 10**20).map(str), st.floats().map(repr),
                  st.sampled_from(["", "x", "1e308", "nan", "-0", "2.5", "2024-01-01T00:00:00", "10"]))


@FUZZ
@given(header=st.sampled_from(["arrival_s,prompt_tokens,output_tokens", "TIMESTAMP,ContextTokens,GeneratedTokens",
                               "a,b,c", ""]),
       rows=st.lists(st.tuples(CELLS, CELLS, CELLS), max_size=4), bom=st.booleans(), jsonl=st.booleans())
def test_traces(header, rows, bom, jsonl):
    def body(d: Path):
        if jsonl:
            keys = header.split(",") if header else ["x"]
            text = "".join(json.dumps(dict(zip(keys, row))) + "\n" for row in rows)
            path = d / "t.jsonl"
        else:
            text = header + "\n" + "".join(",".join(row) + "\n" for row in rows)
            path = d / "t.csv"
        path.write_text(("\ufeff" if bom else "") + text, encoding="utf-8")
        invoke(["run", "--num-requests", "3", "--no-report", "-q", "--trace", str(path), "--out", str(d / "out")],
               d)
    in_tmp(body)


GPU_FIELDS = ["hbm_bytes", "hbm_bytes_per_s", "bf16_flops_per_s", "fp8_flops_per_s", "gemm_efficiency",
              "hbm_efficiency", "kernel_floor_s", "step_overhead_s", "num_sms", "sm_clock_hz", "link_bytes_per_s",
              "roofline_overlap", "name", "bogus"]
GPU_VALUES = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10**30, 10**30),
                       st.sampled_from(["80 GiB", "3 TB/s", "989 TFLOPS", "4 us", "1.9 GHz", "1e-300", "0", "x"]))


@FUZZ
@given(fields=st.dictionaries(st.sampled_from(GPU_FIELDS), GPU_VALUES, max_size=3), base=st.booleans())
def test_gpu_files(fields, base):
    def body(d: Path):
        path = d / "g.yaml"
        path.write_text(yaml.safe_dump({**({"base": "h100-sxm"} if base else {}), **fields}))
        invoke(["run", *TINY, "--gpu-file", str(path), "--out", str(d / "out")], d)
    in_tmp(body)


HF_KEYS = ["hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
           "vocab_size", "max_position_embeddings", "head_dim", "num_experts", "torch_dtype"]
HF_BASE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
           "vocab_size": 100, "max_position_embeddings": 256}


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(HF_KEYS), st.one_of(
    st.integers(-10**30, 10**30), st.integers(0, 300), st.floats(), st.none(), st.text(max_size=5),
    st.lists(st.integers(0, 5), max_size=2)), max_size=3))
def test_model_configs(changes):
    def body(d: Path):
        path = d / "config.json"
        path.write_text(json.dumps({**HF_BASE, **changes}))
        invoke(["run", *TINY, "--model-config", str(path), "--out", str(d / "out")], d)
    in_tmp(body)


# ---- the examples of issue #15, one per class, as written there ----
@pytest.mark.parametrize("args, expected", [
    (["--num-requests", "1000000000000"], "--num-requests: must be at most 10,000,000"),
    (["--seed", "-1"], "--seed: must be at least 0, got -1"),
    (["--duration", "1e300"], "--duration: must be at most"),
    (["--arrival", "gamma:cv=1e-200"], "cv must be in [0.001, 1000]"),
    (["--prompt-len", "100000000000000000000"], "a fixed length must be in 1..1,000,000,000 tokens"),
    (["--rate", "abc"], "error: --rate: expected a number, got 'abc'"),
    (["--bogus"], "error: unknown option --bogus"),
    (["--batching", "continous"], "(did you mean 'continuous'?)"),
    (["--rate", "5,10"], "to compare several, use `servesim compare --rate 5,10`"),
    (["--gpu", "a" * 50_000_000], "characters)"),
])
def test_issue_examples_are_one_line(tmp_path, args, expected):
    result = invoke(["run", *TINY, *args, "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 2 and expected in result.stderr


@pytest.mark.parametrize("text, expected", [
    ('gpu = ["h100-sxm"]\n', "gpu: must be a string, got ['h100-sxm']"),
    ('seed = "abc"\n', "seed: expected an integer, got 'abc'"),
    ("block_size = 2.5\n", "block_size: must be an integer, got 2.5"),
    ("max_num_seqs = 2.5\n", "max_num_seqs: must be an integer, got 2.5"),
    ("trace = 5\n", "trace: must be a string, got 5"),
    ('rate = "-5"\n', "rate: must be positive, got -5.0"),
    ('rate = 5\nrate-scale = 2\ntrace = "t.csv"\n', "a trace replays its own arrival times"),
    ('block_size = 16\nblock-size = 32\n', "is given twice"),
])
def test_config_file_types_are_strict(tmp_path, text, expected):
    path = tmp_path / "s.toml"
    path.write_text(text)
    result = invoke(["run", *TINY, "--config", str(path), "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 2 and expected in result.stderr and "s.toml" in result.stderr


def test_config_file_strings_read_as_the_command_line_does(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text('summary_only = "off"\nrate = "5"\nchunked-prefill = "on"\n')
    out = tmp_path / "out"
    invoke(["run", *TINY, "--config", str(path), "--out", str(out)], tmp_path)
    config = json.loads((out / "config.json").read_text())
    assert config["summary_only"] is False and config["rate"] == 5.0 and config["chunked_prefill"] is True
    assert "wall_s" not in config["resolved"]                  # identical runs write identical files


def test_hostile_files_are_one_line(tmp_path):
    fifo = tmp_path / "pipe.toml"
    os.mkfifo(fifo)
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(9)) + "gpu: *j\n")
    big = tmp_path / "big.yaml"
    big.write_text("gpu: " + "x" * 2_000_000 + "\n")
    binary = tmp_path / "bin.toml"
    binary.write_bytes(bytes(range(256)) * 4)
    cases = [(["--gpu-file", str(fifo)], "not a regular file"), (["--model-config", str(fifo)], "not a regular file"),
             (["--model-config", "/dev/zero"], "not a regular file"), (["--config", str(bomb)], "aliases"),
             (["--config", str(big)], "more than the 1,000,000"), (["--config", str(binary)], "bin.toml"),
             (["--trace", str(fifo)], "not a regular file")]
    for args, expected in cases:
        result = invoke(["run", *TINY, *args, "--out", str(tmp_path / "out")], tmp_path)
        assert result.exit_code == 2 and expected in result.stderr, (args, result.stderr)


def test_bom_traces_read_alike(tmp_path):
    rows = [{"arrival_s": 0.1 * i, "prompt_tokens": 8, "output_tokens": 4} for i in range(3)]
    jsonl, csv = tmp_path / "t.jsonl", tmp_path / "t.csv"
    jsonl.write_text("\ufeff" + "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    csv.write_text("\ufeffarrival_s,prompt_tokens,output_tokens\n" + "".join(
        f"{r['arrival_s']},8,4\n" for r in rows), encoding="utf-8")
    for path in (jsonl, csv):
        out = tmp_path / path.suffix[1:]
        assert invoke(["run", "--trace", str(path), "--no-report", "-q", "--out", str(out)], tmp_path).exit_code == 0
        assert json.loads((out / "summary.json").read_text())["completed"] == 3


@pytest.mark.parametrize("text, expected", [
    ("hbm_bytes_per_s = 1e-300\n", "outside the range a GPU can have"),
    ("gemm_efficiency = 0\n", "'gemm_efficiency' = 0 is outside"),
    ("gemm_efficiency = 50\n", "'gemm_efficiency' = 50 is outside"),
    ("hbm_bytes = 1e30\n", "'hbm_bytes' = 1e+30 is outside"),
])
def test_physics_out_of_range(tmp_path, text, expected):
    path = tmp_path / "g.toml"
    path.write_text('base = "h100-sxm"\n' + text)
    result = invoke(["run", *TINY, "--gpu-file", str(path), "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 2 and expected in result.stderr


def test_huge_kv_capacity_runs_without_a_block_list(tmp_path):
    """1e15 blocks: the free pool is a counter, not a list (memory does not grow with capacity)."""
    result = invoke(["run", *TINY, "--num-gpu-blocks", "1e15", "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 0
    from simulator.kv_cache.paged import PagedKVCache
    cache = PagedKVCache(10**16, block_size=16, max_model_len=8192)
    assert len(cache.free_blocks) == 10**16 // 16 and cache.free_blocks.returned == []


def test_far_trace_arrival_names_the_file(tmp_path):
    path = tmp_path / "far.csv"
    path.write_text("arrival_s,prompt_tokens,output_tokens\n0,8,4\n1e308,8,4\n")
    result = invoke(["run", "--trace", str(path), "--out", str(tmp_path / "out")], tmp_path)
    assert result.exit_code == 2 and "far.csv: request 1: arrival_s must be in [0, 1e+09] s" in result.stderr


# ---- outputs ----
def test_out_is_checked_before_running(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, expected in ((tmp_path / "file", "is a file, not a folder"),
                          (tmp_path / "file" / "sub", "file is a file, not a folder")):
        for command in (["run", *TINY], ["compare", *TINY[:6], "--rate", "4,8", "-q"]):
            started = time.perf_counter()
            result = invoke([*command, "--out", str(out)], tmp_path)
            assert result.exit_code == 2 and expected in result.stderr
            assert time.perf_counter() - started < HANG_S


def test_compare_error_leaves_no_parent_folders(tmp_path):
    result = invoke(["compare", *TINY[:6], "--batching", "static,bogus", "-q", "--out",
                     str(tmp_path / "a" / "b" / "c")], tmp_path)
    assert result.exit_code == 2 and not (tmp_path / "a").exists()


def test_run_into_a_compare_folder_clears_its_scenarios_and_report_shows_the_run(tmp_path):
    out = tmp_path / "res"
    assert invoke(["compare", *TINY[:6], "--rate", "4,8", "-q", "--jobs", "1", "--out", str(out)],
                  tmp_path).exit_code == 0
    assert invoke(["run", *TINY, "--out", str(out)], tmp_path).exit_code == 0
    assert not list(out.glob("0*-*")) and not (out / "scenarios.json").exists()
    report = invoke(["report", str(out), "--out", str(tmp_path), "-q"], tmp_path)
    assert report.exit_code == 0 and (tmp_path / "report.html").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_report_names_truncated_files(tmp_path):
    out = tmp_path / "res"
    invoke(["run", *TINY[:6], "--num-requests", "20", "--no-report", "-q", "--out", str(out)], tmp_path)
    requests = (out / "requests.csv").read_text()
    (out / "requests.csv").write_text("\n".join(requests.splitlines()[:3]) + "\n")
    result = invoke(["report", str(out)], tmp_path)
    assert result.exit_code == 2 and "requests.csv: 2 requests rows where summary.json counts 20" in result.stderr
    (out / "requests.csv").write_text(requests[:200])
    assert "requests.csv: the last line is cut short" in invoke(["report", str(out)], tmp_path).stderr
    (out / "config.json").write_text((out / "config.json").read_text()[:50])
    assert "config.json: not valid JSON" in invoke(["report", str(out)], tmp_path).stderr


# ---- the Python API ----
def test_api_names_the_bad_field():
    from simulator import SimConfig, simulate
    from workloads.spec import RequestSpec
    small = SimConfig(num_requests=3, prompt_len="8", output_len="4")
    cases = [(lambda: simulate("h100-sxm"), TypeError, "config must be a SimConfig"),
             (lambda: simulate(small, gpu=123), TypeError, "gpu must be a string, got 123"),
             (lambda: simulate(small, seed="x"), TypeError, "seed must be an integer"),
             (lambda: simulate(small, chunked_prefill="off"), TypeError, "chunked_prefill must be True or False"),
             (lambda: simulate(small, requests=[1, 2]), TypeError, "requests[0] must be a RequestSpec"),
             (lambda: RequestSpec(0, math.nan, 8, 4), ValueError, "arrival_s must be in"),
             (lambda: RequestSpec(0, math.inf, 8, 4), ValueError, "arrival_s must be in"),
             (lambda: RequestSpec(0, 0.0, 8.5, 4), TypeError, "prompt_tokens must be an integer, got 8.5"),
             (lambda: simulate(small, requests=[RequestSpec(1, 0.0, 8, 4), RequestSpec(1, 0.1, 8, 4)]), ValueError,
              "repeats request_id 1"),
             (lambda: simulate(small, bogus=1), TypeError, "unknown option 'bogus'")]
    for call, kind, expected in cases:
        with pytest.raises(kind) as info:
            call()
        assert expected in str(info.value)


# ---- Ctrl-C: exit 130, one line, nothing left (a real process: signals need one) ----
def test_ctrl_c_exits_130_and_leaves_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", "--num-requests", "300000",
                             "--summary-only", "--out", str(tmp_path / "out")], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 130 and err == "error: interrupted\n"
    assert os.listdir(tmp_path) == []
