"""A serial port as the link uses it: pyserial behind the raw-port interface of
:mod:`fieldkit.agent.streams` (``read_some``, ``write``, ``close``), opened exclusively.

Opening never forces a port another program holds: pyserial's ``exclusive=True`` is an advisory
``flock`` (the agent's own port and other fieldkits take it too); a UUCP lock file
(``/var/lock/LCK..ttyUSB0``, minicom and friends) with a live owner and a port in ``TIOCEXCL``
mode (which root could otherwise open) count as held as well. Those, and a port the user may not
open, raise :class:`PortUnavailable` naming who holds it or which group to join.

``quiet=True`` opens without raising DTR/RTS as far as pyserial allows: both are set False on the
unopened ``Serial()`` so that ``open()`` clears them instead of asserting them (pyserial applies
the stored state right after configuring the port). The kernel itself raises both lines for the
instant between ``open(2)`` and that ``ioctl``, which no user-space library can prevent on Linux.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
import threading
from pathlib import Path
from typing import Any

from fieldkit.errors import ConnectError

HEARD_MAX = 512
"""Bytes kept of what the port said since :meth:`SerialPort.clear_heard` (a login prompt, a bootloader)."""

_TIOCGEXCL = 0x80045440  # Linux >= 3.8: is the tty in exclusive mode?
_LOCK_DIRS = ("/var/lock", "/run/lock", "/var/spool/lock")


class PortUnavailable(ConnectError):
    """The port exists but cannot be used now. ``status`` is ``busy`` or ``permission_denied``;
    ``holder`` says who holds a busy port when known, ``group`` which group may open it."""

    def __init__(self, message: str, *, status: str, path: str, holder: str | None = None,
                 group: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status
        self.path = path
        self.holder = holder
        self.group = group


class NoAgentAnswer(ConnectError):
    """Nothing answered the serial handshake at this baud (only the session requests were sent)."""


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip() or "?"
    except OSError:
        return "?"


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def uucp_lock_holder(path: str, dirs: tuple[str, ...] = _LOCK_DIRS) -> str | None:
    """``pid N (name)`` of a live process named in a UUCP lock file for ``path``, else None
    (a stale file, whose process is gone, does not count)."""
    base = os.path.basename(path)
    for d in dirs:
        try:
            raw = Path(d, f"LCK..{base}").read_bytes()[:64]
        except OSError:
            continue
        text = raw.strip(b"\0 \n")
        if text.isdigit():
            pid = int(text)
        elif len(raw) == 4:  # binary (old Kermit) lock files
            pid = struct.unpack("=i", raw)[0]
        else:
            continue
        if pid != os.getpid() and _pid_alive(pid):
            return f"pid {pid} ({_comm(pid)})"
    return None


def flock_holder(path: str) -> str | None:
    """``pid N (name)`` holding a ``flock`` on ``path`` according to /proc/locks, else None."""
    try:
        st = os.stat(path)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == want and parts[4].isdigit():
            pid = int(parts[4])
            return f"pid {pid} ({'this fieldkit' if pid == os.getpid() else _comm(pid)})"
    return None


def permission_hint(path: str) -> tuple[str | None, str]:
    """``(group, hint)`` for a port this user may not open: the port's group when it may read and
    write, otherwise what to ask for."""
    import grp

    try:
        st = os.stat(path)
    except OSError as exc:
        return None, f"cannot read {path}'s permissions ({exc.strerror})"
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o060 == 0o060:
        return group, (f"{path} belongs to group {group}: join it (`sudo usermod -aG {group} $USER`, "
                       "then log out and in again)")
    return group, (f"{path} is mode {mode:04o} (group {group} may not read and write it): ask for a udev rule "
                   f"giving group dialout access, or run `sudo chmod g+rw {path}` for this session")


def _unavailable_on_open(path: str, code: int | None) -> PortUnavailable | None:
    if code in (errno.EACCES, errno.EPERM):
        group, hint = permission_hint(path)
        return PortUnavailable(f"permission denied opening {path}", status="permission_denied", path=path,
                               group=group, hint=hint)
    if code in (errno.EBUSY, errno.EAGAIN, errno.EWOULDBLOCK):
        holder = flock_holder(path) or uucp_lock_holder(path)
        return PortUnavailable(f"{path} is in use by " + (holder or "another program"), status="busy",
                               path=path, holder=holder,
                               hint="close the other program (a terminal, another fieldkit) or pick another port")
    return None


def _exclusive_mode(fd: int) -> bool:
    try:
        buf = fcntl.ioctl(fd, _TIOCGEXCL, b"\0\0\0\0")
    except (OSError, ValueError):
        return False
    return struct.unpack("i", buf)[0] != 0


class SerialPort:
    """pyserial as a raw port. ``open()`` raises :class:`PortUnavailable` (busy, permission) or
    :class:`ConnectError`; reads and writes raise ``OSError`` when the device goes away."""

    def __init__(self, path: str, baud: int, *, quiet: bool = False, write_timeout: float = 10.0) -> None:
        self.path = path
        self.baud = baud
        self.quiet = quiet
        self.heard = bytearray()
        self._write_timeout = write_timeout
        self._port: Any = None
        self._lock = threading.Lock()

    @classmethod
    def open_port(cls, path: str, baud: int, *, quiet: bool = False) -> SerialPort:
        port = cls(path, baud, quiet=quiet)
        port.open()
        return port

    def open(self) -> None:
        import serial

        holder = uucp_lock_holder(self.path)
        if holder:
            raise PortUnavailable(f"{self.path} is in use by {holder} (UUCP lock file)", status="busy",
                                  path=self.path, holder=holder, hint="close that program or pick another port")
        port = serial.Serial()
        port.port = self.path
        port.baudrate = self.baud
        port.timeout = 0.05
        port.write_timeout = self._write_timeout
        port.exclusive = True
        if self.quiet:  # stored now, applied by open() instead of asserting the lines
            port.dtr = False
            port.rts = False
        # A first descriptor, opened without changing anything, asks whether another program put
        # the tty in exclusive mode (root would get in anyway) before pyserial configures it; it stays
        # open until pyserial has the port, so closing it is never the last close (no hang-up, no DTR drop).
        probe = None
        try:
            probe = os.open(self.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
            if _exclusive_mode(probe):
                raise PortUnavailable(f"{self.path} is in exclusive use by another program (TIOCEXCL)",
                                      status="busy", path=self.path,
                                      hint="close the other program or pick another port")
            port.open()
        except (serial.SerialException, OSError) as exc:
            unavailable = _unavailable_on_open(self.path, exc.errno)  # SerialException keeps the errno
            if unavailable is not None:
                raise unavailable from exc
            raise ConnectError(f"cannot open serial port {self.path}: {exc}",
                               hint="check the cable and that no other program holds the port") from exc
        finally:
            if probe is not None:
                os.close(probe)
        self._port = port

    def set_baud(self, baud: int) -> None:
        """Change the line speed and drop whatever arrived at the old one."""
        import serial

        try:
            self._port.baudrate = baud
            self._port.reset_input_buffer()
        except (serial.SerialException, OSError, ValueError) as exc:
            raise OSError(f"cannot set {self.path} to {baud} baud: {exc}") from exc
        self.baud = baud
        self.clear_heard()

    def clear_heard(self) -> None:
        with self._lock:
            del self.heard[:]

    def read_some(self, n: int, timeout: float) -> bytes:
        import serial

        port = self._port
        try:
            if port.timeout != timeout:
                port.timeout = timeout
            first = port.read(1)
            if not first:
                return b""
            waiting = port.in_waiting
            data = first + (port.read(min(n - 1, waiting)) if waiting and n > 1 else b"")
        except (serial.SerialException, AttributeError, TypeError) as exc:
            raise OSError(str(exc)) from exc
        if len(self.heard) < HEARD_MAX:
            with self._lock:
                self.heard += data[:HEARD_MAX - len(self.heard)]
        return data

    def write(self, data: bytes) -> None:
        import serial

        try:
            self._port.write(data)
        except (serial.SerialException, AttributeError) as exc:
            raise OSError(str(exc)) from exc

    def close(self) -> None:
        try:
            if self._port is not None:
                self._port.close()
        except Exception:
            pass
