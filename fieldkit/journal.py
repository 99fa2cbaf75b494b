"""The operator journal: who did what to which device, when — tamper-evident, crash-safe, offline.

One seam records every device operation::

    journal = Journal.open(home)                 # IdentityMissing (exit 2) without `fieldkit init`
    journal.record("line3-cam", "model.activate", "ok", {"model": "yolo", "version": "1.4.0"})
    with journal.operation("line3-cam", "health.check") as op:   # ok / failed / cancelled
        ...; op.details["status"] = "warn"
    journal.witness(link, "line3-cam")           # on connect: checkpoint out, device journal in

Storage: SQLite at ``Home.journal_db`` (WAL, ``synchronous=FULL``: every entry is on disk when
``record`` returns). Entries are append-only (triggers refuse UPDATE and DELETE). Each entry::

    seq, time (UTC), operator, device, action, outcome, details (canonical JSON), prev, hash, sig

``hash`` = sha256 (hex) of the canonical JSON (sorted keys, no whitespace, UTF-8) of
``{"v": 1, "journal", "seq", "time", "operator", "device", "action", "outcome", "details",
"prev"}``; ``prev`` is the previous entry's hash (64 zeros for seq 1). ``sig`` = base64 DER
ECDSA P-256 signature of that sha256 digest by the operator key — the same bytes
``openssl dgst -sha256 -sign operator_key.pem`` gives over the canonical JSON.

Checkpoints (seq, head hash, time, signature) are signed heads. One is written to each device
on connect and kept here; the device's journal head is recorded here in a signed entry. A
journal cut short is caught against any checkpoint held elsewhere.

Secrets never enter the journal: detail keys that name a secret (token, password, private key,
secret, authorization, ...) and values that look like private keys or bearer tokens are
replaced by ``"[redacted]"`` before anything is hashed or written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import sqlite3
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from fieldkit.agent import devjournal
from fieldkit.errors import Cancelled, ConfigError, DeviceError, FieldkitError
from fieldkit.locations import Home

GENESIS = "0" * 64
OUTCOMES = ("ok", "failed", "refused", "cancelled", "started", "info")
REDACTED = "[redacted]"
LAPTOP = ""  # the ``device`` of entries about the laptop itself (identity, exports)

_SECRET_KEY = re.compile(r"token|passw|passphrase|secret|private_?key|authori[sz]ation|api_?key|"
                         r"credential|cookie|session_?key", re.I)
_SECRET_VALUE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|^\s*bearer\s+\S", re.I)

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


# ---- errors ------------------------------------------------------------------------------------
class IdentityMissing(ConfigError):
    """No operator key (or no journal yet) under FIELDKIT_HOME."""

    def __init__(self, home: Home, what: str = "no operator identity") -> None:
        super().__init__(f"{what} in {home.root}: run `fieldkit init --operator NAME`",
                         hint="operations on devices are recorded under the operator's signing key; "
                              "they refuse to run without one")


class JournalError(FieldkitError):
    """The journal cannot be written or read (disk full, damaged file, wrong key)."""

    exit_code = 2


class JournalDamaged(JournalError):
    """The database file itself is damaged (not a database, malformed pages): verification fails."""

    exit_code = 1


def _db_failure(path: Path, exc: Exception) -> JournalError:
    text = str(exc)
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return JournalDamaged(f"the operator journal {path} is damaged: {text}",
                              hint="keep a copy of the file; the last export or sync holds what was carried out")
    if "full" in text or "I/O" in text or "disk" in text:
        return JournalError(f"cannot write the operator journal {path}: {text}; nothing was recorded",
                            hint="free disk space on this laptop (the journal needs a few KB per "
                                 "operation), then run the operation again")
    if "locked" in text or "busy" in text:
        return JournalError(f"the operator journal {path} stayed locked by another fieldkit process: {text}")
    return JournalError(f"operator journal {path}: {text}",
                        hint="`fieldkit audit verify` checks it; keep a copy before changing anything")


# ---- canonical encoding, hashing, signatures ------------------------------------------------------
canonical = devjournal.canonical  # one canonical JSON for the laptop's and the device's journal


def canonical_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_q = json.JSONEncoder(ensure_ascii=False).encode


def entry_bytes(journal_id: str, seq: int, time: str, operator: str, device: str, action: str,
                outcome: str, details_text: str, prev: str) -> bytes:
    """Canonical JSON of the hashed fields (``details_text`` is already canonical).

    Equal to ``canonical({"v": 1, "journal": ..., "seq": ..., ...})``, written out by hand
    because it is on every append's and every verification's path.
    """
    return ('{"action":%s,"details":%s,"device":%s,"journal":%s,"operator":%s,"outcome":%s,'
            '"prev":%s,"seq":%d,"time":%s,"v":1}' % (
                _q(action), details_text, _q(device), _q(journal_id), _q(operator), _q(outcome),
                _q(prev), seq, _q(time))).encode("utf-8")


def checkpoint_bytes(journal_id: str, seq: int, head: str, time: str) -> bytes:
    return canonical({"v": 1, "type": "checkpoint", "journal": journal_id, "seq": seq, "head": head,
                      "time": time})


def utc_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@lru_cache(maxsize=1)
def _ecdsa() -> Any:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    return ec.ECDSA(utils.Prehashed(hashes.SHA256()))


def key_fingerprint(public_key: Any) -> str:
    """``SHA256:`` + unpadded base64 of the sha256 of the DER SubjectPublicKeyInfo."""
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def load_public_key(pem: str) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_public_key(pem.encode())
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key


def verify_signature(public_key: Any, digest: bytes, sig_b64: str) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        public_key.verify(base64.b64decode(sig_b64, validate=True), digest, _ecdsa())
        return True
    except (InvalidSignature, ValueError, TypeError):
        return False


# ---- redaction ------------------------------------------------------------------------------------
def redact(details: Mapping[str, Any]) -> dict:
    """A JSON-safe copy of ``details`` with secrets replaced by ``"[redacted]"``.

    Keys naming a secret (token, password, passphrase, secret, private key, authorization, api
    key, credential, cookie) lose their value at any depth; so do string values holding a PEM
    private key or a bearer token. Paths become strings; other non-JSON values are refused.
    """
    if not isinstance(details, Mapping):
        raise TypeError(f"journal details must be a mapping, not {type(details).__name__}")
    return _clean(details, "details")


def _clean(value: Any, where: str) -> Any:
    t = type(value)
    if t is str:
        return REDACTED if _secret_value(value) else value
    if t is int or t is bool or value is None:
        return value
    if t is float:
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"journal details: {where} is not a finite number")
        return value
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TypeError(f"journal details: key {k!r} in {where} is not a string")
            out[k] = REDACTED if _secret_key(k) else _clean(v, k)
        return out
    if isinstance(value, (list, tuple)):
        return [_clean(v, where) for v in value]
    if isinstance(value, str):  # subclasses (str enums): their text
        return _clean(str.__str__(value), where)
    if isinstance(value, int):  # IntEnum and friends
        return int(value)
    if isinstance(value, float):
        return _clean(float(value), where)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"journal details: {where} is a {type(value).__name__}, not a JSON value")


@lru_cache(maxsize=4096)
def _secret_key(key: str) -> bool:
    return bool(_SECRET_KEY.search(key))


def _secret_value(text: str) -> bool:
    if "-----BEGIN" in text:
        return bool(_SECRET_VALUE.search(text))
    head = text[:12].lstrip()[:7].lower()
    return head.startswith("bearer") and bool(_SECRET_VALUE.search(text[:64]))


# ---- operator identity ----------------------------------------------------------------------------
@dataclass(frozen=True)
class Identity:
    name: str
    private_key: Any = field(repr=False)
    public_key_pem: str
    fingerprint: str

    def sign(self, digest: bytes) -> str:
        return base64.b64encode(self.private_key.sign(digest, _ecdsa())).decode()


def _check_operator_name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > 100 or not name.isprintable():
        raise ConfigError(f"operator name {name!r} is not usable: 1 to 100 printable characters")
    return name


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def init_identity(home: Home, name: str) -> tuple[Identity, str, str | None]:
    """Create the operator key (or rename the operator). Returns ``(identity, status,
    previous name)`` with status ``created``, ``renamed`` or ``unchanged``. An existing key is
    never replaced: the journal is bound to it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    name = _check_operator_name(name)
    home.ensure()
    old = _read_operator_file(home).get("operator")
    if home.operator_key.exists():
        ident = _load_key(home, name)
        status = "unchanged" if old == name else "renamed"
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        _write_private(home.operator_key, pem)
        ident = _load_key(home, name)
        status = "created"
    if status != "unchanged":
        doc = {"operator": name, "fingerprint": ident.fingerprint, "updated": utc_now()}
        _write_private(home.operator_file, (json.dumps(doc, indent=2) + "\n").encode(), 0o644)
    return ident, status, old if status == "renamed" else None


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


