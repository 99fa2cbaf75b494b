"""A simulated serial cable between two pseudo-terminals, with fault injection.

``PtyRelay`` creates two pty pairs and copies bytes between their masters in a thread.  The
agent opens :attr:`PtyRelay.device_path`, the laptop :attr:`PtyRelay.laptop_path` (both are pty
slaves set raw), exactly as they would open ``/dev/ttyUSB0``.  The relay can

* corrupt the line: ``fault`` is called as ``fault(chunk, direction)`` for every chunk read
  (``direction`` is ``"to_laptop"`` or ``"to_device"``) and returns the bytes to pass on;
  :class:`FaultInjector` drops, flips and inserts bytes at given per-byte rates;
* pull the cable: :meth:`PtyRelay.pause` discards everything (including bytes in flight) until
  :meth:`PtyRelay.resume`;
* emulate a baud rate: ptys ignore termios speeds, so ``bytes_per_second`` throttles each
  direction (the sender then blocks as it would on a real UART);
* inject raw bytes into the line (:meth:`PtyRelay.inject`);
* emulate two UARTs (``uart=True``): each side's speed is the termios speed its program set on
  its pty (the relay holds both slaves and reads it for every chunk); when the two differ, the
  receiving side gets what a UART at its speed samples from the sender's bit stream (8N1, a
  framing error reads as a NUL byte, as Linux delivers it in raw mode) — garbage, as on a real
  cable with the wrong baud rate, so a test can tell which baud a program really chose.
  Each chunk read from a side is taken as sent back to back after an idle line.

If one side closes its pty, reads on that master fail with ``EIO`` on Linux; the relay keeps
going so that the side can reopen the device (by default the relay also holds each slave open,
so the masters never see ``EIO`` at all; pass ``hold_slaves=False`` to see the raw behaviour).
"""

import errno
import fcntl
import math
import os
import pty
import random
import select
import termios
import threading
import time
import tty

TO_LAPTOP = "to_laptop"
TO_DEVICE = "to_device"


class FaultInjector(object):
    """Per-byte random faults, deterministic for a seed (per direction, independent of chunking).

    ``drop_rate``, ``flip_rate``, ``insert_rate`` are probabilities per byte.  A flip XORs the
    byte with a random non-zero mask; an insert puts a random byte (possibly 0x00) before it.
    ``directions`` limits which directions are affected.  Counters: ``bytes_seen``, ``dropped``,
    ``flipped``, ``inserted`` (also as :attr:`counts`).
    """

    def __init__(self, drop_rate=0.0, flip_rate=0.0, insert_rate=0.0, seed=None,
                 directions=(TO_LAPTOP, TO_DEVICE)):
        self.rates = {"drop": float(drop_rate), "flip": float(flip_rate), "insert": float(insert_rate)}
        self.seed = seed
        self.directions = tuple(directions)
        self.enabled = True
        self.bytes_seen = 0
        self.dropped = 0
        self.flipped = 0
        self.inserted = 0
        self._lock = threading.Lock()
        self._state = {}

    @property
    def counts(self):
        return {"bytes_seen": self.bytes_seen, "dropped": self.dropped, "flipped": self.flipped,
                "inserted": self.inserted}

    @property
    def total(self):
        return self.dropped + self.flipped + self.inserted

    def _dir_state(self, direction):
        st = self._state.get(direction)
        if st is None:
            # one generator per use, so the faults depend on stream positions, not on chunking
            def rng(use):
                if self.seed is None:
                    return random.Random()
                return random.Random("%r/%s/%s" % (self.seed, direction, use))
            st = {"gap": {}, "next": {}, "flip": rng("flip-mask"), "insert": rng("insert-byte")}
            for kind, p in self.rates.items():
                st["gap"][kind] = rng(kind)
                st["next"][kind] = self._gap(st["gap"][kind], p)
            self._state[direction] = st
        return st

    @staticmethod
    def _gap(rng, p):
        """Bytes before the next event (geometric distribution); a huge number if p == 0."""
        if p <= 0:
            return 1 << 62
        if p >= 1:
            return 0
        u = 1.0 - rng.random()  # (0, 1]
        return int(math.log(u) / math.log(1.0 - p))

    def __call__(self, data, direction=TO_LAPTOP):
        if not self.enabled or direction not in self.directions or not data:
            return data
        with self._lock:
            st = self._dir_state(direction)
            nxt = st["next"]
            n = len(data)
            self.bytes_seen += n
            events = {}
            for kind in ("drop", "flip", "insert"):
                pos = nxt[kind]
                p = self.rates[kind]
                rng = st["gap"][kind]
                while pos < n:
                    events.setdefault(kind, []).append(pos)
                    pos += 1 + self._gap(rng, p)
                nxt[kind] = pos - n
            if not events:
                return data
            buf = bytearray(data)
            for pos in events.get("flip", ()):
                buf[pos] ^= st["flip"].randrange(1, 256)
                self.flipped += 1
            edits = [(pos, 1) for pos in events.get("insert", ())]
            edits += [(pos, 2) for pos in events.get("drop", ())]
            if not edits:
                return bytes(buf)
            edits.sort()
            out = bytearray()
            start = 0
            for pos, kind in edits:
                if kind == 1:  # insert a byte before position pos
                    out += buf[start:pos]
                    out.append(st["insert"].randrange(256))
                    self.inserted += 1
                    start = pos
                else:  # drop the byte at pos
                    out += buf[start:pos]
                    self.dropped += 1
                    start = pos + 1
            out += buf[start:]
            return bytes(out)


