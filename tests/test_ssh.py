"""SSH link against a real OpenSSH sshd and simulated devices: real keys, real files, no mocks.

Every test gets its own FIELDKIT_HOME, ssh config, user known_hosts and HOME (so ~/.ssh of the
machine is never read), and no ssh-agent.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import shutil
import socket
import stat
import subprocess
import threading
import time
import zipapp
from dataclasses import dataclass
from pathlib import Path

import pytest

from fieldkit.errors import Cancelled, ConfigError, ConnectError, HostKeyError
from fieldkit.link.hostkeys import (
    KnownHosts,
    add_host_key,
    fingerprint,
    hosts_field_matches,
    read_known_hosts,
    remove_host_entry,
)
from fieldkit.link.trust import fetch_host_key, trust
from fieldkit.link.ssh import SshSession
from fieldkit.link.sshauth import ensure_client_key, write_ed25519_key
from fieldkit.link.sshpush import push_agent
from fieldkit.link.targets import LocalTarget, SerialTarget, SshTarget, parse_target
from fieldkit.locations import Home
from fieldkit.sim.ssh import SimSshServer

try:
    from sshd import Sshd, skip_unless_available
except ImportError:  # run from the repo root without tests/ on sys.path
    from tests.sshd import Sshd, skip_unless_available


# --------------------------------------------------------------------------- fixtures

@dataclass
class Env:
    tmp: Path
    home: Home
    ssh_config: Path
    user_known_hosts: Path

    def config(self, text: str) -> None:
        self.ssh_config.write_text(text)

    def client_pub(self) -> Path:
        return Path(str(ensure_client_key(self.home)) + ".pub")


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Env:
    home = Home(tmp_path / "fieldkit-home")
    ssh_dir = tmp_path / "user-ssh"
    ssh_dir.mkdir()
    cfg = ssh_dir / "config"
    cfg.write_text("")
    monkeypatch.setenv("FIELDKIT_HOME", str(home.root))
    monkeypatch.setenv("FIELDKIT_SSH_CONFIG", str(cfg))
    monkeypatch.setenv("FIELDKIT_USER_KNOWN_HOSTS", str(ssh_dir / "known_hosts"))
    monkeypatch.setenv("HOME", str(tmp_path / "user-home"))  # no ~/.ssh/id_* of the machine
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    return Env(tmp_path, home, cfg, ssh_dir / "known_hosts")


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    skip_unless_available()
    base = tmp_path_factory.mktemp("sshd")
    with Sshd(base / "server", home=base / "remote-home", extra_host_keys=("ecdsa",)) as server:
        yield server


@pytest.fixture
def sim(env: Env):
    root = env.tmp / "sim-device"
    with SimSshServer(root, env.tmp / "sim-hostkey", [env.client_pub()], dict(os.environ),
                      name="sim1") as server:
        yield server


def sshd_target(sshd: Sshd) -> SshTarget:
    return SshTarget("127.0.0.1", user=sshd.user, port=sshd.port)


def sim_target(sim: SimSshServer) -> SshTarget:
    return SshTarget("127.0.0.1", user="fieldkit", port=sim.port)


def trust_line(env: Env, line: str) -> None:
    env.home.root.mkdir(parents=True, exist_ok=True)
    with open(env.home.known_hosts, "a") as f:
        f.write(line + "\n")


def ready_sshd(env: Env, sshd: Sshd) -> SshTarget:
    sshd.authorize(env.client_pub())
    trust_line(env, sshd.known_hosts_line())
    return sshd_target(sshd)


def ready_sim(env: Env, sim: SimSshServer) -> SshTarget:
    trust_line(env, sim.known_hosts_line())
    return sim_target(sim)


def other_ed25519_line(env: Env, name: str) -> tuple[str, str]:
    """A known_hosts line for ``name`` with some other ed25519 key, and its fingerprint."""
    path = env.tmp / f"other-{secrets.token_hex(4)}"
    write_ed25519_key(path, "other")
    key_type, b64 = Path(str(path) + ".pub").read_text().split()[:2]
    out = subprocess.run(["ssh-keygen", "-lf", str(path) + ".pub"], capture_output=True,
                         text=True, check=True).stdout
    return f"{name} {key_type} {b64}", out.split()[1]


def make_zipapp(tmp: Path, nonce: str | None = None) -> tuple[bytes, str]:
    src = tmp / f"pyz-src-{secrets.token_hex(4)}"
    src.mkdir()
    (src / "__main__.py").write_text(
        f"# {nonce or secrets.token_hex(8)}\nimport sys\nprint('agent ok', sys.version_info >= (3, 9))\n")
    buf = io.BytesIO()
    zipapp.create_archive(src, buf)
    data = buf.getvalue()
    return data, hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- targets

def test_parse_targets_round_trip() -> None:
    cases = {
        "ssh://root@10.0.0.7:2222": SshTarget("10.0.0.7", "root", 2222),
        "ssh://[fe80::1]:22": SshTarget("fe80::1", None, 22),
        "ssh://cam-3": SshTarget("cam-3"),
        "cam-3": SshTarget("cam-3", alias="cam-3"),
        "pi@cam-3": SshTarget("cam-3", "pi"),
        "serial:///dev/ttyUSB0?baud=9600": SerialTarget("/dev/ttyUSB0", 9600),
        "serial:///dev/ttyACM0": SerialTarget("/dev/ttyACM0", 115200),
        "local:": LocalTarget(None),
        "local:/tmp/dev1": LocalTarget("/tmp/dev1"),
    }
    for text, want in cases.items():
        got = parse_target(text)
        assert got == want, text
        assert parse_target(str(got)) == got, str(got)
    assert str(parse_target("ssh://root@10.0.0.7:2222")) == "ssh://root@10.0.0.7:2222"


@pytest.mark.parametrize("text", ["", "http://x", "host:22", "ssh://h/path", "ssh://h:0",
                                  "ssh://fe80::1", "serial:///dev/x?parity=E",
                                  "serial:///dev/x?baud=fast", "two words"])
def test_parse_target_garbage_names_accepted_forms(text: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_target(text)
    assert "ssh://[user@]host[:port]" in str(err.value)
    assert "serial://" in str(err.value) and "local:" in str(err.value)


# --------------------------------------------------------------------------- host key files

def test_known_hosts_matching_hashed_patterns_and_negation(env: Env) -> None:
    plain = env.tmp / "kh"
    plain.write_text("[10.0.0.7]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0v\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(plain)], check=True, capture_output=True)
    hashed = read_known_hosts(plain)[0].hosts
    assert hashed.startswith("|1|")
    assert hosts_field_matches(hashed, "[10.0.0.7]:2222")
    assert not hosts_field_matches(hashed, "10.0.0.7")
    assert hosts_field_matches("10.0.0.*,!10.0.0.9", "10.0.0.7")
    assert not hosts_field_matches("10.0.0.*,!10.0.0.9", "10.0.0.9")
    assert hosts_field_matches("[cam-?]:2222", "[cam-1]:2222")  # brackets are literal
    assert not hosts_field_matches("[cam-?]:2222", "c")


def test_client_key_is_private_and_valid_openssh(env: Env) -> None:
    path = ensure_client_key(env.home)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True,
                             check=True).stdout.split()[:2]
    assert env.client_pub().read_text().split()[:2] == derived
    assert ensure_client_key(env.home) == path and path.read_bytes() == path.read_bytes()


# --------------------------------------------------------------------------- real sshd

def test_connect_run_and_stream_megabytes(env: Env, sshd: Sshd) -> None:
    target = ready_sshd(env, sshd)
    with SshSession.open(target, env.home) as session:
        assert session.run("echo out; echo err >&2; exit 3") == (3, b"out\n", b"err\n")
        rc, out, _ = session.run("cat", input=b"hello\n")
        assert (rc, out) == (0, b"hello\n")

        data = os.urandom(6 * 1024 * 1024 + 123)
        stream = session.exec_stream("cat; echo done >&2")

        def feed() -> None:
            for i in range(0, len(data), 1 << 20):
                stream.write(memoryview(data)[i:i + (1 << 20)])
            stream.close_write()

        writer = threading.Thread(target=feed)
        writer.start()
        got = hashlib.sha256()
        n = 0
        while chunk := stream.read(1 << 20):
            got.update(chunk)
            n += len(chunk)
        writer.join(10)
        assert n == len(data)
        assert got.hexdigest() == hashlib.sha256(data).hexdigest()
        assert stream.exit_status(10) == 0
        assert stream.stderr_text() == "done\n"
        stream.close()


def test_close_unblocks_a_blocked_reader(env: Env, sshd: Sshd) -> None:
    with SshSession.open(ready_sshd(env, sshd), env.home) as session:
        stream = session.exec_stream("cat")
        box: list[bytes] = []
        reader = threading.Thread(target=lambda: box.append(stream.read(100)))
        reader.start()
        stream.write(b"x")
        deadline = time.monotonic() + 10
        while not box and time.monotonic() < deadline:
            reader.join(0.05)
        assert box == [b"x"]
        reader = threading.Thread(target=lambda: box.append(stream.read(100)))
        reader.start()
        stream.close()
        reader.join(5)
        assert not reader.is_alive() and box[-1] == b""
        with pytest.raises(OSError):
            stream.write(b"more")


class FreezableRelay:
    """A TCP relay to a real server that can go silent, like a pulled cable."""

    def __init__(self, port: int) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.target = port
        self.frozen = threading.Event()
        self.socks: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        upstream = socket.create_connection(("127.0.0.1", self.target))
        self.socks += [conn, upstream]
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self.frozen.is_set():
                data = src.recv(65536)
                if not data or self.frozen.is_set():
                    return  # frozen: stop reading, so the sender's buffers fill up
                dst.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for sock in [self.listener, *self.socks]:
            sock.close()


def test_dead_peer_close_is_prompt(env: Env, sim: SimSshServer) -> None:
    """Heartbeats call close() when the device stops answering: it must not hang on the peer.

    The simulated device grants a 16 MiB window, so the writer ends up blocked inside a socket
    send (TCP buffers full), where a plain channel close would queue behind it forever."""
    relay = FreezableRelay(sim.port)
    trust_line(env, f"[127.0.0.1]:{relay.port} {sim.host_key.get_name()} {sim.host_key.get_base64()}")
    try:
        session = SshSession.open(SshTarget("127.0.0.1", user="fieldkit", port=relay.port),
                                  env.home)
        stream = session.exec_stream("cat > /dev/null")
        sent = [0]
        errors: list[BaseException] = []

        def flood() -> None:
            block = os.urandom(1 << 20)
            try:
                while True:
                    stream.write(block)
                    sent[0] += len(block)
            except OSError as exc:
                errors.append(exc)

        writer = threading.Thread(target=flood, daemon=True)
        writer.start()
        while sent[0] < 4 << 20 and writer.is_alive():
            writer.join(0.02)
        relay.frozen.set()
        last = -1
        while sent[0] != last:  # wait until the window and socket buffers are full
            last = sent[0]
            writer.join(0.3)
        assert writer.is_alive(), errors  # really stuck on the silent peer

        start = time.monotonic()
        stream.close()
        assert time.monotonic() - start < 1.5
        writer.join(2)
        assert not writer.is_alive() and isinstance(errors[0], OSError)
        assert stream.read(10) == b""
        start = time.monotonic()
        session.close()
        assert time.monotonic() - start < 3
    finally:
        relay.close()


def test_unknown_host_refused_with_correct_fingerprint(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    with pytest.raises(HostKeyError) as err:
        SshSession.open(sshd_target(sshd), env.home)
    e = err.value
    assert e.fingerprint == sshd.fingerprint  # as ssh-keygen -lf prints it
    assert e.expected is None and not e.changed
    assert e.key_type == "ssh-ed25519"
    text = str(e)
    assert sshd.fingerprint in text and "ssh-ed25519" in text
    assert f"127.0.0.1:{sshd.port}" in text
    assert f"fieldkit trust ssh://{sshd.user}@127.0.0.1:{sshd.port}" in text
    assert e.exit_code == 3
    assert not env.home.known_hosts.exists()


def test_changed_host_key_refused_and_file_untouched(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    wrong, wrong_fp = other_ed25519_line(env, sshd.known_hosts_name())
    trust_line(env, "unrelated.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0v")
    trust_line(env, wrong)
    before = env.home.known_hosts.read_bytes()
    target = sshd_target(sshd)

    with pytest.raises(HostKeyError) as err:
        SshSession.open(target, env.home)
    e = err.value
    assert e.changed and e.expected == wrong_fp and e.fingerprint == sshd.fingerprint
    text = str(e)
    assert f"changed: expected {wrong_fp}, got {sshd.fingerprint}" in text
    assert f"fieldkit trust --replace {target}" in text
    assert env.home.known_hosts.read_bytes() == before

    # trust without --replace refuses too, even with the right fingerprint
    with pytest.raises(HostKeyError):
        trust(env.home, target, fingerprint=sshd.fingerprint)
    assert env.home.known_hosts.read_bytes() == before

    result = trust(env.home, target, fingerprint=sshd.fingerprint, replace=True)
    assert result.status == "replaced" and result.removed == (wrong_fp,)
    lines = env.home.known_hosts.read_text().splitlines()
    assert "unrelated.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ0v" in lines
    assert wrong not in lines and sshd.known_hosts_line() in lines
    with SshSession.open(target, env.home) as session:
        assert session.run("true")[0] == 0


def test_key_of_another_type_on_file_is_not_silently_accepted(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    # the device has no RSA host key: it answers with ed25519, which is not what is on file
    pub = rsa.generate_private_key(65537, 2048).public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    trust_line(env, f"{sshd.known_hosts_name()} {pub}")
    with pytest.raises(HostKeyError) as err:
        SshSession.open(sshd_target(sshd), env.home)
    assert err.value.expected is not None and "--replace" in str(err.value)
    assert err.value.fingerprint == sshd.fingerprint and "only ssh-rsa keys" in str(err.value)
    with pytest.raises(HostKeyError):
        trust(env.home, sshd_target(sshd), fingerprint=sshd.fingerprint)


def test_trust_finds_the_host_key_the_technician_read(env: Env, sshd: Sshd) -> None:
    """The device has ed25519 and ECDSA keys; the label shows the ECDSA one."""
    sshd.authorize(env.client_pub())
    ecdsa_fp = sshd.fingerprint_of(sshd.extra_host_keys["ecdsa"])
    result = trust(env.home, sshd_target(sshd), fingerprint=ecdsa_fp)
    assert (result.key_type, result.fingerprint) == ("ecdsa-sha2-nistp256", ecdsa_fp)
    with SshSession.open(sshd_target(sshd), env.home) as session:  # negotiates the pinned type
        assert fingerprint(session.transport.get_remote_server_key()) == ecdsa_fp


def test_key_in_user_known_hosts_is_accepted_hashed_too(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    env.user_known_hosts.write_text(sshd.known_hosts_line() + "\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(env.user_known_hosts)], check=True,
                   capture_output=True)
    assert sshd.known_hosts_name() not in env.user_known_hosts.read_text()  # really hashed
    before = env.user_known_hosts.read_bytes()
    with SshSession.open(sshd_target(sshd), env.home) as session:
        assert session.run("echo hi")[1] == b"hi\n"
    assert env.user_known_hosts.read_bytes() == before
    assert not env.home.known_hosts.exists()


def test_changed_key_in_user_file_refused_and_replace_leaves_it_alone(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    wrong, wrong_fp = other_ed25519_line(env, sshd.known_hosts_name())
    env.user_known_hosts.write_text(wrong + "\n")
    before = env.user_known_hosts.read_bytes()
    with pytest.raises(HostKeyError) as err:
        SshSession.open(sshd_target(sshd), env.home)
    assert err.value.expected == wrong_fp
    result = trust(env.home, sshd_target(sshd), fingerprint=sshd.fingerprint, replace=True)
    assert result.status == "replaced" and result.removed == ()
    assert any(str(env.user_known_hosts) in n for n in result.notes)
    assert env.user_known_hosts.read_bytes() == before
    with SshSession.open(sshd_target(sshd), env.home):
        pass


def test_revoked_key_refused_even_if_listed(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    env.user_known_hosts.write_text(f"@revoked * {sshd.host_public_key}\n")
    trust_line(env, sshd.known_hosts_line())
    with pytest.raises(HostKeyError) as err:
        SshSession.open(sshd_target(sshd), env.home)
    assert "revoked" in str(err.value)


def test_unreadable_user_known_hosts_is_reported_not_ignored(env: Env, sshd: Sshd) -> None:
    env.user_known_hosts.mkdir()  # exists but cannot be read as a file (even by root)
    with pytest.raises(HostKeyError) as err:
        SshSession.open(sshd_target(sshd), env.home)
    assert f"could not read {env.user_known_hosts}" in str(err.value)
    kh = KnownHosts.load(env.home)
    assert kh.problems and str(env.user_known_hosts) in kh.problems[0]


def test_trust_with_fingerprint_pins_and_connects(env: Env, sshd: Sshd) -> None:
    sshd.authorize(env.client_pub())
    target = sshd_target(sshd)
    bare = sshd.fingerprint.split(":", 1)[1]  # technicians often paste it without the prefix
    result = trust(env.home, target, fingerprint=bare)
    assert result.status == "added" and result.fingerprint == sshd.fingerprint
    assert env.home.known_hosts.read_text() == sshd.known_hosts_line() + "\n"
    assert stat.S_IMODE(env.home.known_hosts.stat().st_mode) == 0o600
    assert trust(env.home, target, fingerprint=sshd.fingerprint).status == "already-trusted"
    assert env.home.known_hosts.read_text().count("\n") == 1
    assert json.loads(json.dumps(result.__dict__))["fingerprint"] == sshd.fingerprint
    with SshSession.open(target, env.home) as session:
        assert session.run("echo ok")[1] == b"ok\n"
    assert remove_host_entry(env.home, sshd.known_hosts_name()) == [sshd.fingerprint]
    assert env.home.known_hosts.read_text() == ""
    with pytest.raises(HostKeyError):
        SshSession.open(target, env.home)


def test_trust_with_wrong_fingerprint_writes_nothing(env: Env, sshd: Sshd) -> None:
    _, wrong_fp = other_ed25519_line(env, "x")
    with pytest.raises(HostKeyError) as err:
        trust(env.home, sshd_target(sshd), fingerprint=wrong_fp)
    assert err.value.expected == wrong_fp and err.value.fingerprint == sshd.fingerprint
    assert wrong_fp in str(err.value) and sshd.fingerprint in str(err.value)
    assert not env.home.known_hosts.exists()


def test_trust_confirm_callback(env: Env, sshd: Sshd) -> None:
    asked: list[tuple] = []

    def no(*args: str) -> bool:
        asked.append(args)
        return False

    with pytest.raises(Cancelled):
        trust(env.home, sshd_target(sshd), confirm=no)
    assert not env.home.known_hosts.exists()
    assert asked == [(f"127.0.0.1:{sshd.port}", "ssh-ed25519", sshd.fingerprint)]
    with pytest.raises(ConfigError):
        trust(env.home, sshd_target(sshd))  # nobody checked the key: refuse
    assert trust(env.home, sshd_target(sshd), confirm=lambda *a: True).status == "added"
    assert read_known_hosts(env.home.known_hosts)[0].fingerprint == sshd.fingerprint


def test_add_host_key_and_fetch(env: Env, sshd: Sshd) -> None:
    key_type, fp, pkey = fetch_host_key(sshd_target(sshd), env.home)
    assert (key_type, fp) == ("ssh-ed25519", sshd.fingerprint) and fingerprint(pkey) == fp
    assert add_host_key(env.home, "127.0.0.1", sshd.port, pkey) is True
    assert add_host_key(env.home, "127.0.0.1", sshd.port, pkey) is False
    assert env.home.known_hosts.read_text() == sshd.known_hosts_line() + "\n"
    assert stat.S_IMODE(env.home.root.stat().st_mode) == 0o700


def test_ssh_config_alias_hostname_port_user_identityfile(env: Env, sshd: Sshd) -> None:
    key = env.tmp / "id_custom"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    sshd.authorize(Path(str(key) + ".pub"))  # fieldkit's own key is NOT authorized here
    env.config(f"""
