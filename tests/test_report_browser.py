"""Open report.html in a real headless Chromium and check that every chart rendered.

Drives Chromium over the DevTools protocol on a pipe (--remote-debugging-pipe: NUL-terminated JSON on file
descriptors 3 and 4), so only the standard library is needed. Checks: the page has exactly the charts the
report promised, each with drawn traces (SVG paths with data); the console and the log hold no errors; the
page fetched nothing from the network (it must work offline). A full-page screenshot is saved and its path
printed (pytest -rP or -s shows it).
"""
from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from simulator.present.report import LoadCurves, ReportInputs, Roofline, report_figures, write_report
from tests.fake_results import fake_load_frames, make_fake_result

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")
# A hung browser must not hang CI forever; this guards against a hang, it does not time the page.
HANG_GUARD_S = 300
# Moves our pipe ends onto descriptors 3 and 4 (copying them above 9 first, in case they already are 3 or 4)
FD_SHIM = ("import fcntl, os, sys\n"
           "ends = [int(a) for a in sys.argv[1:3]]\n"
           "high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in ends]\n"
           "for fd in ends + [3, 4]:\n    try: os.close(fd)\n    except OSError: pass\n"
           "os.dup2(high[0], 3); os.dup2(high[1], 4); os.close(high[0]); os.close(high[1])\n"
           "os.execvp(sys.argv[3], sys.argv[3:])")


