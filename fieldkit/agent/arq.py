"""A reliable, ordered byte stream over a lossy serial line (stdlib only, Python 3.9 syntax).

This runs on the device (the agent serves on its console port) and on the laptop. It turns a *raw
port* (``read_some(n, timeout)``, ``write(data)``, ``close()``; see :mod:`.streams`) into a *stream*
(``read(n)``, ``write(data)``, ``close()``) that the length-prefixed message framer of
:mod:`.protocol` runs on unchanged.

Wire format
-----------
Every frame is ``COBS(body) 0x00``; a batch of frames written together starts with one extra 0x00
so that line noise before it is cut off.  ``body = header | payload | CRC-32`` (``zlib.crc32``
over header and payload, big endian).  Headers (big endian)::

    RESET      u8 type=1 | u32 session | u8 version | u16 window | u16 payload_size
    RESET_ACK  u8 type=2 | u32 session | u8 version | u16 window | u16 payload_size
    DATA       u8 type=3 | u32 session | u32 seq | u32 ack | u16 wnd | payload (1..payload_size)
    ACK        u8 type=4 | u32 session | u32 ack | u16 wnd | u8 flags | u8 probe | SACK (0..128 bytes)
    FIN        u8 type=5 | u32 session

``ack`` is cumulative (next sequence number expected), ``wnd`` is how many frames beyond ``ack``
the receiver has buffer room for, and bit *i* of the little-endian SACK bitmap says frame
``ack + 1 + i`` has been received out of order.  Flag 1 in an ACK makes it a *probe* that asks
for an immediate ACK back carrying flag 2 and the same probe number.  Sequence numbers are 32-bit
on the wire and unbounded inside.

Reliability
-----------
Selective repeat with a sliding window (``window`` frames).  The receiver buffers out-of-order
frames and ACKs immediately when it sees a gap (that ACK, with its SACK bitmap, is the NAK);
otherwise it ACKs every ``ack_every`` frames (at most a quarter of the window) or ``ack_delay``
seconds after the first un-ACKed frame, and data frames going the other way carry the ACK for
free.  Because a serial line never
reorders, the sender treats every un-ACKed frame that was sent before a frame (or a probe) the
peer has received as lost and retransmits just that frame (RACK-style fast retransmit).  A batch
of retransmissions with no new data behind it ends with a small probe, so a lost retransmission
is noticed one round trip later rather than after a timeout.  A retransmission timer on the
oldest missing frame covers lost tail frames and lost ACKs; it is adaptive (RFC 6298 estimator on
the measured round trip, restarted whenever the peer reports progress, doubled on every
timeout), so a slow line does not cause retransmission storms.  Before it fires, a line that
has gone quiet for two round trips gets one tail-loss probe.

Sessions
--------
The client's :meth:`ArqLink.connect` sends RESET with a random 32-bit session id until the server
answers RESET_ACK.  The server's :meth:`ArqLink.accept` takes the next RESET.  A RESET for a new
session ends the running one on the server (its ``read`` returns ``b""``, ``write`` raises
:class:`~.protocol.StreamClosed`), and the next ``accept`` picks the new session up at once.
Frames for any other session are dropped and counted, and answered (at most 4 times a second)
with FIN for that session so that a peer still using it learns quickly that it is gone.  A session also ends when the
peer sends FIN, when data is outstanding and nothing has been heard for ``dead_after`` seconds,
or when the port fails (``OSError``: the cable or adapter went away).
"""

import collections
import os
import struct
import threading
import time
import zlib

from .cobs import decode as cobs_decode
from .cobs import encode as cobs_encode
from .cobs import max_encoded_len
from .protocol import StreamClosed

PROTO_VERSION = 1

T_RESET = 1
T_RESET_ACK = 2
T_DATA = 3
T_ACK = 4
T_FIN = 5

F_PROBE = 1  # ACK: please answer at once
F_REPLY = 2  # ACK: this answers probe number <probe>

MAX_PAYLOAD = 16384
MIN_PAYLOAD = 16
MAX_WINDOW = 1024

_M32 = 0xFFFFFFFF
_DATA = struct.Struct(">BIIIH")  # type, session, seq, ack, wnd
_ACK = struct.Struct(">BIIHBB")  # type, session, ack, wnd, flags, probe number (+ SACK bitmap)
_RESET = struct.Struct(">BIBHH")  # type, session, version, window, payload size
_FIN = struct.Struct(">BI")  # type, session
_CRC = struct.Struct(">I")

_MIN_BODY = _FIN.size + _CRC.size
_MAX_BODY = _DATA.size + MAX_PAYLOAD + _CRC.size
_MAX_ENCODED = max_encoded_len(_MAX_BODY)
_MAX_SACK = MAX_WINDOW // 8


def _unwrap(wire, ref):
    """Full sequence number for a 32-bit wire value, taking the one nearest to ``ref``."""
    d = (wire - ref) & _M32
    if d >= 0x80000000:
        d -= 0x100000000
    return ref + d


