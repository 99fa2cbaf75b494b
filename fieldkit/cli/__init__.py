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
from typing import Any, Sequence

from fieldkit import __version__
from fieldkit.errors import FieldkitError
from fieldkit.locations import Home

# The command modules, in the order `fieldkit --help` lists them. Imported when the parser is built:
# `fieldkit` alone (the TUI) needs none of them, and its cold start is felt (docs/performance.md).
GROUP_NAMES = ("demo", "health", "trust", "devices", "profiles", "release", "bench", "install", "models", "anchors",
               "init", "audit", "agent", "manifest", "versions", "checklist", "report")


def groups() -> list[Any]:
    """The command modules (each with ``register(subparsers)``), in :data:`GROUP_NAMES` order."""
    import importlib

    return [importlib.import_module(f"fieldkit.cli.{name}") for name in GROUP_NAMES]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors exit 2 with a short hint
        self.print_usage(sys.stderr)
        sys.stderr.write(f"fieldkit: error: {message}\n")
        sys.exit(2)


class _CommandParser(_Parser):
    """The parser of a command (``devices``, ``devices add``, ...). argparse hands the words a
    command does not know up to the top-level parser, whose error shows ``fieldkit``'s usage;
    here the command that got them reports them itself, with its own usage (``fieldkit devices
    add --bogus`` shows how ``devices add`` is called). Nested command parsers are this class too
    (argparse gives subparsers their parent's class), so the deepest command reports first."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> tuple[argparse.Namespace, list[str]]:
        ns, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="fieldkit", description="Field toolkit for edge ML devices (SSH or serial).")
    p.add_argument("--version", action="version", version=f"fieldkit {__version__}")
    p.add_argument("--home", type=Path, help="state directory (default: $FIELDKIT_HOME or the user data dir)")
    p.add_argument("--manifest", dest="tui_manifest", type=Path, metavar="FILE.json",
                   help="open the TUI with this signed site manifest (verified first, then remembered in the home)")
    p.add_argument("--manifest-key", dest="tui_manifest_key", type=Path, metavar="PUB.pem",
                   help="the release public key the --manifest must be signed with (default: the remembered one)")
    # Nested subparsers (devices list, audit show, ...) inherit parser_class from their parent.
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=_CommandParser)
    for group in groups():
        group.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:  # `fieldkit` alone opens the TUI: straight there, no command module imported
        from fieldkit.cli.demo import run_tui

        return _guarded(lambda: run_tui(Home.current()))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.cmd is not None and (args.tui_manifest or args.tui_manifest_key):
        parser.error("--manifest/--manifest-key open the TUI: give them without a command "
                     "(`fieldkit versions` takes its own --manifest and --key)")
    if args.tui_manifest_key and not args.tui_manifest:
        parser.error("--manifest-key needs --manifest FILE.json")
    home = Home(args.home) if args.home else Home.current()
    if args.cmd is None:
        from fieldkit.cli.demo import run_tui

        return _guarded(lambda: run_tui(home, manifest=args.tui_manifest, manifest_key=args.tui_manifest_key))
    return _guarded(lambda: _run_command(args, home))


def _run_command(args: argparse.Namespace, home: Home) -> int:
    from fieldkit import notices

    notices.set_handler(lambda msg: print(f"fieldkit: warning: {msg}", file=sys.stderr, flush=True))
    return int(args.handler(args, home) or 0)


def _guarded(run: Any) -> int:
    """Run the command (or the TUI): a FieldkitError is its message and exit code, Ctrl-C is 130."""
    try:
        return int(run() or 0)
    except FieldkitError as exc:
        print(f"fieldkit: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("fieldkit: cancelled", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
