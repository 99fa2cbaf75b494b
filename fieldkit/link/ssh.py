"""SSH transport (paramiko): sessions with strict host keys, ~/.ssh/config applied, agent push.

``~/.ssh/config`` (or ``$FIELDKIT_SSH_CONFIG``) is applied by hand, as OpenSSH would: HostName,
User, Port, IdentityFile, IdentitiesOnly, HostKeyAlias, UserKnownHostsFile, ProxyCommand (run with
``/bin/sh -c`` like OpenSSH, over a socketpair) and ProxyJump (comma-separated chains; each jump is
a full :class:`SshSession` with its own config and host-key check, and the next hop runs over a
``direct-tcpip`` channel). Host keys are checked by :mod:`fieldkit.link.hostkeys` right after the
key exchange and before any credential is offered.

Every wait while connecting (DNS, TCP connect, banner, key exchange, each authentication
attempt) is bounded by ``connect_timeout``. Channels carry no timeout: a long-idle agent link is
fine, and dead peers are detected by the message layer's heartbeats, which call ``close()``.
"""

from __future__ import annotations

import collections
import getpass
import glob
import hashlib
import io
import logging
import os
import re
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from fieldkit.errors import ConfigError, ConnectError, FieldkitError
from fieldkit.link.hostkeys import KEY_TYPE_ALGORITHMS, KnownHosts, fingerprint, user_known_hosts_paths
from fieldkit.link.targets import SshTarget, known_hosts_name, parse_target
from fieldkit.locations import Home

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)
logging.getLogger("paramiko").addHandler(logging.NullHandler())  # we report link errors ourselves

WINDOW_SIZE = 16 * 1024 * 1024  # bytes: exec channels stream bulk data
MAX_PACKET_SIZE = 32 * 1024
STDERR_KEEP = 64 * 1024  # bytes of a stream's stderr kept for error messages
MAX_JUMP_DEPTH = 8
FAST_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com")

DEFAULT_IDENTITIES = ("~/.ssh/id_ed25519", "~/.ssh/id_ecdsa", "~/.ssh/id_rsa")
DEFAULT_PYTHONS = ("python3", "/usr/bin/python3", "/usr/local/bin/python3", "python3.13",
                   "python3.12", "python3.11", "python3.10", "python3.9")


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


# --------------------------------------------------------------------------- sockets

class _ProxyProcess:
    """A ProxyCommand on one end of a socketpair (the transport gets a real socket).

    paramiko.ProxyCommand spins on EOF, never reaps its child and never reads its stderr, so
    this runs the command like OpenSSH does (``exec`` through ``/bin/sh -c``) instead.
    """

    def __init__(self, command: str) -> None:
        ours, theirs = socket.socketpair()
        argv = ["/bin/sh", "-c", "exec " + command] if os.name == "posix" else shlex.split(command)
        try:
            self.proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=subprocess.PIPE,
                                         close_fds=True, start_new_session=True)
        except OSError as exc:
            ours.close()
            raise ConnectError(f"cannot start ProxyCommand {command!r}: {exc}") from exc
        finally:
            theirs.close()
        self.command = command
        self.sock = ours
        self._stderr: collections.deque[bytes] = collections.deque(maxlen=32)
        self._drainer = threading.Thread(target=self._drain, name="ssh-proxy-stderr", daemon=True)
        self._drainer.start()

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in iter(lambda: self.proc.stderr.readline(4096), b""):  # type: ignore[union-attr]
            self._stderr.append(line)

    def stderr_text(self) -> str:
        return b"".join(self._stderr).decode("utf-8", "replace").strip()

    def exit_status(self, wait: float) -> int | None:
        """The command's exit status if it ends within ``wait`` seconds (stderr then complete)."""
        try:
            rc = self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return None
        self._drainer.join(wait)
        return rc

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=2)


