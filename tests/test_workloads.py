"""Tests for workloads/: arrival processes, length distributions, spec strings, synthetic generation, trace readers.

Statistical checks use large samples from fixed seeds; each tolerance is about 5 standard errors of the estimate
at that sample size (stated beside it), so a correct generator passes for any seed with overwhelming probability
while a wrong distribution (e.g. clipped gaps, wrong CV formula) fails.
"""
from __future__ import annotations

import importlib.resources
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from workloads import (
    ARRIVAL_KINDS,
    LENGTH_DATASETS,
    TRACE_FORMATS,
    RequestSpec,
    SpecError,
    TraceError,
    make_requests,
    parse_arrival_spec,
    parse_length_spec,
    read_trace,
)
from workloads.arrivals import ConstantArrivals, GammaArrivals, PoissonArrivals, arrival_times_s
from workloads.lengths import (
    FixedLength,
    LognormalLength,
    UniformLength,
    bundled_table,
    sample_lengths,
)
from workloads.synthetic import generate

DATA = Path(__file__).parent / "data"
SHARED_TRACES = Path(__file__).resolve().parents[2] / "shared" / "reference" / "traces"
N_STAT = 200_000  # sample size for the statistical checks: standard error of a mean gap is cv/sqrt(n) relative


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- arrivals


def test_poisson_gaps_are_exponential_with_mean_one_over_rate():
    gaps = PoissonArrivals().gaps_s(5.0, N_STAT, np.random.default_rng(1))
    # mean: relative standard error 1/sqrt(2e5) = 0.22%, tolerance 1.2%
    assert gaps.mean() == pytest.approx(0.2, rel=0.012)
    # CV: standard error of the sample CV of exponential gaps ~ 1/sqrt(n) = 0.0022, tolerance 0.012
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.012)
    # Exponential tail: P(gap > 3/rate) = e^-3 = 0.0498. Clipping gaps at 3x the mean (as Vidur does) gives 0.
    # Binomial standard error sqrt(p(1-p)/n) = 4.9e-4, tolerance 0.0025.
    assert np.mean(gaps > 3 * 0.2) == pytest.approx(math.exp(-3), abs=0.0025)
    assert np.mean(gaps > 6 * 0.2) == pytest.approx(math.exp(-6), abs=0.0006)  # se 5.6e-5


@pytest.mark.parametrize(
    ("cv", "mean_rel_tol", "cv_abs_tol"),
    [
        # standard errors at n=2e5 (measured over 200 replicates): mean cv/sqrt(n); CV 0.0009 / 0.007 / 0.024
        (0.5, 0.006, 0.005),
        (2.0, 0.025, 0.035),
        (4.0, 0.05, 0.12),
    ],
)
def test_gamma_gaps_have_requested_cv_and_mean(cv, mean_rel_tol, cv_abs_tol):
    gaps = GammaArrivals(cv).gaps_s(4.0, N_STAT, np.random.default_rng(2))
    assert gaps.mean() == pytest.approx(0.25, rel=mean_rel_tol)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=cv_abs_tol)


def test_constant_arrivals_are_exact():
    assert ConstantArrivals().gaps_s(3.0, 4, np.random.default_rng(0)).tolist() == [1 / 3] * 4
    times = arrival_times_s(ConstantArrivals(), 4.0, np.random.default_rng(0), num_requests=6)
    assert times.tolist() == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]


def test_duration_cap_includes_the_boundary_and_count_matches_rate():
    times = arrival_times_s(ConstantArrivals(), 2.0, np.random.default_rng(0), duration_s=5.0)
    assert times.tolist() == [0.5 * k for k in range(1, 11)]  # 10 = rate * duration, the one at 5.0 included
    both = arrival_times_s(ConstantArrivals(), 2.0, np.random.default_rng(0), num_requests=4, duration_s=5.0)
    assert both.tolist() == [0.5, 1.0, 1.5, 2.0]
    poisson = arrival_times_s(PoissonArrivals(), 50.0, np.random.default_rng(3), duration_s=2000.0)
    # count ~ Poisson(1e5): standard deviation 316, tolerance 1600
    assert len(poisson) == pytest.approx(100_000, abs=1600)
    assert poisson.max() <= 2000.0 and np.all(np.diff(poisson) >= 0)


