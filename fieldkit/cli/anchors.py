"""``fieldkit anchors list|add|remove DEVICE``: the release keys a device accepts (several: rotation),
and with ``--operator`` the operator keys allowed to change it over a serial line.

Each change shows the key's fingerprint, asks to confirm (``--yes`` for scripts) and is journaled on
the laptop and on the device. Your own operator public key: ``fieldkit init --show-public-key``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.cli.common import confirm, emit_json, open_device
from fieldkit.locations import Home
from fieldkit.textfmt import table

_OPERATOR_HELP = ("an operator key (etc/fieldkit/operators): allowed to change the device over serial; "
                  "yours: `fieldkit init --show-public-key`")


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("anchors", help="release keys a device trusts, operator keys that may change it "
                                              "(list, add, remove)")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="the release keys the device accepts and its operator keys")
    a.add_argument("device")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_list)
    a = actions.add_parser("add", help="trust a release key (its .pub.pem), or with --operator allow an operator key")
    a.add_argument("device")
    a.add_argument("key", type=Path, metavar="PUB.pem")
    a.add_argument("--operator", action="store_true", help=_OPERATOR_HELP)
    a.add_argument("--yes", action="store_true")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_add)
    a = actions.add_parser("remove", help="stop trusting a release key (or with --operator an operator key)")
    a.add_argument("device")
    a.add_argument("fingerprint", metavar="SHA256:...")
    a.add_argument("--operator", action="store_true", help=_OPERATOR_HELP)
    a.add_argument("--yes", action="store_true")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_remove)


def _rows(keys: list[dict]) -> list[list[str]]:
    return [[k["fingerprint"], (k["hint"] or "-")[:16] + "…", k["file"]] for k in keys]


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.modelstore import list_anchors

    with open_device(args.device, home) as session:
        doc = list_anchors(session)
    if args.json:
        emit_json(doc)
        return 0
    if doc["release_keys"]:
        print(table(["FINGERPRINT", "MODEL_SIGNING HINT", "FILE"], _rows(doc["release_keys"])))
    else:
        print(f"{args.device} trusts no release key: it refuses every release. "
              f"`fieldkit anchors add {args.device} KEY.pub.pem` adds one")
    print()
    if doc["operator_keys"]:
        print("operator keys (may change the device over serial):")
        print(table(["FINGERPRINT", "HINT", "FILE"], _rows(doc["operator_keys"])))
    else:
        print(f"{args.device} has no operator key: over serial it refuses every change. "
              f"`fieldkit init --show-public-key > op.pub.pem; fieldkit anchors add {args.device} op.pub.pem "
              f"--operator` (over SSH) adds yours")
    return 0


def cmd_add(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.modelstore import add_anchor, read_public_key

    kind = "operator" if args.operator else "release"
    pem, fp = read_public_key(args.key)
    with open_device(args.device, home) as session:
        question = (f"allow operator key {fp} to change {args.device} over serial?" if args.operator
                    else f"trust release key {fp} on {args.device}?")
        if not confirm(question, yes=args.yes):
            return 130
        doc = add_anchor(session, pem, fp, kind)
    if args.json:
        emit_json(doc)
    else:
        what = "operator key" if args.operator else "release key"
        print(f"{'added' if doc['added'] else 'already there'}: {what} {doc['fingerprint']} ({doc['file']}) "
              f"on {args.device}")
    return 0


def cmd_remove(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.modelstore import remove_anchor

    kind = "operator" if args.operator else "release"
    with open_device(args.device, home) as session:
        question = (f"remove operator key {args.fingerprint} from {args.device}?" if args.operator
                    else f"stop trusting release key {args.fingerprint} on {args.device}?")
        if not confirm(question, yes=args.yes):
            return 130
        doc = remove_anchor(session, args.fingerprint, kind)
    if args.json:
        emit_json(doc)
    else:
        print(f"removed {', '.join(doc['removed'])} from {args.device}")
    return 0