def _new_session_id(avoid=()):
    while True:
        sid = int.from_bytes(os.urandom(4), "big")
        if sid and sid not in avoid:
            return sid


STAT_KEYS = (
    "wire_bytes_out", "wire_bytes_in", "payload_bytes_out", "payload_bytes_in",
    "frames_out", "frames_in", "acks_out", "acks_in", "retransmits", "retransmit_bytes",
    "fast_retransmits", "timeouts", "crc_errors", "bad_frames", "garbage_bytes", "duplicates",
    "tail_probes", "stale_session_frames", "sessions", "dead_peer", "internal_errors",
)


class _Frame(object):
    __slots__ = ("seq", "payload", "tx_order", "tx_count", "sent_time", "sacked", "queued")

    def __init__(self, seq, payload):
        self.seq = seq
        self.payload = payload  # bytearray until first sent (small writes coalesce), then bytes
        self.tx_order = -1
        self.tx_count = 0
        self.sent_time = 0.0
        self.sacked = False
        self.queued = False


class ArqSession(object):
    """One session on an :class:`ArqLink`: a stream (``read``, ``write``, ``close``, ``flush``).

    Created by :meth:`ArqLink.connect` / :meth:`ArqLink.accept`; all state is guarded by the
    link's lock.
    """

    def __init__(self, link, sid, peer_window, peer_payload, now):
        self.link = link
        self.sid = sid
        self.window = max(1, min(link.window, peer_window))  # send window (frames), same both ways
        self.ack_every = max(1, min(link.ack_every, self.window // 4))
        self.peer_payload = peer_payload
        self.started = now
        self.ended = False
        self.end_reason = None
        self._closed_here = False
        # sender
        self.snd_una = 0  # oldest unacknowledged sequence number
        self.snd_nxt = 0  # next sequence number to assign
        self.tx_next = 0  # next never-sent frame
        self.frames = collections.OrderedDict()  # seq -> _Frame, snd_una <= seq < snd_nxt
        self.rtx = collections.deque()  # seqs waiting for retransmission
        self.peer_wnd = peer_window
        self.order = 0  # transmission counter (RACK)
        self.rack_order = -1  # highest transmission known delivered
        self.srtt = None
        self.rttvar = None
        self.rto = link.initial_rto
        self.backoff = 1
        self.last_progress = now
        self.last_send = now
        self.tlp_done = False  # a tail-loss probe was sent since the last progress
        self.last_heard = now
        self.last_probe = now
        self.probe_needed = False
        self.probe_id = 0  # number of our latest probe
        self.probe_order = -1  # transmission counter when it was sent
        self.probe_time = None  # when it was sent, until its answer gives an RTT sample
        self.probe_reply = None  # receiver: probe number to answer
        self.writers_waiting = 0
        # receiver
        self.rcv_nxt = 0
        self.ooo = {}  # seq -> payload, out of order, rcv_nxt < seq < rcv_nxt + window
        self.rbuf = collections.deque()
        self.rbuf_bytes = 0
        self.rbuf_limit = max(65536, 4 * link.window * peer_payload)
        self.ack_needed = False
        self.ack_pending = 0
        self.ooo_since_ack = 0
        self.ack_due = None
        self.last_adv_wnd = link.window

    def __repr__(self):
        return "ArqSession(%08x%s)" % (self.sid, ", ended: %s" % self.end_reason if self.ended else "")

    # ---- stream interface -------------------------------------------------------------------

    def read(self, n=65536, timeout=None):
        """Up to ``n`` bytes; blocks until some arrive; ``b""`` once the session has ended.

        ``timeout`` (seconds) raises ``TimeoutError`` if nothing arrived in time.
        """
        link = self.link
        deadline = None if timeout is None else time.monotonic() + timeout
        with link._lock:
            while not self.rbuf:
                if self.ended or link._closed:
                    return b""
                wait = 0.25
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("no data from the serial peer within %.1f s" % timeout)
                    wait = min(wait, remaining)
                link._rd_cond.wait(wait)
            chunks = []
            got = 0
            rbuf = self.rbuf
            while rbuf and got < n:
                c = rbuf[0]
                need = n - got
                if len(c) <= need:
                    chunks.append(c)
                    rbuf.popleft()
                    got += len(c)
                else:
                    chunks.append(c[:need])
                    rbuf[0] = c[need:]
                    got += need
            self.rbuf_bytes -= got
            if not self.ended:
                wnd = self._rwnd()
                if wnd - self.last_adv_wnd >= max(1, link.window // 2):
                    self.ack_needed = True  # window update after the application caught up
                    link._tx_cond.notify()
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def write(self, data):
        """Queue all of ``data``; blocks while the window is full.  StreamClosed once ended."""
        link = self.link
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        total = len(mv)
        pos = 0
        size = link.payload_size
        with link._lock:
            while pos < total:
                if self.ended or link._closed:
                    raise StreamClosed(self._closed_message())
                if self.tx_next < self.snd_nxt:
                    last = self.frames.get(self.snd_nxt - 1)
                    if last is not None and last.tx_count == 0 and len(last.payload) < size:
                        take = min(size - len(last.payload), total - pos)
                        last.payload += mv[pos:pos + take]
                        pos += take
                        continue
                limit = self.snd_una + min(self.window, self.peer_wnd)
                if self.snd_nxt >= limit:
                    self.writers_waiting += 1
                    try:
                        link._wr_cond.wait(0.25)
                    finally:
                        self.writers_waiting -= 1
                    continue
                while pos < total and self.snd_nxt < limit:
                    take = min(size, total - pos)
                    self.frames[self.snd_nxt] = _Frame(self.snd_nxt, bytearray(mv[pos:pos + take]))
                    self.snd_nxt += 1
                    pos += take
                link._tx_cond.notify()

    def flush(self, timeout=5.0):
        """Wait until everything written has been acknowledged; False on timeout or end."""
        link = self.link
        deadline = time.monotonic() + timeout
        with link._lock:
            while self.snd_una < self.snd_nxt:
                remaining = deadline - time.monotonic()
                if self.ended or link._closed or remaining <= 0:
                    return False
                link._wr_cond.wait(min(remaining, 0.25))
            return True

    def close(self, linger=None):
        """End the session: wait up to ``linger`` s for outstanding data, then send FIN."""
        link = self.link
        if linger is None:
            linger = link.linger
        if linger > 0:
            self.flush(linger)
        with link._lock:
            self._closed_here = True
            self.rbuf.clear()
            self.rbuf_bytes = 0
            if self.ended:
                return
            target = link._queue_ctrl(_FIN.pack(T_FIN, self.sid))
            self._end("closed by this side")
            deadline = time.monotonic() + 0.5
            while link._ctrl_sent < target and link._tx_alive():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                link._st_cond.wait(remaining)

    @property
    def closed(self):
        return self.ended

    # ---- internals (caller holds the link lock) -----------------------------------------------

    def _closed_message(self):
        return "serial session closed: %s" % (self.end_reason or "link closed")

    def _end(self, reason):
        if self.ended:
            return
        self.ended = True
        self.end_reason = reason
        self.frames.clear()
        self.rtx.clear()
        self.ooo.clear()
        link = self.link
        link._recent_sids.append(self.sid)
        link._notify_all()

    def _rwnd(self):
        free = self.rbuf_limit - self.rbuf_bytes
        if free <= 0:
            return 0
        return min(free // self.peer_payload, self.link.window)

    def _has_tx_work(self):
        return (bool(self.rtx) or self.tx_next < self.snd_nxt or self.ack_needed or self.probe_needed
                or self.probe_reply is not None)

    def _rtt_sample(self, r):
        if r < 0:
            r = 0.0
        if self.srtt is None:
            self.srtt = r
            self.rttvar = r / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - r)
            self.srtt = 0.875 * self.srtt + 0.125 * r
        link = self.link
        self.rto = min(max(link.min_rto, self.srtt + max(0.01, 4 * self.rttvar)), link.max_rto)

    def _on_ack(self, ack_wire, wnd, sack, now, flags=0, probe=0):
        link = self.link
        ack = _unwrap(ack_wire, self.snd_una)
        if ack < self.snd_una:
            return
        if ack > self.tx_next:
            link.stats["bad_frames"] += 1  # acknowledges something never sent
            return
        newest = None  # the most recently sent frame that this ACK newly reports delivered
        frames = self.frames
        if ack > self.snd_una:
            for seq in range(self.snd_una, ack):
                f = frames.pop(seq)
                if not f.sacked and (newest is None or f.tx_order > newest.tx_order):
                    newest = f
            self.snd_una = ack
            self.backoff = 1
            self.last_progress = now
            self.tlp_done = False
            link._wr_cond.notify_all()
        if sack:
            bits = int.from_bytes(sack, "little")
            base = ack + 1
            while bits:
                low = bits & -bits
                bits ^= low
                f = frames.get(base + low.bit_length() - 1)
                if f is not None and not f.sacked and f.tx_count:
                    f.sacked = True
                    self.last_progress = now
                    self.tlp_done = False
                    if newest is None or f.tx_order > newest.tx_order:
                        newest = f
        if wnd > self.peer_wnd:
            link._wr_cond.notify_all()
        self.peer_wnd = wnd
        delivered = -1
        if newest is not None:
            delivered = newest.tx_order
            if newest.tx_count == 1:  # Karn: never time a retransmitted frame
                self._rtt_sample(now - newest.sent_time)
        if flags & F_REPLY and probe == self.probe_id:
            if self.probe_time is not None:  # an unambiguous sample even when every frame is lost
                self._rtt_sample(now - self.probe_time)
                self.probe_time = None
            if self.probe_order > delivered:
                delivered = self.probe_order  # the peer has seen everything sent before our probe
                self.last_progress = now
                self.tlp_done = False
        if delivered > self.rack_order:
            self.rack_order = delivered
            lost = 0
            for f in frames.values():
                if f.tx_count and f.tx_order < delivered and not f.sacked and not f.queued:
                    f.queued = True
                    self.rtx.append(f.seq)
                    lost += 1
            if lost:
                link.stats["fast_retransmits"] += lost

    def _on_data(self, seq_wire, payload, now):
        link = self.link
        st = link.stats
        if not payload or len(payload) > self.peer_payload:
            st["bad_frames"] += 1
            return
        seq = _unwrap(seq_wire, self.rcv_nxt)
        if seq < self.rcv_nxt or seq in self.ooo:
            st["duplicates"] += 1
            self.ack_needed = True  # our ACK was lost or late: repeat it now
            return
        if seq >= self.rcv_nxt + link.window:
            st["bad_frames"] += 1
            return
        if seq == self.rcv_nxt:
            self.rbuf.append(payload)
            self.rbuf_bytes += len(payload)
            st["payload_bytes_in"] += len(payload)
            self.rcv_nxt = seq + 1
            if self.ooo:
                ooo = self.ooo
                while True:
                    p = ooo.pop(self.rcv_nxt, None)
                    if p is None:
                        break
                    self.rbuf.append(p)
                    self.rbuf_bytes += len(p)
                    st["payload_bytes_in"] += len(p)
                    self.rcv_nxt += 1
                self.ack_needed = True  # a gap was filled (or is still there): tell the sender now
            else:
                self.ack_pending += 1
                if self.ack_pending >= self.ack_every:
                    self.ack_needed = True
                elif self.ack_due is None:
                    self.ack_due = now + link.ack_delay
            link._rd_cond.notify_all()
        else:
            first_gap = not self.ooo
            self.ooo[seq] = payload
            self.ooo_since_ack += 1
            if first_gap or self.ooo_since_ack >= self.ack_every:
                self.ack_needed = True  # NAK: the SACK bitmap shows the hole
            elif self.ack_due is None:
                self.ack_due = now + link.ack_delay

    def _sack_bitmap(self):
        if not self.ooo:
            return b""
        base = self.rcv_nxt + 1
        bits = 0
        for seq in self.ooo:
            bits |= 1 << (seq - base)
        return bits.to_bytes((bits.bit_length() + 7) // 8, "little")

    def _timers(self, now):
        """Run the session's timers; returns the next time they need to run."""
        link = self.link
        nxt = now + 0.05
        if self.ack_due is not None:
            if now >= self.ack_due:
                self.ack_due = None
                self.ack_needed = True
            elif self.ack_due < nxt:
                nxt = self.ack_due
        outstanding = self.tx_next > self.snd_una
        if outstanding:
            oldest = None
            for f in self.frames.values():
                if f.tx_count and not f.sacked:
                    oldest = f
                    break
            if oldest is not None and not oldest.queued:
                due = max(oldest.sent_time, self.last_progress) + min(self.rto * self.backoff, link.max_rto)
                if not self.tlp_done and self.srtt is not None:
                    # tail-loss probe: the line went quiet for longer than an ACK takes, so ask
                    # (a lost last frame then costs a round trip or two, not a timeout)
                    pto = max(0.01, 2 * self.srtt + link.ack_delay + 0.002)
                    tlp_due = max(self.last_send, self.last_progress) + pto
                    if tlp_due < due:
                        if now >= tlp_due:
                            self.tlp_done = True
                            self.probe_needed = True
                            link.stats["tail_probes"] += 1
                        elif tlp_due < nxt:
                            nxt = tlp_due
                if now >= due:
                    oldest.queued = True
                    self.rtx.appendleft(oldest.seq)
                    # plus a small probe: it gets through a noisy line far more often than a
                    # full frame, and the answer (with its SACK bitmap) proves the peer is alive
                    self.probe_needed = True
                    self.backoff = min(self.backoff * 2, 64)
                    self.last_progress = now
                    link.stats["timeouts"] += 1
                elif due < nxt:
                    nxt = due
        elif self.writers_waiting and self.snd_nxt >= self.snd_una + min(self.window, self.peer_wnd):
            # the receiver's buffer is full: probe it now and then (its window update may be lost)
            due = self.last_probe + link.probe_interval
            if now >= due:
                self.probe_needed = True
                self.last_probe = now
            elif due < nxt:
                nxt = due
        if (outstanding or self.writers_waiting) and now - self.last_heard > link.dead_after:
            link.stats["dead_peer"] += 1
            self._end("no answer from the serial peer for %.1f s (cable pulled or agent gone?)"
                      % (now - self.last_heard))
        return nxt


class ArqLink(object):
    """Reliable ordered byte stream over a raw port (see the module docstring).

    ``port``          raw port: ``read_some(n, timeout)``, ``write(data)``, ``close()``
    ``payload_size``  data bytes per frame (16..16384, default 1024); lower it on very slow lines
    ``window``        frames in flight (1..1024, default 32); the smaller of both ends' applies
    ``dead_after``    end the session when data is outstanding and nothing at all has been heard
                      from the peer for this long (seconds, default 6)
    ``ack_every``     ACK at least every this many frames (default ``min(8, window // 4)``)
    ``ack_delay``     otherwise ACK this long after the first un-ACKed frame (default 5 ms)
    ``min_rto``, ``max_rto``, ``initial_rto``   retransmission timer bounds and start value (s)
    ``linger``        how long ``close()`` waits for outstanding data to be acknowledged
    ``close_port``    ``close()`` also closes the port (default True)
    ``name``          for thread names and error messages (e.g. the device path)

    A receiver and a transmitter thread start at once.  The client calls :meth:`connect`, the
    server :meth:`accept` (in a loop); both return the :class:`ArqSession`, and the link's own
    ``read``/``write``/``flush`` go to the latest session.  ``stats`` is a dict of counters (see
    ``STAT_KEYS``), cumulative over the link's sessions.  ``close()`` ends the session (FIN), stops
    the threads and closes the port; ``abort()`` does so without a word to the peer.
    """

    def __init__(self, port, payload_size=1024, window=32, dead_after=6.0, ack_every=None,
                 ack_delay=0.005, min_rto=0.2, max_rto=None, initial_rto=1.0, linger=1.0,
                 close_port=True, name="serial"):
        self.port = port
        self.name = name
        self.payload_size = max(MIN_PAYLOAD, min(int(payload_size), MAX_PAYLOAD))
        self.window = max(1, min(int(window), MAX_WINDOW))
        self.dead_after = float(dead_after)
        self.ack_every = int(ack_every) if ack_every else max(1, min(8, self.window // 4))
        self.ack_delay = float(ack_delay)
        self.min_rto = float(min_rto)
        self.max_rto = float(max_rto) if max_rto else max(self.min_rto, min(3.0, self.dead_after / 2))
        self.initial_rto = min(float(initial_rto), self.max_rto)
        self.probe_interval = max(0.1, min(1.0, self.dead_after / 4))
        self.linger = float(linger)
        self.close_port = close_port
        self.stats = dict((k, 0) for k in STAT_KEYS)

        self._lock = threading.Lock()
        self._tx_cond = threading.Condition(self._lock)  # transmitter: work to do
        self._rd_cond = threading.Condition(self._lock)  # readers: data or end
        self._wr_cond = threading.Condition(self._lock)  # writers: window space or end
        self._st_cond = threading.Condition(self._lock)  # session state, control frames sent
        self._batch_bytes = max(4096, 4 * self.payload_size)

        self._session = None
        self._role = None
        self._pending_reset = None  # (sid, window, payload) of a RESET not yet accepted
        self._connect_sid = None
        self._recent_sids = collections.deque(maxlen=16)
        self._ctrl = collections.deque()
        self._ctrl_queued = 0
        self._ctrl_sent = 0
        self._last_stale_fin = 0.0
        self._closed = False
        self._stopping = False
        self._port_error = None
        self._rxbuf = b""
        self._rx_skip = False

        self._rx_thread = threading.Thread(target=self._rx_loop, name="arq-rx-%s" % name)
        self._tx_thread = threading.Thread(target=self._tx_loop, name="arq-tx-%s" % name)
        self._rx_thread.daemon = True
        self._tx_thread.daemon = True
        self._rx_thread.start()
        self._tx_thread.start()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return "ArqLink(%s, %r)" % (self.name, self._session)

    # ---- sessions ------------------------------------------------------------------------------

    @property
    def session(self):
        return self._session

    def connect(self, timeout=5.0):
        """Client: start a new session (RESET until RESET_ACK); returns the ArqSession."""
        old = self._session
        if old is not None and not old.ended:
            old.close(linger=0)
        deadline = time.monotonic() + timeout
        interval = 0.2
        sent = 0
        with self._lock:
            self._check_usable()
            self._role = "client"
            sid = _new_session_id(self._recent_sids)
            self._connect_sid = sid
            try:
                while True:
                    s = self._session
                    if s is not None and s.sid == sid:
                        return s
                    now = time.monotonic()
                    if now >= deadline:
                        raise TimeoutError(
                            "no answer from the serial agent on %s: sent %d session requests in "
                            "%.1f s (is the agent serving on the device's port, and is the baud "
                            "rate right?)" % (self.name, sent, timeout))
                    self._queue_ctrl(_RESET.pack(T_RESET, sid, PROTO_VERSION, self.window,
                                                 self.payload_size))
                    sent += 1
                    retry = min(now + interval, deadline)
                    interval = min(interval * 1.5, 1.0)
                    while self._session is None or self._session.sid != sid:
                        self._check_usable()
                        remaining = retry - time.monotonic()
                        if remaining <= 0:
                            break
                        self._st_cond.wait(remaining)
            finally:
                self._connect_sid = None

    def accept(self, timeout=None):
        """Server: wait for a client's RESET and start a fresh session; returns the ArqSession.

        A RESET that arrived while the previous session was running is picked up at once.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._role = "server"
            while self._pending_reset is None:
                self._check_usable()
                wait = 0.5
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError("no serial client connected within %.1f s" % timeout)
                    wait = min(wait, remaining)
                self._st_cond.wait(wait)
            sid, window, payload = self._pending_reset
            self._pending_reset = None
            old = self._session
            if old is not None and not old.ended:
                old._end("replaced by a new session")
            s = ArqSession(self, sid, window, payload, time.monotonic())
            self._session = s
            self.stats["sessions"] += 1
            self._queue_ctrl(_RESET.pack(T_RESET_ACK, sid, PROTO_VERSION, self.window, self.payload_size))
            return s

    # ---- stream interface (delegates to the current session) -----------------------------------

    def read(self, n=65536, timeout=None):
        s = self._session
        if s is None:
            return b""
        return s.read(n, timeout)

    def write(self, data):
        s = self._session
        if s is None:
            raise StreamClosed("no serial session (call connect() or accept() first)")
        s.write(data)

    def flush(self, timeout=5.0):
        s = self._session
        return s is not None and s.flush(timeout)

    def close(self, linger=None):
        """End the session (FIN after up to ``linger`` s of flushing), stop threads, close the port."""
        self._shutdown(linger, send_fin=True)

    def abort(self):
        """Stop at once without telling the peer (as if the cable had been pulled)."""
        self._shutdown(0, send_fin=False)

    @property
    def closed(self):
        return self._closed

    @property
    def port_error(self):
        return self._port_error

    def _shutdown(self, linger, send_fin):
        with self._lock:
            if self._closed:
                return
            s = self._session
        if s is not None and send_fin:
            s.close(linger)
        with self._lock:
            if s is not None:
                s._end("link closed")
            self._closed = True
            self._stopping = True
            self._notify_all()
        me = threading.current_thread()
        for t in (self._rx_thread, self._tx_thread):
            if t is not me:
                t.join(1.0)
        if self.close_port:
            try:
                self.port.close()
            except Exception:
                pass

    # ---- internals -----------------------------------------------------------------------------

    def _notify_all(self):
        self._tx_cond.notify_all()
        self._rd_cond.notify_all()
        self._wr_cond.notify_all()
        self._st_cond.notify_all()

    def _check_usable(self):
        if self._port_error is not None:
            raise OSError("serial port %s failed: %s" % (self.name, self._port_error))
        if self._closed:
            raise StreamClosed("serial link %s is closed" % self.name)

    def _tx_alive(self):
        return self._tx_thread.is_alive() and not self._stopping and self._port_error is None

    def _queue_ctrl(self, header):
        self._ctrl.append(header)
        self._ctrl_queued += 1
        self._tx_cond.notify()
        return self._ctrl_queued

    def _internal_error(self, exc):
        """Lock held.  End the session rather than carry on with inconsistent state."""
        self.stats["internal_errors"] += 1
        s = self._session
        if s is not None:
            s._end("internal error in the serial link: %r" % (exc,))
        self._notify_all()

    def _port_failed(self, exc):
        with self._lock:
            if self._stopping or self._port_error is not None:
                return
            self._port_error = exc
            s = self._session
            if s is not None:
                s._end("serial port failed: %s" % (exc,))
            self._notify_all()

    # receiver thread ----------------------------------------------------------------------------

    def _rx_loop(self):
        port = self.port
        wait = 0.05
        stats = self.stats
        while not self._stopping:
            try:
                data = port.read_some(65536, wait)
            except Exception as exc:  # OSError (unplugged), or a closed port object
                self._port_failed(exc)
                return
            now = time.monotonic()
            nxt = now + 0.05
            try:
                frames = self._parse(data) if data else ()  # outside the lock: it is the costly part
            except Exception as exc:  # pragma: no cover - _parse counts, it does not raise
                frames = ()
                with self._lock:
                    self._internal_error(exc)
            with self._lock:
                if self._stopping:
                    return
                try:
                    stats["wire_bytes_in"] += len(data)
                    for typ, body in frames:
                        self._dispatch(typ, body, now)
                    s = self._session
                    if s is not None and not s.ended:
                        nxt = s._timers(time.monotonic())
                        if s._has_tx_work():
                            self._tx_cond.notify()
                except Exception as exc:  # a bug must not kill the link silently
                    self._internal_error(exc)
            wait = min(0.05, max(0.001, nxt - time.monotonic()))

    def _parse(self, data):
        """Split received bytes into CRC-checked frames; everything else is counted and dropped."""
        stats = self.stats
        if self._rx_skip:  # inside an over-long run: skip to the next delimiter
            z = data.find(0)
            if z < 0:
                stats["garbage_bytes"] += len(data)
                return ()
            stats["garbage_bytes"] += z
            data = data[z + 1:]
            self._rx_skip = False
        if self._rxbuf:
            data = self._rxbuf + data
        parts = data.split(b"\x00")
        tail = parts.pop()
        if len(tail) > _MAX_ENCODED:
            stats["garbage_bytes"] += len(tail)
            stats["bad_frames"] += 1
            tail = b""
            self._rx_skip = True
        self._rxbuf = tail
        out = []
        for p in parts:
            if not p:
                continue
            n = len(p)
            if n <= _MIN_BODY or n > _MAX_ENCODED:
                stats["bad_frames"] += 1
                stats["garbage_bytes"] += n
                continue
            try:
                body = cobs_decode(p)
            except ValueError:
                stats["bad_frames"] += 1
                stats["garbage_bytes"] += n
                continue
            if len(body) < _MIN_BODY:
                stats["bad_frames"] += 1
                stats["garbage_bytes"] += n
                continue
            if zlib.crc32(memoryview(body)[:-4]) != _CRC.unpack_from(body, len(body) - 4)[0]:
                stats["crc_errors"] += 1
                stats["garbage_bytes"] += n
                continue
            stats["frames_in"] += 1
            out.append((body[0], body))
        return out

    def _live(self, sid, typ, now):
        s = self._session
        if s is not None and not s.ended and s.sid == sid:
            return s
        self.stats["stale_session_frames"] += 1
        if self._role is not None and typ != T_FIN and now - self._last_stale_fin > 0.25:
            # tell a peer that still talks to a session we no longer have
            self._last_stale_fin = now
            self._queue_ctrl(_FIN.pack(T_FIN, sid))
        return None

    def _dispatch(self, typ, body, now):
        stats = self.stats
        blen = len(body)
        if typ == T_DATA:
            if blen <= _DATA.size + 4:
                stats["bad_frames"] += 1
                return
            _, sid, seq, ack, wnd = _DATA.unpack_from(body)
            s = self._live(sid, typ, now)
            if s is None:
                return
            s.last_heard = now
            s._on_ack(ack, wnd, None, now)
            s._on_data(seq, body[_DATA.size:-4], now)
        elif typ == T_ACK:
            if blen < _ACK.size + 4 or blen > _ACK.size + 4 + _MAX_SACK:
                stats["bad_frames"] += 1
                return
            _, sid, ack, wnd, flags, probe = _ACK.unpack_from(body)
            s = self._live(sid, typ, now)
            if s is None:
                return
            stats["acks_in"] += 1
            s.last_heard = now
            s._on_ack(ack, wnd, body[_ACK.size:-4], now, flags, probe)
            if flags & F_PROBE:
                s.ack_needed = True
                s.probe_reply = probe
        elif typ == T_FIN:
            if blen != _FIN.size + 4:
                stats["bad_frames"] += 1
                return
            _, sid = _FIN.unpack_from(body)
            s = self._live(sid, typ, now)
            if s is not None:
                s._end("the serial peer closed the session")
        elif typ == T_RESET or typ == T_RESET_ACK:
            if blen != _RESET.size + 4:
                stats["bad_frames"] += 1
                return
            _, sid, version, window, payload = _RESET.unpack_from(body)
            if (version != PROTO_VERSION or not 1 <= window <= MAX_WINDOW
                    or not MIN_PAYLOAD <= payload <= MAX_PAYLOAD):
                stats["bad_frames"] += 1
                return
            if typ == T_RESET:
                self._on_reset(sid, window, payload, now)
            else:
                self._on_reset_ack(sid, window, payload, now)
        else:
            stats["bad_frames"] += 1

    def _on_reset(self, sid, window, payload, now):
        if self._role == "client":
            self.stats["bad_frames"] += 1  # a client does not take sessions
            return
        s = self._session
        if s is not None and s.sid == sid and not s.ended:
            # the client did not hear our RESET_ACK yet
            s.last_heard = now
            self._queue_ctrl(_RESET.pack(T_RESET_ACK, sid, PROTO_VERSION, self.window, self.payload_size))
            return
        if self._pending_reset is not None and self._pending_reset[0] == sid:
            return  # the client repeats its RESET until accept() answers
        if sid in self._recent_sids:
            self.stats["stale_session_frames"] += 1  # a late copy of a finished session's RESET
            return
        if s is not None and not s.ended:
            s._end("the serial client started a new session")
        self._pending_reset = (sid, window, payload)
        self._st_cond.notify_all()

    def _on_reset_ack(self, sid, window, payload, now):
        s = self._session
        if self._connect_sid == sid and (s is None or s.sid != sid):
            if s is not None and not s.ended:
                s._end("replaced by a new session")
            self._session = ArqSession(self, sid, window, payload, now)
            self.stats["sessions"] += 1
            self._st_cond.notify_all()
        elif s is not None and s.sid == sid:
            self.stats["duplicates"] += 1
        else:
            self.stats["stale_session_frames"] += 1

    # transmitter thread -------------------------------------------------------------------------

    def _collect(self, now):
        """Pick the next batch of frames to send (lock held).  Returns (headers+payloads, sent)."""
        items = []
        sent = []
        nctrl = 0
        while self._ctrl:
            items.append((self._ctrl.popleft(), b""))
            nctrl += 1
        s = self._session
        if s is None or s.ended or not s._has_tx_work():
            return items, sent, nctrl
        stats = self.stats
        budget = self._batch_bytes
        data = []
        retransmitted = False
        while s.rtx and budget > 0:
            f = s.frames.get(s.rtx.popleft())
            if f is None:
                continue
            f.queued = False
            if f.sacked:
                continue
            s.order += 1
            f.tx_order = s.order
            f.tx_count += 1
            f.sent_time = now
            s.last_send = now
            stats["retransmits"] += 1
            stats["retransmit_bytes"] += len(f.payload)
            data.append(f)
            retransmitted = True
            budget -= len(f.payload) + 32
        fresh = False
        while s.tx_next < s.snd_nxt and budget > 0:
            f = s.frames[s.tx_next]
            s.tx_next += 1
            f.payload = bytes(f.payload)
            s.order += 1
            f.tx_order = s.order
            f.tx_count = 1
            f.sent_time = now
            s.last_send = now
            stats["payload_bytes_out"] += len(f.payload)
            data.append(f)
            fresh = True
            budget -= len(f.payload) + 32
        ack = s.rcv_nxt & _M32
        wnd = s._rwnd()
        # a probe after retransmissions with nothing new behind them: its answer tells us at
        # once whether they arrived (RACK needs a later delivery to see a loss)
        probe = s.probe_needed or (retransmitted and not fresh and not s.rtx)
        ack_item = None
        if probe or s.probe_reply is not None or (s.ack_needed and (s.ooo or not data)):
            sack = s._sack_bitmap()
            flags = 0
            pid = 0
            if s.probe_reply is not None:
                flags = F_REPLY
                pid = s.probe_reply
                s.probe_reply = None
                if probe:  # one probe number per frame: answer theirs in a frame of its own
                    items.append((_ACK.pack(T_ACK, s.sid, ack, wnd, flags, pid) + sack, b""))
                    stats["acks_out"] += 1
                    flags = 0
            if probe:
                flags |= F_PROBE
                s.probe_id = pid = (s.probe_id + 1) & 0xFF
                s.order += 1
                s.probe_order = s.order
                s.probe_time = now
            ack_item = (_ACK.pack(T_ACK, s.sid, ack, wnd, flags, pid) + sack, b"")
            stats["acks_out"] += 1
        if data or s.ack_needed or probe or ack_item is not None:
            s.ack_needed = False
            s.probe_needed = False
            s.ack_pending = 0
            s.ooo_since_ack = 0
            s.ack_due = None
            s.last_adv_wnd = wnd
        if ack_item is not None and not probe:
            items.append(ack_item)  # plain ACKs go first, probes after the data they follow
        sid = s.sid
        pack = _DATA.pack
        for f in data:
            items.append((pack(T_DATA, sid, f.seq & _M32, ack, wnd), f.payload))
            sent.append((f, f.tx_order))
        if ack_item is not None and probe:
            items.append(ack_item)
        return items, sent, nctrl

    def _tx_loop(self):
        port = self.port
        stats = self.stats
        crc32 = zlib.crc32
        crc_pack = _CRC.pack
        while True:
            with self._lock:
                while True:
                    if self._stopping or self._port_error is not None:
                        return
                    try:
                        items, sent, nctrl = self._collect(time.monotonic())
                    except Exception as exc:  # a bug must not kill the link silently
                        self._internal_error(exc)
                        continue
                    if items:
                        break
                    self._tx_cond.wait(0.5)
            out = bytearray(b"\x00")
            for header, payload in items:
                crc = crc32(payload, crc32(header)) if payload else crc32(header)
                out += cobs_encode(header + payload + crc_pack(crc))
                out.append(0)
            try:
                port.write(out)
            except Exception as exc:
                self._port_failed(exc)
                return
            t = time.monotonic()
            with self._lock:
                stats["wire_bytes_out"] += len(out)
                stats["frames_out"] += len(items)
                for f, order in sent:
                    if f.tx_order == order:
                        f.sent_time = t
                s = self._session
                if sent and s is not None:
                    s.last_send = t
                if nctrl:
                    self._ctrl_sent += nctrl
                    self._st_cond.notify_all()
