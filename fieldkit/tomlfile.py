"""TOML files a technician writes or edits (profiles, the inventory, checklists, site manifests):
parsed with an error that names the file, the line and the column. No pydantic here: the inventory,
and with it the TUI's first screen, reads its file without loading the profile models."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fieldkit.errors import ConfigError

try:  # Python 3.11+
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # type: ignore[assignment]

_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_EOF = re.compile(r"\s*\(at end of document\)\s*$")


def _require_toml() -> Any:
    if _toml is None:  # pragma: no cover - Python 3.10 without tomli
        raise ConfigError(
            "reading TOML needs Python 3.11+ (tomllib) or the 'tomli' package on Python 3.10",
            hint="run fieldkit with Python 3.11 or newer, or `pip install tomli`",
        )
    return _toml


def read_toml(path: Path | str) -> dict[str, Any]:
    """Parse a TOML file; any failure is a ConfigError naming the file (and line, for syntax)."""
    toml = _require_toml()
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror or e}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x}); save the file as UTF-8") from None
    try:
        return toml.loads(text)
    except toml.TOMLDecodeError as e:
        msg = str(getattr(e, "msg", None) or e)
        m = _TOML_POS.search(msg)
        lineno = getattr(e, "lineno", None)
        colno = getattr(e, "colno", None)
        if m:
            lineno, colno = int(m.group(1)), int(m.group(2))
            msg = msg[: m.start()]
        msg = _TOML_EOF.sub("", msg)
        if lineno:
            src = text.splitlines()[lineno - 1] if lineno <= len(text.splitlines()) else ""
            raise ConfigError(
                f"{path}: line {lineno}, column {colno}: invalid TOML: {msg}",
                hint=f"line {lineno} reads: {src.strip()}" if src.strip() else None,
            ) from None
        raise ConfigError(f"{path}: invalid TOML at end of file: {msg}") from None
