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
