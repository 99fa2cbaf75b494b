"""Readable on a small terminal: columns that give way by importance (screens.columns), the whole
text of a row in a detail view, the add-device form and the filter in their place, the command
palette, and the texts that stuttered. Pilot against real ``local:`` devices with fixed readings
(tests/fixeddevices.py); the column arithmetic is checked on its own, with Hypothesis."""

from __future__ import annotations

import pytest
from conftest import wait_for
from fixeddevices import DEVICES, DOWN, app_for, cell, fleet_ready, frozen, snap_home  # noqa: F401
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.text import Text
from textual.widgets import Input, Static

from fieldkit.inventory import load_inventory
from fieldkit.locations import Home
from screens.columns import Col, FitTable, cut_words, fit_widths

fixed_fleet = pytest.mark.no_identity  # tests on the fixed fleet: it makes its operator with a fixed key


# ---- the column arithmetic ------------------------------------------------------------------------
FLEETLIKE = [Col("device", "Device", rank=0, min_width=8), Col("link", "Link", rank=8),
             Col("status", "Health", rank=0), Col("cpu", "CPU", rank=2), Col("seen", "Last seen", rank=3),
             Col("note", "Note", rank=1, min_width=20, flex=True)]
NATURAL = {"device": 13, "link": 6, "status": 6, "cpu": 4, "seen": 9, "note": 60}


def test_on_a_narrow_table_the_reason_stays_and_the_rest_goes_least_important_first() -> None:
    widths = fit_widths(FLEETLIKE, NATURAL, 78)
    assert list(widths) == ["device", "status", "note"]
    assert widths["note"] == 78 - (13 + 2) - (6 + 2) - 2  # the reason takes what is left
    wider = fit_widths(FLEETLIKE, NATURAL, 102)
    assert set(wider) == {"device", "status", "note", "cpu", "seen"} and wider["note"] == 60  # whole
    widest = fit_widths(FLEETLIKE, NATURAL, 200)
    assert widest == {k: max(v, len(c.label)) for c in FLEETLIKE for k, v in NATURAL.items() if k == c.key}


def test_a_squeezable_column_shrinks_before_it_goes() -> None:
    cols = [Col("name", "Model", rank=0), Col("installed", "Installed", rank=1, min_width=8),
            Col("signer", "Signer", rank=2)]
    natural = {"name": 10, "installed": 30, "signer": 12}
    assert fit_widths(cols, natural, 60) == {"name": 10, "installed": 30, "signer": 12}
    assert fit_widths(cols, natural, 40) == {"name": 10, "installed": 12, "signer": 12}
    assert fit_widths(cols, natural, 30) == {"name": 10, "installed": 16}


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.integers(1, 40), st.one_of(st.none(), st.integers(1, 30)),
                          st.booleans()), min_size=1, max_size=8),
       st.integers(0, 200))
def test_fit_widths_keeps_its_rules(spec, available) -> None:
    cols = [Col(f"c{i}", "x", rank=rank, min_width=mn, flex=flex) for i, (rank, _, mn, flex) in enumerate(spec)]
    natural = {f"c{i}": nat for i, (_, nat, _, _) in enumerate(spec)}
    widths = fit_widths(cols, natural, available)
    ranked = sorted(cols, key=lambda c: c.rank)
    shown = [c.key for c in ranked if c.key in widths]
    assert shown == [c.key for c in ranked[:len(shown)]]  # a prefix of the importance order
    assert all(c.key in widths for c in cols if c.rank == 0)  # the essentials always stay
    least = {c.key: natural[c.key] if c.min_width is None else min(natural[c.key], c.min_width) for c in cols}
    for key, width in widths.items():
        assert least[key] <= width <= natural[key]  # squeezed no further than allowed, never padded out
    if sum(least[c.key] + 2 for c in cols if c.rank == 0) <= available:
        assert sum(w + 2 for w in widths.values()) <= available  # never wider than the table


