"""Target strings: how a technician names a device on the command line or in the inventory.

=====================================  ==================================================
``ssh://[user@]host[:port]``           SSH; IPv6 literals in brackets (``ssh://[fe80::1]:2222``)
``name`` or ``user@host``              SSH to a host or an ``~/.ssh/config`` Host alias
``serial:///dev/ttyUSB0?baud=115200``  serial line (``baud`` defaults to 115200)
``local:`` or ``local:/path/to/root``  agent in a subprocess on this machine
=====================================  ==================================================

Inventory names are resolved by the caller before :func:`parse_target` sees the text, so a bare
word here always means an SSH host or alias. ``str(target)`` gives the canonical string, which
:func:`parse_target` turns back into an equal target.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from fieldkit.errors import ConfigError

DEFAULT_BAUD = 115200

ACCEPTED_FORMS = (
    "ssh://[user@]host[:port], an ~/.ssh/config Host alias (or user@host), "
    "serial:///dev/ttyUSB0?baud=115200, local: or local:/path/to/root, or an inventory name"
)

# A host name or alias as OpenSSH would take it on its command line (no spaces, no slashes).
_HOST_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._\-]*$")
_USER_WORD = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.\-$]*$")


@dataclass(frozen=True)
class SshTarget:
    """An SSH device. ``host`` is what ``~/.ssh/config`` is looked up with (a host name, an
    address or a Host alias); ``user`` and ``port``, when given, override the config.
    ``alias`` is the name the technician used (a config alias or an inventory name), shown in
    messages and hints; ``str()`` returns it when set."""

    host: str
    user: str | None = None
    port: int | None = None
    alias: str | None = None

    def url(self) -> str:
        """``ssh://[user@]host[:port]``, whatever the alias."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        user = f"{self.user}@" if self.user else ""
        port = f":{self.port}" if self.port is not None else ""
        return f"ssh://{user}{host}{port}"

    def __str__(self) -> str:
        return self.alias if self.alias else self.url()


@dataclass(frozen=True)
class SerialTarget:
    """A serial line; the agent already serves on the device's end."""

    path: str
    baud: int = DEFAULT_BAUD

    def __str__(self) -> str:
        # /dev/ttyUSB0 -> serial:///dev/ttyUSB0; COM3 -> serial://COM3
        return f"serial://{self.path}?baud={self.baud}"


@dataclass(frozen=True)
class LocalTarget:
    """The agent in a subprocess on this machine; ``root`` is the device root (None: ``/``)."""

    root: str | None = None

    def __str__(self) -> str:
        return f"local:{self.root}" if self.root else "local:"


Target = SshTarget | SerialTarget | LocalTarget


MAX_TARGET = 1024  # characters; a path or URL past this is a paste gone wrong
MAX_HOST = 253     # DNS: a whole name, and 63 per label


def _bad(text: str, why: str) -> ConfigError:
    shown = text if len(text) <= 80 else f"{text[:60]}…({len(text)} characters)"
    return ConfigError(f"not a device target: {shown!r} ({why})", hint=f"use {ACCEPTED_FORMS}")


def _check_host(text: str, host: str) -> str:
    if not host:
        raise _bad(text, "no host name")
    if len(host) > MAX_HOST or any(len(label) > 63 for label in host.split(".")):
        raise _bad(text, f"host name longer than DNS allows ({MAX_HOST} characters, 63 per label)")
    if _HOST_WORD.match(host):
        return host
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0])) + (
            "%" + host.split("%", 1)[1] if "%" in host else "")
    except ValueError:
        raise _bad(text, f"{host!r} is not a host name or address") from None


def _check_user(text: str, user: str | None) -> str | None:
    if user is None:
        return None
    if not user or not _USER_WORD.match(user):
        raise _bad(text, f"{user!r} is not a user name")
    return user


def _parse_port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(text, f"port {port!r} is not a number from 1 to 65535")
    return int(port)


