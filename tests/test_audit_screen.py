"""The audit screen on a large journal (issue 12): paging, incremental verification from the last
verified point (and a full one on request), columns that keep Outcome and Details at 80×24, the whole
entry on Enter, a device filter by substring that says when nothing matches, and an export that asks
where (a mounted USB stick first) and refuses a folder that does not exist."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import wait_for
from textual.widgets import Input, Static

from fieldkit import auditbundle
from fieldkit.journal import Journal
from fieldkit.locations import Home
from screens.app import build_app
from screens.audit import PAGE, AuditScreen, ExportModal
from screens.columns import FitTable, plain
from screens.modals import DetailModal

DEVICES = ["press-1", "press-2", "oven-7", "Camera-Line3"]


def fill(home: Home, n: int, start: int = 0) -> None:
    with Journal.open(home) as j:
        batch = [(DEVICES[i % len(DEVICES)], "health.check", "ok" if i % 7 else "failed",
                  {"status": "ok", "i": i, "problems": [f"cpu: busy {i % 100} % at or above the warning limit"] * 3})
                 for i in range(start, start + n)]
        j.record_many(batch)


def tamper(home: Home, seq: int, details: str = '{"i":-1}') -> None:
    conn = sqlite3.connect(home.journal_db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("UPDATE entries SET details = ? WHERE seq = ?", (details, seq))
    conn.commit()
    conn.close()


def verify(home: Home, incremental: bool):
    with Journal.open_readonly(home) as j:
        return j.verify(incremental=incremental)


# ---- the journal: pages and incremental verification ----------------------------------------------
def test_pages_by_seq_and_device_substring(home: Home) -> None:
    fill(home, 1000)
    with Journal.open_readonly(home) as j:
        first = j.entries(newest=True, limit=100)
        second = j.entries(newest=True, limit=100, before_seq=first[0].seq)
        assert [e.seq for e in first] == list(range(902, 1002))  # seq 1 is operator.init
        assert [e.seq for e in second] == list(range(802, 902))
        cams = j.entries(device_contains="camera-line", newest=True, limit=50)
        assert cams and all(e.device == "Camera-Line3" for e in cams)
        assert j.count(device_contains="PRESS") == 500 and j.count(device_contains="ress-1") == 250
        assert j.count(device_contains="nothing-like-it") == 0 and j.count() == 1001


def test_incremental_verification_checks_only_what_is_new_and_still_catches_it(home: Home) -> None:
    fill(home, 2000)
    full = verify(home, incremental=False)
    assert full.ok and full.verified_from == 0 and full.entries == 2001
    fill(home, 50, start=2000)
    inc = verify(home, incremental=True)
    assert inc.ok and inc.verified_from == 2001 and inc.head_seq == 2051

    fill(home, 20, start=2050)
    tamper(home, 2060)  # after the last verified point
    bad = verify(home, incremental=True)
    assert not bad.ok and bad.bad_seq == 2060 and bad.problem == "altered"


def test_tampering_before_the_mark_needs_the_full_verification(home: Home) -> None:
    fill(home, 500)
    assert verify(home, incremental=False).ok
    tamper(home, 100)  # before the verified point: the quick check does not read it again
    assert verify(home, incremental=True).ok
    full = verify(home, incremental=False)
    assert not full.ok and full.bad_seq == 100 and full.problem == "altered"
    again = verify(home, incremental=True)  # the failed full verification removed the mark
    assert not again.ok and again.bad_seq == 100 and again.verified_from == 0


def test_a_rewritten_or_truncated_mark_entry_is_caught(home: Home) -> None:
    fill(home, 300)
    assert verify(home, incremental=False).ok
    conn = sqlite3.connect(home.journal_db)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    conn.execute("DELETE FROM entries WHERE seq > 290")
    conn.commit()
    conn.close()
    res = verify(home, incremental=True)
    assert not res.ok and res.problem == "truncated" and res.bad_seq == 301


def test_removable_mounts_are_read_from_the_mount_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    media = tmp_path / "media"
    stick = media / "tech" / "USB STICK"
    stick.mkdir(parents=True)
    (media / "tech" / "gone").mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/sda1 / ext4 rw 0 0\n/dev/sdb1 {str(stick).replace(' ', chr(92) + '040')} vfat rw 0 0\n"
                      f"/dev/sdc1 {media}/tech/missing vfat rw 0 0\nbroken\n")
    monkeypatch.setattr(auditbundle, "REMOVABLE_ROOTS", (str(media),))
    assert auditbundle.removable_mounts(str(mounts)) == [stick]
    assert auditbundle.removable_mounts(str(tmp_path / "no-such-file")) == []


# ---- the screen -------------------------------------------------------------------------------------
@pytest.fixture
def big(home: Home) -> Home:
    fill(home, 3 * PAGE + 50)
    with Journal.open_readonly(home) as j:
        assert j.verify().ok  # the mark: opening checks only what is added from here
    fill(home, 10, start=3 * PAGE + 50)
    return home


async def test_audit_screen_pages_a_big_journal_at_80x24(big: Home) -> None:
    app = build_app(big, fleet_refresh_s=600)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(AuditScreen(big))
        screen = app.screen
        table = screen.query_one("#entries", FitTable)
        await wait_for(pilot, lambda: table.row_count == PAGE and "verified through" in screen.chain,
                       what="the first page and the quick chain check")
        assert "10 new entries checked" in plain(screen.chain)
        assert {"outcome", "details", "action"} <= set(table.shown), table.shown
        assert table.get_cell(str(3 * PAGE + 61), "action") == "health.check"  # newest first
        status = plain(str(screen.query_one("#audit-status", Static).render()))
        assert f"{3 * PAGE + 61:,} entries" in status

        table.focus()
        table.move_cursor(row=PAGE - 5)  # near the end of what was read: the next page comes
        await wait_for(pilot, lambda: table.row_count == 2 * PAGE, what="the second page")

        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailModal), what="the entry's detail view")
        text = app.screen.text()
        seq = int(str(table.get_cell(table.selected_key(), "seq")))
        assert f"Seq: {seq}" in text and text.count("at or above the warning limit") == 3, text
        await pilot.press("escape")

        screen.query_one("#f-device", Input).value = "ine3"  # a part of "Camera-Line3"
        await wait_for(pilot, lambda: table.row_count and all(table.get_cell(k, "device") == "Camera-Line3"
                                                              for k in table.rows), what="the device filter")
        status = plain(str(screen.query_one("#audit-status", Static).render()))
        assert "entries match device ~ 'ine3'" in status, status
        screen.query_one("#f-device", Input).value = "no-such-device"
        await wait_for(pilot, lambda: table.row_count == 0, what="an empty result")
        status = plain(str(screen.query_one("#audit-status", Static).render()))
        assert "no entry matches device ~ 'no-such-device'" in status, status


async def test_full_verification_on_request_catches_tampering_before_the_mark(big: Home) -> None:
    tamper(big, 42)
    app = build_app(big, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(AuditScreen(big))
        screen = app.screen
        await wait_for(pilot, lambda: "verified through" in screen.chain and not screen.busy, what="the quick check")
        await pilot.press("v")
        await wait_for(pilot, lambda: "VERIFY FAILED at seq 42" in screen.chain, what="the full verification")


async def test_export_asks_where_offers_the_stick_and_refuses_a_missing_folder(
        home: Home, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stick = tmp_path / "media" / "USB"
    stick.mkdir(parents=True)
    monkeypatch.setattr(auditbundle, "removable_mounts", lambda: [stick])
    fill(home, 20)
    app = build_app(home, fleet_refresh_s=600)
    async with app.run_test(size=(100, 30)) as pilot:
        await app.push_screen(AuditScreen(home))
        screen = app.screen
        await wait_for(pilot, lambda: not screen.busy, what="the quick check")
        await pilot.press("e")
        await wait_for(pilot, lambda: isinstance(app.screen, ExportModal), what="the export dialog")
        modal = app.screen
        assert modal.query_one("#export-dir", Input).value == str(stick)  # the stick first

        modal.query_one("#export-dir", Input).value = str(tmp_path / "media" / "USB0")  # mistyped
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert app.screen is modal and "does not exist" in plain(str(modal.query_one("#export-error", Static).render()))
        assert not (tmp_path / "media" / "USB0").exists()

        modal.query_one("#export-dir", Input).value = str(stick)
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: app.screen is screen and not screen.busy, what="the export")
        (bundle,) = stick.glob("journal-*.json")
        assert auditbundle.verify_bundle(bundle).ok