def test_cut_words_never_cuts_inside_a_word_that_has_room_to_go() -> None:
    text = "CPU busy 91 % at or above the critical limit 95 %"
    for width in range(12, len(text)):
        out = cut_words(Text(text), width).plain
        assert len(out) <= width and out.endswith("…")
        kept = out[:-1]
        assert text.startswith(kept) and text[len(kept)] == " ", (width, out)
    assert cut_words(Text(text), len(text)).plain == text
    assert cut_words(Text("/var/lib/fieldkit/models/defects/2.1.0/model.onnx"), 20).plain == "/var/lib/fieldkit/m…"


# ---- the fleet at 80x24 and at 120x35 -----------------------------------------------------------------
def shown_note(table: FitTable, device: str) -> str:
    """The note as the table shows it now (DataTable's own row: only the columns on screen)."""
    cells = dict(zip(table.shown, table.get_row(device)))
    return str(cells.get("note", ""))


@fixed_fleet
async def test_the_fleet_keeps_name_health_and_reason_at_80_columns_and_adds_the_rest_at_120(snap_home: Home) -> None:
    app = app_for(snap_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await fleet_ready(pilot)
        table = app.screen.query_one("#devices", FitTable)
        await wait_for(pilot, lambda: table.shown == ["device", "status", "note"], what="the narrow layout")
        full = str(table.get_cell("press-2", "note"))
        cut = shown_note(table, "press-2")
        assert cut.endswith("…") and full.startswith(cut[:-1]) and full[len(cut) - 1] == " ", (cut, full)
        assert shown_note(table, "oven-1").startswith("cpu-thermal (thermal_zone0) 84.5 °C")
        assert "Connection refused" in shown_note(table, DOWN[0])

        await pilot.resize_terminal(120, 35)
        await wait_for(pilot, lambda: "cpu" in table.shown, what="the wide layout")
        assert shown_note(table, "press-2") == full  # whole: not cut mid-word, not cut at all
        assert table.shown.index("device") < table.shown.index("status") < table.shown.index("note")

        await pilot.resize_terminal(80, 24)
        await wait_for(pilot, lambda: table.shown == ["device", "status", "note"], what="back to narrow")


@fixed_fleet
async def test_w_shows_a_down_devices_whole_error_with_its_hint(snap_home: Home) -> None:
    from screens.modals import DetailModal

    app = app_for(snap_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await fleet_ready(pilot)
        table = app.screen.query_one("#devices", FitTable)
        table.move_cursor(row=table.get_row_index(DOWN[0]))
        assert "hint" not in cell(app, DOWN[0], "note")  # the table has the first line only
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailModal), what="the detail view")
        modal = app.screen
        assert "Connection refused" in modal.body and "hint: nothing listens on port 1" in modal.body
        assert ("Target", DOWN[1]) in modal.fields
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, DetailModal), what="the view to close")

        table.move_cursor(row=table.get_row_index("press-2"))
        await pilot.press("w")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailModal), what="the detail view")
        assert app.screen.body.startswith("WARN  cpu: CPU busy 91 %")


@fixed_fleet
async def test_enter_on_a_check_shows_all_of_it_and_i_the_info_panel_the_narrow_screen_hides(snap_home: Home) -> None:
    from screens.device import DeviceScreen
    from screens.modals import DetailModal

    app = app_for(snap_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await fleet_ready(pilot)
        screen = DeviceScreen(snap_home, "press-2", interval=3600)
        await app.push_screen(screen)
        checks = screen.query_one("#checks", FitTable)
        await wait_for(pilot, lambda: "memory_headroom" in checks.rows, what="the checks")
        assert not screen.query_one("#info").display  # 80 columns: the checks get the width
        message = screen.checks["memory_headroom"].message
        await wait_for(pilot, lambda: str(dict(zip(checks.shown, checks.get_row("memory_headroom")))["detail"])
                       .endswith("…"), what="the detail cut to its column")
        checks.move_cursor(row=checks.get_row_index("memory_headroom"))
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailModal), what="the check in full")
        modal = app.screen
        assert modal.body == message and ("Limits", "min_mb 512") in modal.fields
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is screen, what="back on the device")
        await pilot.press("i")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailModal), what="the info view")
        assert "Debian GNU/Linux 12 (bookworm)" in app.screen.body and "onnxruntime 1.17.1" in app.screen.body


