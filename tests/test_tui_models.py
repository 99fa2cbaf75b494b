"""The Models screen driven with Pilot against a real device (a `local:` device running the real
agent, real signed releases, real onnxruntime smoke tests): install with its stage list and
transfer progress, cancel mid-transfer and resume, rollback confirmed by name, verify, the fleet's
model column, and a snapshot at 80×24 from fixed data."""

from __future__ import annotations

import importlib.util
import os
import threading
from pathlib import Path

import pytest
from conftest import wait_for
from models import models  # noqa: F401  (session fixture)
from textual.widgets import DataTable, Input, ProgressBar, Static

from fieldkit.devices import open_session
from fieldkit.install import install_release
from fieldkit.inventory import add_device
from fieldkit.journal import Journal
from fieldkit.locations import Home
from fieldkit.modelstore import add_anchor, read_public_key
from fieldkit.release import create_release, keygen
from screens.app import build_app
from screens.device import DeviceScreen
from screens.fleet import FleetScreen
from screens.modals import ConfirmModal, ReleasePickerModal
from screens.models import ModelsScreen, OpProgress, Run

DEVICE = "line3-cam"
MODELS_DIR = "var/lib/fieldkit/models"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "release.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict[str, Path]:  # noqa: F811
    """defects 2.0.0 (small) and 2.1.0 (a 14 MB model, so the transfer has a visible middle)."""
    base = tmp_path_factory.mktemp("releases")
    out = {"2.0.0": base / "defects-2.0.0", "2.1.0": base / "defects-2.1.0"}
    create_release(models["anomaly-tabular"], name="defects", version="2.0.0", security_version=1, smoke_random=2,
                   key_path=key.private, out_dir=out["2.0.0"])
    create_release(models["mobilenetv2-like"], name="defects", version="2.1.0", security_version=1,
                   smoke_random=1, key_path=key.private, out_dir=out["2.1.0"])
    return out


@pytest.fixture
def device(home: Home, device_root: Path, key) -> Path:
    """line3-cam in the inventory (the real agent on local files), trusting the release key."""
    add_device(home, DEVICE, f"local:{device_root}")
    pem, fp = read_public_key(key.public)
    with open_session(DEVICE, home) as session:
        add_anchor(session, pem, fp)
    return device_root


def active(root: Path) -> str | None:
    cur = root / MODELS_DIR / "defects" / "current"
    return os.readlink(cur) if cur.is_symlink() else None


def text(screen, selector: str) -> str:
    return str(screen.query_one(selector, Static).render())


def row(screen, name: str = "defects") -> dict[str, str]:
    from rich.text import Text

    table = screen.query_one("#models", DataTable)
    return {str(c.key.value): Text.from_markup(str(table.get_cell(name, c.key))).plain
            for c in table.columns.values()}


async def open_models_from_the_device_screen(app, pilot) -> ModelsScreen:
    await app.push_screen(DeviceScreen(app.home, DEVICE))
    await pilot.press("m")  # the registry's binding
    await wait_for(pilot, lambda: isinstance(app.screen, ModelsScreen), what="the models screen")
    screen = app.screen
    await wait_for(pilot, lambda: not screen.listing and screen.query_one("#models-banner", Static).has_class("ok"),
                   what="the installed models")
    return screen


async def pick_release(app, pilot, path: Path) -> None:
    await pilot.press("i")
    await wait_for(pilot, lambda: isinstance(app.screen, ReleasePickerModal) and app.screen.query("#release-path"),
                   what="the release picker")
    picker = app.screen
    box = picker.query_one("#release-path", Input)
    box.value = str(path)
    box.focus()
    await pilot.pause()
    assert f"defects {path.name.split('-')[1]}" in text(picker, "#release-preview")
    await pilot.press("enter")


async def confirm(app, pilot, question: str) -> None:
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
    assert app.screen.question == question, app.screen.question
    await pilot.press("y")