Host cam-lab
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    IdentityFile {key}
    IdentitiesOnly yes

Host *
    User nobody-like-this
""")
    target = parse_target("cam-lab")
    result = trust(env.home, target, fingerprint=sshd.fingerprint)
    assert result.host == sshd.known_hosts_name()
    with SshSession.open(target, env.home) as session:
        assert session.run("id -un")[1].decode().strip() == sshd.user
        assert session.name == f"cam-lab (127.0.0.1:{sshd.port})"


def test_ssh_config_include(env: Env, sshd: Sshd) -> None:
    (env.ssh_config.parent / "config.d").mkdir()
    (env.ssh_config.parent / "config.d" / "lab.conf").write_text(
        f"Host lab-included\n    HostName 127.0.0.1\n    Port {sshd.port}\n    User {sshd.user}\n")
    env.config("Include config.d/*.conf\n")
    ready_sshd(env, sshd)
    with SshSession.open(parse_target("lab-included"), env.home) as session:
        assert session.resolved.port == sshd.port and session.run("true")[0] == 0


def test_proxycommand(env: Env, sshd: Sshd) -> None:
    relay = shutil.which("socat")
    if relay:
        command = "socat - TCP:%h:%p"
    elif shutil.which("nc"):
        command = "nc %h %p"
    else:
        pytest.skip("neither socat nor nc is installed (apt-get install socat)")
    env.config(f"""
