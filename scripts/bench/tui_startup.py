#!/usr/bin/env python3
"""TUI cold start: from process start until the fleet's rows are on the terminal, against a minimal
Textual app with one DataTable of the same rows, alternating in one run.

Both apps run in a pseudo-terminal of their own (Textual's real terminal driver, not its headless
mode), at 120x35 unless ``--size`` says otherwise, with ``TERM=xterm-256color``. This script takes
the time itself, from just before the process starts until every device name has been written to
the terminal (read from the pty, escape sequences stripped): nothing in either app is instrumented.
Then the app is stopped (its process group: the agents of the health checks the fleet started go
with it) and the next one starts.

* fieldkit: ``python -m fieldkit`` on a home with an operator identity and N devices
  (``local:`` device roots), as a technician's laptop has them: the fleet's health checks start
  at once, as they do on a laptop (the rows are drawn before they answer; what is timed is the rows).
* minimal: a Textual app with a Header, one DataTable with the fleet's columns and the same rows
  (name, link, profile, "checking"), and a Footer; nothing else.

One untimed start of each first (bytecode, page cache); then rounds, alternating which app goes
first. Reported: the median of each, and the median of the per-round ratios with their range
(one round on a shared machine says little: see REFERENCE.md; run --rounds 7 or more). Also
reported: the CPU time each process had used (all threads, /proc/PID/task/*/schedstat) when its
rows were shown, a figure a busy machine's scheduling blurs far less than the wall time.

    python scripts/bench/tui_startup.py [--rounds 7] [--devices 5] [--size 120x35] [--tiny] [--json]

``--tiny`` (2 devices, 1 round, no warm-up) only checks that it all runs; the test suite runs it.
``--json``: the last line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import pty
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

MINIMAL = r'''
import json, sys
from textual.app import App
from textual.widgets import DataTable, Footer, Header
COLUMNS, ROWS = json.loads(sys.argv[1])
class Minimal(App):
    def compose(self):
        yield Header()
        table = DataTable(cursor_type="row", zebra_stripes=True)
        for label in COLUMNS:
            table.add_column(label)
        yield table
        yield Footer()
    def on_mount(self):
        table = self.query_one(DataTable)
        for row in ROWS:
            table.add_row(*row)
Minimal().run()
'''

# CSI, OSC, and the two-byte escapes a terminal app writes: what is left is the text on screen.
ESCAPES = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][0-9A-Za-z]|\x1b[=>78]")


def cpu_seconds(pid: int) -> float | None:
    """CPU time the process has used so far, all its threads (``/proc/PID/task/*/schedstat``, ns)."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                total += int(fh.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def first_shown(cmd: list[str], env: dict, names: list[str], size: tuple[int, int],
                timeout: float = 60.0) -> tuple[float, float | None]:
    """Seconds from starting ``cmd`` in a fresh pty until every one of ``names`` was written to it,
    and the CPU seconds the process had used by then (None where /proc has no schedstat)."""
    cols, rows = size
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    wanted = [n.encode() for n in names]
    out = b""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=str(ROOT),
                            start_new_session=True, close_fds=True)
    os.close(slave)
    try:
        while True:
            left = t0 + timeout - time.perf_counter()
            if left <= 0:
                raise SystemExit(f"{cmd[1:3]}: the rows were not shown within {timeout:.0f} s; "
                                 f"last output: {ESCAPES.sub(b'', out)[-500:]!r}")
            ready, _, _ = select.select([master], [], [], min(left, 0.5))
            if not ready:
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the app closed the terminal
                chunk = b""
            if not chunk:
                raise SystemExit(f"{cmd[1:3]} ended (status {proc.wait(5)}) before showing its rows: "
                                 f"{ESCAPES.sub(b'', out)[-1500:].decode(errors='replace')}")
            out += chunk
            if all(w in ESCAPES.sub(b"", out) for w in wanted):
                return time.perf_counter() - t0, cpu_seconds(proc.pid)
    finally:
        stop(proc, master)


def stop(proc: subprocess.Popen, master: int) -> None:
    """End the app and everything it started (its own session), draining the pty meanwhile."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + 10
    while proc.poll() is None and time.monotonic() < deadline:
        if select.select([master], [], [], 0.05)[0]:
            try:
                os.read(master, 1 << 16)
            except OSError:
                pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (agents of health checks)
    except ProcessLookupError:
        pass
    proc.wait(10)
    os.close(master)


def make_home(base: Path, n: int) -> tuple[dict, list[str]]:
    """A home with an operator identity and ``n`` local devices, made through the CLI."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FIELDKIT_", "TEXTUAL"))}
    env.update(FIELDKIT_HOME=str(base / "home"), FIELDKIT_SSH_CONFIG=str(base / "ssh_config"), TERM="xterm-256color")
    (base / "ssh_config").write_text("")
    fk = [sys.executable, "-m", "fieldkit"]
    subprocess.run(fk + ["init", "--operator", "bench"], env=env, cwd=str(ROOT), check=True, capture_output=True)
    names = []
    for i in range(n):
        root = base / f"device-{i}"
        root.mkdir()
        names.append(f"bench-cam-{i:02d}")
        subprocess.run(fk + ["devices", "add", names[-1], f"local:{root}"], env=env, cwd=str(ROOT), check=True,
                       capture_output=True)
    return env, names


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--devices", type=int, default=5)
    ap.add_argument("--size", default="120x35", help="terminal COLSxROWS (default 120x35)")
    ap.add_argument("--tiny", action="store_true", help="2 devices, 1 round, no warm-up: a quick check that it runs")
    ap.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    a = ap.parse_args()
    if a.tiny:
        a.devices, a.rounds = 2, 1
    cols, rows = (int(x) for x in a.size.lower().split("x"))
    from screens.fleet import COLUMNS  # the fleet's own columns, so both tables have the same shape

    with tempfile.TemporaryDirectory(prefix="fieldkit-bench-tui-") as tmp:
        env, names = make_home(Path(tmp), a.devices)
        table = [[getattr(c, "label", None) or c[1] for c in COLUMNS],
                 [[n, "local", "generic-linux", "checking"] + [""] * (len(COLUMNS) - 4) for n in names]]
        apps = {
            "fieldkit": [sys.executable, "-m", "fieldkit"],
            "minimal": [sys.executable, "-c", MINIMAL, json.dumps(table)],
        }
        print(f"TUI cold start until {a.devices} device rows are on a {cols}x{rows} pty; {a.rounds} round(s), "
              f"{os.cpu_count()} CPUs, Python {sys.version.split()[0]}", flush=True)
        if not a.tiny:
            for cmd in apps.values():
                first_shown(cmd, env, names, (cols, rows))
        times: dict[str, list[float]] = {"fieldkit": [], "minimal": []}
        cpu: dict[str, list[float]] = {"fieldkit": [], "minimal": []}
        for r in range(a.rounds):
            order = ("fieldkit", "minimal") if r % 2 == 0 else ("minimal", "fieldkit")
            for which in order:
                wall, used = first_shown(apps[which], env, names, (cols, rows))
                times[which].append(wall)
                if used is not None:
                    cpu[which].append(used)
            print(f"round {r + 1}: fieldkit {times['fieldkit'][-1] * 1000:.0f} ms, minimal "
                  f"{times['minimal'][-1] * 1000:.0f} ms, ratio {times['fieldkit'][-1] / times['minimal'][-1]:.2f}"
                  + (f"; CPU used by then {cpu['fieldkit'][-1] * 1000:.0f} / {cpu['minimal'][-1] * 1000:.0f} ms"
                     if cpu["fieldkit"] and cpu["minimal"] else ""), flush=True)
    ratios = [f / m for f, m in zip(times["fieldkit"], times["minimal"])]
    fk, mini = statistics.median(times["fieldkit"]), statistics.median(times["minimal"])
    summary = {"devices": a.devices, "rounds": a.rounds, "size": f"{cols}x{rows}", "cpus": os.cpu_count(),
               "fieldkit_s": round(fk, 4), "minimal_s": round(mini, 4), "ratio": round(statistics.median(ratios), 3),
               "ratio_min": round(min(ratios), 3), "ratio_max": round(max(ratios), 3), "target_ratio": 1.3}
    if len(cpu["fieldkit"]) == len(cpu["minimal"]) == a.rounds:
        cpu_ratios = [f / m for f, m in zip(cpu["fieldkit"], cpu["minimal"])]
        summary.update(fieldkit_cpu_s=round(statistics.median(cpu["fieldkit"]), 4),
                       minimal_cpu_s=round(statistics.median(cpu["minimal"]), 4),
                       cpu_ratio=round(statistics.median(cpu_ratios), 3), cpu_ratio_min=round(min(cpu_ratios), 3),
                       cpu_ratio_max=round(max(cpu_ratios), 3))
    print(f"fieldkit TUI, rows shown:   median {fk * 1000:.0f} ms (min {min(times['fieldkit']) * 1000:.0f}, "
          f"max {max(times['fieldkit']) * 1000:.0f})")
    print(f"minimal Textual DataTable:  median {mini * 1000:.0f} ms (min {min(times['minimal']) * 1000:.0f}, "
          f"max {max(times['minimal']) * 1000:.0f})")
    print(f"ratio fieldkit / minimal: median of rounds {summary['ratio']:.2f}x "
          f"(range {summary['ratio_min']:.2f}-{summary['ratio_max']:.2f}; target <= 1.3x)")
    if "cpu_ratio" in summary:  # what a loaded machine's scheduling does not blur
        print(f"CPU used until the rows were shown: fieldkit {summary['fieldkit_cpu_s'] * 1000:.0f} ms, minimal "
              f"{summary['minimal_cpu_s'] * 1000:.0f} ms; ratio {summary['cpu_ratio']:.2f}x "
              f"(range {summary['cpu_ratio_min']:.2f}-{summary['cpu_ratio_max']:.2f})")
    if a.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
