"""The serial reliability layer (fieldkit.agent.arq) over real pseudo-terminals, no mocks.

Each test builds a simulated cable (fieldkit.sim.ptyrelay.PtyRelay: two pty pairs joined by a relay
thread that can corrupt, pause and throttle the line), opens both ends with
fieldkit.agent.streams.open_tty exactly as the agent and the laptop open a serial device, and runs
ArqLink on each end.
"""

from __future__ import annotations

import ast
import hashlib
import os
import random
import struct
import threading
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hst

from fieldkit.agent import arq, arqwire, cobs
from fieldkit.agent.arq import ArqLink
from fieldkit.agent.arqsize import FrameSizer, best_size
from fieldkit.agent.protocol import FrameReader, FrameWriter, StreamClosed
from fieldkit.agent.streams import open_tty
from fieldkit.sim.ptyrelay import FaultInjector, PtyRelay

AGENT_DIR = Path(__file__).resolve().parent.parent / "fieldkit" / "agent"


# ---- helpers -------------------------------------------------------------------------------------

@contextmanager
def cable(fault=None, bytes_per_second=None, hold_slaves=True, **link_kw):
    """A relay plus an ArqLink on each end: (relay, device_link, laptop_link)."""
    relay = PtyRelay(fault=fault, bytes_per_second=bytes_per_second, hold_slaves=hold_slaves)
    links = []
    try:
        links.append(ArqLink(open_tty(relay.device_path), name="device", **link_kw))
        links.append(ArqLink(open_tty(relay.laptop_path), name="laptop", **link_kw))
        yield relay, links[0], links[1]
    finally:
        for link in links:
            link.close(linger=0)
        relay.close()


def open_session(server: ArqLink, client: ArqLink, timeout: float = 5.0):
    """Server accept() in a thread, client connect(); returns (server_session, client_session)."""
    box: dict = {}

    def accept() -> None:
        try:
            box["s"] = server.accept(timeout)
        except BaseException as exc:  # pragma: no cover - reported below
            box["err"] = exc

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    c = client.connect(timeout)
    t.join(timeout)
    assert "err" not in box, box.get("err")
    assert "s" in box, "server never accepted"
    return box["s"], c


class Worker(threading.Thread):
    """A daemon thread whose result or exception is collected with finish()."""

    def __init__(self, fn, *args):
        super().__init__(daemon=True)
        self.fn, self.args = fn, args
        self.result = self.error = None

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:
            self.error = exc

    def finish(self, timeout: float):
        self.join(timeout)
        assert not self.is_alive(), "worker %s still running after %.1f s" % (self.fn.__name__, timeout)
        if self.error is not None:
            raise self.error
        return self.result


def read_exact_digest(stream, n: int, timeout: float = 20.0) -> str:
    """Read exactly n bytes (with an overall deadline) and return their sha256."""
    h = hashlib.sha256()
    got = 0
    deadline = time.monotonic() + timeout
    while got < n:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "only %d of %d bytes arrived in %.1f s" % (got, n, timeout)
        chunk = stream.read(min(1 << 20, n - got), timeout=remaining)
        assert chunk, "stream ended after %d of %d bytes" % (got, n)
        h.update(chunk)
        got += len(chunk)
    return h.hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def wire_frame(typ: int, sid: int, rest: bytes) -> bytes:
    """One frame exactly as the module docstring specifies it (header | payload | CRC-32)."""
    body = struct.pack(">BI", typ, sid) + rest
    return cobs.encode(body + struct.pack(">I", zlib.crc32(body))) + b"\x00"


def wait_for(predicate, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, "timed out waiting for " + what
        time.sleep(0.01)
    return time.monotonic() - t0


# ---- pure functions ------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["arq.py", "arqwire.py", "arqsession.py", "arqsize.py", "cobs.py"])
def test_parses_as_python36(name: str) -> None:
    path = AGENT_DIR / name
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 6))


