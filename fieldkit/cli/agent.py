"""``fieldkit agent bundle --out DIR``: the device agent, its systemd units and an offline ``install.sh``
(no pip, no network on the device; see :mod:`fieldkit.agentbundle`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.locations import Home


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("agent", help="the device agent: an offline install bundle for devices")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("bundle", help="write the agent zipapp, systemd units and install.sh for a device",
                           description="Write what a device needs to serve fieldkit on its serial port with no "
                                       "network and no pip: the agent zipapp, the systemd units, an install.sh "
                                       "(POSIX sh, the device's own Python >= 3.9) and SHA256SUMS.")
    a.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="a new or empty directory (a previous bundle there is replaced)")
    a.add_argument("--release-key", type=Path, action="append", default=[], metavar="PUB.pem",
                   help="a release key the device trusts (etc/fieldkit/trust); repeatable")
    a.add_argument("--operator-key", type=Path, action="append", default=[], metavar="PUB.pem",
                   help="an operator key allowed to change the device over serial (etc/fieldkit/operators); repeatable")
    a.add_argument("--inference-service", default="inference.service", metavar="UNIT",
                   help="the unit boot-time recovery runs before (default: inference.service)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_bundle)


def cmd_bundle(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.agentbundle import build_agent_bundle

    bundle = build_agent_bundle(args.out, release_keys=args.release_key, operator_keys=args.operator_key,
                                inference_service=args.inference_service)
    if args.json:
        emit_json(bundle.as_dict())
        return 0
    print(f"device bundle written to {bundle.out} ({bundle.size / 1e3:.0f} kB, agent sha256 {bundle.agent_sha256[:16]})")
    for name, size in bundle.files.items():
        print(f"  {name:44} {size:>9,d} B")
    for k in bundle.keys:
        print(f"  {'release' if k.kind == 'trust' else 'operator'} key {k.fingerprint}")
    print(f"copy {bundle.out} to the device, then there: sudo sh install.sh --serial-port ttyS0")
    return 0