def _getaddrinfo(host: str, port: int, timeout: float) -> list[tuple]:
    try:  # numeric addresses need no resolver
        return socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    except socket.gaierror:
        pass
    box: dict[str, Any] = {}

    def work() -> None:
        try:
            box["ok"] = socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            box["err"] = exc

    worker = threading.Thread(target=work, name="ssh-resolve", daemon=True)
    worker.start()
    worker.join(timeout)
    if worker.is_alive():
        raise ConnectError(f"could not resolve {host!r} within {timeout:g} s",
                           hint="check the name, or use the device's IP address")
    if "err" in box:
        raise ConnectError(f"cannot resolve host name {host!r}: {box['err']}",
                           hint="check the spelling, the HostName in ~/.ssh/config, or use the "
                                "device's IP address")
    return box["ok"]


def _tcp_connect(res: ResolvedSsh, timeout: float) -> socket.socket:
    deadline = time.monotonic() + timeout
    infos = _getaddrinfo(res.hostname, res.port, timeout)
    errors: list[str] = []
    for family, socktype, proto, _, addr in infos:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        sock = socket.socket(family, socktype, proto)
        sock.settimeout(remaining)
        try:
            sock.connect(addr)
        except socket.timeout:
            sock.close()
            errors.append(f"{addr[0]}: no answer within {timeout:g} s")
            continue
        except OSError as exc:
            sock.close()
            errors.append(f"{addr[0]}: {exc.strerror or exc}")
            continue
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        return sock
    detail = "; ".join(errors) or f"no answer within {timeout:g} s"
    hint = "check the cable/network, the device's address and port, and that sshd runs on it"
    if any("refused" in e.lower() for e in errors):
        hint = f"nothing listens on port {res.port}: is sshd running, and is this the right port?"
    raise ConnectError(f"cannot reach {res.display}: {detail}", hint=hint)


# --------------------------------------------------------------------------- transports

def _start_transport(sock: Any, res: ResolvedSsh, key_types: list[str], timeout: float,
                     proxy: _ProxyProcess | None, exclusive: bool = False) -> "paramiko.Transport":
    import paramiko

    t = paramiko.Transport(sock, default_window_size=WINDOW_SIZE,
                           default_max_packet_size=MAX_PACKET_SIZE)
    t.banner_timeout = timeout
    t.handshake_timeout = timeout
    t.auth_timeout = timeout
    t.channel_timeout = timeout
    # AES-GCM needs no separate MAC pass: ~190 MB/s vs ~140 MB/s for aes128-ctr+HMAC here.
    opts = t.get_security_options()
    fast = [c for c in FAST_CIPHERS if c in opts.ciphers]
    if fast:
        opts.ciphers = fast + [c for c in opts.ciphers if c not in fast]
    if key_types:
        algos: list[str] = []
        for kt in key_types:
            algos.extend(a for a in KEY_TYPE_ALGORITHMS.get(kt, (kt,)) if a not in algos)
        supported = [a for a in algos if a in opts.key_types]
        if supported or exclusive:
            rest = [] if exclusive else [a for a in opts.key_types if a not in supported]
            if not supported + rest:
                t.close()
                raise ConnectError(f"paramiko cannot check {'/'.join(key_types)} host keys")
            opts.key_types = supported + rest
    done = threading.Event()
    try:
        t.start_client(event=done)
    except Exception as exc:
        t.close()
        raise ConnectError(f"cannot start an SSH session with {res.display}: {exc}") from exc
    # paramiko bounds the banner and key exchange itself; this is a backstop.
    if not done.wait(2 * timeout + 1) or not t.is_active():
        exc = t.get_exception()
        t.close()
        raise _handshake_error(res, exc, timeout, proxy)
    return t


def _handshake_error(res: ResolvedSsh, exc: BaseException | None, timeout: float,
                     proxy: _ProxyProcess | None) -> ConnectError:
    import paramiko

    text = str(exc) if exc else "no answer"
    extra = ""
    if proxy is not None:
        rc = proxy.exit_status(0.5)
        said = proxy.stderr_text()
        if rc is not None:
            return ConnectError(
                f"ProxyCommand `{proxy.command}` for {res.display} exited (status {rc}) before "
                f"the SSH handshake" + (f": {said}" if said else ""),
                hint="run the command by hand to see why; check ProxyCommand in ~/.ssh/config")
        extra = f"; ProxyCommand `{proxy.command}`" + (f" said: {said}" if said else "")
    if isinstance(exc, paramiko.IncompatiblePeer):
        return ConnectError(f"{res.display} speaks SSH but shares no algorithms with paramiko: "
                            f"{text}", hint="the device's sshd may be very old or locked down")
    if "banner" in text.lower() or isinstance(exc, (EOFError, socket.timeout)):
        return ConnectError(f"{res.display} did not answer as an SSH server within {timeout:g} s "
                            f"({text.strip() or type(exc).__name__}){extra}",
                            hint="is this the SSH port? a device still booting may accept the "
                                 "connection before sshd is ready")
    return ConnectError(f"SSH handshake with {res.display} failed: {text}{extra}")


