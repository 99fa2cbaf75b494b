"""The agent against a hostile peer: a real `fieldkit.agent serve --stdio` over real pipes.

Each test is one case from the issue that used to kill the agent, hang it, reach outside its root
or destroy data. The client speaks the real protocol (FrameWriter/FrameReader) through the fuzz
harness's AgentProcess (scripts/fuzz_agent.py). No fixed sleeps: every wait is bounded.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_agent", ROOT / "scripts" / "fuzz_agent.py")
fuzz_agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_agent)  # type: ignore[union-attr]
AgentProcess = fuzz_agent.AgentProcess

STAGING = "/var/lib/fieldkit/staging"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "box" / "device"
    (r / STAGING.lstrip("/")).mkdir(parents=True)
    return r


@pytest.fixture
def agent(root: Path):
    a = AgentProcess(str(root))
    try:
        yield a
    finally:
        a.close()
        assert "Traceback" not in a.stderr_text(), a.stderr_text()


def _alive(agent) -> None:
    assert agent.ping(2.0), "the agent did not answer ping: " + agent.stderr_text()[-2000:]
    assert agent.proc.poll() is None


def _start_put(agent, rid: int, path: str, size: int) -> None:
    agent.expect(rid)
    agent.send({"t": "req", "id": rid, "op": "put", "args": {"path": path, "size": size}})


def _error(res: dict | None) -> dict:
    assert res is not None, "no answer"
    assert res["ok"] is False, res
    return res["error"]


@pytest.mark.parametrize("off", ["0", None])
def test_data_with_a_string_or_null_offset_is_refused_and_the_agent_lives(agent, root: Path, off) -> None:
    _start_put(agent, 1, f"{STAGING}/blob.bin", 10)
    agent.send({"t": "data", "id": 1, "off": off, "eof": True}, b"0123456789")
    err = _error(agent.wait_reply(1, 5))
    assert err["code"] == "bad_request" and "off (a whole number >= 0)" in err["message"]
    _alive(agent)
    assert not (root / STAGING.lstrip("/") / "blob.bin").exists()


def test_cancel_and_data_with_a_list_id_are_rejected_and_the_agent_lives(agent, root: Path) -> None:
    _start_put(agent, 1, f"{STAGING}/blob.bin", 4)
    agent.send({"t": "cancel", "id": [1]})
    agent.send({"t": "data", "id": [1], "off": 0, "eof": True}, b"abcd")
    _alive(agent)
    # the upload with the real id is untouched and still completes
    agent.send({"t": "data", "id": 1, "off": 0, "eof": True}, b"abcd")
    res = agent.wait_reply(1, 5)
    assert res and res["ok"], res
    assert (root / STAGING.lstrip("/") / "blob.bin").read_bytes() == b"abcd"


def _raw_call(agent, rid: int, op: str, args: dict) -> dict | None:
    """A request with raw UTF-8 in its JSON (600 kB here), as a hostile peer may send it; the
    agent's own JSON escapes each character to 6 bytes, so echoing it would pass 1 MiB."""
    agent.expect(rid)
    header = json.dumps({"t": "req", "id": rid, "op": op, "args": args}, ensure_ascii=False).encode()
    agent.send_raw(fuzz_agent._frame(fuzz_agent._message(header)))
    return agent.wait_reply(rid, 5)


LONG_PATH = "/" + "\u00e9" * 300_000


def test_put_with_a_300000_character_path_gets_a_short_error(agent) -> None:
    err = _error(_raw_call(agent, 1, "put", {"path": LONG_PATH, "size": 1}))
    assert err["code"] == "bad_path" and "the limit is 4096" in err["message"]
    assert len(err["message"]) < 400 and "\u2026" in err["message"]
    _alive(agent)


def test_stat_with_a_300000_character_path_answers(agent) -> None:
    assert _error(_raw_call(agent, 1, "stat", {"path": LONG_PATH}))["code"] == "bad_path"
    _alive(agent)


