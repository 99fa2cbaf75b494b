"""The device inventory: named devices this laptop knows, stored in ``Home.inventory`` (TOML).

File format (written by fieldkit, safe to edit by hand; comments are not kept on rewrite)::

    # fieldkit device inventory
    version = 1

    [[devices]]
    name = "line3-cam"
    target = "ssh://pi@10.0.0.7"
    profile = "raspberry-pi-5"
    notes = "reject gate, conveyor 3"
    added = "2026-05-09T07:35:25+00:00"
    groups = ["line3"]            # optional; absent in inventories written before groups existed

Writes are atomic (temp file in the same directory, fsync, ``os.replace``) and read-modify-write
cycles hold an exclusive lock on ``inventory.toml.lock`` so the CLI and ``fieldkit sim`` can both
write without losing each other's changes.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from fieldkit.errors import ConfigError
from fieldkit.fsutil import atomic_write
from fieldkit.locations import Home
from fieldkit.names import DEFAULT_PROFILE, NAME_PATTERN
from fieldkit.tomlfile import read_toml

__all__ = [
    "RESERVED_DEVICE_NAMES",
    "Device",
    "add_device",
    "devices_in_group",
    "get_device",
    "load_inventory",
    "remove_device",
    "ssh_config_candidates",
    "target_warning",
    "validate_device_name",
    "validate_group_name",
]

FORMAT_VERSION = 1
_FIELDS = ("name", "target", "profile", "notes", "added", "groups")
MAX_GROUPS = 32


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Device:
    """One inventory entry."""

    name: str
    """What the technician calls the device; usable as a target anywhere fieldkit takes one."""
    target: str
    """How to reach it: ``ssh://[user@]host[:port]``, an ssh_config alias, ``serial://...`` or ``local:...``."""
    profile: str = DEFAULT_PROFILE
    """Device profile name (see ``fieldkit profiles``)."""
    notes: str = ""
    """Free text: location, line, asset tag."""
    added: str = field(default_factory=_now)
    """When the entry was added, UTC ISO 8601."""
    groups: tuple[str, ...] = ()
    """Groups the device belongs to (``--group line3``): a line, a hall, a customer; selectable with
    ``--group G`` wherever several devices are taken."""

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["groups"] = list(self.groups)
        return doc


# --------------------------------------------------------------------------------------------------
# Validation


RESERVED_DEVICE_NAMES: dict[str, str] = {
    "list": "`fieldkit bench list` would be ambiguous",
    "compare": "`fieldkit bench compare` would be ambiguous",
    "verify": "`fieldkit models verify` and `fieldkit report verify` would be ambiguous",
    "remove": "`fieldkit models remove` would be ambiguous",
    "all": "it stands for every device",
}
"""Words that share a position with a device name on the command line (``bench list|compare``,
``models verify|remove``, ``report verify``), so no device may be named after them; each with why."""


def validate_device_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f'device name "{name}" is not valid: expected 1-63 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit",
            hint='e.g. "line3-cam" or "press_07"',
        )
    if name in RESERVED_DEVICE_NAMES:
        raise ConfigError(f"'{name}' is a reserved word: {RESERVED_DEVICE_NAMES[name]}; choose another name")
    return name