def test_cobs_round_trip_and_bounds() -> None:
    rng = random.Random(5)
    cases = [b"", b"\x00", b"\x00\x00", b"a", b"a\x00", bytes(253), b"\x01" * 253, b"\x01" * 254,
             b"\x01" * 255, b"\x01" * 254 + b"\x00", b"\x01" * 508, bytes(range(256)) * 8]
    cases += [bytes(rng.choice([0, 0, 1, 7, 255]) for _ in range(rng.randrange(2000))) for _ in range(200)]
    for data in cases:
        enc = cobs.encode(data)
        assert b"\x00" not in enc
        assert len(enc) <= cobs.max_encoded_len(len(data))
        assert cobs.decode(enc) == data
    for bad in (b"", b"\x05ab", b"\x02a\x00"):
        with pytest.raises(ValueError):
            cobs.decode(bad)


def test_fault_injector_is_deterministic_per_seed_and_counts() -> None:
    data = os.urandom(200_000)

    def run(chunk: int) -> tuple[bytes, dict]:
        fi = FaultInjector(drop_rate=1e-3, flip_rate=1e-3, insert_rate=1e-3, seed=42)
        out = b"".join(fi(data[i:i + chunk], "to_device") for i in range(0, len(data), chunk))
        return out, fi.counts

    out1, c1 = run(4096)
    out2, c2 = run(777)  # chunking must not matter
    assert out1 == out2 and c1 == c2
    assert c1["bytes_seen"] == len(data)
    for key in ("dropped", "flipped", "inserted"):
        assert 100 < c1[key] < 320, c1  # ~200 expected
    assert len(out1) == len(data) - c1["dropped"] + c1["inserted"]


# ---- transfers -----------------------------------------------------------------------------------

def test_bulk_transfer_both_directions() -> None:
    n = 3_000_000
    up, down = os.urandom(n), os.urandom(n)
    with cable() as (relay, dev, lap):
        s, c = open_session(dev, lap)
        w1, w2 = Worker(c.write, up), Worker(s.write, down)
        r1 = Worker(read_exact_digest, s, n)
        w1.start(), w2.start(), r1.start()
        assert read_exact_digest(c, n) == sha(down)
        assert r1.finish(20) == sha(up)
        w1.finish(5), w2.finish(5)
        for st in (dev.stats, lap.stats):
            assert st["payload_bytes_in"] == n and st["payload_bytes_out"] == n
            assert st["retransmits"] == 0 and st["crc_errors"] == 0 and st["bad_frames"] == 0


def test_noisy_line_drops_flips_and_inserts() -> None:
    n = 1_000_000
    fault = FaultInjector(drop_rate=1e-4, flip_rate=1e-4, insert_rate=1e-4, seed=1234)
    up, down = os.urandom(n), os.urandom(n)
    with cable(fault=fault) as (relay, dev, lap):
        s, c = open_session(dev, lap)
        w1, w2 = Worker(c.write, up), Worker(s.write, down)
        r1 = Worker(read_exact_digest, s, n)
        w1.start(), w2.start(), r1.start()
        assert read_exact_digest(c, n) == sha(down)
        assert r1.finish(20) == sha(up)
        w1.finish(5), w2.finish(5)
    assert fault.dropped and fault.flipped and fault.inserted
    for st in (dev.stats, lap.stats):
        assert st["crc_errors"] + st["bad_frames"] > 0, st
        assert st["retransmits"] > 0, st
        assert st["dead_peer"] == 0


def test_small_frames_survive_a_very_noisy_line() -> None:
    """1e-3 per byte per fault kind: most 1 KiB frames would die, 64-byte frames get through."""
    n = 100_000
    fault = FaultInjector(drop_rate=1e-3, flip_rate=1e-3, insert_rate=1e-3, seed=99)
    data = os.urandom(n)
    with cable(fault=fault, payload_size=64, window=64) as (relay, dev, lap):
        s, c = open_session(dev, lap)
        w = Worker(c.write, data)
        w.start()
        assert read_exact_digest(s, n) == sha(data)
        w.finish(5)
        assert lap.stats["retransmits"] > 0 and dev.stats["crc_errors"] + dev.stats["bad_frames"] > 0


