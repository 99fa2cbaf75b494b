"""What the Models screen tells the fleet, apart from the Models screen itself: the fleet's first
paint imports this, not screens.models and its widgets (docs/performance.md)."""

from __future__ import annotations

from textual.message import Message


class ModelsListed(Message):
    """What is installed on ``device`` (None with ``error`` when it could not be read). Also sent to
    the other screens of the stack, so the fleet's model column follows what this screen saw."""

    def __init__(self, device: str, models: list[dict] | None, error: Exception | None = None) -> None:
        super().__init__()
        self.device, self.models, self.error = device, models, error


def active_summary(models: list[dict] | None) -> str:
    """``defects 2.1.0`` (``+N`` more models); ``-`` for none. The fleet's model column."""
    if models is None:
        return ""
    live = [m for m in models if m.get("active")]
    if not live:
        return "-" if not models else f"{models[0]['name']} (none active)"
    first = live[0]
    more = f" +{len(live) - 1}" if len(live) > 1 else ""
    return f"{first['name']} {first['active']}{more}"