Host via-proxy
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    ProxyCommand {command}
Host broken-proxy
    HostName 127.0.0.1
    Port 1
    ProxyCommand {command}
""")
    ready_sshd(env, sshd)
    session = SshSession.open(parse_target("via-proxy"), env.home)
    proxy = session._route.proxy
    assert proxy is not None and proxy.proc.poll() is None
    assert session.run("echo proxied")[1] == b"proxied\n"
    session.close()
    assert proxy.proc.poll() is not None  # no orphaned proxy process

    start = time.monotonic()
    with pytest.raises(ConnectError) as err:
        SshSession.open(parse_target("broken-proxy"), env.home, connect_timeout=2)
    assert time.monotonic() - start < 5
    assert "ProxyCommand" in str(err.value)


def test_proxyjump_through_sshd_to_sim_device(env: Env, sshd: Sshd, sim: SimSshServer) -> None:
    import paramiko

    sshd.authorize(env.client_pub())
    trust_line(env, sshd.known_hosts_line())
    env.config(f"""
Host jump
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
Host simdev
    HostName 127.0.0.1
    Port {sim.port}
    User fieldkit
    ProxyJump jump
""")
    target = parse_target("simdev")
    # the sim device's own key is checked too: unknown until trusted (through the jump)
    with pytest.raises(HostKeyError) as err:
        SshSession.open(target, env.home)
    assert err.value.fingerprint == sim.fingerprint and "simdev" in str(err.value)
    assert trust(env.home, target, fingerprint=sim.fingerprint).status == "added"

    with SshSession.open(target, env.home) as session:
        assert isinstance(session.transport.sock, paramiko.Channel)  # rides the jump host
        assert len(session._route.jumps) == 1
        rc, out, _ = session.run("echo $HOME")
        assert (rc, out.decode().strip()) == (0, str(sim.home))
    assert f"port {sim.port}" in sshd.log_text()  # sshd logged the direct-tcpip forward


def test_proxyjump_chain_through_sim_back_to_sshd(env: Env, sshd: Sshd, sim: SimSshServer) -> None:
    target = ready_sshd(env, sshd)
    ready_sim(env, sim)
    env.config(f"""