def _read_operator_file(home: Home) -> dict:
    try:
        doc = json.loads(home.operator_file.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{home.operator_file} is damaged: {exc}",
                          hint="run `fieldkit init --operator NAME` to write it again") from exc
    return doc if isinstance(doc, dict) else {}


def load_identity(home: Home) -> Identity:
    """The operator's identity, or IdentityMissing with how to create it."""
    if not home.operator_key.exists():
        raise IdentityMissing(home)
    name = _read_operator_file(home).get("operator")
    if not isinstance(name, str) or not name:
        raise IdentityMissing(home, f"operator key present but no operator name ({home.operator_file})")
    return _load_key(home, name)


def _load_key(home: Home, name: str) -> Identity:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = home.operator_key
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise ConfigError(f"operator key {path} is readable by others (mode {mode:04o})",
                          hint=f"run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"operator key {path} cannot be read: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"operator key {path} is not an ECDSA P-256 key")
    pub = key.public_key()
    pem = pub.public_bytes(serialization.Encoding.PEM,
                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return Identity(name, key, pem, key_fingerprint(pub))


# ---- records --------------------------------------------------------------------------------------
_ENTRY_COLUMNS = "seq, time, operator, device, action, outcome, details, prev, hash, sig"


@dataclass(frozen=True)
class Entry:
    seq: int
    time: str
    operator: str
    device: str
    action: str
    outcome: str
    details: dict
    prev: str
    hash: str
    sig: str

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> "Entry":
        return cls(row[0], row[1], row[2], row[3], row[4], row[5], json.loads(row[6]), row[7], row[8], row[9])

    def to_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Checkpoint:
    """A signed head: ``seq`` and ``head`` (the hash of entry ``seq``) at ``time``."""

    journal_id: str
    seq: int
    head: str
    time: str
    signature: str
    witness: str = ""  # where it was written: a device name, "export", "sync"

    def signed_bytes(self) -> bytes:
        return checkpoint_bytes(self.journal_id, self.seq, self.head, self.time)

    def verify(self, public_key: Any) -> bool:
        return verify_signature(public_key, hashlib.sha256(self.signed_bytes()).digest(), self.signature)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Checkpoint":
        try:
            return cls(str(doc["journal_id"]), int(doc["seq"]), str(doc["head"]), str(doc["time"]),
                       str(doc["signature"]), str(doc.get("witness") or ""))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a checkpoint: {exc}") from exc


@dataclass
class OperationRecord:
    """What ``Journal.operation`` will record; the caller may add details or set the outcome."""

    details: dict = field(default_factory=dict)
    outcome: str = "ok"


@dataclass
class VerifyResult:
    ok: bool
    journal_id: str
    entries: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS
    checkpoints: int = 0
    bad_seq: int | None = None
    problem: str | None = None  # altered | missing | reordered | bad signature | truncated | rewritten | corrupt
    message: str = "ok"
    key_fingerprint: str | None = None
    device_journals: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)

    def fail(self, seq: int | None, problem: str, message: str) -> "VerifyResult":
        self.ok, self.bad_seq, self.problem, self.message = False, seq, problem, message
        return self


