"""Field types and the base model every wire model uses (strict, bounded, extra keys kept)."""

import math
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PlainValidator, StringConstraints
from pydantic_core import PydanticCustomError

__all__ = ["MAX_TEXT", "MAX_NAME", "MAX_ABS", "MAX_ZONES", "MAX_CORES", "MAX_ITEMS", "SHOWN_ERRORS", "REPR_CHARS", "Number", "Int", "Count", "Text", "Name", "Sha256", "Dim", "Flags", "WireModel"]

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