def test_garbage_on_the_line_is_skipped_and_counted() -> None:
    rng = random.Random(7)
    garbage = [b"login: root\r\nPassword:", bytes(rng.randrange(256) for _ in range(3000)),
               b"\x00\x00\x00\x00", b"\xff" * 40000,  # longer than any frame: resync at next 0x00
               b"\x00" + os.urandom(500) + b"\x00"]
    with cable() as (relay, dev, lap):
        for g in garbage:  # boot noise before anyone talks
            relay.inject(g, to="device")
            relay.inject(g, to="laptop")
        # valid CRC, but an unknown frame type, and a frame for a session nobody has
        relay.inject(wire_frame(99, 1, b"hello"), to="device")
        relay.inject(wire_frame(arq.T_DATA, 0xDEADBEEF, struct.pack(">IIH", 0, 0, 32) + b"x"), to="laptop")
        s, c = open_session(dev, lap)
        chunks = [os.urandom(rng.randrange(1, 60_000)) for _ in range(12)]
        total = sum(len(ch) for ch in chunks)
        r1 = Worker(read_exact_digest, s, total)
        r2 = Worker(read_exact_digest, c, total)
        r1.start(), r2.start()
        for i, chunk in enumerate(chunks):
            c.write(chunk)
            s.write(chunk[::-1])
            if i % 3 == 0:
                relay.inject(garbage[i % len(garbage)], to="device")
                relay.inject(garbage[(i + 1) % len(garbage)], to="laptop")
                relay.inject(wire_frame(arq.T_ACK, 0x12345678, struct.pack(">IHBB", 5, 9, 0, 0)), to="device")
        assert r1.finish(20) == sha(b"".join(chunks))
        assert r2.finish(20) == sha(b"".join(ch[::-1] for ch in chunks))
        for st in (dev.stats, lap.stats):
            assert st["garbage_bytes"] > 40000, st
            assert st["bad_frames"] + st["crc_errors"] > 0, st
        assert dev.stats["bad_frames"] >= 1  # the unknown frame type
        assert lap.stats["stale_session_frames"] >= 1 and dev.stats["stale_session_frames"] >= 1


def test_message_layer_runs_on_top() -> None:
    big = os.urandom(1_000_000)
    bodies = [b"", b"\x00" * 100, os.urandom(3000), big]
    with cable() as (relay, dev, lap):
        s, c = open_session(dev, lap)

        def agent() -> int:
            reader, writer = FrameReader(s), FrameWriter(s)
            served = 0
            while True:
                msg = reader.read_message()
                if msg.header["op"] == "bye":
                    writer.send({"t": "res", "id": msg.id, "ok": True}, big[::-1])
                    return served
                writer.send({"t": "res", "id": msg.id, "ok": True,
                             "result": {"sha256": sha(msg.body), "len": len(msg.body)}})
                served += 1

        w = Worker(agent)
        w.start()
        reader, writer = FrameReader(c), FrameWriter(c)
        for i, body in enumerate(bodies):
            writer.send({"t": "req", "id": i, "op": "put", "args": {"n": i}}, body)
        for i, body in enumerate(bodies):
            res = reader.read_message()
            assert res.id == i and res.header["result"] == {"sha256": sha(body), "len": len(body)}
        writer.send({"t": "req", "id": 99, "op": "bye", "args": {}})
        res = reader.read_message()
        assert res.id == 99 and res.body == big[::-1]
        assert w.finish(10) == len(bodies)


