"""A checklist file: TOML validated by pydantic; every error names the file, the step and the key.

A checklist is a list of steps a technician goes through on one device::

    name = "rollback"
    title = "Roll a model back to the previous version"
    needs = ["model"]                       # what `checklist run` must be given: model, release, manifest

    [[steps]]
    id = "line-safe"                        # a stable name: answers files and the journal use it
    kind = "confirm"                        # confirm | check | action | record
    title = "Line stopped and locked out?"

    [[steps]]
    id = "smoke"
    kind = "check"
    check = "smoke"                         # health | versions | models_verify | bench | smoke | identity
                                            # | host_key | anchors
    on_fail = "escalate"                    # stop (default) | continue | the id of a later (recovery) step

    [[steps]]
    id = "escalate"
    kind = "confirm"
    recovery = true                         # runs only when a failed step jumps to it
    when = "smoke.failed"                   # optional: run only if an earlier step passed / failed
    title = "Keep the line stopped and call the model owner"

Step kinds and their keys:

=========  =============================================================================================
confirm    ``question`` (optional, else the title); the answer is yes/no with an optional note
check      ``check``: ``health`` (``checks`` = named health checks, all when omitted), ``versions``
           (against the run's signed manifest), ``models_verify``, ``bench`` (``use_case``, ``budget_ms``,
           ``runs``), ``smoke`` (the active model), ``identity`` (hostname/os/machine against the
           profile's arch), ``host_key`` (pinned; n/a off SSH), ``anchors`` (the run's release key trusted)
action     ``action``: ``install`` (the run's release), ``rollback`` (the run's model), ``add_anchor``
           (the run's release key), ``restart_service`` (the profile's inference service)
record     ``record`` = a list of readings: ``health``, ``versions``, ``models``, ``anchors``, ``identity``
=========  =============================================================================================
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.resources
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from fieldkit.errors import ConfigError
from fieldkit.locations import Home
from fieldkit.profiles import read_toml

__all__ = [
    "ACTIONS",
    "CHECKS",
    "NEEDS",
    "READINGS",
    "STEP_KINDS",
    "Checklist",
    "ChecklistError",
    "Step",
    "bundled_dir",
    "get_checklist",
    "list_checklists",
    "load_checklist_file",
    "parse_checklist",
]

STEP_KINDS = ("confirm", "check", "action", "record")
CHECKS = ("health", "versions", "models_verify", "bench", "smoke", "identity", "host_key", "anchors")
ACTIONS = ("install", "rollback", "add_anchor", "restart_service")
READINGS = ("health", "versions", "models", "anchors", "identity")
NEEDS = ("release", "model", "manifest")
STEP_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")

# which keys belong to which kind (anything else set on a step of that kind is an error)
_KIND_KEYS = {
    "confirm": {"question"},
    "check": {"check", "checks", "use_case", "budget_ms", "runs"},
    "action": {"action"},
    "record": {"record"},
}
_COMMON = {"id", "kind", "title", "help", "when", "on_fail", "recovery"}


class ChecklistError(ConfigError):
    """A checklist file that cannot be used; one line per problem, each naming file, step and key."""

    def __init__(self, problems: list[str], hint: str | None = None) -> None:
        super().__init__("\n".join(problems), hint)
        self.problems = problems


class Step(BaseModel):
    """One step of a checklist (see the module docstring for the keys of each kind)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(description="Stable name of the step (answers files, the journal and reports use it).")
    kind: Literal["confirm", "check", "action", "record"] = Field(description="What the step does.")
    title: str = Field(min_length=1, description="One line the technician reads.")
    help: str = Field("", description="More words for the technician (what to look at, whom to call).")
    question: str | None = Field(None, description="confirm: the question (default: the title).")
    check: Literal["health", "versions", "models_verify", "bench", "smoke", "identity", "host_key",
                   "anchors"] | None = Field(None, description="check: what is checked on the device.")
    checks: list[str] = Field(default_factory=list, description="check = health: the named health checks "
                              "that must be ok (all when empty).")
    use_case: str | None = Field(None, description="check = bench: the profile's use case whose budget applies.")
    budget_ms: float | None = Field(None, gt=0, description="check = bench: a latency budget instead of the use case's.")
    runs: int | None = Field(None, ge=10, le=100000, description="check = bench: timed runs (default: the bench's).")
    action: Literal["install", "rollback", "add_anchor", "restart_service"] | None = Field(
        None, description="action: what is changed.")
    record: list[Literal["health", "versions", "models", "anchors", "identity"]] | None = Field(
        None, description="record: the readings captured into the run's record.")
    when: str | None = Field(None, description='Run only if an earlier step passed or failed: "STEP.passed" or '
                             '"STEP.failed".')
    on_fail: str = Field("stop", description='"stop" (default), "continue", or the id of a later step to jump to.')
    recovery: bool = Field(False, description="Runs only when a failed step's on_fail jumps to it.")

    @field_validator("id")
    @classmethod
    def _id(cls, v: str) -> str:
        if not STEP_ID.fullmatch(v):
            raise ValueError("expected 1-63 lowercase letters, digits, '-' or '_', starting with a letter or digit")
        return v

    @property
    def what(self) -> str | None:
        """The step's sub-kind: the check, the action, or None."""
        return self.check if self.kind == "check" else self.action if self.kind == "action" else None

    def to_json(self) -> dict:
        return self.model_dump(mode="json", exclude_defaults=True) | {"id": self.id, "kind": self.kind,
                                                                       "title": self.title}


