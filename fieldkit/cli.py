"""``fieldkit`` command line. Same operations as the TUI; ``--json`` for scripts.

Exit codes: 0 ok · 1 a check or verification failed · 2 usage or configuration error ·
3 connection, authentication or host-key error · 4 the device refused or failed · 130 cancelled.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from fieldkit import __version__
from fieldkit.errors import ConfigError, FieldkitError
from fieldkit.locations import Home
from fieldkit.textfmt import human_bytes, human_duration, status_text, table, use_color


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with a short hint
        self.print_usage(sys.stderr)
        sys.stderr.write(f"fieldkit: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fieldkit", description="Field toolkit for edge ML devices (SSH or serial).")
    p.add_argument("--version", action="version", version=f"fieldkit {__version__}")
    p.add_argument("--home", type=Path, help="state directory (default: $FIELDKIT_HOME or the user data dir)")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("demo", help="start simulated devices (2 SSH, 1 serial) and open the TUI on them")
    s.add_argument("--keep-home", action="store_true", help="use FIELDKIT_HOME instead of a throw-away demo home")
    s.add_argument("--text", action="store_true", help="print the devices' health instead of opening the TUI")

    s = sub.add_parser("sim", help="run simulated devices (SSH and serial) until Ctrl-C")
    s.add_argument("--ssh", type=int, default=1, metavar="N", help="SSH devices (default 1)")
    s.add_argument("--serial", type=int, default=1, metavar="N", help="serial devices (default 1)")
    s.add_argument("--state", type=Path, metavar="FILE", help="write the devices as JSON to FILE")
    s.add_argument("--profile", default="generic-linux", help="profile given to the simulated devices")
    s.add_argument("--prefix", default="sim", help="device name prefix (default: sim)")

    s = sub.add_parser("health", help="health of one or more devices against their profiles")
    s.add_argument("targets", nargs="*", metavar="TARGET", help="inventory name or target (ssh://, serial://, local:)")
    s.add_argument("--all", action="store_true", help="every device in the inventory")
    s.add_argument("--profile", help="judge against this profile instead of the device's")
    s.add_argument("--json", action="store_true", help="print one JSON document")
    s.add_argument("--watch", type=float, metavar="SECONDS", help="repeat every SECONDS until Ctrl-C")
    s.add_argument("--timeout", type=float, default=15.0, help="connect/operation timeout in seconds")

    s = sub.add_parser("trust", help="check and pin a device's SSH host key")
    s.add_argument("target")
    s.add_argument("--fingerprint", metavar="SHA256:...", help="pin only if the device presents this key")
    s.add_argument("--replace", action="store_true", help="replace a different key on file (device reflashed)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("devices", help="the inventory of devices")
    dsub = s.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    d = dsub.add_parser("list", help="list devices (and ~/.ssh/config hosts not yet added)")
    d.add_argument("--json", action="store_true")
    d = dsub.add_parser("add", help="add a device")
    d.add_argument("name")
    d.add_argument("target")
    d.add_argument("--profile", default="generic-linux")
    d.add_argument("--replace", action="store_true")
    d = dsub.add_parser("remove", help="remove a device")
    d.add_argument("name")

    s = sub.add_parser("profiles", help="device profiles (thresholds, budgets, paths)")
    psub = s.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    d = psub.add_parser("list")
    d.add_argument("--json", action="store_true")
    d = psub.add_parser("show")
    d.add_argument("name")
    d.add_argument("--json", action="store_true")
    d = psub.add_parser("check", help="validate a profile file")
    d.add_argument("file", type=Path)

    from fieldkit import cli_bench
    cli_bench.register(sub)
    from fieldkit import cli_audit
    cli_audit.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    home = Home(args.home) if args.home else Home.current()
    if args.cmd is None:
        return run_tui(home)
    if args.cmd == "bench":
        from fieldkit import cli_bench
        handler = cli_bench.cmd_bench
    else:
        handler = getattr(args, "handler", None) or globals()[f"cmd_{args.cmd}"]
    try:
        return int(handler(args, home) or 0)
    except FieldkitError as exc:
        print(f"fieldkit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fieldkit: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _emit_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, default=str))


# ---- health ------------------------------------------------------------------------------------
def _health_targets(args: argparse.Namespace, home: Home) -> list[str]:
    from fieldkit.inventory import load_inventory

    targets = list(args.targets)
    if args.all:
        targets += [d.name for d in load_inventory(home) if d.name not in targets]
    if not targets:
        raise ConfigError("no device given: name a device or target, or use --all",
                          hint="`fieldkit devices list` shows the inventory")
    return targets


def cmd_health(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.health import check_many, worst

    targets = _health_targets(args, home)
    from fieldkit.link.connect import journal_for

    journal_for(home)  # no operator identity: refuse before touching any device
    if args.profile:
        from fieldkit.profiles import get_profile
        get_profile(args.profile, home)  # fail early on a bad name
    while True:
        reports = check_many(targets, home, timeout=args.timeout, profile=args.profile)
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


def render_health(reports: list[Any]) -> str:
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
        shown = r.checks if len(reports) == 1 else [c for c in r.checks if c.status in ("warn", "crit")]
        if shown:
            out.append(table(["CHECK", "STATUS", "DETAIL"],
                             [[c.name, status_text(c.status, color), c.message] for c in shown], indent="  "))
        else:
            out.append("  all checks ok")
    return "\n".join(out)


# ---- simulation / demo ---------------------------------------------------------------------------
def cmd_sim(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.sim import Simulation, wait_forever

    with Simulation(home, ssh=args.ssh, serial=args.serial, prefix=args.prefix, profile=args.profile) as sim:
        if args.state:
            sim.write_state(args.state)
        print(table(["DEVICE", "TRANSPORT", "TARGET", "HOST KEY"],
                    [[d.name, d.transport, d.target, d.host_key_fingerprint or "-"] for d in sim.devices]))
        print(f"\n{len(sim.devices)} simulated device(s) registered in {home.root}. "
              "Try `fieldkit health --all` in another terminal. Ctrl-C stops them.", flush=True)
        wait_forever()
    print("simulated devices stopped and removed from the inventory")
    return 0


def run_tui(home: Home) -> int:
    """Open the Textual UI (the only place the core hands over to the UI layer)."""
    try:
        import importlib

        tui = importlib.import_module("screens.app")
    except ImportError as exc:
        raise ConfigError(f"the TUI is not available ({exc})", hint="pip install fieldkit with its dependencies")
    return int(tui.run(home) or 0)


def cmd_demo(args: argparse.Namespace, home: Home) -> int:
    import tempfile

    from fieldkit.health import check_many
    from fieldkit.sim import Simulation

    with tempfile.TemporaryDirectory(prefix="fieldkit-demo-") as tmp:
        demo_home = home if args.keep_home else Home(Path(tmp) / "home")
        from fieldkit.journal import IdentityMissing, load_identity, setup_operator

        try:
            load_identity(demo_home)
        except IdentityMissing:
            setup_operator(demo_home.ensure(), "demo-technician")
        print(f"starting 2 SSH and 1 serial simulated devices (home: {demo_home.root}) ...", flush=True)
        with Simulation(demo_home, ssh=2, serial=1, prefix="demo") as sim:
            if not args.text:
                return run_tui(demo_home)
            reports = check_many([d.name for d in sim.devices], demo_home)
            print(render_health(reports))
    return 3 if any(r.status == "unreachable" for r in reports) else 0


# ---- trust ---------------------------------------------------------------------------------------
def cmd_trust(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.link.connect import trust_device

    def confirm(host: str, key_type: str, fp: str) -> bool:
        print(f"{host} presents a {key_type} host key\n  fingerprint {fp}")
        if not sys.stdin.isatty():
            print("not pinned: no terminal to confirm on; pass --fingerprint to pin without a prompt",
                  file=sys.stderr)
            return False
        answer = input("Compare it with the device's label or console. Trust it? [y/N] ")
        return answer.strip().lower() in ("y", "yes")

    result = trust_device(home, args.target, fingerprint=args.fingerprint, confirm=confirm, replace=args.replace)
    doc = result.as_dict()
    if args.json:
        _emit_json(doc)
    else:
        print(f"{doc['status']}: {doc['host']} {doc['key_type']} {doc['fingerprint']} in {doc['path']}")
        for note in doc.get("notes") or []:
            print(f"  note: {note}")
    return 0


# ---- devices / profiles --------------------------------------------------------------------------
def cmd_devices(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import inventory

    action = args.action or "list"
    if action == "list":
        devices = inventory.load_inventory(home)
        names = {d.name for d in devices}
        candidates = [h for h in inventory.ssh_config_candidates() if h not in names]
        if getattr(args, "json", False):
            _emit_json({"devices": [_model_dict(d) for d in devices], "ssh_config_candidates": candidates})
            return 0
        if devices:
            print(table(["NAME", "TARGET", "PROFILE"], [[d.name, d.target, d.profile] for d in devices]))
        else:
            print(f"no devices in {home.inventory.parent}; add one with `fieldkit devices add NAME TARGET`")
        if candidates:
            print("\nhosts in ~/.ssh/config you can add: " + ", ".join(candidates))
        return 0
    if action == "add":
        dev = inventory.add_device(home, args.name, args.target, profile=args.profile, replace=args.replace)
        print(f"added {dev.name} -> {dev.target} ({dev.profile})")
        return 0
    inventory.remove_device(home, args.name)
    print(f"removed {args.name}")
    return 0


def _model_dict(obj: Any) -> dict:
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    from dataclasses import asdict, is_dataclass
    return asdict(obj) if is_dataclass(obj) else dict(obj)


def cmd_profiles(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import profiles

    action = args.action or "list"
    if action == "list":
        infos = profiles.list_profiles(home)
        if getattr(args, "json", False):
            _emit_json({"profiles": [_model_dict(i) for i in infos]})
        else:
            print(table(["NAME", "SOURCE", "DESCRIPTION"], [[i.name, i.source, i.description] for i in infos]))
        return 0
    if action == "show":
        prof = profiles.get_profile(args.name, home)
        if args.json:
            _emit_json(prof.model_dump(mode="json"))
        else:
            print(render_profile(prof))
        return 0
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


if __name__ == "__main__":
    sys.exit(main())
