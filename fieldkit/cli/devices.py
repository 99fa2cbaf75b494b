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
    a.add_argument("--profile", default=None,
                   help="the device profile; without it fieldkit connects (for up to --identify-seconds) and "
                        "picks the bundled profile that fits the hardware, else generic-linux")
    a.add_argument("--identify-seconds", type=float, default=5.0, metavar="N",
                   help="how long to try reaching the device to identify it (default 5; 0: do not try)")
    a.add_argument("--replace", action="store_true")
    a.add_argument("--group", action="append", default=[], metavar="GROUP", dest="groups",
                   help="put the device in GROUP (repeatable), e.g. --group line3")
    a.set_defaults(handler=cmd_add)
    a = actions.add_parser("remove", help="remove a device")
    a.add_argument("name")
    a.set_defaults(handler=cmd_remove)
    a = actions.add_parser("release", help="ask the fieldkit holding a device's serial port (the TUI, "
                                           "health --watch) to let go of its idle session")
    a.add_argument("name")
    a.add_argument("--wait", type=float, default=10.0, metavar="S", help="seconds to wait for an answer (default 10)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_release)
    a = actions.add_parser(
        "scan", help="find devices on serial ports and by mDNS (exit 1 when nothing is found)",
        description="Serial: the ports pyserial lists plus --ports, probed at once with the agent's handshake "
                    "only (no DTR/RTS raised, busy ports left alone); network: an mDNS browse for "
                    "_ssh._tcp and _workstation._tcp (no address sweeps). Both unless one is chosen.")
    a.add_argument("--serial", action="store_true", help="scan serial ports (only)")
    a.add_argument("--network", action="store_true", help="browse mDNS (only)")
    a.add_argument("--ports", action="append", default=[], metavar="GLOB",
                   help="also probe paths matching GLOB (repeatable), e.g. --ports '/dev/ttyAMA*'")
    a.add_argument("--seconds", type=float, default=None, metavar="N",
                   help="how long to listen for mDNS answers (default 3)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_scan)


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

    from fieldkit.profiles import DEFAULT_PROFILE

    # Added first (name, target, groups and duplicates checked before anything touches the network),
    # then, without --profile, the hardware decides the profile.
    dev = inventory.add_device(home, args.name, args.target, profile=args.profile or DEFAULT_PROFILE,
                               replace=args.replace, groups=args.groups)
    warning = inventory.target_warning(dev.target)  # said first, before any attempt to reach it
    if warning:
        import sys

        print(f"fieldkit: warning: {dev.name}: {warning}", file=sys.stderr, flush=True)
    why = None
    if args.profile is None:
        profile, why = _profile_for_hardware(home, dev, args.identify_seconds)
        if profile != dev.profile:
            dev = inventory.add_device(home, dev.name, dev.target, profile=profile, replace=True, notes=dev.notes,
                                       groups=dev.groups)
    print(f"added {dev.name} -> {dev.target} ({dev.profile})"
          + (f", groups {', '.join(dev.groups)}" if dev.groups else ""))
    if why:
        print(why)
    return 0


def _profile_for_hardware(home: Home, dev: Any, seconds: float) -> tuple[str, str]:
    """(profile, the line that says which and why) from the device's identity, or generic-linux
    with why it could not be asked; connecting is bounded by ``seconds``."""
    from fieldkit.errors import FieldkitError
    from fieldkit.hardware import identify, suggest_profile
    from fieldkit.profiles import DEFAULT_PROFILE, list_profiles

    later = (f"set one later: fieldkit devices add {dev.name} {dev.target} --profile PROFILE --replace "
             f"(`fieldkit profiles` lists them)")
    if seconds <= 0:
        return DEFAULT_PROFILE, f"profile {DEFAULT_PROFILE}: not identified (--identify-seconds 0); {later}"
    try:
        ident = identify(home, dev.name, dev.target, timeout=max(0.5, min(seconds, 60.0)))
    except FieldkitError as exc:
        reason = exc.message.splitlines()[0] if exc.message else type(exc).__name__
        return DEFAULT_PROFILE, f"profile {DEFAULT_PROFILE}: could not identify the hardware ({reason}); {later}"
    if ident is None:
        return DEFAULT_PROFILE, (f"profile {DEFAULT_PROFILE}: the agent on {dev.name} does not report its hardware "
                                 f"(an older agent); {later}")
    profile, reason = suggest_profile(ident, [p.name for p in list_profiles(home) if p.error is None])
    return profile, f"profile {profile}, chosen for the hardware: {reason}"


def cmd_remove(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import inventory

    inventory.remove_device(home, args.name)
    print(f"removed {args.name}")
    return 0


def cmd_release(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.fleetwatch import request_release

    doc = request_release(home, args.name, wait=max(0.5, args.wait))
    if args.json:
        emit_json(doc)
    elif doc["status"] == "free":
        print(f"no fieldkit holds {doc['port']}: nothing to release")
    else:
        h = doc["holder"]
        print(f"pid {h['pid']} ({h['program']}) let go of {doc['port']}" + (f"; {doc['note']}" if doc["note"] else ""))
    return 0


def cmd_scan(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.errors import ConfigError
    from fieldkit.scan import DEFAULT_SECONDS, scan

    seconds = DEFAULT_SECONDS if args.seconds is None else args.seconds
    if not 0 < seconds <= 60:
        raise ConfigError(f"--seconds {seconds:g} is out of range", hint="give a number of seconds from 0.1 to 60")
    both = not args.serial and not args.network
    report = scan(home, serial=both or args.serial, network=both or args.network, globs=args.ports, seconds=seconds)
    if args.json:
        emit_json(report.as_json())
    else:
        _print_scan(report)
    return 0 if report.found else 1


def _print_scan(report: Any) -> None:
    serial, network = report.tried.get("serial"), report.tried.get("network")
    if serial is not None:
        print(f"Serial: {len(serial['ports'])} port(s), bauds {' '.join(map(str, serial['bauds']))}, "
              f"{serial['seconds']:.1f} s (bound {serial['bound_s']:.1f} s)")
        if report.serial:
            rows = [[f.device, f.status.replace("_", " "), f.baud or "-", f.agent_version or "-", f.hostname or "-",
                     f.hardware or "-", f.suggested_profile or "-", f.in_inventory or "-",
                     " ".join(x for x in (f.description, f.vid_pid and f"({f.vid_pid})") if x) or "-"]
                    for f in report.serial]
            print(table(["PORT", "STATUS", "BAUD", "AGENT", "HOSTNAME", "HARDWARE", "PROFILE", "INVENTORY",
                         "DESCRIPTION"], rows, indent="  "))
        for f in report.serial:
            if f.agent and f.target and not f.in_inventory:
                profile = f" --profile {f.suggested_profile}" if f.suggested_profile else ""
                print(f"  add it: fieldkit devices add NAME {f.target}{profile}")
            if f.note:
                print(f"  {f.device}: {f.note}")
        for s in serial["skipped"]:
            print(f"  skipped {s['device']}: {s['reason']}")
        for pattern, matched in serial["globs"].items():
            if not matched:
                print(f"  --ports {pattern} matched nothing")
    if network is not None:
        if network.get("unavailable"):
            print(f"Network: multicast unavailable: {network['unavailable']}")
        else:
            where = ", ".join(network.get("interfaces") or []) or "the default interfaces"
            print(f"Network: mDNS {', '.join(network.get('services', []))} on {where} for {network['seconds']:g} s, "
                  f"{network.get('answers', 0)} answer(s)")
        if report.network:
            rows = [[f.name, f.service, ", ".join(f.addresses) or "-", f.port or "-", f.host or "-",
                     f.in_inventory or "-", "yes" if f.known_host else "no"] for f in report.network]
            print(table(["NAME", "SERVICE", "ADDRESSES", "PORT", "HOST", "INVENTORY", "KNOWN HOST"], rows,
                        indent="  "))
    if not report.found:
        print("Nothing found. Likely causes:")
        for cause in report.causes():
            print(f"  - {cause}")
