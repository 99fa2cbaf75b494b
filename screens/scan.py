"""Scan: find devices on serial ports and by mDNS (fieldkit.scan, in a worker), list them as they
answer, and add the chosen one in two keys: Enter opens the add dialog prefilled with its target,
a name (its hostname) and the suggested profile; Enter there saves."""

from __future__ import annotations

import re
import threading
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from screens.actions import SCAN, bindings
from screens.columns import Col, FitTable

# Columns give way by importance (screens.columns): the port, what it is and the note saying why stay.
COLUMNS = [Col("where", "Port / name", rank=0, min_width=10, max_width=32), Col("status", "Status", rank=0),
           Col("how", "Baud / address", rank=2), Col("host", "Hostname", rank=3, max_width=20),
           Col("profile", "Profile", rank=4), Col("known", "Inventory", rank=5, max_width=16),
           Col("hardware", "Hardware", rank=6, min_width=12, max_width=40),
           Col("note", "Note", rank=1, min_width=24, flex=True)]
STATUS = {"agent": "[green]agent[/]", "no_agent": "[dim]no agent[/]", "busy": "[yellow]busy[/]",
          "permission_denied": "[red]permission denied[/]"}


class PortScanned(Message):
    def __init__(self, finding: Any) -> None:
        super().__init__()
        self.finding = finding


class ScanDone(Message):
    def __init__(self, report: Any, error: Exception | None = None) -> None:
        super().__init__()
        self.report = report
        self.error = error


def suggested_name(text: str | None, fallback: str) -> str:
    """A device name (letters, digits, ``._-``) from a hostname or a port path."""
    from fieldkit.profiles import NAME_PATTERN

    for raw in (text, fallback):
        name = re.sub(r"[^A-Za-z0-9._-]+", "-", (raw or "").removesuffix(".local")).strip("-._")[:63]
        if name and NAME_PATTERN.fullmatch(name):
            return name
    return "device"


