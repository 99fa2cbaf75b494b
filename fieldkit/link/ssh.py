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
import io
import logging
import os
import shlex
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fieldkit.errors import ConfigError, ConnectError, FieldkitError
from fieldkit.link.hostkeys import KEY_TYPE_ALGORITHMS, KnownHosts
from fieldkit.link.targets import SshTarget
from fieldkit.link.sshauth import _authenticate
from fieldkit.link.sshconfig import ResolvedSsh, _parse_jump, as_ssh_target, resolve_ssh_target
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
    started = time.monotonic()
    try:
        t.start_client(event=done)
    except Exception as exc:
        t.close()
        raise ConnectError(f"cannot start an SSH session with {res.display}: {exc}") from exc
    # paramiko bounds the banner and key exchange itself; this is a backstop.
    if not done.wait(2 * timeout + 1) or not t.is_active():
        exc = t.get_exception()
        t.close()
        raise _handshake_error(res, exc, timeout, proxy, time.monotonic() - started,
                               greeted=bool(getattr(t, "remote_version", "")))
    return t


def _root_cause(exc: BaseException | None) -> BaseException | None:
    """What happened on the socket under paramiko's wrapping ("Error reading SSH protocol
    banner" hides whether the peer closed, reset or never answered)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, (EOFError, OSError)):
            return exc
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return None


def _handshake_error(res: ResolvedSsh, exc: BaseException | None, timeout: float,
                     proxy: _ProxyProcess | None, elapsed: float | None = None,
                     greeted: bool = False) -> ConnectError:
    """Say what happened, after how long: a peer that hangs up at once is not one that said
    nothing for ``timeout`` seconds."""
    import paramiko

    waited = f"{elapsed:.1f} s" if elapsed is not None else "a moment"
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
    cause = _root_cause(exc)
    if isinstance(cause, EOFError) or (isinstance(cause, OSError) and not isinstance(cause, socket.timeout)):
        if isinstance(cause, EOFError):
            what = "closed the connection"
        elif isinstance(cause, ConnectionResetError):
            what = "reset the connection"
        else:
            what = f"broke the connection ({cause.strerror or cause})"
        phase = "during the SSH handshake" if greeted else "before sending an SSH greeting"
        return ConnectError(f"{res.display} {what} after {waited}, {phase}{extra}",
                            hint="a device still booting may accept connections before sshd is ready; "
                                 "sshd also drops connections it will not serve (MaxStartups, hosts.deny, "
                                 "fail2ban); or this is not the SSH port")
    if isinstance(exc, paramiko.IncompatiblePeer):
        return ConnectError(f"{res.display} speaks SSH but shares no algorithms with paramiko: "
                            f"{text}", hint="the device's sshd may be very old or locked down")
    if "banner" in text.lower() or isinstance(exc, (EOFError, socket.timeout)) or exc is None:
        return ConnectError(f"{res.display} did not answer as an SSH server within {timeout:g} s "
                            f"(waited {waited}: {text.strip() or type(exc).__name__}){extra}",
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