Host jump
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
Host simhop
    HostName 127.0.0.1
    Port {sim.port}
Host final
    HostName 127.0.0.1
    Port {sshd.port}
    User {sshd.user}
    ProxyJump jump,simhop
""")
    with SshSession.open(parse_target("final"), env.home) as session:
        assert session.run("echo far")[1] == b"far\n"
        hop = session._route.jumps[0]
        assert hop.resolved.port == sim.port and hop._route.jumps[0].resolved.port == sshd.port
    assert target  # the direct target is unchanged


def test_unreachable_closed_port_fails_fast(env: Env) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
    port = holder.getsockname()[1]
    try:
        start = time.monotonic()
        with pytest.raises(ConnectError) as err:
            SshSession.open(SshTarget("127.0.0.1", port=port), env.home, connect_timeout=2)
        assert time.monotonic() - start < 3
        assert "refused" in str(err.value).lower() and str(port) in str(err.value)
    finally:
        holder.close()


def test_silent_port_and_bad_name_bounded_by_connect_timeout(env: Env) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # the kernel accepts; nobody ever says SSH-2.0
    try:
        start = time.monotonic()
        with pytest.raises(ConnectError) as err:
            SshSession.open(SshTarget("127.0.0.1", port=silent.getsockname()[1]), env.home,
                            connect_timeout=1)
        assert time.monotonic() - start < 3
        assert "did not answer as an SSH server" in str(err.value)
    finally:
        silent.close()
    start = time.monotonic()
    with pytest.raises(ConnectError):
        SshSession.open(SshTarget("no-such-device.invalid"), env.home, connect_timeout=1.5)
    assert time.monotonic() - start < 3


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_peer_that_hangs_up_is_not_reported_as_silent(env: Env, how: str) -> None:
    """A port that accepts and hangs up at once (sshd refusing to serve, a device still booting)
    fails at once and says so, with the real time, not "did not answer within 10 s"."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]

    def hang_up() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            if how == "reset":  # linger 0: close sends RST instead of FIN
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            conn.close()

    threading.Thread(target=hang_up, daemon=True).start()
    try:
        start = time.monotonic()
        with pytest.raises(ConnectError) as err:
            SshSession.open(SshTarget("127.0.0.1", port=port), env.home, connect_timeout=10)
        took = time.monotonic() - start
    finally:
        server.close()
    text = str(err.value)
    assert took < 5
    assert str(port) in text
    assert "within 10 s" not in text
    if text.startswith(f"cannot reach 127.0.0.1:{port}"):
        # the reset came before connect() returned: said as the connection's own error
        assert how == "reset" and "reset by peer" in text, text
        return
    # the kernel decides whether our unread greeting turns the close into a reset: either is said
    assert ("closed the connection" in text or "reset the connection" in text), text
    assert "before sending an SSH greeting" in text, text
    shown = float(text.split(" after ", 1)[1].split(" s", 1)[0])  # the real time, as measured
    assert shown <= took + 0.1
    assert "MaxStartups" in err.value.hint


