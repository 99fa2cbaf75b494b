"""Fleet: every inventory device, refreshed concurrently, updated cell by cell."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, Input, Label, Static

from screens.actions import FLEET, bindings
from screens.columns import Col, FitTable, plain
from screens.modelslisted import ModelsListed, active_summary
from screens.styles import STATUS_STYLE

COLUMNS = [Col("device", "Device", rank=0, min_width=8), Col("transport", "Link", rank=8),
           Col("profile", "Profile", rank=9, min_width=8), Col("status", "Health", rank=0),
           Col("model", "Model", rank=6, min_width=8), Col("cpu", "CPU", rank=2), Col("mem", "Mem", rank=5),
           Col("temp", "Temp", rank=4), Col("agent", "Agent", rank=7), Col("seen", "Last seen", rank=3),
           Col("note", "Note", rank=1, min_width=24, flex=True)]
"""Name, health and the reason stay on the smallest terminal; the rest gives way in rank order
(screens.columns). ``w`` shows a device's whole problem."""
DEVICE_ACTIONS = ("open_device", "why", "bench", "models", "checklist", "remove_device", "trust_device")
"""Actions on the selected device: the command palette names it, and they are greyed out without one."""
MODELS_EVERY = 6
"""The model column costs another request per device (health does not list models), so it is read
over the device's open session every MODELS_EVERY-th poll it answered (60 s at the default 10 s),
only while the fleet is on screen; the Models screen updates it on every change.
With a site manifest loaded, the same listing is held against it (fieldkit.versions.compare_device) and
the cell is coloured by the status: no further connection."""

VERSION_STYLE = {"ok": "green", "drift": "red", "missing": "red", "modified": "red", "unexpected": "yellow",
                 "unreachable": "dim"}

@dataclass
class Row:
    name: str
    target: str
    profile: str
    transport: str
    cells: dict[str, str]
    groups: tuple[str, ...] = ()


class DeviceChecked(Message):
    def __init__(self, report: Any) -> None:
        super().__init__()
        self.report = report


class FleetModelsListed(ModelsListed):
    """The fleet's own model-listing pass: ``versions`` is (status, ModelVersions) against the manifest."""

    def __init__(self, device: str, models: list[dict] | None, error: Exception | None = None,
                 versions: tuple[str, list[Any]] | None = None) -> None:
        super().__init__(device, models, error)
        self.versions = versions


def version_cell(status: str, models: list[Any], listed: list[dict] | None) -> str:
    """The model column against the manifest: the most severe model, ``name active`` and the status
    word, coloured by the status; ``+N`` more models."""
    if not models:
        return active_summary(listed or [])
    from fieldkit.versions import worst_status

    worst = worst_status(m.status for m in models)
    first = next(m for m in models if m.status == worst)
    text = f"{first.name} {first.active or '-'} {first.status}"
    if first.status in ("drift", "missing") and first.expected and first.expected != first.active:
        text += f" ({first.expected} expected)"
    more = f" +{len(models) - 1}" if len(models) > 1 else ""
    return f"[{VERSION_STYLE.get(first.status, 'dim')}]{escape(text)}[/]{more}"


def transport_of(target: str) -> str:
    if target.startswith("serial:"):
        return "serial"
    if target.startswith("local:"):
        return "local"
    return "ssh"


