"""Typed models of what the agent sends: the handshake, every operation's result, bench events.

A device can be broken or hostile, so nothing it says is used before it has been parsed here
("parse, don't validate"). Each agent operation has one model in :data:`RESULT_MODELS`; the
session calls :func:`parse_result` on every result (and :func:`parse_hello`, :func:`parse_event`,
:func:`parse_failure` on the handshake, progress events and error replies), and the code behind
it trusts the types. Anything that does not fit — a string where a number belongs, a list
instead of an object, NaN, a 10 MB string, ``true`` for a count, a missing required field —
becomes a :class:`~fieldkit.errors.DeviceError` with ``code="bad_result"`` (exit code 4) whose
message names the device, the operation and the field::

    line3-cam sent a health result that fieldkit cannot use: cpu.percent: expected a number, got 'abc'

Rules the models follow:

- Strict types: no ``"12"`` for 12, no ``true`` for 1, no ``1`` for ``true``. :data:`Number`
  accepts an int or a float (kept as sent) but never a bool or a string, and only finite values
  of a sane magnitude; :data:`Int` and :data:`Count` are whole numbers (non-negative for Count).
- Bounded: text fields at most 4096 characters (names 256), lists and maps have a length limit.
- Extra keys are kept (``extra="allow"``): a newer agent with more fields still works.
- Optional is everything a real device may lack (a sensor that is not there is ``None`` or
  empty); required is only what the laptop cannot work without.
- ``model_dump()`` leaves out fields the device did not send (``exclude_unset`` is the default
  here), so ``parse_result(op, doc, device=...).model_dump() == doc`` for every valid result:
  code that still works on dicts can migrate one call at a time.
"""

import math
import reprlib
from typing import Annotated, Any, Literal, overload

