"""``fieldkit versions [DEVICE... | --all | --group G] --manifest FILE.json --key PUB.pem [--json]``:
what runs where against the signed site manifest.

The manifest is verified first (exit 1 when its signature does not hold). Exit codes: 0 all ok;
1 any drift, missing, unexpected or modified; 3 when the only problem is unreachable devices
(4 when a device failed the check without any of those)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.textfmt import table, use_color

_COLORS = {"ok": "32", "drift": "31;1", "modified": "31;1", "missing": "33", "unexpected": "33",
           "unreachable": "35;1"}


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("versions", help="installed model versions against the signed site manifest")
    s.add_argument("devices", nargs="*", metavar="DEVICE", help="inventory name or target")
    s.add_argument("--all", action="store_true", help="every device in the inventory")
    s.add_argument("--group", action="append", default=[], metavar="GROUP", dest="groups",
                   help="the devices of an inventory group (repeatable)")
    s.add_argument("--manifest", type=Path, required=True, metavar="FILE.json", help="the signed site manifest")
    s.add_argument("--key", type=Path, action="append", required=True, metavar="PUB.pem",
                   help="release public key the manifest must be signed with; repeat for several")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument("--timeout", type=float, default=15.0, help="connect/operation timeout in seconds")
    s.add_argument("--parallel", type=int, default=8, metavar="N", help="devices checked at once (default 8)")
    s.set_defaults(handler=cmd_versions)


def select_devices(home: Home, names: list[str], all_: bool, groups: list[str]) -> list[str]:
    """DEVICE..., --all and --group G together, each device once, in the order given."""
    from fieldkit.inventory import devices_in_group, load_inventory

    out = list(dict.fromkeys(names))
    for g in groups:
        out += [d.name for d in devices_in_group(home, g) if d.name not in out]
    if all_:
        out += [d.name for d in load_inventory(home) if d.name not in out]
    if not out:
        raise ConfigError("no device given: name devices, or use --all or --group G",
                          hint="`fieldkit devices list` shows the inventory and its groups")
    return out


def cmd_versions(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.devices import require_identity, resolve
    from fieldkit.manifest import verify_manifest
    from fieldkit.versions import check_versions, exit_code

    if args.parallel < 1:
        raise ConfigError(f"--parallel {args.parallel}: expected 1 or more")
    manifest = verify_manifest(args.manifest, args.key)  # refused (exit 1) before any device is touched
    specs = select_devices(home, args.devices, args.all, args.groups)
    require_identity(home)
    for spec in args.devices:  # a mistyped name is a usage error, before any device is touched
        resolve(spec, home)
    results = check_versions(specs, home, manifest, max_workers=args.parallel, timeout=args.timeout)
    if args.json:
        emit_json({"manifest": manifest.to_json(), "devices": [r.to_json() for r in results]})
        for r in results:
            if r.error:
                print(f"fieldkit: {r.device}: {r.error}", file=sys.stderr)
    else:
        print(render(results, manifest))
    return exit_code(results)


def _status(status: str, color: bool) -> str:
    return f"\x1b[{_COLORS[status]}m{status}\x1b[0m" if color and status in _COLORS else status


def render(results: list[Any], manifest: Any) -> str:
    color = use_color()
    rows = []
    for r in results:
        if not r.models:
            rows.append([r.device, _status(r.status, color), "-", "-", "-", "-",
                         r.error or "no models expected or installed"])
        for i, m in enumerate(r.models):
            rows.append([r.device if i == 0 else "", _status(r.status, color) if i == 0 else "", m.name,
                         m.expected or "-", m.active or "-", _status(m.status, color),
                         m.message if m.status != "ok" else ""])
    out = [f"manifest {manifest.path}: signed by {manifest.signer}, created {manifest.created}",
           table(["DEVICE", "STATUS", "MODEL", "EXPECTED", "ACTIVE", "MODEL STATUS", "DETAIL"], rows)]
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    out.append(f"\n{len(results)} device(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for r in results:
        if r.error:
            out.append(f"{r.device}: {r.error}")
    return "\n".join(out)
