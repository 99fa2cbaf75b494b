"""Snapshots of every screen at 80×24 (a plain laptop terminal) and at 120×35, so a layout regression
fails CI: fleet, device, bench, audit, models, checklist, the add-device form, a detail view and the
fleet's filter.

Nothing on them may move with the machine or the clock: the devices are real ``local:`` agents whose
readings do not change (fieldkit.sim.readings: fixed health, a fake Raspberry Pi 5 system tree), the
app's clock, the header clock and the journal's clock are fixed, the operator key and journal id are
fixed, and the home is shown as ``~/...``. Every snapshot waits for what it shows (bounded waits on
conditions, never a sleep), so a busy machine only makes it slower. Update with
``--snapshot-update`` and look at what you accept (tests/__snapshots__/test_tui_snapshots/)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from conftest import wait_for
from fixeddevices import (  # noqa: F401  (frozen and snap_home are fixtures)
    FIXED_TS, PROFILE, app_for, fixed_operator, fleet_ready, frozen, settle, snap_home,
)
from textual.widgets import Static

from fieldkit.locations import Home
from screens.app import build_app

pytestmark = [
    pytest.mark.no_identity,  # the operator key is a fixed one (fixeddevices), so its fingerprint is too
    pytest.mark.skipif(importlib.util.find_spec("pytest_textual_snapshot") is None,
                       reason="pytest-textual-snapshot is not installed (pip install -e '.[test]')"),
]

SIZES = [pytest.param((80, 24), id="80x24"), pytest.param((120, 35), id="120x35")]


# ---- fleet ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_fleet(snap_home: Home, snap_compare, size) -> None:
    """Name, health and the reason stay at 80 columns; numbers and the rest join at 120."""
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_fleet_filter_open(snap_home: Home, snap_compare, size) -> None:
    """The filter sits under the table: the title bar stays."""
    async def run_before(pilot) -> None:
        await fleet_ready(pilot)
        await pilot.press("slash", *"press")
        await wait_for(pilot, lambda: pilot.app.screen.query_one("#devices").row_count == 2, what="the filter")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_fleet_why_detail(snap_home: Home, snap_compare, size) -> None:
    """`w` on the critical device: its whole problem in the detail view."""
    async def run_before(pilot) -> None:
        from screens.modals import DetailModal

        await fleet_ready(pilot)
        table = pilot.app.screen.query_one("#devices")
        table.move_cursor(row=table.get_row_index("oven-1"))
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, DetailModal), what="the detail view")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_add_device_form(snap_home: Home, snap_compare, size) -> None:
    """The profile list sits in the form: nothing unfolds over Save and Cancel."""
    async def run_before(pilot) -> None:
        from screens.modals import AddDeviceModal

        await fleet_ready(pilot)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, AddDeviceModal), what="the form")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


# ---- device -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_device(snap_home: Home, snap_compare, size) -> None:
    """The warning device: its checks with their detail, one sample in the sparklines."""
    async def run_before(pilot) -> None:
        from screens.device import DeviceScreen

        await fleet_ready(pilot)
        screen = DeviceScreen(snap_home, "press-2", interval=3600)
        await pilot.app.push_screen(screen)
        await wait_for(pilot, lambda: "updated" in str(screen.query_one("#banner", Static).render()),
                       what="the first sample")
        await wait_for(pilot, lambda: screen.query_one("#checks").row_count >= 10, what="the checks")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


# ---- models, checklist, bench, audit ----------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_models(snap_home: Home, snap_compare, size) -> None:
    """Fixed data (no device): two models, one install paused mid-transfer."""
    from test_tui_models import FIXED_MODELS

    async def run_before(pilot) -> None:
        from screens.models import ModelsScreen, Run

        await fleet_ready(pilot)
        screen = ModelsScreen(snap_home, "press-1", models=FIXED_MODELS, load=False)
        await pilot.app.push_screen(screen)
        await pilot.pause()
        screen.run = Run("install", "Install defects 2.2.0 · signer q3Vt0cX2r1m4mS7bD0m5 · active now 2.1.0",
                         ["verify", "transfer", "place", "activate", "smoke", "commit"],
                         state={"verify": "ok", "transfer": "running"}, seconds={"verify": 0.4},
                         current="transfer", bytes_done=41 * 2**20, bytes_total=96 * 2**20)
        screen.show_run()
        screen.show_transfer(41 * 2**20, 96 * 2**20, 12.5 * 2**20, 4.4)
        screen.query_one("#op-note", Static).update("copying model.onnx  (Esc cancels)")
        screen.set_banner("running", "installing on press-1 (Esc cancels)")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


@pytest.mark.parametrize("size", SIZES)
def test_checklist(snap_home: Home, snap_compare, size) -> None:
    """The bundled checklists, ready to start on press-1."""
    async def run_before(pilot) -> None:
        from screens.checklist import ChecklistScreen

        await fleet_ready(pilot)
        screen = ChecklistScreen(snap_home, "press-1")
        await pilot.app.push_screen(screen)
        await wait_for(pilot, lambda: "reading" not in str(screen.query_one("#cl-banner", Static).render()),
                       what="the checklists")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


def fixed_bench_report(n: int, device: str = "press-1"):
    """A finished benchmark whose every number is fixed (800 runs of a 9 ms model, a slow tail)."""
    from fieldkit.agent.stats import log_histogram
    from fieldkit.benchreport import BenchReport, verdict
    from fieldkit.profiles import get_profile

    lat = [round(8.2 + 0.9 * ((i * 37) % 100) / 100 + (4.0 if i % 97 == 0 else 0.0), 3) for i in range(800)]
    ordered = sorted(lat)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]

    result = {
        "session_create_ms": 41.3, "first_run_ms": 23.8, "warmup_runs": 20, "runs": len(lat), "duration_s": 7.4,
        "stop_reason": "min_runs", "latencies_ms": log_histogram([round(v * 1e6) for v in lat]),  # as the agent sends
        "latency_ms": {"min": ordered[0], "mean": round(sum(lat) / len(lat), 3), "std": 0.61,
                       "p50": pct(50), "p90": pct(90), "p95": pct(95), "p99": pct(99), "max": ordered[-1]},
        "p90_early_stopping_ms": pct(90.5), "p99_early_stopping_ms": pct(99.3), "valid": True,
        "early_stopping_min_runs": {"p90": 64, "p99": 662}, "throughput_ips": 108.2, "cpu_percent": 97.0,
        "peak_rss_bytes": 182 * 2**20, "memory": {"available_min": 5 * 2**30, "swap_in_pages": 0, "swap_out_pages": 0},
        "thermal": {"cpu-thermal": {"start": 47.0, "max": 58.0 + n, "end": 56.0}},
        "throttle": {"now": {}, "during_run": {}}, "deadline_misses": 0,
    }
    model = {"name": "defects", "path": "defects.onnx", "sha256": "ab" * 32, "size": 9_400_000}
    settings = {"duration_s": 7.0, "threads": 0}
    doc = {**result, "model": model, "settings": settings}
    profile = get_profile(PROFILE)
    return BenchReport(id=f"20250602-09{20 + n:02d}00-{device}-defects", created_at=f"2025-06-02T09:{20 + n:02d}:00Z",
                       device=device, target=f"local:devices/{device}", transport="local", profile=PROFILE,
                       use_case="vision-reject", budget_ms=100.0, metric="p99", model=model, settings=settings,
                       result=result, verdict=verdict(doc, profile, use_case="vision-reject"),
                       agent={"version": "0.1.0"})


@pytest.mark.parametrize("size", SIZES)
def test_bench(snap_home: Home, snap_compare, size) -> None:
    """A finished run's verdict and results beside two saved runs (fixed numbers: no benchmark runs)."""
    from fieldkit.benchreport import save_report

    for n in (1, 2):
        save_report(snap_home, fixed_bench_report(n))

    async def run_before(pilot) -> None:
        from screens.bench import BenchFinished, BenchScreen

        await fleet_ready(pilot)
        screen = BenchScreen(snap_home, "press-1")
        await pilot.app.push_screen(screen)
        await wait_for(pilot, lambda: screen.query_one("#saved").row_count == 2, what="the saved runs")
        screen.post_message(BenchFinished(report=fixed_bench_report(2)))
        await wait_for(pilot, lambda: screen.query_one("#results").row_count > 5, what="the results")
        await settle(pilot)

    assert snap_compare(app_for(snap_home), terminal_size=size, run_before=run_before)


