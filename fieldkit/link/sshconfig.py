"""``~/.ssh/config`` applied as OpenSSH would: which host, user, port, keys, proxies and known_hosts
files a target means (``$FIELDKIT_SSH_CONFIG`` replaces the file in tests)."""

from __future__ import annotations

import getpass
import glob
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fieldkit.errors import ConfigError
from fieldkit.link.hostkeys import user_known_hosts_paths
from fieldkit.link.targets import SshTarget, known_hosts_name, parse_target


DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")


# --------------------------------------------------------------------------- ~/.ssh/config

def ssh_config_path() -> Path:
    """``$FIELDKIT_SSH_CONFIG`` when set (tests), else ``~/.ssh/config``."""
    env = os.environ.get("FIELDKIT_SSH_CONFIG")
    return Path(env).expanduser() if env else Path("~/.ssh/config").expanduser()


@dataclass(frozen=True)
class ResolvedSsh:
    """An :class:`SshTarget` after ~/.ssh/config: where to connect and how."""

    target: SshTarget
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    identity_files_configured: bool
    identities_only: bool
    proxy_command: str | None
    proxy_jump: str | None
    host_key_alias: str | None
    user_known_hosts: tuple[Path, ...]

    @property
    def known_hosts_name(self) -> str:
        """The name the host key is filed under (HostKeyAlias, else HostName; ``[h]:port``)."""
        if self.host_key_alias:
            return self.host_key_alias
        return known_hosts_name(self.hostname, self.port)

    @property
    def address(self) -> str:
        host = f"[{self.hostname}]" if ":" in self.hostname else self.hostname
        return f"{host}:{self.port}"

    @property
    def display(self) -> str:
        """``alias (host:port)`` or ``host:port``, for messages."""
        name = str(self.target) if self.target.alias else self.target.host
        return self.address if name in (self.hostname, self.address) else f"{name} ({self.address})"


_INCLUDE = re.compile(r"^\s*include(?:\s*=\s*|\s+)(.+)$", re.IGNORECASE)


