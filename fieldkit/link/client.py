"""The laptop's side of the message layer: :class:`DeviceLink`.

One reader thread dispatches responses, progress events and data chunks to the waiting calls;
one heartbeat thread keeps the link alive and declares the peer dead after ``dead_after``
seconds of silence (cable pulled, device rebooted) — in seconds, not paramiko's 3600 s.
Every wait has a deadline.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

from fieldkit.agent import PROTOCOL_VERSION
from fieldkit.agent.protocol import (
    DATA_CHUNK, FrameReader, FrameWriter, Message, ProtocolError, StreamClosed, StreamOutOfStep,
)
from fieldkit.errors import Cancelled, ConnectError, DeviceError, LinkLost

ProgressFn = Callable[[dict], None]
log = logging.getLogger(__name__)


@dataclass
class _Pending:
    op: str
    done: threading.Event = field(default_factory=threading.Event)
    response: dict | None = None
    on_event: ProgressFn | None = None
    on_data: Callable[[int, bytes, bool], None] | None = None


class DeviceLink:
    """A connected agent. Thread-safe: several calls may run at once."""

    def __init__(self, stream: Any, *, name: str, transport: str, heartbeat_s: float = 1.0,
                 dead_after_s: float = 6.0, on_close: Callable[[], None] | None = None,
                 agent_push: Any = None, arq: Any = None) -> None:
        self.name = name
        self.transport = transport
        self.agent_push = agent_push
        """SSH only: how the agent got there (:class:`fieldkit.link.sshpush.PushedAgent`)."""
        self.arq = arq
        """Serial only: the :class:`fieldkit.agent.arq.ArqLink` under the link (its ``stats``)."""
        self._stream = stream
        self._reader = FrameReader(stream)
        self._writer = FrameWriter(stream)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._hello = threading.Event()
        self._on_close = on_close
        self.heartbeat_s = heartbeat_s
        self.dead_after_s = dead_after_s
        self.last_rx = time.monotonic()
        self.close_reason: str | None = None
        self.agent: dict = {}
        self.rejected = 0
        self._threads = [
            threading.Thread(target=self._read_loop, name=f"link-read-{name}", daemon=True),
            threading.Thread(target=self._heartbeat_loop, name=f"link-hb-{name}", daemon=True),
        ]

    # ---- lifecycle ---------------------------------------------------------------------------
    def start(self, timeout: float = 15.0) -> "DeviceLink":
        """Start the threads and perform the handshake; returns self."""
        self._threads[0].start()
        try:
            self._send({"t": "hello", "proto": PROTOCOL_VERSION, "client": "fieldkit"})
        except (OSError, StreamClosed) as exc:
            self.close(f"could not talk to the agent: {exc}")
            raise ConnectError(f"{self.name}: the agent did not start ({exc})") from exc
        if not self._hello.wait(timeout) or self._closed.is_set():
            reason = self.close_reason or f"no handshake within {timeout:.0f} s"
            self.close(reason)
            raise ConnectError(f"{self.name}: the agent did not answer the handshake: {reason}")
        if self.agent.get("proto") != PROTOCOL_VERSION:
            self.close("protocol mismatch")
            raise ConnectError(
                f"{self.name}: agent speaks protocol {self.agent.get('proto')}, fieldkit speaks {PROTOCOL_VERSION}",
                hint="update the agent on the device (over SSH fieldkit pushes it automatically)")
        self._threads[1].start()
        return self

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    @property
    def in_flight(self) -> int:
        """Calls waiting for their answer (0: the link is idle)."""
        with self._lock:
            return len(self._pending)

    def close(self, reason: str = "closed by fieldkit") -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            self.close_reason = reason
            pending = list(self._pending.values())
        try:  # release the transport (port lock, channel) before waking the callers
            self._stream.close()
        except Exception:
            pass
        for p in pending:
            p.done.set()
        if self._on_close:
            try:
                self._on_close()
            except Exception:
                pass

    def __enter__(self) -> "DeviceLink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- threads -----------------------------------------------------------------------------
    def _send(self, header: dict, body: bytes | memoryview = b"") -> None:
        if self._closed.is_set():
            raise LinkLost(f"link to {self.name} is closed: {self.close_reason}")
        self._writer.send(header, body)

    def _read_loop(self) -> None:
        reason = "the device closed the link"
        try:
            while not self._closed.is_set():
                try:
                    msg = self._reader.read_message()
                except StreamOutOfStep as exc:  # a reliable stream cannot resynchronise: end the link
                    self.rejected += 1
                    reason = f"the device's byte stream is out of step ({exc}); reconnect"
                    break
                except ProtocolError:
                    self.rejected += 1
                    continue
                self.last_rx = time.monotonic()
                self._dispatch(msg)
        except (StreamClosed, OSError, EOFError) as exc:
            if str(exc) and not isinstance(exc, StreamClosed):
                reason = f"link error: {exc}"
        except Exception as exc:  # never let the reader die silently
            reason = f"internal error in the link reader: {type(exc).__name__}: {exc}"
        self.close(reason)

    def _heartbeat_loop(self) -> None:
        while not self._closed.wait(self.heartbeat_s):
            silent = time.monotonic() - self.last_rx
            if silent > self.dead_after_s:
                self.close(f"no answer from {self.name} for {silent:.0f} s "
                           "(cable pulled, network down, or device rebooted)")
                return
            try:
                self._writer.try_send({"t": "hb", "ts": time.time()})
            except (OSError, StreamClosed, ProtocolError) as exc:
                self.close(f"link error: {exc}")
                return

    def _dispatch(self, msg: Message) -> None:
        h = msg.header
        t = msg.type
        if t == "hello":
            self.agent = h
            self._hello.set()
            return
        if t == "hb":
            return
        rid = h.get("id")
        p = self._pending.get(rid) if type(rid) is int else None
        if p is None:
            return
        if t == "res":
            p.response = h
            p.done.set()
        elif t == "evt" and p.on_event:
            data = h.get("data")
            if not isinstance(data, dict):
                self.rejected += 1
                return
            try:
                p.on_event(data)
            except Exception:  # a display callback's fault must not take the link down
                log.debug("progress callback of %s failed", p.op, exc_info=True)
        elif t == "data" and p.on_data:
            off = h.get("off", 0)
            if type(off) is not int or off < 0:
                self.rejected += 1
                return
            p.on_data(off, msg.body, h.get("eof") is True)

    # ---- calls -------------------------------------------------------------------------------
    def _register(self, op: str, on_event: ProgressFn | None,
                  on_data: Callable[[int, bytes, bool], None] | None = None) -> tuple[int, _Pending]:
        rid = next(self._ids)
        p = _Pending(op=op, on_event=on_event, on_data=on_data)
        with self._lock:
            if self._closed.is_set():
                raise LinkLost(f"link to {self.name} is closed: {self.close_reason}")
            self._pending[rid] = p
        return rid, p

    def _wait(self, rid: int, p: _Pending, timeout: float | None,
              cancel: threading.Event | None) -> dict:
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            while not p.done.wait(0.05):
                if cancel is not None and cancel.is_set():
                    return self._cancel(rid, p)
                if deadline is not None and time.monotonic() > deadline:
                    self._try_cancel(rid)
                    raise DeviceError(f"{self.name}: {p.op} did not finish within {timeout:.0f} s", code="timeout")
            if p.response is None:
                raise LinkLost(f"{self.name}: link lost during {p.op}: {self.close_reason}",
                               hint="check the cable or network, then run the command again")
            return self._result(p)
        finally:
            with self._lock:
                self._pending.pop(rid, None)

    def _try_cancel(self, rid: int) -> None:
        try:
            self._send({"t": "cancel", "id": rid})
        except (LinkLost, OSError, StreamClosed):
            pass

    def _cancel(self, rid: int, p: _Pending) -> dict:
        self._try_cancel(rid)
        p.done.wait(5.0)  # let the device say where it stopped
        err = (p.response or {}).get("error")
        detail = err.get("message") if isinstance(err, dict) and isinstance(err.get("message"), str) else ""
        detail = detail[:2000]
        raise Cancelled(f"{p.op} on {self.name} cancelled" + (f": {detail}" if detail else ""))

    def _result(self, p: _Pending) -> dict:
        resp = p.response or {}
        if resp.get("ok") is True:
            result = resp.get("result")
            return {} if result is None else result  # its shape is checked by the device session
        err = resp.get("error")
        err = err if isinstance(err, dict) else {}
        code = err.get("code") if isinstance(err.get("code"), str) else "failed"
        message = err.get("message") if isinstance(err.get("message"), str) else "unknown error"
        message = message if len(message) <= 2000 else message[:2000] + "…"
        if code == "cancelled":
            raise Cancelled(f"{p.op} on {self.name} cancelled: {message}")
        exc = DeviceError(f"{self.name}: {p.op} failed: {message}", code=code[:100])
        detail = err.get("detail")
        exc.detail = detail if isinstance(detail, dict) else {}  # type: ignore[attr-defined]
        raise exc

    def call(self, op: str, args: dict | None = None, *, body: bytes = b"", timeout: float | None = 60.0,
             on_event: ProgressFn | None = None, cancel: threading.Event | None = None) -> dict:
        """Run ``op`` on the device and return its result (DeviceError if it failed)."""
        rid, p = self._register(op, on_event)
        try:
            self._send({"t": "req", "id": rid, "op": op, "args": args or {}}, body)
        except (OSError, StreamClosed) as exc:
            with self._lock:
                self._pending.pop(rid, None)
            reason = self.close_reason if self._closed.is_set() else f"link error: {exc}"
            self.close(reason)  # closed under us (Esc, a dead peer): say why, not EBADF
            raise LinkLost(f"{self.name}: link lost: {reason}") from exc
        return self._wait(rid, p, timeout, cancel)

    def upload(self, source: Path | BinaryIO, dest: str, *, size: int | None = None,
               sha256: str | None = None, offset: int = 0, chunk: int = DATA_CHUNK,
               progress: Callable[[int, int], None] | None = None,
               cancel: threading.Event | None = None, timeout: float | None = 120.0) -> dict:
        """Stream a file to ``dest`` on the device (written as ``dest.part``, renamed when whole).

        ``offset`` resumes a partial transfer. The device hashes what it received and refuses a
        digest mismatch. Returns ``{"path", "size", "sha256"}``.

        ``progress(done, size)`` is called as the transfer moves, with ``done`` never going back:
        the bytes the device says have landed when the agent acknowledges data (``put_progress``
        in its hello; called on the link's reader thread), else the bytes handed to the link.
        Data goes in messages of at most ``chunk`` bytes, each sized to land in about
        :data:`CHUNK_TARGET_S` at the rate the device acknowledges (see :class:`_Pacer`), so
        progress moves on a slow serial line and no message outlasts the agent's idle timeout.
        """
        own = isinstance(source, (str, Path))
        fh: BinaryIO = open(source, "rb") if own else source  # type: ignore[assignment]
        try:
            if size is None:
                size = os.fstat(fh.fileno()).st_size
            acked = self.agent.get("put_progress") is True
            pacer = _Pacer(offset, chunk, acked)
            shown = [offset]
            shown_lock = threading.Lock()

            def report(done: int) -> None:
                if progress is None:
                    return
                with shown_lock:
                    if done <= shown[0]:
                        return
                    shown[0] = done
                progress(done, size)

            def on_event(data: dict) -> None:
                got = data.get("received")
                if type(got) is int and offset <= got <= size:  # a device's number: checked first
                    pacer.landed(got)
                    report(got)

            rid, p = self._register("put", on_event if acked else None)
            self._send({"t": "req", "id": rid, "op": "put",
                        "args": {"path": dest, "size": size, "sha256": sha256, "offset": offset}})
            fh.seek(offset)
            pos = offset
            buf = bytearray(chunk)
            view = memoryview(buf)
            while pos < size:
                if p.done.is_set():
                    break  # the device refused or failed: its answer says why
                if cancel is not None and cancel.is_set():
                    return self._cancel(rid, p)
                if not pacer.ready(p.done, cancel):
                    continue
                n = fh.readinto(view[: min(pacer.next_size(), size - pos)])
                if not n:
                    raise DeviceError(f"{source}: file ended at {pos} of {size} bytes", code="short_source")
                t0 = time.monotonic()
                self._send({"t": "data", "id": rid, "off": pos, "eof": pos + n >= size}, view[:n])
                pacer.sent(n, time.monotonic() - t0)
                pos += n
                if not acked:
                    report(pos)
            result = self._wait(rid, p, timeout, cancel)
            report(size)
            return result
        except (OSError, StreamClosed) as exc:
            self.close(f"link error: {exc}")
            raise LinkLost(f"{self.name}: link lost during upload: {exc}",
                           hint="reconnect and run again: the transfer resumes where it stopped") from exc
        finally:
            if own:
                fh.close()

    def ping(self, timeout: float = 10.0) -> float:
        """Round-trip time in seconds."""
        t0 = time.perf_counter()
        self.call("ping", timeout=timeout)
        return time.perf_counter() - t0


MIN_CHUNK = 16 * 1024
"""Smallest data message while the link can move it in a few seconds: ~1.4 s at 115200 baud,
0.3 % of it for the message's header."""
FIRST_CHUNK = 4 * 1024
"""The first data message: small, so its acknowledgement measures the link before more is sent."""
CHUNK_TARGET_S = 0.5
"""An upload's data messages are sized to land in about this long each."""
CHUNK_MAX_S = 5.0
"""No message may take longer than this to land (a serial agent ends its session after 15 s without
a whole message, and heartbeats cannot pass a message on the line)."""
FIRST_ACK_WAIT_S = 30.0
"""How long the second message waits for the first one's acknowledgement (then: paced blind)."""


class _Pacer:
    """Sizes an upload's data messages. With an acknowledging agent, from the rate the device
    says bytes land at (one small message first, then each message ~:data:`CHUNK_TARGET_S` worth);
    with an older agent, from how long handing each message to the link took (see
    :func:`_next_chunk`)."""

    def __init__(self, offset: int, largest: int, acked: bool) -> None:
        self.largest = largest
        self.acked = acked
        self.start = time.monotonic()
        self.offset = offset
        self.step = min(largest, FIRST_CHUNK if acked else MIN_CHUNK)
        self.messages = 0
        self._blind = self.step
        self._first_ack = threading.Event()
        self._lock = threading.Lock()
        self._acks: list[tuple[float, int]] = []

    def landed(self, received: int) -> None:
        with self._lock:
            self._acks.append((time.monotonic(), received))
            del self._acks[:-64]
        self._first_ack.set()

    def ready(self, done: threading.Event, cancel: threading.Event | None) -> bool:
        """False while the first message's acknowledgement is awaited (checked again shortly)."""
        if not self.acked or self.messages != 1 or self._first_ack.is_set():
            return True
        if time.monotonic() - self.start > FIRST_ACK_WAIT_S:
            self.acked = False  # an agent that promised acknowledgements and sends none
            return True
        self._first_ack.wait(0.05)
        return self._first_ack.is_set() or done.is_set() or bool(cancel is not None and cancel.is_set())

    def rate(self) -> float | None:
        """Bytes per second landing on the device, over its last acknowledgements."""
        with self._lock:
            acks = list(self._acks)
        if not acks:
            return None
        t1, b1 = acks[-1]
        t0, b0 = self.start, self.offset
        for t, b in acks:  # the most recent few seconds, once there are some
            if t1 - t <= 5.0 and t1 - t >= 0.5:
                t0, b0 = t, b
                break
        return (b1 - b0) / (t1 - t0) if t1 > t0 and b1 > b0 else None

    def sent(self, n: int, took: float) -> None:
        self.messages += 1
        self._blind = _next_chunk(self.step, n, took, self.largest)

    def next_size(self) -> int:
        """The size of the next message (called right before it is read and sent)."""
        if self.messages:
            rate = self.rate() if self.acked else None
            if rate is None:
                self.step = self._blind
            else:
                floor = (MIN_CHUNK if rate * CHUNK_MAX_S >= MIN_CHUNK
                         else max(1024, int(rate * CHUNK_MAX_S / 2) // 1024 * 1024))
                self.step = max(min(floor, self.largest), min(self.largest, int(rate * CHUNK_TARGET_S) // 4096 * 4096))
        return self.step


def _next_chunk(step: int, sent: int, took: float, largest: int) -> int:
    """Without acknowledgements: double while sending keeps up (a fast link reaches ``largest``
    in a few messages); when one took longer than the target, what the link moved in
    :data:`CHUNK_TARGET_S` at the rate just seen (a serial line once its window is full)."""
    if took <= CHUNK_TARGET_S:
        return min(largest, step * 2)
    fit = int(sent / took * CHUNK_TARGET_S) // 4096 * 4096
    return max(min(MIN_CHUNK, largest), min(largest, fit))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