class _TinyGaps:
    """A stub process whose gaps are 8x shorter than 1/rate, so a duration-only draw needs several chunks."""

    def gaps_s(self, rate, n, rng):
        return np.full(n, 0.125)


def test_duration_only_keeps_drawing_until_the_duration_is_passed():
    times = arrival_times_s(_TinyGaps(), 1.0, np.random.default_rng(0), duration_s=1000.0)
    assert len(times) == 8000
    assert np.array_equal(times, 0.125 * np.arange(1, 8001))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("poisson", PoissonArrivals()),
        (" Poisson ", PoissonArrivals()),
        ("constant", ConstantArrivals()),
        ("gamma:cv=2.0", GammaArrivals(2.0)),
        ("gamma:0.5", GammaArrivals(0.5)),
        ("gamma: cv = 3", GammaArrivals(3.0)),
    ],
)
def test_parse_arrival_spec(text, expected):
    assert parse_arrival_spec(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("weibull", "unknown arrival spec 'weibull'"),
        ("gamma", "cv must be a number"),
        ("gamma:cv=abc", "cv must be a number"),
        ("gamma:cv=0", "cv must be in [0.001, 1000]"),
        ("gamma:-1", "cv must be in [0.001, 1000]"),
        ("gamma:k=2", "the only parameter is cv"),
        ("gamma:nan", "cv must be in [0.001, 1000]"),
        ("poisson:2", "takes no parameters"),
        ("", "unknown arrival spec ''"),
    ],
)
def test_bad_arrival_specs_give_one_line_errors_listing_forms(text, fragment):
    with pytest.raises(SpecError) as exc:
        parse_arrival_spec(text)
    message = _one_line(exc)
    assert fragment in message
    assert "accepted forms: poisson, gamma:cv=<float> (or gamma:<float>), constant" in message


def test_arrival_kinds_exported():
    assert ARRIVAL_KINDS == ("poisson", "gamma", "constant")


# ---------------------------------------------------------------- lengths


def test_fixed_and_uniform_lengths():
    rng = np.random.default_rng(4)
    assert parse_length_spec("512").sample(3, rng).tolist() == [512, 512, 512]
    draws = parse_length_spec("uniform:3:7").sample(10_000, rng)
    assert draws.dtype == np.int64
    assert set(draws.tolist()) == {3, 4, 5, 6, 7}  # both ends included, nothing outside
    assert parse_length_spec("uniform:9:9").sample(5, rng).tolist() == [9] * 5


def test_lognormal_by_mean_and_by_median():
    rng = np.random.default_rng(5)
    by_mean = parse_length_spec("lognormal:mean=600,sigma=0.8")
    assert by_mean.sigma == 0.8
    assert by_mean.median_tokens == pytest.approx(600 * math.exp(-0.32), rel=1e-12)  # median = mean*e^(-s^2/2)
    draws = by_mean.sample(N_STAT, rng)
    # sd of X = 600*sqrt(e^0.64 - 1) = 568, so the standard error of the mean is 1.27 tokens; tolerance 7
    assert draws.mean() == pytest.approx(600, abs=7)
    by_median = parse_length_spec("lognormal:median=400,sigma=1.0")
    assert by_median == LognormalLength(400.0, 1.0)
    # sample median: standard error ~ 1.2533*sigma_log*median/sqrt(n) ~ 1.1 tokens; tolerance 6
    assert np.median(by_median.sample(N_STAT, rng)) == pytest.approx(400, abs=6)


def test_lognormal_lengths_are_integers_of_at_least_one():
    draws = LognormalLength(1.0, 2.0).sample(10_000, np.random.default_rng(6))
    assert draws.dtype == np.int64
    assert draws.min() == 1  # about half of exp(N(0, 4)) rounds to 0 and is floored at 1
    assert np.mean(draws == 1) > 0.4


def test_bundled_datasets_load_from_package_data():
    assert LENGTH_DATASETS == ("sharegpt", "arxiv", "bwb")
    rows = {"sharegpt": 5000, "arxiv": 3000, "bwb": 3000}
    data = importlib.resources.files("workloads") / "data"
    for name in LENGTH_DATASETS:
        prompt, output = bundled_table(name)
        assert len(prompt) == len(output) == rows[name]
        assert prompt.min() >= 1 and output.min() >= 1
    for name in ("README.md", "LICENSE-APACHE-etalon", "LICENSE-MIT-vidur"):
        assert (data / name).is_file()
    assert "project-etalon/etalon" in (data / "README.md").read_text(encoding="utf-8")