@dataclass
class _Route:
    """The socket to the final host and what has to be closed with it."""

    sock: Any
    jumps: list["SshSession"] = field(default_factory=list)
    proxy: _ProxyProcess | None = None

    def close(self) -> None:
        try:
            self.sock.close()
        except Exception:
            pass
        if self.proxy is not None:
            self.proxy.close()
        for jump in reversed(self.jumps):
            jump.close()


def _open_route(res: ResolvedSsh, home: Home, timeout: float, allow_agent: bool,
                depth: int) -> _Route:
    if res.proxy_jump:
        hops = [h for h in res.proxy_jump.split(",") if h.strip()]
        if depth >= MAX_JUMP_DEPTH:
            raise ConfigError(f"ProxyJump chain for {res.display} is longer than {MAX_JUMP_DEPTH} "
                              "hops (a loop in ~/.ssh/config?)")
        last = _parse_jump(hops[-1])
        earlier = ",".join(hops[:-1]) or None
        try:
            jump = SshSession._open(last, home, timeout, allow_agent, proxy_jump=earlier,
                                    depth=depth + 1)
        except FieldkitError as exc:
            exc.message = f"jump host {hops[-1].strip()} (ProxyJump for {res.display}): {exc.message}"
            raise
        try:
            chan = jump.open_direct_tcpip(res.hostname, res.port, timeout=timeout)
        except BaseException:
            jump.close()
            raise
        return _Route(chan, [jump])
    if res.proxy_command:
        proxy = _ProxyProcess(res.proxy_command)
        return _Route(proxy.sock, proxy=proxy)
    return _Route(_tcp_connect(res, timeout))


def _connect_transport(res: ResolvedSsh, home: Home, timeout: float, allow_agent: bool,
                       depth: int, known: KnownHosts | None,
                       key_types: list[str] | None = None) -> tuple["paramiko.Transport", _Route]:
    """``key_types``: offer only these host-key types; None: prefer those on file in ``known``."""
    route = _open_route(res, home, timeout, allow_agent, depth)
    try:
        exclusive = key_types is not None
        if key_types is None:
            key_types = known.known_key_types(res.known_hosts_name) if known else []
        t = _start_transport(route.sock, res, key_types, timeout, route.proxy, exclusive)
    except BaseException:
        route.close()
        raise
    return t, route


def fetch_server_key(target: SshTarget, home: Home, *, connect_timeout: float = 10.0,
                     key_types: list[str] | None = None) -> "paramiko.PKey":
    """Key-exchange only: return the server's host key (see hostkeys.fetch_host_key)."""
    res = resolve_ssh_target(as_ssh_target(target))
    known = KnownHosts.load(home, res.user_known_hosts) if key_types is None else None
    t, route = _connect_transport(res, home, connect_timeout, True, 0, known, key_types)
    try:
        key = t.get_remote_server_key()
        if key_types and key.get_name() not in key_types:
            raise ConnectError(f"{res.display} has no {'/'.join(key_types)} host key")
        return key
    finally:
        t.close()
        route.close()


# --------------------------------------------------------------------------- client keys

def write_ed25519_key(path: Path, comment: str) -> Path:
    """Create a new ed25519 private key at ``path`` (OpenSSH format, 0600, directory 0700) and
    its ``.pub``. Never overwrites: if another process created ``path`` first, that key stays."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}.{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, private)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return path
    finally:
        os.unlink(tmp)
    pub = path.with_name(path.name + ".pub")
    pub.write_bytes(public + f" {comment}\n".encode())
    return path


def ensure_client_key(home: Home) -> Path:
    """fieldkit's own ed25519 client key (``home.client_key``, 0600, plus an OpenSSH ``.pub``);
    created if missing. Returns the private key's path."""
    path = home.client_key
    if not path.exists():
        write_ed25519_key(path, f"fieldkit@{socket.gethostname()}")
    pub = path.with_name(path.name + ".pub")
    if not pub.exists():  # someone deleted it: derive it again from the private key
        key = _load_key(path)
        pub.write_text(f"{key.get_name()} {key.get_base64()} fieldkit@{socket.gethostname()}\n")
    try:
        os.chmod(path.parent, 0o700)
    except OSError:
        pass
    return path


