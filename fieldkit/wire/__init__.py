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

import reprlib
from typing import Any, Literal, overload

from pydantic import ValidationError

from fieldkit.errors import DeviceError
# The models are this package's face: ``wire.HealthResult``, ``wire.Count``, ...
from fieldkit.wire.agentupgrade import *  # noqa: F403
from fieldkit.wire.bench import *  # noqa: F403
from fieldkit.wire.identity import *  # noqa: F403
from fieldkit.wire.ops import *  # noqa: F403
from fieldkit.wire.release import *  # noqa: F403
from fieldkit.wire.types import *  # noqa: F403

# ---- registry and entry points ----------------------------------------------------------------------

RESULT_MODELS: dict[str, type[WireModel]] = {
    "ping": PingResult,
    "health": HealthResult,
    "identity": IdentityResult,
    "stat": StatResult,
    "hash": HashResult,
    "remove": RemoveResult,
    "put": PutResult,
    "sleep": SleepResult,
    "journal_read": JournalReadResult,
    "journal_checkpoint": JournalCheckpointResult,
    "bench_model": BenchModelResult,
    "bench": BenchResult,
    **RELEASE_RESULT_MODELS,
    **AGENT_UPGRADE_RESULT_MODELS,
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
def parse_result(op: Literal["identity"], doc: Any, *, device: str) -> IdentityResult: ...
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
