#!/usr/bin/env python3
"""Upload progress over a serial line at a real baud rate: paced, acknowledged messages against
fixed 256 KiB messages (how fieldkit sent before).

The real agent serves ``--serial`` on one end of a pty relay throttled to the line's byte rate
(8N1: baud / 10 bytes a second); the laptop uploads a random file into the bench cache (open
without an operator). For each way it reports the time to the first progress reading, the longest
gap between readings, the whole upload's time and its payload rate as a share of the line rate,
and whether the session survived (the agent ends a serial session after 15 s without a whole
message: one 256 KiB message takes 22 s at 115200 baud).

    python scripts/bench/upload_progress.py [--baud 115200] [--kib 400] [--rounds 1] [--tiny] [--json]

``--tiny`` (48 KiB at 115200 baud, 1 round) takes about ten seconds; the test suite runs it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _needs import require  # noqa: E402

CACHE = "/var/lib/fieldkit/bench-cache"


@contextmanager
def serial_device(work: Path, bytes_per_second: float) -> Iterator[tuple[object, Path]]:
    from fieldkit.sim import make_device_root, serial_agent
    from fieldkit.sim.ptyrelay import PtyRelay

    root = make_device_root(work / "dev")
    relay = PtyRelay(bytes_per_second=bytes_per_second)
    try:
        with serial_agent(relay, root, work / "agent.log"):
            yield relay, root
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        relay.close()


@contextmanager
def fixed_messages(on: bool) -> Iterator[None]:
    """``on``: send as fieldkit did before (256 KiB messages, progress as bytes handed over)."""
    from fieldkit.link import client

    saved = (client._Pacer.next_size, client._Pacer.ready)
    if on:
        client._Pacer.next_size = lambda self: self.largest  # type: ignore[method-assign]
        client._Pacer.ready = lambda self, done, cancel: True  # type: ignore[method-assign]
    try:
        yield
    finally:
        client._Pacer.next_size, client._Pacer.ready = saved  # type: ignore[method-assign]


def one_upload(home: object, work: Path, baud: int, size: int, old: bool) -> dict:
    from fieldkit.devices import open_session
    from fieldkit.errors import FieldkitError

    rate = baud / 10
    data = os.urandom(size)
    src = work / "blob.bin"
    src.write_bytes(data)
    readings: list[tuple[float, int]] = []
    lock = threading.Lock()
    result: dict = {"way": "fixed 256 KiB (before)" if old else "paced + acknowledged", "bytes": size}
    t0 = time.monotonic()
    with serial_device(work, rate) as (relay, root), fixed_messages(old):
        try:
            with open_session(f"serial://{relay.laptop_path}?baud={baud}", home, timeout=60) as session:
                if old:
                    session.link.agent.pop("put_progress", None)
                t0 = time.monotonic()

                def progress(done: int, total: int) -> None:
                    with lock:
                        readings.append((time.monotonic() - t0, done))

                session.upload(src, f"{CACHE}/blob.bin", sha256=hashlib.sha256(data).hexdigest(), progress=progress,
                               timeout=max(60.0, 4 * size / rate))
                result["ok"] = True
        except FieldkitError as exc:  # a cut session (the old way at 115200 baud), or no connection at all
            result["ok"] = False
            result["error"] = str(exc).splitlines()[0][:200]
        took = time.monotonic() - t0
        landed = root / CACHE.lstrip("/") / "blob.bin"
        result["landed"] = landed.exists() and hashlib.sha256(landed.read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    times = [0.0] + [t for t, _ in readings if t < took] + [took]
    middle = [d for _, d in readings if 0 < d < size]
    result.update({
        "seconds": round(took, 2),
        "first_reading_s": round(readings[0][0], 2) if readings else None,
        "longest_gap_s": round(max(b - a for a, b in zip(times, times[1:])), 2),
        "readings_before_the_end": len(middle),
        "line_share": round(size / took / rate, 3) if result["ok"] else None,
    })
    return result


def main() -> int:
    require(__file__)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baud", type=int, default=115200)
    ap.add_argument("--kib", type=int, default=400, help="file size in KiB (default 400: more than one old message)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--tiny", action="store_true", help="48 KiB at 115200 baud, 1 round: a quick check that it runs")
    ap.add_argument("--json", action="store_true", help="end with one JSON line (the summary)")
    args = ap.parse_args()
    if args.tiny:
        args.baud, args.kib, args.rounds = 115200, 48, 1
    from fieldkit.journal.identity import init_identity
    from fieldkit.locations import Home

    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fk-upload-") as tmp:
        home = Home(Path(tmp) / "home").ensure()
        init_identity(home, "bench")
        for r in range(args.rounds):
            for old in (False, True):  # alternating, as every benchmark here
                work = Path(tmp) / f"r{r}-{'old' if old else 'new'}"
                work.mkdir()
                rows.append(one_upload(home, work, args.baud, args.kib * 1024, old))
    summary: dict = {"baud": args.baud, "bytes": args.kib * 1024, "rounds": args.rounds, "ways": {}}
    print(f"upload of {args.kib} KiB at {args.baud} baud ({args.baud // 10} B/s), {args.rounds} round(s):")
    for way in dict.fromkeys(r["way"] for r in rows):
        mine = [r for r in rows if r["way"] == way]

        def med(key: str, mine: list[dict] = mine) -> float | None:
            values = [r[key] for r in mine if r[key] is not None]
            return statistics.median(values) if values else None

        s = {"ok": all(r["ok"] for r in mine), "seconds": med("seconds"), "first_reading_s": med("first_reading_s"),
             "longest_gap_s": med("longest_gap_s"), "readings_before_the_end": med("readings_before_the_end"),
             "line_share": med("line_share"),
             "errors": sorted({r["error"].split(": ", 1)[-1] for r in mine if r.get("error")})}  # less the port
        summary["ways"][way] = s
        state = "ok" if s["ok"] else "FAILED (" + "; ".join(s["errors"]) + ")"
        first = "no reading" if s["first_reading_s"] is None else f"first reading after {s['first_reading_s']} s"
        share = "" if s["line_share"] is None else f", {s['line_share']:.1%} of the line rate"
        print(f"  {way:24} {state}: {s['seconds']} s, {first}, longest gap {s['longest_gap_s']} s, "
              f"{s['readings_before_the_end']} readings before the end{share}")
    if args.json:
        print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