def _load_key(path: Path) -> "paramiko.PKey":
    import paramiko

    return paramiko.PKey.from_path(str(path))


def _short(path: Path | str) -> str:
    text = str(path)
    home = os.path.expanduser("~")
    return "~" + text[len(home):] if home != "/" and text.startswith(home + os.sep) else text


def _auth_candidates(res: ResolvedSsh, home: Home, allow_agent: bool,
                     skipped: list[str]) -> Iterator[tuple[str, "paramiko.PKey"]]:
    """(label, key) in the order to offer them; unusable files are noted in ``skipped``."""
    import paramiko

    def from_file(path: Path, label: str) -> Iterator[tuple[str, "paramiko.PKey"]]:
        if not path.is_file():
            return
        try:
            key = _load_key(path)
        except paramiko.PasswordRequiredException:
            skipped.append(f"{label} (passphrase-protected: load it into ssh-agent)")
            return
        except Exception as exc:  # unreadable, unsupported type, garbage
            skipped.append(f"{label} (cannot load: {exc})")
            return
        yield label, key

    for name in res.identity_files if res.identity_files_configured else ():
        path = Path(os.path.expanduser(name))
        yield from from_file(path, _short(path))
    try:
        client = ensure_client_key(home)
    except OSError as exc:
        skipped.append(f"fieldkit key {home.client_key} (cannot create: {exc})")
    else:
        yield from from_file(client, f"fieldkit key {client}")
    if res.identities_only:
        return
    if allow_agent and os.environ.get("SSH_AUTH_SOCK"):
        try:
            agent = paramiko.Agent()
            agent_keys = agent.get_keys()
        except Exception as exc:
            skipped.append(f"ssh-agent (cannot talk to it: {exc})")
            agent_keys = ()
        for i, key in enumerate(agent_keys):
            yield f"ssh-agent key {i + 1}", key
    if not res.identity_files_configured:
        for name in DEFAULT_IDENTITIES:
            path = Path(os.path.expanduser(name))
            yield from from_file(path, _short(path))


def _authenticate(t: "paramiko.Transport", res: ResolvedSsh, home: Home, allow_agent: bool) -> None:
    import paramiko

    tried: list[str] = []
    skipped: list[str] = []
    seen: set[bytes] = set()
    hint = (f"put fieldkit's public key ({home.client_key}.pub) in ~{res.user}/.ssh/authorized_keys "
            f"on the device, or set User/IdentityFile for it in {_short(ssh_config_path())}")
    for label, key in _auth_candidates(res, home, allow_agent, skipped):
        blob = key.asbytes()
        if blob in seen:
            continue
        seen.add(blob)
        tried.append(f"{label} ({key.get_name()} {fingerprint(key)})")
        try:
            remaining = t.auth_publickey(res.user, key)
        except paramiko.BadAuthenticationType as exc:
            raise ConnectError(
                f"{res.user}@{res.display} does not accept public-key login "
                f"(it allows: {', '.join(exc.allowed_types) or 'nothing'})",
                hint="enable PubkeyAuthentication in the device's sshd_config and install "
                     f"fieldkit's key ({home.client_key}.pub)") from None
        except paramiko.AuthenticationException:
            continue
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(
                f"{res.display} closed the connection during authentication as {res.user} "
                f"after trying {'; '.join(tried)}: {exc}",
                hint="too many keys offered (sshd MaxAuthTries)? set IdentityFile and "
                     "IdentitiesOnly yes for this host in ~/.ssh/config") from None
        if remaining:
            raise ConnectError(f"{res.user}@{res.display} wants a second factor "
                               f"({', '.join(remaining)}) after the key; fieldkit does not "
                               "support interactive login", hint=hint)
        if t.is_authenticated():
            return
    lines = "; ".join(tried) if tried else "no usable keys"
    if skipped:
        lines += "; skipped: " + "; ".join(skipped)
    raise ConnectError(f"authentication failed for {res.user}@{res.display}: tried {lines}",
                       hint=hint)


