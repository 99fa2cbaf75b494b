"""The journal's format: constants, errors, the hashed encodings, redaction and record types."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping, Sequence

from fieldkit.errors import ConfigError, FieldkitError
from fieldkit.locations import Home
from fieldkit.signing import canonical, canonical_text, verify_digest  # noqa: F401  (canonical: the format)

GENESIS = "0" * 64
OUTCOMES = ("ok", "failed", "refused", "cancelled", "started", "info")
REDACTED = "[redacted]"
LAPTOP = ""  # the ``device`` of entries about the laptop itself (identity, exports)

_SECRET_KEY = re.compile(r"token|passw|passphrase|secret|private_?key|authori[sz]ation|api_?key|"
                         r"credential|cookie|session_?key", re.I)
_SECRET_VALUE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----|^\s*bearer\s+\S", re.I)


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
        return verify_digest(public_key, hashlib.sha256(self.signed_bytes()).digest(), self.signature)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "Checkpoint":
        try:
            seq = doc["seq"]
            if type(seq) is not int or seq < 0:
                raise ValueError(f"seq {seq!r:.40} is not a sequence number")
            texts = [doc[k] for k in ("journal_id", "head", "time", "signature")] + [doc.get("witness") or ""]
            if not all(isinstance(t, str) and len(t) <= 4096 for t in texts):
                raise ValueError("a field is not a short text")
            return cls(texts[0], seq, texts[1], texts[2], texts[3], texts[4])
        except (KeyError, TypeError, AttributeError) as exc:
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
    verified_from: int = 0
    """Entries 1..verified_from were taken as verified from an earlier passing verification
    (``Journal.verify(incremental=True)``); 0: every entry was checked now."""

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


