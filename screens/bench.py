"""Bench: run an inference benchmark on the device from the TUI, watch it live, read the verdict,
compare saved runs. All measuring is fieldkit.bench.run_bench on the device.

While it runs, the latency plot traces p50 and p99 of the runs so far (the device's progress
events, about two a second) and the temperature trace the hottest zone; when it ends, the plot is
the histogram of every run's latency from the result (the agent's log-spaced buckets), never a
histogram of the few progress samples. Latencies read in the unit that suits them (µs, ms, s).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Button, DataTable, Footer, Header, Input, ProgressBar, Select, Static

from fieldkit.textfmt import human_latency, transfer_text
from screens.actions import BENCH, bindings
from screens.plots import LatencyHistogram, TemperatureTrace

LIVE_POINTS = 1200  # progress events kept for the live traces (10 minutes at two a second)


class BenchProgress(Message):
    def __init__(self, data: dict) -> None:
        super().__init__()
        self.data = data


class BenchFinished(Message):
    def __init__(self, report: Any = None, error: Exception | None = None) -> None:
        super().__init__()
        self.report, self.error = report, error


class BenchScreen(Screen):
    BINDINGS = bindings(BENCH)
    AUTO_FOCUS = "#model"

    def __init__(self, home: Any, device: str, *, session_of: Callable[[], Any] | None = None) -> None:
        """``session_of`` gives the open session of the screen below (the fleet's, the device
        screen's): the run borrows it, so a serial port is never opened twice."""
        super().__init__(id="bench")
        self.home = home
        self.device = device
        self.session_of = session_of
        self.cancel = threading.Event()
        self.running = False
        # live traces from the progress events: (elapsed s, p50 ms, p99 ms) and (elapsed s, °C)
        self.live: deque[tuple[float, float, float]] = deque(maxlen=LIVE_POINTS)
        self.temps: deque[tuple[float, float]] = deque(maxlen=LIVE_POINTS)
        self.selected_reports: list[str] = []

    def compose(self) -> ComposeResult:
        from fieldkit.devices import resolve

        try:
            profile = resolve(self.device, self.home).profile
            cases = list(profile.use_cases)
        except Exception:
            cases = []
        yield Header(show_clock=True)
        with Horizontal(id="bench-form"):
            yield Input(placeholder="model: path/to/model.onnx, model dir, or installed:NAME[@VERSION]", id="model")
            yield Select([(c, c) for c in cases], prompt="use case (budget)", id="use-case")
            yield Input(placeholder="duration s (20)", id="duration", type="number")
            yield Input(placeholder="threads (0=auto)", id="threads", type="integer")
            yield Button("Start", id="start", variant="success")
        yield Static(f"Benchmark on {self.device}: pick a model and press Start (Enter).", id="bench-banner")
        yield ProgressBar(total=100, show_eta=True, id="bench-progress")
        with Horizontal(id="bench-live"):
            with Vertical(classes="plot-box"):
                yield Static("latency: starts with the run", id="hist-label", classes="spark-label")
                yield LatencyHistogram(id="hist")
            with Vertical(classes="plot-box"):
                yield Static("temperature: starts with the run", id="temp-label", classes="spark-label")
                yield TemperatureTrace(id="temp-trace")
        with Horizontal(id="bench-body"):
            results: DataTable = DataTable(id="results", cursor_type="none", zebra_stripes=True)
            results.add_columns("Measure", "Value")
            yield results
            saved: DataTable = DataTable(id="saved", cursor_type="row", zebra_stripes=True)
            saved.add_columns("Saved run", "Model", "p99", "Verdict")
            yield saved
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"bench · {self.device}"
        self.load_saved()

    # ---- start / cancel ------------------------------------------------------------------------
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "start":
            return None if self.running else True
        if action == "compare":
            return True if len(self.selected_reports) == 2 else None
        return True

    @on(Input.Submitted)
    @on(Button.Pressed, "#start")
    def action_start(self) -> None:
        if self.running:
            return
        from fieldkit.bench import BenchSettings
        from fieldkit.errors import FieldkitError

        model = self.query_one("#model", Input).value.strip()
        if not model:
            self.notify("name a model first (a .onnx file, a model directory, or installed:NAME)", severity="warning")
            return
        dur = self.query_one("#duration", Input).value.strip()
        thr = self.query_one("#threads", Input).value.strip()
        case = self.query_one("#use-case", Select).value
        try:
            settings = BenchSettings(duration_s=float(dur) if dur else None, threads=int(thr) if thr else 0)
        except (FieldkitError, ValueError) as exc:
            self.notify(str(exc), severity="error")
            return
        self.running = True
        self.cancel.clear()
        self.live.clear()
        self.temps.clear()
        self.query_one("#results", DataTable).clear()
        self.query_one("#bench-progress", ProgressBar).update(total=100, progress=0)
        self.set_banner("running", f"connecting to {self.device} …")
        self.refresh_bindings()
        self.run_bench_worker(model, settings, case if isinstance(case, str) else None)

    @work(thread=True, exclusive=True, group="bench-run")
    def run_bench_worker(self, model: str, settings: Any, use_case: str | None) -> None:
        from fieldkit.bench import run_bench
        from fieldkit.benchreport import save_report
        from fieldkit.errors import FieldkitError

        try:
            lent = self.session_of() if self.session_of is not None else None
            target = lent if lent is not None and not lent.closed else self.device
            report = run_bench(target, model, settings, use_case=use_case, home=self.home,
                               progress=lambda d: self.post_message(BenchProgress(dict(d))), cancel=self.cancel)
            save_report(self.home, report)
            self.post_message(BenchFinished(report=report))
        except FieldkitError as exc:
            self.post_message(BenchFinished(error=exc))

    def action_cancel_or_back(self) -> None:
        if self.running:
            self.cancel.set()
            self.set_banner("running", "cancelling: stopping the benchmark process on the device …")
        else:
            self.app.pop_screen()

    # ---- live updates ----------------------------------------------------------------------------
    @on(BenchProgress)
    def _progress(self, message: BenchProgress) -> None:
        d = message.data
        phase = d.get("phase")
        bar = self.query_one("#bench-progress", ProgressBar)
        if phase == "upload" and d.get("bytes_total"):
            bar.update(total=d["bytes_total"], progress=d.get("bytes_done", 0))
            self.set_banner("running", f"uploading {d.get('what', 'the model')}: "
                            + transfer_text(d.get("bytes_done") or 0, d["bytes_total"], d.get("rate_bps"), d.get("eta_s"))
                            + "   (Esc cancels)")
            return
        if phase in ("warmup", "run"):
            if d.get("fraction") is not None:
                bar.update(total=100, progress=100 * float(d["fraction"]))
            if phase == "run":
                self.live_update(d)
            p = " ".join(f"{k[:-3]} {human_latency(d[k])}" for k in ("p50_ms", "p90_ms", "p99_ms") if d.get(k) is not None)
            eta = f", ETA {d['eta_s']:.0f} s" if d.get("eta_s") is not None else ""
            self.set_banner("running", f"{phase}: {d.get('runs', 0)} runs{eta}  {p}   (Esc cancels)")
        elif d.get("message"):
            self.set_banner("running", d["message"])

    def live_update(self, d: dict) -> None:
        """One progress event of the timed runs: extend the p50/p99 and temperature traces."""
        t = d.get("elapsed_s")
        if t is None:
            return
        if d.get("p50_ms") is not None and d.get("p99_ms") is not None:
            self.live.append((float(t), float(d["p50_ms"]), float(d["p99_ms"])))
            xs = [x for x, _, _ in self.live]
            self.query_one("#hist", LatencyHistogram).show_trace(
                xs, {"p50": [a for _, a, _ in self.live], "p99": [b for _, _, b in self.live]})
            self.query_one("#hist-label", Static).update(
                f"latency, live: p50 {human_latency(d['p50_ms'])} · p99 {human_latency(d['p99_ms'])} over "
                f"{d.get('runs', 0)} runs so far, by second (every run's histogram comes with the result)")
        if d.get("temp_c") is not None:
            self.temps.append((float(t), float(d["temp_c"])))
            self.show_temperatures(f"hottest zone {d['temp_c']:.1f} °C, by second")

    def show_temperatures(self, label: str) -> None:
        self.query_one("#temp-trace", TemperatureTrace).show([x for x, _ in self.temps], [c for _, c in self.temps])
        self.query_one("#temp-label", Static).update(label)

    def show_histogram(self, doc: dict) -> None:
        """Every run's latency, from the result's histogram (an agent's log-spaced buckets)."""
        hist = doc.get("latencies_ms") or {}
        lat = doc.get("latency_ms") or {}
        edges, counts = list(hist.get("edges_ms") or []), list(hist.get("counts") or [])
        plot = self.query_one("#hist", LatencyHistogram)
        label = self.query_one("#hist-label", Static)
        if not counts or len(edges) != len(counts) + 1:
            plot.show_histogram([], [])
            label.update("latency: the device sent no histogram of its runs (an older agent?)")
            return
        marks = {k: lat[k] for k in ("p50", "p99") if lat.get(k) is not None}
        plot.show_histogram(edges, counts, marks=marks)
        label.update(f"latency of all {sum(counts):,} runs"
                     + "".join(f" · {k} {human_latency(v)}" for k, v in marks.items()) + " (runs per bucket)")

    @on(BenchFinished)
    def _finished(self, message: BenchFinished) -> None:
        from fieldkit.errors import Cancelled

        self.running = False
        self.refresh_bindings()
        if message.error is not None:
            if isinstance(message.error, Cancelled):
                # the core's message already says what is left on the device (it may be something)
                self.set_banner("warn", message.error.message)
            else:
                self.set_banner("fail", str(message.error))
            return
        r = message.report
        doc = r.to_json()
        v = doc["verdict"]
        self.query_one("#bench-progress", ProgressBar).update(total=100, progress=100)
        self.set_banner(v["status"], f"{v['status'].upper()}: " + ("; ".join(v.get("reasons") or []) or "all checks passed"))
        self.show_histogram(doc)
        thermal = doc.get("thermal") or {}
        if self.temps:
            self.show_temperatures(f"hottest zone {self.temps[0][1]:.1f} → {self.temps[-1][1]:.1f} °C "
                                   f"(max {max(c for _, c in self.temps):.1f}), by second")
        elif thermal:  # no trace (a short run): the result's start, max and end per zone
            self.query_one("#temp-label", Static).update("; ".join(
                f"{zone} {span['start']:.1f} → {span['end']:.1f} °C (max {span['max']:.1f})"
                for zone, span in list(thermal.items())[:3]))
        else:
            self.query_one("#temp-label", Static).update("temperature: the device reports no thermal zone")
        table = self.query_one("#results", DataTable)
        table.clear()
        lat = doc.get("latency_ms") or {}
        # what a go/no-go reads first comes first (on 80x24 only the first rows show without scrolling)
        rows = [(k, _ms(lat.get(k))) for k in ("p50", "p99")]
        rows += [("throughput", f"{doc.get('throughput_ips') or 0:.1f} /s"), ("runs", doc.get("runs")),
                 ("valid (MLPerf early stopping)", doc.get("valid"))]
        rows += [(k, _ms(lat.get(k))) for k in ("p90", "p95", "max", "min", "mean", "std")]
        rows += [("p90 early stopping", _ms(doc.get("p90_early_stopping_ms"))),
                 ("session create", _ms(doc.get("session_create_ms"))), ("first run", _ms(doc.get("first_run_ms"))),
                 ("peak RSS", f"{(doc.get('peak_rss_bytes') or 0) / 2**20:.0f} MB"),
                 ("deadline misses", doc.get("deadline_misses")),
                 ("model", f"{doc['model'].get('name')} ({(doc['model'].get('sha256') or '')[:12]})")]
        for k, v2 in rows:
            table.add_row(k, str(v2))
        self.load_saved()

    def set_banner(self, status: str, text: str) -> None:
        banner = self.query_one("#bench-banner", Static)
        banner.set_classes({"pass": "ok", "warn": "warn", "fail": "crit", "running": "connecting"}.get(status, status))
        banner.update(text)

    # ---- saved runs and compare -------------------------------------------------------------------
    def load_saved(self) -> None:
        from fieldkit.benchreport import list_reports

        table = self.query_one("#saved", DataTable)
        table.clear()
        try:
            reports = list_reports(self.home)
        except Exception as exc:
            self.notify(f"saved reports unreadable: {exc}", severity="error")
            return
        for r in reports[-50:]:
            doc = r.to_json()
            mark = "✓ " if r.id in self.selected_reports else ""
            table.add_row(mark + r.id, doc["model"].get("name") or "?", _ms((doc.get("latency_ms") or {}).get("p99")),
                          r.verdict.status, key=r.id)

    @on(DataTable.RowSelected, "#saved")
    def _pick(self, event: DataTable.RowSelected) -> None:
        rid = str(event.row_key.value)
        if rid in self.selected_reports:
            self.selected_reports.remove(rid)
        else:
            self.selected_reports = (self.selected_reports + [rid])[-2:]
        self.load_saved()
        self.refresh_bindings()
        if len(self.selected_reports) == 2:
            self.notify("two runs picked: press c to compare", timeout=3)

    def action_compare(self) -> None:
        if len(self.selected_reports) != 2:
            self.notify("pick two saved runs (Enter on each) to compare", severity="warning")
            return
        from fieldkit.benchreport import compare, load_report

        a, b = (load_report(self.home, r) for r in self.selected_reports)
        table = self.query_one("#results", DataTable)
        table.clear(columns=True)
        table.add_columns("Measure", "A", "B", "Δ %")
        for row in compare(a, b):
            delta = "" if row.delta_pct is None else f"{row.delta_pct:+.1f}"
            table.add_row(row.metric, _fmt(row.a, row.unit), _fmt(row.b, row.unit), delta)
        self.set_banner("running", f"A = {a.id}   B = {b.id}")


def _ms(v: Any) -> str:
    return human_latency(v)


def _fmt(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if unit == "ms" and isinstance(v, (int, float)):
        return human_latency(v)
    if isinstance(v, float):
        return f"{v:.2f} {unit}".strip()
    return f"{v} {unit}".strip()
