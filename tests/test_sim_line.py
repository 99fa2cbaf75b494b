"""A simulated serial cable that behaves like one: `fieldkit sim/demo --baud B --line-errors RATE`.

Real parts: the simulated device runs the real agent on a pty pair joined by fieldkit.sim.ptyrelay,
the laptop side is the real CLI or the real device session. Timing claims are lower bounds only (a
throttle cannot be beaten; a busy machine only makes things slower); fault counts are checked
against binomial bounds with a seeded injector.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, run_cli

from fieldkit.devices import open_session
from fieldkit.errors import ConfigError
from fieldkit.sim import Simulation, serial_line


def test_line_settings_are_validated_with_a_clear_message() -> None:
    assert serial_line(None).bytes_per_second is None and serial_line(None).baud == 115200
    assert serial_line(9600, 1e-3, 5).bytes_per_second == 960.0  # 8N1: ten bits a byte
    for baud, rate, what in ((1234, 0.0, "--baud 1234"), (115200, 0.5, "--line-errors 0.5"),
                             (115200, -1e-3, "--line-errors"), (115200, float("nan"), "--line-errors")):
        with pytest.raises(ConfigError) as exc:
            serial_line(baud, rate)
        assert what in str(exc.value) and exc.value.hint


def test_a_low_baud_line_takes_at_least_its_line_time(home, tmp_path: Path) -> None:
    """38400 baud = 3840 bytes/s each way: 12 KB up cannot take less than 12 KB / 3840 s."""
    baud, n = 38400, 12_000
    with Simulation(home, ssh=0, serial=1, baud=baud) as sim:
        dev = sim.devices[0]
        assert dev.target.endswith(f"?baud={baud}") and dev.line.bytes_per_second == baud / 10
        relay = sim.relays[dev.name]
        src = tmp_path / "blob"
        src.write_bytes(os.urandom(n))
        with open_session(dev.name, home) as session:
            link = session.link
            before = relay.stats["delivered_to_device"]
            t0 = time.monotonic()
            res = link.upload(src, "/var/lib/fieldkit/staging/blob")
            elapsed = time.monotonic() - t0
            moved = relay.stats["delivered_to_device"] - before
        assert res["size"] == n and (Path(dev.root) / "var/lib/fieldkit/staging/blob").read_bytes() == src.read_bytes()
        rate = baud / 10
        burst = max(64.0, rate * 0.02)  # the relay's token bucket may pass this much at once
        assert moved >= n
        assert elapsed >= (moved - burst) / rate, f"{moved} bytes in {elapsed:.2f} s on a {rate:.0f} bytes/s line"


def test_faults_are_injected_at_about_the_requested_rate(home) -> None:
    """1e-3 per byte, a third each dropped, flipped, inserted (seeded): counts within binomial bounds."""
    rate = 1e-3
    with Simulation(home, ssh=0, serial=1, line_errors=rate, line_seed=4) as sim:
        name = sim.devices[0].name
        fault = sim.faults[name]
        assert sim.relays[name].fault is fault and sim.devices[0].line.line_errors == rate
        with open_session(name, home) as session:
            for _ in range(3):
                assert session.call("ping")
            while fault.bytes_seen < 150_000:
                session.call("health", {"sample_s": 0.0})
        seen = fault.bytes_seen
    expected = seen * rate
    assert abs(fault.total - expected) <= 5 * math.sqrt(expected), fault.counts
    for kind in ("dropped", "flipped", "inserted"):
        third = expected / 3
        assert abs(fault.counts[kind] - third) <= 5 * math.sqrt(third), fault.counts


def _state(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "fieldkit sim did not write its state file"
        time.sleep(0.05)
    return json.loads(path.read_text())


def test_sim_cli_line_flags_show_in_the_state_file_and_health_gets_through_the_noise(home, tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    proc = subprocess.Popen([sys.executable, "-m", "fieldkit", "sim", "--ssh", "0", "--serial", "1", "--baud",
                             "115200", "--line-errors", "1e-3", "--line-seed", "9", "--state", str(state)],
                            cwd=str(ROOT), env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        doc = _state(state, proc)
        (dev,) = doc["devices"]
        assert dev["line"] == {"baud": 115200, "bytes_per_second": 11520.0, "line_errors": 0.001, "line_seed": 9}
        assert dev["target"].endswith("?baud=115200")
        for _ in range(2):  # health (connect, authentication, witness, health, journal) through the noise
            proc_h = run_cli("health", "--json", dev["name"], timeout=120)
            assert proc_h.returncode in (0, 1), proc_h.stderr
            assert json.loads(proc_h.stdout)["agent"]["root"] == dev["root"]
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "serial line: 115200 baud, 1 fault in 1,000 bytes" in out


@pytest.mark.parametrize("cmd", ["sim", "demo"])
def test_bad_line_flags_are_usage_errors(home, cmd: str) -> None:
    extra = ["--text"] if cmd == "demo" else []
    proc = run_cli(cmd, *extra, "--baud", "12345")
    assert proc.returncode == 2 and "--baud 12345 is not a serial port rate" in proc.stderr
    assert "115200" in proc.stderr  # the hint lists the rates
    proc = run_cli(cmd, *extra, "--line-errors", "0.2")
    assert proc.returncode == 2 and "--line-errors 0.2" in proc.stderr
