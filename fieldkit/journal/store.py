"""The operator journal's store: one SQLite file, append-only, hash-chained, every entry signed."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from fieldkit.errors import Cancelled, ConfigError, DeviceError, FieldkitError
from fieldkit.journal import witness
from fieldkit.journal.identity import Identity, _read_operator_file, init_identity, load_identity
from fieldkit.journal.records import (
    GENESIS, LAPTOP, OUTCOMES, Checkpoint, Entry, IdentityMissing, JournalError, OperationRecord, VerifyResult,
    WitnessReport, _db_failure, _ENTRY_COLUMNS, canonical_text, checkpoint_bytes, entry_bytes, redact, utc_now,
)
from fieldkit.journal.verify import _loads_or_none, verify_device_entries, verify_rows
from fieldkit.locations import Home
from fieldkit.signing import key_fingerprint, load_public_key

# No secondary index on entries: each one is another page written and fsynced on every append;
# `audit show` filters scan instead (100,000 entries in well under a second).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    seq INTEGER PRIMARY KEY, time TEXT NOT NULL, operator TEXT NOT NULL, device TEXT NOT NULL,
    action TEXT NOT NULL, outcome TEXT NOT NULL, details TEXT NOT NULL, prev TEXT NOT NULL,
    hash TEXT NOT NULL, sig TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (
    id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, head TEXT NOT NULL, time TEXT NOT NULL,
    sig TEXT NOT NULL, witness TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS device_entries (
    journal TEXT NOT NULL, seq INTEGER NOT NULL, device TEXT NOT NULL, time TEXT NOT NULL,
    event TEXT NOT NULL, hash TEXT NOT NULL, raw TEXT NOT NULL, pulled_at TEXT NOT NULL,
    PRIMARY KEY (journal, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS device_entries_device ON device_entries(device, pulled_at);
CREATE TABLE IF NOT EXISTS sync_acks (
    id INTEGER PRIMARY KEY, target TEXT NOT NULL, acked_through INTEGER NOT NULL, time TEXT NOT NULL);
"""
_APPEND_ONLY = ("entries", "checkpoints", "device_entries")


