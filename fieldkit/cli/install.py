"""``fieldkit install DEVICE DIR`` and ``fieldkit rollback DEVICE NAME``: a signed release on, or an
earlier version back on, a device — verified, activated atomically, smoke-tested, committed or reverted.

``fieldkit install --all | --group G | DEV1 DEV2 ... DIR [--canary K] [--parallel P]``: a staged
rollout (fieldkit.rollout): the release verified on the laptop once, one confirmation, K canary
devices first, then the rest P at once; the first failure stops new installs. Exit 0 when every
device committed, 1 otherwise (130 when stopped with Ctrl-C)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from fieldkit.cli.common import confirm, emit_json, open_device
from fieldkit.locations import Home
from fieldkit.textfmt import table, transfer_text


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("install", help="install a signed model release on a device, or roll it out to "
                              "several (verify, copy, activate, smoke-test, commit or revert)",
                              usage="%(prog)s [DEVICE ...] DIR [--all | --group G] [--canary K] [--parallel P] "
                              "[options]")
    s.add_argument("targets", nargs="+", metavar="DEVICE ... DIR",
                   help="inventory names or targets, then the release directory (release.json, model, model.sig); "
                   "one device installs there, several (or --all / --group) make a staged rollout")
    s.add_argument("--all", action="store_true", help="roll out to every device in the inventory")
    s.add_argument("--group", action="append", default=[], metavar="G", dest="groups",
                   help="roll out to the devices of an inventory group (repeatable)")
    s.add_argument("--canary", type=int, default=None, metavar="K",
                   help="rollout: install on the first K devices first; all must commit before the rest (default 1)")
    s.add_argument("--parallel", type=int, default=None, metavar="P",
                   help="rollout: installs at once after the canaries (default 4)")
    s.add_argument("--key", type=Path, action="append", default=[], metavar="PUB.pem",
                   help="rollout: also check the release's signature on the laptop against this release key "
                   "(repeatable; each device checks it against its own release keys in any case)")
    s.add_argument("--timeout", type=float, default=15.0, help="rollout: connect timeout per device in seconds")
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
            text = "  copying " + transfer_text(ev["bytes_done"], ev["bytes_total"], ev.get("rate_bps"), ev.get("eta_s"))
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

    *devices, release = args.targets
    args.release = Path(release)
    if len(devices) != 1 or args.all or args.groups or args.canary is not None or args.parallel is not None:
        return cmd_rollout(args, home, devices)
    args.device = devices[0]
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


# ---- a staged rollout ------------------------------------------------------------------------------
class RolloutProgress:
    """One line per device event and stage on stderr (several devices interleave: no bytes counter)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet

    def __call__(self, ev: dict) -> None:
        if self.quiet:
            return
        kind = ev.get("event")
        if kind == "device_start":
            line = f"{ev['device']}: installing" + (" (canary)" if ev.get("canary") else "")
        elif kind == "stage" and ev.get("message") and not ev.get("bytes_total"):
            line = f"{ev['device']}: {ev.get('stage', '')}: {ev['message']}"
        elif kind == "device_done":
            line = f"{ev['device']}: {ev['result']} ({ev.get('before') or 'none'} -> {ev.get('after') or 'none'})"
        elif kind == "stopping":
            line = f"rollout stopped, no new install starts: {ev['reason']}"
        else:
            return
        print(line, file=sys.stderr, flush=True)


def _describe_plan(plan: Any) -> str:
    rel = plan.release
    lines = [f"roll out {rel['name']} {rel['version']} (security version {rel['security_version']}, "
             f"sha256:{rel['digest'][:16]}…"
             + (f", signed by {rel['signer']}" if rel.get("signer") else ", signer checked by each device") + ")"
             + f" to {len(plan.devices)} device(s): {plan.canary} canary first, then {plan.parallel} at once"]
    rows = [[d.name, "canary" if i < plan.canary else "then", d.target] for i, d in enumerate(plan.devices)]
    lines.append(table(["DEVICE", "WAVE", "TARGET"], rows, indent="  "))
    return "\n".join(lines)


def _drive(plan: Any, args: argparse.Namespace) -> Any:
    """Run the rollout in a worker thread so that Ctrl-C reaches us: once stops new installs (the
    running ones finish), twice cancels the running ones too (each device reverts what it did not commit)."""
    import threading

    from fieldkit.rollout import run_rollout

    cancel, abort, finished = threading.Event(), threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["result"] = run_rollout(plan, progress=RolloutProgress(quiet=args.json), cancel=cancel, abort=abort)
        except BaseException as exc:  # re-raised on the main thread
            box["error"] = exc
        finally:
            finished.set()

    def on_ctrl_c(signum: int, frame: Any) -> None:
        # A handler, not KeyboardInterrupt: Ctrl-C at any instant (even between starting the worker
        # and waiting for it) stops new installs instead of leaving without the summary.
        if not cancel.is_set():
            cancel.set()
            print("\nstopping: no new install starts; the running ones finish (Ctrl-C again to cancel them)",
                  file=sys.stderr, flush=True)
        else:
            abort.set()
            print("\ncancelling the running installs: each device reverts what it did not commit",
                  file=sys.stderr, flush=True)

    import signal

    worker = threading.Thread(target=work, name="fieldkit-rollout", daemon=True)
    previous = signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        worker.start()
        while not finished.wait(0.2):  # not Thread.join: a signal handler runs between the waits
            pass
    finally:
        signal.signal(signal.SIGINT, previous)
    worker.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def cmd_rollout(args: argparse.Namespace, home: Home, devices: list[str]) -> int:
    from fieldkit.cli.versions import select_devices
    from fieldkit.rollout import decline_rollout, plan_rollout, run_rollout

    specs = select_devices(home, devices, args.all, args.groups)
    plan = plan_rollout(home, specs, args.release, canary=1 if args.canary is None else args.canary,
                        parallel=4 if args.parallel is None else args.parallel, keys=args.key,
                        downgrade=args.downgrade, no_smoke=args.no_smoke, timeout=args.timeout)
    if plan.refusal is not None:  # nothing is touched; the summary says so
        result = run_rollout(plan)
    else:
        print(_describe_plan(plan), file=sys.stderr)
        rel = plan.release
        if confirm(f"Roll out {rel['name']} {rel['version']} to these {len(plan.devices)} device(s)?", yes=args.yes):
            result = _drive(plan, args)
        else:
            result = decline_rollout(plan)
    if args.json:
        emit_json(result.to_json())
    else:
        rows = [[d.device + (" (canary)" if d.canary else ""), d.before or "-", d.after or "-", d.result]
                for d in result.devices]
        print(table(["DEVICE", "BEFORE", "AFTER", "RESULT"], rows))
        counts = ", ".join(f"{n} {r}" for r, n in sorted(result.counts().items()))
        rel = result.release
        print(f"rollout of {rel['name'] or args.release} {rel['version'] or ''}: {counts}".replace("  ", " ")
              + (f"; stopped: {result.stopped}" if result.stopped and not result.ok else ""))
    if result.refusal is not None:
        print(f"fieldkit: {result.refusal}", file=sys.stderr)
    for d in result.devices:
        if d.result not in ("committed", "skipped") and d.message:
            print(f"fieldkit: {d.device}: {d.message}", file=sys.stderr)
    return result.exit_code
