"""The Checklist screen driven with Pilot against a real `local:` device (the real agent, the real
runner and journal): a confirm answered by keyboard with a note, a health check and a record step
pass, the signed report is written; a run stopped by Esc is offered for resume on reopening (from
the fleet's `c`) and finishes, as the journal says."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import lenient_profile, wait_for
from models import models  # noqa: F401  (session fixture)
from textual.widgets import DataTable, Input

from fieldkit.checklists import load_run
from fieldkit.inventory import add_device
from fieldkit.journal import Journal
from fieldkit.locations import Home
from screens.app import build_app
from screens.checklist import ChecklistScreen
from screens.device import DeviceScreen
from screens.modals import ResumeModal

DEVICE = "press-7"
PROFILE = "checklist-tui-test"
LENIENT_PROFILE = lenient_profile(PROFILE)
SITE_CHECK = """
name = "site-check"
title = "Site check: ready, healthy, recorded, signed off"

[[steps]]
id = "ready"
kind = "confirm"
title = "Cabinet closed?"
question = "Is the cabinet closed and the line safe?"

[[steps]]
id = "health"
kind = "check"
check = "health"
title = "Device health all ok"

[[steps]]
id = "record"
kind = "record"
record = ["versions"]
title = "Record versions"

[[steps]]
id = "done"
kind = "confirm"
title = "Signed off?"
"""


@pytest.fixture
def device(home: Home, device_root: Path) -> Path:
    home.profiles_dir.mkdir(parents=True, exist_ok=True)
    (home.profiles_dir / f"{PROFILE}.toml").write_text(LENIENT_PROFILE)
    (home.root / "checklists").mkdir(exist_ok=True)
    (home.root / "checklists" / "site-check.toml").write_text(SITE_CHECK)
    add_device(home, DEVICE, f"local:{device_root}", profile=PROFILE)
    return device_root


async def pick(pilot, screen: ChecklistScreen, name: str) -> None:
    await wait_for(pilot, lambda: name in screen.checklists, what="the checklists listed")
    table = screen.query_one("#checklists", DataTable)
    table.move_cursor(row=table.get_row_index(name))
    table.focus()
    await pilot.pause()
    await pilot.press("enter")


def asked(screen: ChecklistScreen, step: str) -> bool:
    return screen.asking is not None and screen.asking[0].id == step


def last_run(home: Home):
    from fieldkit.checklists import list_runs

    with Journal.open_readonly(home) as journal:
        runs = [r for r in list_runs(journal) if r["device"] == DEVICE]
        return load_run(journal, runs[-1]["run_id"]), len(runs)


async def test_confirm_by_keyboard_then_the_steps_pass_and_the_report_is_written(home: Home, device: Path) -> None:
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(DeviceScreen(app.home, DEVICE))
        await pilot.pause()
        await pilot.press("c")  # the registry's binding on the device screen
        await wait_for(pilot, lambda: isinstance(app.screen, ChecklistScreen), what="the checklist screen")
        screen = app.screen
        assert isinstance(screen, ChecklistScreen)
        await pick(pilot, screen, "site-check")
        await wait_for(pilot, lambda: asked(screen, "ready"), what="the first question")
        assert "Is the cabinet closed" in str(screen.query_one("#cl-current").render())
        await pilot.press("y")
        await wait_for(pilot, lambda: asked(screen, "done"), what="the sign-off question")
        assert screen.state["health"] == "passed" and screen.state["record"] == "passed"
        await pilot.press("e")  # a note, then Enter keeps it, then y answers
        await pilot.press(*"shift B")
        await pilot.press("enter")
        assert screen.query_one("#cl-note", Input).value == "shift B"
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.result is not None, what="the end of the run")
        assert screen.result.status == "passed"
        assert screen.state == {"ready": "passed", "health": "passed", "record": "passed", "done": "passed"}
        assert "PASSED" in str(screen.query_one("#cl-banner").render())
        run, _ = last_run(home)
        assert run.status == "passed" and run.steps["done"].note == "shift B"
        assert run.steps["ready"].answer is True
        await pilot.press("w")
        report = home.reports_dir / run.run_id / "report.html"
        await wait_for(pilot, lambda: report.exists() and not screen.writing, what="the report")
        assert str(report) in str(screen.query_one("#cl-progress").render())
        assert (home.reports_dir / run.run_id / "report.json").exists()


async def test_a_run_stopped_by_esc_is_offered_for_resume_from_the_fleet_and_finishes(
        home: Home, device: Path) -> None:
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("c")  # on the fleet: the selected (only) device
        await wait_for(pilot, lambda: isinstance(app.screen, ChecklistScreen), what="the checklist screen")
        screen = app.screen
        assert isinstance(screen, ChecklistScreen) and screen.device == DEVICE
        await pick(pilot, screen, "site-check")
        await wait_for(pilot, lambda: asked(screen, "ready"), what="the first question")
        await pilot.press("y")
        await wait_for(pilot, lambda: asked(screen, "done"), what="the sign-off question")
        await pilot.press("escape")  # stop: the runner's cancel event
        await wait_for(pilot, lambda: screen.result is not None, what="the stopped run")
        assert screen.result.status == "stopped"
        assert screen.state["done"] == "stopped" and screen.state["health"] == "passed"
        banner = str(screen.query_one("#cl-banner").render())
        assert "STOPPED" in banner and "resume" in banner
        stopped, count = last_run(home)
        assert stopped.status == "stopped" and stopped.stopped_at == "done"

        await pilot.press("escape")  # back to the fleet
        await wait_for(pilot, lambda: not isinstance(app.screen, ChecklistScreen), what="the fleet")
        await pilot.press("c")
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeModal), what="the resume offer")
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, ChecklistScreen), what="the checklist screen")
        screen = app.screen
        assert isinstance(screen, ChecklistScreen)
        await wait_for(pilot, lambda: asked(screen, "done"), what="the sign-off question again")
        assert screen.state["ready"] == "passed" and screen.state["health"] == "passed"
        await pilot.press("y")
        await wait_for(pilot, lambda: screen.result is not None, what="the resumed run's end")
        assert screen.result.status == "passed" and screen.result.run_id == stopped.run_id
        run, count_after = last_run(home)
        assert run.status == "passed" and count_after == count  # the same run, finished; not a new one


SWAP = """
name = "swap"
title = "Install a release and check it against the site manifest"
needs = ["release", "manifest"]

