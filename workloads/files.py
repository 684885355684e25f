"""Reading user files safely, written once for config files, GPU files, Hugging Face configs and traces.

A path must be a regular file (a FIFO would block, /dev/zero never ends), of bounded size, UTF-8 text (a
leading byte-order mark is dropped, as for every reader), and YAML may not use aliases (an alias bomb expands
to billions of nodes from a few lines). Every failure is one line naming the file.
"""
from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, Iterator

MAX_CONFIG_BYTES = 1_000_000          # options, GPU and model files are a few hundred bytes
MAX_TRACE_BYTES = 4_000_000_000       # a trace of tens of millions of requests


def check_file(path: str | Path, what: str, *, max_bytes: int = MAX_CONFIG_BYTES,
               error: type[Exception] = ValueError) -> Path:
    """`path` if it is an existing regular file of at most `max_bytes`; else `error` with one line."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(f"{path}: {what} is a folder; give a file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: {what} is not a regular file (a pipe or a device); give a file")
    if info.st_size > max_bytes:
        raise error(f"{path}: {what} is {info.st_size:,} bytes, more than the {max_bytes:,} a {what} may have")
    return path


def read_text(path: str | Path, what: str, *, max_bytes: int = MAX_CONFIG_BYTES,
              error: type[Exception] = ValueError) -> str:
    """The UTF-8 text of a checked file, without a byte-order mark."""
    path = check_file(path, what, max_bytes=max_bytes, error=error)
    try:
        with path.open("rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: {what} is more than {max_bytes:,} bytes")
    if b"\0" in data:
        raise error(f"{path}: {what} is a binary file, not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: {what} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                    f"{exc.start})") from None


def read_json(path: str | Path, what: str, *, error: type[Exception] = ValueError,
              max_bytes: int = MAX_CONFIG_BYTES, want: type | None = dict) -> Any:
    """The parsed JSON of a checked file; `want` is the type its top level must have (None: any)."""
    path = Path(path)
    text = read_text(path, what, max_bytes=max_bytes, error=error)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None
    if want is not None and not isinstance(data, want):
        raise error(f"{path}: expected a JSON {_JSON_NAMES.get(want, want.__name__)}, got {type(data).__name__}")
    return data


_JSON_NAMES = {dict: "object", list: "list"}


def json_records(path: str | Path, what: str, *, error: type[Exception] = ValueError,
                 max_bytes: int = MAX_TRACE_BYTES, label: str | None = None,
                 arrays: bool = False) -> Iterator[tuple[str, dict]]:
    """(where, object) for each line of a JSON-lines file (blank lines skipped) or, with `arrays`, each element
    of a file holding one top-level JSON list. `where` names the file (`label`, default its path) and the line
    or record, for the caller's own messages."""
    path = Path(path)
    label = str(path) if label is None else label
    text = read_text(path, what, max_bytes=max_bytes, error=error)
    records = _array_records(text, label, error) if arrays and text.lstrip().startswith("[") else \
        _line_records(text, label, error)
    for where, record in records:
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object, got {type(record).__name__}")
        yield where, record


def _line_records(text: str, label: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            where = f"{label} line {number}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{where}: not valid JSON ({exc.msg})") from None


def _array_records(text: str, label: str, error: type[Exception]) -> Iterator[tuple[str, Any]]:
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{label} line {exc.lineno}: not valid JSON ({exc.msg})") from None
    for number, record in enumerate(records, start=1):
        yield f"{label} record {number}", record


def read_mapping(path: str | Path, what: str, *, error: type[Exception] = ValueError) -> dict[str, Any]:
    """A TOML (by extension) or YAML/JSON file holding a table of keys; errors name the file."""
    path = Path(path)
    text = read_text(path, what, error=error)
    kind = "TOML" if path.suffix.lower() == ".toml" else "YAML"
    try:
        data = _parse_toml(text) if kind == "TOML" else _parse_yaml(text)
    except RecursionError:
        raise error(f"{path}: cannot parse {kind}: nested too deeply") from None
    except Exception as exc:  # noqa: BLE001: each library's parse errors, as one line
        raise error(f"{path}: cannot parse {kind}: {' '.join(str(exc).split())[:300]}") from None
    if not isinstance(data, dict):
        raise error(f"{path}: expected a table of keys (key = value), got {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise error(f"{path}: keys must be names, got {bad[0]!r}")
    return data


def _parse_toml(text: str) -> Any:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    return tomllib.loads(text)


def _parse_yaml(text: str) -> Any:
    import yaml

    class NoAliases(yaml.SafeLoader):
        """Safe YAML without anchors' aliases: a few lines of them can expand beyond any memory."""

        def compose_node(self, parent, index):
            if self.check_event(yaml.AliasEvent):
                mark = self.peek_event().start_mark
                raise yaml.YAMLError(f"aliases (*name) are not accepted (line {mark.line + 1})")
            return super().compose_node(parent, index)
    return yaml.load(text, Loader=NoAliases)  # noqa: S506: a SafeLoader subclass
