"""Device profiles: what a kind of device looks like and what "healthy" and "fast enough" mean on it.

A profile is a TOML file validated by the pydantic models below (one description per field, unknown
keys refused so a typo never silently falls back to a default). Bundled profiles ship in the
``fieldkit.bundled_profiles`` package (``profiles/`` in a checkout); a file of the same name in
``Home.profiles_dir`` overrides a bundled one.

Every loading error becomes a :class:`ProfileError` (a ``ConfigError``, exit code 2) whose message
has one line per problem naming the file, the key, the value given and what was expected::

    profiles/x.toml: thresholds.temperature_c.warn = "hot": expected a number
"""

from __future__ import annotations

import difflib
import importlib.resources
import json
import re
import types
import typing
from dataclasses import dataclass
from datetime import date, datetime, time
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from fieldkit.errors import ConfigError
from fieldkit.locations import Home

from fieldkit.names import DEFAULT_PROFILE, NAME_PATTERN
from fieldkit.tomlfile import read_toml

__all__ = [
    "DEFAULT_PROFILE",
    "NAME_PATTERN",
    "THRESHOLD_METRICS",
    "DevicePaths",
    "MemoryPolicy",
    "Profile",
    "ProfileError",
    "ProfileInfo",
    "ServiceSpec",
    "Threshold",
    "Thresholds",
    "TransportDefaults",
    "UseCase",
    "bundled_profiles_dir",
    "check_profile_file",
    "get_profile",
    "list_profiles",
    "load_profile_file",
    "read_toml",
]

_UNIT_PATTERN = re.compile(r"[A-Za-z0-9:_.@\\-]+\.service")


class _Strict(BaseModel):
    # strict: TOML already has types, so "85" (a string) is a mistake, not a number.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


# --------------------------------------------------------------------------------------------------
# Models


class Threshold(_Strict):
    """A warn/crit pair for one health metric. Higher is worse; ``warn <= crit``."""

    warn: float = Field(ge=0, description="At or above this value the metric is reported as a warning.")
    crit: float = Field(ge=0, description="At or above this value the metric is reported as critical.")

    @model_validator(mode="after")
    def _warn_not_above_crit(self) -> "Threshold":
        if self.warn > self.crit:
            raise ValueError(f"warn ({_num(self.warn)}) is above crit ({_num(self.crit)}): expected warn <= crit")
        return self

    def level(self, value: float) -> Literal["ok", "warn", "crit"]:
        """Classify a measured value."""
        if value >= self.crit:
            return "crit"
        if value >= self.warn:
            return "warn"
        return "ok"


def _t(warn: float, crit: float, description: str) -> Any:
    return Field(default_factory=lambda: Threshold(warn=warn, crit=crit), description=description)


class Thresholds(_Strict):
    """Health thresholds. A table given in the profile replaces that metric's default entirely."""

    cpu_percent: Threshold = _t(85, 95, "Overall CPU utilisation, percent.")
    load_per_core: Threshold = _t(1.5, 3.0, "1-minute load average divided by the number of cores.")
    memory_used_percent: Threshold = _t(80, 92, "RAM in use (total minus available), percent of total.")
    swap_used_percent: Threshold = _t(20, 50, "Swap in use, percent of swap size (ignored without swap).")
    disk_used_percent: Threshold = _t(85, 95, "Used space on each mounted data filesystem, percent.")
    temperature_c: Threshold = _t(70, 80, "Any thermal zone, degrees Celsius, unless temperature_zones names it.")
    temperature_zones: dict[str, Threshold] = Field(
        default_factory=dict,
        description="Per-zone temperature overrides keyed by thermal zone type (e.g. tj-thermal, x86_pkg_temp).",
    )
    clock_offset_s: Threshold = _t(2, 30, "Absolute difference between device clock and laptop clock, seconds.")

    def temperature_for(self, zone: str) -> Threshold:
        """The temperature threshold for a thermal zone (its override, else ``temperature_c``)."""
        return self.temperature_zones.get(zone, self.temperature_c)


THRESHOLD_METRICS: tuple[str, ...] = (
    "cpu_percent",
    "load_per_core",
    "memory_used_percent",
    "swap_used_percent",
    "disk_used_percent",
    "temperature_c",
    "clock_offset_s",
)
"""The single-threshold metrics of :class:`Thresholds` (``getattr(thresholds, metric)``)."""

