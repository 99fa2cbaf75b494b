"""Carry the operator journal to a receiver: ``fieldkit audit sync --to URL``.

Protocol (``scripts/ingest_server.py`` is the reference receiver)::

    POST {URL}/v1/journals/{journal_id}/batches
    Authorization: Bearer TOKEN
    Idempotency-Key: KEY            (sha256 of the body: a retried request carries the same key)
    Content-Type: application/json
    {"journal_id", "public_key_pem", "checkpoint": {signed head}, "entries": [...]}

    200 {"acked_through": SEQ}      the receiver durably holds entries 1..SEQ
    409 {"expected_seq": N}         the batch does not continue what it holds: send from N

Entries go in seq order, ``batch_size`` at a time; the client moves on only after an
acknowledgement and records it (in its own table: entries are never changed or deleted). A sync
that was interrupted resumes from the last acknowledgement; a batch the receiver committed but
whose answer was lost is sent again and deduplicated there by (journal, seq).

HTTPS by default with the certificate verified (``ca_bundle`` for a plant CA); plain http only to
this machine. The token comes from ``FIELDKIT_SYNC_TOKEN`` or a file and never appears in a
message, a log or the journal.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import json
import os
import ssl
import threading
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from fieldkit.errors import Cancelled, CheckFailed, ConfigError, ConnectError
from fieldkit.journal import Journal

DEFAULT_BATCH = 500
TOKEN_ENV = "FIELDKIT_SYNC_TOKEN"
MAX_RESPONSE = 1 << 20

SyncProgress = Callable[[dict], None]


@dataclass(frozen=True)
class SyncTarget:
    scheme: str
    host: str
    port: int
    base_path: str

    @property
    def key(self) -> str:
        """How acknowledgements are filed: one receiver, one acknowledged seq."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.base_path}"

    def batches_path(self, journal_id: str) -> str:
        return f"{self.base_path}/v1/journals/{journal_id}/batches"


@dataclass
class SyncResult:
    target: str
    journal_id: str
    head_seq: int
    acked_through: int
    sent: int
    batches: int
    seconds: float

    @property
    def pending(self) -> int:
        return self.head_seq - self.acked_through

    def to_json(self) -> dict:
        return dict(asdict(self), pending=self.pending)


