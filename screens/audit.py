"""Audit: the operator journal — entries (filter by device and action), chain status, pending
sync, export and sync with progress, and why a sync failed. All work is fieldkit.journal/sync."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, ProgressBar, Static

from screens.actions import AUDIT, bindings


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
        self.chain = "chain: checking…"

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Static("", id="audit-status")
        with Horizontal(id="audit-filters"):
            yield Input(placeholder="device", id="f-device")
            yield Input(placeholder="action (e.g. health, trust, bench)", id="f-action")
            yield Input(placeholder="sync URL (https://…)", id="sync-url")
        yield ProgressBar(total=100, id="audit-progress", show_eta=False)
        table: DataTable = DataTable(id="entries", cursor_type="row", zebra_stripes=True)
        table.add_columns("Seq", "Time (UTC)", "Operator", "Device", "Action", "Outcome", "Details")
        yield table
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "audit journal"
        self.reload()
        self.action_verify()  # the chain status is part of what this screen shows

    def reload(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        try:
            j = Journal.open_readonly(self.home)
        except FieldkitError as exc:
            self.query_one("#audit-status", Static).update(str(exc))
            return
        try:
            st = j.status()
            device = self.query_one("#f-device", Input).value.strip() or None
            action = self.query_one("#f-action", Input).value.strip() or None
            entries = j.entries(device=device, action=action, limit=500, newest=True)
        finally:
            j.close()
        last = st.get("last_sync") or {}
        self.query_one("#audit-status", Static).update(
            f"journal {st['journal_id'][:12]} · operator {st.get('operator')} · {st['entries']} entries · "
            f"{st['pending_sync']} pending sync · last sync "
            + (f"{last.get('time')} to {last.get('target')}" if last else "never")
            + f" · {st['checkpoints']} checkpoints · key {st['key_fingerprint']}\n{self.chain}")
        table = self.query_one("#entries", DataTable)
        table.clear()
        for e in reversed(entries):
            outcome = {"ok": "[green]ok[/]", "failed": "[red]failed[/]", "refused": "[magenta]refused[/]",
                       "cancelled": "[yellow]cancelled[/]"}.get(e.outcome, e.outcome)
            details = ", ".join(f"{k}={v}" for k, v in list(e.details.items())[:4])
            table.add_row(str(e.seq), e.time[:19], e.operator, e.device, e.action, outcome, details[:80])

    def action_reload_entries(self) -> None:
        self.reload()

    @on(Input.Submitted, "#f-device")
    @on(Input.Submitted, "#f-action")
    def _filter(self) -> None:
        self.reload()

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

    def action_verify(self) -> None:
        if self._start():
            self.verify_worker()

    @work(thread=True, exclusive=True, group="audit")
    def verify_worker(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        try:
            j = Journal.open_readonly(self.home)
            try:
                res = j.verify(cancel=self.cancel)
            finally:
                j.close()
            doc = res.to_json()
            if doc.get("ok"):
                self.post_message(AuditEvent("verify", f"chain verified: {doc.get('entries', '?')} entries intact"))
            else:
                self.post_message(AuditEvent("verify", f"VERIFY FAILED at seq {doc.get('bad_seq')} ({doc.get('problem')}): {doc.get('message')}",
                                             ok=False))
        except FieldkitError as exc:
            self.post_message(AuditEvent("verify", str(exc), ok=False))

    def action_export(self) -> None:
        if self._start():
            self.export_worker()

    @work(thread=True, exclusive=True, group="audit")
    def export_worker(self) -> None:
        import time

        from fieldkit.auditbundle import export_bundle
        from fieldkit.errors import FieldkitError
        from fieldkit.journal import Journal

        out = Path(self.home.root) / "exports" / f"journal-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
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
        bar = self.query_one("#audit-progress", ProgressBar)
        if ev.kind == "progress":
            if ev.total:
                bar.update(total=ev.total, progress=ev.done or 0)
            return
        self.busy = False
        self.refresh_bindings()
        if ev.kind == "verify":
            self.chain = ("[green]chain: " if ev.ok else "[red bold]chain: ") + ev.text + "[/]"
        self.notify(ev.text, title=ev.kind, severity="information" if ev.ok else "error", timeout=10)
        self.reload()


def _progress_args(args: tuple, kwargs: dict) -> dict:
    """sync() reports (done, total) or a dict; take what is there."""
    if args and isinstance(args[0], dict):
        d = args[0]
        return {"done": d.get("acked_through") or d.get("sent") or d.get("done"), "total": d.get("head_seq") or d.get("total")}
    if len(args) >= 2:
        return {"done": args[0], "total": args[1]}
    return {"done": kwargs.get("done"), "total": kwargs.get("total")}
