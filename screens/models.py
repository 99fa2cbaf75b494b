"""Models on one device: what is installed (active/previous, floor, state, signer), install a signed
release with its stage list and transfer progress, roll back (asked first, naming both versions),
verify. Every device operation is a core call (fieldkit.modelstore, fieldkit.install) made from a
thread worker that only posts messages; the handlers here own the widgets."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, ProgressBar, Static
from textual.worker import Worker, WorkerState

from screens.actions import MODELS, bindings
from screens.columns import Col, FitTable
from screens.modelslisted import ModelsListed

COLUMNS = [Col("name", "Model", rank=0, min_width=8), Col("active", "Active", rank=0), Col("previous", "Prev", rank=3),
           Col("installed", "Installed", rank=5, min_width=8), Col("floor", "Floor", rank=4),
           Col("state", "State", rank=1), Col("signer", "Signer", rank=6),
           Col("verified", "Verified", rank=2, min_width=10, flex=True)]
"""What runs and whether it is sound stay on a small terminal; history and the signer give way."""

INSTALL_STAGES = ["verify", "transfer", "place", "activate", "smoke", "commit"]
ROLLBACK_STAGES = ["activate", "smoke", "commit"]
STAGE_LABELS = {"verify": "verify signature (laptop)", "transfer": "transfer", "place": "verify on device (place)",
                "activate": "activate", "smoke": "smoke test", "commit": "commit", "revert": "revert"}
ICONS = {"pending": "[dim]·[/]", "running": "[bold cyan]▶[/]", "ok": "[green]✓[/]", "failed": "[red]✗[/]",
         "refused": "[red]⊘[/]", "skipped": "[dim]–[/]", "cancelled": "[yellow]■[/]"}
# Past this point the device is switching versions: it finishes by itself (commit or revert).
NO_CANCEL = ("activate", "smoke", "commit", "revert")


# ---- messages: the workers post these, the handlers below own the state ---------------------------
class OpProgress(Message):
    def __init__(self, data: dict) -> None:
        super().__init__()
        self.data = data


class AskConfirm(Message):
    """The install verified the release against the device's keys: ask before any byte moves."""

    def __init__(self, result: Any, reply: Callable[[bool], None]) -> None:
        super().__init__()
        self.result, self.reply = result, reply


class OpFinished(Message):
    def __init__(self, kind: str, result: Any = None, error: Exception | None = None,
                 cancelled: Exception | None = None, doc: dict | None = None) -> None:
        super().__init__()
        self.kind, self.result, self.error, self.cancelled, self.doc = kind, result, error, cancelled, doc


@dataclass
class Run:
    """The operation on screen (install or rollback) as the progress events told it."""

    kind: str
    title: str
    stages: list[str]
    state: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)
    current: str | None = None
    bytes_done: int = 0
    bytes_total: int = 0
    expected_active: str | None = None
    found_active: str | None = None


def short_signer(signer: str | None, width: int = 14) -> str:
    if not signer:
        return "-"
    text = signer.removeprefix("SHA256:")
    return text if len(text) <= width else text[: width - 1] + "…"


