"""``fieldkit init``: create the operator identity (signing key) that signs the journal."""

from __future__ import annotations

import argparse
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.locations import Home


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("init", help="create the operator identity that signs the journal")
    s.add_argument("--operator", required=True, metavar="NAME", help="your name as it appears in the journal")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_init)


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.journal import setup_operator

    doc = setup_operator(home, args.operator)
    if args.json:
        emit_json(doc, ensure_ascii=False)
        return 0
    status = doc["status"]
    if status == "renamed":
        print(f"operator renamed to {doc['operator']} (was {doc['previous']}); same key")
    else:
        print(f"{'created a signing key for' if status == 'created' else 'already set up as'} operator {doc['operator']}")
    print(f"  key          {doc['key']} (ECDSA P-256, mode 0600)")
    print(f"  fingerprint  {doc['key_fingerprint']}")
    print(f"  journal      {doc['journal']} (id {doc['journal_id']})")
    if status == "created":
        print("Give the fingerprint to whoever receives your journal (audit sync / export).")
    return 0
