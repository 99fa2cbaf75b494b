"""Byte streams the message layer runs on (stdlib only, Python 3.6 syntax).

A *stream* is any object with:

``read(n) -> bytes``   block until at least one byte is available; return up to ``n`` bytes;
                       return ``b""`` once the stream has ended (EOF, closed, peer gone).
``write(data)``        write all of ``data`` (bytes-like) or raise ``OSError``/``StreamClosed``.
``close()``            idempotent; unblocks a reader in another thread.

A *raw port* (a serial line, before :mod:`fieldkit.agent.arq` makes it reliable) has instead:

``read_some(n, timeout) -> bytes``  up to ``n`` bytes, ``b""`` if nothing arrived within
                                    ``timeout`` seconds (a timeout, not EOF); ``OSError`` if the
                                    device went away.
``write(data)``                     write all of ``data``; ``OSError`` on failure.
``close()``
"""

import os
import select
import threading


class FdStream(object):
    """Stream over a pair of file descriptors (the agent's stdin/stdout, or pipes)."""

    def __init__(self, rfd, wfd, close_fds=False):
        self._rfd = rfd
        self._wfd = wfd
        self._close_fds = close_fds
        self._closed = threading.Event()

    def read(self, n):
        if self._closed.is_set():
            return b""
        try:
            return os.read(self._rfd, n)
        except OSError:
            if self._closed.is_set():
                return b""
            raise

    def write(self, data):
        view = memoryview(data)
        while view:
            written = os.write(self._wfd, view)
            view = view[written:]

    def close(self):
        if self._closed.is_set():
            return
        self._closed.set()
        if self._close_fds:
            for fd in {self._rfd, self._wfd}:
                try:
                    os.close(fd)
                except OSError:
                    pass


class FdPort(object):
    """Raw port over a tty file descriptor (termios configured by :func:`open_tty`)."""

    def __init__(self, fd):
        self.fd = fd
        self._closed = False

    def read_some(self, n, timeout):
        if self._closed:
            raise OSError("port closed")
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return b""
        data = os.read(self.fd, n)
        if not data:  # readable but empty: the other side of the tty hung up
            raise OSError("serial line hung up")
        return data

    def write(self, data):
        view = memoryview(data)
        while view:
            try:
                written = os.write(self.fd, view)
            except BlockingIOError:
                select.select([], [self.fd], [], 1.0)
                continue
            view = view[written:]

    def close(self):
        if not self._closed:
            self._closed = True
            try:
                os.close(self.fd)
            except OSError:
                pass


def open_tty(path, baud=115200):
    """Open a serial device raw 8N1 at ``baud`` with termios (no pyserial needed on the device)."""
    import termios
    import tty

    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    try:
        # the lock first: a port another program holds keeps its settings (speed, raw mode) untouched
        try:
            import fcntl
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (ImportError, OSError):
            raise OSError("serial port %s is in use by another program" % path)
        tty.setraw(fd)
        attrs = termios.tcgetattr(fd)
        speed = getattr(termios, "B%d" % baud, None)
        if speed is None:
            raise ValueError("unsupported baud rate %d" % baud)
        attrs[4] = speed  # ispeed
        attrs[5] = speed  # ospeed
        attrs[2] &= ~(termios.PARENB | termios.CSTOPB | termios.CSIZE | getattr(termios, "CRTSCTS", 0))
        attrs[2] |= termios.CS8 | termios.CLOCAL | termios.CREAD
        attrs[6][termios.VMIN] = 0
        attrs[6][termios.VTIME] = 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)
        return FdPort(fd)
    except BaseException:
        try:
            os.close(fd)
        except OSError:
            pass
        raise