def test_framing_efficiency_without_errors() -> None:
    n = 2_000_000
    data = os.urandom(n)
    with cable() as (relay, dev, lap):
        s, c = open_session(dev, lap)
        w = Worker(c.write, data)
        w.start()
        assert read_exact_digest(s, n) == sha(data)
        w.finish(5)
        assert c.flush(5)
        st = lap.stats
        forward = st["payload_bytes_out"] / st["wire_bytes_out"]
        both = st["payload_bytes_out"] / (st["wire_bytes_out"] + st["wire_bytes_in"])
        print("efficiency: forward %.4f, both directions %.4f" % (forward, both))
        assert st["payload_bytes_out"] == n and st["retransmits"] == 0
        assert c.tx_payload == 8192  # adaptive frames grew on the clean line
        assert forward >= 0.985
        assert both >= 0.98
        assert st["acks_in"] < st["frames_out"] / 2  # ACKs are batched, not one per frame
        assert st["wire_bytes_in"] < 0.005 * n


def test_slow_line_streams_without_spurious_retransmissions() -> None:
    """115200 baud (11520 bytes/s): a 1 KiB frame takes ~90 ms; the adaptive RTO must not fire."""
    bps = 11520
    n = 24_000
    data = os.urandom(n)
    with cable(bytes_per_second=bps) as (relay, dev, lap):
        s, c = open_session(dev, lap)
        t0 = time.monotonic()
        w = Worker(c.write, data)
        w.start()
        assert read_exact_digest(s, n) == sha(data)
        elapsed = time.monotonic() - t0
        w.finish(5)
        st = lap.stats
        assert st["retransmits"] == 0 and st["timeouts"] == 0, st
        assert n / elapsed > 0.85 * bps, "%.0f bytes/s on a %d bytes/s line" % (n / elapsed, bps)


# ---- sessions, dead peers, reconnects ------------------------------------------------------------

def test_dead_peer_is_detected_and_a_new_session_recovers() -> None:
    dead_after = 2.0
    with cable(dead_after=dead_after) as (relay, dev, lap):
        s, c = open_session(dev, lap)
        c.write(b"x" * 5000)
        assert read_exact_digest(s, 5000) == sha(b"x" * 5000)
        assert c.flush(5)

        relay.pause()  # the cable is pulled
        reader = Worker(c.read, 100)
        reader.start()
        t0 = time.monotonic()

        def keep_writing() -> None:
            while True:
                c.write(os.urandom(4096))

        w = Worker(keep_writing)
        w.start()
        w.join(10)
        detected = time.monotonic() - t0
        assert not w.is_alive(), "write() still blocking 10 s after the cable was pulled"
        assert isinstance(w.error, StreamClosed), w.error
        assert "no answer" in str(w.error)
        assert dead_after * 0.9 <= detected < 8.0, detected
        assert reader.finish(2) == b""
        assert lap.stats["dead_peer"] == 1
        assert not s.ended  # the device had nothing outstanding: it keeps its session

        relay.resume()  # plugged back in: the laptop reconnects, the device drops the old session
        s2, c2 = open_session(dev, lap)
        assert s.ended and s.read(10) == b""
        with pytest.raises(StreamClosed):
            s.write(b"late")
        assert s2.sid == c2.sid != s.sid
        c2.write(b"hello again")
        assert read_exact_digest(s2, 11) == sha(b"hello again")


def server_loop(link: ArqLink, sessions: list) -> None:
    """What the agent does: accept, echo until the session ends, accept the next one."""
    while True:
        try:
            s = link.accept(timeout=10)
        except (TimeoutError, StreamClosed, OSError):
            return
        sessions.append(s)
        while True:
            data = s.read(65536)
            if not data:
                break
            try:
                s.write(data)
            except StreamClosed:
                break


def echo(session, payload: bytes) -> None:
    session.write(payload)
    assert read_exact_digest(session, len(payload), timeout=10) == sha(payload)