# --------------------------------------------------------------------------- streams

class ChannelStream:
    """An exec channel as a *stream* (fieldkit.agent.streams): ``read``/``write``/``close``.

    Stderr is drained in the background (so it can never stall stdout) and its last 64 KiB are
    kept for error messages. No timeouts: ``close()`` (from the heartbeat watchdog or the user)
    unblocks a reader.
    """

    def __init__(self, channel: "paramiko.Channel", command: str) -> None:
        self.channel = channel
        self.command = command
        self._write_lock = threading.Lock()
        self._closed = threading.Event()
        self._stderr = bytearray()
        self._stderr_lock = threading.Lock()
        self._stderr_done = threading.Event()
        threading.Thread(target=self._drain_stderr, name="ssh-stderr", daemon=True).start()

    def _drain_stderr(self) -> None:
        try:
            while True:
                try:
                    data = self.channel.recv_stderr(65536)
                except socket.timeout:  # run() sets a channel timeout for its own reads
                    if self._closed.is_set():
                        break
                    continue
                if not data:
                    break
                with self._stderr_lock:
                    self._stderr += data
                    if len(self._stderr) > STDERR_KEEP:
                        del self._stderr[:len(self._stderr) - STDERR_KEEP]
        except Exception:  # channel torn down under us
            pass
        finally:
            self._stderr_done.set()

    def read(self, n: int) -> bytes:
        if self._closed.is_set():
            return b""
        try:
            return self.channel.recv(n)
        except (OSError, EOFError) as exc:
            if self._closed.is_set() or self.channel.closed:
                return b""
            raise OSError(f"SSH channel read failed: {exc}") from exc

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data).cast("B") if not isinstance(data, bytes) else memoryview(data)
        with self._write_lock:
            pos, total = 0, len(view)
            while pos < total:
                if self._closed.is_set():
                    raise OSError("SSH channel closed")
                try:
                    sent = self.channel.send(view[pos:])
                except OSError:
                    raise
                except Exception as exc:  # EOFError / SSHException: the transport died
                    raise OSError(f"SSH connection lost: {exc or type(exc).__name__}") from exc
                if sent <= 0:
                    raise OSError("SSH channel closed by the device")
                pos += sent

    def close_write(self) -> None:
        """Send EOF (the command sees end of stdin); reading goes on."""
        try:
            self.channel.shutdown_write()
        except Exception:
            pass

    def close(self) -> None:
        """Idempotent and prompt (under a second), even when the device stopped answering.

        Readers get ``b""`` at once. Sending the close message can block behind a write stuck
        in a full TCP buffer (peer gone); if it does not go out within 0.5 s, the whole SSH
        connection is dead (every channel shares that socket), so the transport is closed,
        which also releases the stuck writer with an ``OSError``."""
        if self._closed.is_set():
            return
        self._closed.set()

        def shut() -> None:
            try:
                self.channel.close()
            except Exception:
                pass

        closer = threading.Thread(target=shut, name="ssh-chan-close", daemon=True)
        closer.start()
        closer.join(0.5)
        if closer.is_alive():
            log.warning("ssh: peer not taking data; closing the connection for %s", self.command)
            try:
                self.channel.get_transport().close()
            except Exception:
                pass

    @property
    def closed(self) -> bool:
        return self._closed.is_set() or self.channel.closed

    def stderr_text(self) -> str:
        with self._stderr_lock:
            return self._stderr.decode("utf-8", "replace")

    def exit_status(self, timeout: float | None = None) -> int | None:
        """The command's exit status; None if it has not exited within ``timeout``; -1 if the
        channel closed without one (killed by a signal, link lost)."""
        if not self.channel.status_event.wait(timeout):
            return None
        return self.channel.exit_status


# --------------------------------------------------------------------------- sessions