def test_auth_failure_names_user_host_and_keys(env: Env, sshd: Sshd) -> None:
    trust_line(env, sshd.known_hosts_line())  # trusted host, but our key is not authorized
    with pytest.raises(ConnectError) as err:
        SshSession.open(sshd_target(sshd), env.home)
    text = str(err.value)
    assert not isinstance(err.value, HostKeyError)
    assert f"authentication failed for {sshd.user}@127.0.0.1:{sshd.port}" in text
    assert str(env.home.client_key) in text
    assert fingerprint(__import__("paramiko").PKey.from_path(str(env.home.client_key))) in text


def test_run_timeout(env: Env, sshd: Sshd) -> None:
    pidfile = env.tmp / "sleeper.pid"
    with SshSession.open(ready_sshd(env, sshd), env.home) as session:
        start = time.monotonic()
        try:
            with pytest.raises(ConnectError) as err:
                session.run(f"echo $$ > {pidfile}; exec sleep 20", timeout=0.5)
            assert time.monotonic() - start < 3 and "did not finish" in str(err.value)
            assert session.run("echo still-usable")[1] == b"still-usable\n"
        finally:  # sshd leaves a command running when its channel closes; do not leak it
            if pidfile.exists() and pidfile.read_text().strip():
                try:
                    os.kill(int(pidfile.read_text()), 9)
                except ProcessLookupError:
                    pass