class FleetScreen(Screen):
    BINDINGS = bindings(FLEET)
    TITLE = "Fleet"
    AUTO_FOCUS = "#devices"

    def __init__(self, home: Any, refresh_s: float = 10.0, models_every: int = MODELS_EVERY,
                 manifest: Any = None) -> None:
        """``manifest``: a verified site manifest (fieldkit.manifest.Manifest) the model column is held against."""
        super().__init__(id="fleet")
        self.home = home
        self.manifest = manifest
        self.refresh_s = refresh_s
        self.rows: dict[str, Row] = {}
        self.filter_text = ""
        self.alerted: set[str] = set()  # devices whose host-key dialog was already shown
        self.held: list[str] = []  # devices the watch leaves alone while a screen above uses them
        self.watch: Any = None  # fieldkit.fleetwatch.FleetWatch: one open session per device, started after the first paint
        self.starting = False
        self.models_every = max(1, models_every)
        self.polled: dict[str, int] = {}  # answered polls per device: every models_every-th one also lists models
        self.reports: dict[str, Any] = {}  # device -> its last HealthReport (the `w` detail view)

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield FitTable(COLUMNS, id="devices", cursor_type="row", zebra_stripes=True)
        # under the table, above the status line: the title bar stays readable while filtering
        with Horizontal(id="filter-bar", classes="hidden"):
            yield Label("Filter /", id="filter-label")
            yield Input(placeholder="name, target, profile or link (Enter keeps it, Esc clears)",
                        id="filter", disabled=True, compact=True)
        yield Static("", id="fleet-status")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.load_inventory()
        # The first poll loads the link code and the journal (a worker thread, but one that holds the
        # interpreter while it imports): only once the rows are on the terminal, i.e. after the refresh
        # that draws them and the next one, by which time the driver's writer has sent the frame
        # (docs/performance.md).
        self.call_after_refresh(self.call_after_refresh, self.action_refresh)

    # ---- inventory -------------------------------------------------------------------------------
    def load_inventory(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.inventory import load_inventory

        try:
            devices = load_inventory(self.home)
        except FieldkitError as exc:
            self.notify(str(exc), title="Inventory", severity="error", timeout=10)
            devices = []
        names = set()
        for d in devices:
            names.add(d.name)
            if d.name not in self.rows:
                self.rows[d.name] = Row(d.name, d.target, d.profile, transport_of(d.target),
                                        {"status": STATUS_STYLE["checking"]}, tuple(d.groups))
            else:
                self.rows[d.name].groups = tuple(d.groups)
        for gone in set(self.rows) - names:
            del self.rows[gone]
        self.rebuild_table()
        if self.watch is not None:
            self.watch.track(list(self.rows))  # a removed device's session closes

    def visible(self, row: Row) -> bool:
        f = self.filter_text.lower()
        return not f or any(f in s.lower() for s in (row.name, row.target, row.profile, row.transport))

    def rebuild_table(self) -> None:
        """Only when the set of rows changes (inventory edit, filter); ticks update cells."""
        table = self.query_one("#devices", DataTable)
        table.clear()
        for row in self.rows.values():
            if self.visible(row):
                table.add_row(*self.cells_for(row), key=row.name)
        n = len(self.rows)
        shown = table.row_count
        status = f"{n} device(s)" + (f", {shown} shown (filter: {self.filter_text!r})" if shown != n else "")
        if n == 0:
            status = "No devices yet: press a to add one, or run `fieldkit sim` / `fieldkit demo`."
        self.query_one("#fleet-status", Static).update(escape(status + self.manifest_note()))

    def manifest_note(self) -> str:
        m = self.manifest
        if m is None:
            return ""
        name = m.path.name if m.path is not None else "site manifest"
        return f" · manifest {name}, signed by {m.signer}"

    def cells_for(self, row: Row) -> list[str]:
        base = {"device": escape(row.name), "transport": row.transport, "profile": escape(row.profile)}
        return [base.get(c.key) or row.cells.get(c.key, "") for c in COLUMNS]

    # ---- refresh: fieldkit.fleetwatch polls every device over one open session ---------------------
    def action_refresh(self) -> None:
        """Poll every device now (and reconnect those waiting out a backoff); the watch then polls
        each one every ``refresh_s`` by itself, and journals only what changes."""
        if self.watch is None:
            if not self.starting:
                self.starting = True
                self.start_watch()
            return
        self.watch.track(list(self.rows))
        self.watch.poll_now()

    @work(thread=True, exclusive=True, group="fleet-watch")
    def start_watch(self) -> None:
        """Off the UI thread: the link code and the journal load after the fleet is painted."""
        from fieldkit.fleetwatch import FleetWatch

        watch = FleetWatch(self.home, interval=self.refresh_s, timeout=10.0,
                           on_report=lambda report: self.post_message(DeviceChecked(report)))
        watch.track(list(self.rows))
        self.watch = watch.start()

    def on_unmount(self) -> None:
        watch, self.watch = self.watch, None
        if watch is not None:  # close every session (bounded), without holding the UI
            threading.Thread(target=watch.close, name="fleetwatch-close").start()

    @work(thread=True, group="fleet-models")
    def list_models_of(self, name: str) -> None:
        """Read what is installed, over the device's open session."""
        from fieldkit.errors import FieldkitError
        from fieldkit.modelstore import list_models

        session = self.watch.session(name) if self.watch is not None else None
        if session is None:
            return
        try:
            listed = list_models(session)["models"]
            agent = session.hello.agent_version
            self.post_message(FleetModelsListed(name, listed, versions=self.versions_of(name, listed, agent)))
        except FieldkitError as exc:
            self.post_message(ModelsListed(name, None, exc))
        except Exception as exc:  # a core bug must not kill the refresh loop
            self.post_message(ModelsListed(name, None, exc))

    def versions_of(self, name: str, listed: list[dict], agent: str | None) -> tuple[str, list[Any]] | None:
        """``listed`` against the manifest (None without one): pure, no connection."""
        from fieldkit.versions import compare_device

        row = self.rows.get(name)
        if self.manifest is None or row is None:
            return None
        return compare_device(self.manifest, name, row.groups, row.profile, listed, None, agent)

    @on(ModelsListed)
    def _models_listed(self, message: ModelsListed) -> None:
        row = self.rows.get(message.device)
        if row is None:
            return
        if message.models is None:
            self.dim_model(row)
        elif self.manifest is not None:
            versions = getattr(message, "versions", None)
            if versions is None:  # from the Models screen: held against the manifest here (pure)
                versions = self.versions_of(row.name, message.models, _agent(row))
            row.cells["model"] = version_cell(*versions, message.models) if versions else active_summary(message.models)
        else:
            row.cells["model"] = active_summary(message.models)
        self.show_model(row)

    def dim_model(self, row: Row) -> None:
        old = row.cells.get("model", "")
        row.cells["model"] = f"[dim]{old}[/]" if old and not old.startswith("[dim]") else old

    def show_model(self, row: Row) -> None:
        table = self.query_one("#devices", DataTable)
        if row.name in table.rows:  # the row key is the device name
            table.update_cell(row.name, "model", row.cells["model"], update_width=True)

    @on(DeviceChecked)
    def _device_checked(self, message: DeviceChecked) -> None:
        r = message.report
        row = self.rows.get(r.device)
        if row is None:
            return
        cells = row.cells
        cells["status"] = STATUS_STYLE.get(r.status, r.status)
        if self.manifest is not None and r.status == "unreachable" and cells.get("model"):
            self.dim_model(row)  # against the manifest: unreachable is dim
            self.show_model(row)
        if r.error:
            cells["note"] = f"[magenta]{_first_line(r.error)}[/]"
            for k in ("cpu", "mem", "temp"):
                if cells.get(k) and not cells[k].startswith("[dim]"):
                    cells[k] = f"[dim]{cells[k]}[/]"  # stale: last known value
        else:
            raw = r.raw
            cpu = (raw.get("cpu") or {}).get("percent")
            mem = (raw.get("memory") or {}).get("used_percent")
            temps = [z["temp_c"] for z in raw.get("temperatures") or []]
            cells["cpu"] = "-" if cpu is None else f"{cpu:.0f} %"
            cells["mem"] = "-" if mem is None else f"{mem:.0f} %"
            cells["temp"] = f"{max(temps):.0f} °C" if temps else "n/a"
            cells["agent"] = (raw.get("agent") or {}).get("version", "")
            cells["seen"] = self.app.clock_text()  # when this laptop heard from it (the app's clock)
            bad = [c for c in r.checks if c.status in ("warn", "crit")]
            cells["note"] = _first_line(bad[0].message) if bad else ""
            polled = self.polled[r.device] = self.polled.get(r.device, 0) + 1
            if (polled - 1) % self.models_every == 0 and self.is_current:
                self.list_models_of(r.device)  # over the same session; other screens own it while open
        table = self.query_one("#devices", DataTable)
        if r.device in table.rows:
            with self.app.batch_update():
                for key in ("status", "cpu", "mem", "temp", "agent", "seen", "note"):
                    table.update_cell(r.device, key, cells.get(key, ""), update_width=True)
        self.handle_host_key(r)

    def handle_host_key(self, report: Any) -> None:
        from fieldkit.errors import HostKeyError

        exc = report.exception
        if not isinstance(exc, HostKeyError) or report.device in self.alerted:
            return
        self.alerted.add(report.device)
        self.app.ask_host_key(report.device, report.target, exc, on_trusted=self.action_refresh)

    # ---- actions ----------------------------------------------------------------------------------
    def selected(self) -> str | None:
        table = self.query_one("#devices", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return str(key.value)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in DEVICE_ACTIONS:
            return None if self.selected() is None else True  # greyed out with no selection
        return True

    def palette_subject(self, action: str) -> str | None:
        """The command palette says which device an action would act on ("Bench press-1")."""
        return self.selected() if action in DEVICE_ACTIONS else None

    @on(DeviceChecked)
    def _remember_report(self, message: DeviceChecked) -> None:
        self.reports[message.report.device] = message.report

    def action_why(self) -> None:
        """The selected device's whole story: every problem, not the first line of the first one."""
        name = self.selected()
        if name is None:
            return
        from screens.modals import DetailModal

        row, report = self.rows.get(name), self.reports.get(name)
        table = self.query_one("#devices", FitTable)
        fields = [f for f in table.row_fields(name) if f[0] != "Note" and f[1]]
        if row is not None:
            fields.insert(1, ("Target", row.target))
        self.app.push_screen(DetailModal(f"{name}: {plain(row.cells.get('status', '')) if row else ''}",
                                         fields, why_text(report)))

    def action_bench(self) -> None:
        name = self.selected()
        if name is not None:
            from screens.bench import BenchScreen

            self.hold_while_away(name)  # the watch's polls would share the device with the benchmark
            self.app.push_screen(BenchScreen(self.home, name, session_of=lambda: self.session_of(name)))

    def action_models(self) -> None:
        name = self.selected()
        if name is not None:
            from screens.models import ModelsScreen

            self.hold_while_away(name)  # no health poll in the middle of an install's stages
            self.app.push_screen(ModelsScreen(self.home, name, borrow=lambda: self.session_of(name)))

    def hold_while_away(self, name: str) -> None:
        """Keep the watch's polls off ``name`` (its session stays open) until the fleet is back on top."""
        if self.watch is not None:
            self.watch.hold(name)
            self.held.append(name)

    def on_screen_resume(self) -> None:
        held, self.held = self.held, []
        for name in held:
            if self.watch is not None:
                self.watch.unhold(name)

    def session_of(self, name: str) -> Any:
        """The fleet's open session to ``name`` (lent to the screens it opens: a serial port takes one)."""
        return self.watch.session(name) if self.watch is not None else None

    @on(DataTable.RowSelected, "#devices")
    def action_open_device(self) -> None:
        name = self.selected()
        if name is None:
            return
        from screens.device import DeviceScreen

        self.app.push_screen(DeviceScreen(self.home, name, watch=self.watch))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        self.query_one("#filter-bar").remove_class("hidden")
        box.focus()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.filter_text = event.value.strip()
        self.rebuild_table()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one("#devices", DataTable).focus()

    def action_clear_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.value = ""
        self.query_one("#filter-bar").add_class("hidden")
        box.disabled = True
        self.filter_text = ""
        self.rebuild_table()
        self.query_one("#devices", DataTable).focus()

    def action_add_device(self) -> None:
        from fieldkit.profiles import list_profiles
        from screens.modals import AddDeviceModal

        names = [p.name for p in list_profiles(self.home) if not p.error]

        def added(dev: Any) -> None:
            if dev is not None:
                self.notify(f"added {dev.name} → {dev.target} ({dev.profile})", title="Inventory")
                self.load_inventory()
                self.action_refresh()

        self.app.push_screen(AddDeviceModal(self.home, names), added)

    def action_scan(self) -> None:
        """Find devices on serial ports and by mDNS (screens/scan.py); one added there joins the fleet."""
        from screens.scan import ScanScreen

        def scanned(dev: Any) -> None:
            if dev is not None:
                self.notify(f"added {dev.name} → {dev.target} ({dev.profile})", title="Inventory")
                self.load_inventory()
                self.action_refresh()

        self.app.push_screen(ScanScreen(self.home), scanned)

    def action_remove_device(self) -> None:
        name = self.selected()
        if name is None:
            return
        from screens.modals import ConfirmModal

        def confirmed(ok: bool | None) -> None:
            if not ok:
                return
            from fieldkit.errors import FieldkitError
            from fieldkit.inventory import remove_device

            try:
                remove_device(self.home, name)
            except FieldkitError as exc:
                self.notify(str(exc), severity="error")
                return
            self.notify(f"removed {name} from the inventory (nothing changed on the device)")
            self.load_inventory()

        self.app.push_screen(ConfirmModal(f"Remove {name} from the inventory?",
                                          "Only this laptop's list changes; the device is not touched."), confirmed)

    def action_audit(self) -> None:
        from screens.audit import AuditScreen

        self.app.push_screen(AuditScreen(self.home))

    def action_checklist(self) -> None:
        name = self.selected()
        if name is None:
            return
        from screens.checklist import ChecklistScreen

        self.app.push_screen(ChecklistScreen(self.home, name, session_of=lambda: self.session_of(name)))

    def action_trust_device(self) -> None:
        name = self.selected()
        if name is None:
            return
        self.alerted.discard(name)
        self.app.check_host_key(name)


def _agent(row: Row) -> str | None:
    text = row.cells.get("agent", "")
    return text if text and not text.startswith("[") else None


def _first_line(text: str, limit: int = 300) -> str:
    """The first line, whole (the Note column cuts it at a word boundary to the width it has; ``w``
    shows everything), escaped for the table's markup."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return escape(line if len(line) <= limit else line[: limit - 1] + "…")


def why_text(report: Any) -> str:
    """What is wrong with a device, in full: the error of an unreachable one (every line of it, hint
    included), each check that is not ok, or that all is well."""
    if report is None:
        return "Not checked yet: the first health check of this device has not finished."
    if report.error:
        return report.error.strip()
    bad = [c for c in report.checks if c.status in ("crit", "warn")]
    if not bad:
        return "Every check is ok."
    return "\n".join(f"{c.status.upper():4}  {c.name}: {c.message}" for c in sorted(bad, key=lambda c: c.status != "crit"))
