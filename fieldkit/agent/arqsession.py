"""One session of the serial ARQ layer: the sender's and the receiver's state machine
(stdlib only, Python 3.6 syntax).

The protocol is described in :mod:`.arq`; the frames in :mod:`.arqwire`.  An :class:`ArqSession`
is created by its :class:`~.arq.ArqLink` (``connect``/``accept``), and everything in it is guarded
by the link's lock: the application's threads call ``read``/``write``/``flush``/``close``, the
link's receiver thread calls the ``_on_*`` handlers and ``_timers``, its transmitter thread
``_collect``.
"""

import collections
import time

from .arqsize import FRAME_OVERHEAD, FrameSizer
from .arqwire import (
    ACK, ADAPT_MIN_PAYLOAD, CAP_ADAPTIVE, CAPS_SEEN, DATA, F_PROBE, F_REPLY, FIN, M32, T_ACK, T_DATA, T_FIN,
    pack_caps, unwrap,
)
from .protocol import StreamClosed


ACK_BYTES = 16384  # ACK at least every this many payload bytes (half of what a sender keeps in flight)


class _Frame(object):
    __slots__ = ("seq", "payload", "tx_order", "tx_count", "sent_time", "sacked", "queued")

    def __init__(self, seq, payload):
        self.seq = seq
        self.payload = payload
        self.tx_order = -1
        self.tx_count = 0
        self.sent_time = 0.0
        self.sacked = False
        self.queued = False