def test_server_accepts_new_sessions_after_close_and_after_unplug() -> None:
    # hold_slaves=False: when the laptop closes its tty the relay sees EIO and must survive it
    with cable(hold_slaves=False) as (relay, dev, lap):
        sessions: list = []
        srv = Worker(server_loop, dev, sessions)
        srv.start()

        c1 = lap.connect(5)
        echo(c1, os.urandom(100_000))
        lap.close()  # graceful: FIN
        wait_for(lambda: sessions[0].ended, 3, "the device to see the FIN")
        assert "closed" in sessions[0].end_reason

        lap2 = ArqLink(open_tty(relay.laptop_path), name="laptop2")
        try:
            c2 = lap2.connect(5)
            echo(c2, os.urandom(50_000))
            assert len(sessions) == 2 and not sessions[1].ended
        finally:
            lap2.abort()  # unplugged: no FIN, the device still thinks session 2 is running
        assert not sessions[1].ended

        lap3 = ArqLink(open_tty(relay.laptop_path), name="laptop3")
        try:
            t0 = time.monotonic()
            c3 = lap3.connect(5)
            assert time.monotonic() - t0 < 2.0  # the pending RESET is taken at once
            assert sessions[1].ended and "new session" in sessions[1].end_reason
            echo(c3, os.urandom(200_000))
            assert len(sessions) == 3 and len({s.sid for s in sessions}) == 3
        finally:
            lap3.close()
        assert relay.stats["eio"] > 0
        dev.close(linger=0)
        srv.finish(5)


def test_connect_times_out_with_a_clear_message() -> None:
    with cable() as (relay, dev, lap):
        relay.pause()
        t0 = time.monotonic()
        with pytest.raises(TimeoutError, match="no answer from the serial agent"):
            lap.connect(timeout=1.0)
        assert 0.9 <= time.monotonic() - t0 < 3.0


def test_port_failure_ends_the_session() -> None:
    with cable() as (relay, dev, lap):
        s, c = open_session(dev, lap)
        reader = Worker(c.read, 100)
        reader.start()
        relay.close()  # both masters gone: the ttys hang up
        assert reader.finish(3) == b""
        wait_for(lambda: lap.port_error is not None, 3, "the port error")
        with pytest.raises(StreamClosed):
            c.write(b"x")
        with pytest.raises(OSError):
            lap.connect(1)
    t0 = time.monotonic()
    lap.close()
    assert time.monotonic() - t0 < 1.0


def test_server_close_ends_the_client_session_at_once() -> None:
    with cable() as (relay, dev, lap):
        s, c = open_session(dev, lap)
        echo_data = b"ping"
        c.write(echo_data)
        assert read_exact_digest(s, 4) == sha(echo_data)
        reader = Worker(c.read, 100)
        reader.start()
        t0 = time.monotonic()
        dev.close()  # FIN
        assert reader.finish(3) == b""
        assert time.monotonic() - t0 < 1.5
        assert "closed" in c.end_reason
        with pytest.raises(StreamClosed):
            c.write(b"x")


# ---- adaptive frame sizes (fieldkit.agent.arqsize, CAPS) ------------------------------------------

def model_line(sizer: FrameSizer, p: float, payload: int, seed: int) -> list[int]:
    """Send ``payload`` bytes through a modelled line (each wire byte corrupted with probability
    ``p``, seeded); every attempt is reported to ``sizer``. Returns the sizes used, frame by frame."""
    rng = random.Random(seed)
    sent, sizes = 0, []
    while sent < payload:
        n = min(sizer.size, payload - sent)
        sizes.append(n)
        while rng.random() >= (1 - p) ** (n + 21):
            sizer.lost(n)
        sizer.delivered(n)
        sent += n
    return sizes


