"""A fleet whose readings do not change, for snapshot and layout tests of the TUI.

Three ``local:`` devices run the real agent with fixed health readings and a fake Raspberry Pi 5
system tree (fieldkit.sim.readings), one device is down (nothing listens on 127.0.0.1:1); the header
clock, the app's clock and the journal's clock are stopped, the operator key and journal id are fixed,
and ``~`` is the test's directory, so no temporary path or time of day reaches the screen. Modules
that use these fixtures must be marked ``no_identity`` (the operator is made here, with a fixed key)."""

from __future__ import annotations

import itertools
import os
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import wait_for
from textual.widgets import Input

from fieldkit.inventory import add_device
from fieldkit.journal import setup_operator
from fieldkit.locations import Home
from fieldkit.sim import make_device_root
from fieldkit.sim.readings import fixed_env, write_fake_sysroot, write_fixed_readings
from screens.app import build_app

NOON = datetime(2025, 6, 2, 9, 30, tzinfo=timezone.utc)
FIXED_TS = NOON.timestamp()
PROFILE = "raspberry-pi-5"
# name -> fixed readings: one well, one warning (CPU), one critical (temperature); line3-cam is down
DEVICES = {"press-1": {}, "press-2": {"cpu_percent": 91.0}, "oven-1": {"temp_c": 84.5, "memory_percent": 63.0}}
DOWN = ("line3-cam", "ssh://fieldkit@127.0.0.1:1")  # nothing listens on port 1: refused at once


class FrozenDatetime(datetime):
    """The header clock's datetime (textual.widgets._header), stopped at :data:`NOON` UTC."""

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return datetime.fromtimestamp(FIXED_TS, tz)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """UTC, a stopped header clock, a journal clock that ticks 7 s per entry from :data:`NOON`, a fixed
    journal id, and ``~`` at ``tmp_path`` (the home shows as ``~/fieldkit-home``)."""
    old_tz = os.environ.get("TZ")
    os.environ["TZ"] = "UTC"
    time.tzset()
    ticks = itertools.count()
    monkeypatch.setattr("textual.widgets._header.datetime", FrozenDatetime)
    monkeypatch.setattr("fieldkit.journal.store.utc_now",
                        lambda: (NOON + timedelta(seconds=7 * next(ticks))).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    monkeypatch.setattr("fieldkit.journal.store.uuid", SimpleNamespace(uuid4=lambda: uuid.UUID(int=0x5EED_F1E1D)))
    monkeypatch.setenv("HOME", str(tmp_path))
    yield
    if old_tz is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old_tz
    time.tzset()


def fixed_operator(home: Home) -> None:
    """``j.meyer`` with a key derived from a constant (its fingerprint is the same on every run)."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from fieldkit.signing import write_private_key

    home.ensure()
    write_private_key(home.operator_key, ec.derive_private_key(0x5EED_CAFE_F00D, ec.SECP256R1()))
    setup_operator(home, "j.meyer")


@pytest.fixture
def snap_home(isolated_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frozen) -> Home:
    """Three fixed-reading devices and one that is down, targets relative to ``tmp_path`` (so no
    temporary path reaches the screen)."""
    home = Home(isolated_home)
    fixed_operator(home)
    monkeypatch.chdir(tmp_path)
    for key, value in fixed_env(write_fake_sysroot(tmp_path / "sysroot")).items():
        monkeypatch.setenv(key, value)
    for name, readings in DEVICES.items():
        root = make_device_root(tmp_path / "devices" / name)
        write_fixed_readings(root, hostname=name, **readings)
        add_device(home, name, f"local:devices/{name}", profile=PROFILE)
    add_device(home, DOWN[0], DOWN[1], profile=PROFILE)
    return home


def app_for(home: Home):
    return build_app(home, fleet_refresh_s=3600, clock=lambda: FIXED_TS)


def cell(app, device: str, column: str) -> str:
    from screens.fleet import FleetScreen

    fleet = next(s for s in app.screen_stack if isinstance(s, FleetScreen))
    table = fleet.query_one("#devices")
    return str(table.get_cell(device, column)) if device in table.rows else ""


async def fleet_ready(pilot) -> None:
    """Every device judged and the answering ones' models listed (the first refresh's second pass)."""
    app = pilot.app
    await wait_for(pilot, lambda: app.screen.query("#devices"), what="the fleet")
    await wait_for(pilot, lambda: all(cell(app, d, "status") not in ("", "checking…") for d in [*DEVICES, DOWN[0]]),
                   what="every device's health")
    await wait_for(pilot, lambda: all(cell(app, d, "model") for d in DEVICES), what="the model column")


def laid_out(app) -> bool:
    """Every table on screen has measured its rows (DataTable does that when idle; Textual pinned <9)."""
    from textual.widgets import DataTable

    return all(not (t._updated_cells or t._new_rows or t._require_update_dimensions or getattr(t, "_refit_pending", False))
               for s in app.screen_stack for t in s.query(DataTable))


async def settle(pilot) -> None:
    """Steady cursors, no toasts, nothing left to lay out."""
    app = pilot.app
    await pilot.pause()
    for screen in app.screen_stack:
        for box in screen.query(Input):
            box.cursor_blink = False
    app.clear_notifications()
    await wait_for(pilot, lambda: laid_out(app), what="the tables' layout")
    await pilot.pause()