# ---- the journal ----------------------------------------------------------------------------------
class Journal:
    """The operator journal of one FIELDKIT_HOME. Thread-safe; several processes may append.

    ``Journal.open(home)`` can record (it needs the operator key); ``Journal.open_readonly(home)``
    only reads and verifies (it needs the journal, not the key).
    """

    def __init__(self, home: Home, identity: Identity | None, *, create: bool) -> None:
        self.home = home
        self.path = home.journal_db
        self.identity = identity
        self._lock = threading.RLock()
        if not create and not self.path.exists():
            raise IdentityMissing(home, f"no operator journal ({self.path.name})")
        home.ensure()
        try:
            self._conn = self._connect()
            self._init_schema()
        except sqlite3.Error as exc:
            raise _db_failure(self.path, exc) from exc
        self.journal_id = self._meta("journal_id")
        self.public_key_pem = self._meta("public_key_pem")
        self.public_key = load_public_key(self.public_key_pem)
        self.key_fingerprint = key_fingerprint(self.public_key)
        if identity is not None and identity.fingerprint != self.key_fingerprint:
            self._conn.close()
            raise ConfigError(f"the operator key {home.operator_key} ({identity.fingerprint}) is not the key "
                              f"this journal was started with ({self.key_fingerprint})",
                              hint=f"restore the original key, or move {self.path} aside to start a new journal")

    @classmethod
    def open(cls, home: Home) -> "Journal":
        """For recording. Raises IdentityMissing (exit 2) when there is no operator key."""
        return cls(home, load_identity(home), create=True)

    @classmethod
    def open_readonly(cls, home: Home) -> "Journal":
        return cls(home, None, create=False)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- database plumbing ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        # The journal names devices, operators and what was done to them: owner-only, like the key.
        # SQLite gives its -wal and -shm files the database file's mode, so create that one 0600.
        try:
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        for suffix in ("", "-wal", "-shm"):  # journals made before this rule
            try:
                os.chmod(f"{self.path}{suffix}", 0o600)
            except OSError:
                pass
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    def _init_schema(self) -> None:
        conn = self._conn
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name='meta'").fetchone() and self._meta("journal_id", None):
            return
        if self.identity is None:
            raise IdentityMissing(self.home, f"no operator journal ({self.path.name})")
        with self._write() as c:
            # statement by statement: executescript() would commit the transaction
            for stmt in filter(str.strip, _SCHEMA.split(";")):
                c.execute(stmt)
            for table in _APPEND_ONLY:
                for verb in ("UPDATE", "DELETE"):
                    c.execute(f"CREATE TRIGGER IF NOT EXISTS {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
                              f"BEGIN SELECT RAISE(ABORT, '{table} of the operator journal are append-only'); END")
            if not c.execute("SELECT 1 FROM meta WHERE key='journal_id'").fetchone():
                c.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", [
                    ("format", "fieldkit-journal/1"), ("journal_id", uuid.uuid4().hex),
                    ("public_key_pem", self.identity.public_key_pem), ("created", utc_now())])

    def _meta(self, key: str, default: Any = ...) -> Any:
        row = self._one("SELECT value FROM meta WHERE key=?", (key,))
        if row is None:
            if default is ...:
                raise JournalError(f"operator journal {self.path} has no {key}: it is not a fieldkit journal")
            return default
        return row[0]

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE: other processes wait, nobody interleaves)."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        try:
                            conn.execute("ROLLBACK")
                        except sqlite3.Error:
                            pass
                    raise
            except sqlite3.Error as exc:
                raise _db_failure(self.path, exc) from exc

    def _all(self, sql: str, params: Sequence[Any] = ()) -> list[tuple]:
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        with self._lock:
            return self._conn.execute(sql, params).fetchone()

    def _read_conn(self) -> sqlite3.Connection:
        """A connection of its own for long reads (verify, export), so appends are not held up."""
        return sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=30.0, check_same_thread=False)

    # ---- recording (the seam) --------------------------------------------------------------------
    def _require_identity(self) -> Identity:
        if self.identity is None:
            raise IdentityMissing(self.home)
        return self.identity

    def record(self, device: str, action: str, outcome: str, details: Mapping[str, Any] | None = None) -> Entry:
        """Append one signed entry; durable when it returns. Raises JournalError when it cannot."""
        ident = self._require_identity()
        if not isinstance(device, str) or len(device) > 200:
            raise ValueError(f"journal device must be a string of <= 200 characters, not {device!r}")
        if not isinstance(action, str) or not action or len(action) > 100:
            raise ValueError(f"journal action must be a non-empty string of <= 100 characters, not {action!r}")
        if outcome not in OUTCOMES:
            raise ValueError(f"journal outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        clean = redact(details or {})
        with self._write() as c:
            row = c.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            return self._append(c, ident, row, device, action, outcome, clean)

    def _append(self, c: sqlite3.Connection, ident: Identity, head: tuple | None, device: str, action: str,
                outcome: str, clean: dict) -> Entry:
        seq, prev = (head[0] + 1, head[1]) if head else (1, GENESIS)
        t = utc_now()
        details_text = canonical_text(clean)
        digest = hashlib.sha256(entry_bytes(self.journal_id, seq, t, ident.name, device, action, outcome,
                                            details_text, prev)).digest()
        sig = ident.sign(digest)
        c.execute(f"INSERT INTO entries({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                  (seq, t, ident.name, device, action, outcome, details_text, prev, digest.hex(), sig))
        return Entry(seq, t, ident.name, device, action, outcome, clean, prev, digest.hex(), sig)

    def record_many(self, items: Sequence[tuple[str, str, str, Mapping[str, Any] | None]]) -> int:
        """Append ``(device, action, outcome, details)`` entries in one transaction (an import, a test
        or benchmark building a large journal); each is hashed, chained and signed as by :meth:`record`."""
        ident = self._require_identity()
        prepared = []
        for device, action, outcome, details in items:
            if outcome not in OUTCOMES:
                raise ValueError(f"journal outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
            prepared.append((device, action, outcome, redact(details or {})))
        with self._write() as c:
            head = c.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            for device, action, outcome, clean in prepared:
                e = self._append(c, ident, head, device, action, outcome, clean)
                head = (e.seq, e.hash)
        return len(prepared)

    @contextmanager
    def operation(self, device: str, action: str, details: Mapping[str, Any] | None = None
                  ) -> Iterator[OperationRecord]:
        """Record one operation when the block ends: ``ok`` (or ``op.outcome``), ``cancelled``
        for Cancelled / Ctrl-C, otherwise ``failed`` (or ``refused`` when the caller set it)
        with the error in the details. The exception propagates."""
        self._require_identity()
        op = OperationRecord(dict(details or {}))
        try:
            yield op
        except (Cancelled, KeyboardInterrupt) as exc:
            self.record(device, action, "cancelled", {**op.details, "error": str(exc) or "cancelled"})
            raise
        except BaseException as exc:
            info: dict[str, Any] = {"error": getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"}
            if isinstance(exc, DeviceError):
                info["code"] = exc.code
            if isinstance(exc, FieldkitError):
                info["exit_code"] = exc.exit_code
            outcome = op.outcome if op.outcome in ("refused", "failed") else "failed"
            self.record(device, action, outcome, {**op.details, **info})
            raise
        else:
            self.record(device, action, op.outcome, op.details)

    def checkpoint(self, witness: str = "") -> Checkpoint:
        """Sign the current head and keep the checkpoint here (``witness`` says where it goes)."""
        ident = self._require_identity()
        with self._write() as c:
            row = c.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            seq, head = row if row else (0, GENESIS)
            t = utc_now()
            sig = ident.sign(hashlib.sha256(checkpoint_bytes(self.journal_id, seq, head, t)).digest())
            c.execute("INSERT INTO checkpoints(seq, head, time, sig, witness) VALUES (?,?,?,?,?)",
                      (seq, head, t, sig, witness))
        return Checkpoint(self.journal_id, seq, head, t, sig, witness)

    # ---- the device side: checkpoints out, device journal in ------------------------------------
    def witness(self, session: Any, device: str, *, timeout: float = 30.0,
                cancel: threading.Event | None = None) -> WitnessReport:
        """On connect: exchange checkpoints with the device's own journal (see :mod:`.witness`)."""
        return witness.exchange(self, session, device, timeout=timeout, cancel=cancel)

    # ---- reading ---------------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        row = self._one("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
        return (row[0], row[1]) if row else (0, GENESIS)

    def entries(self, *, device: str | None = None, action: str | None = None, since: str | None = None,
                after_seq: int = 0, limit: int | None = None, newest: bool = False,
                device_contains: str | None = None, before_seq: int | None = None) -> list[Entry]:
        """Entries in seq order. ``action`` matches itself and its dotted children
        (``model`` matches ``model.activate``); ``device_contains`` matches a part of the device name
        (any case); ``since`` is a UTC time string; ``newest`` keeps the last ``limit`` entries instead
        of the first. ``after_seq``/``before_seq`` bound the seqs: a page at a time (the audit screen
        reads the page it shows, not 100,000 entries)."""
        where, params = self._filter(device, action, since, device_contains)
        sql = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq > ?{where}"
        params = [after_seq, *params]
        if before_seq is not None:
            sql += " AND seq < ?"
            params.append(before_seq)
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        out = [Entry.from_row(r) for r in self._all(sql, params)]
        return out[::-1] if newest else out

    def count(self, *, device: str | None = None, action: str | None = None, since: str | None = None,
              device_contains: str | None = None) -> int:
        """How many entries :meth:`entries` would give with these filters."""
        where, params = self._filter(device, action, since, device_contains)
        if not where:
            return self.head()[0]  # seqs are dense: no scan
        row = self._one(f"SELECT count(*) FROM entries WHERE 1{where}", params)
        return int(row[0]) if row else 0

    @staticmethod
    def _filter(device: str | None, action: str | None, since: str | None,
                device_contains: str | None) -> tuple[str, list[Any]]:
        sql, params = "", []
        if device is not None:
            sql += " AND device = ?"
            params.append(device)
        if device_contains:
            sql += " AND instr(lower(device), ?) > 0"
            params.append(device_contains.lower())
        if action:
            sql += " AND (action = ? OR substr(action, 1, ?) = ?)"
            params += [action, len(action) + 1, action + "."]
        if since:
            sql += " AND time >= ?"
            params.append(since)
        return sql, params

    def rows_after(self, seq: int, limit: int) -> list[tuple]:
        """Raw rows (details as canonical JSON text) for sync."""
        return self._all(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def iter_rows(self, batch: int = 2000) -> Iterator[tuple]:
        """Every entry as a raw row (details as canonical JSON text), on a connection of its own."""
        conn = self._read_conn()
        try:
            cur = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY seq")
            while True:
                rows = cur.fetchmany(batch)
                if not rows:
                    return
                yield from rows
        finally:
            conn.close()

    def checkpoints(self) -> list[Checkpoint]:
        rows = self._all("SELECT seq, head, time, sig, witness FROM checkpoints ORDER BY id")
        return [Checkpoint(self.journal_id, r[0], r[1], r[2], r[3], r[4]) for r in rows]

    def device_journals(self) -> list[dict]:
        rows = self._all(
            "SELECT journal, max(seq), count(*), max(pulled_at), "
            "(SELECT device FROM device_entries d2 WHERE d2.journal = d.journal ORDER BY seq DESC LIMIT 1) "
            "FROM device_entries d GROUP BY journal ORDER BY 4 DESC")
        return [{"journal_id": r[0], "head_seq": r[1], "entries": r[2], "last_pulled": r[3], "device": r[4]}
                for r in rows]

    def device_entries(self, journal_id: str) -> list[dict]:
        rows = self._all("SELECT raw FROM device_entries WHERE journal=? ORDER BY seq", (journal_id,))
        return [json.loads(r[0]) for r in rows]

    # ---- sync state (its own table: entries are never touched) ----------------------------------
    def acked_through(self, target: str) -> int:
        row = self._one("SELECT acked_through FROM sync_acks WHERE target=? ORDER BY id DESC LIMIT 1", (target,))
        return int(row[0]) if row else 0

    def record_ack(self, target: str, seq: int) -> None:
        """``target`` holds entries 1..``seq`` (lower than before when a receiver lost data)."""
        with self._write() as c:
            c.execute("INSERT INTO sync_acks(target, acked_through, time) VALUES (?,?,?)", (target, seq, utc_now()))

    def sync_targets(self) -> list[dict]:
        """Per target, the latest acknowledgement (newest target first)."""
        rows = self._all("SELECT target, acked_through, time FROM sync_acks WHERE id IN "
                         "(SELECT max(id) FROM sync_acks GROUP BY target) ORDER BY id DESC")
        return [{"target": r[0], "acked_through": r[1], "time": r[2]} for r in rows]

    # ---- status and verification -----------------------------------------------------------------
    def status(self) -> dict:
        seq, head = self.head()
        targets = self.sync_targets()
        last = targets[0] if targets else None
        n_cps = self._one("SELECT count(*) FROM checkpoints")[0]  # (one per connect: no need to load them)
        row = self._one("SELECT seq, head, time, sig, witness FROM checkpoints ORDER BY id DESC LIMIT 1")
        cps = [Checkpoint(self.journal_id, *row)] if row else []
        return {
            "journal_id": self.journal_id, "path": str(self.path),
            "operator": _read_operator_file(self.home).get("operator"),
            "key_fingerprint": self.key_fingerprint, "entries": seq, "head": {"seq": seq, "hash": head},
            "pending_sync": seq - (last["acked_through"] if last else 0), "last_sync": last,
            "sync_targets": targets, "checkpoints": n_cps,
            "last_checkpoint": cps[-1].to_json() if cps else None,
            "device_journals": self.device_journals(),
        }

    def verify(self, *, progress: Callable[[int], None] | None = None,
               cancel: threading.Event | None = None, incremental: bool = False) -> VerifyResult:
        """Verify every entry, every checkpoint, the receivers' acknowledgements and the pulled
        device journals. ``result.ok`` false names the first bad seq.

        ``incremental``: start after the last entry a verification passed (kept beside the database,
        :meth:`verified_mark`): only the entries, checkpoints and acknowledgements since then, and
        that the entry it stopped at still has the same hash — a 100,000-entry journal opens in the
        audit screen without checking 100,000 signatures. Tampering *before* that point is what a
        full verification (the default) is for. A passing verification moves the mark; a failing
        one removes it."""
        mark = self.verified_mark() if incremental else None
        start_seq, start_hash = (mark["seq"], mark["hash"]) if mark else (0, GENESIS)
        conn = self._read_conn()
        try:
            if start_seq:
                row = conn.execute("SELECT hash FROM entries WHERE seq=?", (start_seq,)).fetchone()
                if row is None or row[0] != start_hash:
                    self._drop_mark()
                    return VerifyResult(False, self.journal_id, key_fingerprint=self.key_fingerprint,
                                        verified_from=start_seq).fail(
                        start_seq, "rewritten" if row else "truncated",
                        f"seq {start_seq}, verified on {mark['time']}, " + ("has changed since" if row else
                                                                            "is gone") + ": the journal was "
                        "rewritten, truncated or replaced; run a full verification")
            # the highest seq each receiver ever acknowledged must still be here
            acked = self._all("SELECT target, max(acked_through) FROM sync_acks GROUP BY target")
            rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq > ? ORDER BY seq", (start_seq,))
            cps = [Checkpoint(self.journal_id, *r) for r in conn.execute(
                "SELECT seq, head, time, sig, witness FROM checkpoints WHERE seq >= ? ORDER BY id", (start_seq,))]
            res = verify_rows(rows, self.journal_id, self.public_key, cps, acked=acked,
                              progress=progress, cancel=cancel, start=(start_seq, start_hash))
            if res.ok:
                self._save_mark(res.head_seq, res.head_hash)
            else:
                self._drop_mark()
            if incremental:
                return res  # pulled device journals: checked in full by a full verification
            for dj in self.device_journals():
                raws = conn.execute("SELECT raw FROM device_entries WHERE journal=? ORDER BY seq", (dj["journal_id"],))
                d = verify_device_entries(dj["journal_id"], (_loads_or_none(r[0]) for r in raws))
                d["device"] = dj["device"]
                res.device_journals.append(d)
                if res.ok and not d["ok"]:
                    res.fail(None, "device journal", f"the copy of {dj['device']}'s journal {dj['journal_id'][:12]} "
                             f"is damaged: {d['message']}")
            return res
        except sqlite3.DatabaseError as exc:
            return VerifyResult(False, self.journal_id, problem="corrupt",
                                message=f"the journal database {self.path} is damaged: {exc}")
        finally:
            conn.close()


    # ---- the verified mark: where the last passing verification stopped -------------------------
    @property
    def mark_path(self) -> Path:
        return self.home.journal_mark

    def verified_mark(self) -> dict | None:
        """``{"seq", "hash", "time"}`` of the last verification that passed (None: never, or a mark of
        another journal or key). Not signed: it only saves work, a full verification trusts nothing."""
        try:
            with open(self.mark_path, encoding="utf-8") as fh:
                doc = json.load(fh)
        except (OSError, ValueError):
            return None
        if (not isinstance(doc, dict) or doc.get("journal_id") != self.journal_id
                or doc.get("key_fingerprint") != self.key_fingerprint or type(doc.get("seq")) is not int
                or doc["seq"] < 0 or not isinstance(doc.get("hash"), str) or not isinstance(doc.get("time"), str)):
            return None
        return {"seq": doc["seq"], "hash": doc["hash"], "time": doc["time"]}

    def _save_mark(self, seq: int, head: str) -> None:
        from fieldkit.fsutil import atomic_write

        doc = {"journal_id": self.journal_id, "key_fingerprint": self.key_fingerprint, "seq": seq, "hash": head,
               "time": utc_now()}
        try:  # a lost mark costs one full verification, so no fsync
            atomic_write(self.mark_path, json.dumps(doc) + "\n", mode=0o600, durable=False)
        except OSError:
            pass

    def _drop_mark(self) -> None:
        try:
            os.unlink(self.mark_path)
        except OSError:
            pass


def setup_operator(home: Home, name: str) -> dict:
    """``fieldkit init --operator NAME`` (and the TUI's first-run dialog): make the key or rename
    the operator, start the journal, and record what happened in it."""
    ident, status, previous = init_identity(home, name)
    with Journal.open(home) as journal:
        if status == "created":
            journal.record(LAPTOP, "operator.init", "ok", {"operator": ident.name, "key_fingerprint": ident.fingerprint})
        elif status == "renamed":
            journal.record(LAPTOP, "operator.rename", "ok", {"operator": ident.name, "previous": previous})
        return {"status": status, "operator": ident.name, "previous": previous, "key": str(home.operator_key),
                "key_fingerprint": ident.fingerprint, "journal_id": journal.journal_id, "journal": str(journal.path)}