def test_frame_sizer_follows_the_error_rate_deterministically() -> None:
    # the best sizes the sizer aims for: L(L + 21) = 21 / p
    assert best_size(0) == float("inf")
    assert 1400 < best_size(1e-5) < 1480 and 125 < best_size(1e-3) < 145
    clean = FrameSizer(256, 64, 8192)
    sizes = model_line(clean, 0.0, 2_000_000, seed=1)
    assert sizes[0] == 256 and clean.size == 8192
    assert sum(sizes[:sizes.index(8192)]) < 700_000  # full size within 700 KB of a clean line
    assert all(a <= b for a, b in zip(sizes[:-1], sizes[1:-1]))  # never shrinks without a loss
    for p, lo, hi in ((1e-3, 64, 300), (3e-3, 64, 160), (1e-5, 700, 3500)):
        sizer = FrameSizer(256, 64, 8192)
        model_line(sizer, p, 400_000 if p < 1e-4 else 60_000, seed=2)
        assert sizer.lost_frames > 0 and lo <= sizer.size <= hi, (p, sizer.size)
    # a line that clears up: frames grow back
    sizer = FrameSizer(256, 64, 8192)
    model_line(sizer, 3e-3, 30_000, seed=3)
    small = sizer.size
    model_line(sizer, 0.0, 3_000_000, seed=3)
    assert small < 200 and sizer.size == 8192
    fixed = FrameSizer(1024, 1024, 1024)
    model_line(fixed, 3e-3, 20_000, seed=4)
    assert fixed.size == 1024 and fixed.lost_frames > 0


def test_frame_size_grows_on_a_clean_line_and_shrinks_on_a_noisy_one_each_way() -> None:
    """Laptop -> device is noisy (3e-3 per byte), device -> laptop clean: each sender sizes its own
    frames from its own direction. Bounded by bytes moved, not by time."""
    fault = FaultInjector(drop_rate=1e-3, flip_rate=1e-3, insert_rate=1e-3, seed=21, directions=("to_device",))
    up, down = os.urandom(150_000), os.urandom(1_500_000)
    with cable(fault=fault) as (relay, dev, lap):
        s, c = open_session(dev, lap)
        assert s.peer_rx_max == c.peer_rx_max == 8192  # both announced adaptive frames (CAPS)
        assert s.tx_payload == c.tx_payload == 256  # where adaptive sizes start
        w1, w2 = Worker(c.write, up), Worker(s.write, down)
        r1 = Worker(read_exact_digest, s, len(up), 60)
        w1.start(), w2.start(), r1.start()
        assert read_exact_digest(c, len(down), 60) == sha(down)
        assert r1.finish(60) == sha(up)
        w1.finish(5), w2.finish(5)
        assert c.sizer.lost_frames > 10 and c.tx_payload <= 200, (c.tx_payload, c.sizer.p)
        assert s.sizer.lost_frames == 0 and s.tx_payload == 8192
        assert lap.stats["frame_shrinks"] > 0 and dev.stats["frame_shrinks"] == 0
        # the device's frames grew: far fewer than 1 KiB frames would have needed
        assert dev.stats["frames_out"] < len(down) / 2048


def test_noisy_line_costs_a_fraction_of_what_1kib_frames_cost() -> None:
    """Same data, same seeded 1e-3 line: adaptive frames put far fewer bytes on the wire."""
    data = os.urandom(200_000)
    wire = {}
    for adaptive in (True, False):
        fault = FaultInjector(drop_rate=1e-3 / 3, flip_rate=1e-3 / 3, insert_rate=1e-3 / 3, seed=5)
        with cable(fault=fault, adaptive=adaptive) as (relay, dev, lap):
            s, c = open_session(dev, lap)
            w = Worker(c.write, data)
            w.start()
            assert read_exact_digest(s, len(data), 60) == sha(data)
            w.finish(5)
            wire[adaptive] = lap.stats["wire_bytes_out"]
    assert wire[True] < 0.8 * wire[False], wire
    assert len(data) / wire[True] > 0.6