def find_chromium() -> str | None:
    """$CHROMIUM if set, else the first Chromium-family binary on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(find_chromium() is None,
                                 reason="no Chromium binary (install Debian's chromium, or set $CHROMIUM)")]


class Cdp:
    """A minimal DevTools-protocol client over Chromium's debugging pipe."""

    def __init__(self, binary: str, profile_dir: Path) -> None:
        cmd_r, self._cmd_w = os.pipe()      # we write commands, Chromium reads them on fd 3
        self._evt_r, evt_w = os.pipe()      # Chromium writes replies and events on fd 4
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-extensions", "--hide-scrollbars", f"--user-data-dir={profile_dir}",
                 "--remote-debugging-pipe", "about:blank"]
        # a tiny Python shim moves our pipe ends onto the descriptor numbers Chromium expects, then execs it
        self.proc = subprocess.Popen([sys.executable, "-c", FD_SHIM, str(cmd_r), str(evt_w), binary, *flags],
                                     pass_fds=(cmd_r, evt_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL if not os.environ.get("CDP_DEBUG") else None)
        os.close(cmd_r)
        os.close(evt_w)
        self._next_id = 0
        self._inbox: queue.Queue = queue.Queue()
        self.events: list[dict] = []
        threading.Thread(target=self._reader, daemon=True).start()

    def _reader(self) -> None:
        buffer = b""
        while chunk := os.read(self._evt_r, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._inbox.put(json.loads(message))
        self._inbox.put(None)

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept in self.events."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._cmd_w, json.dumps(message).encode() + b"\0")
        return self._wait(lambda m: m.get("id") == self._next_id)

    def wait_event(self, method: str) -> dict:
        seen = next((e for e in self.events if e["method"] == method), None)
        return seen or self._wait(lambda m: m.get("method") == method)

    def _wait(self, match) -> dict:
        while True:
            message = self._inbox.get(timeout=HANG_GUARD_S)
            assert message is not None, "Chromium closed the debugging pipe"
            if "method" in message:
                self.events.append(message)
            if match(message):
                assert "error" not in message, f"DevTools error: {message['error']}"
                return message.get("result", message.get("params", {}))

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()
        os.close(self._cmd_w)


# Per graph div: how many trace groups exist, and how many SVG paths actually carry data.
COUNT_TRACES_JS = """
Array.from(document.querySelectorAll('.js-plotly-plot')).map(gd => ({
  id: gd.id,
  traces: gd.querySelectorAll('g.trace').length,
  drawn: Array.from(gd.querySelectorAll('g.trace path')).filter(p => (p.getAttribute('d') || '').length > 4).length,
  title: (gd.querySelector('.gtitle') || {}).textContent || ''
}))
"""
# Resolve after two animation frames, once plotly's drawing promises have settled.
SETTLE_JS = "new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => setTimeout(r, 200))))"


def render_in_chromium(html_path: Path, screenshot: Path, profile_dir: Path) -> tuple[list[dict], list[dict]]:
    """Load the page, return (per-chart trace counts, error-level events), save a full-page screenshot."""
    cdp = Cdp(find_chromium(), profile_dir)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
        cdp.call("Page.navigate", {"url": html_path.resolve().as_uri()}, session)
        cdp.wait_event("Page.loadEventFired")
        cdp.call("Runtime.evaluate", {"expression": SETTLE_JS, "awaitPromise": True}, session)
        counts = cdp.call("Runtime.evaluate", {"expression": COUNT_TRACES_JS, "returnByValue": True},
                          session)["result"]["value"]
        shot = cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        return counts, cdp.events
    finally:
        cdp.close()


def errors_in(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and error-level log entries, as readable lines."""
    found = []
    for e in events:
        p = e.get("params", {})
        if e["method"] == "Runtime.exceptionThrown":
            found.append(f"exception: {p['exceptionDetails'].get('text')} "
                         f"{p['exceptionDetails'].get('exception', {}).get('description', '')}")
        elif e["method"] == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            found.append(f"console.{p['type']}: {[a.get('value', a.get('description')) for a in p['args']]}")
        elif e["method"] == "Log.entryAdded" and p["entry"]["level"] == "error":
            found.append(f"log: {p['entry']['text']} {p['entry'].get('url', '')}")
    return found


def network_urls(events: list[dict]) -> list[str]:
    return [e["params"]["request"]["url"] for e in events if e["method"] == "Network.requestWillBeSent"]


def full_report_inputs() -> ReportInputs:
    """Three synthetic scenarios with every optional chart (load curves with SLOs and capacity, roofline)."""
    labels = ("paged", "contiguous", "paged, chunked")
    runs = [(label, make_fake_result(seed=i)) for i, label in enumerate(labels)]
    load, capacity = fake_load_frames(labels)
    return ReportInputs(runs, LoadCurves(load, capacity, slo_ttft_s=0.5, slo_tpot_s=0.05),
                        Roofline(labels[0], peak_flops_per_s=989e12, peak_bytes_per_s=3.35e12),
                        notes=("synthetic data for the browser test",))


def announce(capsys, text: str) -> None:
    """Print past pytest's capture: the screenshot path is for the person running the tests."""
    with capsys.disabled():
        print(text)


def test_every_chart_renders_in_chromium_without_console_errors(tmp_path, capsys):
    inputs = full_report_inputs()
    expected = [f"{div_id}" for div_id, _ in report_figures(inputs)]
    report = write_report(tmp_path / "report.html", inputs)
    screenshot = tmp_path / "report.png"
    counts, events = render_in_chromium(report, screenshot, tmp_path / "profile")
    announce(capsys, f"\nscreenshot: {screenshot}")
    print(f"charts: {json.dumps(counts)}")
    assert [c["id"] for c in counts] == expected
    empty = [c["id"] for c in counts if c["traces"] == 0 or c["drawn"] == 0]
    assert not empty, f"charts with no drawn traces: {empty}"
    assert all(c["title"].strip() for c in counts), "every chart has a title"
    assert errors_in(events) == []
    assert [u for u in network_urls(events) if not u.startswith(("file:", "data:", "about:"))] == []
    assert screenshot.stat().st_size > 10_000 and screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_real_compare_report_renders(tmp_path, capsys):
    """The report `servesim compare` writes, from real (tiny) simulations: load curves and roofline included."""
    from simulator import SimConfig
    from simulator.runs.outputs import write_comparison
    from simulator.runs.sweep import run_comparison
    base = SimConfig(num_requests=40, prompt_len="512", output_len="64", slo_ttft_s=0.2, slo_tpot_s=0.05)
    comparison = run_comparison(base, {"batching": ("static", "continuous"), "rate": (20.0, 80.0)}, jobs=1)
    write_comparison(tmp_path, comparison)
    screenshot = tmp_path / "compare.png"
    counts, events = render_in_chromium(tmp_path / "report.html", screenshot, tmp_path / "profile")
    announce(capsys, f"\nscreenshot: {screenshot}")
    assert [c["id"] for c in counts] == ["latency-cdf", "load", "kv-memory", "fragmentation", "queue",
                                         "preemptions", "step-timeline", "ttft-vs-prompt", "roofline"]
    assert [c["id"] for c in counts if c["drawn"] == 0] == []
    assert errors_in(events) == []


def test_an_empty_chart_is_detected(tmp_path):
    """The check above can fail: a chart whose only trace has no points is reported as not drawn."""
    page = tmp_path / "empty.html"
    page.write_text("<html><head><script>" + __import__("plotly.offline").offline.get_plotlyjs() +
                    "</script></head><body><div id=e></div><div id=f></div><script>"
                    "Plotly.newPlot('e', [{x: [], y: [], type: 'scatter'}], {title: {text: 'empty'}});"
                    "Plotly.newPlot('f', [{x: [1, 2], y: [3, 4], type: 'scatter'}], {title: {text: 'full'}});"
                    "</script></body></html>")
    counts, events = render_in_chromium(page, tmp_path / "empty.png", tmp_path / "profile")
    assert {c["id"]: c["drawn"] > 0 for c in counts} == {"e": False, "f": True}
    assert errors_in(events) == []