def parse_target(url: str) -> SyncTarget:
    """Check a receiver URL: https, or http to this machine only; no credentials inside."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise ConfigError(f"sync target {url!r} is not an https:// URL",
                          hint="e.g. `fieldkit audit sync --to https://audit.plant.example`")
    if parts.username or parts.password:
        raise ConfigError("the sync URL carries credentials; put the token in FIELDKIT_SYNC_TOKEN or a "
                          "--token-file instead")
    if parts.query or parts.fragment:
        raise ConfigError(f"sync target {url!r} has a query or fragment; give the receiver's base URL")
    host = parts.hostname
    if parts.scheme == "http" and not _is_loopback(host):
        raise ConfigError(f"plain http is allowed only to this machine, not to {host}: the journal and the "
                          "token would cross the network unencrypted", hint=f"use https://{host}")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise ConfigError(f"sync target {url!r}: {exc}") from exc
    return SyncTarget(parts.scheme, host, port, parts.path.rstrip("/"))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def read_token(token_file: Path | None = None) -> str:
    """The bearer token: from ``token_file`` when given, else ``$FIELDKIT_SYNC_TOKEN``."""
    if token_file is not None:
        try:
            token = Path(token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the token file {token_file}: {exc.strerror or exc}") from exc
        where = str(token_file)
    else:
        token = os.environ.get(TOKEN_ENV, "").strip()
        where = TOKEN_ENV
    if not token:
        raise ConfigError(f"no sync token: set {TOKEN_ENV} or pass --token-file FILE",
                          hint="the receiver's operator gives you the token")
    if not token.isprintable() or any(c.isspace() for c in token):
        raise ConfigError(f"the sync token in {where} contains spaces or control characters")
    return token


class _Receiver:
    """One keep-alive HTTP(S) connection to the receiver; errors become fieldkit errors."""

    def __init__(self, target: SyncTarget, token: str, ca_bundle: Path | None, timeout: float) -> None:
        self.target = target
        self._auth = f"Bearer {token}"
        self.timeout = timeout
        self._context: ssl.SSLContext | None = None
        if target.scheme == "https":
            if ca_bundle is not None and not Path(ca_bundle).is_file():
                raise ConfigError(f"no CA bundle at {ca_bundle}")
            try:
                self._context = ssl.create_default_context(cafile=str(ca_bundle) if ca_bundle else None)
            except ssl.SSLError as exc:
                raise ConfigError(f"cannot use the CA bundle {ca_bundle}: {exc}") from exc
        self._conn: http.client.HTTPConnection | None = None
        self._used = False

    def _connection(self) -> http.client.HTTPConnection:
        if self._conn is None:
            t = self.target
            if self._context is not None:
                self._conn = http.client.HTTPSConnection(t.host, t.port, timeout=self.timeout, context=self._context)
            else:
                self._conn = http.client.HTTPConnection(t.host, t.port, timeout=self.timeout)
            self._used = False
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def post(self, path: str, body: bytes, idempotency_key: str, pending_note: str) -> tuple[int, dict]:
        headers = {"Authorization": self._auth, "Content-Type": "application/json",
                   "Idempotency-Key": idempotency_key, "Accept": "application/json"}
        for attempt in (1, 2):
            conn = self._connection()
            reused = self._used
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                raw = resp.read(MAX_RESPONSE + 1)
                self._used = True
                if resp.getheader("Connection", "").lower() == "close":
                    self.close()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # a keep-alive connection the receiver had closed: once more, same key
                raise self._unreachable(exc, pending_note) from exc
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise ConnectError(f"the TLS certificate of {self.target.host} is not trusted: "
                                   f"{exc.verify_message or exc.reason}; {pending_note}",
                                   hint="pass --ca-bundle FILE with the plant's CA certificate (PEM)") from exc
            except ssl.SSLError as exc:
                self.close()
                raise ConnectError(f"TLS with {self.target.host}:{self.target.port} failed: {exc.reason or exc}; "
                                   f"{pending_note}", hint="check that the receiver speaks https on that port") from exc
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise self._unreachable(exc, pending_note) from exc
        try:
            doc = json.loads(raw[:MAX_RESPONSE]) if raw else {}
        except ValueError:
            doc = {"error": raw[:200].decode("utf-8", "replace")}
        return resp.status, doc if isinstance(doc, dict) else {}

    def _unreachable(self, exc: BaseException, pending_note: str) -> ConnectError:
        t = self.target
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ConnectError(f"cannot reach the receiver at {t.host}:{t.port}: {reason}; {pending_note}",
                            hint="check the address and that the receiver runs, then sync again")


def _batch_body(journal: Journal, checkpoint_json: str, rows: list[tuple]) -> bytes:
    q = json.JSONEncoder(ensure_ascii=False).encode
    entries = ",".join(
        '{"seq":%d,"time":%s,"operator":%s,"device":%s,"action":%s,"outcome":%s,"details":%s,'
        '"prev":%s,"hash":%s,"sig":%s}' % (r[0], q(r[1]), q(r[2]), q(r[3]), q(r[4]), q(r[5]), r[6],
                                           q(r[7]), q(r[8]), q(r[9])) for r in rows)
    return ('{"journal_id":%s,"public_key_pem":%s,"checkpoint":%s,"entries":[%s]}' % (
        q(journal.journal_id), q(journal.public_key_pem), checkpoint_json, entries)).encode("utf-8")


def sync(journal: Journal, url: str, *, token: str, ca_bundle: Path | None = None,
         batch_size: int = DEFAULT_BATCH, timeout: float = 30.0, progress: SyncProgress | None = None,
         cancel: threading.Event | None = None) -> SyncResult:
    """Send every entry the receiver has not acknowledged. Raises ConnectError (unreachable,
    TLS, token, receiver failure: exit 3), CheckFailed (the receiver rejected the content or
    holds more than this journal: exit 1), Cancelled (exit 130). Whatever was acknowledged
    before an error stays acknowledged; the rest stays pending."""
    target = parse_target(url)
    if batch_size < 1:
        raise ConfigError("the batch size must be at least 1")
    started = time.monotonic()
    acked = journal.acked_through(target.key)
    head_seq = journal.head()[0]
    result = SyncResult(target.key, journal.journal_id, head_seq, acked, 0, 0, 0.0)
    if acked >= head_seq:
        if acked > head_seq:
            raise CheckFailed(f"{target.key} acknowledged entries through seq {acked} but this journal ends at "
                              f"seq {head_seq}: it was truncated or replaced",
                              hint="`fieldkit audit verify` names what is missing")
        return result
    receiver = _Receiver(target, token, ca_bundle, timeout)
    checkpoint_json = json.dumps(journal.checkpoint(witness=f"sync {target.key}").to_json())
    path = target.batches_path(journal.journal_id)
    last_conflict = None
    try:
        while acked < head_seq:
            if cancel is not None and cancel.is_set():
                raise Cancelled(f"sync paused at seq {acked} of {head_seq}; run it again to resume")
            rows = journal.rows_after(acked, min(batch_size, head_seq - acked))
            if not rows:
                raise CheckFailed(f"entries after seq {acked} are missing from this journal",
                                  hint="`fieldkit audit verify` names what is missing")
            note = f"{head_seq - acked} entries stay pending (acknowledged through seq {acked})"
            body = _batch_body(journal, checkpoint_json, rows)
            # the key names this exact request: a retry of it is answered from the receiver's record;
            # a later run (fresh checkpoint) sends a new request, deduplicated there by (journal, seq)
            key = hashlib.sha256(body).hexdigest()[:32]
            status, doc = receiver.post(path, body, key, note)
            result.batches += 1
            if status == 200:
                through = doc.get("acked_through")
                if not isinstance(through, int) or through < rows[0][0] - 1:
                    raise ConnectError(f"the receiver answered 200 without a usable acked_through ({through!r}); {note}")
                if through > head_seq:
                    raise CheckFailed(f"the receiver holds entries through seq {through} of this journal, but it ends "
                                      f"at seq {head_seq}: this journal was truncated or replaced")
                if through <= acked:
                    raise ConnectError(f"the receiver acknowledged nothing new (through seq {through}); {note}")
                result.sent += through - acked
                acked = through
                journal.record_ack(target.key, acked)
            elif status == 409:
                expected = doc.get("expected_seq")
                if not isinstance(expected, int) or expected < 1:
                    raise ConnectError(f"the receiver answered 409 without a usable expected_seq; {note}")
                if expected - 1 > head_seq:
                    raise CheckFailed(f"the receiver holds entries through seq {expected - 1} of this journal, but it "
                                      f"ends at seq {head_seq}: this journal was truncated or replaced")
                if expected == last_conflict:
                    raise ConnectError(f"the receiver keeps asking for seq {expected}; {note}")
                last_conflict = expected
                acked = expected - 1  # it lost data, or another copy of this journal synced: resume there
                journal.record_ack(target.key, acked)
                continue
            elif status in (401, 403):
                raise ConnectError(f"the receiver refused the sync token (HTTP {status}); {note}",
                                   hint=f"check {TOKEN_ENV} or the --token-file")
            elif status == 413 and len(rows) > 1:
                batch_size = max(1, len(rows) // 2)
                continue
            elif status in (400, 413, 422):
                raise CheckFailed(f"the receiver rejected seq {rows[0][0]}..{rows[-1][0]} (HTTP {status}): "
                                  f"{_error_text(doc)}; {note}",
                                  hint="`fieldkit audit verify` checks the journal on this laptop")
            else:
                raise ConnectError(f"the receiver failed (HTTP {status}): {_error_text(doc)}; {note}",
                                   hint="nothing is lost; run the sync again later")
            last_conflict = None
            if progress:
                progress({"acked_through": acked, "head_seq": head_seq, "sent": result.sent})
    finally:
        receiver.close()
        result.acked_through = acked
        result.seconds = time.monotonic() - started
    return result


def _error_text(doc: dict) -> str:
    text = str(doc.get("error") or doc.get("message") or "no reason given")
    return text[:300]


def pending(journal: Journal, url: str) -> int:
    """Entries ``url`` has not acknowledged yet."""
    return journal.head()[0] - journal.acked_through(parse_target(url).key)


def describe(result: SyncResult) -> str:
    if result.sent == 0 and result.batches == 0:
        return f"{result.target}: up to date (acknowledged through seq {result.acked_through})"
    rate = result.sent / result.seconds if result.seconds > 0 else 0.0
    return (f"{result.target}: sent {result.sent} entries in {result.batches} batches ({rate:,.0f}/s); "
            f"acknowledged through seq {result.acked_through}, {result.pending} pending")