class ModelsScreen(Screen):
    BINDINGS = bindings(MODELS)
    AUTO_FOCUS = "#models"

    def __init__(self, home: Any, device: str, *, borrow: Callable[[], Any] | None = None,
                 models: list[dict] | None = None, load: bool = True) -> None:
        """``borrow`` returns the device screen's open session (reused while it is open, so a serial
        port is never opened twice); ``models``/``load=False`` show a fixed list (snapshots)."""
        super().__init__(id="models-screen")
        self.home = home
        self.device = device
        self.borrow = borrow
        self.initial = models
        self.load = load
        self.models: dict[str, dict] = {}
        self.verified: dict[str, str] = {}
        self.cancel = threading.Event()
        self.closing = threading.Event()
        self.busy: str | None = None  # "install" | "rollback" | "verify" while one runs
        self.listing = False
        self.keep_banner = False
        self.run: Run | None = None
        self.last_dir: Path | None = None
        self._own: Any = None  # a session this screen opened (closed when it goes)
        self._session_lock = threading.Lock()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static(f"{self.device}: reading installed models…", id="models-banner", classes="connecting")
        yield FitTable(COLUMNS, id="models", cursor_type="row", zebra_stripes=True)
        yield Static("", id="models-note")
        with Vertical(id="op-panel", classes="hidden"):
            yield Static("", id="op-title")
            with Horizontal(id="op-body"):
                yield Static("", id="stages")
                with Vertical(id="op-right"):
                    yield Static("", id="transfer-label")
                    yield ProgressBar(total=100, show_eta=False, id="transfer-bar")
                    yield Static("", id="op-note")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = f"models · {self.device}"
        if self.initial is not None:
            self.show_models(self.initial)
        if self.load:
            self.action_refresh()

    def on_unmount(self) -> None:
        self.closing.set()
        self.cancel.set()
        own, self._own = self._own, None
        if own is not None:
            threading.Thread(target=own.close, daemon=True).start()

    # ---- the session: the device screen's while it is open, else one of our own ------------------
    def session(self) -> Any:
        """Called from workers only (it may connect)."""
        from fieldkit.devices import open_session

        if self.borrow is not None:
            lent = self.borrow()
            if lent is not None and not lent.closed:
                return lent
        with self._session_lock:
            if self._own is None or self._own.closed:
                self._own = open_session(self.device, self.home, timeout=15.0)
                for warning in getattr(self._own, "warnings", None) or []:  # e.g. an outdated serial agent
                    self.app.call_from_thread(self.notify, warning, severity="warning", timeout=10)
            return self._own

    # ---- list ----------------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        if self.listing or self.busy:
            return
        self.listing = True
        self.list_worker()

    @work(thread=True, exclusive=True, group="models-list")
    def list_worker(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.modelstore import list_models

        try:
            doc = list_models(self.session())
            self.post_message(ModelsListed(self.device, doc["models"]))
        except FieldkitError as exc:
            self.post_message(ModelsListed(self.device, None, exc))

    @on(ModelsListed)
    def _listed(self, message: ModelsListed) -> None:
        if message.device != self.device:
            return
        message.stop()
        self.listing = False
        self.refresh_bindings()
        if message.error is not None:
            self.keep_banner = False
            self.failed(message.error, f"{self.device}: models not read")
            return
        models = message.models or []
        self.show_models(models)
        for screen in self.app.screen_stack:  # the fleet keeps its model column from this
            if screen is not self:
                screen.post_message(ModelsListed(self.device, models))

    def show_models(self, models: list[dict]) -> None:
        """Rows keyed by model name, updated cell by cell."""
        table = self.query_one("#models", DataTable)
        self.models = {m["name"]: m for m in models}
        with self.app.batch_update():
            for m in models:
                cells = self.cells(m)
                if m["name"] in table.rows:
                    for col, value in zip(COLUMNS, cells):
                        table.update_cell(m["name"], col.key, value)
                else:
                    table.add_row(*cells, key=m["name"])
            for key in [k for k in table.rows if str(k.value) not in self.models]:
                table.remove_row(key)
        if self.keep_banner:  # the list read after an operation: its result stays on the banner
            self.keep_banner = False
        elif not self.busy:
            if models:
                n = len(models)
                self.set_banner("ok", f"{self.device}: {n} model{'s' if n != 1 else ''} installed   "
                                      "i install · R roll back · v verify")
            else:
                self.set_banner("ok", f"{self.device}: no models installed yet; press i to install a release")
        self.refresh_bindings()

    def cells(self, m: dict) -> list[str]:
        state = m.get("state") or "-"
        if state != "committed":
            state = f"[yellow]{state}[/]"
        return [m["name"], f"[b]{m.get('active') or '-'}[/]", m.get("previous") or "-",
                " ".join(m.get("installed") or []) or "-", str(m.get("floor", 0)), state,
                short_signer(m.get("signer"), 11), self.verified.get(m["name"], "[dim]not yet[/]")]

    def selected(self) -> dict | None:
        table = self.query_one("#models", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self.models.get(str(key.value))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("install", "verify", "refresh"):
            return None if (self.busy or (action != "refresh" and self.listing and not self.models)) else True
        if action == "rollback":
            m = self.selected()
            return True if (not self.busy and m is not None and m.get("previous")) else None
        return True

    # ---- install --------------------------------------------------------------------------------------
    def action_install(self) -> None:
        if self.busy:
            return
        from screens.modals import ReleasePickerModal

        def picked(path: Path | None) -> None:
            if path is not None:
                self.last_dir = path.parent
                self.start_install(path)

        self.app.push_screen(ReleasePickerModal(self.device, self.last_dir or Path.cwd()), picked)

    def start_install(self, path: Path) -> None:
        self.busy = "install"
        self.cancel.clear()
        self.run = Run("install", f"Install from {path}", list(INSTALL_STAGES))
        self.show_run()
        self.set_banner("running", f"installing on {self.device}: verifying {path.name} (Esc cancels)")
        self.refresh_bindings()
        self.install_worker(path)

    @work(thread=True, exclusive=True, group="models-op")
    def install_worker(self, path: Path) -> None:
        from fieldkit.errors import Cancelled, FieldkitError
        from fieldkit.install import install_release

        try:
            result = install_release(self.session(), path, confirm=self.confirm_from_worker,
                                     progress=lambda d: self.post_message(OpProgress(dict(d))), cancel=self.cancel)
            self.post_message(OpFinished("install", result=result))
        except Cancelled as exc:
            self.post_message(OpFinished("install", cancelled=exc))
        except FieldkitError as exc:
            self.post_message(OpFinished("install", error=exc))

    def confirm_from_worker(self, result: Any) -> bool:
        """The core's confirm hook, in the worker thread: ask on screen, wait for the answer."""
        answer: dict[str, bool] = {}
        done = threading.Event()

        def reply(ok: bool) -> None:
            answer["ok"] = bool(ok)
            done.set()

        self.post_message(AskConfirm(result, reply))
        while not done.wait(0.1):
            if self.cancel.is_set() or self.closing.is_set():
                return False
        return answer.get("ok", False)

    @on(AskConfirm)
    def _ask_confirm(self, message: AskConfirm) -> None:
        from screens.modals import ConfirmModal

        rel = message.result.release
        before = message.result.before
        if self.run is not None:
            self.run.title = (f"Install {rel['name']} {rel['version']} · signer {short_signer(rel['signer'], 24)}"
                              f" · active now {before or 'none'}")
            self.show_run()
        detail = (f"Active now: {before or 'none'}\nSigned by {rel['signer']} (a key {self.device} trusts)\n"
                  f"Digest sha256:{(rel['digest'] or '')[:16]}…\n"
                  "It is copied, verified again by the device, activated, smoke-tested, then committed; "
                  "a failed smoke test brings the active version back.")
        self.app.push_screen(ConfirmModal(f"Install {rel['name']} {rel['version']} on {self.device}?", detail),
                             lambda ok: message.reply(bool(ok)))

    # ---- rollback -------------------------------------------------------------------------------------
    def action_rollback(self) -> None:
        m = self.selected()
        if self.busy or m is None:
            return
        if not m.get("previous"):
            self.notify(f"{m['name']} has no previous version on {self.device}", severity="warning")
            return
        from screens.modals import ConfirmModal

        name, active, previous = m["name"], m.get("active"), m["previous"]

        def confirmed(ok: bool | None) -> None:
            if ok:
                self.start_rollback(name, active, previous)

        detail = (f"{self.device} switches {name} to {previous}, runs its smoke test and commits it; if the "
                  f"smoke test fails, {active} comes back. The security floor ({m.get('floor', 0)}) still holds.")
        self.app.push_screen(ConfirmModal(f"Roll back {name} from {active} to {previous} on {self.device}?",
                                          detail), confirmed)

    def start_rollback(self, name: str, active: str | None, previous: str) -> None:
        self.busy = "rollback"
        self.cancel.clear()
        self.run = Run("rollback", f"Roll back {name} from {active} to {previous}", list(ROLLBACK_STAGES),
                       expected_active=active)
        self.show_run()
        self.set_banner("running", f"rolling back {name} to {previous} on {self.device}")
        self.refresh_bindings()
        self.rollback_worker(name, previous)

    @work(thread=True, exclusive=True, group="models-op")
    def rollback_worker(self, name: str, target: str) -> None:
        from fieldkit.errors import Cancelled, FieldkitError
        from fieldkit.install import rollback_model

        run = self.run
        expected = run.expected_active if run else None

        def still_as_shown(result: Any) -> bool:  # roll back exactly what the dialog named
            if run is not None:
                run.found_active = result.before
            return result.before == expected

        try:
            result = rollback_model(self.session(), name, to=target, confirm=still_as_shown,
                                    progress=lambda d: self.post_message(OpProgress(dict(d))))
            self.post_message(OpFinished("rollback", result=result))
        except Cancelled as exc:
            self.post_message(OpFinished("rollback", cancelled=exc))
        except FieldkitError as exc:
            self.post_message(OpFinished("rollback", error=exc))

    # ---- verify ---------------------------------------------------------------------------------------
    def action_verify(self) -> None:
        if self.busy:
            return
        self.busy = "verify"
        self.set_banner("running", f"{self.device} is re-hashing every installed model file …")
        self.refresh_bindings()
        self.verify_worker()

    @work(thread=True, exclusive=True, group="models-op")
    def verify_worker(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.modelstore import verify_models

        try:
            self.post_message(OpFinished("verify", doc=verify_models(self.session())))
        except FieldkitError as exc:
            self.post_message(OpFinished("verify", error=exc))

    # ---- progress and results -------------------------------------------------------------------------
    @on(OpProgress)
    def _progress(self, message: OpProgress) -> None:
        run = self.run
        if run is None:
            return
        d = message.data
        stage = d.get("stage")
        if stage and stage != run.current:
            if run.current and run.state.get(run.current) == "running":
                run.state[run.current] = "ok"
            if stage not in run.stages:
                run.stages.append(stage)  # revert
            run.current = stage
            run.state[stage] = "running"
        if d.get("bytes_total"):
            run.bytes_done, run.bytes_total = int(d.get("bytes_done") or 0), int(d["bytes_total"])
            self.show_transfer(run.bytes_done, run.bytes_total, d.get("rate_bps"), d.get("eta_s"))
        if d.get("message") and not d.get("bytes_total"):
            hint = "" if (run.kind != "install" or stage in NO_CANCEL) else "  (Esc cancels)"
            self.query_one("#op-note", Static).update(f"{d['message']}{hint}")
        self.show_run()

    def show_transfer(self, done: int, total: int, rate: float | None, eta: float | None) -> None:
        from fieldkit.textfmt import transfer_text

        self.query_one("#transfer-bar", ProgressBar).update(total=max(total, 1), progress=done)
        self.query_one("#transfer-label", Static).update(transfer_text(done, total, rate, eta, percent=False))

    @on(OpFinished)
    def _finished(self, message: OpFinished) -> None:
        kind = message.kind
        self.busy = None
        self.refresh_bindings()
        if kind == "verify":
            if message.error is not None:
                self.failed(message.error, "verify failed")
            else:
                self.show_verify(message.doc or {})
            return
        run = self.run
        if message.cancelled is not None:
            self.show_cancelled(message.cancelled)
        elif message.error is not None:
            if run is not None and run.current:
                run.state[run.current] = "failed"
            self.show_run()
            self.failed(message.error, f"{kind} failed")
        else:
            self.show_result(message.result)
        self.keep_banner = True
        self.action_refresh()

    def show_result(self, result: Any) -> None:
        run = self.run
        if run is not None:
            for s in result.stages:  # the core's record is the truth
                if s.name not in run.stages:
                    run.stages.append(s.name)
                run.state[s.name] = s.status
                run.seconds[s.name] = s.seconds
            run.current = None
            if run.kind == "install" and result.release.get("name"):
                rel = result.release
                run.title = (f"Install {rel['name']} {rel['version']} · signer {short_signer(rel['signer'], 24)}"
                             f" · before {result.before or 'none'}")
            if run.state.get("transfer") == "ok" and run.bytes_total:
                self.query_one("#transfer-bar", ProgressBar).update(total=run.bytes_total, progress=run.bytes_total)
            self.show_run()
        status = {"committed": "ok", "reverted": "warn"}.get(result.result, "crit")
        self.set_banner(status, f"{result.result.upper()}: {result.message}")
        self.query_one("#op-note", Static).update(f"{result.device}: {result.before or 'none'} → "
                                                  f"{result.after or 'none'} ({result.result})")
        if result.result == "committed":
            self.notify(result.message, title=result.result)
        else:
            self.notify(str(result.error) if result.error is not None else result.message,
                        title=result.result, severity="warning" if result.result == "reverted" else "error",
                        timeout=12)

    def show_cancelled(self, exc: Exception) -> None:
        from fieldkit.textfmt import human_bytes

        run = self.run
        if run is None:
            return
        stage = run.current
        if stage:
            run.state[stage] = "cancelled"
        if run.kind == "rollback":
            text = (f"nothing was changed: the active version of {self.device} is now "
                    f"{run.found_active or 'none'}, not {run.expected_active or 'none'} as listed; check the list "
                    "and try again") if run.found_active != run.expected_active else f"{exc}"
        elif not self.cancel.is_set():
            text = f"not confirmed: nothing was changed on {self.device}"
        elif stage in (None, "verify") or (stage == "transfer" and run.bytes_done == 0):
            text = f"cancelled before any byte was copied: nothing was changed on {self.device}"
        elif stage == "transfer":
            text = (f"transfer paused at {human_bytes(run.bytes_done)} of {human_bytes(run.bytes_total)}; "
                    "install again to resume (nothing was activated)")
        elif stage == "place":
            text = (f"cancelled while {self.device} verified its copy: nothing was activated; the copy stays "
                    "staged, install again to finish")
        else:
            text = f"{exc}"
        self.show_run()
        self.query_one("#op-note", Static).update(text)
        self.set_banner("warn", f"CANCELLED: {text}")

    def show_verify(self, doc: dict) -> None:
        by_model: dict[str, list[dict]] = {}
        for c in doc.get("models", []):
            by_model.setdefault(c["name"], []).append(c)
        problems = []
        for name, checks in by_model.items():
            bad = [c for c in checks if not c["ok"]]
            if bad:
                self.verified[name] = f"[red]✗ {len(bad)} bad[/]"
                problems += [f"{c['name']} {c['version']}: {p}" for c in bad for p in c["problems"]]
            else:
                self.verified[name] = f"[green]✓ {len(checks)} ok[/]"
        self.show_models(list(self.models.values()))
        note = self.query_one("#models-note", Static)
        if doc.get("ok", True):
            n = sum(len(v) for v in by_model.values())
            self.set_banner("ok", f"VERIFIED: {n} installed version(s) on {self.device} match their signatures")
            note.update("")
            self.notify(f"{self.device}: every installed model file matches its signature", title="verified")
        else:
            self.set_banner("crit", f"VERIFY FAILED on {self.device}: files no longer match their signature")
            note.update("\n".join(problems[:4]) + (f"\n… and {len(problems) - 4} more" if len(problems) > 4 else ""))
            self.notify("\n".join(problems[:6]), title="verify failed", severity="error", timeout=15)

    # ---- display helpers ------------------------------------------------------------------------------
    def show_run(self) -> None:
        run = self.run
        if run is None:
            return
        panel = self.query_one("#op-panel")
        panel.remove_class("hidden")
        self.query_one("#op-title", Static).update(f"[b]{run.title}[/]")
        lines = []
        for name in run.stages:
            status = run.state.get(name, "pending")
            secs = f"{run.seconds[name]:.1f} s" if name in run.seconds else ""
            label = f"{STAGE_LABELS.get(name, name):<25}"
            label = f"[b]{label}[/]" if status == "running" else label
            lines.append(f"{ICONS.get(status, status)} {label} {secs}")
        self.query_one("#stages", Static).update("\n".join(lines))
        bar = self.query_one("#transfer-bar", ProgressBar)
        show_bar = run.kind == "install" and (run.bytes_total > 0 or self.busy == "install")
        bar.display = show_bar
        self.query_one("#transfer-label", Static).display = show_bar

    def set_banner(self, status: str, text: str) -> None:
        banner = self.query_one("#models-banner", Static)
        banner.set_classes({"ok": "ok", "warn": "warn", "crit": "crit", "running": "connecting"}.get(status, status))
        banner.update(text)

    def failed(self, exc: Exception, title: str) -> None:
        from fieldkit.errors import HostKeyError

        self.set_banner("crit", f"{title}: {str(exc).splitlines()[0]}")
        if isinstance(exc, HostKeyError):
            self.app.ask_host_key(self.device, getattr(exc, "host", self.device), exc, on_trusted=self.action_refresh)
            return
        self.notify(str(exc), title=title, severity="error", timeout=12)

    @on(Worker.StateChanged)
    def _worker_failed(self, event: Worker.StateChanged) -> None:
        """A fault of fieldkit's (not a device's) must not take the screen down: say it, go on."""
        if event.state != WorkerState.ERROR:
            return
        group = event.worker.group
        if group == "models-list":
            self.listing = False
        elif group == "models-op":
            self.busy = None
            if self.run is not None and self.run.current:
                self.run.state[self.run.current] = "failed"
                self.show_run()
        self.refresh_bindings()
        err = event.worker.error
        self.set_banner("crit", f"internal error: {type(err).__name__}: {err}")
        self.notify(f"{type(err).__name__}: {err}", title="fieldkit error", severity="error", timeout=15)

    # ---- cancel / back -------------------------------------------------------------------------------
    def action_cancel_or_back(self) -> None:
        if self.busy == "install":
            stage = self.run.current if self.run else None
            if stage in NO_CANCEL:
                self.notify(f"{STAGE_LABELS.get(stage, stage)} under way: it finishes by itself (commit, or "
                            "the previous version back); it cannot be stopped half-way", severity="warning")
                return
            if not self.cancel.is_set():
                self.cancel.set()
                self.query_one("#op-note", Static).update("cancelling …")
                self.set_banner("running", f"cancelling the install on {self.device} …")
            return
        if self.busy == "rollback":
            self.notify("the rollback is switching versions on the device: it finishes by itself",
                        severity="warning")
            return
        if self.busy == "verify":
            self.notify("the device is still re-hashing; wait for its result", severity="warning")
            return
        self.app.pop_screen()
