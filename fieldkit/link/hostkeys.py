"""Strict SSH host-key checking: fieldkit's own known_hosts plus the user's, never trust-on-first-use.

* fieldkit keeps the keys it was told to trust in ``Home.known_hosts`` (OpenSSH format, one
  ``name keytype base64`` line per key, ``[host]:port`` for ports other than 22).
* The user's ``~/.ssh/known_hosts`` (or ``$FIELDKIT_USER_KNOWN_HOSTS``, or ``UserKnownHostsFile``
  from ``~/.ssh/config``) is read, never written. Hashed names, ``*``/``?`` patterns, ``!``
  negation and ``@revoked`` lines are understood; ``@cert-authority`` lines are ignored (host
  certificates are not supported).
* A key matching any entry is accepted; a ``@revoked`` key never is. A host with a different key of
  the same type on file is a *changed* key: :class:`HostKeyError` with ``expected`` set, and
  nothing is written. An unknown host is refused with the fingerprint and the ``fieldkit trust``
  hint. A file that exists but cannot be read is reported in every refusal and logged (it can
  only make fieldkit refuse more, never accept more).

This module only reads and writes known_hosts files; fetching a key from a device and pinning it
(``fieldkit trust``) is :mod:`fieldkit.link.trust`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from fieldkit.errors import ConfigError, HostKeyError
from fieldkit.fsutil import atomic_write
from fieldkit.locations import Home

if TYPE_CHECKING:  # paramiko is imported lazily (fieldkit --help must start fast)
    from paramiko import PKey

log = logging.getLogger(__name__)

#: Host-key algorithms to offer first when a key of this type is on file for the host.
KEY_TYPE_ALGORITHMS = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}


# --------------------------------------------------------------------------- fingerprints

def fingerprint_blob(blob: bytes) -> str:
    """OpenSSH-style ``SHA256:<base64 without padding>`` of a public key blob."""
    digest = hashlib.sha256(blob).digest()
    return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


def fingerprint(pkey: "PKey") -> str:
    """``SHA256:...`` exactly as ``ssh-keygen -lf`` prints it."""
    return fingerprint_blob(pkey.asbytes())


def md5_fingerprint_blob(blob: bytes) -> str:
    digest = hashlib.md5(blob).hexdigest()  # noqa: S324 - legacy display format only
    return "MD5:" + ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def normalize_fingerprint(text: str) -> str:
    """Accept ``SHA256:abc``, ``abc`` (bare SHA256), with or without ``=`` padding, or ``MD5:aa:bb..``."""
    text = text.strip()
    if text.upper().startswith("MD5:"):
        return "MD5:" + text[4:].lower()
    if text.upper().startswith("SHA256:"):
        text = text[7:]
    return "SHA256:" + text.rstrip("=")


def _fingerprint_matches(expected: str, blob: bytes) -> bool:
    want = normalize_fingerprint(expected)
    if want.startswith("MD5:"):
        return hmac.compare_digest(want, md5_fingerprint_blob(blob))
    return hmac.compare_digest(want, fingerprint_blob(blob))


# --------------------------------------------------------------------------- known_hosts files

@dataclass(frozen=True)
class KnownHostEntry:
    """One key line of a known_hosts file."""

    path: Path
    lineno: int
    marker: str | None  # None, "@revoked" or "@cert-authority"
    hosts: str  # the comma-separated host pattern field as written
    key_type: str
    blob: bytes

    @property
    def fingerprint(self) -> str:
        return fingerprint_blob(self.blob)

    def matches(self, name: str) -> bool:
        return hosts_field_matches(self.hosts, name)


def _glob_to_re(pattern: str) -> re.Pattern[str]:
    # OpenSSH patterns only know * and ?; everything else (including [ ]) is literal.
    parts = ("." if c == "?" else ".*" if c == "*" else re.escape(c) for c in pattern)
    return re.compile("".join(parts) + r"\Z", re.DOTALL)


def hosts_field_matches(hosts: str, name: str) -> bool:
    """OpenSSH ``match_hostname`` for one known_hosts host field (hashed, patterns, negation)."""
    name = name.lower()
    if hosts.startswith("|1|"):
        try:
            _, _, salt_b64, hash_b64 = hosts.split("|", 3)
            salt = base64.b64decode(salt_b64)
            want = base64.b64decode(hash_b64)
        except (ValueError, binascii.Error):
            return False
        got = hmac.new(salt, name.encode("utf-8"), hashlib.sha1).digest()
        return hmac.compare_digest(got, want)
    matched = False
    for pattern in hosts.lower().split(","):
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        if not pattern:
            continue
        hit = pattern == name if not any(c in pattern for c in "*?") else bool(
            _glob_to_re(pattern).match(name))
        if hit and negate:
            return False
        matched = matched or hit
    return matched


def _parse_line(path: Path, lineno: int, line: str) -> KnownHostEntry | None:
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    fields = line.split()
    marker = None
    if fields[0].startswith("@"):
        marker = fields[0].lower()
        fields = fields[1:]
    if len(fields) < 3:
        return None
    hosts, key_type, b64 = fields[0], fields[1], fields[2]
    try:
        blob = base64.b64decode(b64, validate=True)
    except (ValueError, binascii.Error):
        return None
    return KnownHostEntry(path, lineno, marker, hosts, key_type, blob)


def read_known_hosts(path: Path) -> list[KnownHostEntry]:
    """Entries of one file; a missing file is empty; an unreadable one raises ``OSError``."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        entry = _parse_line(path, lineno, line)
        if entry is not None:
            entries.append(entry)
    return entries