@pytest.mark.parametrize("old", ["device", "laptop"])
def test_a_peer_without_adaptive_frames_keeps_1kib_frames_both_ways(old: str) -> None:
    """An older agent (or laptop) never sends CAPS and counts ours as bad frames: both ends stay at
    the 1 KiB of their RESET, exactly as before, and data moves intact both ways."""
    n = 600_000
    up, down = os.urandom(n), os.urandom(n)
    relay = PtyRelay()
    dev = ArqLink(open_tty(relay.device_path), name="device", adaptive=old != "device")
    lap = ArqLink(open_tty(relay.laptop_path), name="laptop", adaptive=old != "laptop")
    try:
        s, c = open_session(dev, lap)
        w1, w2 = Worker(c.write, up), Worker(s.write, down)
        r1 = Worker(read_exact_digest, s, n)
        w1.start(), w2.start(), r1.start()
        assert read_exact_digest(c, n) == sha(down)
        assert r1.finish(20) == sha(up)
        w1.finish(5), w2.finish(5)
        for sess in (s, c):
            assert sess.peer_rx_max is None and sess.tx_payload == 1024 and sess.sizer.fixed
        old_link, new_link = (dev, lap) if old == "device" else (lap, dev)
        assert old_link.stats["caps_in"] == 0 and old_link.stats["bad_frames"] >= 1  # our CAPS, unknown to it
        assert new_link.stats["caps_in"] == 0  # it never announced any
        assert new_link.stats["frames_out"] >= n / 1024 and old_link.stats["frames_out"] >= n / 1024
        assert (s.rx_limit, c.rx_limit) == ((1024, 8192) if old == "device" else (8192, 1024))
    finally:
        lap.close(linger=0)
        dev.close(linger=0)
        relay.close()


def raw_frames(port, want, timeout: float = 10.0) -> list:
    """Read frames off a raw port (as a hand-written peer) until ``want(frames)`` holds."""
    stats = dict((k, 0) for k in arqwire.STAT_KEYS)
    parser, frames = arqwire.FrameParser(stats), []
    deadline = time.monotonic() + timeout
    while not want(frames):
        assert time.monotonic() < deadline, "the link did not send what was expected: %r" % frames[-5:]
        frames += parser.feed(port.read_some(65536, 0.05) or b"")
    return frames


@pytest.mark.parametrize("claimed, clamped", [(65535, 8192), (0, 64), (100, 100), (16, 64)])
def test_a_peer_announcing_absurd_sizes_is_clamped(claimed: int, clamped: int) -> None:
    """A hand-written peer claims to accept ``claimed`` bytes per frame: the device sends frames of
    at most the clamped size, and refuses DATA above what it announced itself."""
    relay = PtyRelay()
    dev = ArqLink(open_tty(relay.device_path), name="device")
    peer = open_tty(relay.laptop_path)
    try:
        sid = 0x5EED0001
        hello = wire_frame(arq.T_RESET, sid, struct.pack(">BHH", 1, 32, 1024))
        caps = wire_frame(arqwire.T_CAPS, sid, struct.pack(">BBH", arqwire.CAP_ADAPTIVE, 0, claimed) + b"future")
        short_caps = wire_frame(arqwire.T_CAPS, sid, b"\x01")  # too short: a bad frame, not a crash
        peer.write(b"\x00" + hello + caps + short_caps)
        box: dict = {}
        acc = Worker(lambda: box.setdefault("s", dev.accept(5)))
        acc.start()
        frames = raw_frames(peer, lambda fr: any(t == arqwire.T_CAPS for t, _ in fr))
        acc.finish(5)
        s = box["s"]
        assert s.peer_rx_max == clamped
        assert any(t == arq.T_RESET_ACK for t, _ in frames)
        theirs = arqwire.unpack_caps(next(b for t, b in frames if t == arqwire.T_CAPS))
        assert theirs[0] == sid and theirs[1] & arqwire.CAP_ADAPTIVE and theirs[3] == 8192
        assert theirs[2] & arqwire.CAPS_SEEN  # it has ours
        # the device streams 60 KB; we acknowledge everything we see so its frames may grow
        data = os.urandom(60_000)
        Worker(s.write, data).start()
        got = bytearray()
        seen_max = 0
        deadline = time.monotonic() + 20
        parser = arqwire.FrameParser(dict((k, 0) for k in arqwire.STAT_KEYS))
        while len(got) < len(data):
            assert time.monotonic() < deadline, "only %d of %d bytes came" % (len(got), len(data))
            for typ, body in parser.feed(peer.read_some(65536, 0.05) or b""):
                if typ != arq.T_DATA:
                    continue
                _, _, seq, _, _ = arqwire.DATA.unpack_from(body)
                payload = body[arqwire.DATA.size:-4]
                seen_max = max(seen_max, len(payload))
                got += payload
                ack = struct.pack(">IHBB", seq + 1, 32, 0, 0)
                peer.write(b"\x00" + wire_frame(arq.T_ACK, sid, ack))
        assert bytes(got) == data
        assert seen_max <= clamped
        # DATA above the 8 KiB the device announced is refused, not delivered
        before = dev.stats["bad_frames"]
        big = struct.pack(">IIH", 0, 0, 32) + os.urandom(9000)
        peer.write(b"\x00" + wire_frame(arq.T_DATA, sid, big))
        wait_for(lambda: dev.stats["bad_frames"] > before, 5, "the oversized frame to be refused")
        assert s.rcv_nxt == 0 and not s.rbuf
    finally:
        dev.close(linger=0)
        peer.close()
        relay.close()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=hst.integers(0, 2 ** 16), rate=hst.sampled_from([0.0, 1e-4, 1e-3, 3e-3]),
       chunks=hst.lists(hst.integers(1, 40_000), min_size=1, max_size=5),
       adaptive=hst.sampled_from([(True, True), (True, False), (False, True)]))