# --------------------------------------------------------------------------- agent push

def test_push_agent_to_real_sshd_caches(env: Env, sshd: Sshd) -> None:
    data, digest = make_zipapp(env.tmp)
    with SshSession.open(ready_sshd(env, sshd), env.home) as session:
        first = push_agent(session, data, digest)
        assert first.uploaded
        assert first.path == f"{sshd.home}/.cache/fieldkit/agent-{digest[:16]}.pyz"
        assert hashlib.sha256(Path(first.path).read_bytes()).hexdigest() == digest
        assert stat.S_IMODE(Path(first.path).parent.stat().st_mode) == 0o700
        rc, out, err = session.run(f"{first.python} {first.path}")
        assert (rc, out) == (0, b"agent ok True\n"), err
        second = push_agent(session, data, digest)
        assert not second.uploaded and tuple(second) == tuple(first)


def test_push_agent_replaces_stale_and_old_copies(env: Env, sim: SimSshServer) -> None:
    data, digest = make_zipapp(env.tmp)
    cache = sim.home / ".cache" / "fieldkit"
    cache.mkdir(parents=True)
    stale = cache / f"agent-{digest[:16]}.pyz"
    stale.write_bytes(b"half an upload")
    older = cache / "agent-0123456789abcdef.pyz"
    older.write_bytes(b"previous agent")
    with SshSession.open(ready_sim(env, sim), env.home) as session:
        pushed = push_agent(session, data, digest, python_candidates=("python3",))
        assert pushed.uploaded and pushed.path == str(stale)
        assert stale.read_bytes() == data
        assert not older.exists()
        assert sorted(p.name for p in cache.iterdir()) == [stale.name]
        assert not push_agent(session, data, digest, python_candidates=("python3",)).uploaded
        # a new agent version replaces the cached one
        data2, digest2 = make_zipapp(env.tmp)
        assert push_agent(session, data2, digest2).uploaded
        assert sorted(p.name for p in cache.iterdir()) == [f"agent-{digest2[:16]}.pyz"]


