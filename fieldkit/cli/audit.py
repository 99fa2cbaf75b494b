"""``fieldkit audit show|status|verify|export|sync``: the operator journal.

Exit codes as everywhere: 0 ok, 1 verification failed or the receiver refused the content,
2 usage / no identity / journal unwritable, 3 receiver unreachable, TLS or token refused, 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.textfmt import table

_RELATIVE = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(subparsers: Any) -> None:
    """Add ``audit`` (``fieldkit audit`` alone shows the status)."""
    s = subparsers.add_parser("audit", help="the operator journal: show, status, verify, export, sync")
    s.set_defaults(handler=cmd_status, json=False)
    actions = s.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser("show", help="list journal entries")
    a.add_argument("--device", metavar="D", help="only this device")
    a.add_argument("--action", dest="filter_action", metavar="A", help="only this action (and its sub-actions)")
    a.add_argument("--since", metavar="T", help="from time T: 2026-11-23, 2026-11-23T08:00 (local), ...Z (UTC), or 2h, 3d")
    a.add_argument("--limit", type=int, metavar="N", help="only the last N entries")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_show)
    a = actions.add_parser("status", help="entries, pending sync, last sync, key fingerprint")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_status)
    a = actions.add_parser("verify", help="check hashes, signatures and checkpoints (exit 1 names the first bad seq)")
    a.add_argument("--bundle", type=Path, metavar="FILE", help="verify an exported bundle instead of this journal")
    a.add_argument("--fingerprint", metavar="SHA256:...", help="with --bundle: the operator key it must be signed by")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_verify)
    a = actions.add_parser("export", help="write a self-contained, verifiable bundle")
    a.add_argument("--out", type=Path, required=True, metavar="FILE")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_export)
    a = actions.add_parser("sync", help="send unacknowledged entries to a receiver (HTTPS)")
    a.add_argument("--to", required=True, metavar="URL", help="receiver base URL (https://; http:// only to this machine)")
    a.add_argument("--ca-bundle", type=Path, metavar="FILE", help="CA certificate(s) (PEM) to trust for the receiver")
    a.add_argument("--token-file", type=Path, metavar="FILE", help="bearer token file (default: $FIELDKIT_SYNC_TOKEN)")
    a.add_argument("--batch", type=int, default=500, metavar="N", help="entries per request (default 500)")
    a.add_argument("--timeout", type=float, default=30.0, metavar="S", help="seconds per request (default 30)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_sync)


# ---- actions ------------------------------------------------------------------------------------
def parse_since(text: str, now: datetime | None = None) -> str:
    """``2h``/``3d``/``45m`` ago, or an ISO date/time (local time unless it says Z or an offset),
    as the journal's UTC time string."""
    now = now or datetime.now(timezone.utc)
    m = _RELATIVE.match(text)
    if m:
        when = now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    else:
        try:
            when = datetime.fromisoformat(text.strip().replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise ConfigError(f"--since {text!r} is not a time",
                              hint="use 2026-11-23, 2026-11-23T08:00, 2026-11-23T08:00Z, or 2h / 3d / 45m") from None
        if when.tzinfo is None:
            when = when.astimezone()  # local time, as the technician reads the clock
    return when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def cmd_show(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.journal import Journal

    since = parse_since(args.since) if args.since else None
    if args.limit is not None and args.limit < 0:
        raise ConfigError("--limit must be 0 or more")
    with Journal.open_readonly(home) as journal:
        entries = journal.entries(device=args.device, action=args.filter_action, since=since,
                                  limit=args.limit, newest=args.limit is not None)
    if args.json:
        emit_json({"entries": [e.to_json() for e in entries]}, ensure_ascii=False)
        return 0
    if not entries:
        print("no entries match")
        return 0
    rows = []
    for e in entries:
        details = json.dumps(e.details, ensure_ascii=False, separators=(",", ":"))
        rows.append([e.seq, e.time[:19].replace("T", " ") + "Z", e.operator, e.device or "-", e.action,
                     e.outcome, details if len(details) <= 70 else details[:69] + "…"])
    print(table(["SEQ", "TIME (UTC)", "OPERATOR", "DEVICE", "ACTION", "OUTCOME", "DETAILS"], rows))
    return 0


def cmd_status(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.journal import Journal

    with Journal.open_readonly(home) as journal:
        doc = journal.status()
    if args.json:
        emit_json(doc, ensure_ascii=False)
        return 0
    last = doc["last_sync"]
    cp = doc["last_checkpoint"]
    lines = [
        f"journal      {doc['journal_id']}  ({doc['path']})",
        f"operator     {doc['operator']}  key {doc['key_fingerprint']}",
        f"entries      {doc['entries']}  (head seq {doc['head']['seq']}, {doc['head']['hash'][:16]}…)",
        f"pending      {doc['pending_sync']} not yet acknowledged by a receiver",
        "last sync    " + (f"{last['time']} to {last['target']}, acknowledged through seq {last['acked_through']}"
                           if last else "never"),
        f"checkpoints  {doc['checkpoints']}" + (f"; last: seq {cp['seq']} for {cp['witness'] or 'local'} at {cp['time']}"
                                                if cp else ""),
    ]
    for t in doc["sync_targets"][1:]:
        lines.append(f"             also {t['target']}: through seq {t['acked_through']} ({t['time']})")
    if doc["device_journals"]:
        lines.append("device journals pulled:")
        lines.append(table(["DEVICE", "JOURNAL", "ENTRIES", "HEAD SEQ", "LAST PULLED"],
                           [[d["device"], d["journal_id"][:12], d["entries"], d["head_seq"], d["last_pulled"]]
                            for d in doc["device_journals"]], indent="  "))
    print("\n".join(lines))
    return 0


def cmd_verify(args: argparse.Namespace, home: Home) -> int:
    if args.bundle is not None:
        from fieldkit.auditbundle import verify_bundle

        res = verify_bundle(args.bundle, expect_fingerprint=args.fingerprint)
        what = f"bundle {args.bundle}"
    else:
        if args.fingerprint:
            raise ConfigError("--fingerprint goes with --bundle")
        from fieldkit.journal import Journal

        with Journal.open_readonly(home) as journal:
            res = journal.verify()
        what = f"journal {res.journal_id}"
    if args.json:
        emit_json(res.to_json(), ensure_ascii=False)
        return 0 if res.ok else 1
    if res.ok:
        print(f"ok: {what}: {res.entries} entries, hashes, links and signatures verified, "
              f"{res.checkpoints} checkpoint(s) hold; head seq {res.head_seq} {res.head_hash[:16]}…")
        print(f"  signed by {res.key_fingerprint}")
    else:
        where = f" at seq {res.bad_seq}" if res.bad_seq is not None else ""
        print(f"FAILED{where} ({res.problem}): {res.message}")
        print(f"  {what}: {res.entries} entries verified before the problem")
    for d in res.device_journals:
        state = "ok" if d["ok"] else f"FAILED at seq {d['bad_seq']}: {d['message']}"
        print(f"  device journal {d['journal_id'][:12]} ({d['device']}): {d['entries']} entries, {state}")
    return 0 if res.ok else 1


def cmd_export(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.auditbundle import export_bundle
    from fieldkit.journal import Journal

    with Journal.open(home) as journal:
        summary = export_bundle(journal, args.out)
    if args.json:
        emit_json(summary, ensure_ascii=False)
    else:
        print(f"wrote {summary['path']}: {summary['entries']} entries (head seq {summary['head']['seq']}), "
              f"{summary['device_journals']} device journal(s), {summary['bytes']} bytes")
        print(f"  signed by {summary['key_fingerprint']}; check anywhere with "
              f"`fieldkit audit verify --bundle {args.out} --fingerprint {summary['key_fingerprint']}`")
    return 0


def cmd_sync(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.errors import Cancelled
    from fieldkit.journal import Journal
    from fieldkit.sync import describe, parse_target, read_token, sync

    target = parse_target(args.to)  # refuse a bad URL before anything else
    token = read_token(args.token_file)
    cancel = threading.Event()
    show = sys.stderr.isatty() and not args.json

    def progress(p: dict) -> None:
        if show:
            sys.stderr.write(f"\rsynced through seq {p['acked_through']} of {p['head_seq']}")
            sys.stderr.flush()

    with Journal.open(home) as journal:
        try:
            result = sync(journal, args.to, token=token, ca_bundle=args.ca_bundle, batch_size=args.batch,
                          timeout=args.timeout, progress=progress, cancel=cancel)
        except KeyboardInterrupt:
            raise Cancelled(f"sync interrupted; {target.key} acknowledged through seq "
                            f"{journal.acked_through(target.key)}; run it again to resume") from None
        finally:
            if show:
                sys.stderr.write("\n")
    if args.json:
        emit_json(result.to_json(), ensure_ascii=False)
    else:
        print(describe(result))
    return 0
