"""Names a technician gives things: devices, groups and profiles share one pattern, and a device
without a profile gets :data:`DEFAULT_PROFILE`. Apart from the profile models (pydantic) so the
inventory loads light (the TUI's first screen)."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
"""Profile names (and device names in the inventory): letters, digits, ``.``, ``_``, ``-``; 1-63 chars."""

DEFAULT_PROFILE = "generic-linux"