class Checklist(BaseModel):
    """A checklist: its name, what a run needs, and the steps in order."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    name: str = Field(description="Name of the checklist; must match the file name without .toml.")
    title: str = Field(min_length=1, description="One line saying what the checklist is for.")
    description: str = Field("", description="More words on when to use it.")
    needs: list[Literal["release", "model", "manifest"]] = Field(
        default_factory=list, description="What `checklist run` must be given (--release, --model, --manifest/--key).")
    steps: list[Step] = Field(min_length=1, description="The steps, in order ([[steps]] tables).")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v):
            raise ValueError("expected letters, digits, '.', '_' or '-' (1-63 characters)")
        return v

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def index(self, step_id: str) -> int:
        return next(i for i, s in enumerate(self.steps) if s.id == step_id)

    @property
    def digest(self) -> str:
        from fieldkit.signing import canonical

        return hashlib.sha256(canonical(self.definition())).hexdigest()

    def definition(self) -> dict:
        """The checklist as its file gave it (keys left out stay out): what a run keeps in the journal."""
        return self.model_dump(mode="json", exclude_unset=True)

    def to_json(self) -> dict:
        return {"name": self.name, "title": self.title, "description": self.description, "needs": list(self.needs),
                "steps": [{"id": s.id, "kind": s.kind, "title": s.title} for s in self.steps]}


# ---- errors in technician language -------------------------------------------------------------------
def _shown(value: Any, limit: int = 50) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, bool) else str(value).lower()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _step_label(steps: Any, index: int) -> str:
    raw = steps[index] if isinstance(steps, list) and index < len(steps) else None
    sid = raw.get("id") if isinstance(raw, dict) else None
    return f"step #{index + 1}" + (f' (id = "{sid}")' if isinstance(sid, str) else "")


def _message(err: dict) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return "missing"
    if kind == "extra_forbidden":
        return "unknown key"
    if kind in ("value_error", "assertion_error"):
        return str(ctx.get("error", err["msg"]))
    if kind == "string_type":
        return "expected a string in quotes"
    if kind in ("bool_type", "bool_parsing"):
        return "expected true or false"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "expected a whole number"
    if kind in ("float_type", "float_parsing"):
        return "expected a number"
    if kind == "list_type":
        return "expected a list"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '')}"
    if kind in ("model_type", "dict_type"):
        return "expected a table"
    if kind == "too_short":
        return f"expected at least {ctx.get('min_length')} item(s)"
    if kind == "string_too_short":
        return "expected a non-empty string"
    return err["msg"]


def _problems(source: str, data: dict, exc: ValidationError) -> list[str]:
    out = []
    steps = data.get("steps")
    for err in exc.errors(include_url=False):
        loc = tuple(err["loc"])
        if loc[:1] == ("steps",) and len(loc) >= 2 and isinstance(loc[1], int):
            where = _step_label(steps, loc[1])
            key = ".".join(str(p) for p in loc[2:]) or "(the step)"
        else:
            where, key = "", ".".join(str(p) for p in loc) or "(top level)"
        value = "" if err["type"] == "missing" else f" = {_shown(err.get('input'))}"
        msg = _message(err)
        if err["type"] == "extra_forbidden":
            allowed = list(Step.model_fields) if where else list(Checklist.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            msg += f'; did you mean "{close[0]}"?' if close else f" (expected one of {', '.join(allowed)})"
        out.append(f"{source}: {where + ': ' if where else ''}{key}{value}: {msg}")
    return out


def _flow_problems(source: str, cl: Checklist) -> list[str]:
    """Rules across keys and steps: kind-specific keys, unique ids, `when` and `on_fail` targets."""
    out = []
    seen: dict[str, int] = {}
    ids = [s.id for s in cl.steps]
    for i, s in enumerate(cl.steps):
        where = f"{source}: step #{i + 1} (id = \"{s.id}\")"
        if s.id in seen:
            out.append(f"{where}: id: \"{s.id}\" is already the id of step #{seen[s.id] + 1}; ids must be unique")
        seen.setdefault(s.id, i)
        given = {k for k in s.model_fields_set if k not in _COMMON}
        for key in sorted(given - _KIND_KEYS[s.kind]):
            owner = next((k for k, keys in _KIND_KEYS.items() if key in keys), None)
            out.append(f"{where}: {key}: not a key of a {s.kind} step" + (f" (it belongs to {owner} steps)" if owner else ""))
        required = {"check": "check", "action": "action", "record": "record"}.get(s.kind)
        if required and getattr(s, required) is None:
            choices = {"check": CHECKS, "action": ACTIONS, "record": READINGS}[s.kind]
            out.append(f"{where}: {required}: missing; a {s.kind} step needs {required} = one of "
                       f"{', '.join(choices)}")
        if s.kind == "record" and s.record == []:
            out.append(f"{where}: record: expected at least one reading ({', '.join(READINGS)})")
        if s.kind == "check" and s.check != "health" and s.checks:
            out.append(f"{where}: checks: only a health check names health checks")
        if s.kind == "check" and s.check != "bench" and (s.use_case or s.budget_ms or s.runs):
            out.append(f"{where}: use_case/budget_ms/runs: only a bench check takes them")
        if s.when is not None:
            ref, _, state = s.when.rpartition(".")
            if state not in ("passed", "failed") or not ref:
                out.append(f'{where}: when = {_shown(s.when)}: expected "STEP.passed" or "STEP.failed"')
            elif ref not in ids[:i]:
                hint = difflib.get_close_matches(ref, ids[:i], n=1)
                out.append(f"{where}: when = {_shown(s.when)}: \"{ref}\" is not an earlier step"
                           + (f'; did you mean "{hint[0]}"?' if hint else ""))
        if s.on_fail not in ("stop", "continue"):
            if s.on_fail not in ids:
                hint = difflib.get_close_matches(s.on_fail, ids, n=1)
                out.append(f"{where}: on_fail = {_shown(s.on_fail)}: expected stop, continue or the id of a later "
                           "step" + (f'; did you mean "{hint[0]}"?' if hint else ""))
            elif ids.index(s.on_fail) <= i:
                out.append(f"{where}: on_fail = {_shown(s.on_fail)}: a jump goes forward, to a later step "
                           "(a loop could never end)")
    return out


def parse_checklist(data: Any, source: str, *, expected_name: str | None = None) -> Checklist:
    """Validate a parsed TOML document; ChecklistError (exit 2) lists every problem."""
    if not isinstance(data, dict):
        raise ChecklistError([f"{source}: expected a TOML table at the top level"])
    try:
        cl = Checklist.model_validate(data)
    except ValidationError as exc:
        raise ChecklistError(_problems(source, data, exc), hint="fix the lines above; "
                             "`fieldkit checklist show FILE` re-checks a file") from None
    problems = _flow_problems(source, cl)
    if expected_name is not None and cl.name != expected_name:
        problems.append(f'{source}: name = "{cl.name}": expected "{expected_name}" (the name must match the file name)')
    if problems:
        raise ChecklistError(problems, hint="fix the lines above; `fieldkit checklist show FILE` re-checks a file")
    return cl


def load_checklist_file(path: Path | str) -> Checklist:
    path = Path(path)
    return parse_checklist(read_toml(path), str(path), expected_name=path.stem)


# ---- where checklists come from --------------------------------------------------------------------
def bundled_dir() -> Path:
    """The checklists installed with the package (``fieldkit/checklists/bundled/*.toml``)."""
    res = importlib.resources.files("fieldkit.checklists") / "bundled"
    return Path(str(res))


def _user_dir(home: Home) -> Path:
    return home.root / "checklists"


def list_checklists(home: Home) -> dict[str, tuple[str, Path]]:
    """``{name: (source, path)}``: bundled ones, then the home's ``checklists/`` (which win by name)."""
    found: dict[str, tuple[str, Path]] = {}
    for source, directory in (("bundled", bundled_dir()), ("user", _user_dir(home))):
        if directory.is_dir():
            for p in sorted(directory.glob("*.toml")):
                if p.is_file():
                    found[p.stem] = (source, p)
    return found


def get_checklist(name_or_path: str, home: Home) -> Checklist:
    """A checklist by name (bundled or the home's), or a TOML file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        return load_checklist_file(name_or_path)
    known = list_checklists(home)
    if name_or_path not in known:
        close = difflib.get_close_matches(name_or_path, list(known), n=1)
        raise ConfigError(f"no checklist named {name_or_path!r}; available: {', '.join(sorted(known)) or '(none)'}",
                          hint=f'did you mean "{close[0]}"?' if close else "`fieldkit checklist list` shows them")
    return load_checklist_file(known[name_or_path][1])