class TransportDefaults(_Strict):
    """How to reach a device of this kind when the target does not say."""

    default: Literal["ssh", "serial"] = Field("ssh", description="Link used when a bare host is given.")
    ssh_user: str | None = Field(None, min_length=1, description="SSH user when neither the target nor ~/.ssh/config names one.")
    ssh_port: int = Field(22, ge=1, le=65535, description="SSH port when neither the target nor ~/.ssh/config names one.")
    serial_baud: int = Field(115200, gt=0, description="Console/agent serial speed, bits per second.")
    python: list[str] = Field(
        default_factory=lambda: ["python3", "/usr/bin/python3", "/usr/local/bin/python3"],
        min_length=1,
        description="Interpreters tried on the device to run the agent, in order (Python >= 3.6).",
    )
    become: Literal["sudo"] | None = Field(
        None, description='Over SSH, start the agent with `sudo -n` (never prompts): for a login user that may '
                          'not write the device layout or restart the inference service itself.')

    @field_validator("python")
    @classmethod
    def _no_blank(cls, v: list[str]) -> list[str]:
        for item in v:
            if not item.strip() or any(c.isspace() for c in item):
                raise ValueError(f"{json.dumps(item)} is not a command: expected a program name or absolute path without spaces")
        return v


def _device_path(value: str, *, allow_home: bool = False) -> str:
    if allow_home and value.startswith("~/"):
        rest = PurePosixPath(value[2:])
    elif value.startswith("/"):
        rest = PurePosixPath(value)
    else:
        raise ValueError("expected an absolute path on the device (starting with /" + (" or ~/)" if allow_home else ")"))
    if ".." in rest.parts:
        raise ValueError("expected a path without '..' components")
    return value


class DevicePaths(_Strict):
    """Where fieldkit keeps things on the device (absolute paths on the device, not the laptop)."""

    models: str = Field("/var/lib/fieldkit/models", description="Installed model directories (NAME/VERSION, current, previous).")
    staging: str = Field("/var/lib/fieldkit/staging", description="Resumable partial transfers.")
    trust: str = Field("/etc/fieldkit/trust", description="Public keys (*.pem) allowed to sign models.")
    journal: str = Field("/var/lib/fieldkit/journal.jsonl", description="The device's own hash-chained event log.")
    agent_cache: str = Field("~/.cache/fieldkit", description="Where the pushed agent zipapp is cached (absolute or ~/...).")

    @field_validator("models", "staging", "trust", "journal")
    @classmethod
    def _absolute(cls, v: str) -> str:
        return _device_path(v)

    @field_validator("agent_cache")
    @classmethod
    def _absolute_or_home(cls, v: str) -> str:
        return _device_path(v, allow_home=True)


class MemoryPolicy(_Strict):
    """Memory budgeting for inference."""

    headroom_mb: int = Field(512, ge=0, description="RAM that must stay free for OS, runtime and logging during inference, MiB.")
    shared_gpu_memory: bool = Field(False, description="CPU and GPU share the same RAM (Jetson): GPU allocations count against it.")


class ServiceSpec(_Strict):
    """The device's inference service, if it runs one under systemd."""

    unit: str = Field(description="systemd unit name, e.g. edge-inference.service.")

    @field_validator("unit")
    @classmethod
    def _unit_name(cls, v: str) -> str:
        if not _UNIT_PATTERN.fullmatch(v):
            raise ValueError("expected a systemd unit name ending in .service, e.g. \"edge-inference.service\"")
        return v


class UseCase(_Strict):
    """A latency budget for one application of the device."""

    description: str = Field("", description="What the use case is, in plant language.")
    budget_ms: float = Field(gt=0, description="Latency budget per inference, milliseconds.")
    metric: Literal["p90", "p95", "p99"] = Field("p99", description="Latency statistic that must stay within the budget.")
    rate_hz: float | None = Field(None, gt=0, description="Expected request rate, per second (optional).")


