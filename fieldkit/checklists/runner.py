"""Running a checklist on one device, and resuming it: the run's state lives in the operator journal.

A run is a sequence of journal entries on the device's name, each signed by the operator's key:

* ``checklist.run`` ``started`` — the run id, the checklist as it was when the run began (so a resume
  follows the same steps even after fieldkit was updated), the device and what the run was given;
* ``checklist.step`` — each step's outcome (``passed``, ``failed``, ``skipped``), its time, answer and
  note or readings, and where the run goes next; an action writes a ``started`` entry with its plan
  before it changes the device, a step cut short writes ``interrupted`` or ``unanswered``;
* ``checklist.run`` at the end — ``passed``, ``failed`` or ``stopped`` (with the reason and step);
  a resume adds a ``checklist.run`` entry with ``"resumed": true``.

:func:`load_run` rebuilds a run from those entries; :func:`resume_run` continues at the first
unfinished step (a stopped step is tried again), and an action re-checks the device first so it is
never applied twice (:mod:`fieldkit.checklists.steps`).

Run statuses: ``passed`` (every step that ran passed), ``failed`` (the run reached its end, some step
failed), ``stopped`` (it ended early: a failed step with ``on_fail = "stop"``, a confirm answered no or
not answered, a lost link, a cancel), ``unfinished`` (no end entry: the laptop died mid-run).
Passed and failed runs are final; stopped and unfinished ones can be resumed.
"""

from __future__ import annotations

import re
import secrets
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fieldkit.checklists.model import Checklist, Step, parse_checklist
from fieldkit.checklists.steps import (
    ACTION_FNS,
    CHECK_FNS,
    Outcome,
    RunInputs,
    StepContext,
    record_readings,
)
from fieldkit.errors import Cancelled, ConfigError, ConnectError, FieldkitError

__all__ = [
    "RUN_ID_PATTERN",
    "Answer",
    "AnswerFn",
    "Run",
    "StepState",
    "check_run_id",
    "list_runs",
    "load_run",
    "parse_answers",
    "resume_run",
    "start_run",
]

RUN_ID_PATTERN = re.compile(r"\d{8}T\d{6}Z-[a-z0-9][a-z0-9._-]{0,40}-[0-9a-f]{6}")
"""Run ids start with a date: never a command word such as ``verify``."""

FINAL = ("passed", "failed")
RESUMABLE = ("stopped", "unfinished")
STEP_STATUSES = ("pending", "passed", "failed", "skipped", "started", "interrupted", "unanswered")
_MAX_NOTE = 2000


@dataclass
class Answer:
    """A technician's answer to a confirm step."""

    answer: bool
    note: str = ""


AnswerFn = Callable[[Step], "Answer | None"]
"""Interactive answering: return None when there is no answer (the run stops, nothing is assumed)."""
ProgressFn = Callable[[dict], None]


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
        raise ConfigError(f"{run_id!r:.80} is not a checklist run id (they look like 20250101T120000Z-rollback-1a2b3c)",
                          hint="`fieldkit checklist runs` lists them")
    return run_id


def parse_answers(doc: Any, checklist: Checklist, source: str = "answers") -> dict[str, Answer]:
    """``{"step-id": true | false | {"answer": bool, "note": "..."}}`` for the confirm steps; a key that
    is not a confirm step of the checklist is an error (a typo must never leave a step unanswered)."""
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a JSON object mapping confirm step ids to true/false")
    confirms = [s.id for s in checklist.steps if s.kind == "confirm"]
    out: dict[str, Answer] = {}
    for key, value in doc.items():
        if key not in confirms:
            raise ConfigError(f"{source}: {key!r:.80} is not a confirm step of {checklist.name} "
                              f"(its confirm steps: {', '.join(confirms) or 'none'})")
        if isinstance(value, bool):
            out[key] = Answer(value)
        elif isinstance(value, dict) and isinstance(value.get("answer"), bool) and set(value) <= {"answer", "note"}:
            note = value.get("note", "")
            if not isinstance(note, str):
                raise ConfigError(f"{source}: {key}.note: expected a string")
            out[key] = Answer(value["answer"], note[:_MAX_NOTE])
        else:
            raise ConfigError(f"{source}: {key}: expected true, false or {{\"answer\": true, \"note\": \"...\"}}")
    return out


