"""A real OpenSSH ``sshd`` on 127.0.0.1 for tests and benchmarks (no pytest needed to import).

A Python listener bound to port 0 accepts connections and hands each socket to
``/usr/sbin/sshd -i`` (inetd mode), so there is no port race and nothing to wait for::

    with Sshd(tmp_dir) as sshd:
        sshd.authorize(home.client_key.with_suffix(".pub"))
        known_hosts.write_text(sshd.known_hosts_line() + "\\n")
        ... connect to sshd.host:sshd.port as sshd.user ...

Everything (host key, authorized_keys, config, log) lives in the given directory. The login user
is whoever runs the tests (root in CI: ``PermitRootLogin prohibit-password``); its HOME is the
real one unless ``home=`` is given (then ``SetEnv HOME=...`` points sessions elsewhere).
Call :func:`skip_unless_available` from a fixture to ``pytest.skip`` cleanly when sshd is missing.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
from pathlib import Path

SSHD = os.environ.get("FIELDKIT_TEST_SSHD", "/usr/sbin/sshd")
PRIVSEP_DIR = Path("/run/sshd")


def unavailable_reason() -> str | None:
    """Why a real sshd cannot run here, or None."""
    if not os.access(SSHD, os.X_OK):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if shutil.which("ssh-keygen") is None:
        return "ssh-keygen is not installed (apt-get install openssh-client)"
    if not PRIVSEP_DIR.is_dir():
        if os.geteuid() == 0:
            PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
        else:
            return f"sshd needs its privilege separation directory {PRIVSEP_DIR} (create it as root)"
    return None


def skip_unless_available() -> None:
    reason = unavailable_reason()
    if reason is not None:
        import pytest

        pytest.skip(f"real OpenSSH server unavailable: {reason}")


class Sshd:
    """A real sshd for one test module (or one benchmark run)."""

    host = "127.0.0.1"

    def __init__(self, workdir: Path | str | None = None, *, home: Path | str | None = None,
                 extra_host_keys: tuple[str, ...] = (), log_level: str = "DEBUG1") -> None:
        self._own_dir = workdir is None
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="fieldkit-sshd-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self.home = Path(home) if home else None
        self.log_level = log_level
        self.host_key_path = self.dir / "ssh_host_ed25519_key"  # the primary key
        self.extra_host_keys = {t: self.dir / f"ssh_host_{t}_key" for t in extra_host_keys}
        self.authorized_keys_path = self.dir / "authorized_keys"
        self.config_path = self.dir / "sshd_config"
        self.log_path = self.dir / "sshd.log"
        self.port = 0
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._procs: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()

    # -- setup

    def _write_config(self) -> None:
        keys = {"ed25519": self.host_key_path, **self.extra_host_keys}
        for key_type, path in keys.items():
            if not path.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C",
                                "fieldkit-test-sshd", "-f", str(path)], check=True,
                               capture_output=True)
        self.authorized_keys_path.touch(mode=0o600)
        lines = [f"HostKey {path}" for path in keys.values()] + [
            f"AuthorizedKeysFile {self.authorized_keys_path}",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "PidFile none",
            "AllowTcpForwarding yes",
            "X11Forwarding no",
            "PrintMotd no",
            "PrintLastLog no",
            "MaxAuthTries 6",
            "MaxStartups 100:30:200",
            f"LogLevel {self.log_level}",
        ]
        for sftp in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server"):
            if os.path.exists(sftp):  # scp >= 9.0 speaks SFTP
                lines.append(f"Subsystem sftp {sftp}")
                break
        if self.home is not None:
            self.home.mkdir(parents=True, exist_ok=True)
            lines.append(f"SetEnv HOME={self.home}")
        self.config_path.write_text("\n".join(lines) + "\n")
        check = subprocess.run([SSHD, "-t", "-f", str(self.config_path)], capture_output=True,
                               text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected its test config {self.config_path}: "
                               f"{check.stderr.strip() or check.stdout.strip()}")

    def start(self) -> "Sshd":
        reason = unavailable_reason()
        if reason is not None:
            raise RuntimeError(f"cannot start a real sshd: {reason}")
        self._write_config()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, 0))
        sock.listen(32)
        self._listener = sock
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, name="test-sshd", daemon=True)
        self._thread.start()
        return self

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            try:
                with conn, open(self.log_path, "ab") as log:
                    proc = subprocess.Popen(
                        [SSHD, "-i", "-f", str(self.config_path), "-E", str(self.log_path)],
                        stdin=conn, stdout=conn, stderr=log, close_fds=True,
                        start_new_session=True)
            except OSError:
                continue
            with self._lock:
                self._procs = [p for p in self._procs if p.poll() is None]
                self._procs.append(proc)

    def stop(self) -> None:
        self._stopping.set()
        if self._listener is not None:
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            procs, self._procs = self._procs, []
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Sshd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests need

    @property
    def host_public_key(self) -> str:
        """``ssh-ed25519 AAAA... comment`` (the .pub file's line)."""
        return self.host_key_path.with_name(self.host_key_path.name + ".pub").read_text().strip()

    @property
    def fingerprint(self) -> str:
        """``SHA256:...`` of the ed25519 host key, as ``ssh-keygen -lf`` prints it."""
        return self.fingerprint_of(self.host_key_path)

    @staticmethod
    def fingerprint_of(key_path: Path) -> str:
        out = subprocess.run(["ssh-keygen", "-lf", str(key_path) + ".pub"],
                             check=True, capture_output=True, text=True).stdout
        return out.split()[1]

    def known_hosts_name(self) -> str:
        return f"[{self.host}]:{self.port}"

    def known_hosts_line(self) -> str:
        key_type, b64 = self.host_public_key.split()[:2]
        return f"{self.known_hosts_name()} {key_type} {b64}"

    def authorize(self, public_key: str | Path) -> None:
        """Allow a public key: an OpenSSH ``.pub`` line or a path to a ``.pub`` file."""
        text = str(public_key)
        if not text.startswith(("ssh-", "ecdsa-", "sk-")):
            text = Path(public_key).read_text()
        with open(self.authorized_keys_path, "a") as f:
            f.write(text.strip() + "\n")

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
