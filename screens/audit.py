"""Audit: the operator journal — entries (filter by a part of the device name and by action), chain
status, pending sync, export and sync with progress, and why a sync failed. All work is
fieldkit.journal/auditbundle/sync.

It opens at once on a journal of any size: the table reads the newest page and the next one when
the cursor gets near its end (keyset paging on seq), and the chain is checked in a worker from where
the last passing verification stopped (``Journal.verify(incremental=True)``); ``v`` checks it all."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, Label, OptionList, ProgressBar, Static

from screens.actions import AUDIT, bindings
from screens.columns import Col, FitTable

PAGE = 60
"""Entries read at a time: a screenful (a 24-line terminal shows about 15) and a few more screens; the
next page is read when the cursor gets near the end (keyset paging: cost independent of the size)."""
MORE_WHEN = 15
"""Read the next page when the cursor comes this close to the last row read."""

COLUMNS = [Col("seq", "Seq", rank=3), Col("time", "Time (UTC)", rank=2, min_width=8),
           Col("operator", "Operator", rank=5, min_width=8, max_width=20),
           Col("device", "Device", rank=0, min_width=8, max_width=18), Col("action", "Action", rank=0, max_width=22),
           Col("outcome", "Outcome", rank=0), Col("details", "Details", rank=0, min_width=16, flex=True)]
"""Outcome and Details always stay (a technician reads what happened and why); the time, the seq and
the operator give way first on a small terminal; Enter shows the whole entry."""

OUTCOME_STYLE = {"ok": "[green]ok[/]", "failed": "[red]failed[/]", "refused": "[magenta]refused[/]",
                 "cancelled": "[yellow]cancelled[/]", "info": "[cyan]info[/]"}


class AuditEvent(Message):
    def __init__(self, kind: str, text: str, ok: bool = True, done: int | None = None, total: int | None = None) -> None:
        super().__init__()
        self.kind, self.text, self.ok, self.done, self.total = kind, text, ok, done, total


class AuditScreen(Screen):
    BINDINGS = bindings(AUDIT)
    AUTO_FOCUS = "#entries"

    def __init__(self, home: Any) -> None:
        super().__init__(id="audit")
        self.home = home
        self.cancel = threading.Event()
        self.busy = False
        self.chain = "[dim]chain: checking what was added since the last verification…[/]"
        self.journal: Any = None  # a read-only Journal while the screen is open
        self.loaded: dict[str, Any] = {}  # row key (seq) -> Entry, for the detail view
        self.oldest: int | None = None  # smallest seq read so far (the next page is older)
        self.more = False
        self.matching = 0
        self.summary = ""

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Static("", id="audit-status")
        with Horizontal(id="audit-filters"):
            yield Input(placeholder="device (part of its name)", id="f-device")
            yield Input(placeholder="action (e.g. health, trust, bench)", id="f-action")
            yield Input(placeholder="sync URL (https://…)", id="sync-url")
        yield FitTable(COLUMNS, id="entries", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        self.sub_title = "audit journal"
        try:
            self.journal = Journal.open_readonly(self.home)
        except FieldkitError as exc:
            self.query_one("#audit-status", Static).update(escape(str(exc)))
            return
        self.reload()
        # the chain status is part of what this screen shows; checked once the page is on screen
        self.call_after_refresh(self.start_verify, True)

    def on_unmount(self) -> None:
        self.cancel.set()
        journal, self.journal = self.journal, None
        if journal is not None:
            journal.close()

    # ---- entries, a page at a time ----------------------------------------------------------------
    def filters(self) -> dict:
        return {"device_contains": self.query_one("#f-device", Input).value.strip() or None,
                "action": self.query_one("#f-action", Input).value.strip() or None}

    def reload(self) -> None:
        """Read the status and the newest page again (filters changed, an export or sync ran)."""
        if self.journal is None:
            return
        table = self.query_one("#entries", FitTable)
        table.clear()
        self.loaded.clear()
        self.oldest, self.more = None, True
        st = self.journal.status()
        last = st.get("last_sync") or {}
        self.summary = (f"{st['entries']:,} entries · {st['pending_sync']:,} pending sync · last sync "
                        + (f"{last.get('time', '')[:19]} to {last.get('target')}" if last else "never")
                        + f" · operator {st.get('operator')} · key {st['key_fingerprint']}")
        self.matching = self.journal.count(**self.filters())
        self.load_page()
        self.show_status()

    def load_page(self) -> None:
        if self.journal is None or not self.more:
            return
        page = self.journal.entries(**self.filters(), newest=True, limit=PAGE, before_seq=self.oldest)
        self.more = len(page) == PAGE
        if not page:
            return
        self.oldest = page[0].seq
        table = self.query_one("#entries", FitTable)
        with self.app.batch_update():
            for e in reversed(page):  # newest first
                key = str(e.seq)
                self.loaded[key] = e
                table.add_row(str(e.seq), e.time[:19].replace("T", " "), escape(e.operator), escape(e.device or "-"),
                              escape(e.action), OUTCOME_STYLE.get(e.outcome, escape(e.outcome)),
                              escape(details_line(e.details)), key=key)

    def show_status(self) -> None:
        f = self.filters()
        what = " and ".join(x for x in (f"device ~ {f['device_contains']!r}" if f["device_contains"] else "",
                                        f"action {f['action']!r}" if f["action"] else "") if x)
        if not what:
            shown = f"newest first, {len(self.loaded):,} read"
        elif self.matching == 0:
            shown = f"[yellow bold]no entry matches {escape(what)}[/]"
        else:
            shown = f"{self.matching:,} entries match {escape(what)}, newest first"
        self.query_one("#audit-status", Static).update(f"{escape(self.summary)}\n{self.chain} · {shown}")

    @on(DataTable.RowHighlighted, "#entries")
    def _near_the_end(self, event: DataTable.RowHighlighted) -> None:
        table = self.query_one("#entries", FitTable)
        if self.more and event.cursor_row >= table.row_count - MORE_WHEN:
            self.load_page()
            self.show_status()

    @on(Input.Changed, "#f-device")
    @on(Input.Changed, "#f-action")
    def _filter(self) -> None:
        self.reload()

    @on(Input.Submitted, "#f-device")
    @on(Input.Submitted, "#f-action")
    def _filter_done(self) -> None:
        self.query_one("#entries", FitTable).focus()

    def action_reload_entries(self) -> None:
        self.reload()

    @on(DataTable.RowSelected, "#entries")
    def action_entry_detail(self) -> None:
        """The whole entry: every field, its details as indented JSON, its hash and signature."""
        from screens.modals import DetailModal

        key = self.query_one("#entries", FitTable).selected_key()
        e = self.loaded.get(key) if key else None
        if e is None:
            return
        fields = [("Seq", str(e.seq)), ("Time (UTC)", e.time), ("Operator", e.operator), ("Device", e.device or "-"),
                  ("Action", e.action), ("Outcome", e.outcome), ("Hash", e.hash), ("Previous", e.prev)]
        body = json.dumps(e.details, indent=2, ensure_ascii=False, sort_keys=True)
        self.app.push_screen(DetailModal(f"journal entry {e.seq}: {e.action} {e.outcome}", fields, body))

    # ---- long operations in workers -------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("verify", "export", "sync"):
            return None if self.busy else True
        return True

    def _start(self) -> bool:
        if self.busy:
            return False
        self.busy = True
        self.cancel.clear()
        self.refresh_bindings()
        return True

    def start_verify(self, incremental: bool) -> None:
        if self._start():
            self.verify_worker(incremental)

    def action_verify(self) -> None:
        """v: every entry, checkpoint and device journal (on opening only what was added is checked)."""
        if not self.busy:
            self.chain = "[dim]chain: checking every entry…[/]"
            self.show_status()
        self.start_verify(incremental=False)

    @work(thread=True, exclusive=True, group="audit")
    def verify_worker(self, incremental: bool) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        try:
            j = Journal.open_readonly(self.home)  # its own connection: the screen keeps reading
            try:
                res = j.verify(cancel=self.cancel, incremental=incremental,
                               progress=lambda seq: self.post_message(AuditEvent("progress", "", done=seq,
                                                                                 total=j.head()[0])))
            finally:
                j.close()
            self.post_message(AuditEvent("verify", verify_text(res, incremental), ok=res.ok))
        except FieldkitError as exc:
            self.post_message(AuditEvent("verify", str(exc), ok=False))

    def action_export(self) -> None:
        """Ask where (a mounted USB stick first), then write the bundle there."""
        from fieldkit.auditbundle import removable_mounts

        if self.busy:
            return

        def chosen(out: Path | None) -> None:
            if out is not None and self._start():
                self.export_worker(out)

        self.app.push_screen(ExportModal(self.home, removable_mounts()), chosen)

    @work(thread=True, exclusive=True, group="audit")
    def export_worker(self, out: Path) -> None:
        from fieldkit.auditbundle import export_bundle
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        try:
            j = Journal.open(self.home)
            try:
                summary = export_bundle(j, out, cancel=self.cancel,
                                        progress=lambda d, t: self.post_message(AuditEvent("progress", "", done=d, total=t)))
            finally:
                j.close()
            self.post_message(AuditEvent("export", f"exported {summary.get('entries', '?')} entries to {out}"))
        except FieldkitError as exc:
            self.post_message(AuditEvent("export", str(exc), ok=False))

    def action_sync(self) -> None:
        url = self.query_one("#sync-url", Input).value.strip()
        if not url:
            self.notify("type the receiver's URL first (the token comes from FIELDKIT_SYNC_TOKEN)", severity="warning")
            self.query_one("#sync-url", Input).focus()
            return
        if self._start():
            self.sync_worker(url)

    @work(thread=True, exclusive=True, group="audit")
    def sync_worker(self, url: str) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal
        from fieldkit.sync import describe, read_token, sync

        try:
            token = read_token(None)
            j = Journal.open_readonly(self.home)
            try:
                res = sync(j, url, token=token, cancel=self.cancel,
                           progress=lambda *a, **k: self.post_message(AuditEvent("progress", "", **_progress_args(a, k))))
            finally:
                j.close()
            self.post_message(AuditEvent("sync", describe(res)))
        except FieldkitError as exc:
            self.post_message(AuditEvent("sync", f"sync failed: {exc} — entries stay pending", ok=False))

    def action_cancel_or_back(self) -> None:
        if self.busy:
            self.cancel.set()
            self.notify("cancelling…", timeout=2)
        else:
            self.app.pop_screen()

    @on(AuditEvent)
    def _event(self, ev: AuditEvent) -> None:
        bars = self.query("#audit-progress")
        if ev.kind == "progress":
            if ev.total:
                if bars:
                    bar = bars.first(ProgressBar)
                else:  # made on the first progress of a long operation (not on opening: less to lay out)
                    bar = ProgressBar(total=ev.total, id="audit-progress", show_eta=False)
                    self.mount(bar, before=self.query_one("#entries"))
                bar.update(total=ev.total, progress=ev.done or 0)
            return
        bars.remove()
        self.busy = False
        self.refresh_bindings()
        if ev.kind == "verify":
            self.chain = ("[green]chain: " if ev.ok else "[red bold]chain: ") + escape(ev.text) + "[/]"
            if ev.ok and ev.text.startswith("verified through"):  # the quiet check on opening
                self.show_status()
                return
        self.notify(ev.text, title=ev.kind, severity="information" if ev.ok else "error", timeout=10)
        if ev.kind == "verify":
            self.show_status()
        else:
            self.reload()  # an export signs a checkpoint, a sync moves the pending count


def details_line(details: dict) -> str:
    """The details on one line, the first few keys (the detail view has them all)."""
    parts = []
    for k, v in list(details.items())[:5]:
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"{k}={text}")
    line = ", ".join(parts)
    return line if len(line) <= 300 else line[:299] + "…"


def verify_text(res: Any, incremental: bool) -> str:
    """What a verification found, in the words the status line and the notification use."""
    if not res.ok:
        return f"VERIFY FAILED at seq {res.bad_seq} ({res.problem}): {res.message}"
    if incremental:
        new = res.head_seq - res.verified_from
        earlier = f"1..{res.verified_from} as verified before" if res.verified_from else "none before"
        return f"verified through seq {res.head_seq} ({new:,} new entries checked, {earlier}; v checks all)"
    djs = len(res.device_journals)
    return (f"all {res.entries:,} entries verified, {res.checkpoints:,} checkpoints"
            + (f", {djs} device journal(s)" if djs else ""))


def _progress_args(args: tuple, kwargs: dict) -> dict:
    """sync() reports (done, total) or a dict; take what is there."""
    if args and isinstance(args[0], dict):
        d = args[0]
        return {"done": d.get("acked_through") or d.get("sent") or d.get("done"), "total": d.get("head_seq") or d.get("total")}
    if len(args) >= 2:
        return {"done": args[0], "total": args[1]}
    return {"done": kwargs.get("done"), "total": kwargs.get("total")}


class ExportModal(ModalScreen["Path | None"]):
    """Where to write the bundle: a mounted USB stick when there is one, this laptop's exports folder,
    or a folder typed in. A folder that does not exist is refused (a mistyped stick path must not
    leave the journal on the local disk)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", id="export.cancel", tooltip="Close without exporting"),
                Binding("ctrl+s", "export", "Export", id="export.go", tooltip="Write the bundle to the folder shown")]

    def __init__(self, home: Any, removable: list[Path]) -> None:
        import time

        super().__init__(classes="dialog-screen")
        self.home = home
        self.places = [(f"USB / removable: {p}", p) for p in removable]
        self.places.append((f"this laptop: {Path(home.root) / 'exports'}", Path(home.root) / "exports"))
        self.file_name = f"journal-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="export"):
            yield Label("Export the journal to…", classes="title")
            yield OptionList(*[label for label, _ in self.places], id="export-places")
            yield Input(str(self.places[0][1]), placeholder="folder", id="export-dir")
            yield Input(self.file_name, placeholder="file name", id="export-name")
            yield Static("" if len(self.places) > 1 else "No USB stick is mounted (under /media, /run/media or "
                         "/mnt): plug one in and open this again, or type a folder.", id="export-note",
                         classes="explain")
            yield Static("", id="export-error", classes="error")
            with Horizontal(classes="buttons"):
                yield Button("Export (Ctrl+S)", id="go", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#export-places", OptionList).highlighted = 0
        self.query_one("#export-places", OptionList).focus()

    @on(OptionList.OptionHighlighted, "#export-places")
    def _place(self, event: OptionList.OptionHighlighted) -> None:
        self.query_one("#export-dir", Input).value = str(self.places[event.option_index][1])

    @on(OptionList.OptionSelected, "#export-places")
    @on(Input.Submitted)
    @on(Button.Pressed, "#go")
    def action_export(self) -> None:
        from fieldkit.auditbundle import check_export_path
        from fieldkit.errors import FieldkitError

        folder = Path(self.query_one("#export-dir", Input).value.strip()).expanduser()
        name = self.query_one("#export-name", Input).value.strip() or self.file_name
        if Path(name).name != name:
            self.query_one("#export-error", Static).update("the file name may not contain a folder")
            return
        own = Path(self.home.root) / "exports"
        if folder == own:
            own.mkdir(parents=True, exist_ok=True)  # fieldkit's own folder; a typed one must exist
        try:
            check_export_path(folder / name)
        except FieldkitError as exc:
            self.query_one("#export-error", Static).update(escape(str(exc)))
            return
        self.dismiss(folder / name)

    @on(Button.Pressed, "#cancel")
    def action_cancel(self) -> None:
        self.dismiss(None)