def _read_config_file(path: Path, depth: int = 0) -> str:
    """The file's text with ``Include`` lines replaced by the files they name (paramiko's parser
    ignores Include). Relative patterns are relative to the config's directory (~/.ssh)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return ""
    except OSError as exc:
        raise ConfigError(f"cannot read SSH config {path}: {exc.strerror or exc}",
                          hint="fix its permissions, or point FIELDKIT_SSH_CONFIG elsewhere") from exc
    if depth > 8:
        raise ConfigError(f"SSH config {path}: Include nested too deeply (a loop?)")
    out: list[str] = []
    for line in text.splitlines():
        match = _INCLUDE.match(line)
        if not match:
            out.append(line)
            continue
        for pattern in shlex.split(match.group(1)):
            pattern = os.path.expanduser(pattern)
            if not os.path.isabs(pattern):
                pattern = str(ssh_config_path().parent / pattern)
            for included in sorted(glob.glob(pattern)):
                out.append(_read_config_file(Path(included), depth + 1))
    return "\n".join(out) + "\n"


def _read_config_text() -> str:
    return _read_config_file(ssh_config_path())


def _lookup(host: str, user: str | None, port: int | None) -> dict[str, Any]:
    """paramiko's parser with the target's explicit user/port as a leading block, so they win
    over the file (first value wins) and ``%p``/``%r`` in ProxyCommand see them."""
    import paramiko

    prelude = ""
    if user or port:
        prelude = f"Host {host}\n" + (f"  User {user}\n" if user else "") + (
            f"  Port {port}\n" if port else "")
    try:
        config = paramiko.SSHConfig.from_text(prelude + _read_config_text())
        return dict(config.lookup(host))
    except Exception as exc:  # ConfigParseError, Match exec without invoke, bad values...
        raise ConfigError(f"cannot use SSH config {ssh_config_path()} for {host}: {exc}",
                          hint="fix the file (ssh -G HOST shows what OpenSSH makes of it)") from exc


_HOST_LINE = re.compile(r"^\s*host(?:\s*=\s*|\s+)(.+)$", re.IGNORECASE)


def config_names_host(name: str) -> bool:
    """Whether a ``Host`` line of the SSH config matches ``name`` (a pattern like ``cam-*``
    counts; a line whose only match is the catch-all ``*`` does not, nor one a ``!pattern`` on it
    excludes), as OpenSSH would match it."""
    from fnmatch import fnmatchcase

    for line in _read_config_text().splitlines():
        match = _HOST_LINE.match(line)
        if not match:
            continue
        try:
            patterns = shlex.split(match.group(1), comments=True)
        except ValueError:
            patterns = match.group(1).split()
        if any(p.startswith("!") and fnmatchcase(name, p[1:]) for p in patterns):
            continue
        if any(p != "*" and not p.startswith("!") and fnmatchcase(name, p) for p in patterns):
            return True
    return False


def hosts_file_names(path: Path = Path("/etc/hosts")) -> set[str]:
    """The host names ``/etc/hosts`` lists (``localhost``, a plant's static names): no DNS asked."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    return {n for line in text.splitlines() for n in line.split("#", 1)[0].split()[1:]}


def names_a_host(text: str) -> bool:
    """Whether ``text`` (a target that is no inventory name) can mean a machine: every target form
    does (``ssh://host``, ``user@host``, an address, a dotted host name, ``serial:``, ``local:``)
    except a bare single word, which does only when the SSH config has a ``Host`` for it or
    ``/etc/hosts`` lists it. Any other bare word is far more likely a mistyped device name than a
    host name DNS should be asked about (``fieldkit health lin3-cam``). ConfigError when ``text``
    is not a target at all."""
    target = parse_target(text)
    if not isinstance(target, SshTarget) or target.alias is None:
        return True  # serial:, local:, ssh://..., user@host
    host = target.host
    if "." in host or ":" in host:
        return True  # a dotted name, an IPv4 or IPv6 address
    return config_names_host(host) or host in hosts_file_names()


def as_ssh_target(target: SshTarget | str) -> SshTarget:
    """Accept a target string (``ssh://...`` or an alias) where an :class:`SshTarget` is wanted."""
    parsed = parse_target(target) if isinstance(target, str) else target
    if not isinstance(parsed, SshTarget):
        raise ConfigError(f"{target} is not an SSH target", hint="use ssh://[user@]host[:port] "
                          "or a Host alias from ~/.ssh/config")
    return parsed


def resolve_ssh_target(target: SshTarget, *, proxy_jump: str | None = None) -> ResolvedSsh:
    """Apply ~/.ssh/config to ``target``. ``proxy_jump`` overrides the config's ProxyJump
    (used for the earlier hops of a ``ProxyJump a,b`` chain; ``"none"`` disables it)."""
    opts = _lookup(target.host, target.user, target.port)
    try:
        port = int(opts.get("port", 22))
    except ValueError:
        raise ConfigError(f"SSH config {ssh_config_path()}: Port {opts.get('port')!r} for "
                          f"{target.host} is not a number") from None
    jump = proxy_jump if proxy_jump is not None else opts.get("proxyjump")
    if jump is not None and jump.strip().lower() == "none":
        jump = None
    command = opts.get("proxycommand")
    if command is not None and command.strip().lower() == "none":
        command = None
    identity = tuple(opts.get("identityfile") or ())
    return ResolvedSsh(
        target=target,
        hostname=opts.get("hostname") or target.host,
        port=port,
        user=opts.get("user") or getpass.getuser(),
        identity_files=identity if identity else DEFAULT_IDENTITIES,
        identity_files_configured=bool(identity),
        identities_only=str(opts.get("identitiesonly", "no")).lower() == "yes",
        proxy_command=None if jump else command,
        proxy_jump=jump,
        host_key_alias=opts.get("hostkeyalias"),
        user_known_hosts=tuple(user_known_hosts_paths(opts.get("userknownhostsfile"))),
    )


def _parse_jump(spec: str) -> SshTarget:
    spec = spec.strip()
    text = spec if spec.lower().startswith("ssh://") else "ssh://" + spec
    try:
        target = parse_target(text)
    except ConfigError as exc:
        raise ConfigError(f"bad ProxyJump entry {spec!r} in {ssh_config_path()}: {exc.message}",
                          hint="ProxyJump takes [user@]host[:port][,more hops]") from None
    assert isinstance(target, SshTarget)
    return target