def test_data_arrives_intact_through_noise(seed: int, rate: float, chunks: list, adaptive: tuple) -> None:
    """Whatever the noise, the sizes written and which ends adapt: both directions arrive intact."""
    fault = FaultInjector(drop_rate=rate / 3, flip_rate=rate / 3, insert_rate=rate / 3, seed=seed)
    rng = random.Random(seed)
    ups = [rng.randbytes(n) for n in chunks]
    downs = [rng.randbytes(n) for n in reversed(chunks)]
    total = sum(chunks)
    relay = PtyRelay(fault=fault)
    dev = ArqLink(open_tty(relay.device_path), name="device", adaptive=adaptive[0])
    lap = ArqLink(open_tty(relay.laptop_path), name="laptop", adaptive=adaptive[1], dead_after=20)
    try:
        s, c = open_session(dev, lap, timeout=10)
        r1 = Worker(read_exact_digest, s, total, 60)
        r1.start()
        w = Worker(lambda: [s.write(d) for d in downs])
        w.start()
        for u in ups:
            c.write(u)
        assert read_exact_digest(c, total, 60) == sha(b"".join(downs))
        assert r1.finish(60) == sha(b"".join(ups))
        w.finish(5)
    finally:
        lap.close(linger=0)
        dev.close(linger=0)
        relay.close()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stray=hst.lists(hst.tuples(hst.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 255]), hst.integers(0, 2 ** 32 - 1),
                                  hst.binary(max_size=40)), max_size=12),
       live=hst.lists(hst.tuples(hst.sampled_from([6, 7, 200]), hst.binary(max_size=12)), max_size=6))
def test_checked_frames_of_any_kind_never_break_the_link(stray: list, live: list) -> None:
    """Frames with a valid CRC but any type, session and body (CAPS of every size among them), before
    a session and, for the live session, capability frames and unknown types: the link neither fails
    nor stops serving, and data still arrives intact."""
    with cable() as (relay, dev, lap):
        sessions: list = []
        srv = Worker(server_loop, dev, sessions)
        srv.start()
        noise = b"\x00" + b"".join(wire_frame(t, sid, body) for t, sid, body in stray)
        relay.inject(noise, to="device")
        relay.inject(noise, to="laptop")
        c = lap.connect(5)
        echo(c, os.urandom(20_000))
        mine = b"\x00" + b"".join(wire_frame(t, c.sid, body) for t, body in live)
        relay.inject(mine, to="device")
        relay.inject(mine, to="laptop")
        echo(c, os.urandom(60_000))
        assert dev.stats["internal_errors"] == 0 and lap.stats["internal_errors"] == 0
        assert 64 <= c.tx_payload <= 8192 and 64 <= sessions[-1].tx_payload <= 8192
        lap.close()
        dev.close(linger=0)
        srv.finish(10)