from pydantic import (
    AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StringConstraints, ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fieldkit.errors import DeviceError

__all__ = [
    "RESULT_MODELS", "EVENT_MODELS", "WireModel", "Number", "Int", "Count", "Text", "Name", "Sha256",
    "HelloHeader", "PingResult", "HealthResult", "StatResult", "HashResult", "RemoveResult", "PutResult",
    "SleepResult", "JournalReadResult", "JournalCheckpointResult", "JournalHead", "JournalChain",
    "BenchModelResult", "BenchResult", "BenchStarted", "BenchProgress", "BenchEvent", "AgentFailure",
    "parse_result", "parse_event", "parse_hello", "parse_failure", "describe_errors",
]

# ---- limits -----------------------------------------------------------------------------------
MAX_TEXT = 4096           # characters: messages, paths, error texts
MAX_NAME = 256            # characters: names, versions, units, providers, ids
MAX_ABS = 2 ** 63         # magnitude of any number (a bigger one is garbage and breaks float math)
MAX_ZONES = 256           # thermal zones, disks, trip points, modules, ...
MAX_CORES = 4096          # per-core readings
MAX_ITEMS = 100_000       # histogram buckets, journal entries per read
SHOWN_ERRORS = 3          # validation problems named in one message
REPR_CHARS = 60           # how much of an offending value a message shows

# ---- field types ------------------------------------------------------------------------------


def _number(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("number_type", "expected a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise PydanticCustomError("number_finite", "expected a finite number")
    if abs(value) > MAX_ABS:
        raise PydanticCustomError("number_range", "number out of range")
    return value


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("int_type", "expected a whole number")
    if abs(value) > MAX_ABS:
        raise PydanticCustomError("number_range", "number out of range")
    return value


def _count(value: Any) -> int:
    value = _int(value)
    if value < 0:
        raise PydanticCustomError("count_negative", "expected a whole number >= 0")
    return value


def _sha256(value: str) -> str:
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise PydanticCustomError("sha256", "expected a sha256 digest (64 lowercase hex digits)")
    return value


def _dim(value: Any) -> int | str | None:
    """One dimension of a model's tensor shape: a size, a symbolic name, or unknown."""
    if value is None:
        return None
    if isinstance(value, str):
        if len(value) > MAX_NAME:
            raise PydanticCustomError("dim_type", "expected a dimension (a whole number or a name)")
        return value
    try:
        return _int(value)
    except PydanticCustomError:
        raise PydanticCustomError("dim_type", "expected a dimension (a whole number or a name)") from None


Number = Annotated[float, PlainValidator(_number)]
"""An int or a float (kept as sent), finite, |x| <= 2**63; never a bool or a numeric string."""
Int = Annotated[int, PlainValidator(_int)]
"""A whole number, |x| <= 2**63; never a bool, a float or a string."""
Count = Annotated[int, PlainValidator(_count)]
"""A whole number >= 0 (sizes in bytes, runs, seqs)."""
Text = Annotated[str, StringConstraints(strict=True, max_length=MAX_TEXT)]
Name = Annotated[str, StringConstraints(strict=True, max_length=MAX_NAME)]
Sha256 = Annotated[str, StringConstraints(strict=True), AfterValidator(_sha256)]
Dim = Annotated[int | str | None, PlainValidator(_dim)]
Flags = Annotated[dict[Name, bool], Field(max_length=MAX_ZONES)]
"""Named on/off flags (throttle bits)."""


class WireModel(BaseModel):
    """Base of every model here: strict types, extra keys kept, and a ``model_dump()`` that
    returns what the device sent (fields it left out stay out)."""

    model_config = ConfigDict(strict=True, extra="allow", protected_namespaces=())

    def model_dump(self, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]
        kwargs.setdefault("exclude_unset", True)
        return super().model_dump(**kwargs)

    def model_dump_json(self, **kwargs: Any) -> str:  # type: ignore[override]
        kwargs.setdefault("exclude_unset", True)
        return super().model_dump_json(**kwargs)


# ---- handshake ----------------------------------------------------------------------------------


class HelloHeader(WireModel):
    """The agent's handshake header (``AgentSession.hello``)."""

    t: Literal["hello"] | None = None
    proto: Int
    """Protocol version; the link refuses a mismatch."""
    agent_version: Name | None = None
    python: Name | None = None
    capabilities: Annotated[dict[Name, Name | None], Field(max_length=MAX_ZONES)] = {}
    """Optional module -> version ("present" when unknown) or None when not installed."""
    ops: Annotated[list[Name], Field(max_length=MAX_ZONES)] = []
    root: Text | None = None
    pid: Int | None = None
    max_frame: Count | None = None
    max_in_flight: Count | None = None


class AgentFailure(WireModel):
    """The ``error`` object of a failed response."""

    code: Name = "failed"
    message: Text = "unknown error"
    detail: dict[str, Any] | None = None


# ---- small operations -----------------------------------------------------------------------------


class PingResult(WireModel):
    time: Number
    """The device's clock (seconds since the epoch): the clock offset is computed from it."""


class SleepResult(WireModel):
    slept: bool | None = None


class StatResult(WireModel):
    path: Text | None = None
    exists: bool
    size: Count | None = None
    """Only when the file exists."""
    partial_size: Count = 0
    """Bytes of ``path + ".part"`` already staged (resumable upload)."""


class HashResult(WireModel):
    path: Text | None = None
    sha256: Sha256
    size: Count


class RemoveResult(WireModel):
    removed: Annotated[list[Text], Field(max_length=MAX_ZONES)] = []


class PutResult(WireModel):
    """What an upload (``DeviceLink.upload``, op ``put``) landed as."""

    path: Text
    size: Count
    sha256: Sha256


# ---- health ---------------------------------------------------------------------------------------


class CpuInfo(WireModel):
    count: Count | None = None
    percent: Number | None = None
    per_core: Annotated[list[Number | None], Field(max_length=MAX_CORES)] = []
    load: Annotated[list[Number], Field(max_length=16)] | None = None
    """1, 5 and 15 minute load averages (None where the OS has none)."""


class CpuFreqCore(WireModel):
    core: Int | None = None
    cur_mhz: Number | None = None
    max_mhz: Number | None = None


class MemoryInfo(WireModel):
    total: Count | None = None
    available: Count | None = None
    used_percent: Number | None = None
    swap_total: Count | None = None
    swap_used: Int | None = None
    swap_used_percent: Number | None = None
    pswpin: Count | None = None
    pswpout: Count | None = None


class DiskUsage(WireModel):
    """One filesystem; when it could not be read: ``available`` false and ``error``, no numbers."""

    label: Name | None = None
    path: Text | None = None
    mount: Text | None = None
    total: Count | None = None
    free: Count | None = None
    used_percent: Number | None = None
    exists: bool | None = None
    available: bool | None = None
    error: Text | None = None

    @model_validator(mode="after")
    def _free_with_percent(self) -> "DiskUsage":
        if self.used_percent is not None and self.free is None:
            raise PydanticCustomError("disk_free", "free is required when used_percent is given")
        return self


class TripPoint(WireModel):
    type: Name | None = None
    temp_c: Number | None = None


class ThermalZone(WireModel):
    zone: Name
    type: Name
    temp_c: Number
    trips: Annotated[list[TripPoint], Field(max_length=MAX_ZONES)] = []


class Throttling(WireModel):
    """Firmware throttle flags (``source`` "vcgencmd") and/or cpufreq capping ("cpufreq")."""

    source: Name | None = None
    raw: Name | None = None
    now: Flags = {}
    since_boot: Flags = {}
    cur_min_mhz: Number | None = None
    cur_max_mhz: Number | None = None
    max_mhz: Number | None = None


class RuntimeInfo(WireModel):
    python: Name | None = None
    python_path: Text | None = None
    onnxruntime: Name | None = None
    providers: Annotated[list[Name], Field(max_length=MAX_ZONES)] = []
    onnxruntime_error: Text | None = None
    modules: Annotated[dict[Name, Name | None], Field(max_length=MAX_ZONES)] = {}


class AgentInfo(WireModel):
    version: Name | None = None
    protocol: Int | None = None
    pid: Int | None = None
    root: Text | None = None


class ServiceState(WireModel):
    unit: Name | None = None
    state: Name | None = None
    detail: Text | None = None


class HealthResult(WireModel):
    """``probes.health``: every reading may be missing (None / empty) on a device without it."""

    time: Number | None = None
    hostname: Name | None = None
    os: Text | None = None
    kernel: Name | None = None
    machine: Name | None = None
    cpu: CpuInfo | None = None
    cpufreq: Annotated[list[CpuFreqCore], Field(max_length=MAX_CORES)] | None = None
    memory: MemoryInfo | None = None
    disks: Annotated[list[DiskUsage], Field(max_length=MAX_ZONES)] = []
    temperatures: Annotated[list[ThermalZone], Field(max_length=MAX_ZONES)] = []
    throttling: Throttling | None = None
    uptime_s: Number | None = None
    runtime: RuntimeInfo | None = None
    agent: AgentInfo | None = None
    service: ServiceState | None = None


# ---- device journal -------------------------------------------------------------------------------


class JournalHead(WireModel):
    journal_id: Name | None = None
    """None while the device's journal is empty."""
    seq: Count
    hash: Sha256


class JournalChain(WireModel):
    """The device's check of its whole journal file (``DeviceJournal.verify``)."""

    ok: bool
    entries: Count | None = None
    bad_seq: Count | None = None
    problem: Name | None = None
    message: Text | None = None


class JournalReadResult(WireModel):
    """``journal_read``. The entries stay plain dicts: the laptop checks each one by its hash."""

    journal_id: Name | None = None
    entries: Annotated[list[dict[str, Any]], Field(max_length=MAX_ITEMS)] = []
    head: JournalHead
    more: bool = False
    chain: JournalChain | None = None


class JournalCheckpointResult(WireModel):
    """``journal_checkpoint``: the laptop checkpoint the device held before (checked by its
    signature), the device entry that recorded the new one, and the device journal's head."""

    previous: dict[str, Any] | None = None
    entry: dict[str, Any] | None = None
    head: JournalHead


# ---- benchmark ------------------------------------------------------------------------------------


class ReleaseInfo(WireModel):
    name: Name | None = None
    version: Name | None = None
    description: Text | None = None
    model: Name | None = None
    """The model file's name (older releases call it ``model_file``)."""
    model_file: Name | None = None
    inputs: Any = None


class BenchModelResult(WireModel):
    """``bench_model``: where an installed model's .onnx file is."""

    name: Name | None = None
    version: Name | None = None
    dir: Text | None = None
    path: Text
    size: Count | None = None
    release: ReleaseInfo = Field(default_factory=ReleaseInfo)


class ModelFacts(WireModel):
    path: Text | None = None
    sha256: Sha256 | None = None
    size_bytes: Count | None = None


class InputSpec(WireModel):
    name: Name | None = None
    shape: Annotated[list[Count], Field(max_length=64)] = []
    dtype: Name | None = None
    model_shape: Annotated[list[Dim], Field(max_length=64)] = []


class OutputSpec(WireModel):
    name: Name | None = None
    shape: Annotated[list[Dim], Field(max_length=64)] = []
    type: Name | None = None


class RunSettings(WireModel):
    """The settings the benchmark process ran with (its ``started`` line)."""

    warmup: Count | None = None
    runs: Count | None = None
    duration_s: Number | None = None
    min_runs: Count | None = None
    max_seconds: Number | None = None
    threads: Int | None = None
    spin: Name | None = None
    providers: Annotated[list[Name], Field(max_length=64)] = []
    rate_hz: Number | None = None
    inputs: Text | None = None
    graph_optimization: Name | None = None
    progress_interval_s: Number | None = None


class BenchStarted(WireModel):
    """The ``started`` event (also kept in the result as ``started``, without model)."""

    event: Name | None = None
    pid: Int | None = None
    model: ModelFacts | None = None
    inputs: Annotated[list[InputSpec], Field(max_length=MAX_ZONES)] = []
    outputs: Annotated[list[OutputSpec], Field(max_length=MAX_ZONES)] = []
    settings: RunSettings | None = None
    session_create_ms: Number | None = None
    onnxruntime: Name | None = None
    providers: Annotated[list[Name], Field(max_length=64)] = []
    python: Name | None = None
    machine: Name | None = None


class BenchProgress(WireModel):
    """A ``progress`` event: phase warmup or run."""

    event: Name | None = None
    phase: Name | None = None
    runs: Count | None = None
    elapsed_s: Number | None = None
    eta_s: Number | None = None
    p50_ms: Number | None = None
    p90_ms: Number | None = None
    p99_ms: Number | None = None
    last_ms: Number | None = None
    temp_c: Number | None = None


class BenchEvent(WireModel):
    """An event of a kind this fieldkit does not know (a newer agent): passed on untouched."""

    event: Name | None = None


class LatencySummary(WireModel):
    """Milliseconds; all None when no run was timed."""

    n: Count | None = None
    min: Number | None = None
    mean: Number | None = None
    std: Number | None = None
    p50: Number | None = None
    p90: Number | None = None
    p95: Number | None = None
    p99: Number | None = None
    p999: Number | None = None
    max: Number | None = None


class LatencyHistogram(WireModel):
    edges_ms: Annotated[list[Number], Field(max_length=MAX_ITEMS)] = []
    counts: Annotated[list[Count], Field(max_length=MAX_ITEMS)] = []


class EarlyStoppingRuns(WireModel):
    p90: Count | None = None
    p99: Count | None = None


class BenchMemory(WireModel):
    available_start: Count | None = None
    available_min: Count | None = None
    available_end: Count | None = None
    swap_in_pages: Int | None = None
    swap_out_pages: Int | None = None


class ThermalSpan(WireModel):
    start: Number
    max: Number
    end: Number


class BenchCpuFreq(WireModel):
    min_mhz: Number | None = None
    max_mhz: Number | None = None
    hw_max_mhz: Number | None = None


class BenchThrottle(WireModel):
    start: Name | None = None
    end: Name | None = None
    now: Flags = {}
    since_boot: Flags = {}
    during_run: Flags = {}


class ResultSettings(WireModel):
    threads: Int | None = None
    spin: Name | None = None
    providers: Annotated[list[Name], Field(max_length=64)] = []


class BenchResult(WireModel):
    """``bench``: the measurement (benchrun's ``result`` line plus the ``started`` facts)."""

    event: Name | None = None
    model: ModelFacts | None = None
    session_create_ms: Number | None = None
    first_run_ms: Number | None = None
    warmup_runs: Count | None = None
    runs: Count
    duration_s: Number | None = None
    stop_reason: Name | None = None
    latency_ms: LatencySummary
    p90_early_stopping_ms: Number | None = None
    p99_early_stopping_ms: Number | None = None
    valid: bool | None = None
    early_stopping_min_runs: EarlyStoppingRuns | None = None
    throughput_ips: Number | None = None
    cpu_percent: Number | None = None
    peak_rss_bytes: Count | None = None
    memory: BenchMemory | None = None
    thermal: Annotated[dict[Name, ThermalSpan], Field(max_length=MAX_ZONES)] = {}
    cpufreq: BenchCpuFreq | None = None
    throttle: BenchThrottle | None = None
    rate_hz: Number | None = None
    deadline_misses: Count | None = None
    late_runs: Count | None = None
    latencies_ms: LatencyHistogram | None = None
    settings: ResultSettings | None = None
    onnxruntime: Name | None = None
    started: BenchStarted | None = None


# ---- registry and entry points ----------------------------------------------------------------------

RESULT_MODELS: dict[str, type[WireModel]] = {
    "ping": PingResult,
    "health": HealthResult,
    "stat": StatResult,
    "hash": HashResult,
    "remove": RemoveResult,
    "put": PutResult,
    "sleep": SleepResult,
    "journal_read": JournalReadResult,
    "journal_checkpoint": JournalCheckpointResult,
    "bench_model": BenchModelResult,
    "bench": BenchResult,
}
"""Operation -> model of its result. A new agent operation gets its model here."""

EVENT_MODELS: dict[str, dict[str, type[WireModel]]] = {
    "bench": {"started": BenchStarted, "progress": BenchProgress},
}
"""Operation -> event kind (the data's ``event`` key) -> model; other kinds are :class:`BenchEvent`."""

_REPR = reprlib.Repr()
_REPR.maxstring = REPR_CHARS
_REPR.maxother = REPR_CHARS
_REPR.maxlong = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 4
_REPR.maxlevel = 2

_EXPECTED = {
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "list_type": "expected a list",
    "literal_error": "unexpected value",
    "missing": "missing",
}


def _short(value: Any) -> str:
    try:
        text = _REPR.repr(value)
    except (ValueError, RecursionError):  # e.g. an int beyond str()'s digit limit
        return f"a {type(value).__name__} that cannot be shown"
    return text if len(text) <= REPR_CHARS else text[: REPR_CHARS - 1] + "…"


def _where(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        text = str(part)
        if text == "[key]":  # pydantic's marker for a bad map key; the key itself came just before
            out += " (key)"
            continue
        if len(text) > 40:
            text = text[:39] + "…"
        out += ("." if out else "") + text
    return out


def _problem(err: Any) -> str:
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    if kind == "missing":
        what = "missing"
    elif kind in ("too_long", "string_too_long"):
        limit = ctx.get("max_length")
        if isinstance(value, str):
            what = f"too long: {len(value)} characters, at most {limit}"
        else:
            size = len(value) if hasattr(value, "__len__") else ctx.get("actual_length")
            what = f"too many items: {size if size is not None else 'more than ' + str(limit)}, at most {limit}"
    else:
        text = _EXPECTED.get(kind) or str(err.get("msg") or kind)
        if kind == "literal_error" and ctx.get("expected"):
            text = f"expected {ctx['expected']}"
        what = f"{text[:1].lower()}{text[1:]}, got {_short(value)}"
    where = _where(tuple(err.get("loc") or ()))
    return f"{where}: {what}" if where else what


def describe_errors(exc: ValidationError, limit: int = SHOWN_ERRORS) -> list[str]:
    """The first ``limit`` problems as ``"field.path: what was wrong"`` lines."""
    return [_problem(e) for e in exc.errors(include_url=False)[:limit]]


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def _validate(model: type[WireModel], doc: Any, device: str, what: str, op: str) -> WireModel:
    try:
        return model.model_validate(doc)
    except ValidationError as exc:
        problems = describe_errors(exc)
        more = exc.error_count() - len(problems)
        text = "; ".join(problems) + (f" (and {more} more problem{'s' if more != 1 else ''})" if more > 0 else "")
        err = DeviceError(f"{device} sent {_article(what)} {what} that fieldkit cannot use: {text}", code="bad_result",
                          hint="the agent on the device is damaged or not one this fieldkit knows; update it "
                               "(over SSH fieldkit pushes its own agent on connect)")
        err.detail = {"op": op, "problems": problems, "count": exc.error_count()}  # type: ignore[attr-defined]
        raise err from None
    except RecursionError:
        err = DeviceError(f"{device} sent {_article(what)} {what} nested too deeply for fieldkit to read",
                          code="bad_result")
        err.detail = {"op": op, "problems": ["nested too deeply"], "count": 1}  # type: ignore[attr-defined]
        raise err from None


@overload
def parse_result(op: Literal["ping"], doc: Any, *, device: str) -> PingResult: ...
@overload
def parse_result(op: Literal["health"], doc: Any, *, device: str) -> HealthResult: ...
@overload
def parse_result(op: Literal["stat"], doc: Any, *, device: str) -> StatResult: ...
@overload
def parse_result(op: Literal["hash"], doc: Any, *, device: str) -> HashResult: ...
@overload
def parse_result(op: Literal["remove"], doc: Any, *, device: str) -> RemoveResult: ...
@overload
def parse_result(op: Literal["put"], doc: Any, *, device: str) -> PutResult: ...
@overload
def parse_result(op: Literal["sleep"], doc: Any, *, device: str) -> SleepResult: ...
@overload
def parse_result(op: Literal["journal_read"], doc: Any, *, device: str) -> JournalReadResult: ...
@overload
def parse_result(op: Literal["journal_checkpoint"], doc: Any, *, device: str) -> JournalCheckpointResult: ...
@overload
def parse_result(op: Literal["bench_model"], doc: Any, *, device: str) -> BenchModelResult: ...
@overload
def parse_result(op: Literal["bench"], doc: Any, *, device: str) -> BenchResult: ...
@overload
def parse_result(op: str, doc: Any, *, device: str) -> WireModel: ...


def parse_result(op: str, doc: Any, *, device: str) -> WireModel:
    """Parse the result of agent operation ``op`` sent by ``device`` into its model.

    Raises DeviceError (code ``bad_result``) when the device sent something unusable, and
    ValueError when ``op`` has no model (a programming error: add it to RESULT_MODELS).
    """
    model = RESULT_MODELS.get(op)
    if model is None:
        raise ValueError(f"no result model for agent operation {op!r} (known: {', '.join(sorted(RESULT_MODELS))})")
    return _validate(model, doc, device, f"{op} result", op)


def parse_event(op: str, data: Any, *, device: str) -> WireModel:
    """Parse the data of a progress event of ``op``. Known kinds (``data["event"]``) get their
    model; an unknown kind, or an op without event models, gets :class:`BenchEvent` (an object
    whose ``event`` is a short string, otherwise untouched)."""
    kind = data.get("event") if isinstance(data, dict) else None
    model = EVENT_MODELS.get(op, {}).get(kind) if isinstance(kind, str) else None
    return _validate(model or BenchEvent, data, device, f"{op} progress event", op)


def parse_hello(doc: Any, *, device: str) -> HelloHeader:
    """Parse the agent's handshake header. Check ``proto`` first if a protocol mismatch should
    be reported as such: a future protocol may change the rest of the header."""
    return _validate(HelloHeader, doc, device, "handshake", "hello")  # type: ignore[return-value]


def parse_failure(op: str, doc: Any, *, device: str) -> AgentFailure:
    """Parse the ``error`` object of a failed response to ``op``."""
    return _validate(AgentFailure, doc, device, f"{op} error reply", op)  # type: ignore[return-value]