class Profile(_Strict):
    """A kind of device. Only ``name`` and ``description`` are required; the rest defaults to generic-linux."""

    name: str = Field(description="Profile name; must match the file name without .toml.")
    description: str = Field(description="One line a technician recognises the hardware by.")
    arch: str = Field("any", description="CPU architecture (informational): aarch64, x86_64, armv7l, any.")
    transport: TransportDefaults = Field(default_factory=TransportDefaults)
    paths: DevicePaths = Field(default_factory=DevicePaths)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    memory: MemoryPolicy = Field(default_factory=MemoryPolicy)
    service: ServiceSpec | None = Field(None, description="Inference service unit; omit the table for none.")
    use_cases: dict[str, UseCase] = Field(default_factory=dict, description="Latency budgets per use case.")

    _source: Path | None = PrivateAttr(None)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME_PATTERN.fullmatch(v):
            raise ValueError("expected letters, digits, '.', '_' or '-' (1-63 characters, starting with a letter or digit)")
        return v

    @field_validator("use_cases")
    @classmethod
    def _use_case_names(cls, v: dict[str, UseCase]) -> dict[str, UseCase]:
        for key in v:
            if not NAME_PATTERN.fullmatch(key):
                raise ValueError(f"use case name {json.dumps(key)}: expected letters, digits, '.', '_' or '-'")
        return v

    @property
    def source(self) -> Path | None:
        """The file this profile was loaded from (None when built in code)."""
        return self._source

    def use_case(self, name: str) -> UseCase:
        """The named use case, or ConfigError listing the ones this profile has."""
        try:
            return self.use_cases[name]
        except KeyError:
            available = ", ".join(sorted(self.use_cases)) or "(none)"
            close = difflib.get_close_matches(name, list(self.use_cases), n=1)
            hint = f'did you mean "{close[0]}"?' if close else "add a [use_cases.NAME] table to the profile"
            raise ConfigError(
                f'profile "{self.name}" has no use case "{name}"; available: {available}', hint=hint
            ) from None


# --------------------------------------------------------------------------------------------------
# Errors in technician language


class ProfileError(ConfigError):
    """A profile file could not be loaded. ``problems`` holds one line per problem (also the message)."""

    def __init__(self, path: Path | str, problems: list[str], hint: str | None = None) -> None:
        super().__init__("\n".join(problems), hint)
        self.path = Path(path)
        self.problems = problems


def _num(v: Any) -> str:
    return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(part: str | int) -> str:
    if isinstance(part, int):
        return f"[{part}]"
    return part if _BARE_KEY.fullmatch(part) else json.dumps(part)


def _key_path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        k = _key(part)
        out += k if k.startswith("[") or not out else "." + k
    return out or "(top level)"


