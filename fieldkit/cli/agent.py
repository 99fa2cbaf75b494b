"""``fieldkit agent bundle --out DIR``: the device agent, its systemd units and an offline ``install.sh``
(no pip, no network on the device; see :mod:`fieldkit.agentbundle`). ``fieldkit agent upgrade DEVICE``:
replace the agent installed there with this fieldkit's, over the serial line it serves
(:mod:`fieldkit.agentupgrade`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.locations import Home


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("agent", help="the device agent: an offline install bundle, upgrading an installed one")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("bundle", help="write the agent zipapp, systemd units and install.sh for a device",
                           description="Write what a device needs to serve fieldkit on its serial port with no "
                                       "network and no pip: the agent zipapp, the systemd units, an install.sh "
                                       "(POSIX sh, the device's own Python >= 3.6) and SHA256SUMS.")
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
    u = actions.add_parser("upgrade", help="replace the agent installed on a device with this fieldkit's",
                           description="Replace the agent installed on DEVICE (by the bundle's install.sh; served on "
                                       "its serial port) with the agent this fieldkit carries, over an authenticated "
                                       "session: upload, checked by the device, tried under the old agent, confirmed. "
                                       "If the new agent does not come up, the device keeps the old one (exit 4).")
    u.add_argument("device", metavar="DEVICE", help="an inventory name or serial:///dev/ttyUSB0?baud=115200")
    u.add_argument("--downgrade", action="store_true", help="also when the device's agent is newer than this one")
    u.add_argument("--trial", type=float, default=90.0, metavar="SECONDS",
                   help="how long the device waits for the laptop to confirm the new agent before it goes back "
                        "to the old one (5..900, default 90)")
    u.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    u.add_argument("--json", action="store_true")
    u.set_defaults(handler=cmd_upgrade)


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


def cmd_upgrade(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.agentupgrade import upgrade_agent
    from fieldkit.cli.common import confirm
    from fieldkit.cli.install import TransferProgress
    from fieldkit.errors import ConfigError

    if not 5.0 <= args.trial <= 900.0:  # also refuses NaN
        raise ConfigError(f"--trial {args.trial} is outside 5..900 seconds")
    result = upgrade_agent(home, args.device, trial_s=args.trial, downgrade=args.downgrade,
                           confirm=lambda question: confirm(question, yes=args.yes),
                           progress=TransferProgress(quiet=args.json))
    if args.json:
        emit_json(result.as_dict())
    else:
        print(f"{result.result}: {result.message}")
    if result.exit_code:
        print(f"fieldkit: {result.message}", file=sys.stderr)
    return result.exit_code
