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

from fieldkit.journal.identity import Identity, init_identity, load_identity
from fieldkit.journal.records import (
    GENESIS, LAPTOP, OUTCOMES, REDACTED, Checkpoint, Entry, IdentityMissing, JournalDamaged, JournalError,
    OperationRecord, VerifyResult, WitnessReport, canonical, canonical_text, checkpoint_bytes, entry_bytes,
    redact, utc_now,
)
from fieldkit.journal.store import Journal, setup_operator
from fieldkit.journal.verify import verify_device_entries, verify_rows

__all__ = [
    "GENESIS", "LAPTOP", "OUTCOMES", "REDACTED", "Checkpoint", "Entry", "Identity", "IdentityMissing", "Journal",
    "JournalDamaged", "JournalError", "OperationRecord", "VerifyResult", "WitnessReport", "canonical",
    "canonical_text", "checkpoint_bytes", "entry_bytes", "init_identity", "load_identity", "redact",
    "setup_operator", "utc_now", "verify_device_entries", "verify_rows",
]