_SPEEDS = dict((getattr(termios, "B%d" % _b), _b) for _b in (
    50, 75, 110, 134, 150, 200, 300, 600, 1200, 1800, 2400, 4800, 9600, 19200, 38400, 57600,
    115200, 230400, 460800, 500000, 576000, 921600, 1000000, 1152000, 1500000, 2000000, 2500000,
    3000000, 3500000, 4000000) if hasattr(termios, "B%d" % _b))


def uart_resample(data, tx_baud, rx_baud):
    """What a UART at ``rx_baud`` reads from ``data`` sent back to back at ``tx_baud`` (8N1).

    The receiver waits for a falling edge (start bit), checks the start bit at its middle, samples
    eight data bits and the stop bit at the middle of each of *its* bit times; a low stop bit is a
    framing error (read as NUL). Equal speeds return ``data`` unchanged."""
    if tx_baud == rx_baud or not data:
        return data
    bits = []
    for b in bytearray(data):
        bits.append(0)
        bits.extend((b >> i) & 1 for i in range(8))
        bits.append(1)
    n = len(bits)
    r = float(tx_baud) / float(rx_baud)  # one receiver bit time, in sender bit times

    def level(t):
        i = int(t)
        return bits[i] if i < n else 1

    out = bytearray()
    t = 0.0
    while True:
        i = int(math.ceil(t))
        while i < n and not (bits[i] == 0 and (i == 0 or bits[i - 1] == 1)):
            i += 1
        if i >= n:
            return bytes(out)
        if level(i + 0.5 * r) != 0:  # a glitch, not a start bit
            t = i + 0.5 * r
            continue
        byte = 0
        for k in range(8):
            if level(i + (1.5 + k) * r):
                byte |= 1 << k
        out.append(byte if level(i + 9.5 * r) else 0)
        t = i + 9.5 * r