def validate_group_name(name: str) -> str:
    """A group name: like a device name (1-63 letters, digits, ".", "_", "-"), never a reserved word."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f'group name "{name}" is not valid: expected 1-63 letters, digits, ".", "_" or "-", '
            "starting with a letter or digit",
            hint='e.g. "line3" or "hall-b"',
        )
    if name in RESERVED_DEVICE_NAMES:
        raise ConfigError(f"'{name}' is a reserved word: {RESERVED_DEVICE_NAMES[name]}; choose another group name")
    return name


def _clean_groups(groups: Any) -> tuple[str, ...]:
    """Validated, de-duplicated, in the order given (one name alone is one group, not its letters)."""
    if isinstance(groups, str):
        groups = [groups]
    out: list[str] = []
    for g in groups:
        validate_group_name(g)
        if g not in out:
            out.append(g)
    if len(out) > MAX_GROUPS:
        raise ConfigError(f"a device may be in at most {MAX_GROUPS} groups, not {len(out)}")
    return tuple(out)


_HOST_WORD = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?")
_TARGET_FORMS = "ssh://[user@]host[:port], an ~/.ssh/config host alias, serial:///dev/ttyUSB0?baud=115200, or local:[/path]"


def _basic_target_check(target: str) -> None:
    if target.startswith("ssh://"):
        rest = target[len("ssh://"):]
        host = rest.rsplit("@", 1)[-1]
        if host.startswith("["):  # [v6]:port
            ok = "]" in host and len(host) > 2
        else:
            hostname, _, port = host.partition(":")
            ok = bool(_HOST_WORD.fullmatch(hostname)) and (not port or (port.isdigit() and 0 < int(port) < 65536))
        if ok:
            return
    elif target.startswith("serial://"):
        path = target[len("serial://"):].split("?", 1)[0]
        if (path.startswith("/") and len(path) > 1) or re.fullmatch(r"COM\d+", path):
            return
    elif target == "local:" or target.startswith("local:/"):
        return
    elif _HOST_WORD.fullmatch(target):
        return
    raise ConfigError(f'target "{target}" is not understood: expected {_TARGET_FORMS}')


def _check_target(name: str, target: str) -> None:
    if not isinstance(target, str) or not target.strip() or target != target.strip():
        raise ConfigError(f'device "{name}": target "{target}" is empty or has surrounding spaces: expected {_TARGET_FORMS}')
    try:
        from fieldkit.link.targets import parse_target
    except ImportError:
        parse_target = None
    try:
        if parse_target is not None:
            parse_target(target)
        else:
            _basic_target_check(target)
    except ConfigError as e:
        msg = e.message if target in e.message else f'target "{target}": {e.message}'
        raise ConfigError(f'device "{name}": {msg}', hint=e.hint) from None
    except ValueError as e:
        raise ConfigError(f'device "{name}": target "{target}" is not valid: {e}; expected {_TARGET_FORMS}') from None


# --------------------------------------------------------------------------------------------------
# Reading


def _parse(path: Path, data: dict[str, Any]) -> list[Device]:
    def bad(what: str) -> ConfigError:
        return ConfigError(f"{path}: {what}", hint="fix or remove the entry by hand, or move the file aside to start afresh")

    version = data.get("version", FORMAT_VERSION)
    if not isinstance(version, int) or isinstance(version, bool):
        raise bad(f"version = {version!r}: expected a whole number")
    if version > FORMAT_VERSION:
        raise bad(f"version = {version}: written by a newer fieldkit (this one reads version {FORMAT_VERSION})")
    unknown = sorted(set(data) - {"version", "devices"})
    if unknown:
        raise bad(f"unknown key {unknown[0]!r} at the top level: expected version and [[devices]] entries")
    entries = data.get("devices", [])
    if not isinstance(entries, list):
        raise bad("devices: expected [[devices]] entries (an array of tables)")
    devices: list[Device] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries, start=1):
        where = f"device #{i}"
        if not isinstance(entry, dict):
            raise bad(f"{where}: expected a table")
        if isinstance(entry.get("name"), str):
            where = f'device #{i} "{entry["name"]}"'
        extra = sorted(set(entry) - set(_FIELDS))
        if extra:
            raise bad(f"{where}: unknown key {extra[0]!r}: expected {', '.join(_FIELDS)}")
        for key in ("name", "target"):
            if key not in entry:
                raise bad(f"{where}: {key} is missing")
        values: dict[str, Any] = {}
        for key, value in entry.items():
            if key == "groups":
                if not isinstance(value, list) or not all(isinstance(g, str) for g in value):
                    raise bad(f'{where}: groups = {value!r}: expected a list of names in quotes, e.g. ["line3"]')
                try:
                    values[key] = _clean_groups(value)
                except ConfigError as e:
                    raise bad(f"{where}: groups: {e.message}") from None
                continue
            if key == "added" and isinstance(value, (datetime, date)):
                value = value.isoformat()
            if not isinstance(value, str):
                raise bad(f"{where}: {key} = {value!r}: expected a string in quotes")
            values[key] = value
        if not NAME_PATTERN.fullmatch(values["name"]):
            raise bad(f'{where}: name is not valid: expected 1-63 letters, digits, ".", "_" or "-"')
        if values["name"] in seen:
            raise bad(f'{where}: a device named "{values["name"]}" is listed twice')
        seen.add(values["name"])
        values.setdefault("added", "")
        devices.append(Device(**values))
    return devices


def load_inventory(home: Home | None = None) -> list[Device]:
    """All devices in file order; an absent file is an empty inventory. Errors: ConfigError."""
    home = home or Home.current()
    path = home.inventory
    if not path.exists():
        return []
    return _parse(path, read_toml(path))


def get_device(home: Home | None, name: str) -> Device | None:
    home = home or Home.current()
    for d in load_inventory(home):
        if d.name == name:
            return d
    return None


# --------------------------------------------------------------------------------------------------
# Writing


def _toml_string(value: str) -> str:
    out = ['"']
    for ch in value:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _render(devices: list[Device]) -> str:
    lines = [
        "# fieldkit device inventory. Written by `fieldkit devices`; safe to edit by hand",
        "# (comments are not kept when fieldkit rewrites the file).",
        f"version = {FORMAT_VERSION}",
    ]
    for d in devices:
        lines.append("")
        lines.append("[[devices]]")
        for key in _FIELDS:
            if key == "groups":
                if d.groups:  # absent when empty: the file stays readable by a fieldkit without groups
                    lines.append("groups = [" + ", ".join(_toml_string(g) for g in d.groups) + "]")
                continue
            lines.append(f"{key} = {_toml_string(getattr(d, key))}")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock around a read-modify-write of ``path`` (via ``path.lock``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+b") as lf:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            lf.seek(0)
            msvcrt.locking(lf.fileno(), msvcrt.LK_LOCK, 1)
            try:
                yield
            finally:
                lf.seek(0)
                msvcrt.locking(lf.fileno(), msvcrt.LK_UNLCK, 1)
            return
        fcntl.flock(lf.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lf.fileno(), fcntl.LOCK_UN)


def add_device(
    home: Home | None,
    name: str,
    target: str,
    profile: str = DEFAULT_PROFILE,
    replace: bool = False,
    *,
    notes: str = "",
    groups: Any = (),
) -> Device:
    """Add (or with ``replace`` overwrite) a device. Validates name, target, profile and groups first."""
    home = home or Home.current()
    validate_device_name(name)
    _check_target(name, target)
    from fieldkit.profiles import get_profile  # the profile models: only when a device is added

    get_profile(profile, home)  # unknown profile -> ConfigError listing the available ones
    device = Device(name=name, target=target, profile=profile, notes=notes, groups=_clean_groups(groups))
    home.ensure()
    with _locked(home.inventory):
        devices = load_inventory(home)
        existing = [i for i, d in enumerate(devices) if d.name == name]
        if existing and not replace:
            old = devices[existing[0]]
            raise ConfigError(
                f'a device named "{name}" is already in the inventory (target {old.target}, profile {old.profile})',
                hint="choose another name, remove it first, or replace it (--replace)",
            )
        if existing:
            devices[existing[0]] = device
        else:
            devices.append(device)
        atomic_write(home.inventory, _render(devices))
    return device


def target_warning(target: str) -> str | None:
    """What to tell the technician about a target that is valid but most likely not what was meant:
    a bare word that no ``Host`` of the SSH config and no line of /etc/hosts names (``devices add x
    notatarget``). It is kept (DNS or a later ~/.ssh/config entry may still make it a host), and the
    technician is told how it will be used. None for every other target."""
    from fieldkit.link.sshconfig import names_a_host, ssh_config_path

    try:
        if names_a_host(target):
            return None
    except ConfigError:
        return None  # not a target at all: add_device refuses it with the accepted forms
    return (f'target "{target}" is not ssh://, serial://, local: or user@host, and no Host in '
            f"{ssh_config_path()} (nor /etc/hosts) names it: fieldkit will ask DNS for a host called "
            f'"{target}" when it connects. If it is an SSH alias, add a Host {target} block to '
            f"{ssh_config_path()}; otherwise give the target as ssh://[user@]host[:port], "
            "serial:///dev/ttyUSB0?baud=115200 or local:[/path] (`fieldkit devices add NAME TARGET --replace`)")


def devices_in_group(home: Home | None, group: str) -> list[Device]:
    """The devices of ``group``, in inventory order; ConfigError naming the known groups when none is in it."""
    home = home or Home.current()
    validate_group_name(group)
    devices = load_inventory(home)
    members = [d for d in devices if group in d.groups]
    if not members:
        known = sorted({g for d in devices for g in d.groups})
        raise ConfigError(f'no device is in group "{group}"; known groups: {", ".join(known) or "none yet"}',
                          hint="add one with `fieldkit devices add NAME TARGET --group GROUP`")
    return members


def remove_device(home: Home | None, name: str) -> Device:
    """Remove a device by name and return what was removed; unknown name -> ConfigError."""
    home = home or Home.current()
    with _locked(home.inventory):
        devices = load_inventory(home)
        keep = [d for d in devices if d.name != name]
        if len(keep) == len(devices):
            names = ", ".join(d.name for d in devices) or "(the inventory is empty)"
            raise ConfigError(f'no device named "{name}" in the inventory; known: {names}')
        removed = next(d for d in devices if d.name == name)
        atomic_write(home.inventory, _render(keep))
    return removed


# --------------------------------------------------------------------------------------------------
# ~/.ssh/config


def _ssh_config_path(path: Path | str | None) -> Path:
    if path is not None:
        return Path(path).expanduser()
    env = os.environ.get("FIELDKIT_SSH_CONFIG")
    return Path(env).expanduser() if env else Path.home() / ".ssh" / "config"


def _split_args(value: str) -> list[str]:
    out, cur, quoted = [], "", False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif ch.isspace() and not quoted:
            if cur:
                out.append(cur)
            cur = ""
        else:
            cur += ch
    if cur:
        out.append(cur)
    return out


def _read_hosts(path: Path, base: Path, out: list[str], depth: int) -> None:
    if depth > 8:
        return
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"(\S+?)\s*(?:=\s*|\s+)(.*)$", line)
        if not m:
            continue
        keyword, value = m.group(1).lower(), m.group(2)
        if keyword == "host":
            for alias in _split_args(value):
                if any(c in alias for c in "*?!") or alias in out:
                    continue
                out.append(alias)
        elif keyword == "include":
            for pattern in _split_args(value):
                pattern = os.path.expanduser(pattern)
                if not os.path.isabs(pattern):
                    pattern = str(base / pattern)
                for inc in sorted(glob.glob(pattern)):
                    _read_hosts(Path(inc), base, out, depth + 1)


def ssh_config_candidates(path: Path | str | None = None) -> list[str]:
    """Host aliases in the SSH config (``$FIELDKIT_SSH_CONFIG``, else ``~/.ssh/config``), in file order.

    Wildcard and negated patterns (``*``, ``?``, ``!``) are skipped; ``Include`` is followed
    (relative paths resolve against the config file's directory). A missing file gives ``[]``.
    The caller filters out aliases already in the inventory.
    """
    cfg = _ssh_config_path(path)
    out: list[str] = []
    _read_hosts(cfg, cfg.parent, out, 0)
    return out