@dataclass
class StepState:
    id: str
    kind: str
    title: str
    status: str = "pending"
    time: str | None = None
    message: str = ""
    answer: bool | None = None
    note: str = ""
    readings: dict = field(default_factory=dict)
    next: str | None = None
    plan: dict | None = None

    def to_json(self) -> dict:
        return {"id": self.id, "kind": self.kind, "title": self.title, "status": self.status, "time": self.time,
                "message": self.message, "answer": self.answer, "note": self.note, "readings": self.readings}


@dataclass
class Run:
    run_id: str
    checklist: Checklist
    device: str
    target: str
    profile: str
    inputs: RunInputs
    operator: str
    started: str
    status: str = "unfinished"
    finished: str | None = None
    reason: str = ""
    stopped_at: str | None = None
    transport: str | None = None
    manifest: dict | None = None
    steps: dict[str, StepState] = field(default_factory=dict)
    exit_code: int = 0
    entries: list[Any] = field(default_factory=list, repr=False)

    def ordered(self) -> list[StepState]:
        return [self.steps[s.id] for s in self.checklist.steps]

    def to_json(self) -> dict:
        """The documented JSON of `checklist run` / `resume`: ``{"run_id", "status", "steps": [{"id", "status"}]}``
        plus the checklist, device, reason and each step's message."""
        return {"run_id": self.run_id, "status": self.status, "checklist": self.checklist.name,
                "device": self.device, "started": self.started, "finished": self.finished, "reason": self.reason,
                "stopped_at": self.stopped_at,
                "steps": [{"id": s.id, "status": s.status, "message": s.message} for s in self.ordered()]}

    def summary(self) -> dict:
        return {"run_id": self.run_id, "checklist": self.checklist.name, "device": self.device,
                "status": self.status, "started": self.started, "finished": self.finished}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_run_id(checklist: str) -> str:
    slug = re.sub(r"[^a-z0-9._-]+", "-", checklist.lower()).strip("-._")[:40] or "checklist"
    return f"{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{slug}-{secrets.token_hex(3)}"


# ---- starting and resuming ---------------------------------------------------------------------------
def _check_inputs(checklist: Checklist, inputs: RunInputs) -> None:
    missing = []
    if "release" in checklist.needs and not inputs.release:
        missing.append("--release DIR")
    if "model" in checklist.needs and not (inputs.model or inputs.release):
        missing.append("--model NAME")
    if "manifest" in checklist.needs and not (inputs.manifest and inputs.keys):
        missing.append("--manifest FILE --key PUB.pem")
    if missing:
        raise ConfigError(f"checklist {checklist.name} needs {', '.join(missing)}")
    if inputs.manifest and not inputs.keys:
        raise ConfigError("--manifest needs --key PUB.pem: the release key it must be signed with")
    if inputs.release:
        from fieldkit.release import load_manifest

        load_manifest(inputs.release)  # ConfigError naming the file when it is not a release


def _verify_manifest(inputs: RunInputs) -> Any:
    if not inputs.manifest:
        return None
    from fieldkit.manifest import verify_manifest

    return verify_manifest(Path(inputs.manifest), [Path(k) for k in inputs.keys])  # exit 1 when it does not hold


def start_run(home: Any, checklist: Checklist, device: str, inputs: RunInputs | None = None, *,
              answers: Mapping[str, Answer] | None = None, ask: AnswerFn | None = None,
              progress: ProgressFn | None = None, cancel: threading.Event | None = None,
              on_started: Callable[[str], None] | None = None, connect_timeout: float = 15.0,
              session: Any = None) -> Run:
    """Run ``checklist`` on ``device`` from its first step. ``answers`` answers confirm
    steps by id; ``ask`` is asked for the others (None: a non-interactive run, which stops at an
    unanswered confirm). ``session``: an open session to ``device`` to run through (the TUI's device
    screen lends its own: never a second connection to a serial port); it is left open. Returns the
    run; its ``exit_code`` is what the CLI returns."""

    inputs = inputs or RunInputs()
    inputs = RunInputs(str(Path(inputs.release).resolve()) if inputs.release else None, inputs.model,
                       str(Path(inputs.manifest).resolve()) if inputs.manifest else None,
                       [str(Path(k).resolve()) for k in inputs.keys])
    _check_inputs(checklist, inputs)
    manifest = _verify_manifest(inputs)
    with _session_and_journal(home, device, session, connect_timeout) as (session, journal):
        run = Run(new_run_id(checklist.name), checklist, session.name, session.target, session.profile.name,
                  inputs, journal.identity.name if journal.identity else "", _now(), transport=session.transport,
                  manifest=manifest.to_json() if manifest is not None else None)
        run.steps = {s.id: StepState(s.id, s.kind, s.title) for s in checklist.steps}
        session.record("checklist.run", "started", {
            "run_id": run.run_id, "checklist": checklist.name, "title": checklist.title,
            "checklist_sha256": checklist.digest, "definition": checklist.definition(),
            "target": run.target, "profile": run.profile, "transport": run.transport,
            "inputs": inputs.to_json(), "manifest": run.manifest})
        if on_started is not None:
            on_started(run.run_id)
        return _drive(run, session, home, manifest, 0, None, dict(answers or {}), ask, progress, cancel)


