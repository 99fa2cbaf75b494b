"""Honest plots in the TUI: sparklines on fixed scales, and the bench screen's histogram of every
run (from the result, not from the progress samples) with latencies in units that suit them.
Pilot against a real ONNX model benchmarked by the real agent on a local device."""

from __future__ import annotations

import time

from conftest import wait_for
from rich.console import Console
from textual.app import App, ComposeResult
from textual.widgets import DataTable, Input, Static

from fieldkit.inventory import add_device
from screens.app import build_app
from screens.bench import BenchProgress, BenchScreen
from screens.plots import LatencyHistogram, TemperatureTrace
from screens.sparkline import FixedRangeRenderable, FixedSparkline


def _rows(renderable, width: int) -> list[str]:
    console = Console(width=width, color_system=None, legacy_windows=False)
    lines = console.render_lines(renderable, console.options.update_width(width), pad=False)
    return ["".join(seg.text for seg in line) for line in lines]


def test_a_steady_low_value_stays_low_on_a_fixed_scale() -> None:
    low = _rows(FixedRangeRenderable([2.0] * 10, low=0, high=100, width=10, height=3), 10)
    assert low == [" " * 10, " " * 10, "▁" * 10]  # 2 % of three rows: the baseline only
    half = _rows(FixedRangeRenderable([50.0] * 4, low=0, high=100, width=4, height=2), 4)
    assert half == ["    ", "████"]
    full = _rows(FixedRangeRenderable([100.0], low=0, high=100, width=3, height=2), 3)
    assert full == ["███", "███"]
    # above the top is clipped to full height, below the bottom to the baseline
    assert _rows(FixedRangeRenderable([150.0, -5.0], low=0, high=100, width=2, height=1), 2) == ["█▁"]
    # a temperature scale: 50 °C between 20 and 80 is half
    assert _rows(FixedRangeRenderable([50.0], low=20, high=80, width=1, height=1), 1) == ["▄"]


async def test_device_screen_sparklines_use_fixed_scales(home, tmp_path) -> None:
    from screens.device import DeviceScreen

    root = tmp_path / "dev"
    root.mkdir()
    add_device(home, "press-7", f"local:{root}", profile="raspberry-pi-5")
    app = build_app(home, fleet_refresh_s=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = DeviceScreen(home, "press-7")
        await app.push_screen(screen)
        await wait_for(pilot, lambda: len(screen.cpu) >= 1, what="a health sample")
        cpu, mem = screen.query_one("#cpu-spark", FixedSparkline), screen.query_one("#mem-spark", FixedSparkline)
        assert (cpu.low, cpu.high, mem.low, mem.high) == (0.0, 100.0, 0.0, 100.0)
        temp = screen.query_one("#temp-spark", FixedSparkline)
        assert temp.low == 20.0
        cpu.data = [2.0] * 20  # what the demo's idle device reads: no longer a full-height block
        await pilot.pause()
        rows = _rows(cpu.render(), cpu.size.width)
        assert all(not r.strip() for r in rows[:-1]) and set(rows[-1]) == {"▁"}, rows


async def test_bench_screen_plots_every_run_of_a_sub_millisecond_model(home, tmp_path) -> None:
    from models import model_paths

    root = tmp_path / "dev"
    root.mkdir()
    add_device(home, "press-7", f"local:{root}", profile="raspberry-pi-5")
    progress: list[dict] = []
    handled: dict[int, object] = {}

    def hook(message) -> None:
        if isinstance(message, BenchProgress) and id(message) not in handled:
            handled[id(message)] = message
            progress.append(message.data)

    app = build_app(home, fleet_refresh_s=3600)
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        screen = BenchScreen(home, "press-7")
        await app.push_screen(screen)
        screen.query_one("#model", Input).value = str(model_paths()["anomaly-tabular"])
        screen.query_one("#duration", Input).value = "2"
        screen.query_one("#model", Input).focus()
        await pilot.press("enter")
        def label() -> str:
            return str(screen.query_one("#hist-label", Static).render())

        live_seen: list[str] = []
        deadline = time.monotonic() + 90
        while screen.running:
            if label().startswith("latency, live"):
                live_seen.append(label())
            assert time.monotonic() < deadline, "the benchmark did not finish"
            await pilot.pause(0.05)
        await wait_for(pilot, lambda: label().startswith("latency of all"), what="the histogram of every run")

        plot = screen.query_one("#hist", LatencyHistogram)
        table = screen.query_one("#results", DataTable)
        rows = {str(table.get_row_at(i)[0]): str(table.get_row_at(i)[1]) for i in range(table.row_count)}
        runs = int(rows["runs"])
        samples = [d for d in progress if d.get("phase") == "run"]
        # every run is in the histogram, far more than the progress events that used to make it
        assert sum(plot.drawn) == runs and runs > 10 * max(1, len(samples)), (runs, len(samples))
        assert f"latency of all {runs:,} runs" in label()
        # a sub-millisecond model reads in µs (it used to read "0.0 … 0.0 ms")
        assert rows["p50"].endswith(" µs") or rows["p50"].endswith(" ns"), rows["p50"]
        assert "0.0 ms" not in label() and "µs" in label()
        drawn = plot.render().plain
        assert "µs" in drawn and "0.0 … 0.0" not in drawn
        # while it ran, the plot traced p50/p99 live
        assert live_seen and "p99" in live_seen[-1]
        # the model went up with moving byte counts to its end
        up = [d["bytes_done"] for d in progress if d.get("phase") == "upload"]
        assert up and up == sorted(up) and up[-1] == progress[[d.get("phase") for d in progress].index("upload")]["bytes_total"]
        # a result without a histogram (an older agent) says so instead of drawing samples
        screen.show_histogram({"latency_ms": {"p50": 0.1}})
        assert plot.drawn == [] and "no histogram" in label()


class _Plots(App):
    def compose(self) -> ComposeResult:
        yield LatencyHistogram(id="h")
        yield TemperatureTrace(id="t")


async def test_plots_label_their_axes_in_units_that_suit_the_numbers() -> None:
    app = _Plots()
    async with app.run_test(size=(60, 24)) as pilot:
        hist, temp = app.query_one(LatencyHistogram), app.query_one(TemperatureTrace)
        edges = [0.004 * 1.25 ** i for i in range(21)]  # 4 µs .. 0.35 ms, log-spaced like the agent's
        counts = [0] * 20
        counts[2], counts[3], counts[19] = 5000, 700, 2
        hist.show_histogram(edges, counts, marks={"p50": 0.0065, "p99": 0.3})
        temp.show([0.5, 1.0, 1.5, 2.0], [48.0, 48.5, 49.0, 49.5])
        await pilot.pause()
        h, t = hist.render().plain, temp.render().plain
    assert hist.drawn == counts
    assert "4 µs" in h and "347 µs" in h and " ms" not in h  # x ticks in µs, never "0.0 ms"
    assert "1k" in h and "1" in h  # runs on a log axis: the two slow runs show beside the thousands
    assert "°C" in t
    assert LatencyHistogram._position(edges, edges[5]) == 5.0
    assert LatencyHistogram._position(edges, 10.0) is None
