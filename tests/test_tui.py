"""The TUI driven with Textual's Pilot against simulated devices (real SSH and serial links)."""

from __future__ import annotations

import time
from typing import Callable

import pytest
from textual.widgets import DataTable, Input, Static

from fieldkit.agent import AGENT_VERSION
from fieldkit.link.hostkeys import remove_host_entry
from fieldkit.sim import Simulation
from screens.app import build_app
from screens.device import DeviceScreen
from screens.fleet import FleetScreen
from screens.modals import AddDeviceModal, HelpModal, TrustModal


async def wait_for(pilot, cond: Callable[[], bool], timeout: float = 25.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {getattr(pilot.app.screen, 'rows', None)}"
        await pilot.pause(0.05)


def answered(status: str) -> bool:
    """The device answered a health check: any verdict counts (a loaded test machine can be CRIT)."""
    return any(word in status for word in ("ok", "WARN", "CRIT"))


def cell(app, device: str, column: str) -> str:
    table = app.screen.query_one("#devices", DataTable)
    return str(table.get_cell(device, column))


@pytest.fixture
def sim(home):
    with Simulation(home, ssh=1, serial=1) as s:
        yield s


async def test_fleet_lists_devices_with_real_values_and_opens_live_health(home, sim) -> None:
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        assert isinstance(app.screen, FleetScreen)
        await wait_for(pilot, lambda: all("ok" in cell(app, d.name, "status") or "WARN" in cell(app, d.name, "status")
                                          or "CRIT" in cell(app, d.name, "status") for d in sim.devices),
                       what="health of both simulated devices")
        for d in sim.devices:
            assert cell(app, d.name, "cpu").endswith("%")
            assert cell(app, d.name, "agent") == AGENT_VERSION
        assert cell(app, "sim-serial-1", "transport") == "serial"

        table = app.screen.query_one("#devices", DataTable)
        table.move_cursor(row=table.get_row_index("sim-serial-1"))
        await pilot.press("enter")
        assert isinstance(app.screen, DeviceScreen) and app.screen.device == "sim-serial-1"
        screen = app.screen
        await wait_for(pilot, lambda: "updated" in str(screen.query_one("#banner", Static).render()),
                       what="first live sample")
        checks = screen.query_one("#checks", DataTable)
        assert "memory" in [str(k.value) for k in checks.rows]
        first = len(screen.cpu)
        await wait_for(pilot, lambda: len(screen.cpu) > first, what="a second poll")  # it is live
        await pilot.press("space")
        assert screen.paused
        await pilot.press("escape")
        assert isinstance(app.screen, FleetScreen)
        await pilot.press("q")


async def test_device_screen_shows_a_drop_and_recovers(home, sim) -> None:
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(DeviceScreen(home, "sim-ssh-1", interval=0.5))
        screen = app.screen
        banner = lambda: str(screen.query_one("#banner", Static).render())  # noqa: E731
        await wait_for(pilot, lambda: "updated" in banner(), what="first sample")
        sim.stop_device("sim-ssh-1")  # device powered off / cable pulled
        await wait_for(pilot, lambda: "DISCONNECTED" in banner(), timeout=20, what="the drop to be shown")
        assert screen.has_class("stale")
        assert "values below are from" in banner()
        sim.start_device("sim-ssh-1")
        await wait_for(pilot, lambda: "updated" in banner() and not screen.has_class("stale"), timeout=30,
                       what="reconnection")
        await pilot.press("escape")


async def test_unknown_host_asks_and_accepting_lets_the_connection_through(home, sim) -> None:
    dev = next(d for d in sim.devices if d.transport == "ssh")
    port = dev.target.rsplit(":", 1)[1]
    remove_host_entry(home, f"[127.0.0.1]:{port}")  # as if the device were new to this laptop
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, TrustModal) and app.screen.query("#fingerprint"),
                       what="the trust dialog")
        modal = app.screen
        assert modal.fingerprint == dev.host_key_fingerprint
        assert dev.host_key_fingerprint in str(modal.query_one("#fingerprint", Static).render())
        await pilot.press("y")
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), what="the dialog to close")
        await wait_for(pilot, lambda: answered(cell(app, dev.name, "status")),
                       what="the device to connect after trusting")
        assert f"[127.0.0.1]:{port}" in home.known_hosts.read_text()


async def test_declining_trust_leaves_nothing_behind(home, sim) -> None:
    dev = next(d for d in sim.devices if d.transport == "ssh")
    port = dev.target.rsplit(":", 1)[1]
    remove_host_entry(home, f"[127.0.0.1]:{port}")
    before = home.known_hosts.read_text() if home.known_hosts.exists() else ""
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, TrustModal), what="the trust dialog")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), what="the dialog to close")
        await pilot.pause(0.2)
        assert "DOWN" in cell(app, dev.name, "status")
    after = home.known_hosts.read_text() if home.known_hosts.exists() else ""
    assert after == before