def resume_run(home: Any, run_id: str, *, answers: Mapping[str, Answer] | None = None, ask: AnswerFn | None = None,
               progress: ProgressFn | None = None, cancel: threading.Event | None = None,
               connect_timeout: float = 15.0, session: Any = None) -> Run:
    """Continue a stopped or unfinished run at its first unfinished step (see the module docstring).
    ``session``: as for :func:`start_run`."""
    from fieldkit.journal import Journal

    check_run_id(run_id)
    with Journal.open(home) as journal:
        run = load_run(journal, run_id)
        if run.status in FINAL:
            raise ConfigError(f"run {run_id} already ended: {run.status}; nothing to resume",
                              hint=f"start a new run: `fieldkit checklist run {run.checklist.name} {run.device}`")
        manifest = _verify_manifest(run.inputs)
        index, jumped = _resume_point(run)
    with _session_and_journal(home, run.device, session, connect_timeout) as (session, journal):
        at = run.checklist.steps[index].id if index < len(run.checklist.steps) else None
        session.record("checklist.run", "info", {"run_id": run_id, "checklist": run.checklist.name,
                                                 "resumed": True, "at": at, "previous_status": run.status})
        run.status, run.reason, run.stopped_at, run.finished = "unfinished", "", None, None
        return _drive(run, session, home, manifest, index, jumped, dict(answers or {}), ask, progress, cancel)


@contextmanager
def _session_and_journal(home: Any, device: str, lent: Any, timeout: float) -> Iterator[tuple[Any, Any]]:
    """The session a run goes through and its journal: the one lent (left open), or a new one."""
    from fieldkit.devices import open_session
    from fieldkit.journal import Journal

    if lent is not None and not lent.closed:
        yield lent, lent.journal
        return
    with Journal.open(home) as journal:
        session = open_session(device, home, journal=journal, timeout=timeout)
        try:
            yield session, journal
        finally:
            session.close()


def _resume_point(run: Run) -> tuple[int, str | None]:
    """Where a run continues, and the recovery step a failed step jumped to (if one is pending)."""
    steps = run.checklist.steps
    nxt: str | None = steps[0].id
    jump: str | None = None
    for entry in run.entries:
        d = entry.details
        if entry.action != "checklist.step" or d.get("step") not in run.steps:
            continue
        i = run.checklist.index(d["step"])
        status = d.get("status")
        if status in ("started", "interrupted", "unanswered"):
            nxt = d["step"]  # cut short: that very step again, unless a later entry moved on
            continue
        if status in ("passed", "failed", "skipped"):
            nxt = d.get("next") if d.get("next") in run.steps else None
            if d["step"] == jump:
                jump = None
            if status == "failed" and steps[i].on_fail not in ("stop", "continue"):
                jump = steps[i].on_fail
    if nxt is None:
        return len(steps), None
    return run.checklist.index(nxt), jump


# ---- the loop ----------------------------------------------------------------------------------------
class _Unanswered(Exception):
    pass


def _emit(progress: ProgressFn | None, **data: Any) -> None:
    if progress is not None:
        try:
            progress(data)
        except Exception:
            pass  # a broken display must not break a run (BaseException, e.g. Ctrl-C, still ends it)


def _when_holds(run: Run, step: Step) -> tuple[bool, str]:
    ref, _, wanted = (step.when or "").rpartition(".")
    status = run.steps[ref].status if ref in run.steps else "pending"
    return status == wanted, f"when {step.when}: {ref} {status}"