@pytest.mark.parametrize("length", [0, 3])
def test_a_length_field_shorter_than_4_ends_the_session_cleanly(agent, length: int) -> None:
    _alive(agent)
    agent.send_raw(struct.pack(">I", length) + b"\x00" * 8)
    assert agent.wait_exit(10) == 0
    text = agent.stderr_text()
    assert "out of step" in text and "Traceback" not in text


def test_a_flood_of_requests_gets_busy_replies_and_ping_stays_prompt(agent) -> None:
    ids = list(range(1, 3001))
    for rid in ids:
        agent.expect(rid)
    frames = b"".join(fuzz_agent._frame(fuzz_agent._message(fuzz_agent._json(
        {"t": "req", "id": rid, "op": "sleep", "args": {"seconds": 30}}))) for rid in ids)
    agent.send_raw(frames)
    t0 = time.monotonic()
    assert agent.ping(1.0), "ping not answered within 1 s during the flood"
    assert time.monotonic() - t0 < 1.0
    busy = [r for rid in ids for r in agent.replies_for(rid)]
    assert len(busy) >= 2900 and all(r["error"]["code"] == "busy" for r in busy)
    assert agent.threads() <= 24  # 16 requests + reader, heartbeat, main
    for rid in ids:  # cancel the sleeps: they end at once
        agent.send({"t": "cancel", "id": rid})
    deadline = time.monotonic() + 10
    while sum(1 for rid in ids for r in agent.replies_for(rid) if r["error"]["code"] == "cancelled") < 16:
        assert time.monotonic() < deadline, "the running sleeps were not cancelled"
        agent.ping(1.0)


@pytest.mark.parametrize("op,args", [("put", {"path": "/", "size": 0}), ("remove", {"path": "/"}),
                                     ("stat", {"path": "/"}), ("stat", {"path": "/var/.."}),
                                     ("hash", {"path": "//"})])
def test_the_root_itself_is_refused(agent, root: Path, op: str, args: dict) -> None:
    (root.parent / "device.part").write_bytes(b"next to the root")
    err = _error(agent.call(op, args, timeout=5))
    assert err["code"] == "bad_path" and "the device root itself" in err["message"]
    assert (root.parent / "device.part").read_bytes() == b"next to the root"
    assert sorted(p.name for p in root.parent.iterdir()) == ["device", "device.part"]


def test_symlinks_cannot_lead_put_or_hash_outside_the_root(agent, root: Path) -> None:
    outside = root.parent / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(b"not yours")
    os.symlink(outside, root / "escape")  # a symlinked directory
    os.symlink(secret, root / "secret.txt")  # a symlinked file

    err = _error(agent.call("put", {"path": "/escape/planted.bin", "size": 0}, timeout=5))
    assert err["code"] == "bad_path" and "leaves the device root through a symlink" in err["message"]
    err = _error(agent.call("put", {"path": "/secret.txt", "size": 0}, timeout=5))
    assert err["code"] == "bad_path" and err["message"] == "/secret.txt is a symlink; refused"
    err = _error(agent.call("hash", {"path": "/secret.txt"}, timeout=5))
    assert err["message"] == "/secret.txt is a symlink; refused"
    err = _error(agent.call("hash", {"path": "/escape/secret.txt"}, timeout=5))
    assert "leaves the device root through a symlink" in err["message"]
    # a .part planted as a symlink is not followed either
    os.symlink(secret, root / "staged.bin.part")
    err = _error(agent.call("put", {"path": "/staged.bin", "size": 3}, timeout=5))
    assert err["message"] == "/staged.bin.part is a symlink; refused"

    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert secret.read_bytes() == b"not yours"
    # symlinks that stay inside the root are fine for directories
    (root / "real").mkdir()
    os.symlink(root / "real", root / "inside")
    res = agent.call("put", {"path": "/inside/ok.bin", "size": 0}, timeout=5)
    assert res and res["ok"], res
    assert (root / "real" / "ok.bin").exists()


