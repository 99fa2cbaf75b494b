"""The message layer: framing, bounds, malformed input, over real pipes."""

from __future__ import annotations

import ast
import os
import struct
import threading
from pathlib import Path

import pytest

from fieldkit.agent.protocol import (
    FrameReader, FrameWriter, ProtocolError, StreamClosed, decode_message,
)
from fieldkit.agent.streams import FdStream

AGENT_DIR = Path(__file__).resolve().parent.parent / "fieldkit" / "agent"


@pytest.mark.parametrize("path", sorted(AGENT_DIR.glob("*.py")), ids=lambda p: p.name)
def test_agent_parses_as_python36(path: Path) -> None:
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 6))


def _pipe_pair():
    r, w = os.pipe()
    return FdStream(r, -1, close_fds=False), FdStream(-1, w), (r, w)


def test_messages_round_trip_with_binary_bodies() -> None:
    rs, ws, (r, w) = _pipe_pair()
    writer, reader = FrameWriter(ws), FrameReader(rs)
    bodies = [b"", b"\x00" * 10, os.urandom(300_000), bytes(range(256)) * 1000]

    def produce() -> None:
        for i, body in enumerate(bodies):
            writer.send({"t": "data", "id": i, "off": 0}, body)
        os.close(w)

    t = threading.Thread(target=produce)
    t.start()
    for i, body in enumerate(bodies):
        msg = reader.read_message()
        assert msg.header == {"t": "data", "id": i, "off": 0}
        assert msg.body == body
    with pytest.raises(StreamClosed):
        reader.read_message()
    t.join(5)
    os.close(r)


def test_oversized_and_malformed_frames_are_rejected_and_counted() -> None:
    rs, ws, (r, w) = _pipe_pair()
    reader = FrameReader(rs, max_frame=1024)
    good = FrameWriter(ws, max_frame=1024)

    def produce() -> None:
        os.write(w, struct.pack(">I", 5000) + b"x" * 5000)  # oversized: skipped
        os.write(w, struct.pack(">II", 12, 8) + b"not json")  # malformed header
        good.send({"t": "hb"})
        os.close(w)

    t = threading.Thread(target=produce)
    t.start()
    with pytest.raises(ProtocolError, match="oversized"):
        reader.read_message()
    with pytest.raises(ProtocolError, match="JSON"):
        reader.read_message()
    assert reader.read_message().header == {"t": "hb"}  # still in step after both
    assert reader.rejected == 2
    t.join(5)
    os.close(r)


def test_writer_refuses_oversized_messages() -> None:
    rs, ws, (r, w) = _pipe_pair()
    with pytest.raises(ProtocolError, match="exceeds"):
        FrameWriter(ws, max_frame=1024).send({"t": "data"}, b"x" * 2000)
    os.close(r)
    os.close(w)


@pytest.mark.parametrize("frame", [b"", b"\x00\x00", b"\x00\x00\x00\xff{}", b"\x00\x00\x00\x02[]", b"\x00\x00\x00\x02{}"])
def test_decode_rejects_garbage(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_message(frame)