def _parse_ssh_url(text: str) -> SshTarget:
    rest = text[len("ssh://"):]
    if rest.endswith("/"):
        rest = rest[:-1]
    if "/" in rest or "?" in rest or "#" in rest:
        raise _bad(text, "an ssh:// target has no path or query")
    user = None
    if "@" in rest:
        user, rest = rest.rsplit("@", 1)
    port = None
    if rest.startswith("["):
        close = rest.find("]")
        if close < 0:
            raise _bad(text, "unclosed '[' around an IPv6 address")
        host, after = rest[1:close], rest[close + 1:]
        if after:
            if not after.startswith(":"):
                raise _bad(text, f"unexpected {after!r} after the address")
            port = _parse_port(text, after[1:])
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise _bad(text, f"{host!r} in brackets is not an IPv6 address") from None
    else:
        host = rest
        if host.count(":") == 1:
            host, port_text = host.split(":")
            port = _parse_port(text, port_text)
        elif ":" in host:
            raise _bad(text, "put an IPv6 address in brackets: ssh://[fe80::1]:22")
        host = _check_host(text, host)
    return SshTarget(host=host, user=_check_user(text, user), port=port)


def _parse_serial(text: str) -> SerialTarget:
    parts = urlsplit(text)
    path = parts.path
    if parts.netloc:  # serial://COM3 or serial://dev/ttyUSB0 (missing third slash)
        path = parts.netloc + path if not path else "/" + parts.netloc + path
    if not path:
        raise _bad(text, "no serial device path, e.g. serial:///dev/ttyUSB0")
    baud = DEFAULT_BAUD
    try:
        query = parse_qs(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError:
        raise _bad(text, f"cannot read the options {parts.query!r}") from None
    unknown = set(query) - {"baud"}
    if unknown:
        raise _bad(text, f"unknown serial option(s): {', '.join(sorted(unknown))}; only baud=")
    if "baud" in query:
        value = query["baud"][-1]
        if not value.isdigit() or int(value) <= 0:
            raise _bad(text, f"baud={value!r} is not a positive number")
        baud = int(value)
    return SerialTarget(path=path, baud=baud)


def _parse_local(text: str) -> LocalTarget:
    rest = text[len("local:"):]
    if rest.startswith("//"):
        rest = rest[2:]
    if not rest:
        return LocalTarget(None)
    return LocalTarget(os.path.abspath(os.path.expanduser(rest)))


def _parse_bare(text: str) -> SshTarget:
    user = None
    host = text
    if "@" in text:
        user, host = text.rsplit("@", 1)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            raise _bad(text, "a port needs the URL form, e.g. ssh://host:2222") from None
    host = _check_host(text, host)
    user = _check_user(text, user)
    # A bare word keeps its spelling for messages (`fieldkit trust mydevice`).
    return SshTarget(host=host, user=user, alias=None if user else text)


def parse_target(text: str) -> Target:
    """Parse a target string. Raises :class:`ConfigError` naming the accepted forms."""
    if not isinstance(text, str):
        raise _bad(repr(text), "not text")
    text = text.strip()
    if not text:
        raise _bad(text, "empty")
    if len(text) > MAX_TARGET:
        raise _bad(text, f"longer than {MAX_TARGET} characters")
    if not text.isprintable():
        raise _bad(text, "contains control characters")
    lower = text.lower()
    if lower.startswith("ssh://"):
        return _parse_ssh_url("ssh://" + text[6:])
    if lower.startswith("serial:"):
        return _parse_serial(text)
    if lower.startswith("local:"):
        return _parse_local(text)
    if re.match(r"^[A-Za-z][A-Za-z0-9+.\-]*://", text):
        raise _bad(text, f"unknown scheme {text.split(':', 1)[0]!r}")
    if any(c.isspace() for c in text) or "/" in text:
        raise _bad(text, "not a host name")
    return _parse_bare(text)


def known_hosts_name(host: str, port: int) -> str:
    """How OpenSSH names ``host:port`` in known_hosts: ``host`` for port 22, else ``[host]:port``."""
    return host if port == 22 else f"[{host}]:{port}"
