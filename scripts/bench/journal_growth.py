#!/usr/bin/env python3
"""Operator-journal growth while a fleet is watched: entries per device-hour, long-lived sessions
(fieldkit.fleetwatch, what the TUI and ``health --watch`` do now) against the old rule (a new
connection for every poll: connect + witness + health check each time), side by side in one run.

``--devices`` simulated devices (fieldkit.sim: real SSH servers on 127.0.0.1 and the real agent,
``--serial`` of them on pty serial lines) with a lenient profile, so that nothing changes: what is
measured is what the journal gains from watching alone. Each rule polls every device every
``--interval`` seconds for ``--seconds`` seconds (the fast interval stands for hours of the TUI's
10 s); the entries each one added are counted by action.

Extrapolation to a shift (``--shift-hours`` 8, ``--fleet`` 20 devices, the TUI's 10 s poll):
entries = (entries per session) × fleet + (entries per poll) × polls, where a session's entries are
the connect, the witness (and, over serial, the operator's authentication) and the first health
status, and the per-poll entries are the rest (status changes; none when nothing changes).
Target: fewer than 200 entries for 20 devices over 8 hours.

    python scripts/bench/journal_growth.py [--devices 20] [--serial 2] [--seconds 60] [--interval 1]
                                           [--tiny] [--json]

``--tiny`` (2 SSH devices, 4 s per rule at 0.3 s) only checks that it all runs; the test suite runs it.
``--json``: the last line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

PROFILE = "bench-lenient"
LENIENT = f"""
name = "{PROFILE}"
description = "lenient limits: the journal's growth is under test, not the machine's load"
arch = "any"
[thresholds]
cpu_percent = {{ warn = 101, crit = 102 }}
load_per_core = {{ warn = 500, crit = 1000 }}
memory_used_percent = {{ warn = 99.9, crit = 100 }}
swap_used_percent = {{ warn = 99.9, crit = 100 }}
disk_used_percent = {{ warn = 99.9, crit = 100 }}
temperature_c = {{ warn = 150, crit = 200 }}
clock_offset_s = {{ warn = 60, crit = 120 }}
[memory]
headroom_mb = 0
"""
SESSION_ACTIONS = ("connect", "journal.witness", "auth.serial", "agent.outdated")
TARGET = 200


def head(home) -> int:
    from fieldkit.journal import Journal

    with Journal.open_readonly(home) as j:
        return j.head()[0]


def counted(home, after: int, names: list[str]) -> dict:
    """Entries after seq ``after`` by action, and the first-status health entries (one per device)."""
    from fieldkit.journal import Journal

    with Journal.open_readonly(home) as j:
        entries = [e for e in j.entries(after_seq=after) if e.device in names]
    by_action = collections.Counter(e.action for e in entries)
    last: dict[str, str] = {}
    changes = 0  # health statuses that differ from the device's previous one (whether journaled or not)
    for e in entries:
        if e.action == "health.check":
            status = e.details.get("status")
            changes += e.device in last and last[e.device] != status
            last[e.device] = status
    return {"total": len(entries), "by_action": dict(by_action), "changes": changes,
            "session": sum(by_action.get(a, 0) for a in SESSION_ACTIONS) + len(last)}


def run_watch(home, names: list[str], seconds: float, interval: float) -> dict:
    """The new rule: one FleetWatch, background polling, for ``seconds``."""
    from fieldkit.fleetwatch import FleetWatch

    polls = collections.Counter()
    before = head(home)
    watch = FleetWatch(home, interval=interval, timeout=15.0, on_report=lambda r: polls.update([r.device]))
    watch.track(names)
    t0 = time.monotonic()
    watch.start()
    time.sleep(seconds)
    elapsed = time.monotonic() - t0
    connects = {n: watch.connects(n) for n in names}
    watch.close()
    out = counted(home, before, names)
    out.update(polls=sum(polls.values()), seconds=elapsed, sessions=sum(connects.values()))
    return out


def run_reconnect(home, names: list[str], seconds: float, interval: float) -> dict:
    """The old rule, as the fleet did it: a round of check_many (a session per device per poll),
    then the interval, again until ``seconds`` are over."""
    from fieldkit.health import check_many

    before = head(home)
    polls = 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        polls += len(check_many(names, home, timeout=15.0))
        time.sleep(interval)
    elapsed = time.monotonic() - t0
    out = counted(home, before, names)
    out.update(polls=polls, seconds=elapsed, sessions=out["by_action"].get("connect", 0))
    return out


def extrapolate(r: dict, devices: int, fleet: int, hours: float, poll_s: float) -> dict:
    per_session = r["session"] / max(1, r["sessions"])
    sessions_per_device = r["sessions"] / devices
    per_poll = (r["total"] - r["session"]) / max(1, r["polls"])
    polls = fleet * hours * 3600 / poll_s
    if sessions_per_device > 1.5:  # the old rule: a session per poll
        total = (r["total"] / max(1, r["polls"])) * polls
    else:
        total = per_session * fleet + per_poll * polls
    return {"entries_per_poll": r["total"] / max(1, r["polls"]), "per_session": per_session, "per_poll": per_poll,
            "measured_per_device_hour": r["total"] / (devices * r["seconds"] / 3600),
            "shift_total": total, "shift_per_device_hour": total / (fleet * hours)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", type=int, default=20)
    ap.add_argument("--serial", type=int, default=2, help="how many of them on a pty serial line")
    ap.add_argument("--seconds", type=float, default=60.0, help="per rule")
    ap.add_argument("--interval", type=float, default=1.0, help="poll interval of the run (seconds)")
    ap.add_argument("--fleet", type=int, default=20, help="devices of the extrapolated shift")
    ap.add_argument("--shift-hours", type=float, default=8.0)
    ap.add_argument("--poll", type=float, default=10.0, help="the TUI's poll interval for the extrapolation")
    ap.add_argument("--tiny", action="store_true", help="2 devices, 4 s per rule: a quick check that it all runs")
    ap.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    a = ap.parse_args()
    from _needs import require

    require(__file__)
    if a.tiny:
        a.devices, a.serial, a.seconds, a.interval = 2, 0, 4.0, 0.3
    from fieldkit.journal import setup_operator
    from fieldkit.locations import Home
    from fieldkit.sim import Simulation

    with tempfile.TemporaryDirectory(prefix="fieldkit-bench-growth-", dir=os.environ.get("BENCH_DIR")) as tmp:
        home = Home(Path(tmp) / "home").ensure()
        os.environ["FIELDKIT_HOME"] = str(home.root)
        setup_operator(home, "bench-technician")
        home.profiles_dir.mkdir(parents=True, exist_ok=True)
        (home.profiles_dir / f"{PROFILE}.toml").write_text(LENIENT)
        serial = min(a.serial, a.devices)
        with Simulation(home, ssh=a.devices - serial, serial=serial, profile=PROFILE, base_dir=Path(tmp) / "sim") as sim:
            names = [d.name for d in sim.devices]
            print(f"{len(names)} simulated devices ({len(names) - serial} SSH, {serial} serial), poll every "
                  f"{a.interval:g} s, {a.seconds:g} s per rule, {os.cpu_count()} CPUs", flush=True)
            new = run_watch(home, names, a.seconds, a.interval)
            old = run_reconnect(home, names, a.seconds, a.interval)
    out = {"devices": a.devices, "serial": serial, "seconds": a.seconds, "interval": a.interval, "fleet": a.fleet,
           "shift_hours": a.shift_hours, "poll_s": a.poll, "target": TARGET, "new": new, "old": old}
    for key in ("new", "old"):
        out[key]["extrapolated"] = extrapolate(out[key], a.devices, a.fleet, a.shift_hours, a.poll)
    ne, oe = out["new"]["extrapolated"], out["old"]["extrapolated"]
    out["ok"] = ne["shift_total"] < TARGET and new["changes"] == 0
    rows = [("polls done", f"{new['polls']:,}", f"{old['polls']:,}"),
            ("sessions opened", f"{new['sessions']:,}", f"{old['sessions']:,}"),
            ("journal entries added", f"{new['total']:,}", f"{old['total']:,}"),
            ("  by action", _actions(new), _actions(old)),
            ("health status changes", f"{new['changes']}", f"{old['changes']}"),
            ("entries per poll", f"{ne['entries_per_poll']:.3f}", f"{oe['entries_per_poll']:.3f}"),
            (f"entries per device-hour (this run, {a.interval:g} s)", f"{ne['measured_per_device_hour']:,.0f}",
             f"{oe['measured_per_device_hour']:,.0f}"),
            (f"entries per device-hour ({a.poll:g} s, {a.shift_hours:g} h shift)", f"{ne['shift_per_device_hour']:,.2f}",
             f"{oe['shift_per_device_hour']:,.0f}"),
            (f"{a.fleet} devices × {a.shift_hours:g} h at {a.poll:g} s", f"{ne['shift_total']:,.0f}",
             f"{oe['shift_total']:,.0f}")]
    print(f"{'':48s} {'sessions kept (new)':>22s} {'connect per poll (old)':>24s}")
    for label, n, o in rows:
        print(f"{label:48s} {n:>22s} {o:>24s}")
    verdict = "meets" if out["ok"] else "MISSES"
    print(f"target: {a.fleet} devices × {a.shift_hours:g} h with nothing changing adds < {TARGET} entries: {verdict} "
          f"({ne['shift_total']:,.0f}; the old rule: {oe['shift_total']:,.0f}, "
          f"{oe['shift_total'] / max(1.0, ne['shift_total']):,.0f}× as many)")
    if a.json:
        print(json.dumps(out))
    return 0


def _actions(r: dict) -> str:
    short = {"connect": "conn", "journal.witness": "wit", "health.check": "hc", "auth.serial": "auth"}
    return " ".join(f"{short.get(k, k)} {v}" for k, v in sorted(r["by_action"].items()))


if __name__ == "__main__":
    sys.exit(main())
