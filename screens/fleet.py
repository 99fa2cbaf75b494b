"""Fleet: every inventory device, refreshed concurrently, updated cell by cell."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from textual import on, work
from textual.app import ComposeResult
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from screens.actions import FLEET, bindings
from screens.models import ModelsListed, active_summary
from screens.styles import STATUS_STYLE

COLUMNS = [("device", "Device"), ("transport", "Link"), ("profile", "Profile"), ("status", "Health"),
           ("model", "Model"), ("cpu", "CPU"), ("mem", "Mem"), ("temp", "Temp"), ("agent", "Agent"),
           ("seen", "Last seen"), ("note", "Note")]
MODELS_EVERY = 6
"""The model column costs a second connection per device (health does not list models), so it is
read every MODELS_EVERY-th refresh (60 s at the default 10 s), only for devices that answered the
health check and only while the fleet is on screen; the Models screen updates it on every change.
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


class RefreshDone(Message):
    pass


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
        self._timer: Any = None
        self.refreshing = False
        self.again = False
        self.models_every = max(1, models_every)
        self.rounds = 0  # refreshes so far: every models_every-th one also lists models

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Input(placeholder="filter devices (Esc clears)", id="filter", classes="hidden", disabled=True)
        table: DataTable = DataTable(id="devices", cursor_type="row", zebra_stripes=True)
        for key, label in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static("", id="fleet-status")
        yield Footer()

    def on_mount(self) -> None:
        self.load_inventory()
        self.action_refresh()

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
        base = {"device": row.name, "transport": row.transport, "profile": row.profile}
        return [base.get(k) or row.cells.get(k, "") for k, _ in COLUMNS]

    # ---- refresh ----------------------------------------------------------------------------------
    def action_refresh(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        if self.refreshing:
            self.again = True  # asked during a refresh (e.g. a key was just trusted): run once more
            return
        self.refreshing = True
        self.again = False
        with_models = self.rounds % self.models_every == 0
        self.rounds += 1
        self.refresh_all(list(self.rows), with_models)

    @work(thread=True, exclusive=True, group="fleet-refresh")
    def refresh_all(self, names: list[str], with_models: bool = False) -> None:
        from fieldkit.health import check_device

        answered = []
        if names:
            with ThreadPoolExecutor(max_workers=min(8, len(names))) as pool:
                futures = [pool.submit(check_device, n, self.home, timeout=10.0) for n in names]
                for fut in as_completed(futures):
                    try:
                        report = fut.result()
                        self.post_message(DeviceChecked(report))
                        if report.status != "unreachable" and report.error is None:
                            answered.append(report.device)
                    except Exception as exc:  # a core bug must not kill the refresh loop
                        self.app.call_from_thread(self.notify, f"health check failed: {exc}", severity="error")
        if with_models and answered:
            # after the health checks, never beside them: a serial port takes one session at a time
            with ThreadPoolExecutor(max_workers=min(4, len(answered))) as pool:
                for _ in pool.map(self.list_models_of, answered):
                    pass
        self.post_message(RefreshDone())

    def list_models_of(self, name: str) -> None:
        """In the refresh worker's pool: one more connection to read what is installed."""
        from fieldkit.devices import open_session
        from fieldkit.errors import FieldkitError
        from fieldkit.modelstore import list_models

        if not self.is_current:
            return  # a device or models screen is open: it owns the link now
        try:
            with open_session(name, self.home, timeout=10.0) as session:
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

    @on(RefreshDone)
    def _refresh_done(self) -> None:
        self.refreshing = False
        self._timer = self.set_timer(0.01 if self.again else self.refresh_s, self.action_refresh)

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
            cells["seen"] = time.strftime("%H:%M:%S", time.localtime(r.measured_at))
            bad = [c for c in r.checks if c.status in ("warn", "crit")]
            cells["note"] = _first_line(bad[0].message) if bad else ""
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
        if action in ("open_device", "remove_device", "trust_device", "checklist"):
            return None if self.selected() is None else True  # greyed out with no selection
        return True

    @on(DataTable.RowSelected, "#devices")
    def action_open_device(self) -> None:
        name = self.selected()
        if name is None:
            return
        from screens.device import DeviceScreen

        self.app.push_screen(DeviceScreen(self.home, name))

    def action_filter(self) -> None:
        box = self.query_one("#filter", Input)
        box.disabled = False
        box.remove_class("hidden")
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
        box.add_class("hidden")
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

        self.app.push_screen(ChecklistScreen(self.home, name))

    def action_trust_device(self) -> None:
        name = self.selected()
        if name is None:
            return
        self.alerted.discard(name)
        self.app.check_host_key(name)


def _agent(row: Row) -> str | None:
    text = row.cells.get("agent", "")
    return text if text and not text.startswith("[") else None


def _first_line(text: str, limit: int = 70) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"