def _render(value: Any, limit: int = 60) -> str:
    """A value as it would appear in TOML."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (int, float)):
        text = repr(value)
    elif isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
    elif isinstance(value, (datetime, date, time)):
        text = value.isoformat()
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{_key(k)} = {_render(v, limit)}" for k, v in value.items()) + " }"
        text = "{}" if not value else text
    elif isinstance(value, list):
        text = "[" + ", ".join(_render(v, limit) for v in value) + "]"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unwrap_optional(t: Any) -> Any:
    if typing.get_origin(t) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(t) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return t


def _type_at(loc: tuple[str | int, ...]) -> Any:
    """The annotation at a key path inside Profile (None when it cannot be followed)."""
    t: Any = Profile
    for part in loc:
        t = _unwrap_optional(t)
        origin = typing.get_origin(t)
        if isinstance(t, type) and issubclass(t, BaseModel):
            field = t.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            t = field.annotation
        elif origin is dict:
            t = typing.get_args(t)[1]
        elif origin is list:
            t = typing.get_args(t)[0]
        else:
            return None
    return _unwrap_optional(t)


def _describe(t: Any) -> str:
    if t is None:
        return "a value"
    if t is bool:
        return "true or false"
    if t is int:
        return "a whole number"
    if t is float:
        return "a number"
    if t is str:
        return "a string in quotes"
    origin = typing.get_origin(t)
    if origin is Literal:
        return "one of " + ", ".join(json.dumps(a) for a in typing.get_args(t))
    if origin is list:
        if typing.get_args(t)[0] is str:
            return 'a list of strings, e.g. ["python3", "/usr/bin/python3"]'
        return "a list"
    if origin is dict or (isinstance(t, type) and issubclass(t, BaseModel)):
        if t is Threshold:
            return "a table { warn = NUMBER, crit = NUMBER }"
        return "a table"
    return "a value"


def _expectation(err: dict[str, Any]) -> str:
    kind = err["type"]
    ctx = err.get("ctx") or {}
    loc = tuple(err["loc"])
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind in ("float_type", "float_parsing", "finite_number"):
        return "expected a number"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "expected a whole number"
    if kind == "string_type":
        return "expected a string in quotes"
    if kind in ("bool_type", "bool_parsing"):
        return "expected true or false"
    if kind == "list_type":
        return f"expected {_describe(_type_at(loc))}"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected {_describe(_type_at(loc))}"
    if kind == "literal_error":
        return f"expected {_describe(_type_at(loc))}"
    if kind == "greater_than":
        return f"expected a number greater than {_num(ctx.get('gt'))}"
    if kind == "greater_than_equal":
        ge = ctx.get("ge")
        return "expected a number >= 0 (not negative)" if ge == 0 else f"expected a number >= {_num(ge)}"
    if kind == "less_than":
        return f"expected a number less than {_num(ctx.get('lt'))}"
    if kind == "less_than_equal":
        return f"expected a number <= {_num(ctx.get('le'))}"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return "expected a non-empty string"
    return f"expected {_describe(_type_at(loc))} ({err['msg']})"


def _problem_lines(source: str, exc: ValidationError) -> list[str]:
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        key = _key_path(loc)
        kind = err["type"]
        if kind == "missing":
            lines.append(f"{source}: {key}: missing; expected {_describe(_type_at(loc))}")
            continue
        value = _render(err.get("input"))
        if kind == "extra_forbidden":
            parent = _unwrap_optional(_type_at(loc[:-1]))
            allowed = list(parent.model_fields) if isinstance(parent, type) and issubclass(parent, BaseModel) else []
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            guess = f'; did you mean "{close[0]}"?' if close else ""
            where = f"[{_key_path(loc[:-1])}]" if loc[:-1] else "the top level"
            lines.append(
                f"{source}: {key} = {value}: unknown key{guess} "
                f"(expected one of {', '.join(allowed)} in {where})"
            )
            continue
        lines.append(f"{source}: {key} = {value}: {_expectation(err)}")
    return lines


# --------------------------------------------------------------------------------------------------
# Loading


def load_profile_file(path: Path | str) -> Profile:
    """Load and validate one profile file. Errors: :class:`ProfileError` (a ConfigError)."""
    path = Path(path)
    data = read_toml(path)
    problems: list[str] = []
    profile: Profile | None = None
    try:
        profile = Profile.model_validate(data)
    except ValidationError as e:
        problems.extend(_problem_lines(str(path), e))
    name = data.get("name")
    if isinstance(name, str) and name != path.stem:
        problems.append(
            f'{path}: name = {_render(name)}: expected "{path.stem}" (the name must match the file name {path.name})'
        )
    if problems or profile is None:
        raise ProfileError(path, problems, hint="fix the lines above; `fieldkit profiles check FILE` re-checks a file")
    profile._source = path
    return profile


def check_profile_file(path: Path | str) -> Profile:
    """Validate a profile file for `fieldkit profiles check FILE` (same rules as loading)."""
    return load_profile_file(path)


def bundled_profiles_dir() -> Path:
    """The bundled profiles: the installed ``fieldkit.bundled_profiles`` package, else ``<repo>/profiles``."""
    try:
        res = importlib.resources.files("fieldkit.bundled_profiles")
    except ModuleNotFoundError:
        res = None
    if res is not None:
        if isinstance(res, Path):
            return res
        candidate = Path(str(res))
        if candidate.is_dir():
            return candidate
    return Path(__file__).resolve().parent.parent / "profiles"


@dataclass(frozen=True)
class ProfileInfo:
    """One entry of :func:`list_profiles`. ``error`` is set (and description empty) for a broken file."""

    name: str
    description: str
    source: Literal["bundled", "user"]
    path: Path
    error: str | None = None


def _profile_files(home: Home) -> dict[str, tuple[Literal["bundled", "user"], Path]]:
    found: dict[str, tuple[Literal["bundled", "user"], Path]] = {}
    for source, directory in (("bundled", bundled_profiles_dir()), ("user", home.profiles_dir)):
        if directory.is_dir():
            for p in sorted(directory.glob("*.toml")):
                if p.is_file():
                    found[p.stem] = (source, p)  # user entries come second and win
    return found


def list_profiles(home: Home | None = None) -> list[ProfileInfo]:
    """All profiles, sorted by name; a user profile overrides a bundled one of the same name."""
    home = home or Home.current()
    out = []
    for name, (source, path) in sorted(_profile_files(home).items()):
        try:
            p = load_profile_file(path)
            out.append(ProfileInfo(name, p.description, source, path))
        except ConfigError as e:
            out.append(ProfileInfo(name, "", source, path, error=e.message))
    return out


def get_profile(name: str, home: Home | None = None) -> Profile:
    """The named profile (user first, then bundled); unknown -> ConfigError listing what exists."""
    home = home or Home.current()
    files = _profile_files(home)
    if name not in files:
        available = ", ".join(sorted(files)) or "(none)"
        close = difflib.get_close_matches(name, list(files), n=1)
        hint = f'did you mean "{close[0]}"?' if close else f"add your own as {home.profiles_dir / (name + '.toml')}"
        raise ConfigError(f'unknown profile "{name}"; available: {available}', hint=hint)
    return load_profile_file(files[name][1])
