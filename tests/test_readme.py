"""Every command of the README runs: the `servesim ...` lines of its bash blocks and its Python blocks.

The commands are read from README.md at test time, so a command added there is tested at once. They run in
README order in one temporary folder (a later command may read what an earlier one wrote: `servesim report
servesim-out/`), in process, and each must exit 0. Sizes are shrunk so the whole README runs in seconds (SHRINK
below: at most 60 requests, sweeps of three rates at a coarse tolerance, one job, --quick experiments, no
report.html except for the first run); a command that the shrinking cannot make small enough, or that needs data
outside the repository, goes into SKIP with its reason. Files a command reads come from FIXTURES: the README's
own TOML blocks (scenario.toml, my-gpu.toml, pools.toml, pd-pools.toml), files of tests/data, or files an earlier command wrote.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
MAX_REQUESTS = 60
# Lines of bash blocks that are not servesim commands, or cannot run here: (prefix, reason).
SKIP = (("pip ", "installs the package (CI does)"), ("pytest", "the test suite itself"),
        ("python benchmarks/", "a reproduction script; each has its own documented run time"),
        ("servesim calibrate ../", "needs measured kernel profiles outside the repository"))


# Commands containing these run elsewhere: (text, reason).
SKIP_CONTAINING = (("--executor ray", "starts a Ray cluster whose workers import the installed package"),)


def readme_blocks(language: str) -> list[str]:
    return re.findall(rf"^\s*```{language}\n(.*?)^\s*```", README, flags=re.S | re.M)


def readme_commands() -> list[str]:
    text = "\n".join(readme_blocks("bash")).replace("\\\n", " ")       # join `\` continuation lines
    lines = [line.strip() for line in text.splitlines()]
    return [re.split(r"\s+#\s", line)[0].strip() for line in lines if line and not line.startswith("#")]


def toml_block(first_line: str) -> str:
    """The README's TOML block that starts with `first_line` (dedented)."""
    for block in readme_blocks("toml"):
        text = "\n".join(line.strip() for line in block.splitlines()) + "\n"
        if text.startswith(first_line):
            return text
    raise AssertionError(f"README has no TOML block starting {first_line!r}")


def shrink(args: list[str]) -> list[str]:
    """SHRINK: the README's command with small sizes (the options and their meaning unchanged)."""
    command, out = args[0], list(args)
    if "--num-requests" in out:
        i = out.index("--num-requests") + 1
        out[i] = str(min(int(out[i]), MAX_REQUESTS))
    elif command in ("run", "compare", "sweep"):
        out += ["--num-requests", str(MAX_REQUESTS)]
    for i, arg in enumerate(out):
        match = re.fullmatch(r"(\d+(?:\.\d+)?):(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)", arg)
        if match and out[i - 1] == "--rate":                       # a range: its ends and the middle
            lo, hi = float(match.group(1)), float(match.group(2))
            out[i] = f"{lo:g}:{hi:g}:{(hi - lo) / 2:g}"
    if command in ("compare", "sweep") and "--jobs" not in out:
        out += ["--jobs", "1"]
    if command == "sweep":
        out += ["--tolerance", "0.25"]
    if command == "run" and "--no-report" not in out:
        out += ["--no-report"]
    if command == "experiment" and "--list" not in out:
        out += ["--quick"]
    return out


def fixtures(folder: Path) -> None:
    """FIXTURES: every file a README command reads, as the README names it."""
    data = ROOT / "tests" / "data"
    (folder / "scenario.toml").write_text(toml_block('gpu = "h100-sxm"'))
    (folder / "my-gpu.toml").write_text(toml_block('name = "my-accelerator"'))
    (folder / "pools.toml").write_text(toml_block("[[groups]]\nname = \"h100-tp2\""))
    (folder / "pd-pools.toml").write_text(toml_block("[[groups]]\nname = \"prefill-h100\""))
    shutil.copy(data / "workloads_azure.csv", folder / "AzureLLMInferenceTrace_conv.csv")
    shutil.copy(data / "workloads_mooncake.jsonl", folder / "conversation_trace.jsonl")
    shutil.copy(data / "hf_configs" / "llama-3.1-8b.json", folder / "config.json")
    (folder / "path" / "to").mkdir(parents=True)
    shutil.copy(data / "hf_configs" / "qwen2.5-0.5b.json", folder / "path" / "to" / "config.json")
    shutil.copytree(data / "vllm_run_4090", folder / "tests" / "data" / "vllm_run_4090")
    sharegpt = [{"id": str(i), "conversations": [{"from": "human", "value": "word " * (20 + 7 * i)},
                                                 {"from": "gpt", "value": "reply " * (10 + 3 * i)}]}
                for i in range(30)]
    (folder / "ShareGPT_V3_unfiltered_cleaned_split.json").write_text(json.dumps(sharegpt))
    for name in ("result.json", "bench.json"):
        (folder / name).write_text(json.dumps(bench_result()))


def bench_result(n: int = 20) -> dict:
    """A small `vllm bench serve --save-result --save-detailed` result (its per-request keys, seconds)."""
    outs = [8 + i % 5 for i in range(n)]
    itls = [[0.0066] * (o - 1) for o in outs]      # near what servesim predicts on an h100-sxm
    return {"model_id": "meta-llama/Llama-3.1-8B-Instruct", "completed": n, "input_lens": [64 + 8 * i for i in range(n)],
            "output_lens": outs, "ttfts": [0.0072] * n, "itls": itls, "start_times": [0.1 * i for i in range(n)],
            "latencies": [0.0072 + sum(g) for g in itls], "errors": [""] * n}


def after(args: list[str], folder: Path) -> None:
    """A file a later command reads that the skipped `servesim calibrate` would write (my-4090.toml): the
    README's GPU file stands in."""
    if not (folder / "my-4090.toml").exists():
        shutil.copy(folder / "my-gpu.toml", folder / "my-4090.toml")


def test_readme_has_commands():
    commands = readme_commands()
    assert sum(c.startswith("servesim ") for c in commands) >= 20
    assert all(c.startswith("servesim ") or c.startswith(tuple(p for p, _ in SKIP)) for c in commands), \
        [c for c in commands if not c.startswith("servesim ")]


def test_every_readme_command_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fixtures(tmp_path)
    runner = CliRunner()
    first_run = True
    for line in readme_commands():
        if line.startswith(tuple(p for p, _ in SKIP)) or any(t in line for t, _ in SKIP_CONTAINING):
            continue
        for part in line.split("&&"):                   # `pip install . && servesim run`
            part = part.strip()
            if not part.startswith("servesim "):
                continue
            args = shrink(shlex.split(part)[1:])
            if first_run and args[0] == "run":
                args.remove("--no-report")              # one run writes its report.html, as documented
                first_run = False
            after(args, tmp_path)
            result = runner.invoke(cli.app, args)
            assert result.exit_code == 0, f"README command failed: {part}\n(ran: servesim {shlex.join(args)})\n" \
                                          f"{result.output[-1500:]}"
    assert (tmp_path / "both.html").is_file() and (tmp_path / "roofline.html").is_file()


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for block in readme_blocks("python"):
        code = re.sub(r"num_requests=\d+", f"num_requests={MAX_REQUESTS}", block)
        exec(compile(code, "README.md python block", "exec"), {})
