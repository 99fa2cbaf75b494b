"""Message layer shared by the laptop and the agent (stdlib only, Python 3.6 syntax).

A *message* is a JSON header plus an optional binary body (no base64)::

    u32 header_len | header (UTF-8 JSON object) | body bytes

On reliable links (SSH exec channel, subprocess pipes) each message travels in one
length-prefixed *frame*::

    u32 frame_len | message

On serial the same frames travel over :mod:`fieldkit.agent.arq`, which turns a lossy line into
a reliable ordered byte stream, so there is exactly one message codec.

Header ``t`` (type) values:

``hello``   handshake, both directions: ``proto``, versions, ``capabilities``.
``req``     ``id``, ``op``, ``args``; body optional.
``res``     ``id``, ``ok``; ``result`` or ``error`` {``code``, ``message``}.
``evt``     ``id``, ``data``: progress events for a running request.
``data``    ``id``, ``off`` (byte offset), ``eof``; body = chunk. Either direction.
``cancel``  ``id``: stop the request; it answers with error code ``cancelled``.
``hb``      heartbeat, both directions, ``ts``.

Out of step: a reliable stream has no frame boundaries of its own, so a length field that cannot
be a frame (shorter than the 4-byte header length it must hold, or longer than ``MAX_SKIP``)
means the reader no longer knows where frames start. :class:`FrameReader` then raises
:class:`StreamOutOfStep` (a :class:`ProtocolError`), and the reader must end the session: the
agent ends it cleanly (exit status 0 under ``serve --stdio``; under ``serve --serial`` that ARQ
session ends and the next one is served), and the laptop should close the link. Oversized frames
up to ``MAX_SKIP`` are skipped, so the stream stays in step; malformed messages inside a frame
are counted and skipped.
"""

import json
import struct
import threading

MAX_FRAME = 4 * 1024 * 1024  # bytes, one frame (= one message)
MAX_HEADER = 1024 * 1024
MAX_SKIP = 4 * MAX_FRAME  # longer frames are not skipped: the stream is out of step
DATA_CHUNK = 256 * 1024  # default body size of a data message

_U32 = struct.Struct(">I")
_U32x2 = struct.Struct(">II")


class ProtocolError(Exception):
    """The peer sent something that is not a valid frame or message."""


class StreamOutOfStep(ProtocolError):
    """A frame length that no frame can have: the reader has lost the frame boundaries of a
    reliable stream and cannot find them again; end the session (fatal for the session only)."""


class StreamClosed(Exception):
    """The underlying byte stream ended (EOF, closed, or peer gone)."""


class Message(object):
    __slots__ = ("header", "body")

    def __init__(self, header, body=b""):
        self.header = header
        self.body = body

    @property
    def type(self):
        return self.header.get("t")

    @property
    def id(self):
        return self.header.get("id")

    def __repr__(self):
        return "Message(%r, %d bytes)" % (self.header, len(self.body))


def encode_header(header):
    raw = json.dumps(header, separators=(",", ":"), default=str).encode("utf-8")
    if len(raw) > MAX_HEADER:
        raise ProtocolError("message header too large (%d bytes)" % len(raw))
    return raw


