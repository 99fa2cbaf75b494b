"""Exceptions with messages a technician can act on, each mapped to a CLI exit code.

Exit codes (DESIGN.md CLI contract): 0 ok, 1 a check or verification failed, 2 usage or
configuration error, 3 connection / authentication / host-key error, 4 the device refused or
failed the operation, 130 cancelled.
"""

from __future__ import annotations


class FieldkitError(Exception):
    """Base class. ``exit_code`` is what the CLI returns; ``hint`` is an optional next step."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}\n  hint: {self.hint}" if self.hint else self.message


class CheckFailed(FieldkitError):
    exit_code = 1


class ConfigError(FieldkitError):
    """Bad usage, bad profile, bad inventory, bad target string."""

    exit_code = 2


class ConnectError(FieldkitError):
    """The device cannot be reached, authentication failed, or the link died."""

    exit_code = 3


class HostKeyError(ConnectError):
    """Unknown or changed SSH host key. Carries the fingerprint the device presented."""

    def __init__(self, message: str, *, host: str, key_type: str, fingerprint: str,
                 expected: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.host = host
        self.key_type = key_type
        self.fingerprint = fingerprint
        self.expected = expected  # None: unknown host; otherwise the fingerprint we had on file

    @property
    def changed(self) -> bool:
        return self.expected is not None


class LinkLost(ConnectError):
    """The link died mid-operation (cable pulled, device rebooted, peer stopped answering)."""


class DeviceError(FieldkitError):
    """The agent refused or failed the operation. ``code`` is the agent's error code."""

    exit_code = 4

    def __init__(self, message: str, code: str = "failed", hint: str | None = None) -> None:
        super().__init__(message, hint)
        self.code = code


class Cancelled(FieldkitError):
    exit_code = 130