class ArqSession(object):
    """One session on an :class:`~.arq.ArqLink`: a stream (``read``, ``write``, ``close``, ``flush``).

    ``tx_payload`` is the payload size of the next new frame this side sends (fixed at the link's
    ``payload_size`` unless both ends announced adaptive frame sizes, see :mod:`.arq`);
    ``peer_rx_max`` the largest payload the peer said it accepts (None: it did not say).
    """

    def __init__(self, link, sid, peer_window, peer_payload, now):
        self.link = link
        self.sid = sid
        self.window = max(1, min(link.window, peer_window))  # send window (frames), same both ways
        self.ack_every = max(1, min(link.ack_every, self.window // 4))
        self.peer_payload = peer_payload  # the largest payload the peer sends without CAPS
        # a DATA payload above this is a bad frame; with CAPS we accept what we announce
        self.rx_limit = max(peer_payload, link.max_payload if link.adaptive else 0)
        self.started = now
        self.ended = False
        self.end_reason = None
        self._closed_here = False
        # capabilities (CAPS frames)
        self.peer_rx_max = None
        self.caps_acked = False  # the peer said it has our CAPS
        self.caps_tries = 0
        self.caps_next = now
        self.sizer = FrameSizer(link.payload_size, link.payload_size, link.payload_size)  # fixed until CAPS
        # sender
        self.snd_una = 0  # oldest unacknowledged sequence number
        self.snd_nxt = 0  # next sequence number to assign (frames are cut when first sent)
        self.sndbuf = bytearray()  # written, not yet cut into frames
        self.sndbuf_limit = max(4096, link.window * link.payload_size)
        self.inflight_bytes = 0  # payload of frames[]
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
        self.ack_pending_bytes = 0
        self.ooo_since_ack = 0
        self.ack_due = None
        self.last_adv_wnd = link.window
        self.rx_last = now  # when the last DATA frame arrived
        self.rx_rate = None  # bytes/s at which DATA frames stream in (upper envelope)
        self.rx_frame_time = 0.0  # the last DATA frame's time on the line at that rate

    def __repr__(self):
        return "ArqSession(%08x%s)" % (self.sid, ", ended: %s" % self.end_reason if self.ended else "")

    @property
    def tx_payload(self):
        return self.sizer.size

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
        """Queue all of ``data``; blocks while the send buffer is full.  StreamClosed once ended."""
        link = self.link
        mv = memoryview(data)
        if mv.ndim != 1 or mv.itemsize != 1:
            mv = mv.cast("B")
        total = len(mv)
        pos = 0
        with link._lock:
            while pos < total:
                if self.ended or link._closed:
                    raise StreamClosed(self._closed_message())
                room = self.sndbuf_limit - len(self.sndbuf)
                if room <= 0:
                    self.writers_waiting += 1
                    try:
                        link._wr_cond.wait(0.25)
                    finally:
                        self.writers_waiting -= 1
                    continue
                take = min(room, total - pos)
                self.sndbuf += mv[pos:pos + take]
                pos += take
                link._tx_cond.notify()

    def flush(self, timeout=5.0):
        """Wait until everything written has been acknowledged; False on timeout or end."""
        link = self.link
        deadline = time.monotonic() + timeout
        with link._lock:
            while self.snd_una < self.snd_nxt or self.sndbuf:
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
            target = link._queue_ctrl(FIN.pack(T_FIN, self.sid))
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
        del self.sndbuf[:]
        self.inflight_bytes = 0
        link = self.link
        link._recent_sids.append(self.sid)
        link._notify_all()

    def _rwnd(self):
        free = self.rbuf_limit - self.rbuf_bytes
        if free <= 0:
            return 0
        return min(free // self.peer_payload, self.link.window)

    def _can_send_new(self):
        """Room for a new frame: in the window, and (large frames) within the bytes in flight."""
        return (self.snd_nxt < self.snd_una + min(self.window, self.peer_wnd)
                and self.inflight_bytes < max(self.sndbuf_limit, 2 * self.sizer.size))

    def _has_tx_work(self):
        return (bool(self.rtx) or (bool(self.sndbuf) and self._can_send_new()) or self.ack_needed
                or self.probe_needed or self.probe_reply is not None)

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

    def _sized(self, delivered, length):
        """Tell the frame sizer about one frame; count changes of size."""
        sizer = self.sizer
        old = sizer.size
        if delivered:
            sizer.delivered(length)
        else:
            sizer.lost(length)
        if sizer.size != old:
            self.link.stats["frame_grows" if sizer.size > old else "frame_shrinks"] += 1

    # ---- capabilities -------------------------------------------------------------------------

    def _send_caps(self):
        link = self.link
        flags = CAPS_SEEN if self.peer_rx_max is not None else 0
        link._queue_ctrl(pack_caps(self.sid, CAP_ADAPTIVE, flags, link.max_payload))

    def _on_caps(self, features, flags, rx_max, now, reply=True):
        """The peer's CAPS: adapt frame sizes up to what it accepts (clamped to our own bounds)."""
        link = self.link
        first = self.peer_rx_max is None
        if first and features & CAP_ADAPTIVE:
            hi = max(ADAPT_MIN_PAYLOAD, min(int(rx_max), link.max_payload))  # a hostile peer's 0 or 65535
            self.peer_rx_max = hi
            self.sizer = FrameSizer(min(link.start_payload, hi), min(link.min_payload, hi), hi)
        if flags & CAPS_SEEN:
            self.caps_acked = True
        if reply and (not flags & CAPS_SEEN or (first and self.peer_rx_max is not None)):
            self._send_caps()  # it lacks ours, or it should hear that we now have its

    # ---- receiving ----------------------------------------------------------------------------

    def _on_ack(self, ack_wire, wnd, sack, now, flags=0, probe=0):
        link = self.link
        ack = unwrap(ack_wire, self.snd_una)
        if ack < self.snd_una:
            return
        if ack > self.snd_nxt:
            link.stats["bad_frames"] += 1  # acknowledges something never sent
            return
        newest = None  # the most recently sent frame that this ACK newly reports delivered
        frames = self.frames
        if ack > self.snd_una:
            for seq in range(self.snd_una, ack):
                f = frames.pop(seq)
                self.inflight_bytes -= len(f.payload)
                if not f.sacked:
                    self._sized(True, len(f.payload))
                    if newest is None or f.tx_order > newest.tx_order:
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
                    self._sized(True, len(f.payload))
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
                    self._sized(False, len(f.payload))
                    lost += 1
            if lost:
                link.stats["fast_retransmits"] += lost

    def _on_data(self, seq_wire, payload, now):
        link = self.link
        st = link.stats
        if not payload or len(payload) > self.rx_limit:
            st["bad_frames"] += 1
            return
        self._note_arrival(len(payload), now)
        seq = unwrap(seq_wire, self.rcv_nxt)
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
                self.ack_pending_bytes += len(payload)
                if self.ack_pending >= self.ack_every or self.ack_pending_bytes >= ACK_BYTES:
                    self.ack_needed = True
                elif self.ack_due is None:
                    self.ack_due = now + self._ack_delay()
            link._rd_cond.notify_all()
        else:
            first_gap = not self.ooo
            self.ooo[seq] = payload
            self.ooo_since_ack += 1
            if first_gap or self.ooo_since_ack >= self.ack_every:
                self.ack_needed = True  # NAK: the SACK bitmap shows the hole
            elif self.ack_due is None:
                self.ack_due = now + link.ack_delay

    def _note_arrival(self, length, now):
        """Learn the line's rate (an upper envelope of wire bytes over the time between frames)
        and the time this frame took on the line at that rate."""
        gap = now - self.rx_last
        self.rx_last = now
        wire = length + FRAME_OVERHEAD
        if 0.001 <= gap <= 0.5:
            rate = wire / gap
            self.rx_rate = rate if self.rx_rate is None else max(rate, 0.98 * self.rx_rate)
        self.rx_frame_time = 0.0 if self.rx_rate is None else wire / self.rx_rate

    def _ack_delay(self):
        """How long an ACK may wait for more frames: ``ack_delay``, or on a slow line four frame
        times (at most 0.2 s): one ACK per few frames, not one per frame (on a 115200-baud line
        that was 2 % of the line), while the sender's window (32 KiB) is far from exhausted."""
        return max(self.link.ack_delay, min(4.0 * self.rx_frame_time, 0.2))

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
        if self.peer_rx_max is not None and not self.caps_acked and self.caps_tries < 6:
            if now >= self.caps_next:  # the peer is adaptive but has not confirmed our CAPS
                self.caps_tries += 1
                self.caps_next = now + max(0.25, 2 * (self.srtt or 0.25))
                self._send_caps()
            elif self.caps_next < nxt:
                nxt = self.caps_next
        outstanding = self.snd_nxt > self.snd_una
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
        elif self.sndbuf and not self._can_send_new():
            # the receiver's buffer is full: probe it now and then (its window update may be lost)
            due = self.last_probe + link.probe_interval
            if now >= due:
                self.probe_needed = True
                self.last_probe = now
            elif due < nxt:
                nxt = due
        if (outstanding or self.sndbuf) and now - self.last_heard > link.dead_after:
            link.stats["dead_peer"] += 1
            self._end("no answer from the serial peer for %.1f s (cable pulled or agent gone?)"
                      % (now - self.last_heard))
        return nxt

    # ---- sending ------------------------------------------------------------------------------

    def _collect(self, now, budget, items, sent):
        """Append this session's next frames to ``items`` (``(header, payload)``) and the data
        frames among them to ``sent`` (``(frame, tx_order)``); at most about ``budget`` bytes."""
        link = self.link
        stats = link.stats
        data = []
        retransmitted = False
        while self.rtx and budget > 0:
            f = self.frames.get(self.rtx.popleft())
            if f is None:
                continue
            f.queued = False
            if f.sacked:
                continue
            self.order += 1
            f.tx_order = self.order
            f.tx_count += 1
            f.sent_time = now
            self.last_send = now
            stats["retransmits"] += 1
            stats["retransmit_bytes"] += len(f.payload)
            data.append(f)
            retransmitted = True
            budget -= len(f.payload) + 32
        fresh = False
        if self.sndbuf:
            sndbuf = self.sndbuf
            size = self.sizer.size
            while sndbuf and budget > 0 and self._can_send_new():
                take = min(size, len(sndbuf))
                f = _Frame(self.snd_nxt, bytes(sndbuf[:take]))
                del sndbuf[:take]
                self.frames[self.snd_nxt] = f
                self.snd_nxt += 1
                self.inflight_bytes += take
                self.order += 1
                f.tx_order = self.order
                f.tx_count = 1
                f.sent_time = now
                self.last_send = now
                stats["payload_bytes_out"] += take
                data.append(f)
                fresh = True
                budget -= take + 32
            if fresh and self.writers_waiting:
                link._wr_cond.notify_all()
        ack = self.rcv_nxt & M32
        wnd = self._rwnd()
        # a probe after retransmissions with nothing new behind them: its answer tells us at
        # once whether they arrived (RACK needs a later delivery to see a loss)
        probe = self.probe_needed or (retransmitted and not fresh and not self.rtx)
        ack_item = None
        # an ACK owed ahead of a large frame goes in a frame of its own: inside the DATA header it
        # would only count once the whole frame is through (on a slow line, after the peer's RTO)
        owed = self.ack_needed or self.ack_pending or self.ooo_since_ack
        if (probe or self.probe_reply is not None or (self.ack_needed and (self.ooo or not data))
                or (owed and data and len(data[0].payload) > 512)):
            sack = self._sack_bitmap()
            flags = 0
            pid = 0
            if self.probe_reply is not None:
                flags = F_REPLY
                pid = self.probe_reply
                self.probe_reply = None
                if probe:  # one probe number per frame: answer theirs in a frame of its own
                    items.append((ACK.pack(T_ACK, self.sid, ack, wnd, flags, pid) + sack, b""))
                    stats["acks_out"] += 1
                    flags = 0
            if probe:
                flags |= F_PROBE
                self.probe_id = pid = (self.probe_id + 1) & 0xFF
                self.order += 1
                self.probe_order = self.order
                self.probe_time = now
            ack_item = (ACK.pack(T_ACK, self.sid, ack, wnd, flags, pid) + sack, b"")
            stats["acks_out"] += 1
        if data or self.ack_needed or probe or ack_item is not None:
            self.ack_needed = False
            self.probe_needed = False
            self.ack_pending = 0
            self.ack_pending_bytes = 0
            self.ooo_since_ack = 0
            self.ack_due = None
            self.last_adv_wnd = wnd
        if ack_item is not None and not probe:
            items.append(ack_item)  # plain ACKs go first, probes after the data they follow
        pack = DATA.pack
        sid = self.sid
        for f in data:
            items.append((pack(T_DATA, sid, f.seq & M32, ack, wnd), f.payload))
            sent.append((f, f.tx_order))
        if ack_item is not None and probe:
            items.append(ack_item)
