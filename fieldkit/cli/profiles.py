"""``fieldkit profiles list|show|check``: device profiles (``fieldkit profiles`` alone lists)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json, model_dict
from fieldkit.locations import Home
from fieldkit.textfmt import table


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("profiles", help="device profiles (thresholds, budgets, paths)")
    s.set_defaults(handler=cmd_list, json=False)
    actions = s.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser("list", help="list the bundled and your own profiles (the default)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_list)
    a = actions.add_parser("show", help="a profile's thresholds, use cases and paths")
    a.add_argument("name")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_show)
    a = actions.add_parser("check", help="validate a profile file")
    a.add_argument("file", type=Path)
    a.set_defaults(handler=cmd_check)


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import profiles

    infos = profiles.list_profiles(home)
    if args.json:
        emit_json({"profiles": [model_dict(i) for i in infos]})
    else:
        print(table(["NAME", "SOURCE", "DESCRIPTION"], [[i.name, i.source, i.description] for i in infos]))
    return 0


def cmd_show(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import profiles

    prof = profiles.get_profile(args.name, home)
    if args.json:
        emit_json(prof.model_dump(mode="json"))
    else:
        print(render_profile(prof))
    return 0


def cmd_check(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import profiles

    prof = profiles.check_profile_file(args.file)
    print(f"{args.file}: ok (profile {prof.name})")
    return 0


def render_profile(prof: Any) -> str:
    lines = [f"{prof.name}: {prof.description}", ""]
    from fieldkit.profiles import THRESHOLD_METRICS

    rows = [[k, getattr(prof.thresholds, k).warn, getattr(prof.thresholds, k).crit] for k in THRESHOLD_METRICS]
    rows += [[f"temperature_c[{zone}]", th.warn, th.crit] for zone, th in prof.thresholds.temperature_zones.items()]
    lines.append(table(["THRESHOLD", "WARN", "CRIT"], rows))
    if prof.use_cases:
        lines.append("")
        lines.append(table(["USE CASE", "BUDGET", "METRIC", "DESCRIPTION"],
                           [[n, f"{u.budget_ms:g} ms", u.metric, u.description] for n, u in prof.use_cases.items()]))
    lines.append("")
    lines.append(f"memory headroom {prof.memory.headroom_mb} MB; models at {prof.paths.models}; "
                 f"transport {prof.transport.default}"
                 + (f"; service {prof.service.unit}" if prof.service and prof.service.unit else ""))
    return "\n".join(lines)
