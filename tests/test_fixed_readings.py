"""A device whose readings do not change (fieldkit.sim.readings, the agent's FIELDKIT_AGENT_READINGS
hook): the real agent over a real ``local:`` link answers health from the file, the laptop judges it
as any reading, a bad file is a device error naming it, and the clock offset of a device on this
machine's clock reads 0 however busy the machine is."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from fieldkit.agent.fixedreadings import ENV, MAX_BYTES
from fieldkit.health import check_device
from fieldkit.inventory import add_device
from fieldkit.locations import Home
from fieldkit.sim import make_device_root
from fieldkit.sim.readings import READINGS_FILE, fixed_env, write_fake_sysroot, write_fixed_readings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fixed(home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in fixed_env(write_fake_sysroot(tmp_path / "sysroot")).items():
        monkeypatch.setenv(key, value)
    root = make_device_root(tmp_path / "press-2")
    write_fixed_readings(root, hostname="press-2", cpu_percent=91.0, temp_c=61.5)
    add_device(home, "press-2", f"local:{root}", profile="raspberry-pi-5")
    return root


def test_the_agent_answers_health_from_the_fixed_readings_every_time(home: Home, fixed: Path) -> None:
    first, second = check_device("press-2", home), check_device("press-2", home)
    for report in (first, second):
        assert report.error is None, report.error
        assert report.raw["cpu"]["percent"] == 91.0 and report.raw["hostname"] == "press-2"
        assert [z["temp_c"] for z in report.raw["temperatures"]] == [61.5]
        assert report.raw["agent"]["version"] and report.raw["agent"]["root"] == str(fixed)  # the real agent's
    assert first.status == "warn" and next(c for c in first.checks if c.name == "cpu").status == "warn"
    assert [(c.name, c.status, c.message) for c in first.checks] == [(c.name, c.status, c.message) for c in second.checks]
    assert not any(c.name == "hardware" for c in first.checks)  # the fake tree says Raspberry Pi 5, as the profile


def test_without_the_hook_the_same_root_is_measured(home: Home, fixed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    report = check_device("press-2", home)
    assert report.error is None and "fixed readings" not in str(report.raw["cpu"].get("method"))


@pytest.mark.parametrize("content, says", [(b"{not json", "is not JSON"), (b"[1, 2]", "not an object"),
                                          (b" " * (MAX_BYTES + 1), "larger than")], ids=["broken", "array", "huge"])
def test_a_bad_readings_file_is_a_device_error_that_names_it(home: Home, fixed: Path, content: bytes, says: str) -> None:
    (fixed / READINGS_FILE).write_bytes(content)
    report = check_device("press-2", home)
    assert report.status == "crit" and ENV in report.error and READINGS_FILE in report.error and says in report.error


def test_a_missing_readings_file_is_a_device_error_too(home: Home, fixed: Path) -> None:
    (fixed / READINGS_FILE).unlink()
    report = check_device("press-2", home)
    assert report.status == "crit" and "cannot be read" in report.error


def test_a_device_on_this_machines_clock_has_no_offset(home: Home, tmp_path: Path) -> None:
    """Its clock read falls inside the ping's round trip, whatever the load: 0.0, never ±0.00x."""
    root = make_device_root(tmp_path / "dev")
    add_device(home, "dev", f"local:{root}")
    from fieldkit.devices import open_session
    from fieldkit.health import measure

    with open_session("dev", home) as session:
        offsets = {measure(session, sample_s=0.05)[1] for _ in range(5)}
    assert offsets == {0.0}


def test_the_hook_is_python_36_code() -> None:
    py36 = shutil.which("python3.6")
    if py36 is None:
        pytest.skip("python3.6 is not installed here (pyenv 3.6.15 on the CI image)")
    proc = subprocess.run([py36, "-m", "py_compile", str(ROOT / "fieldkit/agent/fixedreadings.py")],
                          capture_output=True, text=True, env={**os.environ, "PYENV_VERSION": "3.6.15"}, timeout=60)
    assert proc.returncode == 0, proc.stderr
