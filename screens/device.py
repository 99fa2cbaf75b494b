"""Device health, live: polled every 2 s (adjustable, pausable), sparklines, checks, and an
honest account of a link that drops (stale values, reconnect with backoff)."""

from __future__ import annotations

import threading
import time
from collections import deque
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Sparkline, Static

from screens.actions import DEVICE, bindings
from screens.sparkline import FixedSparkline
from screens.columns import Col, FitTable, plain
from screens.styles import STATUS_STYLE

CHECK_COLUMNS = [Col("name", "Check", rank=0, min_width=8), Col("status", "Status", rank=0),
                 Col("detail", "Detail", rank=1, min_width=16, flex=True)]
"""The detail is what a technician reads: it gets the room (the info panel gives way below 100
columns, `i` shows it), is cut at a word boundary, and Enter on a check shows all of it."""

INTERVALS = [0.5, 1.0, 2.0, 5.0, 10.0, 30.0]
BACKOFF = [1.0, 2.0, 4.0, 8.0, 15.0]
TEMP_FLOOR_C = 20.0  # the bottom of the temperature sparkline: a room, not absolute zero


class Sample(Message):
    def __init__(self, report: Any) -> None:
        super().__init__()
        self.report = report


class LinkDown(Message):
    def __init__(self, reason: str, exc: Exception | None, retry_in: float) -> None:
        super().__init__()
        self.reason, self.exc, self.retry_in = reason, exc, retry_in