[[steps]]
id = "install"
kind = "action"
action = "install"
title = "Install the release"

[[steps]]
id = "versions"
kind = "check"
check = "versions"
title = "Versions match the site manifest"
"""


async def test_a_checklist_that_needs_a_release_takes_it_and_uses_the_remembered_site_manifest(
        home: Home, device: Path, tmp_path: Path, models) -> None:  # noqa: F811
    ANOMALY = "anomaly-tabular"

    from fieldkit.devices import open_session
    from fieldkit.manifest import create_manifest, verify_manifest
    from fieldkit.modelstore import add_anchor, read_public_key
    from fieldkit.release import create_release, keygen
    from fieldkit.versions import remember_manifest

    key = keygen(tmp_path / "rel.pem")
    release = tmp_path / "anomaly-1.0.0"
    create_release(models[ANOMALY], name="anomaly", version="1.0.0", security_version=1, smoke_random=2,
                   key_path=key.private, out_dir=release)
    src = tmp_path / "site.toml"
    src.write_text(f'[[expect]]\ndevice = "{DEVICE}"\nmodel = "anomaly"\nversion = "1.0.0"\n')
    site = tmp_path / "site.manifest.json"
    create_manifest(src, key.private, site)
    pem, fp = read_public_key(key.public)
    with open_session(DEVICE, home) as session:
        add_anchor(session, pem, fp)
    (home.root / "checklists" / "swap.toml").write_text(SWAP)

    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(ChecklistScreen(app.home, DEVICE))
        screen = app.screen
        await pick(pilot, screen, "swap")  # no release typed yet: the screen asks for it
        field = screen.query_one("#cl-release", Input)
        await wait_for(pilot, lambda: field.has_focus, what="the release field")
        assert not screen.running
        field.value = str(release)
        await pilot.press("enter")  # no site manifest remembered: the screen says how, starts nothing
        await pilot.pause()
        assert not screen.running and screen.run_id is None
        remember_manifest(home, verify_manifest(site, [key.public]), key.public)
        field.focus()
        await pilot.press("enter")
        await wait_for(pilot, lambda: screen.result is not None, timeout=120, what="the end of the run")
        assert screen.result.status == "passed", screen.messages
        assert screen.state == {"install": "passed", "versions": "passed"}
    run, _ = last_run(home)
    assert run.inputs.release == str(release.resolve()) and run.inputs.manifest == str(site.resolve())
    assert os.readlink(device / "var/lib/fieldkit/models/anomaly/current") == "1.0.0"