def test_push_agent_without_usable_python(env: Env, sim: SimSshServer) -> None:
    data, digest = make_zipapp(env.tmp)
    old = env.tmp / "python-old"
    old.write_text("#!/bin/sh\necho '3.5.2 old'\n")
    old.chmod(0o755)
    with SshSession.open(ready_sim(env, sim), env.home) as session:
        with pytest.raises(ConnectError) as err:
            push_agent(session, data, digest,
                       python_candidates=("python3-nonexistent", "/nonexistent/python3", str(old)))
    text = str(err.value)
    assert "python3-nonexistent: not found" in text and "/nonexistent/python3: not found" in text
    assert "too old, version 3.5.2" in text
    assert "install python3 (>= 3.6)" in text
    assert not (sim.home / ".cache" / "fieldkit" / f"agent-{digest[:16]}.pyz").exists()


# --------------------------------------------------------------------------- SimSshServer

def test_sim_exec_env_exit_status_and_stdin(env: Env, sim: SimSshServer) -> None:
    with SshSession.open(ready_sim(env, sim), env.home) as session:
        rc, out, err = session.run("echo $HOME; pwd; echo oops >&2; exit 7")
        assert rc == 7 and out.decode().split() == [str(sim.home)] * 2 and err == b"oops\n"
        blob = os.urandom(3 * 1024 * 1024)
        rc, out, _ = session.run("cat", input=blob)
        assert rc == 0 and out == blob


