"""Chain verification: hash links, signatures and checkpoints, for the database and export bundles."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Sequence

from fieldkit.agent import devjournal
from fieldkit.errors import Cancelled
from fieldkit.journal.records import GENESIS, Checkpoint, VerifyResult, entry_bytes
from fieldkit.signing import key_fingerprint, verify_digest

Row = Sequence[Any]  # (seq, time, operator, device, action, outcome, details_text, prev, hash, sig)


def verify_rows(rows: Iterable[Row], journal_id: str, public_key: Any, checkpoints: Sequence[Checkpoint],
                *, acked: Sequence[tuple[str, int]] = (), workers: int | None = None,
                progress: Callable[[int], None] | None = None,
                cancel: threading.Event | None = None, start: tuple[int, str] = (0, GENESIS)) -> VerifyResult:
    """Check ``rows`` (in seq order) and report the first bad seq and why.

    Hashes and links are checked in order; signatures are checked in chunks on a thread pool
    (the ECDSA verification releases the GIL). Checkpoints and receivers' acknowledgements
    catch a journal cut short. ``start``: (seq, hash) of the entry the rows follow, already
    verified (rows then begin at seq + 1); a checkpoint for that seq must name that hash.
    """
    res = VerifyResult(ok=True, journal_id=journal_id, key_fingerprint=key_fingerprint(public_key),
                       checkpoints=len(checkpoints), verified_from=start[0])
    by_seq = {c.seq: c for c in checkpoints}
    expected, prev = start[0] + 1, start[1]
    start_cp = by_seq.get(start[0]) if start[0] else None
    chain_bad: tuple[int, str, str] | None = None
    chunk: list[tuple[int, bytes, str]] = []
    futures = []
    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="journal-verify") as pool:
        try:
            for row in rows:
                seq = row[0]
                if seq != expected:
                    chain_bad = ((expected, "missing", f"seq {expected} is missing (the journal jumps from "
                                  f"seq {expected - 1} to seq {seq})") if seq > expected else
                                 (seq, "reordered", f"seq {seq} appears after seq {expected - 1}"))
                    break
                digest = hashlib.sha256(entry_bytes(journal_id, seq, row[1], row[2], row[3], row[4],
                                                    row[5], row[6], prev)).digest()
                if row[7] != prev:
                    chain_bad = (seq, "reordered", f"seq {seq} does not follow seq {seq - 1}: its previous-hash "
                                 "link is broken (an entry was removed, replaced or reordered)")
                    break
                if digest.hex() != row[8]:
                    chain_bad = (seq, "altered", f"seq {seq} was altered: its content does not match its hash")
                    break
                cp = by_seq.get(seq)
                if cp is not None and cp.head != row[8]:
                    chain_bad = (seq, "rewritten", f"seq {seq} differs from the checkpoint signed for it "
                                 f"on {cp.time} ({cp.witness or 'local'}): the journal was rewritten")
                    break
                chunk.append((seq, digest, row[9]))
                if len(chunk) >= 1024:
                    futures.append(pool.submit(_first_bad_signature, public_key, chunk))
                    chunk = []
                    if progress:
                        progress(seq)
                    if cancel is not None and cancel.is_set():
                        raise Cancelled(f"verification cancelled at seq {seq}")
                prev = row[8]
                expected += 1
        except sqlite3.DatabaseError as exc:
            chain_bad = (expected, "corrupt", f"the journal database is damaged at seq {expected}: {exc}")
        if chunk:
            futures.append(pool.submit(_first_bad_signature, public_key, chunk))
        sig_bad = next((s for s in (f.result() for f in futures) if s is not None), None)
    res.entries = res.head_seq = expected - 1
    res.head_hash = prev
    if sig_bad is not None and (chain_bad is None or sig_bad < chain_bad[0]):
        return res.fail(sig_bad, "bad signature", f"seq {sig_bad} has a bad signature: it was not signed "
                        "by this journal's operator key")
    if chain_bad is None and start_cp is not None and start_cp.head != start[1]:
        chain_bad = (start[0], "rewritten", f"seq {start[0]} differs from the checkpoint signed for it on "
                     f"{start_cp.time} ({start_cp.witness or 'local'}): the journal was rewritten")
    if chain_bad is not None:
        return res.fail(*chain_bad)
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        if not cp.verify(public_key):
            return res.fail(cp.seq, "bad signature", f"the checkpoint for seq {cp.seq} ({cp.time}) has a bad signature")
        if cp.seq > res.head_seq:
            return res.fail(res.head_seq + 1, "truncated",
                            f"truncated: the journal ends at seq {res.head_seq} but a checkpoint signed on "
                            f"{cp.time} ({cp.witness or 'local'}) covers seq {cp.seq}; seq "
                            f"{res.head_seq + 1}..{cp.seq} are missing")
    for target, seq in acked:
        if seq > res.head_seq:
            return res.fail(res.head_seq + 1, "truncated",
                            f"truncated: {target} acknowledged entries through seq {seq} but the journal "
                            f"ends at seq {res.head_seq}")
    return res


def _loads_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _first_bad_signature(public_key: Any, chunk: list[tuple[int, bytes, str]]) -> int | None:
    for seq, digest, sig in chunk:
        if not verify_digest(public_key, digest, sig):
            return seq
    return None


def verify_device_entries(journal_id: str, entries: Iterable[Any]) -> dict:
    """Check one pulled device journal (entries in seq order)."""
    expected, prev = 1, GENESIS
    for entry in entries:
        problem = devjournal.check_entry(entry, expected, prev)
        if problem is None and entry.get("journal") != journal_id:
            problem = ("altered", f"seq {expected} names another journal")
        if problem:
            return {"journal_id": journal_id, "ok": False, "entries": expected - 1, "bad_seq": expected,
                    "problem": problem[0], "message": problem[1]}
        prev = entry["hash"]
        expected += 1
    return {"journal_id": journal_id, "ok": True, "entries": expected - 1, "bad_seq": None,
            "problem": None, "message": "ok"}