@pytest.fixture
def audit_home(isolated_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, frozen) -> Home:
    """No devices (nothing polls), a journal of fixed entries at fixed times."""
    from fieldkit.journal import Journal

    home = Home(isolated_home)
    fixed_operator(home)
    monkeypatch.chdir(tmp_path)
    with Journal.open(home) as j:
        j.record("press-1", "connect", "ok", {"target": "ssh://pi@10.20.0.11", "profile": PROFILE})
        j.record("press-1", "health.check", "ok", {"status": "warn", "profile": PROFILE, "previous": "ok",
                                                   "problems": ["cpu: CPU busy 91 % over 1 s (fieldkit's own 0 % "
                                                                "excluded) at or above the warning limit 85 %"]})
        j.record("oven-1", "connect", "failed", {"target": "ssh://pi@10.20.0.14", "error": "cannot reach "
                                                 "10.20.0.14:22: timed out after 10 s", "exit_code": 3})
        j.record("press-2", "install", "ok", {"model": "defects", "version": "2.2.0", "previous": "2.1.0",
                                              "signer": "SHA256:q3Vt0cX2r1m4mS7bD0m5GkQ1c4z8yVfYV0w6bq9xK2E"})
        j.record("press-2", "bench.run", "ok", {"model": "defects", "p99_ms": 11.9, "verdict": "pass"})
        j.record("line3-cam", "rollback", "refused", {"model": "defects", "to": "1.9.0", "floor": 2,
                                                      "error": "1.9.0 is below the security floor 2"})
    return home


@pytest.mark.parametrize("size", SIZES)
def test_audit(audit_home: Home, snap_compare, size) -> None:
    """The journal with the chain verified."""
    async def run_before(pilot) -> None:
        from screens.audit import AuditScreen

        screen = AuditScreen(audit_home)
        await pilot.app.push_screen(screen)
        await wait_for(pilot, lambda: screen.query_one("#entries").row_count >= 7, what="the entries")
        await wait_for(pilot, lambda: not screen.busy and "checking" not in screen.chain, what="the verification")
        await settle(pilot)

    assert snap_compare(build_app(audit_home, fleet_refresh_s=3600, clock=lambda: FIXED_TS), terminal_size=size,
                        run_before=run_before)
