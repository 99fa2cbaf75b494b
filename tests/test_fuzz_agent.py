"""Fuzzing the agent: Hypothesis against its dispatcher, and raw frames against a real agent process.

* Property-based (Hypothesis): arbitrary headers, types and bodies go through an AgentSession's
  ``dispatch`` (the reader thread's entry point) over real pipes; nothing may raise out of it, no
  handler may die with a traceback, and ``ping`` is answered within a second after every example.
* Raw frames: the generator and harness of ``scripts/fuzz_agent.py`` (one implementation) write
  random and mutated frames into ``python -m fieldkit.agent serve --stdio``; after every case the
  agent answers ``ping`` within 2 s, or, for an out-of-step length field, exits 0 without a
  traceback. Cases that killed or hung the old agent are replayed by index.

About 2,000 examples in all; ``scripts/fuzz_agent.py --cases N`` runs the raw fuzzer for longer.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fieldkit.agent import server
from fieldkit.agent.protocol import FrameReader, Message, ProtocolError, StreamClosed, decode_message
from fieldkit.agent.streams import FdStream

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("fuzz_agent", ROOT / "scripts" / "fuzz_agent.py")
fuzz_agent = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fuzz_agent)  # type: ignore[union-attr]


class InProcessAgent:
    """An AgentSession whose reader side is the test: ``dispatch`` is called directly."""

    def __init__(self, base: Path) -> None:
        root, self.outside = fuzz_agent.make_root(str(base))
        self.in_r, self.in_w = os.pipe()
        self.out_r, self.out_w = os.pipe()
        self.session = server.AgentSession(FdStream(self.in_r, self.out_w), root, idle_timeout_s=3600)
        self.cond = threading.Condition()
        self.replies: dict[int, dict] = {}
        self.next_id = fuzz_agent.PING_BASE
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        reader = FrameReader(fuzz_agent._Pipe(rfd=self.out_r))
        try:
            while True:
                try:
                    msg = reader.read_message()
                except ProtocolError:
                    continue
                rid = msg.header.get("id")
                if msg.type == "res" and isinstance(rid, int) and rid >= fuzz_agent.PING_BASE:
                    with self.cond:
                        self.replies[rid] = msg.header
                        self.cond.notify_all()
        except (StreamClosed, OSError):
            pass

    def ping(self, timeout: float = 1.0) -> bool:
        self.next_id += 1
        rid = self.next_id
        self.session.dispatch(Message({"t": "req", "id": rid, "op": "ping"}))
        with self.cond:
            return self.cond.wait_for(lambda: rid in self.replies, timeout) and self.replies.pop(rid)["ok"]

    def close(self) -> None:
        self.session.close()
        for fd in (self.in_w, self.out_w):
            os.close(fd)


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    logged: list[str] = []
    original = server.log
    server.log = logged.append  # handlers log tracebacks through it
    a = InProcessAgent(tmp_path_factory.mktemp("fuzz"))
    a.logged = logged  # type: ignore[attr-defined]
    try:
        yield a
    finally:
        server.log = original
        a.close()
    assert sorted(os.listdir(a.outside)) == ["secret.txt"], "something was written outside the device root"


json_scalars = (st.none() | st.booleans() | st.integers(min_value=-2 ** 70, max_value=2 ** 70)
                | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
                | st.sampled_from(fuzz_agent.PATHS))
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
ids = st.integers(min_value=-5, max_value=2 ** 64) | json_values
args = st.dictionaries(st.sampled_from(fuzz_agent.ARG_KEYS) | st.text(max_size=6), json_values, max_size=6)
headers = st.fixed_dictionaries(
    {"t": st.sampled_from(fuzz_agent.TYPES) | json_values},
    optional={"id": ids, "op": st.sampled_from(fuzz_agent.OPS) | json_values, "args": args | json_values,
              "off": json_values, "eof": json_values, "data": json_values},
)
FUZZ = settings(max_examples=400, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _check(agent) -> None:
    assert agent.ping(1.0), "ping not answered within 1 s"
    tracebacks = [line for line in agent.logged if "Traceback" in line]
    assert not tracebacks, tracebacks[0]
    assert agent.session.internal_errors == 0


@FUZZ
@given(header=headers, body=st.binary(max_size=64))
def test_dispatch_survives_any_header(agent, header: dict, body: bytes) -> None:
    agent.session.dispatch(Message(header, body))
    _check(agent)


@FUZZ
@given(op=st.sampled_from(fuzz_agent.OPS), rid=st.integers(min_value=0, max_value=10_000), a=args)
def test_every_operation_survives_any_arguments(agent, op: str, rid: int, a: dict) -> None:
    agent.session.dispatch(Message({"t": "req", "id": rid, "op": op, "args": a}))
    agent.session.dispatch(Message({"t": "data", "id": rid, "off": 0, "eof": True}, b"x"))
    _check(agent)


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frame=st.binary(max_size=200) | st.builds(lambda h, b: fuzz_agent._message(fuzz_agent._json(h), b),
                                                  headers, st.binary(max_size=32)))
def test_decode_then_dispatch_never_raises_anything_but_protocol_error(agent, frame: bytes) -> None:
    try:
        msg = decode_message(frame)
    except ProtocolError:
        return
    agent.session.dispatch(msg)
    _check(agent)


def test_raw_frames_against_a_real_agent() -> None:
    stats = fuzz_agent.run(1000, seed="ci")
    assert stats.cases == 1000
    assert (stats.deaths, stats.hangs) == (0, 0), stats.failures[:5]
    assert stats.sessions_ended > 0  # out-of-step cases were among them and ended cleanly


# Cases that killed or hung the agent before it checked its messages (seed, index).
REPLAY = [("2", 22), ("2", 46), ("2", 60), ("2", 62), ("2", 75), ("1", 257)]


def test_replay_cases_that_once_killed_the_agent() -> None:
    for seed in sorted({s for s, _ in REPLAY}):
        stats = fuzz_agent.run(0, seed=seed, indices=[i for s, i in REPLAY if s == seed])
        assert (stats.deaths, stats.hangs) == (0, 0), stats.failures
