"""fieldkit.wire: every agent result is parsed at the boundary; a bad one is a DeviceError.

The valid results come from the real agent (a subprocess over a local link, real /proc readings,
a real journal file, a real ONNX benchmark); the hostile ones are those results damaged by hand
and by Hypothesis. Whatever a device sends, the only exception a parser may raise is
DeviceError(code="bad_result"), and its message names the device, the operation and the field.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from models import models  # noqa: F401  (session fixture)

from fieldkit import wire
from fieldkit.agent import devjournal, probes
from fieldkit.errors import DeviceError

DEVICE = "line3-cam"
EXAMPLES = int(os.environ.get("FIELDKIT_FUZZ_EXAMPLES", "200"))  # raise it for a soak run
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ---- real results from the real agent ----------------------------------------------------------------

@pytest.fixture(scope="session")
def real(tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path]) -> dict[str, Any]:
    """One run of every operation the laptop uses, against the real agent over a local link."""
    from fieldkit.link.client import DeviceLink
    from fieldkit.link.local import spawn_local_agent
    from fieldkit.sim import make_device_root

    base = tmp_path_factory.mktemp("wire")
    root = make_device_root(base / "device")
    release = root / "var/lib/fieldkit/models/anomaly/1.2.0"
    release.mkdir(parents=True)
    shutil.copy(models["anomaly-tabular"], release / "anomaly.onnx")
    (release / "release.json").write_text(json.dumps({
        "name": "anomaly", "version": "1.2.0", "description": "tabular anomaly score",
        "model_file": "anomaly.onnx", "inputs": [{"name": "x", "shape": [1, 16]}], "security_version": 1}))
    (release.parent / "current").symlink_to("1.2.0")
    blob = base / "blob.bin"
    blob.write_bytes(b"fieldkit" * 5000)

    link = DeviceLink(spawn_local_agent(str(root), base / "cache"), name=DEVICE, transport="local").start()
    out: dict[str, Any] = {}
    try:
        out["hello"] = dict(link.agent)
        out["ping"] = link.call("ping")
        out["health"] = link.call("health", {"sample_s": 0.05, "service_unit": "fieldkit-infer.service",
                                             "extra_disks": {"gone": "/no/such/dir"}})
        out["put"] = link.upload(blob, "/var/lib/fieldkit/staging/blob.bin")
        out["stat"] = link.call("stat", {"path": "/var/lib/fieldkit/staging/blob.bin"})
        out["stat missing"] = link.call("stat", {"path": "/var/lib/fieldkit/staging/nothing.bin"})
        out["hash"] = link.call("hash", {"path": "/var/lib/fieldkit/staging/blob.bin"})
        out["remove"] = link.call("remove", {"path": "/var/lib/fieldkit/staging/blob.bin"})
        out["sleep"] = link.call("sleep", {"seconds": 0.01})
        out["journal_read empty"] = link.call("journal_read", {"verify": True})
        checkpoint = {"journal_id": "a" * 32, "seq": 3, "head": "b" * 64, "time": "2026-01-01T00:00:00.000000Z",
                      "signature": "c2ln", "witness": DEVICE}
        out["journal_checkpoint first"] = link.call("journal_checkpoint", {"checkpoint": checkpoint})
        out["journal_checkpoint"] = link.call("journal_checkpoint", {"checkpoint": dict(checkpoint, seq=4)})
        out["journal_read"] = link.call("journal_read", {"verify": True, "since": 1})
        out["bench_model"] = link.call("bench_model", {"name": "anomaly"})
        events: list[dict] = []
        out["bench"] = link.call("bench", {"model": out["bench_model"]["path"], "duration_s": 0.2, "min_runs": 300,
                                           "warmup": 3, "progress_interval_s": 0.01, "max_seconds": 30},
                                 on_event=events.append, timeout=120)
        out["bench events"] = events
    finally:
        link.close()
    return out


def _op(key: str) -> str:
    return key.split(" ")[0]


RESULT_KEYS = ["ping", "health", "put", "stat", "stat missing", "hash", "remove", "sleep", "journal_read empty",
               "journal_checkpoint first", "journal_checkpoint", "journal_read", "bench_model", "bench"]


def test_every_agent_operation_has_a_model() -> None:
    """A new agent operation needs its result model in wire.RESULT_MODELS."""
    import io

    from fieldkit.agent.server import AgentSession

    ops = set(AgentSession(io.BytesIO(), root="/").hello()["ops"])
    assert ops <= set(wire.RESULT_MODELS), sorted(ops - set(wire.RESULT_MODELS))


@pytest.mark.parametrize("key", RESULT_KEYS)
def test_real_results_parse_and_round_trip(real: dict[str, Any], key: str) -> None:
    doc = real[key]
    parsed = wire.parse_result(_op(key), doc, device=DEVICE)
    assert isinstance(parsed, wire.RESULT_MODELS[_op(key)])
    assert parsed.model_dump() == doc
    assert json.loads(parsed.model_dump_json()) == json.loads(json.dumps(doc))


def test_real_health_is_typed(real: dict[str, Any]) -> None:
    h = wire.parse_result("health", real["health"], device=DEVICE)
    assert isinstance(h, wire.HealthResult)
    assert h.cpu is not None and isinstance(h.cpu.count, int) and h.cpu.count >= 1
    assert h.cpu.window_s is not None and h.cpu.excluded_self_percent is not None and h.cpu.method
    assert h.memory is not None and h.memory.total == real["health"]["memory"]["total"]
    assert [d.label for d in h.disks] == ["root", "models", "gone"]
    assert all(isinstance(z.temp_c, (int, float)) for z in h.temperatures)
    assert h.agent is not None and h.agent.version == real["hello"]["agent_version"]
    assert h.runtime is not None and h.runtime.onnxruntime  # the venv has onnxruntime
    # a filesystem that could not be read keeps its own shape
    gone = h.disks[2].model_dump()
    assert gone == real["health"]["disks"][2]


def test_real_journal_results_are_typed(real: dict[str, Any]) -> None:
    r = wire.parse_result("journal_read", real["journal_read"], device=DEVICE)
    assert isinstance(r, wire.JournalReadResult)
    assert r.head.seq == 2 and isinstance(r.head.seq, int) and len(r.head.hash) == 64
    assert r.more is False and r.chain is not None and r.chain.ok is True
    assert [e["seq"] for e in r.entries] == [1, 2]
    # entries are the device's dicts, untouched, so their hashes still check out
    assert all(devjournal.entry_hash(e) == e["hash"] for e in r.entries)
    empty = wire.parse_result("journal_read", real["journal_read empty"], device=DEVICE)
    assert empty.head.seq == 0 and empty.head.journal_id is None and empty.entries == []
    c = wire.parse_result("journal_checkpoint", real["journal_checkpoint"], device=DEVICE)
    assert c.previous is not None and c.previous["seq"] == 3
    assert c.head.seq == 2 and c.head.journal_id == r.journal_id
    assert wire.parse_result("journal_checkpoint", real["journal_checkpoint first"], device=DEVICE).previous is None


def test_real_bench_result_and_events_are_typed(real: dict[str, Any]) -> None:
    b = wire.parse_result("bench", real["bench"], device=DEVICE)
    assert isinstance(b, wire.BenchResult)
    assert b.runs >= 300 and b.latency_ms.n == b.runs and b.latency_ms.p99 is not None
    assert b.started is not None and b.started.settings is not None and b.started.settings.min_runs == 300
    assert b.latencies_ms is not None and sum(b.latencies_ms.counts) == b.runs
    found = wire.parse_result("bench_model", real["bench_model"], device=DEVICE)
    assert isinstance(found, wire.BenchModelResult)
    assert found.version == "1.2.0" and found.release.model_file == "anomaly.onnx"
    assert found.release.model_dump()["inputs"] == [{"name": "x", "shape": [1, 16]}]

    events = real["bench events"]
    assert events and events[0]["event"] == "started"
    kinds = []
    for ev in events:
        parsed = wire.parse_event("bench", ev, device=DEVICE)
        assert parsed.model_dump() == ev
        kinds.append(type(parsed))
    assert kinds[0] is wire.BenchStarted
    assert set(kinds[1:]) <= {wire.BenchProgress}
    started = wire.parse_event("bench", events[0], device=DEVICE)
    assert started.model is not None and started.model.sha256 == b.model.sha256  # type: ignore[union-attr]


def test_real_handshake_parses(real: dict[str, Any]) -> None:
    hello = wire.parse_hello(real["hello"], device=DEVICE)
    assert hello.proto == 1 and "health" in hello.ops and "put" in hello.ops
    assert set(hello.capabilities) == set(probes.OPTIONAL_MODULES)
    assert hello.model_dump() == real["hello"]


def test_newer_agent_fields_are_kept(real: dict[str, Any]) -> None:
    doc = copy.deepcopy(real["health"])
    doc["npu"] = {"name": "hailo8", "temp_c": 51.0}
    doc["cpu"]["governor"] = "schedutil"
    h = wire.parse_result("health", doc, device=DEVICE)
    assert h.model_dump() == doc
    assert h.model_extra == {"npu": {"name": "hailo8", "temp_c": 51.0}}


def test_a_device_without_sensors_is_fine() -> None:
    doc = {"time": 1.0, "hostname": "tiny", "cpu": {"count": None, "percent": None, "per_core": [], "load": None},
           "cpufreq": None, "memory": None, "disks": [], "temperatures": [],
           "throttling": {"source": None, "raw": None, "now": {}, "since_boot": {}}, "uptime_s": None,
           "runtime": {"python": "3.9.2", "onnxruntime": None, "providers": [],
                       "onnxruntime_error": "onnxruntime is not installed", "modules": {"numpy": None}},
           "agent": {"version": "0.1.0"}, "service": None}
    assert wire.parse_result("health", doc, device=DEVICE).model_dump() == doc
    assert wire.parse_result("health", {}, device=DEVICE).model_dump() == {}


# ---- hostile results ------------------------------------------------------------------------------------

def _set(doc: Any, path: tuple, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def _drop(doc: Any, path: tuple) -> Any:
    doc = copy.deepcopy(doc)
    node = doc
    for part in path[:-1]:
        node = node[part]
    del node[path[-1]]
    return doc


def _bad(op: str, doc: Any) -> DeviceError:
    with pytest.raises(DeviceError) as info:
        if op == "hello":
            wire.parse_hello(doc, device=DEVICE)
        elif op.endswith(" event"):
            wire.parse_event(op.split()[0], doc, device=DEVICE)
        else:
            wire.parse_result(op, doc, device=DEVICE)
    exc = info.value
    assert exc.code == "bad_result" and exc.exit_code == 4
    assert exc.message.startswith(f"{DEVICE} sent ")
    assert "Traceback" not in str(exc)
    return exc


DROP = object()  # as a value: delete the key
WHOLE = ()  # as a path: replace the whole result

HOSTILE = [
    # (operation, where the real result is damaged, with what, what the message must say)
    ("health", ("cpu", "percent"), "abc",
     "line3-cam sent a health result that fieldkit cannot use: cpu.percent: expected a number, got 'abc'"),
    ("health", ("cpu",), [1, 2, 3], "health result that fieldkit cannot use: cpu: expected an object, got [1, 2, 3]"),
    ("health", ("cpu", "load"), {"1m": 0.5}, "cpu.load: expected a list"),
    ("health", ("cpu", "count"), True, "cpu.count: expected a whole number, got True"),
    ("health", ("cpu", "excluded_self_percent"), "3 %", "cpu.excluded_self_percent: expected a number, got '3 %'"),
    ("health", ("memory", "used_percent"), float("nan"), "memory.used_percent: expected a finite number, got nan"),
    ("health", ("uptime_s",), float("inf"), "uptime_s: expected a finite number, got inf"),
    ("health", ("memory", "total"), 10 ** 30, "memory.total: number out of range"),
    ("health", ("memory", "available"), "24706830336",
     "memory.available: expected a whole number, got '24706830336'"),
    ("health", ("hostname",), "x" * 10_000_000, "hostname: too long: 10000000 characters, at most 256"),
    ("health", ("disks",), [{"label": "root"}] * 5000, "disks: too many items: 5000, at most 256"),
    ("health", ("disks", 0, "free"), None, "disks[0]: free is required when used_percent is given"),
    ("health", ("temperatures",), [{"zone": "thermal_zone0", "type": "cpu"}], "temperatures[0].temp_c: missing"),
    ("health", ("temperatures",), [{"zone": "z", "type": "cpu", "temp_c": None}],
     "temperatures[0].temp_c: expected a number, got None"),
    ("health", ("throttling",), {"source": "vcgencmd", "now": {"throttled": "yes"}},
     "throttling.now.throttled: expected true or false, got 'yes'"),
    ("health", ("runtime", "providers"), "CPUExecutionProvider",
     "runtime.providers: expected a list, got 'CPUExecutionProvider'"),
    ("health", ("runtime", "providers"), [1], "runtime.providers[0]: expected a string, got 1"),
    ("health", ("service",), "active", "service: expected an object, got 'active'"),
    ("health", WHOLE, [{"cpu": {}}], "health result that fieldkit cannot use: expected an object, got [{'cpu': {}}]"),
    ("health", WHOLE, None, "health result that fieldkit cannot use: expected an object, got None"),
    ("health", WHOLE, "ok", "expected an object, got 'ok'"),
    ("ping", ("time",), True, "ping result that fieldkit cannot use: time: expected a number, got True"),
    ("ping", ("time",), "1700000000.5", "time: expected a number, got '1700000000.5'"),
    ("ping", ("time",), DROP, "ping result that fieldkit cannot use: time: missing"),
    ("journal_read", ("head", "seq"), "7",
     "journal_read result that fieldkit cannot use: head.seq: expected a whole number, got '7'"),
    ("journal_read", ("head", "seq"), 2.0, "head.seq: expected a whole number, got 2.0"),
    ("journal_read", ("head", "seq"), -1, "head.seq: expected a whole number >= 0, got -1"),
    ("journal_read", ("head", "hash"), "not-a-hash", "head.hash: expected a sha256 digest"),
    ("journal_read", ("head",), DROP, "head: missing"),
    ("journal_read", ("more",), "yes", "more: expected true or false, got 'yes'"),
    ("journal_read", ("entries",), {"1": {}}, "entries: expected a list"),
    ("journal_read", ("entries",), [[1, 2]], "entries[0]: expected an object, got [1, 2]"),
    ("journal_read", ("chain",), {"ok": 1}, "chain.ok: expected true or false, got 1"),
    ("journal_checkpoint", ("head", "seq"), None,
     "journal_checkpoint result that fieldkit cannot use: head.seq: expected a whole number, got None"),
    ("journal_checkpoint", ("previous",), "checkpoint", "previous: expected an object"),
    ("stat", ("exists",), "true", "stat result that fieldkit cannot use: exists: expected true or false, got 'true'"),
    ("stat", ("partial_size",), -5, "partial_size: expected a whole number >= 0, got -5"),
    ("hash", ("sha256",), "ZZ" * 32, "hash result that fieldkit cannot use: sha256: expected a sha256 digest"),
    ("put", ("sha256",), DROP, "put result that fieldkit cannot use: sha256: missing"),
    ("put", ("size",), 1.5, "size: expected a whole number, got 1.5"),
    ("remove", ("removed",), "/var/x", "removed: expected a list"),
    ("bench_model", ("release", "model_file"), ["a.onnx"],
     "bench_model result that fieldkit cannot use: release.model_file: expected a string"),
    ("bench_model", ("path",), DROP, "path: missing"),
    ("bench", ("latency_ms", "p99"), "fast",
     "bench result that fieldkit cannot use: latency_ms.p99: expected a number, got 'fast'"),
    ("bench", ("runs",), "300", "runs: expected a whole number, got '300'"),
    ("bench", ("thermal",), {"cpu": {"start": 40.0, "max": None, "end": 41.0}},
     "thermal.cpu.max: expected a number, got None"),
    ("bench", ("memory",), {"available_min": "lots"}, "memory.available_min: expected a whole number, got 'lots'"),
    ("bench", ("latencies_ms",), {"edges_ms": [], "counts": [0] * 200_000},
     "latencies_ms.counts: too many items: 200000, at most 100000"),
    ("bench", ("valid",), "true", "valid: expected true or false"),
    ("hello", ("ops",), "health", "sent a handshake that fieldkit cannot use: ops: expected a list, got 'health'"),
    ("hello", ("proto",), "1", "handshake that fieldkit cannot use: proto: expected a whole number, got '1'"),
    ("hello", ("capabilities",), ["numpy"], "capabilities: expected an object"),
]


@pytest.mark.parametrize("op, path, value, says", HOSTILE, ids=[h[3][-50:] for h in HOSTILE])
def test_hostile_results_are_device_errors_naming_the_field(real: dict[str, Any], op: str, path: tuple,
                                                            value: Any, says: str) -> None:
    if path == WHOLE:
        doc = value
    elif value is DROP:
        doc = _drop(real[op], path)
    else:
        doc = _set(real[op], path, value)
    exc = _bad(op, doc)
    assert says in exc.message
    assert exc.detail["op"] == op  # type: ignore[attr-defined]
    assert len(exc.message) < 600  # a 10 MB string is not echoed back


def test_bench_events_are_checked(real: dict[str, Any]) -> None:
    started, *rest = real["bench events"]
    exc = _bad("bench event", _set(started, ("model", "sha256"), 42))
    assert "bench progress event that fieldkit cannot use: model.sha256: expected a string, got 42" in exc.message
    exc = _bad("bench event", {"event": "progress", "phase": "run", "runs": 10, "elapsed_s": "1 s"})
    assert "elapsed_s: expected a number, got '1 s'" in exc.message
    exc = _bad("bench event", ["progress"])
    assert "expected an object" in exc.message
    exc = _bad("bench event", {"event": {"kind": "progress"}})
    assert "event: expected a string" in exc.message
    # a kind this fieldkit does not know is passed on untouched
    ev = {"event": "calibrating", "step": 3, "of": 9}
    assert wire.parse_event("bench", ev, device=DEVICE).model_dump() == ev


def test_at_most_three_problems_are_named_and_values_are_cut(real: dict[str, Any]) -> None:
    doc = copy.deepcopy(real["health"])
    doc["cpu"] = {"percent": "a", "count": "b", "load": "c", "per_core": "d"}
    doc["uptime_s"] = "x" * 500
    exc = _bad("health", doc)
    assert exc.message.count(": expected") == 3
    assert exc.message.endswith("(and 2 more problems)")
    doc = {"time": "y" * 500}
    exc = _bad("ping", doc)
    shown = exc.message.split("got ", 1)[1]
    assert len(shown) <= wire.REPR_CHARS and shown.startswith("'yyy") and "..." in shown
    exc = _bad("ping", {"time": {"k%d" % i: list(range(100)) for i in range(100)}})
    assert len(exc.message.split("got ", 1)[1]) <= wire.REPR_CHARS
    exc = _bad("health", {"runtime": {"modules": {"m" * 5000: "1.0"}}})
    assert "runtime.modules." in exc.message and "(key): too long: 5000 characters" in exc.message
    assert len(exc.message) < 300


def test_unknown_operation_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="no result model for agent operation 'frobnicate'"):
        wire.parse_result("frobnicate", {}, device=DEVICE)


def test_failure_replies_parse() -> None:
    reply = {"code": "io_error", "message": "disk full", "detail": {"offset": 3}}
    f = wire.parse_failure("health", reply, device=DEVICE)
    assert (f.code, f.message, f.detail) == ("io_error", "disk full", {"offset": 3})
    assert wire.parse_failure("health", {}, device=DEVICE).model_dump() == {}
    assert wire.parse_failure("health", {}, device=DEVICE).code == "failed"
    with pytest.raises(DeviceError, match="health error reply that fieldkit cannot use: code: expected a str") as info:
        wire.parse_failure("health", {"code": 7}, device=DEVICE)
    assert info.value.code == "bad_result"


def test_a_device_journal_read_directly_parses(tmp_path: Path) -> None:
    """The journal ops straight from devjournal (no agent), including a corrupt line."""
    path = tmp_path / "journal.jsonl"
    for i in range(5):
        devjournal.append_event(str(path), "test.event", {"i": i, "text": "é" * i})
    lines = path.read_bytes().split(b"\n")
    lines[2] = b"not json"  # seq 3 damaged on the device's disk
    path.write_bytes(b"\n".join(lines))
    res = devjournal.read_op(str(path), {"verify": True})
    parsed = wire.parse_result("journal_read", res, device=DEVICE)
    assert parsed.model_dump() == res and {"corrupt_line": 3} in parsed.entries
    assert parsed.chain is not None and parsed.chain.ok is False and parsed.chain.bad_seq == 3
    res = devjournal.read_op(str(path), {"max_bytes": 300})
    parsed = wire.parse_result("journal_read", res, device=DEVICE)
    assert parsed.model_dump() == res and parsed.more is True and parsed.chain is None


def test_health_probe_directly_parses(tmp_path: Path) -> None:
    from fieldkit.sim import make_device_root

    root = make_device_root(tmp_path / "device")
    raw = probes.health(str(root), [("root", "/"), ("models", "/var/lib/fieldkit/models")], None, 0.05)
    assert wire.parse_result("health", raw, device=DEVICE).model_dump() == raw


# ---- property-based: nothing a device sends raises anything but DeviceError ------------------------------

FIELD_NAMES = sorted({name for model in list(wire.RESULT_MODELS.values()) + [
    wire.HelloHeader, wire.BenchStarted, wire.BenchProgress, wire.AgentFailure, wire.CpuInfo, wire.MemoryInfo,
    wire.DiskUsage, wire.ThermalZone, wire.Throttling, wire.RuntimeInfo, wire.AgentInfo, wire.ServiceState,
    wire.JournalHead, wire.JournalChain, wire.LatencySummary, wire.ThermalSpan, wire.ModelFacts,
    wire.ReleaseInfo, wire.InputSpec, wire.RunSettings, wire.LatencyHistogram, wire.BenchMemory,
] for name in model.model_fields} | {"event"})

scalars = (st.none() | st.booleans() | st.integers() | st.integers(min_value=-(2 ** 70), max_value=2 ** 70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
           | st.sampled_from(["progress", "started", "result", "0" * 64, "abc", "", "1", "nan"]))
keys = st.sampled_from(FIELD_NAMES) | st.text(max_size=8)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=30,
)


def _parse_any(kind: str, doc: Any) -> Any:
    if kind == "hello":
        return wire.parse_hello(doc, device=DEVICE)
    if kind == "failure":
        return wire.parse_failure("health", doc, device=DEVICE)
    if kind == "bench event":
        return wire.parse_event("bench", doc, device=DEVICE)
    return wire.parse_result(kind, doc, device=DEVICE)


def _same_json(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _only_device_errors(kind: str, doc: Any) -> DeviceError | None:
    try:
        parsed = _parse_any(kind, doc)
    except DeviceError as exc:
        assert exc.code == "bad_result" and exc.exit_code == 4
        assert exc.message.startswith(f"{DEVICE} sent ")
        return exc
    assert _same_json(parsed.model_dump(), doc)  # accepted: kept exactly as sent
    return None


PARSERS = sorted(wire.RESULT_MODELS) + ["hello", "failure", "bench event"]


objects = st.dictionaries(keys, json_values, max_size=8)


@FUZZ
@given(doc=json_values | objects)
def test_arbitrary_json_only_ever_raises_device_error(doc: Any) -> None:
    for kind in PARSERS:  # one document, every parser: generating is the slow part
        _only_device_errors(kind, doc)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every node below the top (as a key/index path)."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append(prefix + (k,))
        if len(out) < 5000:
            out.extend(_paths(v, prefix + (k,)))
    return out


MUTATED = [("health", "health"), ("journal_read", "journal_read"), ("journal_checkpoint", "journal_checkpoint"),
           ("bench", "bench"), ("bench_model", "bench_model"), ("hello", "hello"), ("stat", "stat")]


@pytest.mark.parametrize("sample, kind", MUTATED)
@FUZZ
@given(data=st.data())
def test_damaged_real_results_only_raise_device_errors_naming_the_field(real: dict[str, Any], sample: str,
                                                                        kind: str, data: st.DataObject) -> None:
    doc = real[sample]
    path = data.draw(st.sampled_from(_paths(doc)), label="path")
    if data.draw(st.booleans(), label="delete") and isinstance(path[-1], str):
        damaged = _drop(doc, path)
    else:
        damaged = _set(doc, path, data.draw(json_values, label="value"))
    exc = _only_device_errors(kind, damaged)
    if exc is not None:
        first = exc.detail["problems"][0]  # type: ignore[attr-defined]
        top = path[0]
        assert first.startswith(str(top)), (path, first)  # the field that was damaged is named


def test_hostile_values_do_not_leak_into_later_math() -> None:
    """What passes is usable: finite numbers of a sane size, so float math cannot overflow."""
    h = wire.parse_result("health", {"uptime_s": 2 ** 63, "memory": {"total": 2 ** 63, "available": 0}},
                          device=DEVICE)
    assert math.isfinite(h.uptime_s * 1000.0)  # type: ignore[operator]
    assert math.isfinite(h.memory.total / 2 ** 30)  # type: ignore[union-attr,operator]
