"""``fieldkit init``: create the operator identity (signing key) that signs the journal.

The same key authenticates the operator to devices over a serial line: ``fieldkit init
--show-public-key`` prints its public half (PEM) to provision on a device with ``fieldkit anchors
add DEVICE operator.pub.pem --operator`` or ``fieldkit agent bundle --operator-key``."""

from __future__ import annotations

import argparse
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.locations import Home


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("init", help="create the operator identity that signs the journal")
    s.add_argument("--operator", metavar="NAME", help="your name as it appears in the journal")
    s.add_argument("--show-public-key", action="store_true",
                   help="print the operator's public key (PEM) to provision on devices (serial changes): "
                        "`fieldkit init --show-public-key > operator.pub.pem`")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_init)


def cmd_init(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.errors import ConfigError
    from fieldkit.journal import setup_operator

    if args.show_public_key and not args.operator:
        return show_public_key(args, home)
    if not args.operator:
        raise ConfigError("fieldkit init needs --operator NAME (or --show-public-key to print your public key)")
    doc = setup_operator(home, args.operator)
    if args.show_public_key:
        from fieldkit.journal.identity import load_identity
        doc["public_key_pem"] = load_identity(home).public_key_pem
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
        print("Serial devices: `fieldkit init --show-public-key > operator.pub.pem`, then "
              "`fieldkit anchors add DEVICE operator.pub.pem --operator` over SSH.")
    if args.show_public_key:
        print(doc["public_key_pem"], end="")
    return 0


def show_public_key(args: argparse.Namespace, home: Home) -> int:
    """The operator's public key: PEM on stdout, or ``{"operator", "fingerprint", "public_key_pem"}``."""
    from fieldkit.journal.identity import load_identity

    ident = load_identity(home)
    if args.json:
        emit_json({"operator": ident.name, "fingerprint": ident.fingerprint, "public_key_pem": ident.public_key_pem},
                  ensure_ascii=False)
    else:
        print(ident.public_key_pem, end="")
    return 0
