"""Fetch a device's SSH host key and pin it: what ``fieldkit trust TARGET`` and the TUI's ``t`` run.

:func:`trust` fetches the key, checks it against a fingerprint the technician read off the
device (or asks through ``confirm``), then pins it in fieldkit's known_hosts.
:func:`check_host_key` answers "would a connect accept this device's key?" with exactly the
check a connect makes (fieldkit's file plus the user's, ``UserKnownHostsFile`` honoured).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable

from fieldkit.errors import Cancelled, ConfigError, ConnectError, HostKeyError
from fieldkit.link.hostkeys import (
    KEY_TYPE_ALGORITHMS, KnownHosts, _append_entry, _fingerprint_matches, _remove_name, fingerprint,
    fingerprint_blob, normalize_fingerprint,
)
from fieldkit.link.ssh import fetch_server_key
from fieldkit.link.sshconfig import as_ssh_target, resolve_ssh_target
from fieldkit.locations import Home

if TYPE_CHECKING:
    from paramiko import PKey

    from fieldkit.link.targets import SshTarget

def fetch_host_key(target: "SshTarget | str", home: Home | None = None, *, connect_timeout: float = 10.0,
                   key_types: Iterable[str] | None = None) -> tuple[str, str, "PKey"]:
    """Handshake with ``target`` (honouring ~/.ssh/config HostName, Port, ProxyCommand and
    ProxyJump), take its host key and disconnect without authenticating.

    ``key_types`` restricts the host-key types offered (``"ssh-ed25519"``, ``"ssh-rsa"``...);
    by default types already on file for the host come first, as when connecting.
    Jump hosts are connected to normally, so they must already be trusted.
    Returns ``(key_type, "SHA256:...", pkey)``.
    """
    pkey = fetch_server_key(target, home or Home.current(), connect_timeout=connect_timeout,
                            key_types=list(key_types) if key_types is not None else None)
    return pkey.get_name(), fingerprint(pkey), pkey


@dataclass(frozen=True)
class TrustResult:
    """What :func:`trust` did (refusals raise instead). Plain JSON-able fields."""

    host: str  # the name the key is filed under (``host`` or ``[host]:port``)
    key_type: str
    fingerprint: str
    status: str  # "added", "replaced" or "already-trusted"
    path: str  # fieldkit's known_hosts
    removed: tuple[str, ...] = ()  # fingerprints dropped from fieldkit's file (replace=True)
    notes: tuple[str, ...] = ()
    trusted: bool = True

    def as_dict(self) -> dict:
        return {"host": self.host, "key_type": self.key_type, "fingerprint": self.fingerprint,
                "status": self.status, "path": self.path, "removed": list(self.removed),
                "notes": list(self.notes), "trusted": self.trusted}


def trust(home: Home, target: "SshTarget | str", fingerprint: str | None = None,
          confirm: Callable[[str, str, str], bool] | None = None, replace: bool = False, *,
          connect_timeout: float = 10.0) -> TrustResult:
    """Pin ``target``'s host key in fieldkit's known_hosts.

    With ``fingerprint`` (``SHA256:...`` as printed by ``ssh-keygen -lf`` on the device), the
    key is pinned only if it matches exactly; other key types the device offers are tried before
    giving up. Otherwise ``confirm(host, key_type, fingerprint)`` must return True. A host with a
    different key on file is refused unless ``replace`` (then only that host's entries in
    fieldkit's own file are replaced; the user's files are never touched).

    Raises :class:`HostKeyError` (mismatch, conflicting key, revoked), :class:`ConfigError`
    (neither fingerprint nor confirm), :class:`Cancelled` (confirm said no; nothing written),
    :class:`ConnectError` (unreachable).
    """
    target = as_ssh_target(target)
    if fingerprint is None and confirm is None:
        raise ConfigError("refusing to trust a host key nobody checked",
                          hint="pass the fingerprint shown on the device (--fingerprint SHA256:...)")
    home.ensure()
    resolved = resolve_ssh_target(target)
    name = resolved.known_hosts_name
    display = resolved.display
    kh = KnownHosts.load(home, resolved.user_known_hosts)
    key_type, got, pkey = fetch_host_key(target, home, connect_timeout=connect_timeout)
    if fingerprint is not None and not _fingerprint_matches(fingerprint, pkey.asbytes()):
        pkey = _find_key_with_fingerprint(target, home, connect_timeout, fingerprint, key_type)
        if pkey is None:
            raise HostKeyError(
                f"host key for {display} does not match the fingerprint you gave: expected "
                f"{normalize_fingerprint(fingerprint)}, got {key_type} {got}; nothing was written",
                host=display, key_type=key_type, fingerprint=got,
                expected=normalize_fingerprint(fingerprint),
                hint="read the fingerprint again on the device's console "
                     "(ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub); a mismatch can mean "
                     "you are not talking to the device you think")
        key_type, got = pkey.get_name(), fingerprint_blob(pkey.asbytes())

    blob = pkey.asbytes()
    status, entries = kh.status(name, key_type, blob)
    if status == "ok":
        return TrustResult(name, key_type, got, "already-trusted", str(home.known_hosts))
    if status == "revoked":
        kh.check(name, pkey, display=display, target=str(target))  # raises
    conflict = status in ("changed", "other-types")
    if conflict and not replace:
        old = ", ".join(f"{e.key_type} {e.fingerprint} ({e.path}:{e.lineno})" for e in entries)
        raise HostKeyError(
            f"{display} already has a different host key on file: {old}; the device now "
            f"offers {key_type} {got}. Nothing was written.",
            host=display, key_type=key_type, fingerprint=got, expected=entries[0].fingerprint,
            hint=f"if the device was reflashed, check the new fingerprint on the device and run "
                 f"`fieldkit trust --replace {target}`")

    if fingerprint is None:
        assert confirm is not None
        if not confirm(display, key_type, got):
            raise Cancelled(f"host key {key_type} {got} for {display} was not trusted; "
                            "nothing was written")

    removed: list[str] = []
    notes: list[str] = []
    if conflict:
        removed = _remove_name(home.known_hosts, name)
        for e in entries:
            if e.path != home.known_hosts:
                notes.append(f"the old key {e.fingerprint} is still in {e.path}:{e.lineno} "
                             f"(fieldkit does not edit it; `ssh-keygen -R '{name}'` removes it)")
    _append_entry(home.known_hosts, name, key_type, pkey.get_base64())
    return TrustResult(name, key_type, got, "replaced" if conflict else "added",
                       str(home.known_hosts), tuple(removed), tuple(notes))


def _find_key_with_fingerprint(target: "SshTarget", home: Home, timeout: float, want: str,
                               already: str) -> "PKey | None":
    """The device may have several host keys; look for the one the technician read off it."""
    for key_type in KEY_TYPE_ALGORITHMS:
        if key_type == already:
            continue
        try:
            _, _, pkey = fetch_host_key(target, home, connect_timeout=timeout, key_types=[key_type])
        except HostKeyError:
            raise
        except ConnectError:
            continue  # the device has no key of this type
        if _fingerprint_matches(want, pkey.asbytes()):
            return pkey
    return None


def check_host_key(home: Home, target: "SshTarget | str", *, connect_timeout: float = 10.0) -> tuple[str, str]:
    """Fetch the device's host key and check it as a connect would; returns ``(key_type,
    fingerprint)`` when it is trusted, raises :class:`HostKeyError` (unknown, changed, revoked)
    or :class:`ConnectError` otherwise. Nothing is written."""
    target = as_ssh_target(target)
    resolved = resolve_ssh_target(target)
    key_type, fp, pkey = fetch_host_key(target, home, connect_timeout=connect_timeout)
    KnownHosts.load(home, resolved.user_known_hosts).check(resolved.known_hosts_name, pkey,
                                                            display=resolved.display, target=str(target))
    return key_type, fp
