"""servesim command line: thin commands that parse options into a SimConfig, call the simulator, write files."""
from __future__ import annotations

import os
import signal
import sys


def _interrupted_at_start_up(signum, frame) -> None:   # Ctrl-C while the libraries import: nothing to clean up
    sys.stderr.write("error: interrupted\n")
    os._exit(130)


# As the `servesim` command (not when imported), and unless SIGINT is ignored (nohup, a background job)
_AS_COMMAND = os.path.basename(sys.argv[0]) in ("servesim", "cli.py") and \
    signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
if _AS_COMMAND:
    signal.signal(signal.SIGINT, _interrupted_at_start_up)

import contextlib  # noqa: E402  (every import after the start-up Ctrl-C handler)
import functools  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
import typing  # noqa: E402
from enum import Enum  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Any, Callable, Optional  # noqa: E402

import typer  # noqa: E402  (after the start-up Ctrl-C handler)
import typer.core  # noqa: E402

try:                         # the click typer runs on: newer typers vendor it as typer._click
    from typer._click import exceptions as click
except ImportError:
    from click import exceptions as click

from simulator.runs.options import (COMMA_VALUED, OPTIONS_BY_FLAG, SCENARIO_OPTIONS, ScenarioOption, parse_bool,  # noqa: E402
                                    split_items)

INTERRUPTED = 130
if _AS_COMMAND:              # imports done: Ctrl-C raises KeyboardInterrupt again, handled by OneLineErrors
    signal.signal(signal.SIGINT, signal.default_int_handler)


class Interrupted(Exception):
    """Ctrl-C inside a command (KeyboardInterrupt would be turned into click's two-line 'Aborted!')."""


class OneLineErrors(typer.core.TyperGroup):
    """Every failure is one line on stderr: usage errors (unknown flag, bad value), Ctrl-C (exit 130), out of
    memory, and, as a last resort, an unexpected exception (set SERVESIM_TRACEBACK=1 to see its traceback).
    Bare on/off flags (`--chunked-prefill`) mean on."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = bare_flags(list(sys.argv[1:] if args is None else args))
        try:
            code = super().main(args=args, prog_name=prog_name or "servesim", complete_var=complete_var,
                                standalone_mode=False, **extra)
        except click.NoArgsIsHelpError as exc:
            exc.show()
            code = 0
        except click.UsageError as exc:
            code = _print_error(usage_message(exc), 2)
        except click.ClickException as exc:
            code = _print_error(exc.format_message(), exc.exit_code)
        except (typer.Abort, Interrupted, KeyboardInterrupt):
            code = _print_error("interrupted", INTERRUPTED)
        except MemoryError:
            code = _print_error("out of memory: lower --num-requests, or use --summary-only on", 1)
        except BrokenPipeError:                       # `servesim ... | head`
            code = 0
        except Exception as exc:  # noqa: BLE001: the last resort, never a traceback for the user
            if os.environ.get("SERVESIM_TRACEBACK"):
                raise
            code = _print_error(f"internal error ({type(exc).__name__}: {exc}); please report it with the "
                                "command (SERVESIM_TRACEBACK=1 shows the traceback)", 1)
        sys.exit(code if isinstance(code, int) else 0)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted() from None


SPACED_LISTS = ("--goodput",)     # vLLM's spelling takes several words: --goodput ttft:500 tpot:50


def bare_flags(args: list[str]) -> list[str]:
    """`--chunked-prefill` alone (last, or before another option) -> `--chunked-prefill on`; the words after an
    option of SPACED_LISTS (`--goodput ttft:500 tpot:50`) -> one value."""
    out: list[str] = []
    for i, arg in enumerate(args):
        if len(out) >= 2 and out[-2] in SPACED_LISTS and re.fullmatch(r"\w+:\S+", arg):
            out[-1] += " " + arg
            continue
        out.append(arg)
        opt = OPTIONS_BY_FLAG.get(arg)
        if opt is not None and opt.is_flag and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append("on")
    return out


def usage_message(exc: click.UsageError) -> str:
    """click's usage errors in servesim's words: `--rate: expected a number, got 'abc'`."""
    if isinstance(exc, click.NoSuchOption):
        hint = f" (did you mean {exc.possibilities[0]}?)" if exc.possibilities else ""
        return f"unknown option {exc.option_name}{hint}; see --help"
    if isinstance(exc, click.BadParameter) and exc.param is not None and exc.param.opts:
        message = re.sub(r"^Value error, ", "", str(exc.message))
        return f"{max(exc.param.opts, key=len)}: {message}"
    return exc.format_message()


def _print_error(message: str, code: int) -> int:
    typer.echo(f"error: {one_line(message)}", err=True)
    return code


LONG_WORD = re.compile(r"\S{121,}")


def one_line(message: str) -> str:
    """A message as one line of bounded length: whitespace collapsed, huge words (a 50 MB value) cut, and an
    unknown name followed by its valid choices gets the closest one suggested."""
    text = LONG_WORD.sub(lambda m: f"{m.group(0)[:60]}...({len(m.group(0)):,} characters)", " ".join(str(message).split()))
    return suggest(text[:2000])


CHOICES = re.compile(r"unknown [^']*'(?P<value>[^']+)'.*?(?:one of|valid \w+|bundled \w+|choices)[: ]+(?P<list>[^;()]+)")


def suggest(message: str) -> str:
    """'unknown batching policy 'continous'; choose one of: static, dynamic, continuous' + (did you mean ...)."""
    import difflib
    match = CHOICES.search(message)
    if not match or "did you mean" in message:
        return message
    choices = [c.strip(" .'") for c in match.group("list").split(",")]
    close = difflib.get_close_matches(match.group("value"), choices, n=1)
    return f"{message} (did you mean '{close[0]}'?)" if close else message


def _flags_show_as_flags() -> None:
    """typer's rich help prints `<bool>` after a flag (`--quiet <bool>`); a flag takes no value: show none."""
    original = getattr(typer.core.TyperOption, "display_type_rich", None)
    if original is None:
        return

    def display_type_rich(self, ctx):
        return None if self.is_flag else original(self, ctx)
    typer.core.TyperOption.display_type_rich = display_type_rich


