"""A checklist on one device: pick one (bundled or the home's), or resume this device's stopped run;
the steps with status icons, the current step's question (answered with y/n and an optional note)
or live progress, Esc stops the run cleanly (it can be resumed), and a signed report at the end.

The run is a core call (fieldkit.checklists start_run / resume_run) in a thread worker. Its
interactive callback runs in that worker: it posts AskStep and waits on an event for the keyboard
answer, so the UI thread never blocks."""

from __future__ import annotations

import threading
from typing import Any, Callable

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import Worker, WorkerState

from screens.actions import CHECKLIST, bindings
from screens.columns import Col, FitTable

ICONS = {"pending": "[dim]·[/]", "running": "[bold cyan]▶[/]", "passed": "[green]✓[/]", "failed": "[red]✗[/]",
         "skipped": "[dim]–[/]", "stopped": "[yellow]■[/]"}
# the runner's step statuses shown as the screen's six
SHOWN = {"started": "running", "interrupted": "stopped", "unanswered": "stopped"}
RESUMABLE = ("stopped", "unfinished")
COLUMNS = [Col("name", "Checklist", rank=0, min_width=10), Col("steps", "Steps", rank=3),
           Col("needs", "Needs", rank=2, min_width=8), Col("source", "From", rank=4),
           Col("title", "Title", rank=1, min_width=16, flex=True)]


# ---- messages: the workers post these, the handlers below own the state ---------------------------
class Loaded(Message):
    def __init__(self, checklists: list[dict], resumable: Any = None, error: Exception | None = None) -> None:
        super().__init__()
        self.checklists, self.resumable, self.error = checklists, resumable, error


class RunProgress(Message):
    def __init__(self, data: dict) -> None:
        super().__init__()
        self.data = data


class RunStarted(Message):
    def __init__(self, run_id: str) -> None:
        super().__init__()
        self.run_id = run_id


class AskStep(Message):
    """A confirm step waits for the technician: ``reply(Answer | None)`` wakes the worker."""

    def __init__(self, step: Any, reply: Callable[[Any], None]) -> None:
        super().__init__()
        self.step, self.reply = step, reply


class RunFinished(Message):
    def __init__(self, run: Any = None, error: Exception | None = None) -> None:
        super().__init__()
        self.run, self.error = run, error


class ReportWritten(Message):
    def __init__(self, doc: dict | None, error: Exception | None = None) -> None:
        super().__init__()
        self.doc, self.error = doc, error


