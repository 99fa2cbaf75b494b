"""Bench: run an inference benchmark on the device from the TUI, watch it live, read the verdict,
compare saved runs. All measuring is fieldkit.bench.run_bench on the device."""

from __future__ import annotations

import threading
from collections import deque
from typing import Any

from textual import on, work
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import (Button, DataTable, Footer, Header, Input, ProgressBar, Select, Sparkline,
                             Static)

from screens.actions import BENCH, bindings

HIST_BUCKETS = 24


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

    def __init__(self, home: Any, device: str) -> None:
        super().__init__(id="bench")
        self.home = home
        self.device = device
        self.cancel = threading.Event()
        self.running = False
        self.samples: deque[float] = deque(maxlen=2000)  # last_ms of progress events (sampled)
        self.temps: deque[float] = deque(maxlen=600)
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
            with Vertical(classes="spark-box"):
                yield Static("latency histogram (sampled, ms)", id="hist-label", classes="spark-label")
                yield Sparkline([], id="hist")
            with Vertical(classes="spark-box"):
                yield Static("temperature °C", id="temp-label", classes="spark-label")
                yield Sparkline([], id="temp-trace")
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
        self.samples.clear()
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
            report = run_bench(self.device, model, settings, use_case=use_case, home=self.home,
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
            self.set_banner("running", d.get("message") or "uploading")
            return
        if phase in ("warmup", "run"):
            if d.get("fraction") is not None:
                bar.update(total=100, progress=100 * float(d["fraction"]))
            if d.get("last_ms") is not None and phase == "run":
                self.samples.append(float(d["last_ms"]))
                self.query_one("#hist", Sparkline).data = histogram(list(self.samples))
                self.query_one("#hist-label", Static).update(
                    f"latency histogram (sampled): {min(self.samples):.1f} … {max(self.samples):.1f} ms")
            if d.get("temp_c") is not None:
                self.temps.append(float(d["temp_c"]))
                self.query_one("#temp-trace", Sparkline).data = list(self.temps)
                self.query_one("#temp-label", Static).update(f"temperature {d['temp_c']:.1f} °C")
            p = " ".join(f"{k[:-3]} {d[k]:.2f} ms" for k in ("p50_ms", "p90_ms", "p99_ms") if d.get(k) is not None)
            eta = f", ETA {d['eta_s']:.0f} s" if d.get("eta_s") is not None else ""
            self.set_banner("running", f"{phase}: {d.get('runs', 0)} runs{eta}  {p}   (Esc cancels)")
        elif d.get("message"):
            self.set_banner("running", d["message"])

    @on(BenchFinished)
    def _finished(self, message: BenchFinished) -> None:
        from fieldkit.errors import Cancelled

        self.running = False
        self.refresh_bindings()
        if message.error is not None:
            if isinstance(message.error, Cancelled):
                self.set_banner("warn", f"cancelled: {message.error.message}; nothing is left running on the device")
            else:
                self.set_banner("fail", str(message.error))
            return
        r = message.report
        doc = r.to_json()
        v = doc["verdict"]
        self.query_one("#bench-progress", ProgressBar).update(total=100, progress=100)
        self.set_banner(v["status"], f"{v['status'].upper()}: " + ("; ".join(v.get("reasons") or []) or "all checks passed"))
        table = self.query_one("#results", DataTable)
        table.clear()
        lat = doc.get("latency_ms") or {}
        rows = [("model", f"{doc['model'].get('name')} ({(doc['model'].get('sha256') or '')[:12]})"),
                ("runs", doc.get("runs")), ("valid (MLPerf early stopping)", doc.get("valid")),
                ("session create", _ms(doc.get("session_create_ms"))), ("first run", _ms(doc.get("first_run_ms")))]
        rows += [(k, _ms(lat.get(k))) for k in ("min", "mean", "std", "p50", "p90", "p95", "p99", "max")]
        rows += [("p90 early stopping", _ms(doc.get("p90_early_stopping_ms"))),
                 ("throughput", f"{doc.get('throughput_ips') or 0:.1f} /s"),
                 ("peak RSS", f"{(doc.get('peak_rss_bytes') or 0) / 2**20:.0f} MB"),
                 ("deadline misses", doc.get("deadline_misses"))]
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


def histogram(values: list[float], buckets: int = HIST_BUCKETS) -> list[float]:
    if not values:
        return []
    lo, hi = min(values), max(values)
    if hi <= lo:
        return [float(len(values))]
    width = (hi - lo) / buckets
    counts = [0.0] * buckets
    for v in values:
        counts[min(buckets - 1, int((v - lo) / width))] += 1
    return counts


def _ms(v: Any) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _fmt(v: Any, unit: str) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.2f} {unit}".strip()
    return f"{v} {unit}".strip()