def _drive(run: Run, session: Any, home: Any, manifest: Any, index: int, jumped: str | None,
           answers: dict[str, Answer], ask: AnswerFn | None, progress: ProgressFn | None,
           cancel: threading.Event | None) -> Run:
    steps = run.checklist.steps
    base = {"run_id": run.run_id, "checklist": run.checklist.name}

    def record_step(step: Step, st: StepState, outcome: str) -> None:
        session.record("checklist.step", outcome, {
            **base, "step": step.id, "kind": step.kind, "what": step.what, "title": step.title,
            "status": st.status, "message": st.message[:2000], "answer": st.answer, "note": st.note,
            "readings": st.readings, "next": st.next, "plan": st.plan})

    def end(status: str, reason: str = "", stopped_at: str | None = None, exit_code: int | None = None) -> Run:
        run.status, run.reason, run.stopped_at, run.finished = status, reason, stopped_at, _now()
        run.exit_code = exit_code if exit_code is not None else (0 if status == "passed" else 1)
        outcome = {"passed": "ok", "failed": "failed"}.get(status, "cancelled" if run.exit_code == 130 else "failed")
        session.record("checklist.run", outcome, {**base, "status": status, "reason": reason[:2000],
                                                  "stopped_at": stopped_at,
                                                  "steps": {s.id: s.status for s in run.ordered()}})
        _emit(progress, event="run", run_id=run.run_id, status=status, reason=reason)
        return run

    i = index
    while i < len(steps):
        step = steps[i]
        st = run.steps[step.id]
        nxt = steps[i + 1].id if i + 1 < len(steps) else None
        if step.recovery and jumped != step.id:
            st.status, st.message, st.next, st.time = "skipped", "recovery step: runs only when a failed step jumps to it", nxt, _now()
            record_step(step, st, "info")
            _emit(progress, event="step", step=step.id, status="skipped", message=st.message)
            i += 1
            continue
        if step.when:
            holds, why = _when_holds(run, step)
            if not holds:
                st.status, st.message, st.next, st.time = "skipped", why, nxt, _now()
                record_step(step, st, "info")
                _emit(progress, event="step", step=step.id, status="skipped", message=why)
                i += 1
                continue
        if cancel is not None and cancel.is_set():
            st.status, st.message, st.time = "interrupted", "cancelled before the step began", _now()
            record_step(step, st, "cancelled")
            return end("stopped", "cancelled", step.id, 130)
        _emit(progress, event="step", step=step.id, status="running", title=step.title, kind=step.kind)
        plan = st.plan if st.status in ("started", "interrupted") else None

        def record_plan(p: dict, step: Step = step, st: StepState = st) -> None:
            st.status, st.plan, st.time, st.message = "started", p, _now(), "applying"
            record_step(step, st, "started")

        ctx = StepContext(session, home, run.inputs, manifest, progress, cancel, plan, record_plan)
        try:
            out = _execute(step, ctx, answers, ask)
        except _Unanswered:
            st.status, st.time = "unanswered", _now()
            st.message = "no answer given: a confirm step is never assumed"
            record_step(step, st, "info")
            _emit(progress, event="step", step=step.id, status="unanswered", message=st.message)
            return end("stopped", f"{step.id}: no answer (give it with --answers or answer it interactively)", step.id)
        except Cancelled as exc:
            st.status, st.time, st.message = "interrupted", _now(), exc.message
            record_step(step, st, "cancelled")
            return end("stopped", f"cancelled: {exc.message}", step.id, 130)
        except KeyboardInterrupt:
            st.status, st.time, st.message = "interrupted", _now(), "interrupted (Ctrl-C)"
            record_step(step, st, "cancelled")
            end("stopped", "cancelled (Ctrl-C)", step.id, 130)
            raise
        except ConnectError as exc:
            st.status, st.time, st.message = "interrupted", _now(), exc.message
            record_step(step, st, "failed")
            _emit(progress, event="step", step=step.id, status="interrupted", message=exc.message)
            return end("stopped", f"link lost at {step.id}: {exc.message}; `fieldkit checklist resume "
                       f"{run.run_id}` continues here", step.id, 3)
        except FieldkitError as exc:
            out = Outcome("failed", exc.message)
        st.status, st.message, st.readings, st.time = out.status, out.message, out.readings, _now()
        st.answer, st.note = out.answer, out.note
        if out.status == "passed":
            st.next = nxt
            record_step(step, st, "ok")
            _emit(progress, event="step", step=step.id, status="passed", message=out.message)
            i += 1
            continue
        # failed
        if step.on_fail == "stop":
            st.next = step.id  # a resume tries this step again
            record_step(step, st, "failed")
            _emit(progress, event="step", step=step.id, status="failed", message=out.message)
            return end("stopped", f"{step.id} failed: {out.message}", step.id)
        if step.on_fail == "continue":
            st.next = nxt
            record_step(step, st, "failed")
            _emit(progress, event="step", step=step.id, status="failed", message=out.message)
            i += 1
            continue
        st.next = step.on_fail
        record_step(step, st, "failed")
        _emit(progress, event="step", step=step.id, status="failed", message=out.message, jump=step.on_fail)
        target = run.checklist.index(step.on_fail)
        for skipped in steps[i + 1:target]:
            s2 = run.steps[skipped.id]
            s2.status, s2.message, s2.time = "skipped", f"jumped over: {step.id} failed", _now()
            s2.next = steps[run.checklist.index(skipped.id) + 1].id
            record_step(skipped, s2, "info")
        jumped = step.on_fail
        i = target
    failed = [s.id for s in run.ordered() if s.status == "failed"]
    if failed:
        return end("failed", f"failed: {', '.join(failed)}")
    return end("passed")