class ChecklistScreen(Screen):
    BINDINGS = bindings(CHECKLIST)
    AUTO_FOCUS = "#checklists"

    def __init__(self, home: Any, device: str, *, session_of: Callable[[], Any] | None = None) -> None:
        """``session_of`` (from the device screen) gives its open session, which the run borrows, so a
        serial port is never opened twice; without one the run opens and closes its own."""
        super().__init__(id="checklist-screen")
        self.home = home
        self.device = device
        self.session_of = session_of
        self.checklists: dict[str, dict] = {}
        self.cancel = threading.Event()
        self.closing = threading.Event()
        self.running = False
        self.run_id: str | None = None
        self.steps: list[Any] = []  # the checklist's Step objects of the run on screen
        self.state: dict[str, str] = {}
        self.messages: dict[str, str] = {}
        self.current: str | None = None
        self.asking: tuple[Any, Callable[[Any], None]] | None = None
        self.result: Any = None  # the finished Run
        self.writing = False

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"{self.device}: reading checklists…", id="cl-banner", classes="connecting")
        yield FitTable(COLUMNS, id="checklists", cursor_type="row", zebra_stripes=True)
        yield Input(placeholder="release directory (this checklist needs one): path, Enter starts",
                    id="cl-release", classes="hidden")
        yield Input(placeholder="model name (this checklist needs one)", id="cl-model", classes="hidden")
        with Vertical(id="cl-run", classes="hidden"):
            yield Static("", id="cl-title")
            with Horizontal(id="cl-body"):
                yield Static("", id="cl-steps")
                with Vertical(id="cl-right"):
                    yield Static("", id="cl-current")
                    yield Static("", id="cl-progress")
                    yield Input(placeholder="note (optional), Enter to keep it, then y / n", id="cl-note",
                                classes="hidden")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"checklist · {self.device}"
        self.load_worker()

    def on_unmount(self) -> None:
        self.closing.set()
        self.cancel.set()

    # ---- loading: the checklists, and this device's run that can be resumed --------------------------
    @work(thread=True, exclusive=True, group="checklist-load")
    def load_worker(self) -> None:
        from fieldkit.checklists import (
            list_checklists,
            list_runs,
            load_checklist_file,
            load_run,
        )
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        docs = []
        for name, (source, path) in sorted(list_checklists(self.home).items()):
            try:
                cl = load_checklist_file(path)
                docs.append({"name": name, "source": source, "checklist": cl})
            except FieldkitError as exc:
                docs.append({"name": name, "source": source, "checklist": None, "error": exc.message})
        resumable = None
        try:
            if self.home.journal_db.exists():
                with Journal.open_readonly(self.home) as journal:
                    runs = [r for r in list_runs(journal) if r["device"] == self.device and r["status"] in RESUMABLE]
                    if runs:
                        resumable = load_run(journal, runs[-1]["run_id"])
        except FieldkitError as exc:
            self.post_message(Loaded(docs, None, exc))
            return
        self.post_message(Loaded(docs, resumable))

    @on(Loaded)
    def _loaded(self, message: Loaded) -> None:
        table = self.query_one("#checklists", DataTable)
        table.clear()
        self.checklists = {d["name"]: d for d in message.checklists}
        for d in message.checklists:
            cl = d["checklist"]
            if cl is None:
                table.add_row(d["name"], "-", "-", d["source"], f"[red]INVALID: {escape(d['error'])}[/]", key=d["name"])
            else:
                table.add_row(d["name"], str(len(cl.steps)), ", ".join(cl.needs) or "-", d["source"], cl.title,
                              key=d["name"])
        self.set_banner("ok", f"{self.device}: pick a checklist and press Enter")
        self.selection_changed()
        if message.error is not None:
            self.notify(str(message.error), title="journal not read", severity="error", timeout=12)
        run = message.resumable
        if run is not None:
            from screens.modals import ResumeModal

            done = sum(1 for s in run.ordered() if s.status in ("passed", "failed", "skipped"))
            detail = (f"Run {run.run_id} ({run.status}{': ' + run.reason if run.reason else ''}), "
                      f"{done} of {len(run.checklist.steps)} steps done, started {run.started[:19]}.\n"
                      "Resume continues at its first unfinished step; an action already applied is not "
                      "applied twice.")

            def chosen(choice: str | None) -> None:
                if choice == "resume":
                    self.start_resume(run)
                elif choice is None:
                    self.app.pop_screen()

            self.app.push_screen(ResumeModal(f"Resume {run.checklist.name} on {self.device}?", detail), chosen)

    @on(DataTable.RowHighlighted, "#checklists")
    def selection_changed(self) -> None:
        cl = self.selected_checklist()
        needs_model = cl is not None and "model" in cl.needs and "release" not in cl.needs
        needs_release = cl is not None and "release" in cl.needs
        self.query_one("#cl-model", Input).set_class(not needs_model or self.running, "hidden")
        self.query_one("#cl-release", Input).set_class(not needs_release or self.running, "hidden")

    def selected_checklist(self) -> Any:
        table = self.query_one("#checklists", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        doc = self.checklists.get(str(key.value))
        return doc["checklist"] if doc else None

    # ---- starting and resuming --------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#checklists")
    @on(Input.Submitted, "#cl-model")
    @on(Input.Submitted, "#cl-release")
    def action_start(self) -> None:
        if self.running:
            return
        from fieldkit.checklists import RunInputs

        cl = self.selected_checklist()
        if cl is None:
            self.notify("this checklist file is not valid: `fieldkit checklist show FILE` lists its problems",
                        severity="error")
            return
        release = self.query_one("#cl-release", Input).value.strip() or None
        if "release" in cl.needs and not release:
            self.query_one("#cl-release", Input).focus()
            self.notify(f"{cl.name} needs the release it installs: type its directory (on the USB stick), "
                        "then Enter", severity="warning")
            return
        manifest, keys = None, []
        if "manifest" in cl.needs:  # the site manifest the TUI was started with (fieldkit --manifest)
            from fieldkit.errors import FieldkitError
            from fieldkit.versions import remembered_paths

            try:
                paths = remembered_paths(self.home)
            except FieldkitError as exc:
                paths = None
                self.notify(str(exc), severity="error")
            if paths is None:
                self.notify(f"{cl.name} checks the device against the signed site manifest: start fieldkit with "
                            "`fieldkit --manifest FILE --manifest-key PUB.pem` (remembered from then on), or run "
                            f"`fieldkit checklist run {cl.name} {self.device} --release DIR --manifest FILE --key PUB`",
                            severity="warning", timeout=12)
                return
            manifest, keys = str(paths[0]), [str(paths[1])]
        model = self.query_one("#cl-model", Input).value.strip() or None
        if "model" in cl.needs and not (model or release):
            self.query_one("#cl-model", Input).focus()
            self.notify(f"{cl.name} needs the model's name: type it, then Enter", severity="warning")
            return
        self.begin(cl.steps, f"{cl.name}: {cl.title}", {})
        self.run_worker_start(cl, RunInputs(release=release, model=model, manifest=manifest, keys=keys))

    def start_resume(self, run: Any) -> None:
        self.run_id = run.run_id
        states = {s.id: s.status for s in run.ordered()}
        self.begin(run.checklist.steps, f"{run.checklist.name}: {run.checklist.title} (resumed {run.run_id})",
                   states, {s.id: s.message for s in run.ordered()})
        self.run_worker_resume(run.run_id)

    def begin(self, steps: list[Any], title: str, states: dict[str, str],
              messages: dict[str, str] | None = None) -> None:
        self.running = True
        self.result = None
        self.cancel.clear()
        self.steps = list(steps)
        self.state = {s.id: states.get(s.id, "pending") for s in steps}
        self.messages = dict(messages or {})
        self.current = None
        self.query_one("#checklists").display = False
        self.query_one("#cl-model").add_class("hidden")
        self.query_one("#cl-release").add_class("hidden")
        self.query_one("#cl-run").remove_class("hidden")
        self.query_one("#cl-title", Static).update(f"[b]{title}[/]")
        self.query_one("#cl-progress", Static).update("")
        self.set_banner("running", f"connecting to {self.device} …   Esc stops the run (it can be resumed)")
        self.show_steps()
        self.refresh_bindings()

    def _run_hooks(self) -> dict:
        lent = self.session_of() if self.session_of is not None else None
        return {"ask": self.ask_bridge, "progress": lambda d: self.post_message(RunProgress(dict(d))),
                "cancel": self.cancel, "session": lent if lent is not None and not lent.closed else None}

    @work(thread=True, exclusive=True, group="checklist-run")
    def run_worker_start(self, checklist: Any, inputs: Any) -> None:
        from fieldkit.checklists import start_run
        from fieldkit.errors import FieldkitError

        try:
            run = start_run(self.home, checklist, self.device, inputs, **self._run_hooks(),
                            on_started=lambda rid: self.post_message(RunStarted(rid)))
            self.post_message(RunFinished(run))
        except FieldkitError as exc:
            self.post_message(RunFinished(error=exc))

    @work(thread=True, exclusive=True, group="checklist-run")
    def run_worker_resume(self, run_id: str) -> None:
        from fieldkit.checklists import resume_run
        from fieldkit.errors import FieldkitError

        try:
            self.post_message(RunFinished(resume_run(self.home, run_id, **self._run_hooks())))
        except FieldkitError as exc:
            self.post_message(RunFinished(error=exc))

    def ask_bridge(self, step: Any) -> Any:
        """The runner's interactive callback, in the worker thread: ask the UI, wait for the keys."""
        from fieldkit.errors import Cancelled

        box: list[Any] = []
        answered = threading.Event()

        def reply(answer: Any) -> None:
            box.append(answer)
            answered.set()

        self.post_message(AskStep(step, reply))
        while not answered.wait(0.1):
            if self.cancel.is_set() or self.closing.is_set():
                raise Cancelled(f"stopped by the technician at {step.id}")
        return box[0]

    # ---- the run on screen ------------------------------------------------------------------------------
    @on(RunStarted)
    def _started(self, message: RunStarted) -> None:
        self.run_id = message.run_id
        self.sub_title = f"checklist · {self.device} · {message.run_id}"

    @on(RunProgress)
    def _progress(self, message: RunProgress) -> None:
        d = message.data
        step = d.get("step")
        if d.get("event") == "step" and step in self.state:
            self.state[step] = SHOWN.get(d.get("status", ""), d.get("status", "pending"))
            if d.get("message"):
                self.messages[step] = str(d["message"])
            if self.state[step] == "running":
                self.current = step
                self.show_current(step)
                self.set_banner("running", f"{self.device}: {step} …   Esc stops the run (it can be resumed)")
                self.query_one("#cl-progress", Static).update("")
            self.show_steps()
        elif d.get("event") == "progress":
            self.query_one("#cl-progress", Static).update(self.describe_progress(d))

    @staticmethod
    def describe_progress(d: dict) -> str:
        from fieldkit.textfmt import human_bytes

        parts = [str(d[k]) for k in ("stage", "message") if d.get(k)]
        if d.get("bytes_total"):
            parts.append(f"{human_bytes(int(d.get('bytes_done') or 0))} / {human_bytes(int(d['bytes_total']))}")
        return " · ".join(parts) or "working …"

    def show_current(self, step_id: str, question: bool = False) -> None:
        step = next((s for s in self.steps if s.id == step_id), None)
        if step is None:
            return
        lines = [f"[b]{step.title}[/]"]
        if step.help:
            lines.append(step.help)
        if question:
            lines.append(f"\n[b]{step.question or step.title}[/]\n[b]y[/] yes · [b]n[/] no · "
                         "[b]e[/] add a note first")
        self.query_one("#cl-current", Static).update("\n".join(lines))

    @on(AskStep)
    def _ask(self, message: AskStep) -> None:
        self.asking = (message.step, message.reply)
        self.current = message.step.id
        self.state[message.step.id] = "running"
        self.show_steps()
        self.show_current(message.step.id, question=True)
        note = self.query_one("#cl-note", Input)
        note.value = ""
        note.remove_class("hidden")
        self.set_banner("warn", f"{self.device}: answer the question: y yes · n no")
        self.refresh_bindings()

    def answer(self, yes: bool) -> None:
        if self.asking is None:
            return
        from fieldkit.checklists import Answer

        step, reply = self.asking
        self.asking = None
        note = self.query_one("#cl-note", Input)
        text = note.value.strip()
        note.add_class("hidden")
        self.query_one("#cl-current", Static).update(f"[b]{step.title}[/]\nanswered {'yes' if yes else 'no'}"
                                                     + (f" · note: {text}" if text else ""))
        self.set_banner("running", f"{self.device}: running …   Esc stops the run (it can be resumed)")
        self.refresh_bindings()
        reply(Answer(yes, text))

    def action_answer_yes(self) -> None:
        self.answer(True)

    def action_answer_no(self) -> None:
        self.answer(False)

    def action_note(self) -> None:
        if self.asking is not None:
            self.query_one("#cl-note", Input).focus()

    @on(Input.Submitted, "#cl-note")
    def _note_done(self) -> None:
        self.set_focus(None)  # y / n answer now (they would type into the note otherwise)

    @on(RunFinished)
    def _finished(self, message: RunFinished) -> None:
        self.running = False
        self.asking = None
        self.query_one("#cl-note", Input).add_class("hidden")
        self.refresh_bindings()
        if message.error is not None:
            if self.current:
                self.state[self.current] = "stopped"
            self.show_steps()
            self.failed(message.error)
            return
        run = message.run
        self.result = run
        self.run_id = run.run_id
        for s in run.ordered():  # the core's record is the truth
            self.state[s.id] = SHOWN.get(s.status, s.status)
            self.messages[s.id] = s.message
        self.current = None
        self.show_steps()
        reason = f" ({run.reason})" if run.reason else ""
        if run.status == "passed":
            self.set_banner("ok", f"PASSED: {run.checklist.name} on {self.device}   w writes the report")
            self.notify(f"{run.checklist.name} passed on {self.device}", title="passed")
        elif run.status == "failed":
            self.set_banner("crit", f"FAILED{reason}   w writes the report")
            self.notify(f"{run.checklist.name} failed on {self.device}{reason}", title="failed", severity="error")
        else:
            self.set_banner("warn", f"STOPPED{reason}: run {run.run_id} can be resumed (c on this device "
                                    f"offers it, or `fieldkit checklist resume {run.run_id}`)")
        self.query_one("#cl-progress", Static).update(f"run {run.run_id}: {run.status}")

    def failed(self, exc: Exception) -> None:
        from fieldkit.errors import HostKeyError

        first = str(exc).splitlines()[0]
        resumable = f"; run {self.run_id} can be resumed" if self.run_id else ""
        self.set_banner("crit", f"run not finished: {first}{resumable}")
        if isinstance(exc, HostKeyError):
            self.app.ask_host_key(self.device, getattr(exc, "host", self.device), exc)
            return
        self.notify(str(exc), title="checklist", severity="error", timeout=12)

    # ---- the report -------------------------------------------------------------------------------------
    def action_write_report(self) -> None:
        if self.result is None or self.result.status not in ("passed", "failed") or self.writing:
            return
        self.writing = True
        self.refresh_bindings()
        self.report_worker(self.result.run_id)

    @work(thread=True, exclusive=True, group="checklist-report")
    def report_worker(self, run_id: str) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.report import write_report

        try:
            self.post_message(ReportWritten(write_report(self.home, run_id, self.home.reports_dir / run_id)))
        except FieldkitError as exc:
            self.post_message(ReportWritten(None, exc))

    @on(ReportWritten)
    def _report(self, message: ReportWritten) -> None:
        self.writing = False
        self.refresh_bindings()
        if message.error is not None or message.doc is None:
            self.notify(str(message.error), title="report not written", severity="error", timeout=12)
            return
        self.query_one("#cl-progress", Static).update(f"report: {message.doc['html']}\n"
                                                      f"signed record: {message.doc['json']}")
        self.notify(message.doc["html"], title="report written", timeout=10)

    # ---- display helpers -----------------------------------------------------------------------------
    def show_steps(self) -> None:
        lines = []
        for s in self.steps:
            status = self.state.get(s.id, "pending")
            label = f"{s.title[:44]:<44}"
            label = f"[b]{label}[/]" if status == "running" else label
            msg = self.messages.get(s.id, "") if status != "running" else ""
            lines.append(f"{ICONS.get(status, status)} {label} [dim]{msg[:40]}[/]".rstrip())
        self.query_one("#cl-steps", Static).update("\n".join(lines))

    def set_banner(self, status: str, text: str) -> None:
        banner = self.query_one("#cl-banner", Static)
        banner.set_classes({"ok": "ok", "warn": "warn", "crit": "crit", "running": "connecting"}.get(status, status))
        banner.update(text)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("answer_yes", "answer_no", "note"):
            return True if self.asking is not None else None
        if action == "write_report":
            ok = self.result is not None and self.result.status in ("passed", "failed") and not self.writing
            return True if ok else None
        if action == "start":
            return None if self.running or self.result is not None else True
        return True

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """A fault of fieldkit's (not a device's) must not take the screen down: say it, go on."""
        if event.state != WorkerState.ERROR:
            return
        if event.worker.group == "checklist-run":
            self.running = False
            self.asking = None
        elif event.worker.group == "checklist-report":
            self.writing = False
        self.refresh_bindings()
        err = event.worker.error
        self.set_banner("crit", f"internal error: {type(err).__name__}: {err}")
        self.notify(f"{type(err).__name__}: {err}", title="fieldkit error", severity="error", timeout=15)

    # ---- stop / back ---------------------------------------------------------------------------------
    def action_cancel_or_back(self) -> None:
        if self.running:
            if not self.cancel.is_set():
                self.cancel.set()
                self.set_banner("running", f"stopping the run on {self.device} after the current step …")
            return
        self.app.pop_screen()
