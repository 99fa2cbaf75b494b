"""``fieldkit install DEVICE DIR`` and ``fieldkit rollback DEVICE NAME``: a signed release on, or an
earlier version back on, a device — verified, activated atomically, smoke-tested, committed or reverted."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fieldkit.cli.common import confirm, emit_json, open_device
from fieldkit.locations import Home
from fieldkit.textfmt import human_bytes, table


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("install", help="install a signed model release on a device (verify, copy, "
                              "activate, smoke-test, commit or revert)")
    s.add_argument("device", help="inventory name or target")
    s.add_argument("release", type=Path, metavar="DIR", help="the release directory (release.json, model, model.sig)")
    s.add_argument("--downgrade", action="store_true", help="allow a lower version than the active one "
                   "(never below the device's security floor)")
    s.add_argument("--no-smoke", action="store_true", help="activate without the smoke test (journaled as such)")
    s.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_install)

    s = subparsers.add_parser("rollback", help="make the previous (or a named) installed version active again, "
                              "through the same smoke test")
    s.add_argument("device")
    s.add_argument("name", help="model name")
    s.add_argument("--to", metavar="VERSION", help="an installed version (default: the previous one)")
    s.add_argument("--no-smoke", action="store_true", help="activate without the smoke test (journaled as such)")
    s.add_argument("--yes", action="store_true")
    s.add_argument("--json", action="store_true")
    s.set_defaults(handler=cmd_rollback)


class TransferProgress:
    """Stages and bytes on stderr: one line rewritten in place on a terminal, a line every few seconds otherwise."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self._last = 0.0

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        if ev.get("bytes_total"):
            now = time.monotonic()
            if not self.tty and now - self._last < 2.0 and ev["bytes_done"] < ev["bytes_total"]:
                return
            self._last = now
            rate = ev.get("rate_bps") or 0
            eta = ev.get("eta_s")
            text = (f"  copying {human_bytes(ev['bytes_done'])} of {human_bytes(ev['bytes_total'])} "
                    f"({100 * ev['bytes_done'] / ev['bytes_total']:.0f} %), {human_bytes(rate)}/s"
                    + (f", {eta:.0f} s left" if eta is not None else ""))
            print(("\r" + text + "\x1b[K") if self.tty else text, end="" if self.tty else "\n",
                  file=sys.stderr, flush=True)
            return
        if ev.get("message"):
            print(("\r\x1b[K" if self.tty else "") + f"{ev.get('stage', '')}: {ev['message']}", file=sys.stderr,
                  flush=True)


def _ask(args: argparse.Namespace, what: str):
    def ask(result: Any) -> bool:
        rel = result.release
        print(f"{what} {rel['name']} {rel['version']} on {result.device}: active now {result.before or 'none'}"
              + (f"; signed by {rel['signer']}, digest sha256:{rel['digest'][:16]}…" if rel.get("digest") else ""),
              file=sys.stderr)
        return confirm(f"{what} {rel['name']} {rel['version']} on {result.device}?", yes=args.yes)
    return ask


def _report(args: argparse.Namespace, result: Any) -> int:
    if args.json:
        emit_json(result.to_json())
    else:
        rows = [[s.name, s.status, f"{s.seconds:.1f} s", s.detail] for s in result.stages]
        if rows:
            print(table(["STAGE", "STATUS", "TIME", "DETAIL"], rows))
        if result.smoke and result.smoke.get("outputs"):
            print(table(["OUTPUT", "OK", "MAX ABS DIFF", "MAX REL DIFF"],
                        [[o["name"], "yes" if o["ok"] else "NO", f"{o.get('max_abs_diff', 0):.3g}",
                          f"{o.get('max_rel_diff', 0):.3g}"] for o in result.smoke["outputs"]], indent="  "))
        print(f"{result.result}: {result.message}")
    if result.result != "committed" and result.error is not None:
        print(f"fieldkit: {result.error}", file=sys.stderr)  # the reason and its hint, also with --json
    return result.exit_code


def cmd_install(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.install import install_release

    if not args.release.is_dir():
        from fieldkit.errors import ConfigError
        raise ConfigError(f"release {args.release}: no such directory")
    with open_device(args.device, home) as session:
        result = install_release(session, args.release, downgrade=args.downgrade, no_smoke=args.no_smoke,
                                 confirm=_ask(args, "install"), progress=TransferProgress(quiet=args.json))
    return _report(args, result)


def cmd_rollback(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.install import rollback_model

    with open_device(args.device, home) as session:
        result = rollback_model(session, args.name, to=args.to, no_smoke=args.no_smoke,
                                confirm=_ask(args, "roll back to"), progress=TransferProgress(quiet=args.json))
    return _report(args, result)
