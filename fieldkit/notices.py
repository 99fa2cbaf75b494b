"""Warnings a service has for the technician that are not errors (an outdated device agent, ...).

Services call :func:`warn`; the command line installs a handler that prints them on stderr
(``fieldkit: warning: ...``); without one (the TUI, tests, library use) they are only kept where
the service keeps them (e.g. ``DeviceSession.warnings``) and in the journal.
"""

from __future__ import annotations

from typing import Callable

_handler: Callable[[str], None] | None = None


def set_handler(handler: Callable[[str], None] | None) -> None:
    global _handler
    _handler = handler


def warn(message: str) -> None:
    handler = _handler
    if handler is not None:
        try:
            handler(message)
        except Exception:
            pass  # a broken display must not break the operation