# ---- install ---------------------------------------------------------------------------------------
async def test_install_shows_each_stage_and_the_transfer_then_the_new_version(home, device, releases, key) -> None:
    seen: list[dict] = []
    handled: dict[int, object] = {}  # holding each message keeps its id from being reused

    def hook(message) -> None:
        # once per message: a message bubbling from the screen to the app is seen again later,
        # interleaved with newer ones from other threads (the link's reader reports device bytes)
        if isinstance(message, OpProgress) and id(message) not in handled:
            handled[id(message)] = message
            seen.append(message.data)

    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30), message_hook=hook) as pilot:
        screen = await open_models_from_the_device_screen(app, pilot)
        assert "no models installed" in text(screen, "#models-banner")
        await pick_release(app, pilot, releases["2.1.0"])
        await confirm(app, pilot, f"Install defects 2.1.0 on {DEVICE}?")
        assert screen.busy == "install"
        await wait_for(pilot, lambda: screen.busy is None, timeout=90, what="the install to finish")

        run = screen.run
        assert run is not None and run.stages == ["verify", "transfer", "place", "activate", "smoke", "commit"]
        assert all(run.state[s] == "ok" for s in run.stages), run.state
        stages = text(screen, "#stages")
        for label in ("verify signature", "transfer", "verify on device (place)", "activate", "smoke test", "commit"):
            assert f"✓ {label}" in stages, stages
        assert key.fingerprint.removeprefix("SHA256:")[:10] in text(screen, "#op-title")
        assert "COMMITTED" in text(screen, "#models-banner")
        bar = screen.query_one("#transfer-bar", ProgressBar)
        assert bar.total and bar.progress == bar.total
        assert "MiB of " in text(screen, "#transfer-label")  # fieldkit.textfmt.transfer_text

        # the stages arrived in order, and the bytes grew to the whole release
        order = [d["stage"] for i, d in enumerate(seen) if d.get("stage") and (i == 0 or seen[i - 1].get("stage") != d["stage"])]
        assert order == ["verify", "transfer", "place", "activate", "smoke", "commit"], order
        transfer = [d for d in seen if d.get("bytes_total")]
        sizes = [d["bytes_done"] for d in transfer]
        assert len(sizes) >= 3 and sizes == sorted(sizes) and sizes[-1] == transfer[-1]["bytes_total"], sizes

        await wait_for(pilot, lambda: "defects" in screen.models and screen.models["defects"]["active"] == "2.1.0",
                       what="the list to show the new version")
        assert row(screen)["active"] == "2.1.0" and row(screen)["state"] == "committed"
    assert active(device) == "2.1.0"
    with Journal.open_readonly(home) as j:
        actions = [e.action for e in j.entries(device=DEVICE)]
    assert "release.install" in actions and "model.commit" in actions


