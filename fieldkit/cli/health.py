"""``fieldkit health``: devices against their profiles, once or every few seconds."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.textfmt import human_bytes, human_duration, status_text, table, use_color


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("health", help="health of one or more devices against their profiles")
    s.add_argument("targets", nargs="*", metavar="TARGET", help="inventory name or target (ssh://, serial://, local:)")
    s.add_argument("--all", action="store_true", help="every device in the inventory")
    s.add_argument("--profile", help="judge against this profile instead of the device's")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS until Ctrl-C")
    s.add_argument("--timeout", type=float, default=15.0, help="connect/operation timeout in seconds")
    s.set_defaults(handler=cmd_health)


def _health_targets(args: argparse.Namespace, home: Home) -> list[str]:
    from fieldkit.inventory import load_inventory

    targets = list(args.targets)
    if args.all:
        inventory = load_inventory(home)
        if not inventory and not targets:
            raise ConfigError(f"--all: the inventory ({home.inventory}) is empty: there is no device to check",
                              hint="add one with `fieldkit devices add NAME TARGET` (e.g. ssh://pi@10.0.0.7 or "
                                   "serial:///dev/ttyUSB0), or try simulated devices with `fieldkit demo`")
        targets += [d.name for d in inventory if d.name not in targets]
    if not targets:
        raise ConfigError("no device given: name a device or target, or use --all",
                          hint="`fieldkit devices list` shows the inventory")
    return targets


def cmd_health(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.health import check_many, worst

    targets = _health_targets(args, home)
    from fieldkit.devices import require_identity, resolve

    require_identity(home)  # no operator identity: refuse before touching any device
    for spec in args.targets:  # a mistyped target or profile is a usage error, before any device is touched
        resolve(spec, home, args.profile)
    if args.profile:
        from fieldkit.profiles import get_profile
        get_profile(args.profile, home)
    watch = None
    if args.watch:  # one session per device while it runs: the journal gets each change, not each sample
        from fieldkit.fleetwatch import FleetWatch

        watch = FleetWatch(home, interval=args.watch, timeout=args.timeout, profile=args.profile)
        watch.track(targets)
        watch.start(autopoll=False)  # notices dead links and answers `fieldkit devices release`
    try:
        while True:
            reports = watch.poll_round() if watch else check_many(targets, home, timeout=args.timeout,
                                                                  profile=args.profile)
            status = worst([r.status for r in reports])
            if args.json:
                if len(reports) == 1:
                    doc = reports[0].to_json()
                else:
                    doc = {"status": status, "devices": [r.to_json() for r in reports]}
                print(json.dumps(doc, default=str, indent=None if args.watch else 2), flush=True)
                for r in reports:
                    if r.error:
                        print(f"fieldkit: {r.device}: {r.error}", file=sys.stderr)
            else:
                if args.watch:
                    print("\x1b[2J\x1b[H" if use_color() else "", end="")
                    print(time.strftime("%H:%M:%S"), f"every {args.watch:g} s, Ctrl-C to stop")
                print(render_health(reports), flush=True)
            code = max((r.exit_code for r in reports), default=0)
            if not args.watch:
                return 3 if any(r.status == "unreachable" for r in reports) else code
            time.sleep(args.watch)
    finally:
        if watch is not None:
            watch.close()


def render_health(reports: list[Any]) -> str:
    from fieldkit.hardware import describe
    from fieldkit.health import identity_of

    color = use_color()
    out = []
    rows = []
    for r in reports:
        if r.error:
            rows.append([r.device, status_text(r.status, color), "-", "-", "-", "-", "-", "-", r.target])
            continue
        raw = r.raw
        cpu = raw.get("cpu") or {}
        mem = raw.get("memory") or {}
        temps = raw.get("temperatures") or []
        hottest = max((z["temp_c"] for z in temps), default=None)
        models = next((d for d in raw.get("disks") or [] if d.get("label") == "models"), {})
        rows.append([
            r.device, status_text(r.status, color),
            "-" if cpu.get("percent") is None else f"{cpu['percent']:.0f} %",
            "-" if mem.get("used_percent") is None else f"{mem['used_percent']:.0f} %",
            "-" if hottest is None else f"{hottest:.0f} °C",
            "-" if models.get("free") is None else human_bytes(models["free"]),
            human_duration(raw.get("uptime_s")),
            "-" if r.clock_offset_s is None else f"{r.clock_offset_s:+.2f} s",
            r.target,
        ])
    out.append(table(["DEVICE", "STATUS", "CPU", "MEM", "TEMP", "MODELS FREE", "UPTIME", "CLOCK", "TARGET"], rows))
    for r in reports:
        if r.error:
            out.append(f"\n{r.device}: {r.error}")
            continue
        raw = r.raw
        rt = raw.get("runtime") or {}
        agent = raw.get("agent") or {}
        out.append(f"\n{r.device} ({r.profile}) — {raw.get('os')}, {raw.get('machine')}, "
                   f"Python {rt.get('python')}, onnxruntime {rt.get('onnxruntime') or 'not installed'}, "
                   f"agent {agent.get('version')}")
        ident = identity_of(raw)
        if ident is not None:
            out.append(f"  hardware: {describe(ident)}")
        shown = r.checks if len(reports) == 1 else [c for c in r.checks if c.status in ("warn", "crit")]
        if shown:
            out.append(table(["CHECK", "STATUS", "DETAIL"],
                             [[c.name, status_text(c.status, color), c.message] for c in shown], indent="  "))
        else:
            out.append("  all checks ok")
    return "\n".join(out)