@dataclass
class WitnessReport:
    """What ``Journal.witness`` did on one connect."""

    device: str
    checkpoint: Checkpoint
    device_journal_id: str | None = None
    device_head_seq: int = 0
    device_head_hash: str = GENESIS
    pulled: int = 0
    problems: list[str] = field(default_factory=list)
    entry: Entry | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        doc = asdict(self)
        doc["ok"] = self.ok
        return doc


# ---- chain verification (the journal database and export bundles) -----------------------------
Row = Sequence[Any]  # (seq, time, operator, device, action, outcome, details_text, prev, hash, sig)


def verify_rows(rows: Iterable[Row], journal_id: str, public_key: Any, checkpoints: Sequence[Checkpoint],
                *, acked: Sequence[tuple[str, int]] = (), workers: int | None = None,
                progress: Callable[[int], None] | None = None,
                cancel: threading.Event | None = None) -> VerifyResult:
    """Check ``rows`` (in seq order) and report the first bad seq and why.

    Hashes and links are checked in order; signatures are checked in chunks on a thread pool
    (the ECDSA verification releases the GIL). Checkpoints and receivers' acknowledgements
    catch a journal cut short.
    """
    res = VerifyResult(ok=True, journal_id=journal_id, key_fingerprint=key_fingerprint(public_key),
                       checkpoints=len(checkpoints))
    by_seq = {c.seq: c for c in checkpoints}
    expected, prev = 1, GENESIS
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
        if not verify_signature(public_key, digest, sig):
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
        details_text = canonical_text(clean)
        with self._write() as c:
            row = c.execute("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1").fetchone()
            seq, prev = (row[0] + 1, row[1]) if row else (1, GENESIS)
            t = utc_now()
            digest = hashlib.sha256(entry_bytes(self.journal_id, seq, t, ident.name, device, action, outcome,
                                                details_text, prev)).digest()
            sig = ident.sign(digest)
            c.execute(f"INSERT INTO entries({_ENTRY_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)",
                      (seq, t, ident.name, device, action, outcome, details_text, prev, digest.hex(), sig))
        return Entry(seq, t, ident.name, device, action, outcome, clean, prev, digest.hex(), sig)

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
    def witness(self, link: Any, device: str, *, timeout: float = 30.0,
                cancel: threading.Event | None = None) -> WitnessReport:
        """On connect: write a signed checkpoint of this journal to the device, pull the
        device's journal from where the last pull stopped (stored once per (journal, seq)),
        check both against each other, and record the device's head in a signed entry.

        Problems (a truncated or edited journal on either side, an agent without a journal)
        are returned in ``report.problems`` and recorded with outcome ``failed``; link errors
        (LinkLost, Cancelled) propagate.
        """
        report = WitnessReport(device, self.checkpoint(witness=device))
        try:
            res = link.call("journal_checkpoint", {"checkpoint": report.checkpoint.to_json()},
                            timeout=timeout, cancel=cancel)
            report.device_journal_id = res.get("head", {}).get("journal_id")
            previous = res.get("previous")
            if previous:
                problem = self._check_device_checkpoint(previous, device)
                if problem:
                    report.problems.append(problem)
        except DeviceError as exc:
            if exc.code == "unknown_op":
                version = (getattr(link, "agent", None) or {}).get("agent_version", "?")
                report.problems.append(f"the agent on {device} (version {version}) keeps no journal; "
                                       "update the agent")
                return self._record_witness(report)
            report.problems.append(f"writing the checkpoint to {device} failed: {exc.message}")
        self._pull(link, report, timeout, cancel)
        return self._record_witness(report)

    def _check_device_checkpoint(self, previous: Mapping[str, Any], device: str) -> str | None:
        try:
            cp = Checkpoint.from_json(previous)
        except ValueError:
            return f"{device} returned a malformed checkpoint of this journal"
        if cp.journal_id != self.journal_id or not cp.verify(self.public_key):
            return f"{device} holds a checkpoint of this journal with a bad signature (seq {cp.seq}, {cp.time})"
        row = self._one("SELECT hash FROM entries WHERE seq=?", (cp.seq,))
        if cp.seq and row is None:
            head = self.head()[0]
            return (f"this laptop's journal was truncated: {device} holds a checkpoint for seq {cp.seq} "
                    f"signed on {cp.time}, but the journal ends at seq {head}")
        if cp.seq and row[0] != cp.head:
            return (f"this laptop's journal was rewritten: seq {cp.seq} differs from the checkpoint "
                    f"{device} holds (signed on {cp.time})")
        return None

    def _device_cursor(self, journal_id: str | None) -> tuple[int, str]:
        if journal_id is None:
            return 0, GENESIS
        row = self._one("SELECT seq, hash FROM device_entries WHERE journal=? ORDER BY seq DESC LIMIT 1",
                        (journal_id,))
        return (row[0], row[1]) if row else (0, GENESIS)

    def _pull(self, link: Any, report: WitnessReport, timeout: float, cancel: threading.Event | None) -> None:
        device = report.device
        jid = report.device_journal_id
        before = self._one("SELECT journal, max(seq) FROM device_entries WHERE device=? "
                           "GROUP BY journal ORDER BY max(pulled_at) DESC LIMIT 1", (device,))
        self._pull_entries(link, report, timeout, cancel)
        if before and report.device_journal_id not in (None, before[0]):
            report.problems.append(f"the journal on {device} was replaced: the laptop holds seq 1..{before[1]} "
                                   f"of journal {before[0][:12]}, the device now keeps journal "
                                   f"{report.device_journal_id[:12]} (reflashed, or its journal was deleted)")

    def _pull_entries(self, link: Any, report: WitnessReport, timeout: float,
                      cancel: threading.Event | None) -> None:
        device = report.device
        jid = report.device_journal_id
        have, have_hash = self._device_cursor(jid)
        since = max(have, 1)  # re-read the last stored entry: it must not have changed
        verify = True  # the device checks its whole file once per connect
        while True:
            try:
                r = link.call("journal_read", {"journal_id": jid, "since": since, "verify": verify},
                              timeout=timeout, cancel=cancel)
            except DeviceError as exc:
                report.problems.append(f"reading the journal of {device} failed: {exc.message}")
                return
            if r.get("journal_id") != jid:  # the checkpoint could not be written, or a new journal began
                jid = report.device_journal_id = r.get("journal_id")
                have, have_hash = self._device_cursor(jid)
                if since != max(have, 1):
                    since = max(have, 1)
                    continue
            chain = r.get("chain")
            if verify and chain and not chain.get("ok"):
                report.problems.append(f"the journal on {device} is damaged at seq {chain.get('bad_seq')}: "
                                       f"{chain.get('message')}")
            verify = False
            head = r.get("head") or {}
            report.device_head_seq = int(head.get("seq") or 0)
            report.device_head_hash = str(head.get("hash") or GENESIS)
            if jid is not None and report.device_head_seq < have:
                report.problems.append(f"the journal on {device} was truncated: the laptop holds seq {have}, "
                                       f"the device ends at seq {report.device_head_seq}")
                return
            rows, stop = self._accept_device_entries(jid, r.get("entries") or [], have, have_hash, device, report)
            if rows:
                now = utc_now()
                with self._write() as c:
                    c.executemany("INSERT OR IGNORE INTO device_entries(journal, seq, device, time, event, hash, raw,"
                                  " pulled_at) VALUES (?,?,?,?,?,?,?,?)", [row + (now,) for row in rows])
                report.pulled += len(rows)
                have, have_hash = rows[-1][1], rows[-1][5]
            if stop or not r.get("more"):
                return
            since = have + 1

    def _accept_device_entries(self, jid: str | None, entries: list, have: int, have_hash: str, device: str,
                               report: WitnessReport) -> tuple[list[tuple], bool]:
        rows: list[tuple] = []
        prev = have_hash
        for e in entries:
            seq = e.get("seq") if isinstance(e, dict) else None
            if isinstance(seq, int) and seq <= have:
                stored = self._one("SELECT hash FROM device_entries WHERE journal=? AND seq=?", (jid, seq))
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

    def _record_witness(self, report: WitnessReport) -> WitnessReport:
        report.entry = self.record(report.device, "journal.witness", "failed" if report.problems else "ok", {
            "checkpoint_seq": report.checkpoint.seq, "checkpoint_head": report.checkpoint.head,
            "device_journal": report.device_journal_id, "device_head_seq": report.device_head_seq,
            "device_head_hash": report.device_head_hash, "pulled": report.pulled,
            **({"problems": report.problems[:10]} if report.problems else {})})
        return report

    # ---- reading ---------------------------------------------------------------------------------
    def head(self) -> tuple[int, str]:
        row = self._one("SELECT seq, hash FROM entries ORDER BY seq DESC LIMIT 1")
        return (row[0], row[1]) if row else (0, GENESIS)

    def entries(self, *, device: str | None = None, action: str | None = None, since: str | None = None,
                after_seq: int = 0, limit: int | None = None, newest: bool = False) -> list[Entry]:
        """Entries in seq order. ``action`` matches itself and its dotted children
        (``model`` matches ``model.activate``); ``since`` is a UTC time string; ``newest`` keeps the
        last ``limit`` entries instead of the first."""
        sql = f"SELECT {_ENTRY_COLUMNS} FROM entries WHERE seq > ?"
        params: list[Any] = [after_seq]
        if device is not None:
            sql += " AND device = ?"
            params.append(device)
        if action:
            sql += " AND (action = ? OR substr(action, 1, ?) = ?)"
            params += [action, len(action) + 1, action + "."]
        if since:
            sql += " AND time >= ?"
            params.append(since)
        sql += " ORDER BY seq DESC" if newest else " ORDER BY seq"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(limit)
        out = [Entry.from_row(r) for r in self._all(sql, params)]
        return out[::-1] if newest else out

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
        cps = self.checkpoints()
        return {
            "journal_id": self.journal_id, "path": str(self.path),
            "operator": _read_operator_file(self.home).get("operator"),
            "key_fingerprint": self.key_fingerprint, "entries": seq, "head": {"seq": seq, "hash": head},
            "pending_sync": seq - (last["acked_through"] if last else 0), "last_sync": last,
            "sync_targets": targets, "checkpoints": len(cps),
            "last_checkpoint": cps[-1].to_json() if cps else None,
            "device_journals": self.device_journals(),
        }

    def verify(self, *, progress: Callable[[int], None] | None = None,
               cancel: threading.Event | None = None) -> VerifyResult:
        """Verify every entry, every checkpoint, the receivers' acknowledgements and the pulled
        device journals. ``result.ok`` false names the first bad seq."""
        conn = self._read_conn()
        try:
            # the highest seq each receiver ever acknowledged must still be here
            acked = self._all("SELECT target, max(acked_through) FROM sync_acks GROUP BY target")
            rows = conn.execute(f"SELECT {_ENTRY_COLUMNS} FROM entries ORDER BY seq")
            res = verify_rows(rows, self.journal_id, self.public_key, self.checkpoints(), acked=acked,
                              progress=progress, cancel=cancel)
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