class SshSession:
    """An authenticated SSH connection to one device (plus any jump hosts it goes through)."""

    def __init__(self, transport: "paramiko.Transport", resolved: ResolvedSsh, route: _Route) -> None:
        self.transport = transport
        self.resolved = resolved
        self._route = route
        self._closed = False

    @classmethod
    def open(cls, target: SshTarget | str, home: Home | None = None, *, connect_timeout: float = 10.0,
             allow_agent: bool = True) -> "SshSession":
        """Connect, check the host key strictly, authenticate with keys. Raises
        :class:`HostKeyError`, :class:`ConnectError` or :class:`ConfigError`."""
        return cls._open(as_ssh_target(target), home or Home.current(), connect_timeout,
                         allow_agent)

    @classmethod
    def _open(cls, target: SshTarget, home: Home, timeout: float, allow_agent: bool,
              proxy_jump: str | None = None, depth: int = 0) -> "SshSession":
        import paramiko

        res = resolve_ssh_target(target, proxy_jump=proxy_jump)
        known = KnownHosts.load(home, res.user_known_hosts)
        t, route = _connect_transport(res, home, timeout, allow_agent, depth, known)
        try:
            known.check(res.known_hosts_name, t.get_remote_server_key(), display=res.display,
                        target=str(target))
            _authenticate(t, res, home, allow_agent)
        except BaseException as exc:
            t.close()
            route.close()
            if isinstance(exc, paramiko.SSHException):
                raise ConnectError(f"SSH error with {res.display}: {exc}") from exc
            raise
        log.debug("ssh: connected to %s as %s", res.display, res.user)
        return cls(t, res, route)

    @property
    def name(self) -> str:
        return self.resolved.display

    def is_active(self) -> bool:
        return not self._closed and self.transport.is_active()

    def _open_session(self, window_size: int | None = None,
                      max_packet_size: int | None = None) -> "paramiko.Channel":
        import paramiko

        if self._closed:
            raise ConnectError(f"SSH session to {self.name} is closed")
        try:
            chan = self.transport.open_session(window_size=window_size,
                                               max_packet_size=max_packet_size,
                                               timeout=self.transport.channel_timeout)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"cannot open an SSH channel to {self.name}: {exc}",
                               hint="the link may have dropped; reconnect") from exc
        return chan

    def open_direct_tcpip(self, host: str, port: int, *, timeout: float = 10.0) -> "paramiko.Channel":
        """A TCP connection to ``host:port`` made by this device (ProxyJump's next hop)."""
        import paramiko

        try:
            chan = self.transport.open_channel("direct-tcpip", dest_addr=(host, port),
                                               src_addr=("127.0.0.1", 0), window_size=WINDOW_SIZE,
                                               max_packet_size=MAX_PACKET_SIZE, timeout=timeout)
        except paramiko.ChannelException as exc:
            raise ConnectError(f"{self.name} could not open a connection to {host}:{port} "
                               f"({exc.text})",
                               hint="is the next host up, and does the jump host allow TCP "
                                    "forwarding (AllowTcpForwarding)?") from exc
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise ConnectError(f"{self.name} could not forward to {host}:{port}: {exc}") from exc
        return chan

    def exec_stream(self, command: str, *, window_size: int = WINDOW_SIZE,
                    max_packet_size: int = MAX_PACKET_SIZE) -> ChannelStream:
        """Run ``command`` on the device; its stdin/stdout as a stream (stderr collected)."""
        import paramiko

        chan = self._open_session(window_size, max_packet_size)
        try:
            chan.exec_command(command)
        except (paramiko.SSHException, OSError, EOFError) as exc:
            chan.close()
            raise ConnectError(f"{self.name} refused to run {command!r}: {exc}") from exc
        chan.settimeout(None)
        return ChannelStream(chan, command)

    def run(self, command: str, input: bytes | None = None,
            timeout: float = 30.0) -> tuple[int, bytes, bytes]:
        """Run a short command; return ``(exit status, stdout, stderr)``. ``input`` is sent to
        its stdin, then EOF. Exit status -1: none reported (killed by a signal).
        Raises :class:`ConnectError` if it does not finish within ``timeout`` seconds."""
        import paramiko

        deadline = time.monotonic() + timeout
        stream = self.exec_stream(command)
        chan = stream.channel
        writer = None
        if input:
            def feed() -> None:
                try:
                    stream.write(input)
                except OSError:
                    pass  # the command stopped reading; its exit status tells the story
                stream.close_write()

            writer = threading.Thread(target=feed, name="ssh-run-stdin", daemon=True)
            writer.start()
        else:
            stream.close_write()
        out = io.BytesIO()
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise socket.timeout()
                chan.settimeout(remaining)
                data = chan.recv(1 << 20)
                if not data:
                    break
                out.write(data)
            if not stream._stderr_done.wait(max(0.0, deadline - time.monotonic())):
                raise socket.timeout()
            status = stream.exit_status(max(0.0, deadline - time.monotonic()))
            if status is None:
                raise socket.timeout()
        except socket.timeout:
            stream.close()
            raise ConnectError(f"`{_clip(command)}` on {self.name} did not finish within "
                               f"{timeout:g} s") from None
        except (paramiko.SSHException, EOFError) as exc:
            stream.close()
            raise ConnectError(f"lost the SSH link to {self.name} while running "
                               f"`{_clip(command)}`: {exc}") from exc
        if writer is not None:
            writer.join(max(0.0, deadline - time.monotonic()))
        stream.close()
        return status, out.getvalue(), bytes(stream._stderr)

    def close(self) -> None:
        """Close every channel, the transport, then the jump hosts / ProxyCommand."""
        if self._closed:
            return
        self._closed = True
        try:
            # first: this aborts any send stuck on a dead peer and ends every channel (readers
            # see EOF); closing channels one by one could block on such a peer
            self.transport.close()
        except Exception:
            pass
        self._route.close()

    def __enter__(self) -> "SshSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self.is_active() else "closed"
        return f"<SshSession {self.resolved.user}@{self.name} {state}>"


