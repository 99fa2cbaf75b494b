#!/usr/bin/env python3
"""Operator journal: durable signed appends, verification, sync — with references in the same run.

1. Appends: ``Journal.record`` (canonical JSON, sha256, ECDSA P-256 signature, one SQLite
   transaction per entry with WAL + synchronous=FULL, i.e. fsynced before it returns), against
   the same transaction pattern with no hashing or signing (raw SQLite, same row, same disk), and
   ``openssl speed ecdsap256`` signatures/s as the signing ceiling.  Target >= 2,000/s.
2. Verification: ``Journal.verify`` over the same entries (hash, link and signature of every
   entry), against ``openssl speed ecdsap256`` verifications/s on one core.  Target >= 8,000/s.
3. Sync: ``fieldkit.sync.sync`` to the reference receiver (scripts/ingest_server.py, SQLite
   WAL + FULL) on 127.0.0.1, batches of 500, with the receiver checking every hash and link and
   (a) each batch's signature (default), (b) every entry's signature.  Target >= 20,000/s.

    python scripts/bench/journal.py [--entries 10000] [--rounds 3] [--tiny] [--json]

``--tiny`` (300 entries, 1 round, 1 s of openssl speed) only checks that every part runs; the test
suite runs it. ``--json``: the last line printed is a one-line JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from fieldkit.journal import Journal, init_identity  # noqa: E402
from fieldkit.locations import Home  # noqa: E402
from fieldkit.sync import sync  # noqa: E402

TOKEN = "bench-token"
DETAILS = {"profile": "raspberry-pi-5", "status": "ok", "cpu_percent": 41.5, "temp_c": 62.0,
           "model": "yolo-v8n", "version": "1.4.0", "checks": ["cpu", "memory", "disk", "thermal"]}


def bench_appends(home: Home, n: int) -> float:
    with Journal.open(home) as j:
        t0 = time.perf_counter()
        for i in range(n):
            j.record(f"cam-{i % 8}", "health.check", "ok", dict(DETAILS, i=i))
        return n / (time.perf_counter() - t0)


def bench_raw_sqlite(path: Path, n: int, row: tuple) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE entries (seq INTEGER PRIMARY KEY, time TEXT, operator TEXT, device TEXT, action TEXT, "
                 "outcome TEXT, details TEXT, prev TEXT, hash TEXT, sig TEXT)")
    t0 = time.perf_counter()
    for _ in range(n):
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
        conn.execute("INSERT INTO entries(time, operator, device, action, outcome, details, prev, hash, sig) "
                     "VALUES (?,?,?,?,?,?,?,?,?)", row[1:])
        conn.execute("COMMIT")
    rate = n / (time.perf_counter() - t0)
    conn.close()
    return rate


def openssl_ecdsa(seconds: int = 3) -> dict | None:
    if not shutil.which("openssl"):
        return None
    out = subprocess.run(["openssl", "speed", "-seconds", str(seconds), "ecdsap256"], capture_output=True,
                         text=True).stdout
    m = re.search(r"256 bits ecdsa \(nistp256\)\s+\S+s\s+\S+s\s+([\d.]+)\s+([\d.]+)", out)
    return {"sign_per_s": float(m.group(1)), "verify_per_s": float(m.group(2))} if m else None


def start_receiver(db: Path, signatures: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "ingest_server.py"), "--db", str(db), "--port", "0",
                             "--quiet", "--signatures", signatures], stdout=subprocess.PIPE, text=True,
                            env=dict(os.environ, FIELDKIT_INGEST_TOKEN=TOKEN))
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        raise SystemExit(f"the receiver did not start: {line!r}")
    return proc, line.split()[-1]


def bench_sync(home: Home, work: Path, signatures: str, rounds: int) -> list[float]:
    rates = []
    for r in range(rounds):
        proc, url = start_receiver(work / f"ingest-{signatures}-{r}.db", signatures)
        try:
            with Journal.open(home) as j:
                res = sync(j, url, token=TOKEN, batch_size=500)
            assert res.pending == 0, res
            rates.append(res.sent / res.seconds)
        finally:
            proc.terminate()
            proc.wait(10)
    return rates


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--entries", type=int, default=10000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="300 entries, 1 round: a quick check that it all runs")
    ap.add_argument("--json", action="store_true", help="end with a one-line JSON summary")
    args = ap.parse_args()
    if args.tiny:
        args.entries, args.rounds = 300, 1
    out: dict = {"entries": args.entries, "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="fieldkit-bench-journal-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        home = Home(work / "home").ensure()
        init_identity(home, "bench")
        print(f"{args.entries} entries, {args.rounds} rounds, {os.cpu_count()} CPUs, files in {work}", flush=True)

        appends, raw = [], []
        for r in range(args.rounds):  # alternate A/B so both see the same disk conditions
            appends.append(bench_appends(home, args.entries // args.rounds))
            with Journal.open(home) as j:
                row = j.rows_after(0, 1)[0]
            raw.append(bench_raw_sqlite(work / f"raw-{r}.db", args.entries // args.rounds, row))
        ossl = openssl_ecdsa(1 if args.tiny else 3)
        out["appends_per_s"] = statistics.median(appends)
        out["raw_sqlite_full_commits_per_s"] = statistics.median(raw)
        out["openssl"] = ossl
        print(f"appends (signed, fsynced)   {out['appends_per_s']:8,.0f}/s  rounds {', '.join(f'{a:,.0f}' for a in appends)}"
              "  (target >= 2,000/s)")
        print(f"raw SQLite, same commits     {out['raw_sqlite_full_commits_per_s']:8,.0f}/s  "
              f"-> journal/raw = {out['appends_per_s'] / out['raw_sqlite_full_commits_per_s']:.2f}x")
        if ossl:
            print(f"openssl speed ecdsap256 sign {ossl['sign_per_s']:8,.0f}/s (one core: the signing ceiling)")

        with Journal.open_readonly(home) as j:
            n = j.head()[0]
            verify = []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                res = j.verify()
                verify.append(n / (time.perf_counter() - t0))
                assert res.ok, res.message
        out["verify_per_s"] = statistics.median(verify)
        print(f"verify (hash+link+signature) {out['verify_per_s']:8,.0f}/s over {n} entries  (target >= 8,000/s)")
        if ossl:
            print(f"openssl speed ecdsap256 verify {ossl['verify_per_s']:6,.0f}/s on one core -> "
                  f"journal/openssl = {out['verify_per_s'] / ossl['verify_per_s']:.2f}x "
                  f"(signatures checked on {min(4, os.cpu_count() or 1)} threads)")

        for mode in ("batch", "all"):
            rates = bench_sync(home, work, mode, args.rounds)
            out[f"sync_per_s_{mode}"] = statistics.median(rates)
            print(f"sync to 127.0.0.1, receiver --signatures {mode:5s} {out[f'sync_per_s_{mode}']:8,.0f}/s  rounds "
                  + ", ".join(f"{x:,.0f}" for x in rates) + ("  (target >= 20,000/s)" if mode == "batch" else ""))
    if args.json:
        print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