class PtyRelay(object):
    """Two pty pairs joined by a copying thread: ``device_path`` <-> ``laptop_path``.

    ``stats`` counts bytes read from each side (``to_laptop``, ``to_device``), bytes delivered
    (``delivered_to_laptop``, ``delivered_to_device``), ``dropped_paused``, ``dropped_overflow``,
    ``injected`` and (``uart=True``) ``baud_mismatch``: bytes read while the two sides' speeds differed.
    """

    def __init__(self, fault=None, bytes_per_second=None, hold_slaves=True, buffer_limit=1 << 20,
                 uart=False):
        if uart and not hold_slaves:
            raise ValueError("uart=True reads each side's speed from the slaves the relay holds")
        self.fault = fault
        self.uart = uart
        self.bytes_per_second = float(bytes_per_second) if bytes_per_second else None
        self.buffer_limit = int(buffer_limit)
        self.stats = {"to_laptop": 0, "to_device": 0, "delivered_to_laptop": 0,
                      "delivered_to_device": 0, "dropped_paused": 0, "dropped_overflow": 0,
                      "injected": 0, "eio": 0, "baud_mismatch": 0}
        self._lock = threading.Lock()
        self._paused = False
        self._closed = False
        self._fds = []
        try:
            self._dev_master, dev_slave = pty.openpty()
            self._fds += [self._dev_master, dev_slave]
            self._lap_master, lap_slave = pty.openpty()
            self._fds += [self._lap_master, lap_slave]
            tty.setraw(dev_slave)
            tty.setraw(lap_slave)
            self.device_path = os.ttyname(dev_slave)
            self.laptop_path = os.ttyname(lap_slave)
            for fd in (self._dev_master, self._lap_master):
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_NONBLOCK)
            if hold_slaves:
                self._slaves = [dev_slave, lap_slave]
            else:
                self._slaves = []
                for fd in (dev_slave, lap_slave):
                    self._fds.remove(fd)
                    os.close(fd)
            self._wake_r, self._wake_w = os.pipe()
            self._fds += [self._wake_r, self._wake_w]
        except BaseException:
            for fd in self._fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        # per direction: source master, destination master, throttle queue, output queue
        self._dirs = {
            TO_LAPTOP: {"src": self._dev_master, "dst": self._lap_master, "inq": bytearray(),
                        "outq": bytearray(), "tokens": 0.0},
            TO_DEVICE: {"src": self._lap_master, "dst": self._dev_master, "inq": bytearray(),
                        "outq": bytearray(), "tokens": 0.0},
        }
        self._hung = {}  # master fd -> time of the last EIO (its slave is closed)
        self._thread = threading.Thread(target=self._run, name="ptyrelay")
        self._thread.daemon = True
        self._thread.start()

    # ---- control ------------------------------------------------------------------------------

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def pause(self):
        """Pull the cable: discard bytes in flight and everything sent until :meth:`resume`."""
        with self._lock:
            self._paused = True
            for d in self._dirs.values():
                self.stats["dropped_paused"] += len(d["inq"]) + len(d["outq"])
                del d["inq"][:]
                del d["outq"][:]
        self._wake()

    def resume(self):
        with self._lock:
            self._paused = False
        self._wake()

    @property
    def paused(self):
        return self._paused

    def inject(self, data, to=TO_LAPTOP):
        """Put raw ``data`` on the line towards ``to`` ("to_laptop"/"laptop" or "to_device"/"device")."""
        direction = TO_LAPTOP if to in (TO_LAPTOP, "laptop") else TO_DEVICE
        with self._lock:
            self._dirs[direction]["outq"] += data
            self.stats["injected"] += len(data)
        self._wake()

    def close(self):
        if self._closed:
            return
        self._closed = True
        self._wake()
        self._thread.join(2.0)
        for fd in self._fds:
            try:
                os.close(fd)
            except OSError:
                pass

    @property
    def closed(self):
        return self._closed

    # ---- relay thread -------------------------------------------------------------------------

    def _wake(self):
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _run(self):
        rate = self.bytes_per_second
        in_cap = max(256, int(rate * 0.05)) if rate else 0
        burst = max(64.0, rate * 0.02) if rate else 0.0
        last = time.monotonic()
        while not self._closed:
            now = time.monotonic()
            with self._lock:
                rlist = [self._wake_r]
                wlist = []
                timeout = 0.05
                for d in self._dirs.values():
                    src = d["src"]
                    hung = self._hung.get(src)
                    if hung is not None and now - hung < 0.05:
                        timeout = min(timeout, 0.05)
                    elif not rate or len(d["inq"]) < in_cap:
                        rlist.append(src)
                    if d["outq"]:
                        dst = d["dst"]
                        if self._hung.get(dst) is None or now - self._hung[dst] >= 0.05:
                            wlist.append(dst)
                    if rate and d["inq"]:
                        timeout = min(timeout, 0.005)
            try:
                readable, writable, _ = select.select(rlist, wlist, [], timeout)
            except (OSError, ValueError):
                if self._closed:
                    return
                time.sleep(0.01)
                continue
            if self._closed:
                return
            if self._wake_r in readable:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            for direction, d in self._dirs.items():
                if d["src"] in readable:
                    self._read_side(direction, d)
            now = time.monotonic()
            if rate:
                elapsed = now - last
                with self._lock:
                    for d in self._dirs.values():
                        d["tokens"] = min(burst, d["tokens"] + elapsed * rate)
                        if d["inq"] and d["tokens"] >= 1:
                            k = min(len(d["inq"]), int(d["tokens"]))
                            d["tokens"] -= k
                            self._to_outq(d, bytes(d["inq"][:k]))
                            del d["inq"][:k]
            last = now
            for direction, d in self._dirs.items():
                if d["outq"]:  # masters are non-blocking: a full side just says EAGAIN
                    self._write_side(direction, d)

    def _read_side(self, direction, d):
        src = d["src"]
        try:
            data = os.read(src, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            # EIO: the slave side is closed; it may be reopened later, so keep polling slowly
            self._hung[src] = time.monotonic()
            if exc.errno == errno.EIO:
                self.stats["eio"] += 1
            return
        self._hung.pop(src, None)
        if not data:
            self._hung[src] = time.monotonic()
            return
        with self._lock:
            self.stats[direction] += len(data)
            if self._paused:
                self.stats["dropped_paused"] += len(data)
                return
        if self.uart:
            data = self._uart(data, direction)
            if not data:
                return
        fault = self.fault
        if fault is not None:
            data = fault(data, direction)
            if not data:
                return
        with self._lock:
            if self._paused:
                self.stats["dropped_paused"] += len(data)
            elif self.bytes_per_second:
                d["inq"] += data
            else:
                self._to_outq(d, data)

    def speeds(self):
        """``(device_baud, laptop_baud)`` as each side's program set its pty (None: unknown)."""
        out = []
        for fd in self._slaves:
            try:
                out.append(_SPEEDS.get(termios.tcgetattr(fd)[5]))
            except (OSError, termios.error):
                out.append(None)
        return tuple(out) if len(out) == 2 else (None, None)

    def _uart(self, data, direction):
        dev, lap = self.speeds()
        tx, rx = (dev, lap) if direction == TO_LAPTOP else (lap, dev)
        if tx is None or rx is None or tx == rx:
            return data
        with self._lock:
            self.stats["baud_mismatch"] += len(data)
        return uart_resample(data, tx, rx)

    def _to_outq(self, d, data):
        room = self.buffer_limit - len(d["outq"])
        if room < len(data):
            # nobody is reading that side: a real line would lose these bytes too
            self.stats["dropped_overflow"] += len(data) - max(room, 0)
            data = data[:max(room, 0)]
        d["outq"] += data

    def _write_side(self, direction, d):
        dst = d["dst"]
        with self._lock:
            chunk = bytes(d["outq"][:65536])
        if not chunk:
            return
        try:
            n = os.write(dst, chunk)
        except BlockingIOError:
            return
        except OSError:  # EIO: nobody has that side open; the bytes are lost, as on a real line
            self._hung[dst] = time.monotonic()
            with self._lock:
                self.stats["dropped_overflow"] += len(d["outq"])
                del d["outq"][:]
            return
        self._hung.pop(dst, None)
        with self._lock:
            del d["outq"][:n]
            key = "delivered_" + direction
            self.stats[key] += n