@fixed_fleet
async def test_the_add_device_form_fits_80x24_without_a_dropdown_over_its_buttons(snap_home: Home) -> None:
    from textual.widgets import Button, OptionList

    from screens.modals import AddDeviceModal

    app = app_for(snap_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await fleet_ready(pilot)
        await pilot.press("a")
        await wait_for(pilot, lambda: isinstance(app.screen, AddDeviceModal) and app.screen.query("#save"),
                       what="the form")
        modal = app.screen
        await pilot.pause()
        screen_region = modal.region
        profiles = modal.query_one("#profile", OptionList).region
        save, cancel = modal.query_one("#save", Button).region, modal.query_one("#cancel", Button).region
        for region in (profiles, save, cancel):
            assert screen_region.contains_region(region), region  # on screen, whole
        assert profiles.bottom <= save.y and not profiles.overlaps(save) and not profiles.overlaps(cancel)
        assert modal.chosen_profile == "generic-linux"
        modal.query_one("#name", Input).value = "line4-cam"
        modal.query_one("#target", Input).value = "local:devices/press-1"
        modal.query_one("#profile", OptionList).focus()
        await pilot.press("down", "down")  # generic-linux -> jetson-orin-nano -> raspberry-pi-4
        assert modal.chosen_profile == "raspberry-pi-4"
        assert "Raspberry Pi 4" in str(modal.query_one("#profile-about", Static).render())
        await pilot.press("enter")  # Enter on the list saves, like Enter in the fields
        await wait_for(pilot, lambda: not isinstance(app.screen, AddDeviceModal), what="the form to close")
    saved = {d.name: d for d in load_inventory(snap_home)}
    assert saved["line4-cam"].profile == "raspberry-pi-4"


@fixed_fleet
async def test_the_filter_opens_under_the_table_and_leaves_the_title_bar_alone(snap_home: Home) -> None:
    from textual.widgets import Header

    app = app_for(snap_home)
    async with app.run_test(size=(80, 24)) as pilot:
        await fleet_ready(pilot)
        screen = app.screen
        await pilot.press("slash", *"oven")
        table = screen.query_one("#devices", FitTable)
        await wait_for(pilot, lambda: table.row_count == 1, what="the filter")
        await pilot.pause()
        bar, header = screen.query_one("#filter-bar").region, screen.query_one(Header).region
        assert not bar.overlaps(header) and bar.y > table.region.y and bar.bottom <= screen.query_one("#fleet-status").region.y
        assert screen.query_one("#filter", Input).has_focus
        await pilot.press("escape")
        await wait_for(pilot, lambda: table.row_count == 4, what="the filter to clear")
        assert not screen.query_one("#filter-bar").display


# ---- the command palette -------------------------------------------------------------------------------
@fixed_fleet
async def test_the_palette_has_one_quit_and_finds_bench_for_the_selected_device(snap_home: Home) -> None:
    from screens.bench import BenchScreen

    app = app_for(snap_home)
    async with app.run_test(size=(100, 30)) as pilot:
        await fleet_ready(pilot)
        table = app.screen.query_one("#devices", FitTable)
        table.move_cursor(row=table.get_row_index("press-2"))
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert sum(1 for t in titles if t.split()[0] == "Quit") == 1, titles
        assert "Bench press-2 (b)" in titles and "Why press-2 (w)" in titles and "Models press-2 (m)" in titles
        await pilot.press("ctrl+p")
        await pilot.pause()
        for ch in "bench":
            await pilot.press(ch)
        await wait_for(pilot, lambda: "Bench press-2" in str(app.screen.query("CommandList").first().get_option_at_index(0).prompt)
                       if app.screen.query("CommandList") and app.screen.query("CommandList").first().option_count else False,
                       what="the palette to find bench")
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, BenchScreen), what="the bench screen")
        assert app.screen.device == "press-2"
        fleet = app.screen_stack[-2]
        assert fleet.watch._device("press-2").holds == 1  # the watch leaves the device alone meanwhile
        await pilot.press("escape")
        await wait_for(pilot, lambda: app.screen is fleet, what="the fleet again")
        assert fleet.watch._device("press-2").holds == 0


