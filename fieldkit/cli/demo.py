"""``fieldkit demo`` and ``fieldkit sim`` (simulated devices), and opening the TUI."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fieldkit.errors import ConfigError
from fieldkit.locations import Home


def _line_arguments(s: argparse.ArgumentParser, default_baud: int) -> None:
    """The simulated serial cable: what a technician's real one does (see fieldkit.sim.SerialLine)."""
    what = "0: unthrottled" if not default_baud else f"{default_baud}, a console cable's usual rate; 0: unthrottled"
    s.add_argument("--baud", type=int, default=default_baud, metavar="B",
                   help=f"serial line rate: B/10 bytes/s each way, 8N1 (default {what})")
    s.add_argument("--line-errors", type=float, default=0.0, metavar="RATE",
                   help="probability per byte of a fault on the serial line, a third each dropped, flipped "
                        "and inserted (default 0; 1e-5 a long cable, 1e-3 a very noisy one)")
    s.add_argument("--line-seed", type=int, default=None, metavar="N",
                   help="seed the serial line's faults (the same faults every run)")


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("demo", help="start simulated devices (2 SSH, 1 serial) and open the TUI on them")
    s.add_argument("--keep-home", action="store_true", help="use FIELDKIT_HOME instead of a throw-away demo home")
    s.add_argument("--text", action="store_true", help="print the devices' health instead of opening the TUI")
    s.add_argument("--serial", type=int, default=1, metavar="N", help="serial devices (default 1)")
    _line_arguments(s, 115200)
    s.set_defaults(handler=cmd_demo)

    s = subparsers.add_parser("sim", help="run simulated devices (SSH and serial) until Ctrl-C")
    s.add_argument("--ssh", type=int, default=1, metavar="N", help="SSH devices (default 1)")
    s.add_argument("--serial", type=int, default=1, metavar="N", help="serial devices (default 1)")
    s.add_argument("--state", type=Path, metavar="FILE", help="write the devices as JSON to FILE")
    s.add_argument("--profile", default="generic-linux", help="profile given to the simulated devices")
    s.add_argument("--prefix", default="sim", help="device name prefix (default: sim)")
    _line_arguments(s, 0)
    s.set_defaults(handler=cmd_sim)


def _line_text(sim: Any) -> str:
    """The serial cable as a technician reads it: "115200 baud, 1 fault in 1,000 bytes"."""
    line = sim.line
    rate = f"{line.baud} baud" if line.bytes_per_second else "unthrottled"
    if not line.line_errors:
        return f"{rate}, no line errors"
    return f"{rate}, 1 fault in {1 / line.line_errors:,.0f} bytes (dropped, flipped or inserted)"


def cmd_sim(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.sim import Simulation, wait_forever
    from fieldkit.textfmt import table  # not on the TUI's path (`fieldkit` alone imports this module)

    with Simulation(home, ssh=args.ssh, serial=args.serial, prefix=args.prefix, profile=args.profile,
                    baud=args.baud, line_errors=args.line_errors, line_seed=args.line_seed) as sim:
        if args.state:
            sim.write_state(args.state)
        print(table(["DEVICE", "TRANSPORT", "TARGET", "HOST KEY"],
                    [[d.name, d.transport, d.target, d.host_key_fingerprint or "-"] for d in sim.devices]))
        if args.serial:
            print(f"serial line: {_line_text(sim)}")
        print(f"\n{len(sim.devices)} simulated device(s) registered in {home.root}. "
              "Try `fieldkit health --all` in another terminal. Ctrl-C stops them.", flush=True)
        wait_forever()
    print("simulated devices stopped and removed from the inventory")
    return 0


def run_tui(home: Home, manifest: Path | None = None, manifest_key: Path | None = None) -> int:
    """Open the Textual UI (the only place the core hands over to the UI layer). With ``manifest``,
    the signed site manifest is verified first with ``manifest_key`` (or the remembered key): refused
    (ManifestError, exit 1) before any UI opens, else remembered in the home for the next start."""
    if manifest is not None:
        from fieldkit.manifest import verify_manifest
        from fieldkit.versions import remember_manifest, remembered_paths

        if manifest_key is None:
            try:
                remembered = remembered_paths(home)
            except ConfigError:
                remembered = None
            if remembered is None:
                raise ConfigError("--manifest needs the release public key it is signed with",
                                  hint="fieldkit --manifest FILE.json --manifest-key PUB.pem")
            manifest_key = remembered[1]
        verified = verify_manifest(manifest, [manifest_key])  # ManifestError (exit 1): never a TUI with it
        remember_manifest(home, verified, manifest_key)
        print(f"fieldkit: site manifest {manifest.name} signed by {verified.signer}: verified and remembered",
              flush=True)
    try:
        import importlib

        tui = importlib.import_module("screens.app")
    except ImportError as exc:
        raise ConfigError(f"the TUI is not available ({exc})", hint="pip install fieldkit with its dependencies")
    return int(tui.run(home) or 0)


def _scan_sees(sim: Any) -> None:
    """The TUI's Scan (`s`) also probes the simulated serial devices' ports (ptys are not listed by
    pyserial): the demo shows what a scan reports, here that the fleet itself holds the port."""
    import os

    from fieldkit.link.targets import SerialTarget, parse_target
    from fieldkit.scan import PORTS_ENV

    paths = [t.path for t in (parse_target(d.target) for d in sim.devices) if isinstance(t, SerialTarget)]
    if paths and not os.environ.get(PORTS_ENV):
        os.environ[PORTS_ENV] = os.pathsep.join(paths)


def cmd_demo(args: argparse.Namespace, home: Home) -> int:
    import tempfile

    from fieldkit.cli.health import render_health
    from fieldkit.health import check_many
    from fieldkit.sim import Simulation

    with tempfile.TemporaryDirectory(prefix="fieldkit-demo-") as tmp:
        demo_home = home if args.keep_home else Home(Path(tmp) / "home")
        from fieldkit.journal import IdentityMissing, load_identity, setup_operator

        try:
            load_identity(demo_home)
        except IdentityMissing:
            setup_operator(demo_home.ensure(), "demo-technician")
        print(f"starting 2 SSH and {args.serial} serial simulated devices (home: {demo_home.root}) ...", flush=True)
        with Simulation(demo_home, ssh=2, serial=args.serial, prefix="demo", baud=args.baud,
                        line_errors=args.line_errors, line_seed=args.line_seed) as sim:
            if args.serial:
                print(f"serial line: {_line_text(sim)}", flush=True)
            if not args.text:
                _scan_sees(sim)
                return run_tui(demo_home)
            reports = check_many([d.name for d in sim.devices], demo_home)
            print(render_health(reports))
    return 3 if any(r.status == "unreachable" for r in reports) else 0