def user_known_hosts_paths(config_value: str | None = None) -> list[Path]:
    """The user's known_hosts files: ``$FIELDKIT_USER_KNOWN_HOSTS`` (``os.pathsep``-separated),
    else ``UserKnownHostsFile`` from ~/.ssh/config when given, else ``~/.ssh/known_hosts``."""
    env = os.environ.get("FIELDKIT_USER_KNOWN_HOSTS")
    if env is not None:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    if config_value and config_value.strip().lower() != "none":
        return [Path(p).expanduser() for p in config_value.split()]
    if config_value and config_value.strip().lower() == "none":
        return []
    return [Path("~/.ssh/known_hosts").expanduser()]


@dataclass
class KnownHosts:
    """fieldkit's own file (writable) plus the user's files (read-only), loaded once."""

    own_path: Path
    user_paths: list[Path]
    entries: list[KnownHostEntry] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, home: Home, user_paths: Iterable[Path] | None = None) -> "KnownHosts":
        paths = list(user_paths) if user_paths is not None else user_known_hosts_paths()
        kh = cls(home.known_hosts, paths)
        try:
            kh.entries.extend(read_known_hosts(home.known_hosts))
        except OSError as exc:
            raise ConfigError(f"cannot read fieldkit's known_hosts {home.known_hosts}: "
                              f"{exc.strerror or exc}",
                              hint="fix the file's permissions (it should be yours, mode 0600)") from exc
        for path in paths:
            if path.resolve() == home.known_hosts.resolve():
                continue
            try:
                kh.entries.extend(read_known_hosts(path))
            except OSError as exc:
                problem = (f"could not read {path} ({exc.strerror or exc}); "
                           "keys in it were not considered")
                log.warning("%s", problem)
                kh.problems.append(problem)
        return kh

    def for_name(self, name: str) -> list[KnownHostEntry]:
        return [e for e in self.entries if e.marker != "@cert-authority" and e.matches(name)]

    def known_key_types(self, name: str) -> list[str]:
        """Key types on file for ``name`` (to negotiate one of them first), in file order."""
        out: list[str] = []
        for e in self.for_name(name):
            if e.marker is None and e.key_type not in out:
                out.append(e.key_type)
        return out

    def status(self, name: str, key_type: str, blob: bytes) -> tuple[str, list[KnownHostEntry]]:
        """``("ok" | "revoked" | "changed" | "other-types" | "unknown", relevant entries)``."""
        entries = self.for_name(name)
        revoked = [e for e in entries if e.marker == "@revoked" and e.blob == blob]
        if revoked:
            return "revoked", revoked
        plain = [e for e in entries if e.marker is None]
        ok = [e for e in plain if e.blob == blob]
        if ok:
            return "ok", ok
        same_type = [e for e in plain if e.key_type == key_type]
        if same_type:
            return "changed", same_type
        if plain:
            return "other-types", plain
        return "unknown", []

    def check(self, name: str, pkey: "PKey", *, display: str, target: str) -> None:
        """Raise :class:`HostKeyError` unless ``pkey`` is on file for ``name``.

        ``display`` names the host in messages; ``target`` is what to pass to ``fieldkit trust``.
        """
        key_type = pkey.get_name()
        blob = pkey.asbytes()
        got = fingerprint_blob(blob)
        status, entries = self.status(name, key_type, blob)
        if status == "ok":
            return
        note = "".join(f"\n  note: {p}" for p in self.problems)
        if status == "revoked":
            e = entries[0]
            raise HostKeyError(
                f"host key for {display} ({key_type} {got}) is marked @revoked in "
                f"{e.path}:{e.lineno}; refusing to connect{note}",
                host=display, key_type=key_type, fingerprint=got,
                hint="the device is using a key that was deliberately revoked: "
                     "check the device before going further")
        if status == "changed":
            e = entries[0]
            expected = e.fingerprint
            raise HostKeyError(
                f"host key for {display} changed: expected {expected}, got {got} ({key_type}); "
                f"the old key is in {e.path}:{e.lineno}. Someone may be intercepting the "
                f"connection, or the device was reflashed.{note}",
                host=display, key_type=key_type, fingerprint=got, expected=expected,
                hint=f"if the device was reflashed, remove the old key with "
                     f"`fieldkit trust --replace {target}` after checking the fingerprint "
                     f"on the device (ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub)")
        if status == "other-types":
            types = ", ".join(sorted({e.key_type for e in entries}))
            expected = entries[0].fingerprint
            raise HostKeyError(
                f"host key for {display} is not the one on file: the device offered "
                f"{key_type} {got}, but only {types} keys are known for it "
                f"(e.g. {expected} in {entries[0].path}:{entries[0].lineno}); the device may "
                f"have been reflashed.{note}",
                host=display, key_type=key_type, fingerprint=got, expected=expected,
                hint=f"check the fingerprint on the device, then run "
                     f"`fieldkit trust --replace {target}`")
        raise HostKeyError(
            f"unknown host {display}: it presented the {key_type} host key {got}, which is not in "
            f"{self.own_path} or {', '.join(map(str, self.user_paths)) or 'any user file'}; "
            f"refusing to connect{note}",
            host=display, key_type=key_type, fingerprint=got,
            hint=f"check the fingerprint on the device (ssh-keygen -lf "
                 f"/etc/ssh/ssh_host_ed25519_key.pub), then run `fieldkit trust {target}`")