def _execute(step: Step, ctx: StepContext, answers: dict[str, Answer], ask: AnswerFn | None) -> Outcome:
    if step.kind == "confirm":
        given = answers.get(step.id)
        if given is None and ask is not None:
            given = ask(step)
        if given is None:
            raise _Unanswered()
        note = (given.note or "")[:_MAX_NOTE]
        return Outcome("passed" if given.answer else "failed",
                       "answered yes" if given.answer else "answered no", {}, given.answer, note)
    if step.kind == "check":
        return CHECK_FNS[step.check or ""](ctx, step)
    if step.kind == "action":
        return ACTION_FNS[step.action or ""](ctx, step)
    return record_readings(ctx, step)


# ---- reading runs back from the journal -----------------------------------------------------------------
def _run_entries(journal: Any, run_id: str) -> list[Any]:
    starts = [e for e in journal.entries(action="checklist.run")
              if e.details.get("run_id") == run_id and e.outcome == "started"]
    if not starts:
        raise ConfigError(f"no checklist run {run_id} in the operator journal",
                          hint="`fieldkit checklist runs` lists them")
    first = starts[0]
    return [e for e in journal.entries(device=first.device, action="checklist", after_seq=first.seq - 1)
            if e.details.get("run_id") == run_id]


def load_run(journal: Any, run_id: str) -> Run:
    """Rebuild a run from its journal entries (each step's latest outcome wins)."""
    check_run_id(run_id)
    entries = _run_entries(journal, run_id)
    start = entries[0].details
    checklist = parse_checklist(start.get("definition"), f"run {run_id}")
    run = Run(run_id, checklist, entries[0].device, str(start.get("target") or ""), str(start.get("profile") or ""),
              RunInputs.from_json(start.get("inputs")), entries[0].operator, entries[0].time,
              transport=start.get("transport"), manifest=start.get("manifest"))
    run.steps = {s.id: StepState(s.id, s.kind, s.title) for s in checklist.steps}
    run.entries = entries
    for e in entries[1:]:
        d = e.details
        if e.action == "checklist.step" and d.get("step") in run.steps:
            st = run.steps[d["step"]]
            st.status = d.get("status") if d.get("status") in STEP_STATUSES else "failed"
            st.time, st.message = e.time, str(d.get("message") or "")
            st.answer = d.get("answer") if isinstance(d.get("answer"), bool) else None
            st.note = str(d.get("note") or "")
            st.readings = d.get("readings") if isinstance(d.get("readings"), dict) else {}
            st.next = d.get("next") if d.get("next") in run.steps else None
            st.plan = d.get("plan") if isinstance(d.get("plan"), dict) else None
        elif e.action == "checklist.run" and d.get("resumed"):
            run.status, run.finished, run.reason, run.stopped_at = "unfinished", None, "", None
        elif e.action == "checklist.run" and d.get("status") in ("passed", "failed", "stopped"):
            run.status, run.finished = d["status"], e.time
            run.reason, run.stopped_at = str(d.get("reason") or ""), d.get("stopped_at")
    return run


def list_runs(journal: Any) -> list[dict]:
    """Every run, oldest first: ``{"run_id", "checklist", "device", "status", "started", "finished"}``."""
    runs: dict[str, dict] = {}
    for e in journal.entries(action="checklist.run"):
        d = e.details
        rid = d.get("run_id")
        if not isinstance(rid, str):
            continue
        if e.outcome == "started" and rid not in runs:
            runs[rid] = {"run_id": rid, "checklist": d.get("checklist"), "device": e.device,
                         "status": "unfinished", "started": e.time, "finished": None}
        elif rid in runs and d.get("resumed"):
            runs[rid].update(status="unfinished", finished=None)
        elif rid in runs and d.get("status") in ("passed", "failed", "stopped"):
            runs[rid].update(status=d["status"], finished=e.time)
    return list(runs.values())