def test_bundled_dataset_roles_pick_prompt_and_output_columns():
    prompt_table, output_table = bundled_table("sharegpt")
    prompt = parse_length_spec("sharegpt", "prompt")
    output = parse_length_spec("sharegpt", "output")
    assert prompt.values is prompt_table and output.values is output_table
    # ShareGPT outputs are capped at 1024 upstream; prompts go far beyond that
    assert output.values.max() <= 1024 < prompt.values.max()


@pytest.mark.parametrize("name", ["sharegpt", "arxiv", "bwb"])
def test_joint_sampling_keeps_real_pairs(name):
    prompt_table, output_table = bundled_table(name)
    real_pairs = set(zip(prompt_table.tolist(), output_table.tolist()))
    prompts, outputs = sample_lengths(
        parse_length_spec(name, "prompt"), parse_length_spec(name, "output"), 20_000, np.random.default_rng(7)
    )
    assert set(zip(prompts.tolist(), outputs.tolist())) <= real_pairs


def test_joint_sampling_keeps_correlation_and_mixed_datasets_do_not():
    # BWB (translation) prompt and output lengths correlate at 0.76 in the bundled rows
    bwb = sample_lengths(parse_length_spec("bwb"), parse_length_spec("bwb", "output"), 20_000, np.random.default_rng(8))
    assert np.corrcoef(*bwb)[0, 1] > 0.7
    # Different tables are sampled independently: correlation ~ 0 (standard error 1/sqrt(2e4) = 0.007)
    mixed = sample_lengths(parse_length_spec("bwb"), parse_length_spec("arxiv", "output"), 20_000,
                           np.random.default_rng(8))
    assert abs(np.corrcoef(*mixed)[0, 1]) < 0.05


def test_empirical_user_file_columns_and_joint_sampling(tmp_path):
    path = tmp_path / "lens.csv"
    path.write_text("prompt_tokens,output_tokens,other\n10,1,x\n20,2,y\n30,3,z\n")
    prompt = parse_length_spec(f"empirical:{path}", "prompt")
    output = parse_length_spec(f"empirical:{path}", "output")
    assert prompt.values.tolist() == [10, 20, 30] and output.values.tolist() == [1, 2, 3]
    p, o = sample_lengths(prompt, output, 1000, np.random.default_rng(9))
    assert np.array_equal(p, 10 * o)  # rows sampled jointly
    explicit = parse_length_spec(f"empirical:{path}:output_tokens", "prompt")
    assert explicit.values.tolist() == [1, 2, 3]
    single = tmp_path / "single.csv"
    single.write_text("tokens\n5\n6\n")
    assert parse_length_spec(f"empirical:{single}", "output").values.tolist() == [5, 6]


