"""The device agent on every Python a device may have: 3.6 (JetPack 4), 3.7, 3.8 (JetPack 5), 3.9
(Raspberry Pi OS bullseye) ... 3.13, as a device runs it.

For each interpreter found on this machine (pyenv's, or on PATH; skipped with the reason where one
is missing) the zipapp the link builds is started the way ``local:`` starts it (``serve --stdio``,
a device root in tmp) under that interpreter, and the laptop's real client and services drive it:
the handshake, ping, health, identity, an upload with stat and hash, a signed release installed by
the real install service (verified on the device by the pure-Python verifier, and a tampered copy
refused by it), and the journal witness (journal_read and journal_checkpoint). No operation here
needs a third-party package on the device.

Below 3.6 (Python 2.7): the agent says so in one line, and the SSH push refuses the interpreter
with the message that names the version and the fix.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fieldkit import wire
from fieldkit.devices import DeviceSession, ResolvedDevice
from fieldkit.errors import ConnectError, DeviceError
from fieldkit.journal import Journal
from fieldkit.link.client import DeviceLink
from fieldkit.link.local import spawn_local_agent
from fieldkit.link.zipapp import agent_archive
from fieldkit.locations import Home
from fieldkit.profiles import get_profile
from fieldkit.sim import make_device_root

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "hardware"
VERSIONS = ("3.6", "3.7", "3.8", "3.9", "3.10", "3.11", "3.12", "3.13")


def find_python(version: str) -> tuple[str | None, str]:
    """An interpreter that really is Python ``version`` (pyenv's first, then PATH), or (None, why)."""
    name = f"python{version}"
    candidates = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/{name}")), reverse=True)
    candidates += [p for p in (shutil.which(name),) if p]
    tried = []
    for path in candidates:
        try:
            out = subprocess.run([path, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=20,
                                 universal_newlines=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            tried.append(f"{path}: {exc}")
            continue
        if out.returncode == 0 and out.stdout.strip() == version:
            return path, ""
        tried.append(f"{path}: does not run as Python {version}")
    return None, (f"no Python {version} on this machine (looked in ~/.pyenv/versions/{version}.*/bin and on "
                  f"PATH for {name}" + (f"; {'; '.join(tried)}" if tried else "") + ")")


def open_agent(home: Home, python: str, root: Path, name: str) -> DeviceSession:
    """The real agent zipapp under ``python`` on ``root``, behind the laptop's real link and session."""
    stream = spawn_local_agent(str(root), home.root / "cache", python=python)
    try:
        link = DeviceLink(stream, name=name, transport="local").start(timeout=30)
    except ConnectError as exc:
        raise AssertionError(f"{python} did not start the agent: {exc}\n{stream.stderr_text()}") from exc
    dev = ResolvedDevice(name, f"local:{root}", get_profile("generic-linux", home))
    return DeviceSession(dev, link, Journal.open(home), home, owns_journal=True)


def signed_release(tmp: Path, home: Home, name: str = "line-check", version: str = "1.0.0") -> tuple[Path, Path]:
    """A release signed by fieldkit (OpenSSF Model Signing), no smoke set: (directory, public key)."""
    from fieldkit.release import keygen, sign_release

    key = keygen(tmp / "release-key.pem")
    rel = tmp / f"{name}-{version}"
    rel.mkdir()
    (rel / "model.onnx").write_bytes(os.urandom(20000))
    (rel / "labels.txt").write_text("ok\nreject\n")
    (rel / "release.json").write_text(json.dumps({
        "name": name, "version": version, "security_version": 1, "model": "model.onnx",
        "profiles": ["generic-linux"], "no_smoke": True, "notes": "old-python round"}))
    sign_release(rel, key.private)
    return rel, Path(key.public)


@pytest.mark.parametrize("version", VERSIONS)
def test_a_round_of_every_stdlib_operation(version: str, home: Home, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    python, why = find_python(version)
    if python is None:
        pytest.skip(why)
    from fieldkit.hardware import suggest_profile
    from fieldkit.install import install_release

    # the device: its own Python only (no cryptography: the release verifier is the bundled ecdsa),
    # and what it reads as its hardware is a Raspberry Pi 4's files
    monkeypatch.setenv("FIELDKIT_AGENT_NO_CRYPTOGRAPHY", "1")
    monkeypatch.setenv("FIELDKIT_AGENT_SYSROOT", str(FIXTURES / "raspberry-pi-4"))
    monkeypatch.delenv("PYTHONPATH", raising=False)
    root = make_device_root(tmp_path / "device")
    rel, public = signed_release(tmp_path, home)
    shutil.copyfile(public, root / "etc/fieldkit/trust/release.pem")

    session = open_agent(home, python, root, f"py{version}")
    with session:
        # handshake and ping
        assert session.hello.python is not None and session.hello.python.startswith(version + ".")
        assert {"ping", "health", "identity", "put", "stat", "hash", "journal_read", "journal_checkpoint",
                "stage_open", "release_install"} <= set(session.hello.ops)
        assert session.call("ping").time > 0
        # health, with the service probe (systemctl) and the device's own paths
        health = session.call("health", {"paths": {"models": "/var/lib/fieldkit/models"},
                                         "service_unit": "edge-inference.service", "sample_s": 0.05})
        assert health.runtime.python.startswith(version + ".")
        assert health.memory is not None and health.memory.total > 0
        assert any(d.label == "models" for d in health.disks)
        # identity
        ident = session.identity()
        assert ident is not None and ident.python.startswith(version + ".")
        assert ident.model == "Raspberry Pi 4 Model B Rev 1.5"
        assert ident.raspberry_pi is not None and ident.raspberry_pi.memory_mb == 4096
        assert suggest_profile(ident)[0] == "raspberry-pi-4"
        # put, stat, hash
        data = os.urandom(300_000)
        src = tmp_path / "blob.bin"
        src.write_bytes(data)
        put = session.upload(src, "/var/lib/fieldkit/staging/blob.bin")
        digest = hashlib.sha256(data).hexdigest()
        assert (put.size, put.sha256) == (len(data), digest)
        assert (root / "var/lib/fieldkit/staging/blob.bin").read_bytes() == data
        stat = session.call("stat", {"path": "/var/lib/fieldkit/staging/blob.bin"})
        assert stat.exists and stat.size == len(data)
        assert session.call("hash", {"path": "/var/lib/fieldkit/staging/blob.bin"}).sha256 == digest
        # journal witness before anything happened on the device
        first = session.journal.witness(session, session.name, timeout=30)
        assert first.ok, first.problems
        # install-side verification: the real install service, the device verifies with pure Python
        result = install_release(session, rel, no_smoke=True)
        assert result.result == "committed", (result.message, [s.to_json() for s in result.stages])
        assert os.readlink(root / "var/lib/fieldkit/models/line-check/current") == "1.0.0"
        assert (root / "var/lib/fieldkit/models/line-check/1.0.0/labels.txt").read_text() == "ok\nreject\n"
        # a tampered copy is refused by the device's own verification (the laptop is bypassed)
        bad = tmp_path / "line-check-1.0.1"
        shutil.copytree(rel, bad)
        meta = json.loads((bad / "release.json").read_text())
        bundle = json.loads((bad / "model.sig").read_text())
        from fieldkit.release import keygen, sign_release
        (bad / "release.json").write_text(json.dumps(dict(meta, version="1.0.1")))
        sign_release(bad, keygen(tmp_path / "other-key.pem").private)  # signed, but not by a trusted key
        stage = session.call("stage_open", {"name": "line-check", "version": "1.0.1",
                                            "digest": _statement_digest(bad)})
        for f in sorted(p for p in bad.rglob("*") if p.is_file()):
            session.upload(f, f"{stage.dir}/{f.relative_to(bad).as_posix()}")
        with pytest.raises(DeviceError) as refused:
            session.call("release_install", {"stage": stage.stage})
        assert refused.value.code == "untrusted_key", refused.value.message
        assert bundle["dsseEnvelope"]["payload"]  # the original bundle was a DSSE envelope
        assert not (root / "var/lib/fieldkit/models/line-check/1.0.1").exists()
        # journal witness again: the device's journal now holds the install, pulled and checked
        second = session.journal.witness(session, session.name, timeout=30)
        assert second.ok, second.problems
        assert second.pulled > 0 and second.device_head_seq > first.device_head_seq
        device_events = [json.loads(line)["event"] for line in
                         (root / "var/lib/fieldkit/journal.jsonl").read_text().splitlines()]
        assert "install" in " ".join(device_events), device_events
    stderr = session.link._stream.stderr_text() if hasattr(session.link, "_stream") else ""
    assert "Traceback" not in stderr, stderr


def _statement_digest(rel: Path) -> str:
    import base64

    bundle = json.loads((rel / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    return statement["subject"][0]["digest"]["sha256"]


def test_the_bundled_verifier_supports_python_3_6() -> None:
    """The ecdsa (and six) that travel inside the zipapp declare support for 3.6; the round above
    proves they import and verify there."""
    from importlib import metadata

    for dist in ("ecdsa", "six"):
        requires = metadata.metadata(dist).get("Requires-Python") or ""
        assert "3.6" not in re.findall(r"!=\s*([\d.]+)", requires), (dist, requires)
        for bound in re.findall(r">=\s*([\d.]+)", requires):
            assert tuple(int(x) for x in bound.split(".")[:2]) <= (3, 6), (dist, requires)
    names = set(__import__("zipfile").ZipFile(__import__("io").BytesIO(agent_archive().data)).namelist())
    assert "ecdsa/keys.py" in names and "six.py" in names


def test_python_below_3_6_gets_one_clear_line(tmp_path: Path) -> None:
    python, why = find_python("2.7")
    if python is None:
        pytest.skip(why)
    pyz = agent_archive().write_cached(tmp_path / "cache")
    proc = subprocess.run([python, str(pyz), "serve", "--stdio", "--root", str(tmp_path)], stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30, universal_newlines=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip() == f"fieldkit-agent: needs Python 3.6 or later; {python} is Python 2.7.18"


def _ssh_profile(home: Home, name: str, python: str) -> str:
    from conftest import lenient_profile

    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    (home.profiles_dir / f"{name}.toml").write_text(lenient_profile(name, f'[transport]\npython = ["{python}"]\n'))
    return name


def test_over_ssh_python_3_6_is_accepted_and_2_7_refused_with_the_fix(home: Home) -> None:
    """The SSH push probes the interpreters the profile lists: 3.6 runs the pushed agent, 2.7 is
    refused by name and version with what to do (today's message, now saying >= 3.6)."""
    from fieldkit.devices import open_session
    from fieldkit.sim import Simulation

    py36, why36 = find_python("3.6")
    py27, why27 = find_python("2.7")
    if py36 is None or py27 is None:
        pytest.skip(why36 or why27)
    with Simulation(home, ssh=1, serial=0, profile=_ssh_profile(home, "jetpack4", py36)) as sim:
        name = sim.devices[0].name
        with open_session(name, home, timeout=30) as session:
            assert session.hello.python == "3.6.15" or session.hello.python.startswith("3.6.")
            assert session.link.agent_push.python == py36
            assert session.call("ping").time > 0
            assert session.identity() is not None
        from fieldkit.inventory import add_device

        add_device(home, name, sim.devices[0].target, profile=_ssh_profile(home, "too-old", py27), replace=True)
        with pytest.raises(ConnectError) as err:
            open_session(name, home, timeout=30)
    text = str(err.value)
    assert "no usable Python on 127.0.0.1:" in text
    assert f"{py27} ({py27}): too old, version 2.7.18" in text
    assert "install python3 (>= 3.6) on the device, or list its interpreter in the device profile's " \
           "transport.python" in text