def decode_message(frame):
    """Parse one frame payload (bytes or memoryview) into a Message; ProtocolError if malformed."""
    if len(frame) < 4:
        raise ProtocolError("frame shorter than its header length field")
    (hlen,) = _U32.unpack_from(frame, 0)
    if hlen > MAX_HEADER or 4 + hlen > len(frame):
        raise ProtocolError("bad header length %d in a %d byte frame" % (hlen, len(frame)))
    try:
        header = json.loads(bytes(frame[4:4 + hlen]).decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("header is not valid JSON: %s" % str(exc)[:200])
    except RecursionError:
        raise ProtocolError("header is not valid JSON: nested too deeply")
    if not isinstance(header, dict) or not isinstance(header.get("t"), str):
        raise ProtocolError("header is not an object with a type")
    return Message(header, bytes(frame[4 + hlen:]))


class FrameWriter(object):
    """Writes length-prefixed frames to a stream with ``write(bytes)``; thread-safe."""

    def __init__(self, stream, max_frame=MAX_FRAME):
        self._stream = stream
        self._lock = threading.Lock()
        self.max_frame = max_frame
        self.frames = 0
        self.bytes = 0

    def _encode(self, header, body):
        raw = encode_header(header)
        total = 4 + len(raw) + len(body)
        if total > self.max_frame:
            raise ProtocolError("message of %d bytes exceeds the %d byte frame limit" % (total, self.max_frame))
        return _U32x2.pack(total, len(raw)) + raw, total

    def _write(self, prefix, body, total):
        if len(body) <= 65536:
            self._stream.write(prefix + bytes(body))
        else:
            self._stream.write(prefix)
            self._stream.write(body)
        self.frames += 1
        self.bytes += 4 + total

    def send(self, header, body=b""):
        prefix, total = self._encode(header, body)
        with self._lock:
            self._write(prefix, body, total)

    def try_send(self, header, body=b""):
        """Send only if no other thread is writing right now (heartbeats); True if sent."""
        prefix, total = self._encode(header, body)
        if not self._lock.acquire(False):
            return False
        try:
            self._write(prefix, body, total)
        finally:
            self._lock.release()
        return True


class FrameReader(object):
    """Reads length-prefixed frames from a stream with ``read(n) -> bytes`` (b'' on EOF).

    Oversized frames (skipped, so the stream stays in step) and malformed messages raise
    ProtocolError: the caller counts them and reads on. A length field no frame can have raises
    StreamOutOfStep: a reliable stream cannot resynchronise, so the caller ends the session rather
    than guess where the next frame starts.
    """

    def __init__(self, stream, max_frame=MAX_FRAME, read_size=1024 * 1024, max_skip=None):
        self._stream = stream
        self.max_frame = max_frame
        self.max_skip = max(max_frame, MAX_SKIP if max_skip is None else max_skip)
        self._read_size = read_size
        self._buf = bytearray()
        self._pos = 0
        self.frames = 0
        self.bytes = 0
        self.rejected = 0  # oversized or malformed frames

    def _fill(self, need):
        """Make sure at least ``need`` unread bytes are buffered."""
        while len(self._buf) - self._pos < need:
            if self._pos:
                del self._buf[:self._pos]
                self._pos = 0
            chunk = self._stream.read(max(self._read_size, need - len(self._buf)))
            if not chunk:
                raise StreamClosed("stream closed")
            self._buf += chunk

    def read_frame(self):
        self._fill(4)
        (length,) = _U32.unpack_from(self._buf, self._pos)
        if length < 4 or length > self.max_skip:
            self._pos += 4
            self.rejected += 1
            raise StreamOutOfStep("frame length %d cannot be a frame (it must be 4..%d): the stream is out of "
                                  "step" % (length, self.max_skip))
        if length > self.max_frame:
            # Skip the oversized frame so the stream stays in step, then report it.
            self._pos += 4
            self._skip(length)
            self.rejected += 1
            raise ProtocolError("oversized frame of %d bytes rejected (limit %d)" % (length, self.max_frame))
        self._fill(4 + length)
        start = self._pos + 4
        frame = bytes(memoryview(self._buf)[start:start + length])
        self._pos = start + length
        self.frames += 1
        self.bytes += 4 + length
        return frame

    def _skip(self, count):
        while count:
            have = len(self._buf) - self._pos
            if have:
                take = min(have, count)
                self._pos += take
                count -= take
            else:
                self._fill(1)

    def read_message(self):
        frame = self.read_frame()
        try:
            return decode_message(frame)
        except ProtocolError:
            self.rejected += 1
            raise


class RemoteError(Exception):
    """Raised inside agent handlers to return a coded error to the caller."""

    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message