@pytest.mark.parametrize(
    ("content", "spec_suffix", "fragment"),
    [
        ("tokens\n5\nabc\n", "", "lens.csv line 3: tokens 'abc' is not an integer"),
        ("tokens\n5\n0\n", "", "lens.csv line 3: tokens must be >= 1, got 0"),
        ("a,b\n1,2\n", "", "say which column holds prompt lengths"),
        ("a,b\n1,2\n", ":c", "lens.csv line 1: missing column 'c'"),
    ],
)
def test_bad_empirical_files(tmp_path, content, spec_suffix, fragment):
    path = tmp_path / "lens.csv"
    path.write_text(content)
    with pytest.raises(SpecError) as exc:
        parse_length_spec(f"empirical:{path}{spec_suffix}")
    assert fragment in _one_line(exc)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "unknown length spec ''"),
        ("zipf", "unknown length spec 'zipf'"),
        ("0", "a fixed length must be in 1..1,000,000,000 tokens"),
        ("-5", "a fixed length must be in 1..1,000,000,000 tokens"),
        ("12.5", "unknown length spec '12.5'"),
        ("uniform:5", "uniform needs two integers"),
        ("uniform:a:b", "uniform needs two integers"),
        ("uniform:10:5", "uniform needs 1 <= LO <= HI, got LO=10 HI=5"),
        ("uniform:0:5", "uniform needs 1 <= LO <= HI"),
        ("lognormal:mean=600", "needs sigma and exactly one of mean or median"),
        ("lognormal:mean=600,median=5,sigma=1", "needs sigma and exactly one of mean or median"),
        ("lognormal:mean=x,sigma=1", "lognormal mean 'x' is not a number"),
        ("lognormal:mean=-5,sigma=1", "mean/median must be > 0"),
        ("lognormal:mean=5,sigma=-1", "sigma must be >= 0"),
        ("lognormal:mu=5,sigma=1", "unexpected lognormal parameter 'mu=5'"),
        ("sharegpt:1", "unknown length spec 'sharegpt:1'"),
        ("empirical:", "empirical needs a file"),
        ("empirical:no_such_file.csv", "length file 'no_such_file.csv' not found"),
    ],
)
def test_bad_length_specs_give_one_line_errors(text, fragment):
    with pytest.raises(SpecError) as exc:
        parse_length_spec(text)
    message = _one_line(exc)
    assert fragment in message
    if "not found" not in fragment:
        assert "accepted forms: N (fixed, e.g. 512), uniform:LO:HI" in message
        assert "sharegpt | arxiv | bwb" in message


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    spec=st.sampled_from(["7", "uniform:1:3", "lognormal:median=2,sigma=3", "sharegpt", "arxiv", "bwb"]),
)
def test_every_length_distribution_draws_ints_of_at_least_one(seed, spec):
    for role in ("prompt", "output"):
        draws = parse_length_spec(spec, role).sample(500, np.random.default_rng(seed))
        assert draws.dtype == np.int64 and draws.min() >= 1


# ---------------------------------------------------------------- synthetic / make_requests


def test_make_requests_is_reproducible_and_seed_dependent():
    a = make_requests(seed=11, rate=3.0, num_requests=500)
    b = make_requests(seed=11, rate=3.0, num_requests=500)
    c = make_requests(seed=12, rate=3.0, num_requests=500)
    assert a == b
    assert [r.arrival_s for r in a] != [r.arrival_s for r in c]
    assert [r.request_id for r in a] == list(range(500))
    assert all(x.arrival_s < y.arrival_s for x, y in zip(a, a[1:]))


def test_make_requests_default_sharegpt_samples_real_rows_jointly():
    prompt_table, output_table = bundled_table("sharegpt")
    real_pairs = set(zip(prompt_table.tolist(), output_table.tolist()))
    requests = make_requests(seed=13, rate=10.0, num_requests=5000)
    assert {(r.prompt_tokens, r.output_tokens) for r in requests} <= real_pairs


def test_make_requests_with_spec_strings_and_caps():
    requests = make_requests(seed=14, rate=2.0, arrival="constant", prompt_len="512", output_len="uniform:1:4",
                             duration_s=10.0)
    assert [r.arrival_s for r in requests] == [0.5 * k for k in range(1, 21)]
    assert {r.prompt_tokens for r in requests} == {512}
    assert {r.output_tokens for r in requests} <= {1, 2, 3, 4}
    both = make_requests(seed=14, rate=2.0, arrival="gamma:cv=2", num_requests=5, duration_s=1e6)
    assert len(both) == 5
    capped = make_requests(seed=14, rate=2.0, num_requests=10_000, duration_s=100.0)
    assert 0 < len(capped) < 10_000 and capped[-1].arrival_s <= 100.0


def test_generate_with_explicit_objects():
    requests = generate(ConstantArrivals(), 1.0, FixedLength(3), UniformLength(2, 2), np.random.default_rng(0),
                        num_requests=3)
    assert requests == [RequestSpec(0, 1.0, 3, 2), RequestSpec(1, 2.0, 3, 2), RequestSpec(2, 3.0, 3, 2)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": -1}, "rate must be positive, got -1"),
        ({"rate": 0.0}, "rate must be positive, got 0.0"),
        ({"rate": None}, "rate must be positive, got None"),
        ({"rate": 1.0, "num_requests": None}, "a synthetic workload needs num_requests or duration_s (or both)"),
        ({"rate": 1.0, "num_requests": 0}, "num_requests must be a positive integer, got 0"),
        ({"rate": 1.0, "num_requests": 2.5}, "num_requests must be a positive integer, got 2.5"),
        ({"rate": 1.0, "duration_s": -3.0, "num_requests": None}, "duration_s must be positive, got -3.0"),
        ({"rate": 1.0, "rate_scale": 0}, "rate_scale must be positive, got 0"),
        ({"rate": 1e-6, "duration_s": 1.0, "num_requests": None}, "no request arrives within duration_s=1.0"),
    ],
)
def test_make_requests_bad_arguments(kwargs, message):
    args = {"seed": 0, "num_requests": 10, **kwargs}
    with pytest.raises(ValueError) as exc:
        make_requests(**args)
    assert _one_line(exc).startswith(message)


