"""Long-lived device sessions (fieldkit.fleetwatch): one session per device, a journal that holds what
changed rather than every sample, reconnection with backoff, and a serial port that says who holds it
and is handed over when asked (issue 12)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, lenient_profile, run_cli

from fieldkit.fleetwatch import Backoff, FleetWatch
from fieldkit.inventory import add_device
from fieldkit.journal import Journal
from fieldkit.locations import Home
from fieldkit.sim import Simulation

PROFILE = "lenient-watch"
STRICT = lenient_profile(PROFILE).replace("memory_used_percent = { warn = 99.9, crit = 100 }",
                                          "memory_used_percent = { warn = 0.01, crit = 100 }")


def write_profile(home: Home, text: str) -> None:
    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    (home.profiles_dir / f"{PROFILE}.toml").write_text(text)


def actions(home: Home, device: str | None = None) -> list[tuple[str, str, dict]]:
    with Journal.open_readonly(home) as j:
        return [(e.action, e.outcome, e.details) for e in j.entries(device=device)]


def count(home: Home, device: str, action: str, outcome: str | None = None) -> int:
    return sum(1 for a, o, _ in actions(home, device) if a == action and (outcome is None or o == outcome))


def wait_until(cond, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture
def local_device(home: Home, device_root: Path) -> str:
    write_profile(home, lenient_profile(PROFILE))
    add_device(home, "oven-1", f"local:{device_root}", profile=PROFILE)
    return "oven-1"


def test_backoff_grows_to_its_cap_with_bounded_jitter() -> None:
    b = Backoff(first_s=1.0, factor=2.0, max_s=8.0, jitter=0.2)
    rng = random.Random(7)
    delays = [b.delay(n, rng) for n in range(1, 8)]
    for n, d in enumerate(delays, start=1):
        base = min(8.0, 2.0 ** (n - 1))
        assert 0.8 * base <= d <= 1.2 * base, (n, d)
    assert len({round(d, 6) for d in delays}) == len(delays)  # jittered: not the same instant for every device


def test_one_session_over_many_polls_and_each_status_change_journaled_once(home: Home, local_device: str) -> None:
    with FleetWatch(home, interval=0.1) as watch:
        watch.track([local_device])
        for _ in range(4):
            assert watch.poll(local_device).status == "ok"
        assert watch.connects(local_device) == 1
        assert count(home, local_device, "connect") == 1
        assert count(home, local_device, "journal.witness") == 1
        assert count(home, local_device, "health.check") == 1  # the first sample only

        write_profile(home, STRICT)  # edited while the session is open: the next poll judges by it
        for _ in range(3):
            report = watch.poll(local_device)
            assert report.status == "warn", report.checks
        checks = [d for a, _, d in actions(home, local_device) if a == "health.check"]
        assert len(checks) == 2
        assert checks[-1]["status"] == "warn" and checks[-1]["previous"] == "ok"
        assert any(p.startswith("memory:") for p in checks[-1]["problems"]), checks[-1]

        journaled = lambda: [d["status"] for a, _, d in actions(home, local_device) if a == "health.check"]  # noqa: E731
        write_profile(home, lenient_profile(PROFILE))
        assert watch.poll(local_device).status == "ok"
        assert watch.poll(local_device).status == "ok"
        assert journaled() == ["ok", "warn"]  # a recovery is news once it has held settle_polls (3) polls
        assert watch.poll(local_device).status == "ok"
        assert journaled() == ["ok", "warn", "ok"]
        assert watch.connects(local_device) == 1 and count(home, local_device, "connect") == 1

        # a reading flapping at its threshold: the first worsening is journaled, the flaps are not
        for i in range(7):
            write_profile(home, STRICT if i % 2 == 0 else lenient_profile(PROFILE))
            assert watch.poll(local_device).status == ("warn" if i % 2 == 0 else "ok")
        assert journaled() == ["ok", "warn", "ok", "warn"]


def test_background_polling_reports_every_device_and_keeps_one_session(home: Home, tmp_path: Path) -> None:
    from fieldkit.sim import make_device_root

    write_profile(home, lenient_profile(PROFILE))
    names = [f"press-{i}" for i in range(3)]
    for n in names:
        add_device(home, n, f"local:{make_device_root(tmp_path / n)}", profile=PROFILE)
    seen: dict[str, int] = {}
    with FleetWatch(home, interval=0.1, on_report=lambda r: seen.__setitem__(r.device, seen.get(r.device, 0) + 1)) as w:
        w.track(names)
        w.start()
        wait_until(lambda: all(seen.get(n, 0) >= 4 for n in names), what="four polls of every device")
    for n in names:
        assert count(home, n, "connect") == 1 and count(home, n, "health.check") == 1, actions(home, n)


def test_a_killed_device_is_journaled_once_and_reconnected_with_backoff(home: Home) -> None:
    with Simulation(home, ssh=1, serial=0) as sim:
        name = sim.devices[0].name
        reports = []
        backoff = Backoff(first_s=0.2, factor=2.0, max_s=1.0, jitter=0.0)
        with FleetWatch(home, interval=0.2, dead_after_s=2.0, timeout=5.0, backoff=backoff,
                        on_report=reports.append) as watch:
            watch.track([name])
            watch.start()
            wait_until(lambda: watch.session(name) is not None and reports and reports[-1].error is None,
                       what="the first sample")
            sim.stop_device(name)  # powered off: its connections die, new ones are refused
            down_at = time.monotonic()
            wait_until(lambda: count(home, name, "disconnect") == 1, what="the drop to be journaled")
            wait_until(lambda: watch._devices[name].failures >= 3, what="three failed reconnect attempts")
            sim.start_device(name)
            wait_until(lambda: watch.session(name) is not None and reports[-1].error is None, what="the reconnection")
            down_s = time.monotonic() - down_at
        assert any(r.status == "unreachable" for r in reports)
        assert count(home, name, "disconnect") == 1
        assert count(home, name, "connect", "failed") == 0  # the outage is one disconnect, not one entry per try
        assert count(home, name, "connect", "ok") == 2
        (back,) = [d for a, _, d in actions(home, name) if a == "reconnect"]
        attempts = back["failed_attempts"]
        # with backoff (0.2, 0.4, 0.8, 1.0, 1.0 … s) there are far fewer tries than the 0.2 s poll would make
        assert 3 <= attempts <= 4 + down_s / 1.0, (attempts, down_s)
        assert back["down_for_s"] > 0


def test_a_device_never_reached_is_one_failed_connect(home: Home) -> None:
    add_device(home, "ghost", "ssh://nobody@127.0.0.1:9")  # discard port: refused at once
    backoff = Backoff(first_s=0.05, factor=1.0, max_s=0.05, jitter=0.0)
    with FleetWatch(home, interval=0.05, timeout=2.0, backoff=backoff) as watch:
        watch.track(["ghost"])
        for _ in range(5):
            report = watch.poll("ghost", force=True)
            assert report.status == "unreachable" and report.error
    assert count(home, "ghost", "connect", "failed") == 1
    assert count(home, "ghost", "connect") == 1


@pytest.fixture
def serial_sim(home: Home):
    write_profile(home, lenient_profile(PROFILE))
    with Simulation(home, ssh=0, serial=1, profile=PROFILE) as sim:
        yield sim


def test_serial_port_says_who_holds_it_and_is_released_on_request(home: Home, serial_sim) -> None:
    name = serial_sim.devices[0].name
    with FleetWatch(home, interval=0.2) as watch:
        watch.track([name])
        watch.start()
        wait_until(lambda: watch.session(name) is not None, what="the serial session")

        proc = run_cli("health", name)  # the same port from another process: a real pty, a real flock
        assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
        said = proc.stdout + proc.stderr
        assert f"held by fieldkit, pid {os.getpid()}" in said, said
        assert " since " in said and f"for {name}" in said
        assert f"fieldkit devices release {name}" in said
        assert "Traceback" not in proc.stderr

        watch.hold(name)  # a device screen has it open: not handed over
        proc = run_cli("devices", "release", name, "--wait", "20")
        assert proc.returncode == 3 and "device screen" in proc.stderr, (proc.returncode, proc.stderr)
        assert watch.session(name) is not None
        watch.unhold(name)

        proc = run_cli("devices", "release", name, "--wait", "20")
        assert proc.returncode == 0, proc.stderr
        assert "let go of" in proc.stdout and "takes the port back" in proc.stdout, proc.stdout
        assert watch.session(name) is None
        assert watch.last_report(name).status == "released"

        proc = run_cli("health", name, "--json")  # now the CLI gets the port
        assert proc.returncode == 0, proc.stderr
        released = [d for a, _, d in actions(home, name) if a == "session.release"]
        assert len(released) == 1 and released[0]["to_pid"] > 0

        watch.poll_now([name])  # the technician refreshes: the watch takes the port back
        wait_until(lambda: watch.session(name) is not None, what="the port taken back")
    assert count(home, name, "connect", "ok") == 3  # watch, CLI, watch again


def test_release_of_a_device_nobody_holds_or_not_on_serial(home: Home, local_device: str, serial_sim) -> None:
    name = serial_sim.devices[0].name
    proc = run_cli("devices", "release", name)
    assert proc.returncode == 0 and "nothing to release" in proc.stdout, proc.stderr
    proc = run_cli("devices", "release", local_device)
    assert proc.returncode == 2 and "not on a serial line" in proc.stderr


def test_health_watch_journals_changes_not_samples(home: Home, local_device: str) -> None:
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "fieldkit", "health", local_device, "--watch", "0.1", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
    try:
        lines = []
        deadline = time.monotonic() + 60
        while len(lines) < 5:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() else lines
            lines.append(proc.stdout.readline())
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    assert all('"status": "ok"' in line for line in lines), lines
    assert count(home, local_device, "connect") == 1
    assert count(home, local_device, "health.check") == 1


async def test_tui_keeps_one_session_per_device_and_the_device_screen_reuses_it(home: Home, serial_sim) -> None:
    from conftest import wait_for
    from textual.widgets import Static

    from screens.app import build_app
    from screens.device import DeviceScreen
    from screens.fleet import FleetScreen

    name = serial_sim.devices[0].name
    app = build_app(home, fleet_refresh_s=0.3)
    async with app.run_test(size=(100, 30)) as pilot:
        fleet = app.screen
        assert isinstance(fleet, FleetScreen)
        await wait_for(pilot, lambda: fleet.watch is not None and fleet.polled.get(name, 0) >= 4,
                       what="four polls of the serial device")
        session = fleet.watch.session(name)
        assert session is not None
        await pilot.press("enter")  # the device screen: its polls go over the fleet's session (one port)
        screen = app.screen
        assert isinstance(screen, DeviceScreen)
        await wait_for(pilot, lambda: "updated" in str(screen.query_one("#banner", Static).render()),
                       what="a live sample")
        assert screen.session is session
        await pilot.press("escape")
        assert app.screen is fleet and fleet.watch.session(name) is session  # still open for the fleet
        polled = fleet.polled[name]
        await wait_for(pilot, lambda: fleet.polled[name] >= polled + 2, what="the fleet polling again")
    assert count(home, name, "connect") == 1 and count(home, name, "health.check") == 1
    records = home.run_dir / "serial"
    wait_until(lambda: not any(records.glob("*.json")), what="the port's holder record removed")
