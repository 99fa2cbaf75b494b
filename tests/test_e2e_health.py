"""`fieldkit health` end to end over every transport, through the real CLI and real parts:
a real OpenSSH sshd on 127.0.0.1, simulated devices (paramiko SSH servers and pty pairs running
the real agent), ProxyJump, a faulty serial line, dead peers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli
from sshd import Sshd, skip_unless_available

from fieldkit.errors import LinkLost
from fieldkit.devices import open_session
from fieldkit.link.sshauth import ensure_client_key
from fieldkit.sim import Simulation


def connect(spec, home, **kw):
    """The message client of a device session: these tests speak the raw protocol through it."""
    return open_session(spec, home, **kw).link


@pytest.fixture
def sshd(tmp_path: Path, home):
    skip_unless_available()
    with Sshd(tmp_path / "sshd", home=tmp_path / "device-home") as s:
        s.authorize(Path(str(ensure_client_key(home)) + ".pub"))
        yield s


@pytest.fixture
def sim(home):
    with Simulation(home, ssh=1, serial=1) as s:
        yield s


def _health_json(*args: str) -> tuple[int, dict, str]:
    proc = run_cli("health", "--json", *args)
    try:
        doc = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except json.JSONDecodeError:
        doc = {}
    return proc.returncode, doc, proc.stderr


def test_health_through_real_sshd_pushes_then_reuses_the_agent(home, sshd: Sshd, tmp_path: Path) -> None:
    target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    rc, _, err = _health_json(target)
    assert rc == 3 and sshd.fingerprint in err and "fieldkit trust" in err  # unknown host refused

    assert run_cli("trust", target, "--fingerprint", sshd.fingerprint).returncode == 0
    cache = tmp_path / "device-home" / ".cache" / "fieldkit"
    rc, doc, err = _health_json(target)
    assert rc in (0, 1), err
    assert doc["agent"]["version"] and doc["memory"]["total"] > 0
    first = sorted(cache.glob("agent-*.pyz"))
    assert len(first) == 1
    mtime = first[0].stat().st_mtime_ns
    with connect(target, home) as link:  # second time: the cached agent is reused
        assert link.agent_push.uploaded is False
        assert link.call("ping")
    assert first[0].stat().st_mtime_ns == mtime


def test_changed_host_key_is_refused_loudly(home, sshd: Sshd) -> None:
    target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    wrong = "AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
    home.known_hosts.write_text(f"[127.0.0.1]:{sshd.port} ssh-ed25519 {wrong}\n")
    before = home.known_hosts.read_bytes()
    rc, _, err = _health_json(target)
    assert rc == 3
    assert "changed" in err and sshd.fingerprint in err
    assert home.known_hosts.read_bytes() == before  # never overwritten silently
    proc = run_cli("trust", target, "--fingerprint", sshd.fingerprint)
    assert proc.returncode == 3 and "--replace" in proc.stderr
    assert home.known_hosts.read_bytes() == before


def test_trust_with_a_wrong_fingerprint_pins_nothing(home, sshd: Sshd) -> None:
    target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    proc = run_cli("trust", target, "--fingerprint", "SHA256:" + "A" * 43)
    assert proc.returncode == 3 and sshd.fingerprint in proc.stderr
    assert not home.known_hosts.exists() or sshd.host_public_key.split()[1] not in home.known_hosts.read_text()


def test_health_over_proxyjump_to_a_simulated_device(home, sshd: Sshd, sim: Simulation, tmp_path: Path) -> None:
    dev = next(d for d in sim.devices if d.transport == "ssh")
    port = dev.target.rsplit(":", 1)[1]
    home.known_hosts.write_text(home.known_hosts.read_text() + sshd.known_hosts_line() + "\n")
    Path(os.environ["FIELDKIT_SSH_CONFIG"]).write_text(
        f"Host plant-gw\n  HostName 127.0.0.1\n  Port {sshd.port}\n  User {sshd.user}\n\n"
        f"Host line3-cam\n  HostName 127.0.0.1\n  Port {port}\n  User fieldkit\n  ProxyJump plant-gw\n")
    rc, doc, err = _health_json("line3-cam")
    assert rc in (0, 1), err
    assert doc["agent"]["root"] == dev.root  # it really reached the simulated device
    assert "direct-tcpip" in sshd.log_text() or "forward" in sshd.log_text().lower()


def test_sim_cli_registers_devices_and_health_all_reaches_them(home, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "fieldkit", "sim", "--ssh", "1", "--serial", "1",
                             "--state", str(state)], cwd=str(ROOT), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while not state.exists():
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "fieldkit sim did not write its state file"
            time.sleep(0.05)
        devices = json.loads(state.read_text())["devices"]
        assert {d["transport"] for d in devices} == {"ssh", "serial"}
        for d in devices:
            assert set(d) == {"name", "target", "transport", "root", "host_key_fingerprint", "line"}
            assert (d["host_key_fingerprint"] or "").startswith("SHA256:") == (d["transport"] == "ssh")
            assert (d["line"] is None) == (d["transport"] == "ssh")  # unthrottled, clean by default:
            assert d["line"] in (None, {"baud": 115200, "bytes_per_second": None, "line_errors": 0.0,
                                        "line_seed": None})
        rc, doc, err = _health_json("--all")
        assert rc in (0, 1), err
        by = {d["device"]: d for d in doc["devices"]}
        assert set(by) == {d["name"] for d in devices}
        for d in devices:
            assert by[d["name"]]["agent"]["root"] == d["root"]
            assert by[d["name"]]["memory"]["total"] > 0
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "stopped" in out
    assert run_cli("devices", "list", "--json").stdout.count("sim-") == 0  # cleaned up


def test_serial_link_survives_a_faulty_line(home, tmp_path: Path) -> None:
    from fieldkit.sim.ptyrelay import FaultInjector

    fault = FaultInjector(drop_rate=2e-4, flip_rate=2e-4, insert_rate=2e-4, seed=3)
    with Simulation(home, ssh=0, serial=1) as sim:
        relay = sim.relays["sim-serial-1"]
        relay.fault = fault
        with connect("sim-serial-1", home) as link:
            for _ in range(5):
                raw = link.call("health", {"sample_s": 0.05})
                assert raw["memory"]["total"] > 0
            data = os.urandom(300_000)
            src = tmp_path / "blob"
            src.write_bytes(data)
            res = link.upload(src, "/var/lib/fieldkit/staging/blob")
            stats = dict(link.arq.stats)
        landed = Path(sim.devices[0].root) / "var/lib/fieldkit/staging/blob"
        assert landed.read_bytes() == data
        assert res["size"] == len(data)
    assert fault.total > 0
    assert stats["retransmits"] > 0
    assert stats["crc_errors"] + stats["bad_frames"] > 0


def test_garbage_on_the_serial_line_between_requests(home) -> None:
    with Simulation(home, ssh=0, serial=1) as sim:
        relay = sim.relays["sim-serial-1"]
        relay.inject(b"\x00garbage\xff\xfe login: \r\n" * 20)  # a getty / boot log before the agent
        with connect("sim-serial-1", home) as link:
            assert link.call("ping")
            relay.inject(os.urandom(2000))
            assert link.call("ping")
            relay.inject(os.urandom(2000), to=0) if hasattr(relay, "inject") else None
            assert link.call("health", {"sample_s": 0.05})["cpu"]["count"] > 0
            assert link.arq.stats["bad_frames"] + link.arq.stats["crc_errors"] > 0


def test_serial_peer_that_stops_answering_is_detected_in_seconds(home) -> None:
    with Simulation(home, ssh=0, serial=1) as sim:
        link = connect("sim-serial-1", home, dead_after_s=3.0)
        assert link.call("ping")
        sim.relays["sim-serial-1"].pause()  # cable pulled
        t0 = time.monotonic()
        with pytest.raises(LinkLost):
            link.call("sleep", {"seconds": 30}, timeout=60)
        assert time.monotonic() - t0 < 8
        link.close()
        sim.relays["sim-serial-1"].resume()  # cable back: a new session works
        with connect("sim-serial-1", home) as again:
            assert again.call("ping")


def test_ssh_device_that_powers_off_is_detected_and_comes_back(home, sim: Simulation) -> None:
    link = connect("sim-ssh-1", home, dead_after_s=3.0)
    assert link.call("ping")
    sim.stop_device("sim-ssh-1")
    t0 = time.monotonic()
    with pytest.raises(LinkLost):
        link.call("sleep", {"seconds": 30}, timeout=60)
    assert time.monotonic() - t0 < 8
    link.close()
    rc, doc, err = _health_json("sim-ssh-1")
    assert rc == 3 and doc["status"] == "unreachable"
    sim.start_device("sim-ssh-1")
    rc, doc, err = _health_json("sim-ssh-1")
    assert rc in (0, 1), err


def test_device_without_python3(home, sim: Simulation, tmp_path: Path) -> None:
    prof_dir = home.profiles_dir
    prof_dir.mkdir(parents=True, exist_ok=True)
    (prof_dir / "no-python.toml").write_text(
        'name = "no-python"\ndescription = "device image without Python"\n'
        '[transport]\npython = ["python3.99", "/opt/none/bin/python3"]\n')
    rc, doc, err = _health_json("sim-ssh-1", "--profile", "no-python")
    assert rc == 3
    assert "python3.99" in doc["error"] and "/opt/none/bin/python3" in doc["error"]


def test_unreachable_host_fails_fast(home) -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    t0 = time.monotonic()
    rc, doc, err = _health_json(f"ssh://root@127.0.0.1:{port}")
    assert rc == 3 and doc["status"] == "unreachable"
    assert time.monotonic() - t0 < 10


def test_serial_port_that_does_not_exist(home) -> None:
    rc, doc, err = _health_json("serial:///dev/ttyNOPE9?baud=115200")
    assert rc == 3 and "/dev/ttyNOPE9" in doc["error"]


def test_malformed_profile_is_a_configuration_error(home, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\ndescription = "x"\n[thresholds]\ntemperature_c = { warn = 90, crit = 80 }\n')
    proc = run_cli("profiles", "check", str(bad))
    assert proc.returncode == 2
    assert "bad.toml" in proc.stderr and "temperature_c" in proc.stderr


@pytest.mark.no_identity
def test_without_an_operator_identity_nothing_touches_a_device(home, device_root) -> None:
    proc = run_cli("health", f"local:{device_root}")
    assert proc.returncode == 2
    assert "fieldkit init --operator" in proc.stderr
    assert run_cli("init", "--operator", "j.meyer").returncode == 0
    assert run_cli("health", f"local:{device_root}").returncode in (0, 1)


def test_every_device_operation_lands_in_the_journal(home, sshd: Sshd, device_root) -> None:
    target = f"ssh://{sshd.user}@127.0.0.1:{sshd.port}"
    assert run_cli("health", target).returncode == 3  # unknown host: refused, recorded
    assert run_cli("trust", target, "--fingerprint", "SHA256:" + "B" * 43).returncode == 3
    assert run_cli("trust", target, "--fingerprint", sshd.fingerprint).returncode == 0
    assert run_cli("health", target, f"local:{device_root}").returncode in (0, 1)
    doc = json.loads(run_cli("audit", "show", "--json").stdout)
    entries = doc["entries"] if isinstance(doc, dict) else doc
    seen = [(e["device"], e["action"], e["outcome"]) for e in entries]
    assert (target, "connect", "failed") in seen
    assert any(a == "trust.refuse" and o == "refused" for _, a, o in seen)
    assert any(a.startswith("trust.") and o == "ok" for _, a, o in seen)
    assert sum(1 for _, a, o in seen if a == "health.check" and o == "ok") == 2
    assert any(a == "journal.witness" for _, a, _ in seen)
    assert run_cli("audit", "verify").returncode == 0