def test_make_requests_rejects_bad_specs_even_for_replay():
    with pytest.raises(SpecError, match="unknown arrival spec 'bursty'"):
        make_requests(seed=0, rate=1.0, arrival="bursty", trace=str(DATA / "workloads_plain.csv"))


# ---------------------------------------------------------------- traces

AZURE_EXPECTED = [
    RequestSpec(0, 0.0, 4808, 10),
    RequestSpec(1, 0.25, 3180, 8),
    RequestSpec(2, 0.25, 50, 5),  # same timestamp as the row above it: stable sort keeps file order
    RequestSpec(3, 1.5, 100, 20),
]
MOONCAKE_EXPECTED = [
    RequestSpec(0, 0.0, 512, 3, ((0, 512),)),            # hash ids: one 512-token content piece each
    RequestSpec(1, 0.0, 1025, 9, ((0, 512), (2, 512), (3, 1))),   # the last block holds what is left
    RequestSpec(2, 2.0, 600, 7, ((0, 512), (1, 88))),
    RequestSpec(3, 3.5, 100, 1),  # no hash_ids: no prefix
]
PLAIN_EXPECTED = [RequestSpec(0, 0.0, 200, 20), RequestSpec(1, 0.5, 100, 10), RequestSpec(2, 2.0, 300, 30)]


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("workloads_azure.csv", "azure", AZURE_EXPECTED),
        ("workloads_mooncake.jsonl", "mooncake", MOONCAKE_EXPECTED),
        ("workloads_plain.csv", "plain", PLAIN_EXPECTED),
        ("workloads_plain.jsonl", "plain", PLAIN_EXPECTED),
        ("workloads_plain.json", "plain", PLAIN_EXPECTED),
    ],
)
def test_trace_readers_exact(name, fmt, expected):
    assert read_trace(DATA / name, fmt) == expected
    assert read_trace(DATA / name, "auto") == expected
    assert make_requests(seed=0, rate=None, trace=str(DATA / name), trace_format=fmt) == expected


def test_trace_rate_scale_and_caps():
    scaled = read_trace(DATA / "workloads_mooncake.jsonl", rate_scale=2.0)
    assert [r.arrival_s for r in scaled] == [0.0, 0.0, 1.0, 1.75]
    assert read_trace(DATA / "workloads_azure.csv", max_requests=2) == AZURE_EXPECTED[:2]
    # max_duration_s keeps arrivals at or before it, in scaled time
    assert read_trace(DATA / "workloads_azure.csv", max_duration_s=0.25) == AZURE_EXPECTED[:3]
    assert read_trace(DATA / "workloads_azure.csv", max_duration_s=0.2) == AZURE_EXPECTED[:1]
    assert [r.arrival_s for r in read_trace(DATA / "workloads_azure.csv", rate_scale=0.5, max_duration_s=1.0)] == [
        0.0, 0.5, 0.5]
    replay = make_requests(seed=0, rate=None, trace=str(DATA / "workloads_plain.csv"), num_requests=2,
                           rate_scale=4.0)
    assert replay == [RequestSpec(0, 0.0, 200, 20), RequestSpec(1, 0.125, 100, 10)]


def test_trace_formats_exported():
    assert TRACE_FORMATS == ("auto", "azure", "mooncake", "plain", "tokens", "vllm-bench")


AZ_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
AZ_ROW = "2023-11-16 18:17:03.9799600,10,5\n"
PLAIN_HEADER = "arrival_s,prompt_tokens,output_tokens\n"
MC_ROW = '{"timestamp": 0, "input_length": 10, "output_length": 2}\n'


