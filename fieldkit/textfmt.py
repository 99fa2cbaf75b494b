"""Plain-text tables and units for the CLI and the TUI alike (no rich: the core stays UI-free).

One formatter per quantity, so the CLI and the screens say the same thing the same way:
bytes, durations, latencies (adaptive units: µs, ms, s) and transfer progress (:class:`TransferMeter`
keeps a transfer's rate over a sliding window and its ETA; :func:`transfer_text` says it).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from typing import Any, Callable, Sequence

_COLORS = {"ok": "32", "warn": "33", "crit": "31;1", "unreachable": "35;1", "n/a": "2"}


def use_color(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return hasattr(stream, "isatty") and stream.isatty() and "NO_COLOR" not in os.environ


def status_text(status: str, color: bool) -> str:
    label = status.upper() if status in ("warn", "crit") else status
    if color and status in _COLORS:
        return f"\x1b[{_COLORS[status]}m{label}\x1b[0m"
    return label


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "") -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(_visible_len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [c + " " * (widths[i] - _visible_len(c)) for i, c in enumerate(row)]
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def _visible_len(text: str) -> int:
    out, skip = 0, False
    for ch in text:
        if ch == "\x1b":
            skip = True
        elif skip and ch == "m":
            skip = False
        elif not skip:
            out += 1
    return out


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_duration(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    d, rem = divmod(s, 86400)
    h, rem = divmod(rem, 3600)
    m, _ = divmod(rem, 60)
    if d:
        return f"{d}d {h}h"
    if h:
        return f"{h}h {m}m"
    return f"{m}m {s % 60}s"


def human_latency(ms: float | None, digits: int = 3) -> str:
    """A latency in the unit that suits it, ``digits`` significant figures: 850 ns, 12.3 µs,
    148 µs, 1.48 ms, 14.8 ms, 2.35 s (a sub-millisecond model never reads "0.0 ms")."""
    if ms is None:
        return "-"
    v = float(ms)
    if v == 0:
        return "0 ms"
    units = ((1e-6, "ns"), (1e-3, "µs"), (1.0, "ms"), (1000.0, "s"))
    i = max([0] + [k for k, (scale, _) in enumerate(units) if abs(v) >= scale])
    text = _sig(v / units[i][0], digits)
    if abs(float(text)) >= 1000 and i + 1 < len(units):  # 999.96 µs rounds up: say 1.00 ms
        i += 1
        text = _sig(v / units[i][0], digits)
    return f"{text} {units[i][1]}"


def _sig(x: float, digits: int) -> str:
    """``x`` to ``digits`` significant figures, never in exponent form."""
    return f"{x:.0f}" if abs(x) >= 10 ** digits else f"{x:.{digits}g}"


def human_eta(s: float | None) -> str:
    """Time left: "42 s", "3m 40s", "2h 5m"; "-" when unknown."""
    if s is None:
        return "-"
    return f"{max(0.0, s):.0f} s" if s < 60 else human_duration(s)


class TransferMeter:
    """Rate and ETA of a transfer, from the progress it reports.

    The rate is taken over the last ``window_s`` seconds (a sliding window: a stall or a burst
    shows within seconds, not averaged over the whole run); bytes that were already there when
    the meter started (a resumed transfer) do not count as moved. :meth:`update` says when a new
    reading is worth showing (every ``every_s``, and the end), so a fast link does not flood a
    screen with thousands of redraws."""

    def __init__(self, total: int, done: int = 0, *, window_s: float = 5.0, every_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = max(0, int(total))
        self.done = int(done)
        self.window_s = window_s
        self.every_s = every_s
        self.clock = clock
        self._samples: deque[tuple[float, int]] = deque([(clock(), self.done)])
        self._shown_at: float | None = None

    def update(self, done: int) -> bool:
        """Record ``done`` bytes; True when this reading should be shown."""
        now = self.clock()
        self.done = max(self.done, int(done))
        self._samples.append((now, self.done))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window_s:
            self._samples.popleft()  # keep one sample at or beyond the window's start
        if self.done >= self.total or self._shown_at is None or now - self._shown_at >= self.every_s:
            self._shown_at = now
            return True
        return False

    @property
    def rate_bps(self) -> float | None:
        """Bytes per second over the window; None until some time has passed."""
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 - t0 >= 0.05 else None

    @property
    def eta_s(self) -> float | None:
        rate = self.rate_bps
        if self.done >= self.total:
            return 0.0
        return (self.total - self.done) / rate if rate else None

    def fields(self) -> dict[str, Any]:
        """The progress event fields every transfer reports."""
        return {"bytes_done": self.done, "bytes_total": self.total, "rate_bps": self.rate_bps, "eta_s": self.eta_s}


def transfer_text(done: int, total: int, rate_bps: float | None = None, eta_s: float | None = None, *,
                  percent: bool = True) -> str:
    """"1.2 MiB of 3.7 MiB (32 %) · 11.2 KiB/s · 3m 40s left": what a transfer's progress reads
    as, in the CLI and the TUI (``percent=False`` beside a progress bar that shows it)."""
    parts = [f"{human_bytes(done)} of {human_bytes(total)}"
             + (f" ({100 * done / total:.0f} %)" if total and percent else "")]
    if rate_bps is not None:
        parts.append(f"{human_bytes(rate_bps)}/s")
    if eta_s is not None and done < total:
        parts.append(f"{human_eta(eta_s)} left")
    return " · ".join(parts)