def test_sim_rejects_unknown_client_key(env: Env, sim: SimSshServer, tmp_path: Path) -> None:
    stranger = Home(tmp_path / "other-laptop")
    stranger.ensure()
    stranger.known_hosts.write_text(sim.known_hosts_line() + "\n")
    with pytest.raises(ConnectError) as err:
        SshSession.open(sim_target(sim), stranger)
    assert "authentication failed for fieldkit@127.0.0.1" in str(err.value)


def test_sim_refuses_shell_and_remote_forwarding(env: Env, sim: SimSshServer) -> None:
    import paramiko

    with SshSession.open(ready_sim(env, sim), env.home) as session:
        chan = session.transport.open_session()
        with pytest.raises(paramiko.SSHException):
            chan.invoke_shell()
        chan.close()
        with pytest.raises(ConnectError):
            session.open_direct_tcpip("192.0.2.1", 22, timeout=5)  # not localhost: refused
        assert session.run("echo fine")[1] == b"fine\n"


def test_sim_stop_kills_running_commands(env: Env, tmp_path: Path) -> None:
    server = SimSshServer(tmp_path / "dev2", tmp_path / "dev2-key", [env.client_pub()],
                          dict(os.environ)).start()
    trust_line(env, server.known_hosts_line())
    session = SshSession.open(sim_target(server), env.home)
    marker = tmp_path / "pid"
    stream = session.exec_stream(f"echo $$ > {marker}; exec sleep 60")
    deadline = time.monotonic() + 10
    while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
        stream.exit_status(0.05)
    pid = int(marker.read_text())
    start = time.monotonic()
    server.stop()
    assert time.monotonic() - start < 5
    assert stream.read(10) == b""
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    session.close()

    port = server.port
    server.start()  # a simulated reboot: same port, same host key
    try:
        assert server.port == port
        with SshSession.open(f"ssh://fieldkit@127.0.0.1:{port}", env.home) as again:
            assert again.run("echo back")[1] == b"back\n"
    finally:
        server.stop()
