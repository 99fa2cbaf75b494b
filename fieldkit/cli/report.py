"""``fieldkit report RUN_ID --out DIR`` (the printable ``report.html`` and the signed ``report.json`` of a
checklist run) and ``fieldkit report verify DIR/report.json [--key PUB.pem]`` (exit 0 when the signature
holds and, with --key, the signer is that key; 1 otherwise).

``verify`` is a verb, never a run id: run ids start with a date (``fieldkit.checklists.RUN_ID_PATTERN``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.errors import ConfigError
from fieldkit.locations import Home

USAGE = """fieldkit report RUN_ID --out DIR [--json]
       fieldkit report verify DIR/report.json [--key PUB.pem] [--json]"""


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("report", help="the signed record of a checklist run (HTML + report.json); "
                              "verify one", usage=USAGE)
    s.add_argument("words", nargs="+", metavar="RUN_ID | verify FILE")
    s.add_argument("--out", type=Path, metavar="DIR", help="where to write report.html and report.json")
    s.add_argument("--key", type=Path, action="append", default=[], metavar="PUB.pem",
                   help="verify: the operator public key that must have signed it (repeatable)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_report)


def cmd_report(args: argparse.Namespace, home: Home) -> int:
    word, *rest = args.words
    if word == "verify":
        if len(rest) != 1 or args.out is not None:
            raise ConfigError(f"usage: {USAGE}")
        return cmd_verify(args, Path(rest[0]))
    if rest or args.out is None or args.key:
        raise ConfigError(f"usage: {USAGE}")
    from fieldkit.checklists import check_run_id
    from fieldkit.report import write_report

    doc = write_report(home, check_run_id(word), args.out)
    if args.json:
        emit_json(doc)
    else:
        print(f"run {doc['run_id']} ({doc['status']}): {doc['html']} and {doc['json']}, signed by {doc['signer']}")
    return 0


def cmd_verify(args: argparse.Namespace, path: Path) -> int:
    from fieldkit.report import verify_report

    res = verify_report(path, args.key)  # ReportError: exit 1
    if args.json:
        emit_json(res.to_json())
    else:
        doc = res.to_json()
        print(f"{path}: signature ok, signed by {res.operator} ({res.signer})"
              + (", the key given" if args.key else "")
              + f"; run {doc['run_id']} ({doc['checklist']}) on {doc['device']}: {doc['result']}")
    return 0
