"""A hostile (or broken) device: a fake agent that speaks the real protocol on a real pseudo-terminal.

It answers the handshake and each operation with whatever the test configured — wrong types,
lists where objects belong, journals that never end — so the laptop's boundary can be tried
through the real serial stack (pyserial, ARQ, frames, DeviceLink, the device session, the CLI)::

    with FakeAgent({"health": {"cpu": {"percent": "abc"}}}) as fake:
        run_cli("health", fake.target)           # serial:///dev/pts/N
"""

from __future__ import annotations

import os
import pty
import threading
import time
import tty
from typing import Any, Callable

from fieldkit.agent import AGENT_VERSION, PROTOCOL_VERSION
from fieldkit.agent.arq import ArqLink
from fieldkit.agent.protocol import FrameReader, FrameWriter, ProtocolError, StreamClosed
from fieldkit.agent.streams import FdPort

GENESIS = "0" * 64
Answer = Any  # a result dict (or any JSON), a callable(args) -> result, or an Error


class Error:
    """Answer an operation with a coded error."""

    def __init__(self, code: str, message: str) -> None:
        self.code, self.message = code, message


def default_answers() -> dict[str, Answer]:
    """A quiet, well-formed device: an empty journal, a ping with this machine's clock."""
    head = {"journal_id": None, "seq": 0, "hash": GENESIS}
    return {
        "ping": lambda args: {"time": time.time()},
        "journal_checkpoint": {"previous": None, "entry": None, "head": head},
        "journal_read": {"journal_id": None, "entries": [], "head": head, "more": False,
                         "chain": {"ok": True, "entries": 0}},
    }


class FakeAgent:
    def __init__(self, answers: dict[str, Answer] | None = None, hello: dict | None = None) -> None:
        self.answers = default_answers()
        self.answers.update(answers or {})
        self.hello = {"t": "hello", "proto": PROTOCOL_VERSION, "agent_version": AGENT_VERSION,
                      "python": "3.11.0", "capabilities": {}, "root": "/", "pid": os.getpid(),
                      "ops": sorted(set(self.answers) | {"health", "bench", "put"})}
        self.hello.update(hello or {})
        self.calls: list[str] = []
        self._stop = threading.Event()
        self._master, slave = pty.openpty()
        tty.setraw(slave)
        self.path = os.ttyname(slave)
        self._slave = slave  # kept open so the pty does not hang up between sessions
        self._arq = ArqLink(FdPort(self._master), name="fake", close_port=False)
        self._thread = threading.Thread(target=self._serve, name="fake-agent", daemon=True)

    @property
    def target(self) -> str:
        return f"serial://{self.path}?baud=115200"

    def __enter__(self) -> "FakeAgent":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._arq.abort()
        self._thread.join(5)
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                session = self._arq.accept(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:  # the link was aborted: the test is over
                return
            self._session(session)

    def _session(self, stream: Any) -> None:
        reader, writer = FrameReader(stream), FrameWriter(stream)
        alive = threading.Event()

        def heartbeat() -> None:
            while not alive.wait(1.0):
                try:
                    writer.try_send({"t": "hb", "ts": time.time()})
                except (OSError, StreamClosed, ProtocolError):
                    return

        threading.Thread(target=heartbeat, daemon=True).start()
        try:
            while not self._stop.is_set():
                try:
                    msg = reader.read_message()
                except ProtocolError:
                    continue
                h = msg.header
                if h.get("t") == "hello":
                    writer.send(self.hello)
                elif h.get("t") == "req":
                    self.calls.append(str(h.get("op")))
                    writer.send(self._answer(h.get("id"), str(h.get("op")), h.get("args") or {}))
        except (StreamClosed, OSError):
            pass
        finally:
            alive.set()
            try:
                stream.close()
            except Exception:
                pass

    def _answer(self, rid: Any, op: str, args: dict) -> dict:
        answer = self.answers.get(op)
        if answer is None:
            return {"t": "res", "id": rid, "ok": False,
                    "error": {"code": "unknown_op", "message": f"no operation {op!r}"}}
        if callable(answer):
            answer = answer(args)
        if isinstance(answer, Error):
            return {"t": "res", "id": rid, "ok": False, "error": {"code": answer.code, "message": answer.message}}
        return {"t": "res", "id": rid, "ok": True, "result": answer}


def wait_until(pred: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()