class ScanScreen(Screen[Any]):
    """Dismissed with the device added (an inventory Device), or None."""

    BINDINGS = bindings(SCAN)
    AUTO_FOCUS = "#found"

    def __init__(self, home: Any, *, globs: tuple[str, ...] = (), seconds: float | None = None) -> None:
        super().__init__(id="scan")
        self.home = home
        self.globs = globs
        self.seconds = seconds
        self.cancel = threading.Event()
        self.scanning = False
        self.rows: dict[str, Any] = {}  # row key -> SerialFinding | NetworkFinding
        self.report: Any = None

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Static("", id="scan-status")
        yield FitTable(COLUMNS, id="found", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "scan"
        self.action_rescan()

    # ---- scanning ----------------------------------------------------------------------------------
    def action_rescan(self) -> None:
        if self.scanning:
            return
        from fieldkit.scan import DEFAULT_SECONDS, probe_bauds, serial_bound

        self.scanning = True
        self.cancel = threading.Event()
        self.rows.clear()
        self.query_one("#found", DataTable).clear()
        seconds = self.seconds or DEFAULT_SECONDS
        self.set_status(f"Scanning serial ports (at most {serial_bound(len(probe_bauds(self.home))):.0f} s) and "
                        f"mDNS ({seconds:g} s)…  Esc stops.")
        self.run_scan(seconds)

    @work(thread=True, exclusive=True, group="scan")
    def run_scan(self, seconds: float) -> None:
        from fieldkit.scan import scan

        try:
            report = scan(self.home, globs=self.globs, seconds=seconds, cancel=self.cancel,
                          on_port=lambda f: self.post_message(PortScanned(f)))
        except Exception as exc:  # a core bug must surface, not kill the screen
            self.post_message(ScanDone(None, exc))
            return
        self.post_message(ScanDone(report))

    @on(PortScanned)
    def _port_scanned(self, message: PortScanned) -> None:
        self.show_serial(message.finding)

    @on(ScanDone)
    def _scan_done(self, message: ScanDone) -> None:
        self.scanning = False
        if message.error is not None:
            self.set_status(f"[red]scan failed: {escape(str(message.error))}[/]")
            return
        report = self.report = message.report
        for f in report.serial:
            self.show_serial(f)
        for f in report.network:
            self.show_network(f)
        serial, net = report.tried.get("serial") or {}, report.tried.get("network") or {}
        parts = []
        if serial:
            parts.append(f"{len(serial.get('ports', []))} serial port(s) at "
                         f"{'/'.join(str(b) for b in serial.get('bauds', []))} baud in {serial.get('seconds', 0):.1f} s")
        if net:
            parts.append(f"mDNS: multicast unavailable: {net['unavailable']}" if net.get("unavailable")
                         else f"mDNS on {', '.join(net.get('interfaces') or []) or 'the default interface'} "
                              f"for {net.get('seconds', 0):g} s")
        text = "Tried " + "; ".join(parts) + "."
        if not report.found:
            text += "\nNothing found. Likely causes:\n" + "\n".join(f"• {c}" for c in report.causes())
        else:
            text += "  Enter adds the selected device; r scans again."
        self.set_status(escape(text))

    def set_status(self, text: str) -> None:
        self.query_one("#scan-status", Static).update(text)

    # ---- rows ---------------------------------------------------------------------------------------
    def put_row(self, key: str, finding: Any, cells: list[str]) -> None:
        table = self.query_one("#found", DataTable)
        self.rows[key] = finding
        if key in table.rows:
            with self.app.batch_update():
                for col, value in zip(COLUMNS, cells):
                    table.update_cell(key, col.key, value)
        else:
            table.add_row(*cells, key=key)

    def show_serial(self, f: Any) -> None:
        where = escape(f.device + (f" · {f.description}" if f.description and f.description != "pseudo-terminal" else ""))
        note = f.note or (f"held by {f.holder}" if f.holder else "")
        self.put_row(f"serial:{f.device}", f, [
            where, STATUS.get(f.status, escape(f.status)), str(f.baud or "-"), escape(f.hostname or "-"),
            escape(f.suggested_profile or "-"), escape(f.in_inventory or "-"), escape(_short(f.hardware or "-", 40)),
            escape(_short(note, 400))])

    def show_network(self, f: Any) -> None:
        self.put_row(f"net:{f.service}:{f.name}", f, [
            escape(f.name), escape(f.service.split(".")[0].lstrip("_")), escape(", ".join(f.addresses) or "-"),
            escape(f.host or "-"), "-", escape(f.in_inventory or "-"), "-",
            "known host key" if f.known_host else ""])

    def selected(self) -> Any:
        table = self.query_one("#found", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return self.rows.get(str(key.value))

    # ---- actions ------------------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "add":
            f = self.selected()
            return None if f is None or f.target is None else True
        if action == "rescan":
            return None if self.scanning else True
        return True

    @on(DataTable.RowSelected, "#found")
    def action_add(self) -> None:
        f = self.selected()
        if f is None:
            return
        if f.target is None:
            self.notify(f.note or "no agent answered on this port: nothing to add", title=f.device, timeout=8)
            return
        from fieldkit.profiles import list_profiles
        from screens.modals import AddDeviceModal

        profiles = [p.name for p in list_profiles(self.home) if not p.error]
        from fieldkit.scan import SerialFinding

        serial = isinstance(f, SerialFinding)
        name = suggested_name(f.hostname if serial else (f.host or f.name), f.device if serial else f.name)
        profile = f.suggested_profile if serial else None
        note = (f"Found on {f.device} at {f.baud} baud: {f.profile_reason or f.hardware or 'a fieldkit agent'}."
                if serial
                else f"Found {f.name} by mDNS ({f.service}); put the login user in the target (ssh://USER@…).")

        def added(dev: Any) -> None:
            if dev is not None:
                self.cancel.set()
                self.dismiss(dev)

        self.app.push_screen(AddDeviceModal(self.home, profiles, name=name, target=f.target, profile=profile,
                                            note=note), added)

    def action_cancel_or_back(self) -> None:
        if self.scanning:
            self.cancel.set()
            self.set_status("Stopping the scan…")
            return
        self.dismiss(None)


def _short(text: str, limit: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