@pytest.mark.parametrize(
    ("name", "content", "fmt", "message"),
    [
        ("trace.csv", PLAIN_HEADER + "0,1,1\n" * 5 + "1.5,abc,3\n", "plain",
         "trace.csv line 7: prompt_tokens 'abc' is not an integer"),
        ("trace.csv", PLAIN_HEADER + "0,1,1\n\n0,1,-2\n", "auto",  # the blank line 3 still counts
         "trace.csv line 4: output_tokens must be >= 1, got -2"),
        ("trace.csv", PLAIN_HEADER + "0,1,1\nnan,1,1\n", "plain",
         "trace.csv line 3: arrival_s 'nan' is not a finite number"),
        ("trace.csv", PLAIN_HEADER + "0,1\n", "plain", "trace.csv line 2: output_tokens is empty"),
        ("trace.csv", PLAIN_HEADER + "0,1,1\n0,1,1,1\n", "plain", "trace.csv line 3: expected 3 fields, saw 4"),
        ("az.csv", AZ_HEADER + AZ_ROW + "2023-11-16 18:17:04.0,12,0\n", "azure",
         "az.csv line 3: GeneratedTokens must be >= 1, got 0 (requests must generate at least one token"),
        ("az.csv", AZ_HEADER + AZ_ROW + "yesterday,12,3\n", "azure",
         "az.csv line 3: TIMESTAMP 'yesterday' is not an ISO 8601 date-time"),
        ("az.csv", AZ_HEADER + AZ_ROW + "2023-11-16 18:17:04.0,1.5,3\n", "azure",
         "az.csv line 3: ContextTokens '1.5' is not an integer"),
        ("az.csv", "TIMESTAMP,ContextTokens\n" + "2023-11-16 18:17:04.0,1\n", "azure",
         "az.csv line 1: missing column 'GeneratedTokens'"),
        ("mc.jsonl", MC_ROW + '{"timestamp": 5, "input_length": 10\n', "mooncake", "mc.jsonl line 2: not valid JSON"),
        ("mc.jsonl", MC_ROW + '{"timestamp": 5, "input_length": 10}\n', "mooncake",
         "mc.jsonl line 2: missing field 'output_length'"),
        ("mc.jsonl", MC_ROW + '{"timestamp": 5, "input_length": 10.0, "output_length": 1}\n', "auto",
         "mc.jsonl line 2: input_length 10.0 is not an integer"),
        ("mc.jsonl", MC_ROW + '{"timestamp": "5", "input_length": 10, "output_length": 1}\n', "mooncake",
         "mc.jsonl line 2: timestamp '5' is not a finite number"),
        ("mc.jsonl", MC_ROW + '{"timestamp": 5, "input_length": 513, "output_length": 1, "hash_ids": [1,2,3]}\n',
         "mooncake", "mc.jsonl line 2: 3 hash_ids but input_length 513 fills only 2 blocks of 512 tokens"),
        ("mc.jsonl", MC_ROW + "[1, 2]\n", "mooncake", "mc.jsonl line 2: expected a JSON object, got list"),
        ("p.jsonl", '{"arrival_s": 0, "prompt_tokens": "12", "output_tokens": 1}\n', "plain",
         "p.jsonl line 1: prompt_tokens '12' is not an integer"),
        ("p.json", '[{"arrival_s": 0, "prompt_tokens": 1, "output_tokens": 1}, {"arrival_s": 1}]', "plain",
         "p.json record 2: missing field 'prompt_tokens'"),
        ("p.txt", PLAIN_HEADER + "0,1,1\n", "plain", "p.txt: the plain format is chosen by extension"),
        ("x.csv", "a,b,c\n1,2,3\n", "auto", "x.csv: cannot detect the trace format from its first line 'a,b,c'"),
        ("empty.csv", "", "azure", "empty.csv: file is empty"),
        ("empty.jsonl", "\n\n", "auto", "empty.jsonl: file is empty"),
        ("header.csv", PLAIN_HEADER, "auto", "header.csv: the trace has no requests"),
    ],
)
def test_malformed_traces_name_file_and_line(tmp_path, name, content, fmt, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(TraceError) as exc:
        read_trace(path, fmt)
    assert _one_line(exc).startswith(message)


def test_trace_file_and_option_errors(tmp_path):
    with pytest.raises(TraceError) as exc:
        read_trace(tmp_path / "missing.csv")
    assert _one_line(exc) == f"trace file '{tmp_path / 'missing.csv'}' not found"
    with pytest.raises(TraceError) as exc:
        read_trace(DATA / "workloads_plain.csv", "csv")
    assert _one_line(exc) == "unknown trace format 'csv'; valid formats: auto, azure, mooncake, plain, tokens, vllm-bench"
    with pytest.raises(ValueError, match=r"^rate_scale must be positive, got -1$"):
        read_trace(DATA / "workloads_plain.csv", rate_scale=-1)
    with pytest.raises(ValueError, match=r"^max_duration_s must be positive, got 0$"):
        read_trace(DATA / "workloads_plain.csv", max_duration_s=0)


# ---------------------------------------------------------------- full real traces (../shared, if present)

needs_shared = pytest.mark.skipif(not SHARED_TRACES.is_dir(), reason="../shared reference traces not present")


@needs_shared
def test_full_azure_conv_trace_loads():
    requests = read_trace(SHARED_TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv")
    assert len(requests) == 19_366
    # Stats from the traces README: 58.4 min, input mean 1,155 and max 14,050, output max 1,000
    assert requests[-1].arrival_s / 60 == pytest.approx(58.4, abs=0.05)
    assert np.mean([r.prompt_tokens for r in requests]) == pytest.approx(1155, abs=1)
    assert max(r.prompt_tokens for r in requests) == 14_050
    assert max(r.output_tokens for r in requests) == 1_000
    raw = pd.read_csv(SHARED_TRACES / "azure_llm_2023" / "AzureLLMInferenceTrace_conv.csv", nrows=2)
    assert (requests[0].prompt_tokens, requests[0].output_tokens) == tuple(raw.iloc[0, 1:3])


@needs_shared
def test_full_mooncake_conversation_trace_loads():
    requests = read_trace(SHARED_TRACES / "mooncake_fast25" / "conversation_trace.jsonl")
    assert len(requests) == 12_031
    assert requests[-1].arrival_s / 60 == pytest.approx(58.9, abs=0.05)
    assert max(r.prompt_tokens for r in requests) == 126_195
    assert all(len(r.content) == math.ceil(r.prompt_tokens / 512) for r in requests)
    assert all(r.content_tokens == r.prompt_tokens for r in requests)


def test_one_json_reader_serves_every_file_kind(tmp_path):
    """workloads.files reads JSON once for traces, run folders, results and model configs: bounded UTF-8 text,
    one-line errors of the caller's class naming the file and line."""
    from workloads.files import json_records, read_json

    class Mine(ValueError):
        pass

    lines = tmp_path / "r.jsonl"
    lines.write_text('{"a": 1}\n\n{"a": 2}\n[3]\n')
    got = json_records(lines, "test file", error=Mine, label="r.jsonl")
    assert next(got) == ("r.jsonl line 1", {"a": 1})
    assert next(got) == ("r.jsonl line 3", {"a": 2})
    with pytest.raises(Mine, match=r"^r.jsonl line 4: expected a JSON object, got list$"):
        next(got)
    array = tmp_path / "r.json"
    array.write_text('[{"a": 1}, 2]')
    assert next(json_records(array, "test file", arrays=True, label="r.json")) == ("r.json record 1", {"a": 1})
    with pytest.raises(ValueError, match=r"^r.json record 2: expected a JSON object, got int$"):
        list(json_records(array, "test file", arrays=True, label="r.json"))
    with pytest.raises(Mine, match=r"^r.json line 1: expected a JSON object, got list$"):   # not without `arrays`
        list(json_records(array, "test file", error=Mine, label="r.json"))
    assert read_json(array, "test file", want=list) == [{"a": 1}, 2]
    with pytest.raises(Mine, match=r"r.json: expected a JSON object, got list$"):
        read_json(array, "test file", error=Mine)
    broken = tmp_path / "b.json"
    broken.write_text('{"a": 1,\n')
    with pytest.raises(Mine, match=r"b.json: not valid JSON \(Expecting property name enclosed in double quotes, "
                                   r"line 2\)$"):
        read_json(broken, "test file", error=Mine)
    with pytest.raises(Mine, match=r"missing.json: test file not found$"):
        read_json(tmp_path / "missing.json", "test file", error=Mine)
