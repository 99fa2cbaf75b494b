"""The device session (fieldkit.devices): one way to reach a device, and the same host-key check
for the TUI's `t` as for a connect."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from fieldkit.devices import DeviceSession, check_host_key, open_session, resolve
from fieldkit.errors import HostKeyError
from fieldkit.journal import Journal
from fieldkit.link.hostkeys import remove_host_entry
from fieldkit.link.targets import parse_target
from fieldkit.locations import Home
from fieldkit.sim import Simulation


def test_a_session_holds_link_journal_and_profile_and_records_through_them(home: Home, device_root: Path) -> None:
    with open_session(f"local:{device_root}", home) as session:
        assert isinstance(session, DeviceSession)
        assert session.profile.name == "generic-linux" and session.transport == "local"
        assert session.witness is not None and session.witness.ok
        assert session.call("ping").time > 0  # typed results
        assert session.call("stat", {"path": "/etc/hostname"}).exists in (True, False)
        session.record("test.note", "ok", {"n": 1})
    with Journal.open_readonly(home) as j:
        actions = [e.action for e in j.entries(device=session.name)]
    assert actions[:3] == ["connect", "journal.witness", "test.note"] or actions[-3:] == ["connect", "journal.witness", "test.note"]


def test_an_operation_still_records_when_its_session_is_closed_under_it(home: Home, device_root: Path) -> None:
    session = open_session(f"local:{device_root}", home)
    started, done = threading.Event(), []

    def work() -> None:
        try:
            with session.operation("test.long", {"step": 1}):
                started.set()
                session.call("sleep", {"seconds": 30}, timeout=60)
        except Exception as exc:
            done.append(exc)

    t = threading.Thread(target=work)
    t.start()
    assert started.wait(10)
    session.close("technician pressed Esc")
    t.join(20)
    assert done and done[0].exit_code == 3  # the link was lost, and that is what was recorded
    with Journal.open_readonly(home) as j:
        last = j.entries(action="test.long")[-1]
    assert last.outcome == "failed" and "technician pressed Esc" in last.details["error"]


def test_the_tui_host_key_check_and_a_connect_agree_on_user_known_hosts_file(
        home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key kept only in the file ~/.ssh/config names (UserKnownHostsFile) is trusted by both."""
    monkeypatch.delenv("FIELDKIT_USER_KNOWN_HOSTS")
    with Simulation(home, ssh=1, serial=0) as sim:
        dev = sim.devices[0]
        t = parse_target(dev.target)
        name = f"[{t.host}]:{t.port}"
        line = next(ln for ln in home.known_hosts.read_text().splitlines() if ln.startswith(name))
        remove_host_entry(home, name)
        with pytest.raises(HostKeyError):
            check_host_key(home, dev.name)  # nowhere on file yet: unknown, and so for a connect
        custom = tmp_path / "plant_known_hosts"
        custom.write_text(line + "\n")
        Path(str(tmp_path / "ssh_config")).write_text(f"Host {t.host}\n  UserKnownHostsFile {custom}\n")
        key_type, fp = check_host_key(home, dev.name)
        assert fp == dev.host_key_fingerprint
        with open_session(dev.name, home) as session:  # the connect accepts the same key
            assert session.call("ping").time > 0
        assert check_host_key(home, f"local:{tmp_path}") is None  # not an SSH device: no host key


def test_resolve_prefers_the_inventory_and_refuses_a_bad_profile(home: Home, device_root: Path) -> None:
    from fieldkit.errors import ConfigError
    from fieldkit.inventory import add_device

    add_device(home, "press-1", f"local:{device_root}", profile="raspberry-pi-5")
    dev = resolve("press-1", home)
    assert (dev.name, dev.profile.name) == ("press-1", "raspberry-pi-5")
    assert resolve("press-1", home, "x86-ipc").profile.name == "x86-ipc"
    with pytest.raises(ConfigError):
        resolve("press-1", home, "no-such-profile")


def test_a_profile_with_become_sudo_starts_the_agent_with_sudo_n(
        home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`become = "sudo"`: the agent is started as `sudo -n ...` (never a password prompt)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = tmp_path / "sudo-calls"
    (bindir / "sudo").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> "{calls}"\n[ "$1" = "-n" ] && shift\nexec "$@"\n')
    (bindir / "sudo").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    generic = (Path(__file__).resolve().parent.parent / "profiles" / "generic-linux.toml").read_text()
    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    (home.profiles_dir / "sudo-box.toml").write_text(
        generic.replace('name = "generic-linux"', 'name = "sudo-box"')
               .replace("[transport]\n", '[transport]\nbecome = "sudo"\n'))
    with Simulation(home, ssh=1, serial=0, profile="sudo-box") as sim:
        with open_session(sim.devices[0].name, home) as session:
            assert session.profile.transport.become == "sudo"
            assert session.call("ping").time > 0
    lines = calls.read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("-n ") and lines[0].endswith(" serve --stdio"), lines
