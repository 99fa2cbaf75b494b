"""Shared fixtures. Every test gets its own FIELDKIT_HOME and never touches the user's ~/.ssh."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    home = tmp_path / "fieldkit-home"
    monkeypatch.setenv("FIELDKIT_HOME", str(home))
    ssh_cfg = tmp_path / "ssh_config"
    ssh_cfg.write_text("")
    monkeypatch.setenv("FIELDKIT_SSH_CONFIG", str(ssh_cfg))
    monkeypatch.setenv("FIELDKIT_USER_KNOWN_HOSTS", str(tmp_path / "user_known_hosts"))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.delenv("FIELDKIT_SYNC_TOKEN", raising=False)
    if request.node.get_closest_marker("no_identity") is None:
        from fieldkit.journal import setup_operator
        from fieldkit.locations import Home

        setup_operator(Home(home), "test-technician")  # operations refuse to run without one
    return home


@pytest.fixture
def home(isolated_home: Path):
    from fieldkit.locations import Home

    return Home(isolated_home).ensure()


@pytest.fixture
def device_root(tmp_path: Path) -> Path:
    from fieldkit.sim import make_device_root

    return make_device_root(tmp_path / "device")


def run_cli(*args: str, env: dict | None = None, timeout: float = 60, input: str | None = None):
    """Run the real CLI in a subprocess; returns CompletedProcess (text)."""
    import subprocess

    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    return subprocess.run([sys.executable, "-m", "fieldkit", *args], capture_output=True, text=True,
                          timeout=timeout, env=full_env, input=input, cwd=str(ROOT))


def lenient_profile(name: str, extra: str = "") -> str:
    """A device profile whose limits this shared, busy test machine always meets: the checks are
    real, the machine's load is not what is under test."""
    return f"""
name = "{name}"
description = "lenient limits: the machine's load is not what is under test"
arch = "any"
[thresholds]
cpu_percent = {{ warn = 101, crit = 102 }}
load_per_core = {{ warn = 500, crit = 1000 }}
memory_used_percent = {{ warn = 99.9, crit = 100 }}
swap_used_percent = {{ warn = 99.9, crit = 100 }}
disk_used_percent = {{ warn = 99.9, crit = 100 }}
temperature_c = {{ warn = 150, crit = 200 }}
clock_offset_s = {{ warn = 60, crit = 120 }}
[memory]
headroom_mb = 0
{extra}"""


async def wait_for(pilot, cond, timeout: float = 60.0, what: str = "condition") -> None:
    """Pilot: let the app run until ``cond()`` holds (bounded; never a fixed sleep)."""
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.pause(0.05)
