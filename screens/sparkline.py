"""A sparkline on a fixed scale.

Textual's ``Sparkline`` scales every series to its own minimum and maximum, so a CPU steady at
2 % draws full height and a single sample always fills the box. Percentages need 0-100; a
temperature reads best against the range the device works in. :class:`FixedSparkline` draws
each bar against ``low``..``high`` (values outside are clipped to the edges).
"""

from __future__ import annotations

from typing import Sequence

from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from textual.reactive import reactive
from textual.renderables._blend_colors import blend_colors
from textual.renderables.sparkline import Sparkline as SparklineRenderable
from textual.widgets import Sparkline


class FixedRangeRenderable(SparklineRenderable):
    """Textual's sparkline renderable with the scale given instead of taken from the data."""

    def __init__(self, data: Sequence[float], *, low: float, high: float, **kw) -> None:
        super().__init__(data, **kw)
        self.low, self.high = low, max(high, low + 1e-9)

    def ratio(self, value: float) -> float:
        return min(1.0, max(0.0, (value - self.low) / (self.high - self.low)))

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = self.width or options.max_width
        height = self.height or 1
        data = list(self.data)
        if not data:
            for _ in range(height - 1):
                yield Segment.line()
            yield Segment("▁" * width, self.min_color)
            return
        levels = len(self.BARS) * height  # eighths of a cell, bottom to top
        buckets = list(self._buckets(data, num_buckets=min(width, len(data))))
        step = len(buckets) / width
        lo_color, hi_color = self.min_color.color, self.max_color.color
        assert lo_color is not None and hi_color is not None
        bars = []
        for col in range(width):
            ratio = self.ratio(self.summary_function(buckets[int(col * step)]))
            bars.append((ratio, round(ratio * levels)))  # 0: an empty column, levels: full height
        for row in reversed(range(height)):
            base = row * len(self.BARS)
            for ratio, filled in bars:
                if filled <= base:
                    yield Segment("▁" if row == 0 else " ", self.min_color if row == 0 else None)
                    continue
                part = min(len(self.BARS), filled - base)
                yield Segment(self.BARS[part - 1], Style.from_color(blend_colors(lo_color, hi_color, ratio)))
            if row > 0:
                yield Segment.line()


class FixedSparkline(Sparkline):
    """A :class:`~textual.widgets.Sparkline` drawn against ``low``..``high`` (0-100 by default)."""

    low = reactive(0.0)
    high = reactive(100.0)

    def __init__(self, data: Sequence[float] | None = None, *, low: float = 0.0, high: float = 100.0,
                 **kw) -> None:
        super().__init__(data, **kw)
        self.low, self.high = low, high

    def render(self) -> RenderResult:
        plain = super().render()  # Textual's renderable, with the colours its CSS resolved
        return FixedRangeRenderable(
            list(self.data or []), low=self.low, high=self.high, width=self.size.width, height=self.size.height,
            min_color=plain.min_color.color, max_color=plain.max_color.color,
            summary_function=self.summary_function)