def test_journal_read_leaves_a_file_without_a_trailing_newline_byte_identical(agent, root: Path) -> None:
    from fieldkit.agent.devjournal import DeviceJournal

    path = root / "var/lib/fieldkit/journal.jsonl"
    journal = DeviceJournal(str(path))
    journal.append("test.one", {"n": 1})
    journal.append("test.two", {"n": 2})
    with open(path, "ab") as fh:
        fh.write(b'{"v":1,"seq":3,"torn')  # a crash in the middle of a write
    before = path.read_bytes()
    res = agent.call("journal_read", {"verify": True}, timeout=10)
    assert res and res["ok"], res
    result = res["result"]
    assert [e["seq"] for e in result["entries"]] == [1, 2] and result["head"]["seq"] == 2
    assert result["chain"]["ok"] is True
    assert path.read_bytes() == before
    assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(before).hexdigest()
    # the writer repairs the torn line, under its lock
    journal.append("test.three", {"n": 3})
    assert path.read_bytes().count(b"\n") == 3 and b"torn" not in path.read_bytes()


@pytest.mark.parametrize("header", [
    {"t": "req", "id": True, "op": "ping"}, {"t": "req", "id": -1, "op": "ping"}, {"t": "req", "id": 2 ** 64},
    {"t": "req", "id": 5, "op": ["ping"]}, {"t": "req", "id": 6, "op": "stat", "args": [1]},
    {"t": "req", "id": 7, "op": "sleep", "args": {"seconds": "10"}}, {"t": "data", "id": {"a": 1}},
    {"t": "cancel"}, {"t": 5}, {"t": "evt", "id": 1}, {"t": "req", "id": 8, "op": "x" * 10_000},
])
def test_wrong_types_anywhere_are_answered_or_counted(agent, header: dict) -> None:
    rid = header.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        agent.expect(rid)
    agent.send(header)
    _alive(agent)
    if rid in (5, 6, 7, 8):
        err = _error(agent.wait_reply(rid, 5))
        assert err["code"] in ("bad_request", "bad_args") and len(err["message"]) < 400


def test_bench_settings_are_checked_once_and_named_by_key(agent) -> None:
    err = _error(agent.call("bench", {"model": "/m.onnx", "threads": -1, "runs": 5}, timeout=5))
    assert (err["code"], err["message"]) == ("bad_args", "threads must be a whole number >= 0, got -1")
    err = _error(agent.call("bench", {"model": "/m.onnx", "shapes": {"input": "1x3"}}, timeout=5))
    assert err["code"] == "bad_args" and err["message"].startswith("shapes: the shape of input 'input'")
    _alive(agent)


def test_out_of_step_on_serial_ends_that_arq_session_and_the_next_one_is_served(root: Path) -> None:
    import threading

    from fieldkit.agent.arq import ArqLink
    from fieldkit.agent.protocol import FrameReader, FrameWriter
    from fieldkit.agent.server import AgentSession
    from fieldkit.agent.streams import open_tty
    from fieldkit.sim.ptyrelay import PtyRelay

    relay = PtyRelay()
    device = ArqLink(open_tty(relay.device_path), name="device")
    laptop = ArqLink(open_tty(relay.laptop_path), name="laptop")
    ended: list[AgentSession] = []

    def serve() -> None:  # what `serve --serial` does with each ARQ session
        while len(ended) < 2:
            try:
                session = device.accept(10)
            except Exception:
                return
            agent = AgentSession(session, str(root), idle_timeout_s=15.0)
            agent.serve()
            ended.append(agent)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        first = laptop.connect(5)
        first.write(struct.pack(">I", 2) + b"\x00" * 8)  # out of step
        deadline = time.monotonic() + 10
        while first.read(65536, timeout=max(0.1, deadline - time.monotonic())):
            pass  # heartbeats until the device ends the session: b"" then
        # the laptop sees the end before the server thread has recorded it: wait for the record
        while not ended and time.monotonic() < deadline + 5:
            time.sleep(0.01)
        assert ended and ended[0].out_of_step
        second = laptop.connect(5)
        writer, reader = FrameWriter(second), FrameReader(second)
        writer.send({"t": "req", "id": 1, "op": "ping"})
        while True:
            msg = reader.read_message()
            if msg.type == "res":
                break
        assert msg.header["id"] == 1 and msg.header["ok"] is True
        second.close()
    finally:
        laptop.close(linger=0)
        server.join(10)
        device.close(linger=0)
        relay.close()
