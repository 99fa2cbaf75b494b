"""Upload progress that moves: the device's own count of landed bytes, chunks sized to the link,
and one rate/ETA formatter for the CLI and the TUI. Real agents over a local link and a throttled
pty serial line."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from fieldkit.cli.bench import ProgressLine
from fieldkit.devices import open_session
from fieldkit.link.client import CHUNK_TARGET_S, MIN_CHUNK, _next_chunk
from fieldkit.sim import make_device_root
from fieldkit.sim.ptyrelay import PtyRelay
from fieldkit.textfmt import TransferMeter, human_eta, human_latency, transfer_text

CACHE = "/var/lib/fieldkit/bench-cache"  # open over serial without an operator (a bench upload)


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[int, int, str, float]] = []
        self.lock = threading.Lock()

    def __call__(self, done: int, total: int) -> None:
        with self.lock:
            self.events.append((done, total, threading.current_thread().name, time.monotonic()))

    @property
    def done(self) -> list[int]:
        return [e[0] for e in self.events]


def _blob(tmp_path: Path, size: int) -> tuple[Path, str]:
    data = os.urandom(size)
    src = tmp_path / "blob.bin"
    src.write_bytes(data)
    return src, hashlib.sha256(data).hexdigest()


def _moving(done: list[int], size: int, at_least: int) -> None:
    assert done == sorted(set(done)), f"progress went back or repeated: {done}"
    assert done[-1] == size
    middle = [d for d in done if 0 < d < size]
    assert len(middle) >= at_least, f"only {len(middle)} readings before the end: {done}"


def test_upload_progress_follows_the_bytes_the_device_acknowledges(home, device_root: Path, tmp_path: Path) -> None:
    size = 3 * 1024 * 1024 + 17  # several data messages
    src, digest = _blob(tmp_path, size)
    rec = Recorder()
    with open_session(f"local:{device_root}", home, timeout=20) as session:
        assert session.link.agent.get("put_progress") is True and session.hello.put_progress is True
        session.upload(src, "/var/lib/fieldkit/staging/blob.bin", sha256=digest, progress=rec)
    _moving(rec.done, size, at_least=4)
    # the first reading comes after a small first message (it moves at once on any link) ...
    assert rec.done[0] <= MIN_CHUNK
    # ... and the readings before the end are the device's: they arrive on the link's reader thread
    assert all(name.startswith("link-read") for d, _, name, _ in rec.events if d < size), rec.events
    landed = device_root / "var/lib/fieldkit/staging/blob.bin"
    assert hashlib.sha256(landed.read_bytes()).hexdigest() == digest


def test_an_older_agent_without_acknowledgements_still_shows_bytes_sent(home, device_root: Path,
                                                                         tmp_path: Path) -> None:
    size = 2 * 1024 * 1024
    src, digest = _blob(tmp_path, size)
    rec = Recorder()
    with open_session(f"local:{device_root}", home, timeout=20) as session:
        session.link.agent.pop("put_progress")  # as an agent from before acknowledgements says hello
        session.upload(src, "/var/lib/fieldkit/staging/blob.bin", sha256=digest, progress=rec)
    _moving(rec.done, size, at_least=4)
    assert all(name == threading.current_thread().name for *_, name, _ in rec.events)


def test_a_resumed_upload_counts_from_where_the_device_stood(home, device_root: Path, tmp_path: Path) -> None:
    size = 1_000_000
    src, digest = _blob(tmp_path, size)
    part = device_root / "var/lib/fieldkit/staging/blob.bin.part"
    part.write_bytes(src.read_bytes()[:400_000])
    rec = Recorder()
    with open_session(f"local:{device_root}", home, timeout=20) as session:
        session.upload(src, "/var/lib/fieldkit/staging/blob.bin", sha256=digest, offset=400_000, progress=rec)
    assert rec.done[0] > 400_000 and rec.done[-1] == size and rec.done == sorted(rec.done)




@contextmanager
def slow_serial_device(tmp_path: Path, bytes_per_second: float) -> Iterator[tuple[PtyRelay, Path]]:
    """The real agent serving ``--serial`` behind a relay throttled to ``bytes_per_second``."""
    from fieldkit.sim import serial_agent

    root = make_device_root(tmp_path / "dev")
    relay = PtyRelay(bytes_per_second=bytes_per_second)
    try:
        with serial_agent(relay, root, tmp_path / "agent.log"):
            yield relay, root
    finally:
        relay.close()


def test_progress_moves_on_a_slow_serial_line(home, tmp_path: Path) -> None:
    """200 KB at 40 KB/s: less than one of the old 256 KiB data messages, which showed "0 B" until
    the whole file was across. Now the device acknowledges small messages as they land."""
    size = 200_000
    src, digest = _blob(tmp_path, size)
    rec = Recorder()
    with slow_serial_device(tmp_path, bytes_per_second=40_000) as (relay, root):
        with open_session(f"serial://{relay.laptop_path}?baud=115200", home, timeout=30) as session:
            start = time.monotonic()
            session.upload(src, f"{CACHE}/blob.bin", sha256=digest, progress=rec, timeout=120)
            took = time.monotonic() - start
        assert hashlib.sha256((root / CACHE.lstrip("/") / "blob.bin").read_bytes()).hexdigest() == digest
    _moving(rec.done, size, at_least=4)
    assert took >= size / 40_000 * 0.9  # the line really was slow
    first_at = rec.events[0][3] - start
    assert first_at < took / 2, f"the first reading came after {first_at:.1f} s of {took:.1f} s"


def test_chunks_grow_on_a_fast_link_and_shrink_on_a_slow_one() -> None:
    big = 256 * 1024
    step = MIN_CHUNK
    for _ in range(5):  # handed over at once: double up to the largest
        step = _next_chunk(step, step, 0.001, big)
    assert step == big
    # 256 KiB took 20 s (a 115200 baud line): what moves in the target time, at least MIN_CHUNK
    assert _next_chunk(big, big, 20.0, big) == MIN_CHUNK
    # 256 KiB in 1 s: about CHUNK_TARGET_S worth, a whole number of 4 KiB pages
    fit = _next_chunk(big, big, 1.0, big)
    assert fit % 4096 == 0 and abs(fit - big * CHUNK_TARGET_S) <= 4096
    assert _next_chunk(4096, 4096, 5.0, 4096) == 4096  # never above the largest allowed


def test_meter_rate_is_a_sliding_window_and_eta_follows_it() -> None:
    now = [100.0]
    meter = TransferMeter(1_000_000, 200_000, window_s=5.0, every_s=0.5, clock=lambda: now[0])
    assert meter.rate_bps is None and meter.eta_s is None  # no time has passed: unknown, not infinite
    shown = []
    for _ in range(10):  # 10 kB/s for 10 s
        now[0] += 1.0
        shown.append(meter.update(meter.done + 10_000))
    assert all(shown)
    assert meter.rate_bps == pytest.approx(10_000)
    assert meter.eta_s == pytest.approx((1_000_000 - 300_000) / 10_000)
    for _ in range(5):  # then 50 kB/s: within the 5 s window the old rate is gone
        now[0] += 1.0
        meter.update(meter.done + 50_000)
    assert meter.rate_bps == pytest.approx(50_000)
    now[0] += 0.1
    assert meter.update(meter.done + 1) is False  # too soon to redraw ...
    now[0] += 0.1
    assert meter.update(1_000_000) is True  # ... but the end always shows
    assert meter.eta_s == 0.0
    assert meter.fields()["bytes_done"] == 1_000_000


def test_one_formatter_for_progress_and_latencies() -> None:
    assert transfer_text(1258291, 3879731, 11468.8, 220) == "1.2 MiB of 3.7 MiB (32 %) · 11.2 KiB/s · 3m 40s left"
    assert transfer_text(0, 3879731) == "0 B of 3.7 MiB (0 %)"
    assert transfer_text(3879731, 3879731, 1e6, 0.0) == "3.7 MiB of 3.7 MiB (100 %) · 976.6 KiB/s"
    assert human_eta(42.4) == "42 s" and human_eta(None) == "-"
    # what the CLI's bench progress line says while uploading the model
    line = ProgressLine.render({"phase": "upload", "what": "model", "bytes_done": 1258291,
                                "bytes_total": 3879731, "rate_bps": 11468.8, "eta_s": 220})
    assert line == "uploading model: 1.2 MiB of 3.7 MiB (32 %) · 11.2 KiB/s · 3m 40s left"
    assert [human_latency(v) for v in (0.00085, 0.0123, 0.148, 0.99999, 1.48, 14.8, 148, 2350)] == [
        "850 ns", "12.3 µs", "148 µs", "1 ms", "1.48 ms", "14.8 ms", "148 ms", "2.35 s"]
    assert human_latency(None) == "-" and human_latency(0) == "0 ms"
