"""``fieldkit checklist list | show NAME | run NAME DEVICE | resume RUN_ID | runs``: guided procedures on a
device (rollback, commissioning, model update), every step journaled, resumable after a pulled cable.

``run`` asks each confirm step on the terminal; ``--answers FILE`` (a JSON object: step id to
``true``/``false`` or ``{"answer": true, "note": "..."}``) answers them for scripts, and then a confirm
step without an answer stops the run: it is never assumed. Exit codes of ``run``/``resume``: 0 passed,
1 failed or stopped, 3 the link was lost (resume continues there), 130 cancelled, 2 usage.
The verbs come first, so they never clash with a device name."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fieldkit.cli.common import emit_json
from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.textfmt import table

_ICONS = {"passed": "ok  ", "failed": "FAIL", "skipped": "skip", "pending": "    ", "started": "... ",
          "interrupted": "CUT ", "unanswered": "??? "}


def register(subparsers: Any) -> None:
    s = subparsers.add_parser("checklist", help="guided, journaled procedures on a device: rollback, "
                              "commissioning, model update")
    actions = s.add_subparsers(dest="action", metavar="ACTION", required=True)
    a = actions.add_parser("list", help="the checklists available (bundled and the home's own)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_list)
    a = actions.add_parser("show", help="the steps of a checklist (NAME or a .toml file; checks the file)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_show)
    a = actions.add_parser("run", help="run a checklist on a device")
    a.add_argument("name", metavar="NAME", help="a checklist name or a .toml file")
    a.add_argument("device", metavar="DEVICE", help="inventory name or target")
    a.add_argument("--manifest", type=Path, metavar="FILE.json", help="the signed site manifest (versions checks)")
    a.add_argument("--key", type=Path, action="append", default=[], metavar="PUB.pem",
                   help="release public key: the manifest's signer, the key a device must trust (repeatable)")
    a.add_argument("--release", type=Path, metavar="DIR", help="the signed release to bench and install")
    a.add_argument("--model", metavar="NAME", help="the model to roll back or smoke test")
    _common(a)
    a.set_defaults(handler=cmd_run)
    a = actions.add_parser("resume", help="continue a stopped or interrupted run at its first unfinished step")
    a.add_argument("run_id", metavar="RUN_ID")
    _common(a)
    a.set_defaults(handler=cmd_resume)
    a = actions.add_parser("runs", help="the checklist runs in the operator journal")
    a.add_argument("--json", action="store_true")
    a.set_defaults(handler=cmd_runs)


def _common(a: argparse.ArgumentParser) -> None:
    a.add_argument("--answers", type=Path, metavar="FILE.json",
                   help="answers to the confirm steps for a scripted run (no prompts)")
    a.add_argument("--timeout", type=float, default=15.0, help="connect timeout in seconds")
    a.add_argument("--json", action="store_true", help="print one JSON document")


def cmd_list(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.checklists import list_checklists, load_checklist_file

    rows, docs = [], []
    for name, (source, path) in sorted(list_checklists(home).items()):
        try:
            cl = load_checklist_file(path)
            doc = {"name": name, "title": cl.title, "source": source, "path": str(path), "steps": len(cl.steps),
                   "needs": list(cl.needs)}
        except ConfigError as exc:
            doc = {"name": name, "title": None, "source": source, "path": str(path), "error": exc.message}
        docs.append(doc)
        rows.append([name, doc.get("steps", "-"), ", ".join(doc.get("needs") or []) or "-", source,
                     doc["title"] or f"INVALID: {doc.get('error', '')[:80]}"])
    if args.json:
        emit_json({"checklists": docs})
    else:
        print(table(["NAME", "STEPS", "NEEDS", "SOURCE", "TITLE"], rows))
    return 0


def cmd_show(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.checklists import get_checklist

    cl = get_checklist(args.name, home)
    if args.json:
        emit_json(cl.to_json())
        return 0
    print(f"{cl.name}: {cl.title}")
    if cl.description:
        print(f"  {cl.description}")
    if cl.needs:
        print(f"  needs: {', '.join(cl.needs)}")
    rows = []
    for i, s in enumerate(cl.steps, 1):
        flow = []
        if s.when:
            flow.append(f"when {s.when}")
        if s.on_fail != "stop":
            flow.append(f"on fail: {s.on_fail}")
        if s.recovery:
            flow.append("recovery")
        rows.append([i, s.id, s.kind + (f" {s.what}" if s.what else ""), s.title, ", ".join(flow)])
    print(table(["#", "ID", "KIND", "TITLE", "FLOW"], rows, indent="  "))
    return 0


def _read_answers(path: Path | None, checklist: Any) -> dict | None:
    from fieldkit.checklists import parse_answers

    if path is None:
        return None
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--answers {path}: cannot read: {exc.strerror or exc}") from None
    if len(raw) > 1 << 20:
        raise ConfigError(f"--answers {path}: larger than 1 MB")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"--answers {path}: not JSON ({exc})") from None
    return parse_answers(doc, checklist, f"--answers {path}")


def _ask(step: Any) -> Any:
    """Interactive: ask on the terminal (stderr, so --json keeps stdout to its one document); an
    empty answer or EOF is no answer (the run stops, nothing is assumed)."""
    from fieldkit.checklists import Answer

    def prompt(text: str) -> str:
        sys.stderr.write(text)
        sys.stderr.flush()
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line.strip()

    print(f"\n{step.title}" + (f"\n  {step.help}" if step.help else ""), file=sys.stderr)
    try:
        while True:
            reply = prompt(f"{step.question or step.title} [y/n, empty stops the run] ").lower()
            if reply in ("", "q"):
                return None
            if reply in ("y", "yes", "n", "no"):
                return Answer(reply.startswith("y"), prompt("note (optional): ")[:2000])
    except EOFError:
        return None


def _progress(json_out: bool) -> Any:
    def show(ev: dict) -> None:
        if ev.get("event") == "step" and ev.get("status") != "running":
            icon = _ICONS.get(ev.get("status", ""), "    ")
            print(f"[{icon}] {ev.get('step')}: {ev.get('message', '')}"[:300], file=sys.stderr)
        elif ev.get("event") == "step":
            print(f"[ .. ] {ev.get('step')}: {ev.get('title', '')}", file=sys.stderr)
    return None if json_out else show


def _finish(args: argparse.Namespace, run: Any) -> int:
    if args.json:
        emit_json(run.to_json())
    else:
        print(table(["STEP", "STATUS", "DETAIL"], [[s.id, s.status, s.message[:100]] for s in run.ordered()]))
        print(f"\nrun {run.run_id}: {run.status}" + (f" ({run.reason})" if run.reason else ""))
        if run.status == "stopped":
            print(f"resume with `fieldkit checklist resume {run.run_id}`; "
                  f"`fieldkit report {run.run_id} --out DIR` writes the record")
        else:
            print(f"`fieldkit report {run.run_id} --out DIR` writes the signed record")
    return run.exit_code


def cmd_run(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.checklists import RunInputs, get_checklist, start_run
    from fieldkit.devices import require_identity, resolve

    cl = get_checklist(args.name, home)
    answers = _read_answers(args.answers, cl)
    require_identity(home)
    resolve(args.device, home)  # a mistyped name is a usage error, before anything is recorded
    ask = _ask if answers is None and sys.stdin.isatty() else None
    inputs = RunInputs(str(args.release) if args.release else None, args.model,
                       str(args.manifest) if args.manifest else None, [str(k) for k in args.key])
    run = start_run(home, cl, args.device, inputs, answers=answers, ask=ask, progress=_progress(args.json),
                    connect_timeout=args.timeout,
                    on_started=None if args.json else lambda rid: print(f"run {rid}: {cl.name} on {args.device}",
                                                                        file=sys.stderr))
    return _finish(args, run)


def cmd_resume(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.checklists import check_run_id, load_run, resume_run
    from fieldkit.journal import Journal

    check_run_id(args.run_id)
    with Journal.open_readonly(home) as journal:
        run = load_run(journal, args.run_id)
    answers = _read_answers(args.answers, run.checklist)
    ask = _ask if answers is None and sys.stdin.isatty() else None
    run = resume_run(home, args.run_id, answers=answers, ask=ask, progress=_progress(args.json),
                     connect_timeout=args.timeout)
    return _finish(args, run)


def cmd_runs(args: argparse.Namespace, home: Home) -> int:
    from fieldkit.checklists import list_runs
    from fieldkit.journal import Journal

    if not home.journal_db.exists():
        runs: list[dict] = []
    else:
        with Journal.open_readonly(home) as journal:
            runs = list_runs(journal)
    if args.json:
        emit_json({"runs": runs})
    elif not runs:
        print("no checklist runs yet; `fieldkit checklist run NAME DEVICE` starts one")
    else:
        print(table(["RUN", "CHECKLIST", "DEVICE", "STATUS", "STARTED", "FINISHED"],
                    [[r["run_id"], r["checklist"], r["device"], r["status"], r["started"][:19],
                      (r["finished"] or "-")[:19]] for r in runs]))
    return 0
