"""One check type for everything fieldkit judges: health readings, benchmark verdicts, checklist steps.

A :class:`Check` has a name, a status, a message a technician can act on, the measured value and
the limit it was held against. Health speaks ``ok / warn / crit``, a benchmark verdict ``pass /
warn / fail``; both share one severity order, so "the worst of these" means the same everywhere::

    n/a  <  ok = pass  <  warn  <  crit = fail  <  unreachable

``n/a`` (no such sensor, nothing to measure) never makes a result worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

SEVERITY: dict[str, int] = {"n/a": -1, "ok": 0, "pass": 0, "warn": 1, "crit": 2, "fail": 2, "unreachable": 3}
"""Each status word's rank; a higher rank is worse."""


def severity(status: str) -> int:
    """Rank of ``status`` (unknown words rank as ``warn``: something to look at, not a pass)."""
    return SEVERITY.get(status, 1)


def worst(statuses: Iterable[str], default: str = "ok") -> str:
    """The worst of ``statuses`` by :data:`SEVERITY`, ignoring ``n/a``; ``default`` when none counts."""
    counted = [s for s in statuses if s != "n/a"]
    return max(counted, key=severity) if counted else default


@dataclass
class Check:
    """One judged reading: ``status`` is one of :data:`SEVERITY`'s words."""

    name: str
    status: str
    message: str
    value: Any = None
    limit: Any = None

    def to_json(self) -> dict:
        """The documented JSON of a check. ``threshold`` (health's word) and ``limit`` (the bench's)
        carry the same value, so neither document loses a field it always had."""
        return {"name": self.name, "status": self.status, "value": self.value, "message": self.message,
                "limit": self.limit, "threshold": self.limit}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Check":
        limit = doc.get("limit", doc.get("threshold"))
        return cls(str(doc.get("name", "")), str(doc.get("status", "warn")), str(doc.get("message", "")),
                   doc.get("value"), limit)
