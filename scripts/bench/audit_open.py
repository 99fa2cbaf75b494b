#!/usr/bin/env python3
"""Audit screen opening on a large operator journal: time from the key press until the first page of
entries is on screen, against a plain SQLite read of the same page in the same run.

A journal of ``--entries`` signed, hash-chained entries (100,000 by default; the mix a fleet leaves:
connects, witnesses, health checks over 20 devices, a checkpoint every 300 entries) is built once
(``Journal.record_many``) and verified once, as the technician's earlier sessions would have left it.
Then, ``--rounds`` times, a fresh process starts the TUI headless at 80×24 (an empty fleet), sends the
``A`` key and takes the time until the audit table holds its first page and the screen has been
refreshed once more — the audit module's import, the status line, the page read and the first layout
are in it; the chain check runs after, in a worker, from the last verified entry. References in the same
process: the same page read with ``sqlite3`` (connect, ``SELECT … ORDER BY seq DESC LIMIT page``,
fetch; the two alternate which goes first), and the floor any Textual screen pays — a bare screen
(Header, one DataTable of the same rows, Footer) pushed the same way. Reported: medians, the ratios,
and the target (< 300 ms).

A second case opens a journal that was never verified (no mark: the worker checks every entry while
the page is shown) — the page must not wait for it.

    python scripts/bench/audit_open.py [--entries 100000] [--rounds 5] [--tiny] [--json]

``--tiny`` (2,000 entries, 1 round) only checks that it all runs; the test suite runs it.
``--json``: the last line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

DEVICES = [f"press-{i}" for i in range(1, 21)]
TARGET_MS = 300.0


def minimal_page_class() -> Any:
    from textual.screen import Screen
    from textual.widgets import DataTable, Footer, Header

    class MinimalPage(Screen):
        """The floor: Header, one DataTable of the same page (read with sqlite3), Footer; nothing else."""

        def __init__(self, db: Path, page: int) -> None:
            super().__init__()
            self.db, self.page = db, page

        def compose(self) -> Any:
            yield Header()
            yield DataTable(cursor_type="row", zebra_stripes=True)
            yield Footer()

        def on_mount(self) -> None:
            conn = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True)
            rows = conn.execute("SELECT seq, time, operator, device, action, outcome, details FROM entries "
                                "ORDER BY seq DESC LIMIT ?", (self.page,)).fetchall()
            conn.close()
            table = self.query_one(DataTable)
            table.add_columns("Seq", "Time (UTC)", "Operator", "Device", "Action", "Outcome", "Details")
            for r in rows:
                table.add_row(str(r[0]), r[1][:19], r[2], r[3], r[4], r[5], r[6][:80])

    return MinimalPage


def build(home_dir: Path, n: int) -> float:
    """The journal a fleet's old polling left: connect, witness, health check per poll. Seconds taken."""
    from fieldkit.journal import Journal, setup_operator
    from fieldkit.locations import Home

    home = Home(home_dir).ensure()
    setup_operator(home, "bench-technician")
    t0 = time.perf_counter()
    with Journal.open(home) as j:
        i = 0
        while i < n:
            batch = []
            for k in range(min(300, n - i)):
                d = DEVICES[(i + k) // 3 % len(DEVICES)]
                kind = (i + k) % 3
                if kind == 0:
                    batch.append((d, "connect", "ok", {"target": f"ssh://fieldkit@10.0.0.{(i + k) % 200}:22",
                                                       "profile": "raspberry-pi-5", "transport": "ssh",
                                                       "agent_version": "0.1.0", "capabilities": ["health", "bench"]}))
                elif kind == 1:
                    batch.append((d, "journal.witness", "ok", {"checkpoint_seq": i + k, "device_journal": "ab" * 16,
                                                               "device_head_seq": i + k, "pulled": 0}))
                else:
                    batch.append((d, "health.check", "ok", {"status": "ok", "profile": "raspberry-pi-5",
                                                            "problems": [], "clock_offset_s": 0.01}))
            j.record_many(batch)
            j.checkpoint(witness=DEVICES[i // 300 % len(DEVICES)])
            i += len(batch)
    return time.perf_counter() - t0


def child(home_dir: str, page: int, sqlite_first: bool) -> None:
    """One measurement in a fresh process: prints {"tui_ms", "sqlite_ms", "rows"}."""
    import asyncio

    os.environ["FIELDKIT_HOME"] = home_dir
    from fieldkit.locations import Home
    from screens.app import build_app

    MinimalPage = minimal_page_class()
    home = Home(Path(home_dir))
    out: dict = {}

    def sqlite_read() -> None:
        t0 = time.perf_counter()
        conn = sqlite3.connect(f"file:{home.journal_db}?mode=ro", uri=True)
        rows = conn.execute("SELECT seq, time, operator, device, action, outcome, details, prev, hash, sig "
                            "FROM entries ORDER BY seq DESC LIMIT ?", (page,)).fetchall()
        conn.close()
        out["sqlite_ms"] = (time.perf_counter() - t0) * 1000
        out["sqlite_rows"] = len(rows)

    async def shown(app: Any, pred: Any, deadline: float) -> None:
        """Until ``pred(screen)`` holds and the screen has been refreshed once more."""
        while True:
            screen = app.screen
            if pred(screen):
                painted = asyncio.Event()
                screen.call_after_refresh(painted.set)
                await painted.wait()
                return
            if time.monotonic() > deadline:
                raise SystemExit("the screen did not show its first page within 60 s")
            await asyncio.sleep(0.001)

    async def tui() -> None:
        from textual import events

        app = build_app(home, fleet_refresh_s=3600)
        async with app.run_test(size=(80, 24)) as pilot:
            while getattr(app.screen, "watch", None) is None:  # a technician presses A seconds after start
                await asyncio.sleep(0.01)
            await pilot.pause()
            await asyncio.sleep(0.5)
            want = min(page, out.get("sqlite_rows", page))
            deadline = time.monotonic() + 60
            t0 = time.perf_counter()
            app.post_message(events.Key("A", "A"))  # as the terminal delivers it
            await shown(app, lambda s: s.id == "audit" and s.query("#entries")
                        and s.query_one("#entries").row_count >= want, deadline)
            out["tui_ms"] = (time.perf_counter() - t0) * 1000
            screen = app.screen
            out["rows"] = screen.query_one("#entries").row_count
            while screen.busy and time.monotonic() < deadline:  # let the chain check finish (not timed)
                await asyncio.sleep(0.05)
            out["chain"] = screen.chain
            app.pop_screen()
            await pilot.pause()
            await asyncio.sleep(0.5)
            t0 = time.perf_counter()  # the floor: a bare screen with the same rows in a DataTable
            app.push_screen(MinimalPage(home.journal_db, page))
            await shown(app, lambda s: isinstance(s, MinimalPage) and s.query("DataTable")
                        and s.query_one("DataTable").row_count >= want, deadline)
            out["minimal_ms"] = (time.perf_counter() - t0) * 1000

    if sqlite_first:
        sqlite_read()
        asyncio.run(tui())
    else:
        out["sqlite_rows"] = page
        asyncio.run(tui())
        sqlite_read()
    print(json.dumps(out))


def measure(home_dir: Path, page: int, sqlite_first: bool) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", str(home_dir), "--page", str(page)]
                          + (["--sqlite-first"] if sqlite_first else []),
                          check=False, capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    if proc.returncode != 0:
        raise SystemExit(f"measurement failed: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rounds_of(home_dir: Path, page: int, rounds: int) -> dict:
    tui, ref, floor = [], [], []
    for r in range(rounds):
        m = measure(home_dir, page, sqlite_first=r % 2 == 0)
        tui.append(m["tui_ms"])
        ref.append(m["sqlite_ms"])
        floor.append(m["minimal_ms"])
    return {"tui_ms": tui, "sqlite_ms": ref, "minimal_ms": floor, "tui_median_ms": statistics.median(tui),
            "sqlite_median_ms": statistics.median(ref), "minimal_median_ms": statistics.median(floor),
            "ratio_minimal": statistics.median(tui) / statistics.median(floor),
            "ratio": statistics.median(tui) / max(statistics.median(ref), 1e-6), "rows": m["rows"], "chain": m["chain"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tiny", action="store_true", help="2,000 entries, 1 round: a quick check that it all runs")
    ap.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    ap.add_argument("--child", metavar="HOME", help=argparse.SUPPRESS)
    ap.add_argument("--page", type=int, default=200, help=argparse.SUPPRESS)
    ap.add_argument("--sqlite-first", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.page, args.sqlite_first)
        return 0
    from _needs import require

    require(__file__)
    from fieldkit.journal import Journal
    from fieldkit.locations import Home
    from screens.audit import PAGE

    if args.tiny:
        args.entries, args.rounds = 2000, 1
    out: dict = {"entries": args.entries, "rounds": args.rounds, "page": PAGE, "cpus": os.cpu_count(),
                 "target_ms": TARGET_MS}
    with tempfile.TemporaryDirectory(prefix="fieldkit-bench-audit-", dir=os.environ.get("BENCH_DIR")) as tmp:
        verified = Path(tmp) / "verified"
        print(f"building a journal of {args.entries:,} entries …", flush=True)
        out["build_s"] = build(verified, args.entries)
        never = Path(tmp) / "never-verified"
        shutil.copytree(verified, never)
        with Journal.open_readonly(Home(verified)) as j:
            t0 = time.perf_counter()
            res = j.verify()
            out["full_verify_s"] = time.perf_counter() - t0
            assert res.ok, res.message
        out["verified"] = rounds_of(verified, PAGE, args.rounds)
        out["never_verified"] = rounds_of(never, PAGE, max(1, args.rounds // 2))
    v, n = out["verified"], out["never_verified"]
    print(f"journal: {args.entries:,} entries (built in {out['build_s']:.1f} s; full verification "
          f"{out['full_verify_s']:.1f} s), page of {PAGE}, 80x24, {args.rounds} round(s), {os.cpu_count()} CPUs")
    print(f"{'':42s} {'median':>9s} {'rounds':s}")
    print(f"{'audit screen, first page shown (verified)':42s} {v['tui_median_ms']:7.0f} ms  "
          + ", ".join(f"{x:.0f}" for x in v["tui_ms"]) + f"  (target < {TARGET_MS:.0f} ms)")
    print(f"{'plain sqlite3 read of the same page':42s} {v['sqlite_median_ms']:7.1f} ms  "
          + ", ".join(f"{x:.1f}" for x in v["sqlite_ms"]))
    print(f"{'ratio TUI / sqlite':42s} {v['ratio']:7.0f}x")
    print(f"{'bare Textual screen, same page (floor)':42s} {v['minimal_median_ms']:7.0f} ms  "
          + ", ".join(f"{x:.0f}" for x in v["minimal_ms"]) + f"  (audit / floor {v['ratio_minimal']:.2f}x)")
    print(f"{'audit screen, never verified before':42s} {n['tui_median_ms']:7.0f} ms  "
          + ", ".join(f"{x:.0f}" for x in n["tui_ms"]))
    print(f"chain after opening: {v['chain']}")
    out["ok"] = v["tui_median_ms"] < TARGET_MS
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
