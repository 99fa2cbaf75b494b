#!/usr/bin/env python3
"""Time from process start to the TUI's first screen painted with the devices listed.

Runs ``python -m fieldkit`` headless against a home with an inventory of devices, with
``FIELDKIT_TUI_READY_FILE`` set: the app writes a timestamp after the first refresh of the fleet
screen (rows listed) and exits. Reported: median of N runs, and, in the same run, the same
measurement for a minimal Textual app with one DataTable (the framework's own floor).

    python scripts/bench/tui_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

MINIMAL = r'''
import os, sys, time
from pathlib import Path
from textual.app import App
from textual.widgets import DataTable, Footer, Header
class Minimal(App):
    def compose(self):
        yield Header(); t = DataTable(); t.add_columns("Device", "Health"); yield t; yield Footer()
    def on_mount(self):
        t = self.query_one(DataTable)
        for i in range(5):
            t.add_row(f"dev-{i}", "checking")
        self.call_after_refresh(self.done)
    def done(self):
        Path(os.environ["READY"]).write_text(f"{time.time():.6f}"); self.exit()
Minimal().run(headless=True)
'''


def one(cmd: list[str], env: dict, marker: Path) -> float:
    if marker.exists():
        marker.unlink()
    t0 = time.time()
    subprocess.run(cmd, env=env, cwd=str(ROOT), check=True, timeout=60,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return float(marker.read_text()) - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        env = dict(os.environ, FIELDKIT_HOME=str(home), FIELDKIT_SSH_CONFIG=str(Path(tmp) / "none"))
        for i in range(5):
            root = Path(tmp) / f"dev{i}"
            root.mkdir()
            subprocess.run([sys.executable, "-m", "fieldkit", "devices", "add", f"dev{i}", f"local:{root}"],
                           env=env, cwd=str(ROOT), check=True, capture_output=True)
        marker = Path(tmp) / "ready"
        fk_env = dict(env, FIELDKIT_TUI_READY_FILE=str(marker))
        mini_env = dict(env, READY=str(marker))
        fk, mini = [], []
        one([sys.executable, "-m", "fieldkit"], fk_env, marker)  # warm-up (bytecode, page cache)
        for _ in range(args.runs):
            fk.append(one([sys.executable, "-m", "fieldkit"], fk_env, marker))
            mini.append(one([sys.executable, "-c", MINIMAL], mini_env, marker))
    f, m = statistics.median(fk), statistics.median(mini)
    print(f"fieldkit TUI, first screen with 5 devices listed: median {f * 1000:.0f} ms "
          f"(min {min(fk) * 1000:.0f}, max {max(fk) * 1000:.0f}) over {args.runs} runs; target < 1000 ms")
    print(f"minimal Textual app with a DataTable:            median {m * 1000:.0f} ms "
          f"(min {min(mini) * 1000:.0f}, max {max(mini) * 1000:.0f})")
    print(f"ratio fieldkit / minimal Textual app = {f / m:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
