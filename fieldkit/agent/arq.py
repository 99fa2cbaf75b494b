"""A reliable, ordered byte stream over a lossy serial line (stdlib only, Python 3.6 syntax).

This runs on the device (the agent serves on its console port) and on the laptop. It turns a *raw
port* (``read_some(n, timeout)``, ``write(data)``, ``close()``; see :mod:`.streams`) into a *stream*
(``read(n)``, ``write(data)``, ``close()``) that the length-prefixed message framer of
:mod:`.protocol` runs on unchanged.

Wire format (:mod:`.arqwire`)
-----------------------------
Every frame is ``COBS(body) 0x00``; a batch of frames written together starts with one extra 0x00
so that line noise before it is cut off.  ``body = header | payload | CRC-32`` (``zlib.crc32``
over header and payload, big endian).  Headers (big endian)::

    RESET      u8 type=1 | u32 session | u8 version | u16 window | u16 payload_size
    RESET_ACK  u8 type=2 | u32 session | u8 version | u16 window | u16 payload_size
    DATA       u8 type=3 | u32 session | u32 seq | u32 ack | u16 wnd | payload (1..payload_size)
    ACK        u8 type=4 | u32 session | u32 ack | u16 wnd | u8 flags | u8 probe | SACK (0..128 bytes)
    FIN        u8 type=5 | u32 session
    CAPS       u8 type=6 | u32 session | u8 features | u8 flags | u16 rx_max (| later fields)

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
seconds after the first un-ACKed frame (on a slow line, four frame times at the rate frames
arrive, at most 0.2 s, so that one ACK covers a few frames), and data frames going the other way
carry the ACK for free, except ahead of a large frame: an ACK inside it would count only once the
whole frame is through, so it goes in a small frame of its own first.  Because a serial line never
reorders, the sender treats every un-ACKed frame that was sent before a frame (or a probe) the
peer has received as lost and retransmits just that frame (RACK-style fast retransmit).  A batch
of retransmissions with no new data behind it ends with a small probe, so a lost retransmission
is noticed one round trip later rather than after a timeout.  A retransmission timer on the
oldest missing frame covers lost tail frames and lost ACKs; it is adaptive (RFC 6298 estimator on
the measured round trip, restarted whenever the peer reports progress, doubled on every
timeout), so a slow line does not cause retransmission storms.  Before it fires, a line that
has gone quiet for two round trips gets one tail-loss probe.

Frame size (:mod:`.arqsize`, negotiated with CAPS)
--------------------------------------------------
RESET's ``payload_size`` is the largest payload that side sends (1 KiB by default), and without
more that is what each side sends.  A side that can adapt its frames sends CAPS (feature bit 1:
"I accept DATA payloads up to ``rx_max``", 8 KiB) with every RESET and RESET_ACK.  Once a side has
the peer's CAPS it sizes its *own* new frames between 64 bytes and the peer's ``rx_max`` (clamped
to 64 B..8 KiB, whatever the peer claims) from the losses it sees on its direction of the line:
starting at 256 bytes, AIMD, so frames grow on a clean line (99 % of the wire is payload at 8 KiB)
and shrink on a noisy one (where a 1 KiB frame rarely gets through).  Each direction adapts on its
own.  A peer that
predates CAPS counts them as bad frames and never sends one, so both sides keep to RESET's sizes:
an older agent keeps working.  Flag 1 ("I have yours") in a CAPS answers it; a side that has the
peer's CAPS repeats its own (a few times) until the peer confirms.  Frames are cut from the
written bytes when first sent, so a new size applies at once; a retransmission keeps its size.

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
import threading
import time

from .arqsession import ArqSession
from .arqwire import (  # noqa: F401  (the protocol's names, for users of this module)
    ACK, ADAPT_MAX_PAYLOAD, ADAPT_MIN_PAYLOAD, ADAPT_START_PAYLOAD, CAP_ADAPTIVE, DATA, F_PROBE, FIN, MAX_PAYLOAD,
    MAX_SACK, MAX_WINDOW, MIN_PAYLOAD, PROTO_VERSION, RESET, STAT_KEYS, T_ACK, T_CAPS, T_DATA, T_FIN, T_RESET,
    T_RESET_ACK, FrameParser, encode_frames, new_session_id, pack_caps, unpack_caps,
)
from .protocol import StreamClosed


class ArqLink(object):
    """Reliable ordered byte stream over a raw port (see the module docstring).

    ``port``          raw port: ``read_some(n, timeout)``, ``write(data)``, ``close()``
    ``payload_size``  data bytes per frame (16..16384, default 1024) announced in RESET: what this
                      side sends to a peer without adaptive frame sizes; where both adapt, the size
                      frames start at
    ``adaptive``      announce and use adaptive frame sizes (CAPS); False behaves as a side that
                      predates them (tests pair old and new ends this way)
    ``max_payload``   the largest adaptive payload accepted and sent (default 8 KiB, at most 16 KiB)
    ``min_payload``   the smallest adaptive payload sent (default 64)
    ``start_payload`` where adaptive sizes start (default 256: a noisy line lets it through, a
                      clean one doubles it with every frame delivered)
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
    server :meth:`accept` (in a loop); both return the :class:`~.arqsession.ArqSession`, and the
    link's own ``read``/``write``/``flush`` go to the latest session.  ``stats`` is a dict of
    counters (see ``STAT_KEYS``), cumulative over the link's sessions.  ``close()`` ends the
    session (FIN), stops the threads and closes the port; ``abort()`` does so without a word to
    the peer.
    """

    def __init__(self, port, payload_size=1024, window=32, dead_after=6.0, ack_every=None,
                 ack_delay=0.005, min_rto=0.2, max_rto=None, initial_rto=1.0, linger=1.0,
                 close_port=True, name="serial", adaptive=True, max_payload=ADAPT_MAX_PAYLOAD,
                 min_payload=ADAPT_MIN_PAYLOAD, start_payload=ADAPT_START_PAYLOAD):
        self.port = port
        self.name = name
        self.payload_size = max(MIN_PAYLOAD, min(int(payload_size), MAX_PAYLOAD))
        self.adaptive = bool(adaptive)
        self.max_payload = max(ADAPT_MIN_PAYLOAD, min(int(max_payload), MAX_PAYLOAD))
        self.min_payload = max(MIN_PAYLOAD, min(int(min_payload), self.max_payload))
        self.start_payload = max(self.min_payload, min(int(start_payload), self.max_payload))
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
        self._pending_caps = None  # (sid, features, flags, rx_max) of a CAPS before its session
        self._connect_sid = None
        self._recent_sids = collections.deque(maxlen=16)
        self._ctrl = collections.deque()
        self._ctrl_queued = 0
        self._ctrl_sent = 0
        self._last_stale_fin = 0.0
        self._closed = False
        self._stopping = False
        self._port_error = None
        self._parser = FrameParser(self.stats)

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

    @property
    def frame_size(self):
        """Payload size of the next new frame this side sends (the current session's), or None."""
        s = self._session
        return None if s is None else s.tx_payload

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
            sid = new_session_id(self._recent_sids)
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
                    self._queue_ctrl(RESET.pack(T_RESET, sid, PROTO_VERSION, self.window,
                                                self.payload_size))
                    if self.adaptive:
                        self._queue_ctrl(pack_caps(sid, CAP_ADAPTIVE, 0, self.max_payload))
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
            s = self._new_session(sid, window, payload, time.monotonic())
            self._queue_ctrl(RESET.pack(T_RESET_ACK, sid, PROTO_VERSION, self.window, self.payload_size))
            if self.adaptive:
                s._send_caps()
            return s

    def _new_session(self, sid, window, payload, now):
        """Lock held: the session for ``sid``, with any CAPS the peer sent ahead of it."""
        s = ArqSession(self, sid, window, payload, now)
        self._session = s
        self.stats["sessions"] += 1
        pending, self._pending_caps = self._pending_caps, None
        if pending is not None and pending[0] == sid:
            _, features, flags, rx_max = pending
            # a server sends its CAPS with the RESET_ACK anyway: no separate answer
            s._on_caps(features, flags, rx_max, now, reply=self._role == "client")
        self._st_cond.notify_all()
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
                frames = self._parser.feed(data) if data else ()  # outside the lock: the costly part
            except Exception as exc:  # pragma: no cover - feed counts, it does not raise
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

    def _live(self, sid, typ, now):
        s = self._session
        if s is not None and not s.ended and s.sid == sid:
            return s
        self.stats["stale_session_frames"] += 1
        if self._role is not None and typ != T_FIN and now - self._last_stale_fin > 0.25:
            # tell a peer that still talks to a session we no longer have
            self._last_stale_fin = now
            self._queue_ctrl(FIN.pack(T_FIN, sid))
        return None

    def _dispatch(self, typ, body, now):
        stats = self.stats
        blen = len(body)
        if typ == T_DATA:
            if blen <= DATA.size + 4:
                stats["bad_frames"] += 1
                return
            _, sid, seq, ack, wnd = DATA.unpack_from(body)
            s = self._live(sid, typ, now)
            if s is None:
                return
            s.last_heard = now
            s._on_ack(ack, wnd, None, now)
            s._on_data(seq, body[DATA.size:-4], now)
        elif typ == T_ACK:
            if blen < ACK.size + 4 or blen > ACK.size + 4 + MAX_SACK:
                stats["bad_frames"] += 1
                return
            _, sid, ack, wnd, flags, probe = ACK.unpack_from(body)
            s = self._live(sid, typ, now)
            if s is None:
                return
            stats["acks_in"] += 1
            s.last_heard = now
            s._on_ack(ack, wnd, body[ACK.size:-4], now, flags, probe)
            if flags & F_PROBE:
                s.ack_needed = True
                s.probe_reply = probe
        elif typ == T_FIN:
            if blen != FIN.size + 4:
                stats["bad_frames"] += 1
                return
            _, sid = FIN.unpack_from(body)
            s = self._live(sid, typ, now)
            if s is not None:
                s._end("the serial peer closed the session")
        elif typ == T_RESET or typ == T_RESET_ACK:
            if blen != RESET.size + 4:
                stats["bad_frames"] += 1
                return
            _, sid, version, window, payload = RESET.unpack_from(body)
            if (version != PROTO_VERSION or not 1 <= window <= MAX_WINDOW
                    or not MIN_PAYLOAD <= payload <= MAX_PAYLOAD):
                stats["bad_frames"] += 1
                return
            if typ == T_RESET:
                self._on_reset(sid, window, payload, now)
            else:
                self._on_reset_ack(sid, window, payload, now)
        elif typ == T_CAPS and self.adaptive:
            caps = unpack_caps(body)
            if caps is None:
                stats["bad_frames"] += 1
                return
            self._on_caps(caps, now)
        else:  # an unknown type (CAPS too, on a link that does not adapt: as a side that predates it)
            stats["bad_frames"] += 1

    def _on_caps(self, caps, now):
        sid, features, flags, rx_max = caps
        self.stats["caps_in"] += 1
        s = self._session
        if s is not None and not s.ended and s.sid == sid:
            s.last_heard = now
            s._on_caps(features, flags, rx_max, now)
        elif ((self._pending_reset is not None and self._pending_reset[0] == sid)
              or self._connect_sid == sid):
            self._pending_caps = (sid, features, flags, rx_max)  # its session starts in a moment
        else:
            self.stats["stale_session_frames"] += 1

    def _on_reset(self, sid, window, payload, now):
        if self._role == "client":
            self.stats["bad_frames"] += 1  # a client does not take sessions
            return
        s = self._session
        if s is not None and s.sid == sid and not s.ended:
            # the client did not hear our RESET_ACK yet
            s.last_heard = now
            self._queue_ctrl(RESET.pack(T_RESET_ACK, sid, PROTO_VERSION, self.window, self.payload_size))
            if self.adaptive:
                s._send_caps()
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
            self._new_session(sid, window, payload, now)
        elif s is not None and s.sid == sid:
            self.stats["duplicates"] += 1
        else:
            self.stats["stale_session_frames"] += 1

    # transmitter thread -------------------------------------------------------------------------

    def _collect(self, now):
        """Pick the next batch of frames to send (lock held).  Returns (items, sent, nctrl)."""
        items = []
        sent = []
        nctrl = 0
        while self._ctrl:
            items.append((self._ctrl.popleft(), b""))
            nctrl += 1
        s = self._session
        if s is not None and not s.ended and s._has_tx_work():
            s._collect(now, self._batch_bytes, items, sent)
        return items, sent, nctrl

    def _tx_loop(self):
        port = self.port
        stats = self.stats
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
            out = encode_frames(items)
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
