"""Witnessing on connect: a signed checkpoint of the operator journal goes to the device, the
device's own hash-chained journal comes back, and each side is checked against the other.

``journal`` here is the :class:`~fieldkit.journal.store.Journal` doing the exchange (its method
``witness`` is the entry point); ``session`` is the open device session."""

from __future__ import annotations

import threading
import time
from typing import Any, Mapping

from fieldkit.agent import devjournal
from fieldkit.errors import DeviceError
from fieldkit.journal.records import GENESIS, Checkpoint, WitnessReport, utc_now
from fieldkit.signing import canonical_text

PULL_PAGES = 10_000    # journal_read pages per connect (each up to 256 KiB of entries)
PULL_SECONDS = 120.0   # and at most this long; the next connect carries on



def exchange(journal: Any, session: Any, device: str, *, timeout: float = 30.0,
            cancel: threading.Event | None = None) -> WitnessReport:
    """On connect: write a signed checkpoint of this journal to the device, pull the
    device's journal from where the last pull stopped (stored once per (journal, seq)),
    check both against each other, and record the device's head in a signed entry.

    Problems (a truncated or edited journal on either side, an agent without a journal)
    are returned in ``report.problems`` and recorded with outcome ``failed``; link errors
    (LinkLost, Cancelled) propagate.
    """
    report = WitnessReport(device, journal.checkpoint(witness=device))
    try:
        res = session.call("journal_checkpoint", {"checkpoint": report.checkpoint.to_json()},
                           timeout=timeout, cancel=cancel)
        report.device_journal_id = res.head.journal_id
        previous = res.previous
        if previous:
            problem = _check_device_checkpoint(journal, previous, device)
            if problem:
                report.problems.append(problem)
    except DeviceError as exc:
        if exc.code == "unknown_op":
            version = session.hello.agent_version or "?"
            report.problems.append(f"the agent on {device} (version {version}) keeps no journal; "
                                   "update the agent")
            return _record_witness(journal, report)
        report.problems.append(f"writing the checkpoint to {device} failed: {exc.message}")
    _pull(journal, session, report, timeout, cancel)
    return _record_witness(journal, report)

def _check_device_checkpoint(journal: Any, previous: Mapping[str, Any], device: str) -> str | None:
    try:
        cp = Checkpoint.from_json(previous)
    except ValueError:
        return f"{device} returned a malformed checkpoint of this journal"
    if cp.journal_id != journal.journal_id or not cp.verify(journal.public_key):
        return f"{device} holds a checkpoint of this journal with a bad signature (seq {cp.seq}, {cp.time})"
    row = journal._one("SELECT hash FROM entries WHERE seq=?", (cp.seq,))
    if cp.seq and row is None:
        head = journal.head()[0]
        return (f"this laptop's journal was truncated: {device} holds a checkpoint for seq {cp.seq} "
                f"signed on {cp.time}, but the journal ends at seq {head}")
    if cp.seq and row[0] != cp.head:
        return (f"this laptop's journal was rewritten: seq {cp.seq} differs from the checkpoint "
                f"{device} holds (signed on {cp.time})")
    return None

def _device_cursor(journal: Any, journal_id: str | None) -> tuple[int, str]:
    if journal_id is None:
        return 0, GENESIS
    row = journal._one("SELECT seq, hash FROM device_entries WHERE journal=? ORDER BY seq DESC LIMIT 1",
                    (journal_id,))
    return (row[0], row[1]) if row else (0, GENESIS)

def _pull(journal: Any, session: Any, report: WitnessReport, timeout: float, cancel: threading.Event | None) -> None:
    device = report.device
    before = journal._one("SELECT journal, max(seq) FROM device_entries WHERE device=? "
                       "GROUP BY journal ORDER BY max(pulled_at) DESC LIMIT 1", (device,))
    _pull_entries(journal, session, report, timeout, cancel)
    if before and report.device_journal_id not in (None, before[0]):
        report.problems.append(f"the journal on {device} was replaced: the laptop holds seq 1..{before[1]} "
                               f"of journal {before[0][:12]}, the device now keeps journal "
                               f"{report.device_journal_id[:12]} (reflashed, or its journal was deleted)")

