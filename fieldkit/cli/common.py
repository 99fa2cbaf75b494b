"""What the command modules of :mod:`fieldkit.cli` share: JSON output and turning models into dicts."""

from __future__ import annotations

import json
from typing import Any


def emit_json(doc: Any, *, ensure_ascii: bool = True) -> None:
    """Print ``doc`` as the command's one JSON document on stdout."""
    print(json.dumps(doc, indent=2, default=str, ensure_ascii=ensure_ascii))


def model_dict(obj: Any) -> dict:
    """A pydantic model, a dataclass or a mapping as a plain dict for JSON output."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    from dataclasses import asdict, is_dataclass
    return asdict(obj) if is_dataclass(obj) else dict(obj)


def confirm(question: str, *, yes: bool) -> bool:
    """Ask ``question`` on the terminal (``--yes`` answers for scripts). Without a terminal and
    without ``--yes`` it is a usage error (exit 2), never a silent no and never Ctrl-C's 130."""
    import sys

    from fieldkit.errors import ConfigError

    if yes:
        return True
    if not sys.stdin.isatty():
        raise ConfigError(f"{question.rstrip('?')}: there is no terminal to confirm on; nothing was changed",
                          hint="add --yes to confirm in a script")
    answer = input(f"{question} [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def open_device(spec: str, home: Any, timeout: float = 15.0) -> Any:
    """The device session a command works through (see fieldkit.devices.open_session)."""
    from fieldkit.devices import open_session

    return open_session(spec, home, timeout=timeout)
