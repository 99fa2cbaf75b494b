"""``fieldkit anchors list|add|remove DEVICE``: the release keys a device accepts (several: rotation).

Each change shows the key's fingerprint, asks to confirm (``--yes`` for scripts) and is journaled on
the laptop and on the device."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.cli.common import confirm, emit_json, open_device
from fieldkit.locations import Home
from fieldkit.textfmt import table


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("anchors", help="release keys a device trusts (list, add, remove)")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="the release keys the device accepts")
    a.add_argument("device")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_list)
    a = actions.add_parser("add", help="trust a release key (its .pub.pem)")
    a.add_argument("device")
    a.add_argument("key", type=Path, metavar="PUB.pem")
    a.add_argument("--yes", action="store_true")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_add)
    a = actions.add_parser("remove", help="stop trusting a release key")
    a.add_argument("device")
    a.add_argument("fingerprint", metavar="SHA256:...")
    a.add_argument("--yes", action="store_true")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_remove)


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.modelstore import list_anchors

    with open_device(args.device, home) as session:
        doc = list_anchors(session)
    if args.json:
        emit_json(doc)
    elif doc["release_keys"]:
        print(table(["FINGERPRINT", "MODEL_SIGNING HINT", "FILE"],
                    [[k["fingerprint"], (k["hint"] or "-")[:16] + "…", k["file"]] for k in doc["release_keys"]]))
    else:
        print(f"{args.device} trusts no release key: it refuses every release. "
              f"`fieldkit anchors add {args.device} KEY.pub.pem` adds one")
    return 0


def cmd_add(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.modelstore import add_anchor, read_public_key

    pem, fp = read_public_key(args.key)
    with open_device(args.device, home) as session:
        if not confirm(f"trust release key {fp} on {args.device}?", yes=args.yes):
            return 130
        doc = add_anchor(session, pem, fp)
    if args.json:
        emit_json(doc)
    else:
        print(f"{'added' if doc['added'] else 'already trusted'}: {doc['fingerprint']} ({doc['file']}) on {args.device}")
    return 0


def cmd_remove(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.modelstore import remove_anchor

    with open_device(args.device, home) as session:
        if not confirm(f"stop trusting release key {args.fingerprint} on {args.device}?", yes=args.yes):
            return 130
        doc = remove_anchor(session, args.fingerprint)
    if args.json:
        emit_json(doc)
    else:
        print(f"removed {', '.join(doc['removed'])} from {args.device}")
    return 0
