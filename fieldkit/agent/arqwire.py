"""Wire format of the serial ARQ layer: frame headers, COBS + CRC-32 framing, and the parser
that cuts received bytes into checked frames (stdlib only, Python 3.6 syntax).

The protocol itself (sessions, windows, retransmission, frame-size adaptation) is described in
:mod:`.arq`; this module only knows how a frame looks on the line::

    0x00 COBS(header | payload | CRC-32(header | payload)) 0x00 COBS(...) 0x00 ...

All integers are big endian; ``zlib.crc32`` is the CRC.  Nothing here keeps session state, so the
parser can be fuzzed on its own.
"""

import os
import struct
import zlib

from .cobs import decode as cobs_decode
from .cobs import encode as cobs_encode
from .cobs import max_encoded_len

PROTO_VERSION = 1

T_RESET = 1
T_RESET_ACK = 2
T_DATA = 3
T_ACK = 4
T_FIN = 5
T_CAPS = 6  # capability announcement; a peer that predates it counts it as a bad frame

F_PROBE = 1  # ACK: please answer at once
F_REPLY = 2  # ACK: this answers probe number <probe>

CAP_ADAPTIVE = 1  # CAPS features: "I accept DATA payloads up to <rx_max>, whatever my RESET said"
CAPS_SEEN = 1  # CAPS flags: "I have received your CAPS for this session"

MAX_PAYLOAD = 16384  # the largest payload any frame may carry (the parser's bound)
MIN_PAYLOAD = 16
MAX_WINDOW = 1024
ADAPT_MIN_PAYLOAD = 64  # adaptive frame sizes stay within these (and within what the peer accepts)
ADAPT_MAX_PAYLOAD = 8192
ADAPT_START_PAYLOAD = 256  # small enough to get through a noisy line; slow start grows it in a round trip

M32 = 0xFFFFFFFF
DATA = struct.Struct(">BIIIH")  # type, session, seq, ack, wnd
ACK = struct.Struct(">BIIHBB")  # type, session, ack, wnd, flags, probe number (+ SACK bitmap)
RESET = struct.Struct(">BIBHH")  # type, session, version, window, payload size
FIN = struct.Struct(">BI")  # type, session
CAPS = struct.Struct(">BIBBH")  # type, session, features, flags, largest payload accepted (+ future fields)
CRC = struct.Struct(">I")

MIN_BODY = FIN.size + CRC.size
MAX_BODY = DATA.size + MAX_PAYLOAD + CRC.size
MAX_ENCODED = max_encoded_len(MAX_BODY)
MAX_SACK = MAX_WINDOW // 8

STAT_KEYS = (
    "wire_bytes_out", "wire_bytes_in", "payload_bytes_out", "payload_bytes_in",
    "frames_out", "frames_in", "acks_out", "acks_in", "retransmits", "retransmit_bytes",
    "fast_retransmits", "timeouts", "crc_errors", "bad_frames", "garbage_bytes", "duplicates",
    "tail_probes", "stale_session_frames", "sessions", "dead_peer", "internal_errors",
    "caps_in", "frame_shrinks", "frame_grows",
)


def unwrap(wire, ref):
    """Full sequence number for a 32-bit wire value, taking the one nearest to ``ref``."""
    d = (wire - ref) & M32
    if d >= 0x80000000:
        d -= 0x100000000
    return ref + d


def new_session_id(avoid=()):
    while True:
        sid = int.from_bytes(os.urandom(4), "big")
        if sid and sid not in avoid:
            return sid


def encode_frames(items):
    """One write's worth of frames: ``[(header, payload), ...]`` -> ``0x00 COBS(..) 0x00 ...``.

    The leading delimiter cuts off any line noise the receiver has buffered before it."""
    crc32 = zlib.crc32
    crc_pack = CRC.pack
    out = bytearray(b"\x00")
    for header, payload in items:
        crc = crc32(payload, crc32(header)) if payload else crc32(header)
        out += cobs_encode(header + payload + crc_pack(crc))
        out.append(0)
    return out


def pack_caps(sid, features, flags, rx_max):
    return CAPS.pack(T_CAPS, sid, features & 0xFF, flags & 0xFF, max(0, min(int(rx_max), 0xFFFF)))


def unpack_caps(body):
    """``(sid, features, flags, rx_max)`` of a CRC-checked CAPS body, or None if it is too short.

    Longer bodies are accepted (later versions may append fields); their extra bytes are ignored."""
    if len(body) < CAPS.size + CRC.size:
        return None
    _, sid, features, flags, rx_max = CAPS.unpack_from(body)
    return sid, features, flags, rx_max


class FrameParser(object):
    """Cuts received bytes into CRC-checked frame bodies; everything else is counted and dropped.

    ``stats`` is the link's counter dict (``frames_in``, ``crc_errors``, ``bad_frames``,
    ``garbage_bytes``).  Not thread-safe: one receiver thread feeds it.
    """

    def __init__(self, stats):
        self.stats = stats
        self._buf = b""
        self._skip = False  # inside an over-long run: skip to the next delimiter

    def feed(self, data):
        """``[(type, body), ...]`` for every complete, intact frame in ``data`` (and before it)."""
        stats = self.stats
        if self._skip:
            z = data.find(0)
            if z < 0:
                stats["garbage_bytes"] += len(data)
                return ()
            stats["garbage_bytes"] += z
            data = data[z + 1:]
            self._skip = False
        if self._buf:
            data = self._buf + data
        parts = data.split(b"\x00")
        tail = parts.pop()
        if len(tail) > MAX_ENCODED:
            stats["garbage_bytes"] += len(tail)
            stats["bad_frames"] += 1
            tail = b""
            self._skip = True
        self._buf = tail
        out = []
        for p in parts:
            if not p:
                continue
            n = len(p)
            if n <= MIN_BODY or n > MAX_ENCODED:
                stats["bad_frames"] += 1
                stats["garbage_bytes"] += n
                continue
            try:
                body = cobs_decode(p)
            except ValueError:
                stats["bad_frames"] += 1
                stats["garbage_bytes"] += n
                continue
            if len(body) < MIN_BODY:
                stats["bad_frames"] += 1
                stats["garbage_bytes"] += n
                continue
            if zlib.crc32(memoryview(body)[:-4]) != CRC.unpack_from(body, len(body) - 4)[0]:
                stats["crc_errors"] += 1
                stats["garbage_bytes"] += n
                continue
            stats["frames_in"] += 1
            out.append((body[0], body))
        return out
