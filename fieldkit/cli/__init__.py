"""``fieldkit`` command line. Same operations as the TUI; ``--json`` for scripts.

One module per command group. Each has ``register(subparsers)``, which adds its parser(s) and sets
``handler`` (``handler(args, home) -> exit code``) with ``set_defaults``; :func:`main` only calls
``args.handler``. ``fieldkit`` without a command opens the TUI.

Exit codes: 0 ok · 1 a check or verification failed · 2 usage or configuration error ·
3 connection, authentication or host-key error · 4 the device refused or failed · 130 cancelled.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from fieldkit import __version__
from fieldkit.cli import agent, anchors, audit, bench, demo, devices, health, init, install, models, profiles, release, trust
from fieldkit.cli import checklist, manifest, report, versions
from fieldkit.errors import FieldkitError
from fieldkit.locations import Home

# In the order `fieldkit --help` lists them.
GROUPS = (demo, health, trust, devices, profiles, release, bench, install, models, anchors, init, audit, agent, manifest, versions, checklist, report)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with a short hint
        self.print_usage(sys.stderr)
        sys.stderr.write(f"fieldkit: error: {message}\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fieldkit", description="Field toolkit for edge ML devices (SSH or serial).")
    p.add_argument("--version", action="version", version=f"fieldkit {__version__}")
    p.add_argument("--home", type=Path, help="state directory (default: $FIELDKIT_HOME or the user data dir)")
    p.add_argument("--manifest", dest="tui_manifest", type=Path, metavar="FILE.json",
                   help="open the TUI with this signed site manifest (verified first, then remembered in the home)")
    p.add_argument("--manifest-key", dest="tui_manifest_key", type=Path, metavar="PUB.pem",
                   help="the release public key the --manifest must be signed with (default: the remembered one)")
    # Nested subparsers (devices list, audit show, ...) inherit parser_class from their parent: _Parser.
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_Parser)
    for group in GROUPS:
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is not None and (args.tui_manifest or args.tui_manifest_key):
        parser.error("--manifest/--manifest-key open the TUI: give them without a command "
                     "(`fieldkit versions` takes its own --manifest and --key)")
    if args.tui_manifest_key and not args.tui_manifest:
        parser.error("--manifest-key needs --manifest FILE.json")
    home = Home(args.home) if args.home else Home.current()
    try:
        if args.cmd is None:
            return demo.run_tui(home, manifest=args.tui_manifest, manifest_key=args.tui_manifest_key)
        from fieldkit import notices

        notices.set_handler(lambda msg: print(f"fieldkit: warning: {msg}", file=sys.stderr, flush=True))
        return int(args.handler(args, home) or 0)
    except FieldkitError as exc:
        print(f"fieldkit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fieldkit: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
