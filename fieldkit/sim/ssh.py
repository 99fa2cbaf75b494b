"""Simulated SSH devices: a small paramiko SSH server per device, on 127.0.0.1.

Each :class:`SimSshServer` has its own host key, accepts only the listed public keys (any user
name), runs ``exec`` requests with ``/bin/sh -c`` in a subprocess (environment ``env`` plus
``HOME=<device_root>/home/fieldkit``) with stdin/stdout/stderr piped to the channel and the exit
status sent back, and forwards ``direct-tcpip`` channels to 127.0.0.1 only (so ProxyJump through
a simulated device works). Shells, ptys and subsystems are refused.

Used by ``fieldkit sim``, the demo, tests and benchmarks: data is pumped 256 KiB at a time over
16 MiB channel windows.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from fieldkit.link.hostkeys import fingerprint
from fieldkit.link.ssh import MAX_PACKET_SIZE, WINDOW_SIZE
from fieldkit.link.sshauth import write_ed25519_key

if TYPE_CHECKING:
    import paramiko

log = logging.getLogger(__name__)
# paramiko logs every reset connection at ERROR; without a handler Python prints them to the
# terminal. fieldkit reports link problems itself, in words a technician can act on.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

CHUNK = 256 * 1024
LOCAL_NAMES = {"127.0.0.1", "localhost", "::1"}
KILL_GRACE_S = 3.0  # a command whose channel was closed gets this long before SIGTERM/SIGKILL


def _key_blobs(items: Iterable[Any]) -> set[bytes]:
    """Public key blobs from PKey objects, .pub files or authorized_keys files."""
    import base64
    import binascii

    blobs: set[bytes] = set()
    for item in items:
        if hasattr(item, "asbytes"):
            blobs.add(item.asbytes())
            continue
        for line in Path(item).read_text(encoding="utf-8").splitlines():
            fields = line.strip().split()
            # authorized_keys lines may start with options; the key type starts the key part
            for i, word in enumerate(fields[:-1]):
                if word.startswith(("ssh-", "ecdsa-", "sk-", "rsa-")):
                    try:
                        blobs.add(base64.b64decode(fields[i + 1], validate=True))
                    except (ValueError, binascii.Error):
                        pass
                    break
    return blobs


def _send_all(send: Any, data: bytes) -> None:
    view = memoryview(data)
    while view:
        sent = send(view)
        if sent <= 0:
            raise OSError("channel closed")
        view = view[sent:]


@functools.lru_cache(maxsize=1)
def _interface_class() -> type:
    """Built on first use so importing this module does not import paramiko."""
    import paramiko

    class Interface(_InterfaceMethods, paramiko.ServerInterface):
        pass

    return Interface


class _InterfaceMethods:
    """paramiko ServerInterface for one connection (methods run on the transport thread)."""

    def __init__(self, server: "SimSshServer", transport: "paramiko.Transport") -> None:
        import paramiko

        self._p = paramiko
        self.server = server
        self.transport = transport
        self.pending_tcp: dict[int, socket.socket] = {}

    def get_allowed_auths(self, username: str) -> str:
        return "publickey"

    def check_auth_none(self, username: str) -> int:
        return self._p.AUTH_FAILED

    def check_auth_password(self, username: str, password: str) -> int:
        return self._p.AUTH_FAILED

    def check_auth_publickey(self, username: str, key: "paramiko.PKey") -> int:
        if key.asbytes() in self.server.authorized_blobs():
            return self._p.AUTH_SUCCESSFUL
        return self._p.AUTH_FAILED

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return self._p.OPEN_SUCCEEDED
        return self._p.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_direct_tcpip_request(self, chanid: int, origin: tuple,
                                           destination: tuple) -> int:
        host, port = destination
        if host not in LOCAL_NAMES:
            log.info("sim %s: refused forwarding to %s:%s", self.server.name, host, port)
            return self._p.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED
        try:
            sock = socket.create_connection((host, port), timeout=5)
        except OSError:
            return self._p.OPEN_FAILED_CONNECT_FAILED
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending_tcp[chanid] = sock
        return self._p.OPEN_SUCCEEDED

    def check_channel_exec_request(self, channel: "paramiko.Channel", command: bytes) -> bool:
        text = command.decode("utf-8", "surrogateescape") if isinstance(command, bytes) else command
        self.server._spawn(self.server._run_exec, f"sim-exec-{channel.get_id()}", channel, text)
        return True

    def check_channel_shell_request(self, channel: "paramiko.Channel") -> bool:
        return False  # a simulated device runs commands only (exec)

    def check_channel_pty_request(self, *args: Any) -> bool:
        return False

    def check_channel_subsystem_request(self, channel: "paramiko.Channel", name: str) -> bool:
        return False

    def check_channel_env_request(self, channel: "paramiko.Channel", name: bytes, value: bytes) -> bool:
        return False

    def check_port_forward_request(self, address: str, port: int) -> bool:
        return False

    def check_global_request(self, kind: str, msg: Any) -> bool:
        return False


class SimSshServer:
    """A simulated device's SSH server. ``start()`` listens on 127.0.0.1 (``port`` chosen by
    the OS); ``stop()`` kills running commands and closes every socket."""

    def __init__(self, device_root: Path, host_key_path: Path,
                 authorized_keys: Iterable[Any] = (), env: dict[str, str] | None = None, *,
                 name: str | None = None) -> None:
        self.device_root = Path(device_root)
        self.host_key_path = Path(host_key_path)
        self.name = name or self.device_root.name
        self.env = dict(env if env is not None else os.environ)
        self.home = self.device_root / "home" / "fieldkit"
        self._authorized = set(_key_blobs(authorized_keys))
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._transports: set[Any] = set()
        self._procs: set[subprocess.Popen] = set()
        self._threads: list[threading.Thread] = []
        self.host_key = self._load_host_key()
        self.host = "127.0.0.1"
        self.port = 0

    # -- keys

    def _load_host_key(self) -> "paramiko.PKey":
        import paramiko

        if not self.host_key_path.exists():
            write_ed25519_key(self.host_key_path, f"fieldkit-sim@{self.name}")
        return paramiko.PKey.from_path(str(self.host_key_path))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.host_key)

    def known_hosts_line(self) -> str:
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {self.host_key.get_name()} {self.host_key.get_base64()}"

    def authorize(self, key: Any) -> None:
        """Accept another public key (PKey, .pub file or authorized_keys file)."""
        with self._lock:
            self._authorized |= _key_blobs([key])

    def authorized_blobs(self) -> set[bytes]:
        with self._lock:
            return set(self._authorized)

    # -- life cycle

    def start(self) -> "SimSshServer":
        """Listen (again). The first start picks a free port; a restart after :meth:`stop`
        (a simulated reboot) listens on the same port, so inventory entries stay valid."""
        self.home.mkdir(parents=True, exist_ok=True)
        self._stopping.clear()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError:
            sock.close()
            raise
        sock.listen(16)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._spawn(self._accept_loop, f"sim-ssh-{self.name}")
        return self

    def _spawn(self, fn: Any, name: str, *args: Any) -> threading.Thread:
        th = threading.Thread(target=fn, args=args, name=name, daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(th)
        th.start()
        return th

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                break
            if self._stopping.is_set():
                conn.close()
                break
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._spawn(self._serve, f"sim-ssh-{self.name}-conn", conn)

    def _serve(self, conn: socket.socket) -> None:
        import paramiko

        t = paramiko.Transport(conn, default_window_size=WINDOW_SIZE,
                               default_max_packet_size=MAX_PACKET_SIZE)
        t.banner_timeout = t.handshake_timeout = t.auth_timeout = 30
        t.add_server_key(self.host_key)
        iface = _interface_class()(self, t)
        with self._lock:
            if self._stopping.is_set():
                conn.close()
                return
            self._transports.add(t)
        try:
            try:
                t.start_server(server=iface)  # type: ignore[arg-type]
            except (paramiko.SSHException, OSError, EOFError) as exc:
                log.debug("sim %s: handshake failed: %s", self.name, exc)
                return
            while t.is_active() and not self._stopping.is_set():
                chan = t.accept(0.5)
                if chan is None:
                    continue
                sock = iface.pending_tcp.pop(chan.get_id(), None)
                if sock is not None:
                    self._spawn(self._relay, f"sim-tcp-{chan.get_id()}", chan, sock)
        finally:
            for sock in iface.pending_tcp.values():
                sock.close()
            t.close()
            with self._lock:
                self._transports.discard(t)

    def stop(self) -> None:
        """Kill running commands, close connections and the listener. Idempotent."""
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            procs = list(self._procs)
            transports = list(self._transports)
            threads = list(self._threads)
        for proc in procs:
            _kill_group(proc, signal.SIGKILL)
        for t in transports:
            try:
                t.close()
                with t.lock:  # wake the connection thread's accept() now, not at its timeout
                    t.server_accept_cv.notify_all()
            except Exception:
                pass
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        for th in threads:
            if th is not threading.current_thread():
                th.join(timeout=2)

    def __enter__(self) -> "SimSshServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- exec

    def _run_exec(self, chan: "paramiko.Channel", command: str) -> None:
        env = dict(self.env)
        env["HOME"] = str(self.home)
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                    cwd=str(self.home), bufsize=0, start_new_session=True,
                                    close_fds=True)
        except OSError as exc:
            try:
                chan.sendall_stderr(f"sim: cannot run /bin/sh: {exc}\n".encode())
                chan.send_exit_status(127)
            finally:
                chan.close()
            return
        with self._lock:
            self._procs.add(proc)
        try:
            pumps = [
                self._spawn(self._pump_in, "sim-stdin", chan, proc),
                self._spawn(self._pump_out, "sim-stdout", proc.stdout, chan.send),
                self._spawn(self._pump_out, "sim-stderr", proc.stderr, chan.send_stderr),
            ]
            self._spawn(self._reap_on_close, "sim-reaper", chan, proc)
            pumps[1].join()
            pumps[2].join()
            rc = proc.wait()
            status = rc if rc >= 0 else 128 - rc  # killed by signal N -> 128+N, as a shell says
            try:
                chan.shutdown_write()
                chan.send_exit_status(status)
            except Exception:
                pass
        finally:
            with self._lock:
                self._procs.discard(proc)
            chan.close()

    @staticmethod
    def _pump_in(chan: "paramiko.Channel", proc: subprocess.Popen) -> None:
        assert proc.stdin is not None
        fd = proc.stdin.fileno()
        broken = False
        try:
            while True:
                data = chan.recv(CHUNK)
                if not data:
                    break
                if broken:
                    continue  # keep draining so the channel window does not stall
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view):]
                except OSError:
                    broken = True
        except Exception:
            pass
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    @staticmethod
    def _pump_out(pipe: Any, send: Any) -> None:
        fd = pipe.fileno()
        try:
            while True:
                data = os.read(fd, CHUNK)
                if not data:
                    break
                _send_all(send, data)
        except Exception:
            pass  # channel gone: closing our end gives the command EPIPE/SIGPIPE
        finally:
            pipe.close()

    @staticmethod
    def _reap_on_close(chan: "paramiko.Channel", proc: subprocess.Popen) -> None:
        # Server side, status_event is only set when the channel closes.
        chan.status_event.wait()
        try:
            proc.wait(timeout=KILL_GRACE_S)
            return
        except subprocess.TimeoutExpired:
            pass
        _kill_group(proc, signal.SIGTERM)
        try:
            proc.wait(timeout=KILL_GRACE_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc, signal.SIGKILL)

    # -- direct-tcpip

    def _relay(self, chan: "paramiko.Channel", sock: socket.socket) -> None:
        def up() -> None:  # channel -> socket
            try:
                while True:
                    data = chan.recv(CHUNK)
                    if not data:
                        break
                    sock.sendall(data)
            except Exception:
                pass
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        other = self._spawn(up, "sim-tcp-up")
        try:
            while True:
                data = sock.recv(CHUNK)
                if not data:
                    break
                _send_all(chan.send, data)
        except Exception:
            pass
        try:
            chan.shutdown_write()
        except Exception:
            pass
        other.join()
        chan.close()
        sock.close()


def _kill_group(proc: subprocess.Popen, sig: int) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