async def test_esc_pauses_the_transfer_and_installing_again_resumes(home, device, releases) -> None:
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_models_from_the_device_screen(app, pilot)
        # hold the worker right after a mid-transfer progress event, so Esc lands mid-transfer; and
        # record where the second run's transfer begins, as the worker posts it
        held, release_worker = threading.Event(), threading.Event()
        second: list[int] = []
        original = screen.post_message

        def post(message):
            ok = original(message)
            d = getattr(message, "data", None) or {}
            if isinstance(message, OpProgress) and d.get("bytes_total"):
                if release_worker.is_set():
                    second.append(d["bytes_done"])
                elif d["bytes_total"] // 4 <= d["bytes_done"] < d["bytes_total"] and not held.is_set():
                    held.set()
                    release_worker.wait(20)
            return ok

        screen.post_message = post
        await pick_release(app, pilot, releases["2.1.0"])
        await confirm(app, pilot, f"Install defects 2.1.0 on {DEVICE}?")
        await wait_for(pilot, lambda: held.is_set() and screen.run.bytes_done > 0, what="the transfer to start")
        await pilot.press("escape")
        release_worker.set()
        await wait_for(pilot, lambda: screen.busy is None, timeout=60, what="the cancel")
        note = text(screen, "#op-note")
        assert "transfer paused at" in note and "install again to resume" in note, note
        assert "■ transfer" in text(screen, "#stages")
        assert "CANCELLED" in text(screen, "#models-banner")
        assert isinstance(app.screen, ModelsScreen)  # Esc cancelled, it did not leave
        paused_at, total = screen.run.bytes_done, screen.run.bytes_total
        assert active(device) is None  # nothing was activated
        second.clear()

        await pick_release(app, pilot, releases["2.1.0"])
        await confirm(app, pilot, f"Install defects 2.1.0 on {DEVICE}?")
        await wait_for(pilot, lambda: screen.busy is None, timeout=90, what="the second install")
        assert "COMMITTED" in text(screen, "#models-banner")
        # the second run began where the device stopped, not at zero (a fresh copy reports 256 KiB first)
        assert paused_at >= total // 4
        assert second and second[0] >= paused_at and second[-1] == total, (second[:3], paused_at)
    assert active(device) == "2.1.0"


async def test_a_directory_without_a_release_is_refused_in_the_picker(home, device, tmp_path) -> None:
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(80, 24)) as pilot:
        screen = await open_models_from_the_device_screen(app, pilot)
        (tmp_path / "empty").mkdir()
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, ReleasePickerModal), what="the picker")
        picker = app.screen
        picker.query_one("#release-path", Input).value = str(tmp_path / "empty")
        await pilot.press("ctrl+s")
        assert isinstance(app.screen, ReleasePickerModal)
        assert "no release.json" in text(picker, "#error")
        await pilot.press("escape")
        assert app.screen is screen and screen.run is None and active(device) is None


# ---- rollback -------------------------------------------------------------------------------------
async def test_rollback_asks_with_both_versions_and_switches_back(home, device, releases) -> None:
    with open_session(DEVICE, home) as session:
        for v in ("2.0.0", "2.1.0"):
            assert install_release(session, releases[v]).result == "committed"
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_models_from_the_device_screen(app, pilot)
        assert (row(screen)["active"], row(screen)["previous"]) == ("2.1.0", "2.0.0")
        question = f"Roll back defects from 2.1.0 to 2.0.0 on {DEVICE}?"

        await pilot.press("R")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmModal), what="the confirmation")
        assert app.screen.question == question
        await pilot.press("escape")  # declined: nothing happens
        assert app.screen is screen and screen.busy is None and active(device) == "2.1.0"

        await pilot.press("R")
        await confirm(app, pilot, question)
        await wait_for(pilot, lambda: screen.busy is None, timeout=60, what="the rollback")
        assert screen.run.stages == ["activate", "smoke", "commit"]
        assert all(screen.run.state[s] == "ok" for s in screen.run.stages), screen.run.state
        assert "✓ smoke test" in text(screen, "#stages")
        assert "2.1.0 → 2.0.0" in text(screen, "#op-note")
        await wait_for(pilot, lambda: screen.models["defects"]["active"] == "2.0.0", what="the list to follow")
        assert row(screen)["previous"] == "2.1.0"
    assert active(device) == "2.0.0"


# ---- verify ----------------------------------------------------------------------------------------
async def test_verify_shows_the_result_per_model_and_names_a_changed_file(home, device, releases) -> None:
    with open_session(DEVICE, home) as session:
        assert install_release(session, releases["2.0.0"]).result == "committed"
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = await open_models_from_the_device_screen(app, pilot)
        assert "not yet" in row(screen)["verified"]
        await pilot.press("v")
        await wait_for(pilot, lambda: screen.busy is None and "ok" in row(screen)["verified"], what="verification")
        assert "✓ 1 ok" in row(screen)["verified"] and "VERIFIED" in text(screen, "#models-banner")

        model = device / MODELS_DIR / "defects" / "2.0.0" / "anomaly-tabular.onnx"
        data = bytearray(model.read_bytes())
        data[100] ^= 0x40
        model.write_bytes(bytes(data))
        await pilot.press("v")
        await wait_for(pilot, lambda: screen.busy is None and "bad" in row(screen)["verified"], what="the failure")
        assert "VERIFY FAILED" in text(screen, "#models-banner")
        assert "anomaly-tabular.onnx" in text(screen, "#models-note")