_flags_show_as_flags()
app = typer.Typer(help="servesim: simulate LLM inference serving on a roofline GPU model, answer what-if "
                       "questions in seconds.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, cls=OneLineErrors)


class OutputFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"


ConfigOpt = Annotated[Optional[Path], typer.Option("--config", help="Read options from a TOML or YAML file; "
                                                   "command-line options override it.", rich_help_panel="Scenario")]
OutOpt = Annotated[Path, typer.Option("--out", help="Results folder.")]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", help="stdout format: table, csv or json.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar and no table (a csv or json "
                                        "--format is still printed, for scripts).")]


def fail(message: str) -> None:
    """Print one line to stderr and exit non-zero."""
    _print_error(message, 2)
    raise typer.Exit(2)


@contextlib.contextmanager
def cli_errors():
    """Turn bad-input exceptions into one-line errors (never a traceback)."""
    try:
        yield
    except typer.Exit:
        raise
    except (ValueError, KeyError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        fail(str(message))
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")


def scenario_command(*, lists: bool = False) -> Callable:
    """Add every SCENARIO_OPTIONS flag to a command; the command receives them as `scenario: dict` (given ones,
    as the text typed: servesim parses them itself, so every bad value gets the same one-line error).

    With `lists`, every option may hold a comma list (for compare and sweep).
    """
    def decorate(func: Callable) -> Callable:
        sig = inspect.signature(func)
        hints = typing.get_type_hints(func, include_extras=True)     # resolve string annotations to Annotated
        own = [p.replace(annotation=hints.get(name, p.annotation)) for name, p in sig.parameters.items()
               if name != "scenario"]
        extra = [_option_parameter(o, lists) for o in SCENARIO_OPTIONS]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            given = {o.field: kwargs.pop(o.field, None) for o in SCENARIO_OPTIONS}
            scenario = {field: value for field, value in given.items() if value is not None}
            return func(scenario=scenario, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + extra)
        return wrapper
    return decorate


METAVARS = {int: "INTEGER", float: "NUMBER", bool: "on|off", str: "TEXT"}


def _option_parameter(opt: ScenarioOption, lists: bool) -> inspect.Parameter:
    help_text = opt.help_text + (" Comma list to vary it." if lists else "")
    if opt.is_flag and not lists:
        help_text += " Alone, the flag means on."
    metavar = (opt.metavar or ("TIME" if opt.parser is not None else METAVARS[opt.kind])) + ("[,...]" if lists else "")
    option = typer.Option(None, opt.flag, help=help_text, rich_help_panel=opt.panel, show_default=False,
                          metavar=metavar)
    return inspect.Parameter(opt.field, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[str])


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a TOML or YAML options file (bounded size, safe loaders, no YAML aliases)."""
    from workloads.files import read_mapping
    data = read_mapping(path, "config file")
    data.pop("resolved", None)            # a saved config.json carries the resolved hardware; not a knob
    return data


def build_config(scenario: dict[str, Any], config_file: Path | None,
                 extra: Callable[[dict[str, Any]], dict[str, Any]] | None = None):
    """SimConfig from an options file (if any) overridden by the command line (and by `extra(values)`'s
    fields), with one-line errors that name the flag (or the file and key) of a bad value."""
    from simulator.config import ConfigError, SimConfig
    where: dict[str, str] = {}
    values = scenario_values(scenario, config_file, where)
    if extra is not None:
        values.update(extra(values))
    try:
        return SimConfig.from_mapping(values)
    except ConfigError as exc:
        field = getattr(exc, "field", None)
        if field in where and str(exc).startswith(field):
            raise ConfigError(f"{where[field]}:{str(exc)[len(field):]}", field) from None
        raise


def scenario_values(scenario: dict[str, Any], config_file: Path | None, where: dict[str, str] | None = None,
                    *, one_value: bool = True) -> dict[str, Any]:
    """The options given in a file (if any) and on the command line (which wins), parsed: {field: value}.
    `where` receives each field's origin (flag, or file and key) for error messages."""
    from simulator.config import ConfigError
    from simulator.runs.options import OPTIONS_BY_FIELD, coerce
    where = {} if where is None else where
    values: dict[str, Any] = {}
    if config_file:
        for key, value in load_config_file(config_file).items():
            field = config_key_field(key)
            if field in values:
                raise ConfigError(f"{config_file}: '{key}' is given twice (as {where[field].split(': ')[-1]!r} "
                                  f"and as {key!r})")
            where[field] = f"{config_file}: {key}"
            try:
                values[field] = coerce(field, value)
            except ValueError as exc:
                raise ConfigError(f"{where[field]}: {exc}") from None
    for field, raw in scenario.items():
        opt = OPTIONS_BY_FIELD[field]
        where[field] = opt.flag
        if one_value and isinstance(raw, str) and field not in COMMA_VALUED and len(split_items(raw)) > 1:
            raise ConfigError(f"{opt.flag}: one value per run, got '{raw}'; to compare several, use "
                              f"`servesim compare {opt.flag} {raw}`")
        try:
            values[field] = opt.parse(raw) if isinstance(raw, str) else raw
        except ValueError as exc:
            raise ConfigError(f"{opt.flag}: {exc}") from None
    check_rate_with_trace(values, where)
    return values


def config_key_field(key: str) -> str:
    """A config file's key as the SimConfig field: the flag's name (`slo-ttft`, `slo_ttft`) or the field's."""
    opt = OPTIONS_BY_FLAG.get("--" + str(key).replace("_", "-"))
    return opt.field if opt is not None else str(key).replace("-", "_")


def check_rate_with_trace(values: dict[str, Any], where: dict[str, str]) -> None:
    """A trace's arrival times are replayed: a rate would be ignored, so it is an error, pointing at
    --rate-scale (which does scale a trace)."""
    if values.get("trace") is not None and "rate" in values:
        raise ValueError(f"{where['rate']}: a trace replays its own arrival times; to replay it faster or slower "
                         "use --rate-scale (e.g. --rate-scale 2 for twice the rate)")


class RunFormat(str, Enum):
    table = "table"
    csv = "csv"
    json = "json"
    vllm = "vllm"


GoodputOpt = Annotated[Optional[str], typer.Option(
    "--goodput", metavar="KEY:MS ...", rich_help_panel="Metrics",
    help="SLOs for goodput as vLLM spells them, in milliseconds: --goodput ttft:500 tpot:50 (keys ttft, tpot, "
         "e2el); the same as --slo-ttft 500ms --slo-tpot 50ms.")]
PercentilesOpt = Annotated[Optional[str], typer.Option(
    "--metric-percentiles", rich_help_panel="Metrics",
    help="Percentiles in vllm_result.json and --format vllm, as vLLM's option: 25,50,99. \\[default: 99]")]
PercentileMetricsOpt = Annotated[Optional[str], typer.Option(
    "--percentile-metrics", rich_help_panel="Metrics",
    help="Metrics with statistics in vllm_result.json: ttft, tpot, itl, e2el. \\[default: ttft,tpot,itl,e2el]")]


@app.command()
@scenario_command()
def run(*, scenario: dict, config: ConfigOpt = None, out: OutOpt = Path("servesim-out"),
        goodput: GoodputOpt = None, metric_percentiles: PercentilesOpt = None,
        percentile_metrics: PercentileMetricsOpt = None,
        format: Annotated[RunFormat, typer.Option("--format", help="stdout format: table, csv, json (servesim's "
                                                  "summary) or vllm (vllm_result.json: the keys and units of "
                                                  "`vllm bench serve --save-result`).")] = RunFormat.table,
        quiet: QuietOpt = False,
        no_report: Annotated[bool, typer.Option("--no-report", help="Do not write report.html.")] = False) -> None:
    """Simulate one scenario; print its summary and write requests/steps/kv CSVs, summary.json,
    vllm_result.json, config.json and report.html (and replicas.csv, one row per replica, for a cluster:
    --replicas or --pools)."""
    from simulator.runs.outputs import check_out
    with cli_errors():
        cfg = build_config(scenario, config, extra=lambda values: vllm_metric_options(
            values, goodput, metric_percentiles, percentile_metrics))
        check_out(out)
        result = _simulate_with_progress(cfg, quiet)
        write_results(result, out, report=not no_report)
    if format == RunFormat.vllm:
        typer.echo(json.dumps(json.loads((out / "vllm_result.json").read_text()), indent=2))
    elif format != RunFormat.table or not quiet:
        print_summary(result.summary(), OutputFormat(format.value), title=f"servesim run -> {out}/")


def vllm_metric_options(values: dict[str, Any], goodput: str | None, percentiles: str | None,
                        metrics: str | None) -> dict[str, Any]:
    """--goodput (vLLM's KEY:MS pairs) as SLO fields, and the percentile lists; an SLO given twice is an error."""
    from simulator.runs.options import OPTIONS_BY_FIELD, parse_goodput
    out: dict[str, Any] = {}
    if goodput is not None:
        try:
            slos = parse_goodput(goodput)
        except ValueError as exc:
            raise ValueError(f"--goodput: {exc}") from None
        twice = [f for f in slos if values.get(f) is not None]
        if twice:
            raise ValueError(f"--goodput and {OPTIONS_BY_FIELD[twice[0]].flag} both set that SLO; give one")
        out.update(slos)
    if percentiles is not None:
        out["metric_percentiles"] = percentiles
    if metrics is not None:
        out["percentile_metrics"] = metrics
    return out


def _simulate_with_progress(cfg, quiet: bool):
    from simulator.api import simulate
    if quiet or not sys.stderr.isatty():
        return simulate(cfg)
    from rich.progress import Progress
    with Progress(transient=True) as bar:
        task = bar.add_task("simulating", total=None)

        def progress(now_s: float, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, description=f"t={now_s:8.1f}s simulated")
        return simulate(cfg, progress=progress)


def write_results(result, out: Path, *, report: bool = True) -> Path:
    """Save into a temporary sibling folder, then move the files in: no partial output on failure."""
    from simulator.runs.outputs import staged, write_run_report
    with staged(out) as tmp:
        result.save(tmp)
        if report:
            write_run_report(tmp, out, result)
    return out


SUMMARY_ROWS = (
    ("requests completed / rejected", lambda s: f"{s['completed']} / {s['rejected']}"),
    ("duration", lambda s: f"{s['duration_s']:.1f} s"),
    ("request throughput", lambda s: f"{s['request_throughput']:.2f} req/s"),
    ("output token throughput", lambda s: f"{s['output_token_throughput']:.0f} tok/s"),
    ("total token throughput", lambda s: f"{s['total_token_throughput']:.0f} tok/s"),
    ("TTFT mean / p50 / p99", lambda s: _ms(s, "ttft")),
    ("TPOT mean / p50 / p99", lambda s: _ms(s, "tpot")),
    ("ITL mean / p50 / p99", lambda s: _ms(s, "itl")),
    ("E2E latency mean / p50 / p99", lambda s: _ms(s, "e2e")),
    ("goodput (SLO attainment)", lambda s: "n/a (no SLO given: --slo-ttft, --slo-tpot)" if s["goodput"] is None
     or s["goodput"] != s["goodput"] else f"{s['goodput']:.2f} req/s ({100 * s['slo_attainment']:.1f}%)"),
    ("KV utilization (mean / max)", lambda s: f"{100 * s['kv_utilization_mean']:.1f}% / "
                                               f"{100 * s['kv_utilization_max']:.1f}%"),
    ("KV internal / external fragmentation", lambda s: f"{100 * s['internal_fragmentation_mean']:.1f}% / "
                                                       f"{100 * s['external_fragmentation_mean']:.1f}%"),
    ("max concurrent requests", lambda s: f"{s['max_concurrent_requests']}"),
    ("preemptions (recompute / swap)", lambda s: f"{s['preemptions']} ({s['preemptions_recompute']} / "
                                                 f"{s['preemptions_swap']})"),
    ("MFU / MBU (per GPU)", lambda s: f"{100 * s['mfu']:.1f}% / {100 * s['mbu']:.1f}%"),
)
CLUSTER_ROWS = (
    ("replicas", lambda s: f"{s['replicas']}"),
    ("load balance: max / mean outstanding", lambda s: f"{s['outstanding_max_over_mean']:.3f}"),
    ("load balance: Jain's index", lambda s: f"{s['outstanding_jain_index']:.3f}"),
)


def _ms(s: dict, name: str) -> str:
    return " / ".join(f"{1e3 * s[f'{name}_{k}_s']:.1f}" for k in ("mean", "p50", "p99")) + " ms"


def print_summary(summary: dict, fmt: OutputFormat, title: str) -> None:
    if fmt == OutputFormat.json:
        from simulator.metrics import _jsonable
        typer.echo(json.dumps(_jsonable(summary), indent=2))
        return
    if fmt == OutputFormat.csv:
        import pandas as pd
        flat = {k: v for k, v in summary.items() if not isinstance(v, dict)}
        typer.echo(pd.DataFrame([flat]).to_csv(index=False), nl=False)
        return
    from rich.table import Table
    from simulator.saturation import verdict
    table = Table(title=title, show_header=False)
    load = verdict(summary)
    table.add_row("load", f"[bold red]{load}[/]" if summary.get("saturated") else load)
    for label, fmt_row in SUMMARY_ROWS + (CLUSTER_ROWS if "replicas" in summary else ()):
        table.add_row(label, fmt_row(summary))
    if summary.get("spec_verify_steps"):
        table.add_row("speculative: accepted drafts per verify step (acceptance rate)",
                      f"{summary['spec_mean_accepted_tokens']:.2f} ({100 * summary['spec_acceptance_rate']:.1f}%)")
    for reason, count in summary["rejected_reasons"].items():
        table.add_row("rejected: " + reason, str(count))
    from simulator.present.tables import _console
    _console().print(table)


@app.command()
def gpus(format: FormatOpt = OutputFormat.table) -> None:
    """List the GPU catalog."""
    from hardware.gpus import GPUS
    rows = [{"gpu": g.name, "bf16_tflops": g.bf16_flops_per_s / 1e12, "fp8_tflops": g.fp8_flops_per_s / 1e12,
             "memory_gb": g.hbm_bytes / 1e9, "bandwidth_tb_s": g.hbm_bytes_per_s / 1e12,
             "link": g.interconnect().name, "allreduce_gb_s": g.interconnect().bus_bytes_per_s / 1e9,
             "calibration": "calibrated" if g.calibrated_from else "datasheet-only",
             "calibrated_from": g.calibrated_from, "source": g.source, "usd_per_gpu_hour": g.usd_per_gpu_hour,
             "price_source": g.price_source} for g in GPUS.values()]
    if format == OutputFormat.table:      # sources, calibration profiles and price sources: --format csv/json
        rows = [{k: v for k, v in row.items() if k not in ("source", "calibrated_from", "price_source")}
                for row in rows]
    print_rows(rows, format, "GPU catalog (dense matrix rates)")


@app.command()
def models(format: FormatOpt = OutputFormat.table) -> None:
    """List the model presets."""
    from simulator.models import MODELS
    rows = [{"model": m.name, "params_b": m.num_params() / 1e9, "active_params_b": m.num_params(active=True) / 1e9,
             "layers": m.num_layers, "hidden": m.hidden_size, "heads": m.num_heads, "kv_heads": m.num_kv_heads,
             "kv_kib_per_token_bf16": m.kv_bytes_per_token("bf16") / 1024, "max_len": m.max_model_len}
            for m in MODELS.values()]
    print_rows(rows, format, "Model presets")


def print_rows(rows: list[dict], fmt: OutputFormat, title: str) -> None:
    """Print a list of flat dicts as a table, CSV or JSON."""
    import pandas as pd
    df = pd.DataFrame(rows)
    if fmt == OutputFormat.csv:
        typer.echo(df.to_csv(index=False), nl=False)
    elif fmt == OutputFormat.json:
        typer.echo(df.to_json(orient="records", indent=2))
    else:
        from rich.console import Console
        from rich.table import Table
        table = Table(title=title)
        for col in df.columns:
            table.add_column(col, justify="right" if df[col].dtype.kind in "if" else "left")
        for row in df.itertuples(index=False):
            table.add_row(*(f"{v:,.4g}" if isinstance(v, float) else str(v) for v in row))
        Console().print(table)


# ---- many scenarios: compare, sweep, report (the logic lives in simulator/runs/) ----
JobsOpt = Annotated[Optional[int], typer.Option("--jobs", "-j", help="Scenarios run at once \\[default: all local "
                                                "cores]; results are identical whatever the count.")]
ExecutorOpt = Annotated[str, typer.Option("--executor", help="Where simulations run: local (this machine's cores) "
                                          "or ray (each simulation a Ray task; pip install 'servesim[ray]'). "
                                          "Results are identical.")]
AddressOpt = Annotated[Optional[str], typer.Option("--address", help="With --executor ray: the cluster to join "
                                                   "(HOST:PORT, ray://HOST:PORT or auto) \\[default: start Ray on "
                                                   "this machine].")]


def _axes_and_base(scenario: dict, config_file: Path | None):
    """Comma lists and ranges -> {field: values}; the single values (and --config) make the base config."""
    from simulator.runs.sweep import parse_axes
    axes = parse_axes(scenario)
    base = build_config({f: v[0] for f, v in axes.items() if len(v) == 1}, config_file)
    if (base.trace is not None or "trace" in axes) and "rate" in axes:
        check_rate_with_trace({"trace": True, "rate": True}, {"rate": "--rate"})
    return axes, base


@contextlib.contextmanager
def _board(quiet: bool, title: str):
    """A live progress board on stderr when it is a terminal and not --quiet."""
    if quiet or not sys.stderr.isatty():
        yield None
        return
    from simulator.runs.parallel import Board
    with Board(title) as board:
        yield board


def _wrote(out: Path, what: str = "") -> None:
    """One line on stderr: what was written, and the report's size."""
    report = out / "report.html" if out.is_dir() else out
    typer.echo(f"wrote {what + ' and ' if what else ''}{report} ({report.stat().st_size / 1e6:.1f} MB)", err=True)


@app.command()
@scenario_command(lists=True)
def compare(*, scenario: dict, config: ConfigOpt = None, out: OutOpt = Path("servesim-out"), jobs: JobsOpt = None,
            executor: ExecutorOpt = "local", address: AddressOpt = None,
            format: FormatOpt = OutputFormat.table, quiet: QuietOpt = False) -> None:
    """Run the cross product of comma-listed options (--batching static,continuous --rate 5,10); print a
    comparison table; write comparison.csv, one results folder per scenario, and report.html."""
    from simulator.runs import outputs
    from simulator.runs import sweep
    from simulator.present import tables
    with cli_errors(), outputs.staged(out) as tmp:
        axes, base = _axes_and_base(scenario, config)
        with _board(quiet, "scenarios") as board:
            result = sweep.run_comparison(base, axes, jobs=jobs, board=board, save_root=tmp, executor=executor,
                                          address=address)
        outputs.write_comparison(tmp, result)
    if not quiet:
        tables.emit(result.frame(), format.value, lambda: tables.comparison_table(
            result.runs(), result.option_rows(), title=f"servesim compare: {len(result.scenarios)} scenarios"))
        _wrote(out, f"{out}/comparison.csv, {len(result.scenarios)} scenario folders")


@app.command()
@scenario_command(lists=True)
def sweep(*, scenario: dict, config: ConfigOpt = None, out: OutOpt = Path("servesim-out"), jobs: JobsOpt = None,
          executor: ExecutorOpt = "local", address: AddressOpt = None,
          attainment: Annotated[float, typer.Option(help="Share of requests that must meet every SLO.")] = 0.9,
          tolerance: Annotated[float, typer.Option(help="Stop bisecting when the capacity is known to this "
                                                        "relative precision.")] = 0.02,
          format: FormatOpt = OutputFormat.table, quiet: QuietOpt = False) -> None:
    """Vary a load axis (--rate 2:40:2, or --batch-size, --prompt-len, --output-len, --max-num-seqs) and find
    each configuration's capacity by bisection: the highest rate at which the SLOs still hold."""
    from simulator.runs import capacity
    from simulator.runs import outputs
    from simulator.present import tables
    with cli_errors(), outputs.staged(out) as tmp:
        axes, base = _axes_and_base(scenario, config)
        with _board(quiet, "simulations") as board:
            result = capacity.run_sweep(base, axes, attainment=attainment, tolerance=tolerance, jobs=jobs,
                                        board=board, executor=executor, address=address)
        outputs.write_sweep(tmp, result)
    if not quiet:
        options = list(result.configs[0].values)
        tables.emit(result.capacity, format.value, lambda: tables.capacity_table(
            result.capacity, options, title=f"servesim sweep: capacity at >= {attainment:.0%} SLO attainment"))
        _wrote(out, f"{out}/sweep.csv ({len(result.simulations)} simulations), {out}/capacity.csv")


@app.command()
@scenario_command(lists=True)
def plan(*, scenario: dict, config: ConfigOpt = None, out: OutOpt = Path("servesim-plan"), jobs: JobsOpt = None,
         executor: ExecutorOpt = "local", address: AddressOpt = None,
         target_rate: Annotated[float, typer.Option("--target-rate", help="Requests/s the deployment must serve, "
                                                    "over all replicas.")] = ...,
         attainment: Annotated[float, typer.Option(help="Share of requests that must meet every SLO.")] = 0.9,
         price: Annotated[Optional[list[str]], typer.Option("--price", help="USD per GPU-hour, GPU=USD (repeat or "
                                                            "comma-list); overrides the catalog's dated list price.")]
         = None,
         top: Annotated[int, typer.Option(help="Rows of the plan: the cheapest configurations.")] = 10,
         max_replicas: Annotated[int, typer.Option(help="Give up on a configuration beyond this many replicas.")]
         = 512,
         cluster_check: Annotated[Optional[str], typer.Option("--cluster-check", help="Also simulate each of the "
                                                            "--top deployments whole: its replicas behind this "
                                                            "router (e.g. round-robin, least-outstanding).")]
         = None,
         exhaustive: Annotated[bool, typer.Option("--exhaustive", help="Simulate every configuration in full: no "
                                                  "bounds, skipping, early stops or reuse (same plan, slower).")]
         = False,
         format: FormatOpt = OutputFormat.table, quiet: QuietOpt = False) -> None:
    """The cheapest deployments that serve --target-rate within the SLOs: for each configuration of the search
    space (comma lists and ranges of any option; default: catalog GPUs that fit the model x TP 1,2,4,8 x
    max-num-seqs 64,256 x chunked prefill off,on), the fewest replicas, GPUs, cost per hour and per million
    output tokens. Writes plan.csv and plan.html."""
    from simulator.present import plan_report
    from simulator.runs import outputs
    from simulator.runs import plan as planner
    with cli_errors(), outputs.staged(out) as tmp:
        axes, base = _axes_and_base(scenario, config)
        given = set(scenario) | set(scenario_values({}, config))
        axes = planner.with_default_axes(base, axes, given)
        spec = planner.PlanSpec(target_rate=target_rate, attainment=attainment, top=top, max_replicas=max_replicas,
                                prices=planner.parse_prices(price or []), exhaustive=exhaustive,
                                cluster_router=cluster_check)
        with _board(quiet, "simulations") as board:
            result = planner.run_plan(base, axes, spec, jobs=jobs, board=board, executor=executor, address=address)
        frame = result.frame()
        frame.to_csv(tmp / "plan.csv", index=False)
        plan_report.write_plan_html(tmp / "plan.html", result)
    if not quiet:
        plan_report.emit(result, format.value)
        typer.echo(f"wrote {out}/plan.csv and {out}/plan.html", err=True)


@app.command()
def report(paths: Annotated[list[Path], typer.Argument(help="Results folders: one compare or sweep folder, or "
                                                             "several run folders to compare without re-running.")],
           out: Annotated[Optional[Path], typer.Option("--out", help="Report file [default: PATH/report.html for "
                                                       "one folder, else ./report.html].")] = None,
           format: FormatOpt = OutputFormat.table, quiet: QuietOpt = False) -> None:
    """(Re)build report.html from saved results and print their comparison table."""
    from simulator.runs import outputs
    from simulator.present import report as html_report
    from simulator.present import tables
    with cli_errors():
        target = out or (paths[0] / "report.html" if len(paths) == 1 else Path("report.html"))
        if target.is_dir():
            target = target / "report.html"
        outputs.check_out(target.parent)
        inputs = outputs.load_inputs(paths)
        target.parent.mkdir(parents=True, exist_ok=True)
        html_report.write_report(target, inputs)
    if not quiet:
        tables.emit(tables.summary_rows(inputs.runs), format.value, lambda: tables.comparison_table(
            inputs.runs, [], title=f"servesim report: {len(inputs.runs)} scenarios"))
        _wrote(target)


# ---- replaying a real run (the logic lives in simulator/validate) ----
@app.command()
@scenario_command()
def validate(run_path: Annotated[Path, typer.Argument(
                 metavar="RUN", help="A run folder (meta.json, workload.jsonl, requests.jsonl, optional "
                                     "timeseries.csv) or a `vllm bench serve --save-result --save-detailed` JSON.")],
             *, scenario: dict, config: ConfigOpt = None,
             out: Annotated[Path, typer.Option("--out", help="Folder for validation.json, validation.csv, "
                                               "validation.html and the simulated run.")] = Path("servesim-validate"),
             max_error: Annotated[Optional[float], typer.Option(
                 "--max-error", metavar="PCT", help="Exit with status 1 when a latency mean (TTFT, TPOT, ITL, "
                                                    "E2E) is off by more than PCT percent.")] = None,
             format: FormatOpt = OutputFormat.table, quiet: QuietOpt = False) -> None:
    """Replay a real serving run and compare: the run's requests and arrivals, simulated with its engine
    settings (any option given here overrides them; the defaults listed are `run`'s, replaced here by the
    run's metadata), against the latencies it measured."""
    from simulator.runs.outputs import staged
    from simulator.validate import load_real_run, validate as replay
    from simulator.validate.page import validation_record, write_validation
    with cli_errors():
        if max_error is not None and not max_error > 0:
            raise ValueError(f"--max-error: must be a positive percentage, got {max_error}")
        run = load_real_run(run_path)
        result = replay(run, scenario_values(scenario, config))
        with staged(out) as tmp:
            result.result.save(tmp / "simulated")
            write_validation(result, tmp)
    if not quiet:
        from simulator.metrics import _jsonable
        from simulator.present import tables
        if format == OutputFormat.json:
            typer.echo(json.dumps(_jsonable(validation_record(result)), indent=2))
        else:
            tables.emit(result.table, format.value, lambda: _validation_table(result))
        typer.echo(f"wrote {out}/validation.html, validation.json, validation.csv", err=True)
    off = result.worst_mean(max_error) if max_error is not None else []
    if off:
        typer.echo(f"error: off by more than --max-error {max_error:g}%: {', '.join(off)}", err=True)
        raise typer.Exit(1)


def _validation_table(v):
    from rich.table import Table
    table = Table(title=f"servesim validate {v.run.name}: real vs simulated ({len(v.run.specs)} requests)")
    for col in ("metric", "stat", "unit", "real", "simulated", "error"):
        table.add_column(col, justify="left" if col in ("metric", "stat", "unit") else "right")
    fmt = lambda x: "n/a" if x != x else f"{x:,.2f}"             # noqa: E731 (NaN is not equal to itself)
    for r in v.table.itertuples():
        table.add_row(r.metric, r.stat, r.unit, fmt(r.real), fmt(r.simulated),
                      "n/a" if r.error_pct != r.error_pct else f"{r.error_pct:+.1f}%")
    for note in v.run.notes:
        table.caption = (table.caption + "; " if table.caption else "note: ") + note
    return table


@app.command()
def calibrate(
    profile_dir: Annotated[Path, typer.Argument(help="vLLM kernel profiles of one model on one GPU: a <model>/bf16/ "
                                                "folder (meta.yaml, tp1/, tp2/ ...) or one tp<N>/ folder; or a step "
                                                "CSV of benchmarks/measure_steps.py (more with --check).")],
    gpu: Annotated[str, typer.Option("--gpu", help="The catalog GPU the profiles were measured on (the fitted "
                                     "file starts from its datasheet numbers).")],
    out: Annotated[Path, typer.Option("--out", help="GPU file to write (TOML; use it with --gpu-file).")],
    model: Annotated[Optional[str], typer.Option("--model", help="Model preset of the profiles \\[default: the "
                                                 "model meta.yaml names].")] = None,
    check: Annotated[Optional[list[Path]], typer.Option("--check", help="More profile folders of the same GPU, "
                                                        "not fitted: their errors are reported too (with a step "
                                                        "CSV: more step CSVs, fitted together).")] = None,
    format: FormatOpt = OutputFormat.table) -> None:
    """Fit a GPU's efficiency parameters (achievable bandwidth, matrix efficiency, kernel floors, mixed-step
    attention, sampler) to vLLM kernel profiles and write them as a GPU file. Prints each kernel family's error
    with the fitted parameters and with the datasheet-only defaults. Given step CSVs of the project's harness
    (benchmarks/measure_steps.py), fits the fractions and fixed times that recipe uses instead."""
    from hardware.gpus import get_gpu
    from simulator.calibrate import datasheet_only, error_table, find_profiles, fit_gpu, gpu_file_text
    if profile_dir.suffix.lower() == ".csv":
        return _calibrate_steps([profile_dir, *(check or [])], gpu, out, format)
    with cli_errors():
        base = get_gpu(gpu)
        profiles = find_profiles(profile_dir, model)
        checks = [p for folder in (check or []) for p in find_profiles(folder)]
        fitted = fit_gpu(profiles, datasheet_only(base))
        source = "; ".join(p.source for p in profiles)
        text = gpu_file_text(fitted, base.name, f"vLLM kernel profiles, {source}")
        rows = []
        for role, group in (("fitted", profiles), ("check", checks)):
            if group:
                cal, sheet = error_table(group, fitted), error_table(group, datasheet_only(base))
                rows += [{"role": role, "profile": c.profile, "family": c.family, "kernels": c.kernels,
                          "mape_pct": c.mape_pct, "datasheet_mape_pct": d.mape_pct,
                          "sum_err_pct": c.summed_error_pct, "datasheet_sum_err_pct": d.summed_error_pct}
                         for c, d in zip(cal.itertuples(), sheet.itertuples())]
        out.write_text(text, encoding="utf-8")
    print_rows(rows, format, f"Kernel errors on {base.name}: calibrated vs datasheet-only")
    typer.echo(f"wrote {out}", err=True)


def _calibrate_steps(paths: list[Path], gpu: str, out: Path, format: OutputFormat) -> None:
    """`calibrate STEPS.csv`: the harness recipe's fields fitted to the project's own measured steps."""
    from hardware.gpus import get_gpu
    from simulator.calibrate import datasheet_only, fit_steps, read_steps, step_error_table, step_file_text
    with cli_errors():
        base = datasheet_only(get_gpu(gpu))
        steps = read_steps(paths, base)
        fitted = fit_steps(steps, base)
        text = step_file_text(fitted, base.name, "measured steps " + ", ".join(p.name for p in paths))
        cal, sheet = step_error_table(steps, fitted), step_error_table(steps, base)
        rows = [{"model": c.model, "phase": c.phase, "steps": c.steps, "mape_pct": c.mape_pct,
                 "defaults_mape_pct": d.mape_pct, "bias_pct": c.bias_pct, "defaults_bias_pct": d.bias_pct}
                for c, d in zip(cal.itertuples(), sheet.itertuples())]
        out.write_text(text, encoding="utf-8")
    print_rows(rows, format, f"Step errors on {base.name}: fitted vs the shipped defaults")
    typer.echo(f"wrote {out}", err=True)


# ---- built-in experiments (the logic lives in simulator/experiments) ----
@app.command()
def experiment(name: Annotated[Optional[str], typer.Argument(help="The experiment to run (see --list).")] = None,
               list_: Annotated[bool, typer.Option("--list", help="List the experiments and exit.")] = False,
               json_: Annotated[bool, typer.Option("--json", help="Print each claim as JSON: the published "
                                                   "number, servesim's number, and whether it held.")] = False,
               out: Annotated[Path, typer.Option("--out", help="Writes OUT/NAME/figure.html, data.csv and "
                                                 "claims.json.")] = Path("servesim-experiments"),
               quick: Annotated[bool, typer.Option("--quick", help="A reduced run: fewer requests and "
                                                   "points, same claims.")] = False) -> None:
    """Reproduce a published result: run its scenarios, check the claim against servesim's numbers, write the
    figure and the data."""
    from simulator import experiments
    with cli_errors():
        if list_:
            experiments.print_listing(experiments.EXPERIMENTS, json_)
            return
        result = experiments.run_experiment(experiments.get_experiment(name).name, quick=quick)
        folder = experiments.write_outputs(result, out / result.name)
    experiments.print_result(result, json_)
    typer.echo(f"wrote {folder}/figure.html, data.csv and claims.json", err=True)


@app.command()
def explain(
        gpu: Annotated[Optional[str], typer.Option(
            help="Catalog GPU (see `servesim gpus`). \\[default: h100-sxm]")] = None,
        gpu_file: Annotated[Optional[Path], typer.Option(help="A GPU described in a TOML/YAML file.")] = None,
        model: Annotated[Optional[str], typer.Option(
            help="Model preset (see `servesim models`). \\[default: llama-3.1-8b]")] = None,
        model_config: Annotated[Optional[Path], typer.Option(help="A Hugging Face config.json, read offline.")] = None,
        phase: Annotated[str, typer.Option(help="prefill, decode, or mixed (a prompt chunk of --prompt tokens "
                                           "after --cached ones, plus --batch decodes at --context).")] = "decode",
        batch: Annotated[int, typer.Option(help="Sequences in the step (mixed: the decodes).")] = 1,
        prompt: Annotated[int, typer.Option(help="Prompt tokens per sequence (prefill), or the chunk (mixed).")] = 1024,
        cached: Annotated[int, typer.Option(help="Mixed: tokens of the chunk's prompt already cached.")] = 0,
        context: Annotated[int, typer.Option(help="Cached tokens per decoding sequence (decode, mixed).")] = 1024,
        engine: Annotated[str, typer.Option(help="Engine preset whose kernels, CUDA graphs and CPU time per step "
                                            "are priced: vllm-v1 or vllm-v0.")] = "vllm-v1",
        tp: Annotated[int, typer.Option(help="Tensor-parallel GPUs.")] = 1,
        dtype: Annotated[str, typer.Option(help="Weight precision.")] = "bf16",
        kv_dtype: Annotated[str, typer.Option(help="KV-cache precision.")] = "bf16",
        cuda_graphs: Annotated[str, typer.Option(help="CUDA graphs for decode-only steps: on or off.")] = "on",
        bandwidth_scale: Annotated[float, typer.Option(help="What-if: multiply memory bandwidth.")] = 1.0,
        flops_scale: Annotated[float, typer.Option(help="What-if: multiply matrix FLOP rates.")] = 1.0,
        attention: Annotated[Optional[str], typer.Option(
            help="varlen (vLLM V1's one launch), flash (separate prefill and decode kernels), or naive (scores "
                 "through HBM). \\[default: the engine's]")] = None,
        elementwise: Annotated[Optional[str], typer.Option(
            help="Small operators as a serving engine's fused kernels (fused, or vllm-v1: RoPE writes the KV "
                 "cache), or as plain PyTorch ops (unfused), as the measured steps in benchmarks/data ran them; "
                 "PyTorch's non-vectorized ones show as compute-bound (per-element work on the SMs). "
                 "\\[default: the engine's]")] = None,
        html: Annotated[Optional[Path], typer.Option(help="Also write a roofline chart here.")] = None) -> None:
    """Explain one step operator by operator: FLOPs, bytes, intensity, bound, time, share; roofline with --html."""
    from hardware.gpus import resolve_gpu
    from simulator.cost import CostModel
    from simulator.engines import cost_model_options, get_engine
    from simulator.present.explain import explain_step, format_explain_table, roofline_figure, step_shape
    from simulator.models import resolve_model
    with cli_errors():
        spec = resolve_model(model if model or model_config else "llama-3.1-8b", model_config)
        device = resolve_gpu(gpu if gpu or gpu_file else "h100-sxm", gpu_file)
        options = cost_model_options(get_engine(engine))
        options.update({k: v for k, v in (("attention", attention), ("elementwise", elementwise)) if v})
        cost_model = CostModel(spec, device, dtype=dtype, kv_dtype=kv_dtype, tp=tp,
                               cuda_graphs=parse_bool(cuda_graphs), bandwidth_scale=bandwidth_scale,
                               flops_scale=flops_scale, **options)
        tokens = prompt if phase == "prefill" else context
        table = explain_step(cost_model, phase, batch, tokens, prompt, cached)
        shape = step_shape(phase, batch, tokens, prompt, cached)
        step = f"{phase}, batch {batch}, {tokens} {'prompt' if phase == 'prefill' else 'context'} tokens each"
        figure = roofline_figure(cost_model, cost_model.operators(shape), step) if html else None
        if html:
            figure.write_html(str(html), include_plotlyjs=True)
    typer.echo(format_explain_table(table, cost_model))
    if html:
        typer.echo(f"wrote {html}", err=True)


def join_goodput(argv: list[str]) -> list[str]:
    """vLLM writes `--goodput ttft:500 tpot:50` (several values after one flag): join them into one value."""
    out, i = [], 0
    while i < len(argv):
        out.append(argv[i])
        if argv[i] == "--goodput":
            values = []
            while i + 1 < len(argv) and not argv[i + 1].startswith("-") and ":" in argv[i + 1]:
                values.append(argv[i + 1])
                i += 1
            if values:
                out.append(" ".join(values))
        i += 1
    return out


def main() -> None:
    sys.argv[1:] = join_goodput(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