def _pull_entries(journal: Any, session: Any, report: WitnessReport, timeout: float,
                  cancel: threading.Event | None) -> None:
    """Page through the device's journal from where the last pull stopped. Bounded: a device
    that keeps saying "more" without progress, or pages for longer than the pull may take,
    is reported as a problem instead of holding the technician's command forever."""
    device = report.device
    jid = report.device_journal_id
    have, have_hash = _device_cursor(journal, jid)
    since = max(have, 1)  # re-read the last stored entry: it must not have changed
    verify = True  # the device checks its whole file once per connect
    deadline = time.monotonic() + PULL_SECONDS
    for _page in range(PULL_PAGES):
        if time.monotonic() > deadline:
            break
        try:
            r = session.call("journal_read", {"journal_id": jid, "since": since, "verify": verify},
                             timeout=timeout, cancel=cancel)
        except DeviceError as exc:
            report.problems.append(f"reading the journal of {device} failed: {exc.message}")
            return
        if r.journal_id != jid:  # the checkpoint could not be written, or a new journal began
            jid = report.device_journal_id = r.journal_id
            have, have_hash = _device_cursor(journal, jid)
            if since != max(have, 1):
                since = max(have, 1)
                continue
        chain = r.chain
        if verify and chain is not None and not chain.ok:
            report.problems.append(f"the journal on {device} is damaged at seq {chain.bad_seq}: "
                                   f"{chain.message}")
        verify = False
        report.device_head_seq = r.head.seq
        report.device_head_hash = r.head.hash
        if jid is not None and report.device_head_seq < have:
            report.problems.append(f"the journal on {device} was truncated: the laptop holds seq {have}, "
                                   f"the device ends at seq {report.device_head_seq}")
            return
        rows, stop = _accept_device_entries(journal, jid, r.entries, have, have_hash, device, report)
        if rows:
            now = utc_now()
            with journal._write() as c:
                c.executemany("INSERT OR IGNORE INTO device_entries(journal, seq, device, time, event, hash, raw,"
                              " pulled_at) VALUES (?,?,?,?,?,?,?,?)", [row + (now,) for row in rows])
            report.pulled += len(rows)
            have, have_hash = rows[-1][1], rows[-1][5]
        if stop or not r.more:
            return
        if not rows:  # "more", yet nothing new: the device is not making progress
            report.problems.append(f"{device} keeps announcing more journal entries after seq {have} "
                                   "but sends none; the pull stopped there")
            return
        since = have + 1
    report.problems.append(f"pulling the journal of {device} stopped after {PULL_PAGES} pages or "
                           f"{PULL_SECONDS:.0f} s at seq {have}; the rest comes with the next connect")

def _accept_device_entries(journal: Any, jid: str | None, entries: list, have: int, have_hash: str, device: str,
                           report: WitnessReport) -> tuple[list[tuple], bool]:
    rows: list[tuple] = []
    prev = have_hash
    for e in entries:
        seq = e.get("seq") if isinstance(e, dict) else None
        if isinstance(seq, int) and seq <= have:
            stored = journal._one("SELECT hash FROM device_entries WHERE journal=? AND seq=?", (jid, seq))
            if stored and stored[0] != e.get("hash"):
                report.problems.append(f"the journal on {device} was rewritten: seq {seq} differs from the copy "
                                       "pulled earlier")
                return rows, True
            continue
        problem = devjournal.check_entry(e, have + len(rows) + 1, prev)
        if problem is None and e.get("journal") != jid:
            problem = ("altered", f"seq {seq} names another journal")
        if problem:
            report.problems.append(f"the journal on {device} is damaged: {problem[1]}")
            return rows, True
        prev = e["hash"]
        rows.append((jid, seq, device, str(e.get("time")), str(e.get("event")), e["hash"],
                     canonical_text(e)))
    return rows, False

def _record_witness(journal: Any, report: WitnessReport) -> WitnessReport:
    report.entry = journal.record(report.device, "journal.witness", "failed" if report.problems else "ok", {
        "checkpoint_seq": report.checkpoint.seq, "checkpoint_head": report.checkpoint.head,
        "device_journal": report.device_journal_id, "device_head_seq": report.device_head_seq,
        "device_head_hash": report.device_head_hash, "pulled": report.pulled,
        **({"problems": report.problems[:10]} if report.problems else {})})
    return report