# --------------------------------------------------------------------------- writing our file

def _lock(fd: int) -> None:
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
    except (ImportError, OSError):
        pass


def _ensure_dir(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)


def add_host_key(home: Home, host: str, port: int, pkey: "PKey") -> bool:
    """Append ``host``'s key to fieldkit's known_hosts (file 0600, directory 0700).

    Returns False when exactly this entry was already there. Never removes anything.
    """
    from fieldkit.link.targets import known_hosts_name

    return _append_entry(home.known_hosts, known_hosts_name(host, port), pkey.get_name(),
                         pkey.get_base64())


def _append_entry(path: Path, name: str, key_type: str, b64: str) -> bool:
    _ensure_dir(path)
    line = f"{name} {key_type} {b64}\n"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        _lock(fd)
        with os.fdopen(os.dup(fd), "r", encoding="utf-8", errors="replace") as f:
            existing = f.read()
        if line in existing.splitlines(keepends=True) or line.rstrip("\n") in existing.splitlines():
            return False
        data = line.encode("utf-8")
        if existing and not existing.endswith("\n"):
            data = b"\n" + data
        os.write(fd, data)
        os.fsync(fd)
        return True
    finally:
        os.close(fd)


def remove_host_entry(home: Home, name: str) -> list[str]:
    """Remove every key filed under ``name`` (``host`` or ``[host]:port``) from fieldkit's own
    known_hosts; returns the fingerprints removed. The user's files are never touched."""
    return _remove_name(home.known_hosts, name)


def _remove_name(path: Path, name: str) -> list[str]:
    """Drop every key of ``name`` from ``path`` (other names on shared lines are kept).

    Returns the fingerprints removed. The file is rewritten atomically.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    removed: list[str] = []
    out: list[str] = []
    for lineno, line in enumerate(text.splitlines(keepends=True), 1):
        entry = _parse_line(path, lineno, line)
        if entry is None or entry.marker is not None or not entry.matches(name):
            out.append(line)
            continue
        removed.append(entry.fingerprint)
        if entry.hosts.startswith("|1|"):
            continue
        rest = [h for h in entry.hosts.split(",") if h.lower() != name.lower()]
        positive = [h for h in rest if not h.startswith("!")]
        if positive and not hosts_field_matches(",".join(rest), name):
            fields = line.split()
            idx = 1 if fields[0].startswith("@") else 0
            fields[idx] = ",".join(rest)
            out.append(" ".join(fields) + "\n")
        # else: the line only named this host (or only matched it by a pattern): drop it
    atomic_write(path, "".join(out), mode=0o600)
    return removed
