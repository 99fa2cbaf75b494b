"""``fieldkit trust``: check and pin a device's SSH host key."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.errors import ConfigError
from fieldkit.locations import Home


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("trust", help="check and pin a device's SSH host key")
    s.add_argument("target")
    s.add_argument("--fingerprint", metavar="SHA256:...", help="pin only if the device presents this key")
    s.add_argument("--replace", action="store_true", help="replace a different key on file (device reflashed)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_trust)


def cmd_trust(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.devices import trust_device

    def confirm(host: str, key_type: str, fp: str) -> bool:
        if not sys.stdin.isatty():  # nobody to ask: a usage error, not a decision (and not Ctrl-C)
            raise ConfigError(f"{host} presents a {key_type} host key {fp}, and there is no terminal to "
                              "confirm it on; nothing was pinned",
                              hint=f"compare the fingerprint with the device's console, then run "
                                   f"`fieldkit trust {args.target} --fingerprint {fp}`")
        print(f"{host} presents a {key_type} host key\n  fingerprint {fp}")
        answer = input("Compare it with the device's label or console. Trust it? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    result = trust_device(home, args.target, fingerprint=args.fingerprint, confirm=confirm, replace=args.replace)
    doc = result.as_dict()
    if args.json:
        emit_json(doc)
    else:
        print(f"{doc['status']}: {doc['host']} {doc['key_type']} {doc['fingerprint']} in {doc['path']}")
        for note in doc.get("notes") or []:
            print(f"  note: {note}")
    return 0
