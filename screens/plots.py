"""Real plots (plotext, through textual-plotext) for the bench screen: the latency histogram of
every run and the temperature trace, with labelled axes in units that suit the numbers.

The plots are drawn at render time, for the size they have then: plotext, given more tick labels
than fit, drops some by an order that changes from one Python process to the next (hash
seeding), so a plot would not look the same twice. Each plot gives exactly as many ticks as its
rows and columns hold."""

from __future__ import annotations

import math
from typing import Callable, Sequence

from textual.app import RenderResult
from textual_plotext import PlotextPlot

from fieldkit.textfmt import human_latency

MAX_TICKS = 5
FRAME_ROWS = 3  # the frame's top and bottom lines and the x tick labels: the rest are data rows


def _ticks(lo: float, hi: float, n: int = MAX_TICKS) -> list[float]:
    if hi <= lo or n < 2:
        return [lo]
    return [lo + (hi - lo) * i / (n - 1) for i in range(n)]


def _log_height(count: int) -> float:
    """Bar height on the log count axis: 0 runs -> 0, 1 -> 1, 10 -> 2, 100 -> 3 ..."""
    return math.log10(count) + 1 if count > 0 else 0.0


def _runs(n: int) -> str:
    for div, unit in ((10 ** 9, "G"), (10 ** 6, "M"), (10 ** 3, "k")):
        if n >= div:
            return f"{n // div}{unit}"
    return str(n)


def _log_ticks(top_count: int, rows: int) -> tuple[list[float], list[str]]:
    """Ticks of the log count axis, labelled in runs (0, 1, 10, 100, 1k, ...), no more than
    ``rows``: every ``step``-th decade, the axis ending on a tick at or above the tallest bar."""
    top = max(1, math.ceil(_log_height(max(1, top_count)) - 1e-9))
    step = 1
    while math.ceil(top / step) + 1 > max(2, rows):
        step += 1
    levels = list(range(0, step * math.ceil(top / step) + 1, step))
    return [float(t) for t in levels], ["0" if t == 0 else _runs(10 ** (t - 1)) for t in levels]


def _fitting(n_max: int, room: int, label_width: int) -> int:
    """How many tick labels of ``label_width`` fit side by side in ``room`` columns (at least 2)."""
    return max(2, min(n_max, room // (label_width + 2)))


class _SizedPlot(PlotextPlot):
    """A plot whose figure is set up by ``self._draw(width, height)`` right before each render."""

    _draw: Callable[[int, int], None] | None = None

    def _redraw(self, draw: Callable[[int, int], None]) -> None:
        self._draw = draw
        self.refresh()

    def render(self) -> RenderResult:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        if self._draw is not None and self.size.width > 8 and self.size.height > FRAME_ROWS:
            self._draw(self.size.width, self.size.height)
        return super().render()


class LatencyHistogram(_SizedPlot):
    """Runs per latency bucket. The agent's buckets are log-spaced from the fastest to the
    slowest run, so they stand side by side with their edges on the x axis (µs, ms or s); the
    count axis is logarithmic too, so the few slow runs of the tail (what a p99 budget is about)
    show beside the thousands of typical ones. No title or axis names: the label above says
    what is drawn, and at 80x24 every row is a row of bars."""

    drawn: Sequence[int] = ()
    """The run counts on screen (empty while a live trace or nothing is shown)."""

    def show_histogram(self, edges_ms: Sequence[float], counts: Sequence[int], *,
                       marks: dict[str, float] | None = None) -> None:
        """``edges_ms`` has one more entry than ``counts``; ``marks`` puts named vertical lines
        (p50, p99) at their latency."""
        n = len(counts)
        edges, counts = list(edges_ms), list(counts)
        self.drawn = counts if n and len(edges) == n + 1 else []
        if not self.drawn:
            self._redraw(lambda w, h: None)
            return
        positions = {k: x for k, v in (marks or {}).items() if (x := self._position(edges, v)) is not None}

        def draw(width: int, height: int) -> None:
            plt = self.plt
            plt.bar([i + 0.5 for i in range(n)], [_log_height(c) for c in counts], width=1.0, marker="hd")
            yt, yl = _log_ticks(max(counts), height - FRAME_ROWS)
            plt.yticks(yt, yl)
            plt.ylim(0, yt[-1])
            labels = [human_latency(e) for e in edges]
            room = width - max(len(t) for t in yl) - 3
            k = _fitting(min(MAX_TICKS, n + 1), room, max(len(t) for t in labels))
            idx = sorted({round(x) for x in _ticks(0, n, k)})
            plt.xticks([float(i) for i in idx], [labels[i] for i in idx])
            plt.xlim(0, n)
            for name, x in positions.items():
                plt.vline(x, "red" if name == "p99" else "orange")

        self._redraw(draw)

    @staticmethod
    def _position(edges: Sequence[float], value: float) -> float | None:
        """Where ``value`` falls on the bucket axis (log interpolation inside its bucket)."""
        for i in range(len(edges) - 1):
            a, b = edges[i], edges[i + 1]
            if a <= value <= b:
                if b <= a or a <= 0:
                    return float(i)
                return i + math.log(value / a) / math.log(b / a)
        return None

    def show_trace(self, seconds: Sequence[float], series: dict[str, Sequence[float]]) -> None:
        """Live: named latency series (p50, p99 of the runs so far) over the run's seconds."""
        self.drawn = []
        xs = list(seconds)
        lines = {name: list(s) for name, s in series.items()}
        values = [v for s in lines.values() for v in s]
        if not xs or not values:
            self._redraw(lambda w, h: None)
            return

        def draw(width: int, height: int) -> None:
            plt = self.plt
            for name, s in lines.items():
                plt.plot(xs, s, label=name, marker="braille")
            lo, hi = min(values), max(values)
            pad = (hi - lo) * 0.1 or hi * 0.1 or 1e-3
            ticks = _ticks(max(0.0, lo - pad), hi + pad, max(2, min(4, height - FRAME_ROWS)))
            plt.yticks(ticks, [human_latency(t) for t in ticks])
            plt.ylim(ticks[0], ticks[-1])
            _seconds_axis(plt, xs, width - 10)

        self._redraw(draw)


def _seconds_axis(plt, xs: Sequence[float], room: int) -> None:
    lo, hi = min(xs), max(xs)
    ticks = _ticks(lo, hi, _fitting(MAX_TICKS, room, 6))
    plt.xticks(ticks, [f"{t:.0f} s" if hi - lo >= 4 else f"{t:.1f} s" for t in ticks])


class TemperatureTrace(_SizedPlot):
    """The hottest zone over the run's seconds, °C on a labelled axis that keeps at least a few
    degrees of range (so a steady temperature is a flat line, not noise blown up)."""

    MIN_SPAN_C = 10.0

    def show(self, seconds: Sequence[float], temps: Sequence[float]) -> None:
        xs, ys = list(seconds), list(temps)
        if not xs or not ys:
            self._redraw(lambda w, h: None)
            return

        def draw(width: int, height: int) -> None:
            plt = self.plt
            plt.plot(xs, ys, marker="braille")
            lo, hi = min(ys), max(ys)
            mid = (lo + hi) / 2
            half = max(self.MIN_SPAN_C, hi - lo + 2.0) / 2
            ticks = _ticks(mid - half, mid + half, max(2, min(3, height - FRAME_ROWS)))
            plt.yticks(ticks, [f"{t:.0f} °C" for t in ticks])
            plt.ylim(ticks[0], ticks[-1])
            _seconds_axis(plt, xs, width - 10)

        self._redraw(draw)