def _clip(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


# --------------------------------------------------------------------------- agent push

@dataclass(frozen=True)
class PushedAgent:
    """Where the agent is on the device. Unpacks as ``python, path = push_agent(...)``."""

    python: str  # absolute path of the interpreter that will run it
    path: str  # absolute path of the cached .pyz
    uploaded: bool  # False: the cached copy was reused
    python_version: str

    def __iter__(self) -> Iterator[str]:
        return iter((self.python, self.path))


_MARK = "@@fk"
_VERSION_CODE = ("import sys; v = sys.version_info; "
                 "print('%d.%d.%d %s' % (v[0], v[1], v[2], 'ok' if v >= (3, 9) else 'old'))")
_HASH_CODE = ("import hashlib, sys; h = hashlib.sha256(); f = open(sys.argv[1], 'rb'); "
              "[h.update(b) for b in iter(lambda: f.read(1 << 20), b'')]; print(h.hexdigest())")


def _probe_script(candidates: tuple[str, ...], name: str) -> str:
    q = shlex.quote
    cands = " ".join(q(c) for c in candidates)
    return f"""
d="$HOME/.cache/fieldkit"
umask 077
if mkdir -p "$d" 2>/dev/null && chmod 700 "$d" 2>/dev/null && [ -w "$d" ]; then
  printf '{_MARK}\\tdir\\tok\\t%s\\n' "$d"
else
  printf '{_MARK}\\tdir\\tfail\\t%s\\n' "$d"
fi
good=""
for p in {cands}; do
  w=$(command -v "$p" 2>/dev/null)
  if [ -z "$w" ]; then printf '{_MARK}\\tpy\\t%s\\tmissing\\t\\n' "$p"; continue; fi
  v=$("$w" -c {q(_VERSION_CODE)} 2>&1 | head -n 1)
  printf '{_MARK}\\tpy\\t%s\\t%s\\t%s\\n' "$p" "$w" "$v"
  case "$v" in *" ok") good="$w"; break;; esac
done
f="$d/{name}"
if [ -n "$good" ] && [ -f "$f" ]; then
  h=$("$good" -c {q(_HASH_CODE)} "$f" 2>/dev/null)
  printf '{_MARK}\\tcached\\t%s\\n' "$h"
else
  printf '{_MARK}\\tcached\\t\\n'
fi
"""


def _upload_script(python: str, directory: str, name: str, sha256: str) -> str:
    q = shlex.quote
    return (f"umask 077; d={q(directory)}; f=\"$d\"/{q(name)}; t=\"$d/.upload-$$.tmp\"; "
            f"trap 'rm -f \"$t\"' EXIT; "
            f"cat > \"$t\" || exit 10; "
            f"h=$({q(python)} -c {q(_HASH_CODE)} \"$t\") || exit 11; "
            f"if [ \"$h\" != {q(sha256)} ]; then echo \"sha256 on the device is $h\" >&2; exit 12; fi; "
            f"mv -f \"$t\" \"$f\" || exit 13; trap - EXIT; "
            f"for o in \"$d\"/agent-*.pyz; do [ \"$o\" = \"$f\" ] || rm -f \"$o\"; done; "
            f"echo {_MARK}-uploaded")


def push_agent(session: SshSession, zipapp_bytes: bytes, digest: str,
               python_candidates: tuple[str, ...] = DEFAULT_PYTHONS, *,
               timeout: float = 60.0) -> PushedAgent:
    """Make sure ``~/.cache/fieldkit/agent-<digest[:16]>.pyz`` on the device holds exactly
    ``zipapp_bytes`` (sha256 ``digest``) and find a Python >= 3.9 to run it.

    One shell round trip probes the interpreters and the cached copy; the archive is uploaded
    only when missing or stale (to a temp name, hash-checked on the device, then renamed; older
    ``agent-*.pyz`` are removed). Raises :class:`ConnectError` when no candidate is usable.
    """
    actual = hashlib.sha256(zipapp_bytes).hexdigest()
    if actual != digest.lower():
        raise ValueError(f"push_agent: digest {digest} is not the sha256 of the archive ({actual})")
    candidates = tuple(python_candidates) or DEFAULT_PYTHONS
    name = f"agent-{actual[:16]}.pyz"
    rc, out, err = session.run("/bin/sh -s", input=_probe_script(candidates, name).encode(),
                               timeout=timeout)
    directory = None
    dir_ok = False
    tried: list[str] = []
    python = version = None
    cached = ""
    for line in out.decode("utf-8", "replace").splitlines():
        fields = line.split("\t")
        if not fields or fields[0] != _MARK:
            continue
        if fields[1] == "dir" and len(fields) >= 4:
            dir_ok, directory = fields[2] == "ok", fields[3]
        elif fields[1] == "py" and len(fields) >= 5:
            cand, where, said = fields[2], fields[3], fields[4].strip()
            if where == "missing":
                tried.append(f"{cand}: not found")
            elif said.endswith(" ok"):
                python, version = where, said.split()[0]
            elif said.endswith(" old"):
                tried.append(f"{cand} ({where}): too old, version {said.split()[0]}")
            else:
                tried.append(f"{cand} ({where}): does not run ({said or 'no output'})")
        elif fields[1] == "cached":
            cached = fields[2].strip() if len(fields) > 2 else ""
    if directory is None:
        raise ConnectError(f"could not probe {session.name} with /bin/sh (exit {rc}): "
                           f"{err.decode('utf-8', 'replace').strip() or 'no output'}",
                           hint="the device needs a POSIX shell at /bin/sh for fieldkit's agent")
    if python is None:
        raise ConnectError(f"no usable Python on {session.name}: " + "; ".join(tried),
                           hint="install python3 (>= 3.9) on the device, or list its interpreter "
                                "in the device profile's transport.python")
    if not dir_ok:
        raise ConnectError(f"cannot create the agent cache {directory} on {session.name}",
                           hint="is the home directory writable (or full, or read-only)?")
    path = f"{directory}/{name}"
    if cached == actual:
        return PushedAgent(python, path, False, version or "")
    rc, out, err = session.run("/bin/sh -c " + shlex.quote(_upload_script(python, directory, name,
                                                                           actual)),
                               input=zipapp_bytes, timeout=timeout + len(zipapp_bytes) / 1e6)
    if rc != 0 or f"{_MARK}-uploaded".encode() not in out:
        said = err.decode("utf-8", "replace").strip() or out.decode("utf-8", "replace").strip()
        raise ConnectError(f"uploading the agent to {path} on {session.name} failed "
                           f"(exit {rc}): {said or 'no output'}",
                           hint="is the device's disk full?")
    return PushedAgent(python, path, True, version or "")