# ---- texts that said the same thing twice ----------------------------------------------------------------
async def test_a_cancelled_benchmark_says_once_what_is_left_on_the_device(home: Home, tmp_path) -> None:
    """A real benchmark cancelled with Esc: the banner is the device's own account, said once."""
    from models import model_paths

    from fieldkit.inventory import add_device
    from screens.app import build_app
    from screens.bench import BenchScreen

    (tmp_path / "dev").mkdir()
    add_device(home, "press-7", f"local:{tmp_path / 'dev'}", profile="raspberry-pi-5")
    app = build_app(home, fleet_refresh_s=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = BenchScreen(home, "press-7")
        await app.push_screen(screen)
        screen.query_one("#model", Input).value = str(model_paths()["anomaly-tabular"])
        screen.query_one("#duration", Input).value = "60"
        screen.query_one("#model", Input).focus()
        await pilot.press("enter")
        banner = lambda: str(screen.query_one("#bench-banner", Static).render())  # noqa: E731
        await wait_for(pilot, lambda: banner().startswith("run:"), what="timed runs")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not screen.running, what="the cancellation")
        text = banner()
    assert "cancelled" in text and text.count("left running") == 1, text
    assert "nothing was left running" in text, text


async def test_the_audit_status_says_chain_once(home: Home) -> None:
    """It read "chain: chain verified"."""
    from fieldkit.journal import Journal
    from screens.app import build_app
    from screens.audit import AuditScreen

    with Journal.open(home) as j:
        j.record("press-1", "connect", "ok", {"target": "local:"})
    app = build_app(home, fleet_refresh_s=3600)
    async with app.run_test(size=(100, 30)) as pilot:
        screen = AuditScreen(home)
        await app.push_screen(screen)
        await wait_for(pilot, lambda: not screen.busy and "checking" not in screen.chain, what="the verification")
        status = str(screen.query_one("#audit-status", Static).render())
    assert "verified" in status and status.lower().count("chain") == 1, status


async def test_a_detail_longer_than_the_terminal_scrolls_and_keeps_its_buttons(home: Home) -> None:
    from textual.widgets import Button

    from screens.app import build_app
    from screens.modals import DetailModal

    body = "\n".join(f"line {i}: " + "word " * 30 for i in range(60))
    app = build_app(home, fleet_refresh_s=3600)
    async with app.run_test(size=(80, 24)) as pilot:
        modal = DetailModal("press-1 · check memory_headroom", [("Check", "memory_headroom")], body)
        await app.push_screen(modal)
        await pilot.pause()
        screen = modal.region
        for button in modal.query(Button):
            assert screen.contains_region(button.region), button.region
        scroll = modal.query_one("#detail-scroll")
        assert scroll.max_scroll_y > 0  # the rest is a scroll away, not cut off
        assert modal.text().endswith(body)
        await pilot.press("escape")
        assert not isinstance(app.screen, DetailModal)


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (120, 35)])
async def test_the_bench_model_field_keeps_room_for_a_path(home: Home, size) -> None:
    """It shrank to 4 characters at 80 columns; below 100 it gets a row of its own."""
    from textual.widgets import Button, Select

    from screens.app import build_app
    from screens.bench import BenchScreen

    app = build_app(home, fleet_refresh_s=3600)
    async with app.run_test(size=size) as pilot:
        screen = BenchScreen(home, "press-1")
        await app.push_screen(screen)
        await pilot.pause()
        model = screen.query_one("#model", Input).region
        assert model.width >= 40, model
        for widget in (screen.query_one("#use-case", Select), screen.query_one("#duration", Input),
                       screen.query_one("#threads", Input), screen.query_one("#start", Button)):
            assert screen.region.contains_region(widget.region) and not widget.region.overlaps(model), widget
