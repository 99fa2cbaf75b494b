"""``fieldkit devices list|add|remove``: the inventory (``fieldkit devices`` alone lists).

``devices add NAME TARGET --group line3 [--group hall-b]`` puts a device in groups; commands that
take several devices select a group with ``--group G``."""

from __future__ import annotations

import argparse
from typing import Any

from fieldkit.cli.common import emit_json, model_dict
from fieldkit.locations import Home
from fieldkit.textfmt import table


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("devices", help="the inventory of devices")
    s.set_defaults(handler=cmd_list, json=False)
    actions = s.add_subparsers(dest="action", metavar="ACTION")
    a = actions.add_parser("list", help="list devices (and ~/.ssh/config hosts not yet added)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_list)
    a = actions.add_parser("add", help="add a device")
    a.add_argument("name")
    a.add_argument("target")
    a.add_argument("--profile", default="generic-linux")
    a.add_argument("--replace", action="store_true")
    a.add_argument("--group", action="append", default=[], metavar="GROUP", dest="groups",
                   help="put the device in GROUP (repeatable), e.g. --group line3")
    a.set_defaults(handler=cmd_add)
    a = actions.add_parser("remove", help="remove a device")
    a.add_argument("name")
    a.set_defaults(handler=cmd_remove)


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import inventory

    devices = inventory.load_inventory(home)
    names = {d.name for d in devices}
    candidates = [h for h in inventory.ssh_config_candidates() if h not in names]
    if args.json:
        emit_json({"devices": [model_dict(d) for d in devices], "ssh_config_candidates": candidates})
        return 0
    if devices:
        print(table(["NAME", "TARGET", "PROFILE", "GROUPS"],
                    [[d.name, d.target, d.profile, ", ".join(d.groups) or "-"] for d in devices]))
    else:
        print(f"no devices in {home.inventory.parent}; add one with `fieldkit devices add NAME TARGET`")
    if candidates:
        print("\nhosts in ~/.ssh/config you can add: " + ", ".join(candidates))
    return 0


def cmd_add(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import inventory

    dev = inventory.add_device(home, args.name, args.target, profile=args.profile, replace=args.replace,
                               groups=args.groups)
    print(f"added {dev.name} -> {dev.target} ({dev.profile})"
          + (f", groups {', '.join(dev.groups)}" if dev.groups else ""))
    return 0


def cmd_remove(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import inventory

    inventory.remove_device(home, args.name)
    print(f"removed {args.name}")
    return 0
