"""``fieldkit manifest create FILE.toml --key KEY.pem --out FILE.json`` (validate and sign a site
manifest) and ``fieldkit manifest verify FILE.json --key PUB.pem`` (exit 0 when the signature holds, 1
otherwise). The format is in :mod:`fieldkit.manifest`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.locations import Home
from fieldkit.textfmt import table


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("manifest", help="the signed site manifest: what each device, group or profile "
                              "should run")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("create", help="validate a TOML source and sign it with a release key")
    a.add_argument("source", type=Path, metavar="FILE.toml")
    a.add_argument("--key", type=Path, required=True, metavar="KEY.pem", help="the release key (private)")
    a.add_argument("--out", type=Path, required=True, metavar="FILE.json", help="where to write the signed manifest")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_create)
    a = actions.add_parser("verify", help="check a signed manifest against a release public key (exit 0/1)")
    a.add_argument("manifest", type=Path, metavar="FILE.json")
    a.add_argument("--key", type=Path, action="append", required=True, metavar="PUB.pem",
                   help="release public key; repeat for several (key rotation)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_verify)


def cmd_create(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.manifest import create_manifest, verify_manifest
    from fieldkit.signing import load_private_key

    create_manifest(args.source, args.key, args.out)
    manifest = verify_manifest(args.out, [load_private_key(args.key, what="release key")])  # read back what was written
    if args.json:
        emit_json({"manifest": manifest.to_json(), "entries": [e.to_json() for e in manifest.entries]})
    else:
        n = len(manifest.entries)
        print(f"signed {n} {'entry' if n == 1 else 'entries'} of {args.source} with {manifest.signer} -> {args.out}")
    return 0


def cmd_verify(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.manifest import verify_manifest

    manifest = verify_manifest(args.manifest, args.key)  # ManifestError: exit 1
    if args.json:
        emit_json({"ok": True, "manifest": manifest.to_json(), "entries": [e.to_json() for e in manifest.entries]})
        return 0
    print(f"{args.manifest}: signature ok, signed by {manifest.signer}, created {manifest.created}")
    if manifest.entries:
        print(table(["FOR", "MODEL", "VERSION", "DIGEST", "MIN AGENT"],
                    [[e.selector, e.model, e.version, (e.digest or "-")[:16], e.min_agent or "-"]
                     for e in manifest.entries], indent="  "))
    return 0