async def test_add_device_form_rejects_a_bad_target_and_saves_a_good_one(home, tmp_path) -> None:
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("a")
        assert isinstance(app.screen, AddDeviceModal)
        modal = app.screen
        modal.query_one("#name", Input).value = "line3-cam"
        modal.query_one("#target", Input).value = "ftp://10.0.0.7"
        await pilot.click("#save")
        await pilot.pause()
        assert isinstance(app.screen, AddDeviceModal)  # still open
        error = str(modal.query_one("#error", Static).render())
        assert "ftp://10.0.0.7" in error and "ssh://" in error
        root = tmp_path / "dev"
        root.mkdir()
        target = modal.query_one("#target", Input)
        target.value = f"local:{root}"
        target.focus()
        await pilot.press("enter")  # the keyboard alone is enough
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen),
                       what="the form to close")
        await wait_for(pilot, lambda: "line3-cam" in app.screen.rows, what="the new row")
        await wait_for(pilot, lambda: answered(cell(app, "line3-cam", "status")),
                       what="the new device's health")


async def test_filter_help_and_palette_come_from_the_live_bindings(home, tmp_path) -> None:
    from fieldkit.inventory import add_device

    for name in ("press-1", "press-2", "oven-1"):
        (tmp_path / name).mkdir()
        add_device(home, name, f"local:{tmp_path / name}")
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        table = app.screen.query_one("#devices", DataTable)
        assert table.row_count == 3
        await pilot.press("slash")
        for ch in "press":
            await pilot.press(ch)
        assert table.row_count == 2
        await pilot.press("escape")
        assert table.row_count == 3
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpModal)
        keys = {row[1] for row in app.screen.rows}
        assert {"Open", "Refresh", "Filter", "Add", "Remove", "Trust", "Quit"} <= keys
        await pilot.press("escape")
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert any(t.startswith("Add") for t in titles) and any(t.startswith("Refresh") for t in titles)


@pytest.mark.no_identity
async def test_first_run_asks_for_the_operator_and_starts_the_journal(home) -> None:
    from fieldkit.journal import load_identity
    from screens.modals import IdentityModal

    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, IdentityModal) and app.screen.query("#operator"),
                       what="the first-run dialog")
        for ch in "j.meyer":
            await pilot.press(ch)
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, FleetScreen), what="the dialog to close")
    assert load_identity(home).name == "j.meyer"
    assert home.operator_key.stat().st_mode & 0o777 == 0o600


async def test_bench_screen_runs_a_model_and_shows_the_verdict(home, tmp_path) -> None:
    from models import model_paths

    from fieldkit.inventory import add_device
    from screens.bench import BenchScreen

    root = tmp_path / "dev"
    root.mkdir()
    add_device(home, "press-7", f"local:{root}", profile="raspberry-pi-5")
    model = model_paths()["anomaly-tabular"]
    app = build_app(home, fleet_refresh_s=60)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(BenchScreen(home, "press-7"))
        screen = app.screen
        screen.query_one("#model", Input).value = str(model)
        screen.query_one("#duration", Input).value = "1"
        screen.query_one("#model", Input).focus()
        await pilot.press("enter")
        banner = lambda: str(screen.query_one("#bench-banner", Static).render())  # noqa: E731
        await pilot.pause(1)
        assert screen.running or "PASS" in banner() or "FAIL" in banner() or "WARN" in banner(), banner()
        await wait_for(pilot, lambda: not screen.running and ("PASS" in banner() or "WARN" in banner()
                                                              or "FAIL" in banner()), timeout=60,
                       what="the benchmark verdict")
        results = screen.query_one("#results", DataTable)
        measures = [str(results.get_row_at(i)[0]) for i in range(results.row_count)]
        assert "p99" in measures and "throughput" in measures
        assert screen.query_one("#saved", DataTable).row_count == 1
    from fieldkit.benchreport import list_reports

    assert len(list_reports(home)) == 1


async def test_audit_screen_lists_entries_and_verifies(home, tmp_path) -> None:
    from fieldkit.health import check_device
    from fieldkit.inventory import add_device
    from screens.audit import AuditScreen

    root = tmp_path / "dev"
    root.mkdir()
    add_device(home, "oven-2", f"local:{root}")
    check_device("oven-2", home)  # connect + witness + health.check entries
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.press("A")
        await wait_for(pilot, lambda: isinstance(app.screen, AuditScreen) and app.screen.query("#entries"),
                       what="the audit screen")
        screen = app.screen
        table = screen.query_one("#entries", DataTable)
        await wait_for(pilot, lambda: table.row_count >= 3, what="journal entries")
        actions = {str(table.get_cell(k, "action")) for k in table.rows}
        assert {"connect", "health.check", "operator.init"} <= actions
        assert "pending sync" in str(screen.query_one("#audit-status", Static).render())
        await pilot.press("v")
        await wait_for(pilot, lambda: not screen.busy and any("verified" in str(n.message) for n in app._notifications),
                       what="verification")


async def test_audit_screen_names_the_first_bad_seq_of_a_tampered_journal(home) -> None:
    import sqlite3

    from fieldkit.journal import Journal
    from screens.audit import AuditScreen

    j = Journal.open(home)
    for i in range(5):
        j.record("press-1", "health.check", "ok", {"i": i})
    conn = sqlite3.connect(home.journal_db)
    conn.execute("DROP TRIGGER IF EXISTS entries_no_update")
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE entries SET details = '{\"i\":99}' WHERE seq = 4")
    conn.commit()
    conn.close()
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(AuditScreen(home))
        screen = app.screen
        await wait_for(pilot, lambda: "VERIFY FAILED at seq 4" in screen.chain, what="the verification result")