class DeviceScreen(Screen):
    BINDINGS = bindings(DEVICE)
    AUTO_FOCUS = "#checks"

    def __init__(self, home: Any, name: str, interval: float = 2.0, *, watch: Any = None) -> None:
        """``watch``: the fleet's :class:`fieldkit.fleetwatch.FleetWatch`; polls go over its open
        session to the device (a serial port takes one) and it journals the changes."""
        super().__init__(id="device")
        self.home = home
        self.device = name
        self.interval = interval
        self.watch = watch
        self.held = False
        self.paused = False
        self.session: Any = None  # fieldkit.devices.DeviceSession while connected
        self.dev: Any = None
        self.connected = False
        self.failures = 0
        self.last_ok: float | None = None
        self.cpu: deque[float] = deque(maxlen=90)
        self.mem: deque[float] = deque(maxlen=90)
        self.temp: deque[float] = deque(maxlen=90)
        self.stop_event = threading.Event()
        self._timer: Any = None
        self.polling = False
        self.suspended = False
        self.recorded_status: str | None = None
        self.checks: dict[str, Any] = {}  # check name -> the last Check (Enter shows it whole)
        self.info_lines: list[str] = []  # the info panel's lines (markup), `i` shows them

    def compose(self) -> ComposeResult:
        yield Header(show_clock=True)
        yield Static(f"{self.device}: connecting…", id="banner", classes="connecting")
        with Horizontal(id="sparks"):
            for key, label in (("cpu", "CPU %"), ("mem", "Memory %"), ("temp", "Hottest °C")):
                with Vertical(classes="spark-box"):
                    yield Static(label, id=f"{key}-label", classes="spark-label")
                    # fixed scales: 0-100 % (a steady 2 % stays low), °C from 20 to the profile's critical
                    yield FixedSparkline([], id=f"{key}-spark", summary_function=max,
                                         low=TEMP_FLOOR_C if key == "temp" else 0.0, high=100.0)
        with Horizontal(id="body"):
            yield FitTable(CHECK_COLUMNS, id="checks", cursor_type="row", zebra_stripes=True)
            yield Static("", id="info")
        yield Footer(compact=True)

    def on_mount(self) -> None:
        self.sub_title = self.device
        if self.watch is not None:  # polled from here while open: the fleet leaves it to this screen
            self.watch.hold(self.device)
            self.held = True
        self.poll()

    # ---- polling: one worker at a time, re-armed after each completes ----------------------------
    def schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(delay, self.poll)

    def on_screen_suspend(self) -> None:
        """Another screen (bench, a dialog) is on top: stop polling so it measures alone."""
        self.suspended = True
        if self._timer is not None:
            self._timer.stop()

    def on_screen_resume(self) -> None:
        if self.suspended:
            self.suspended = False
            self.poll()

    def poll(self) -> None:
        if self.stop_event.is_set() or self.polling or self.suspended:
            return
        if self.paused and self.connected:
            return
        self.polling = True
        self.poll_worker()

    @work(thread=True, exclusive=True, group="device-poll")
    def poll_worker(self) -> None:
        from fieldkit.errors import FieldkitError
        from fieldkit.devices import open_session, resolve
        from fieldkit.health import check_session

        try:
            if self.dev is None:
                self.dev = resolve(self.device, self.home)
            if self.watch is not None:  # the fleet's session, reconnected and journaled by the watch
                report = self.watch.poll(self.device, force=True, cancel=self.stop_event)
                self.session = self.watch.session(self.device)
                if report.error is None:
                    self.post_message(Sample(report))
                    return
                delay = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
                self.post_message(LinkDown(report.error.splitlines()[0], report.exception, delay))
                return
            if self.session is None or self.session.closed:
                self.session = open_session(self.dev, self.home, timeout=10.0, dead_after_s=5.0)
            report = check_session(self.session, profile=self.dev.profile, timeout=10.0, cancel=self.stop_event,
                                   record="changes", last_status=self.recorded_status)  # the first and every change
            self.recorded_status = report.status
            self.post_message(Sample(report))
        except FieldkitError as exc:
            if self.session is not None:
                if self.watch is None:  # the watch's session is the fleet's: the watch decides
                    self.session.close()
                self.session = None
            delay = BACKOFF[min(self.failures, len(BACKOFF) - 1)]
            self.post_message(LinkDown(str(exc).splitlines()[0], exc, delay))

    @on(Sample)
    def _sample(self, message: Sample) -> None:
        self.polling = False
        if self.stop_event.is_set():
            return
        r = message.report
        was_down = not self.connected and self.failures > 0
        self.connected, self.failures, self.last_ok = True, 0, self.app.clock()
        self.remove_class("stale")
        banner = self.query_one("#banner", Static)
        banner.set_classes("ok" if r.status == "ok" else r.status)
        state = "paused" if self.paused else f"every {self.interval:g} s"
        banner.update(f"{self.device}  {STATUS_STYLE.get(r.status, r.status)}   {r.target}   "
                      f"updated {self.app.clock_text()} ({state})")
        if was_down:
            self.notify(f"{self.device} is back", title="Reconnected")
        raw = r.raw
        cpu = (raw.get("cpu") or {}).get("percent")
        mem = (raw.get("memory") or {}).get("used_percent")
        temps = [z["temp_c"] for z in raw.get("temperatures") or []]
        for key, series, value, fmt in (("cpu", self.cpu, cpu, "CPU {:.0f} %"), ("mem", self.mem, mem, "Memory {:.0f} %"),
                                        ("temp", self.temp, max(temps) if temps else None, "Hottest {:.1f} °C")):
            if value is not None:
                series.append(value)
                spark = self.query_one(f"#{key}-spark", Sparkline)
                if key == "temp" and self.dev is not None:
                    spark.high = self.dev.profile.thresholds.temperature_c.crit  # full height: critical
                spark.data = list(series)
                self.query_one(f"#{key}-label", Static).update(fmt.format(value))
            elif key == "temp":
                self.query_one("#temp-label", Static).update("Temperature: not available")
        self.update_checks(r.checks)
        self.update_info(r)
        if not self.paused:
            self.schedule(self.interval)

    def update_checks(self, checks: list[Any]) -> None:
        from rich.markup import escape

        table = self.query_one("#checks", FitTable)
        self.checks = {c.name: c for c in checks}
        with self.app.batch_update():
            seen = set()
            for c in checks:
                seen.add(c.name)
                status = STATUS_STYLE.get(c.status, f"[dim]{c.status}[/]")
                if c.name in table.rows:
                    table.update_cell(c.name, "status", status)
                    table.update_cell(c.name, "detail", escape(c.message))
                else:
                    table.add_row(escape(c.name), status, escape(c.message), key=c.name)
            for key in [k for k in table.rows if str(k.value) not in seen]:
                table.remove_row(key)

    def update_info(self, r: Any) -> None:
        from fieldkit.textfmt import human_bytes, human_duration

        raw = r.raw
        rt = raw.get("runtime") or {}
        agent = raw.get("agent") or {}
        mem = raw.get("memory") or {}
        thr = raw.get("throttling") or {}
        svc = raw.get("service") or {}
        lines = [
            f"[b]{raw.get('hostname')}[/]  {raw.get('os')}",
            f"kernel {raw.get('kernel')} ({raw.get('machine')})",
            f"profile {r.profile}",
            f"uptime {human_duration(raw.get('uptime_s'))}",
            f"clock offset {r.clock_offset_s:+.2f} s" if r.clock_offset_s is not None else "clock offset n/a",
            "",
            f"memory {human_bytes(mem.get('available'))} free of {human_bytes(mem.get('total'))}",
            f"swap {human_bytes(mem.get('swap_used'))} of {human_bytes(mem.get('swap_total'))}",
            f"throttle source: {thr.get('source') or 'not available'}",
            "",
            f"Python {rt.get('python')}",
            f"onnxruntime {rt.get('onnxruntime') or 'not installed'}",
            f"providers {', '.join(rt.get('providers') or []) or '-'}",
            f"agent {agent.get('version')} (protocol {agent.get('protocol')})",
        ]
        if svc:
            lines.append(f"service {svc.get('unit')}: {svc.get('state')}")
        self.info_lines = lines
        self.query_one("#info", Static).update("\n".join(lines))

    @on(LinkDown)
    def _link_down(self, message: LinkDown) -> None:
        from fieldkit.errors import HostKeyError

        self.polling = False
        if self.stop_event.is_set():
            return
        self.failures += 1
        self.connected = False
        self.add_class("stale")
        banner = self.query_one("#banner", Static)
        banner.set_classes("down")
        since = (f"values below are from {self.app.clock_text(self.last_ok)}"
                 if self.last_ok else "no values yet")
        if isinstance(message.exc, HostKeyError):
            banner.update(f"{self.device}: NOT CONNECTED — host key not trusted")
            self.app.ask_host_key(self.device, self.dev.target if self.dev else self.device, message.exc,
                                  on_trusted=self.poll_now_after_trust)
            return
        banner.update(f"{self.device}: DISCONNECTED — {message.reason}\n"
                      f"{since}; reconnecting in {message.retry_in:g} s (attempt {self.failures})")
        self.schedule(message.retry_in)

    def poll_now_after_trust(self) -> None:
        self.failures = 0
        self.schedule(0.01)

    # ---- actions ------------------------------------------------------------------------------------
    @on(DataTable.RowSelected, "#checks")
    def action_check_detail(self) -> None:
        """The selected check in full: its whole message, the value and the profile's limits."""
        from screens.modals import DetailModal

        name = self.query_one("#checks", FitTable).selected_key()
        check = self.checks.get(name) if name else None
        if check is None:
            return
        fields = [("Check", check.name), ("Status", plain(STATUS_STYLE.get(check.status, check.status)))]
        if check.value is not None:
            fields.append(("Value", str(check.value)))
        if isinstance(check.limit, dict) and check.limit:
            fields.append(("Limits", ", ".join(f"{k} {v:g}" if isinstance(v, (int, float)) else f"{k} {v}"
                                               for k, v in check.limit.items())))
        elif check.limit is not None:
            fields.append(("Limit", str(check.limit)))
        fields.append(("Profile", self.dev.profile.name if self.dev else "-"))
        self.app.push_screen(DetailModal(f"{self.device} · check {check.name}", fields, check.message))

    def action_info(self) -> None:
        """The info panel's text in a view of its own (on a narrow terminal the panel is not shown)."""
        from screens.modals import DetailModal

        body = "\n".join(plain(line) for line in self.info_lines) or "No reading yet."
        self.app.push_screen(DetailModal(f"{self.device} · system", body=body))

    def action_back(self) -> None:
        self.stop_event.set()
        if self._timer is not None:
            self._timer.stop()
        session, self.session = self.session, None
        if session is not None and self.watch is None:
            threading.Thread(target=session.close, daemon=True).start()
        self.unhold()
        if self.watch is None:  # with the fleet's watch the session stays open: nothing to say
            self.notify(f"stopped polling {self.device}; link closed, nothing left running on the device",
                        timeout=3)
        self.app.pop_screen()

    def unhold(self) -> None:
        if self.held:
            self.held = False
            self.watch.unhold(self.device)

    def action_bench(self) -> None:
        from screens.bench import BenchScreen

        self.app.push_screen(BenchScreen(self.home, self.device, session_of=lambda: self.session))

    def action_models(self) -> None:
        from screens.models import ModelsScreen

        self.app.push_screen(ModelsScreen(self.home, self.device, borrow=lambda: self.session))

    def action_checklist(self) -> None:
        from screens.checklist import ChecklistScreen

        self.app.push_screen(ChecklistScreen(self.home, self.device, session_of=lambda: self.session))

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        if self.paused:
            if self._timer is not None:
                self._timer.stop()
            self.notify("live polling paused (space resumes)", timeout=2)
        else:
            self.notify(f"polling every {self.interval:g} s", timeout=2)
            self.poll()

    def action_poll_now(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self.poll()

    def _step(self, direction: int) -> None:
        i = min(range(len(INTERVALS)), key=lambda j: abs(INTERVALS[j] - self.interval))
        self.interval = INTERVALS[max(0, min(len(INTERVALS) - 1, i + direction))]
        self.notify(f"polling every {self.interval:g} s", timeout=2)

    def action_faster(self) -> None:
        self._step(-1)

    def action_slower(self) -> None:
        self._step(+1)

    def on_unmount(self) -> None:
        self.stop_event.set()
        self.unhold()
        if self.session is not None:
            session, self.session = self.session, None
            if self.watch is None:  # the watch's session stays open for the fleet
                threading.Thread(target=session.close, daemon=True).start()