# ---- the fleet's model column ------------------------------------------------------------------------
async def test_the_fleet_shows_each_devices_active_model(home, device, releases) -> None:
    with open_session(DEVICE, home) as session:
        assert install_release(session, releases["2.0.0"]).result == "committed"
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(120, 30)) as pilot:
        assert isinstance(app.screen, FleetScreen)
        table = app.screen.query_one("#devices", DataTable)
        await wait_for(pilot, lambda: str(table.get_cell(DEVICE, "model")) == "defects 2.0.0",
                       what="the model column")
        # a rollback on the models screen updates the fleet's cell without waiting for its next round
        with open_session(DEVICE, home) as session:
            assert install_release(session, releases["2.1.0"]).result == "committed"
        await app.push_screen(ModelsScreen(home, DEVICE))
        await wait_for(pilot, lambda: str(table.get_cell(DEVICE, "model")) == "defects 2.1.0",
                       what="the fleet to follow the models screen")


# ---- snapshot at 80×24 -------------------------------------------------------------------------------
FIXED_MODELS = [
    {"name": "defects", "active": "2.1.0", "previous": "2.0.0", "installed": ["2.0.0", "2.1.0"], "floor": 1,
     "state": "committed", "signer": "SHA256:q3Vt0cX2r1m4mS7bD0m5GkQ1c4z8yVfYV0w6bq9xK2E", "digest": "ab" * 32,
     "installed_at": "2025-11-30T09:00:00+00:00", "installed_by": "j.meyer"},
    {"name": "presence", "active": "1.4.2", "previous": None, "installed": ["1.4.2"], "floor": 0,
     "state": "committed", "signer": "SHA256:q3Vt0cX2r1m4mS7bD0m5GkQ1c4z8yVfYV0w6bq9xK2E", "digest": "cd" * 32,
     "installed_at": "2025-11-29T15:10:00+00:00", "installed_by": "j.meyer"},
]


@pytest.mark.skipif(importlib.util.find_spec("pytest_textual_snapshot") is None,
                    reason="pytest-textual-snapshot is not installed (pip install -e '.[test]')")
def test_models_screen_snapshot_80x24(home, snap_compare) -> None:
    """Fixed data, no device, no clock: a transfer paused mid-way at 41 MiB of 96 MiB."""
    async def run_before(pilot) -> None:
        app = pilot.app
        screen = ModelsScreen(home, DEVICE, models=FIXED_MODELS, load=False)
        await app.push_screen(screen)
        await pilot.pause()
        screen.run = Run("install", "Install defects 2.2.0 · signer q3Vt0cX2r1m4mS7bD0m5 · active now 2.1.0",
                         ["verify", "transfer", "place", "activate", "smoke", "commit"],
                         state={"verify": "ok", "transfer": "running"}, seconds={"verify": 0.4},
                         current="transfer", bytes_done=41 * 2**20, bytes_total=96 * 2**20)
        screen.show_run()
        screen.show_transfer(41 * 2**20, 96 * 2**20, 12.5 * 2**20, 4.4)
        screen.query_one("#op-note", Static).update("copying model.onnx  (Esc cancels)")
        screen.set_banner("running", f"installing on {DEVICE} (Esc cancels)")
        await pilot.pause()

    assert snap_compare(build_app(home, fleet_refresh_s=600), terminal_size=(80, 24), run_before=run_before)
