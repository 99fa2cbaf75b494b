"""Who holds a serial port, and asking them to let go.

A serial port takes one session at a time: the link opens it with pyserial's ``exclusive=True``
(an advisory ``flock`` on the device node). That lock says nothing about its holder, so next to it
fieldkit keeps a small *holder record* under the home (``run/serial/<port>.json``: pid, program,
since when, which device). When a second process cannot take the lock, it names the holder from that
record (other programs, minicom or screen, are named by :mod:`.serialport` from ``/proc/locks``
and UUCP lock files) instead of "Resource temporarily unavailable".

A holder that keeps sessions open for long (the TUI's fleet, ``fieldkit health --watch``) watches for
a *release request* beside its record (``run/serial/<port>.release.json``, written by ``fieldkit
devices release``): when its session on that port is idle it closes it, which removes the record;
when busy it answers why, in the same file.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fieldkit.errors import ConnectError
from fieldkit.fsutil import atomic_write_json
from fieldkit.locations import Home

RELEASE_HINT = "fieldkit devices release {device}"


@dataclass(frozen=True)
class PortHolder:
    """A process holding a serial port (``since`` and ``device`` are known only for fieldkit)."""

    pid: int
    program: str
    port: str
    since: float | None = None
    device: str | None = None

    def describe(self) -> str:
        who = f"pid {self.pid} ({self.program})"
        if self.since is not None:
            who += f" since {time.strftime('%H:%M:%S', time.localtime(self.since))}"
        if self.device:
            who += f" for {self.device}"
        return who


def _key(port: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", port.strip("/")) or "port"


def holder_path(home: Home, port: str) -> Path:
    return home.run_dir / "serial" / f"{_key(port)}.json"


def request_path(home: Home, port: str) -> Path:
    return home.run_dir / "serial" / f"{_key(port)}.release.json"


def program_of(pid: int) -> str:
    """A short command line of ``pid`` (``fieldkit health``, ``python -m pytest``, ``minicom``)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "unknown program"
    args = [a.decode("utf-8", "replace") for a in raw.split(b"\0") if a]
    if not args:
        return "unknown program"
    args[0] = os.path.basename(args[0])
    if args[0].startswith("python") and len(args) > 1:  # python -m fieldkit …, python script.py …
        args = args[2:] if args[1] == "-m" and len(args) > 2 else [os.path.basename(args[1])] + args[2:]
    text = " ".join(args[:3])
    return text if len(text) <= 60 else text[:59] + "…"


def claim(home: Home, port: str, device: str) -> None:
    """Write this process's holder record for ``port`` (after the port's lock was taken)."""
    path = holder_path(home, port)
    try:
        atomic_write_json(path, {"pid": os.getpid(), "program": program_of(os.getpid()), "port": port,
                                 "since": time.time(), "device": device}, mode=0o600, indent=None)
        stale = request_path(home, port)
        if stale.exists():  # a request for a session that is gone
            stale.unlink()
    except OSError:
        pass  # best effort: the lock itself still protects the port


def unclaim(home: Home, port: str) -> None:
    """Remove this process's holder record (never another process's)."""
    path = holder_path(home, port)
    doc = _read_json(path)
    if doc is not None and doc.get("pid") == os.getpid():
        try:
            path.unlink()
        except OSError:
            pass


def _read_json(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def find_holder(home: Home, port: str) -> PortHolder | None:
    """fieldkit's holder record for ``port`` when the process that wrote it still runs, else None
    (other programs are named from /proc/locks and UUCP lock files by :mod:`.serialport`)."""
    from fieldkit.link.serialport import _pid_alive

    doc = _read_json(holder_path(home, port))
    if doc is None:
        return None
    pid = doc.get("pid")
    if type(pid) is not int or pid <= 0 or pid == os.getpid() or not _pid_alive(pid):
        return None
    since, device, program = doc.get("since"), doc.get("device"), doc.get("program")
    return PortHolder(pid, program[:60] if isinstance(program, str) else program_of(pid), port,
                      float(since) if isinstance(since, (int, float)) else None,
                      device[:200] if isinstance(device, str) else None)


def busy_error(home: Home, port: str, device: str, cause: Any) -> ConnectError:
    """``cause`` (serialport's PortUnavailable, busy) with fieldkit's holder named when it is one:
    who, since when, and how to have it let go."""
    from fieldkit.link.serialport import PortUnavailable

    holder = find_holder(home, port)
    if holder is None:
        return cause
    return PortUnavailable(
        f"serial port {port} is held by fieldkit, {holder.describe()}", status="busy", path=port,
        holder=f"pid {holder.pid} ({holder.program})",
        hint=f"if that is the TUI or `fieldkit health --watch`, run `{RELEASE_HINT.format(device=device)}` "
             "to have it let go of the port while idle; otherwise wait for that command to finish")


# ---- release requests ------------------------------------------------------------------------------
def request_release(home: Home, port: str, device: str) -> None:
    """Ask the holder of ``port`` to let go (``fieldkit devices release``)."""
    atomic_write_json(request_path(home, port), {"pid": os.getpid(), "program": program_of(os.getpid()),
                                                 "device": device, "time": time.time(), "answer": None},
                      mode=0o600)


def pending_request(home: Home, port: str) -> dict | None:
    """An unanswered release request for ``port`` (for the holder's watcher), or None."""
    doc = _read_json(request_path(home, port))
    if doc is None or doc.get("answer") is not None:
        return None
    pid = doc.get("pid")
    return {"pid": pid if type(pid) is int else None,
            "program": str(doc.get("program") or "?")[:60], "time": doc.get("time")}


def answer_request(home: Home, port: str, answer: str, reason: str = "") -> None:
    """The holder's answer: ``released``, or ``busy`` with why."""
    path = request_path(home, port)
    doc = _read_json(path) or {}
    doc.update(answer=answer, reason=reason[:300], answered_at=time.time())
    try:
        atomic_write_json(path, doc, mode=0o600, indent=None)
    except OSError:
        pass


def read_answer(home: Home, port: str) -> dict | None:
    doc = _read_json(request_path(home, port))
    return doc if doc is not None and doc.get("answer") is not None else None


def clear_request(home: Home, port: str) -> None:
    try:
        request_path(home, port).unlink()
    except OSError:
        pass


def holder_record(home: Home, port: str) -> dict[str, Any] | None:
    """The raw holder record (tests, ``--json``)."""
    return _read_json(holder_path(home, port))


def as_json(holder: PortHolder) -> dict:
    return asdict(holder)
