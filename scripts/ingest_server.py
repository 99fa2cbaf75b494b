#!/usr/bin/env python3
"""fieldkit-ingest: the reference receiver for ``fieldkit audit sync``.

Plant IT can run it as it is (Python >= 3.9, the stdlib and the ``cryptography`` package; it does
not need fieldkit) or re-implement the small protocol below in any language.

Run
---
    FIELDKIT_INGEST_TOKEN=$(cat /etc/fieldkit-ingest/token) \\
    python3 ingest_server.py --db /var/lib/fieldkit-ingest/journals.db \\
        --host 0.0.0.0 --port 8443 --tls-cert /etc/fieldkit-ingest/cert.pem --tls-key /etc/fieldkit-ingest/key.pem

``--port 0`` lets the OS pick a port. The first line on stdout always says where it listens::

    fieldkit-ingest listening on https://0.0.0.0:8443

Without ``--tls-cert`` it speaks plain http: only for this machine or behind a TLS proxy
(fieldkit refuses plain http to anything but loopback). Technicians sync with::

    FIELDKIT_SYNC_TOKEN=... fieldkit audit sync --to https://audit.plant.example:8443 [--ca-bundle plant-ca.pem]

Protocol
--------
``POST /v1/journals/{journal_id}/batches`` with ``Authorization: Bearer TOKEN``,
``Idempotency-Key: KEY`` and a JSON body::

    {"journal_id": "...", "public_key_pem": "-----BEGIN PUBLIC KEY-----...",
     "checkpoint": {"journal_id", "seq", "head", "time", "signature"},
     "entries": [{"seq", "time", "operator", "device", "action", "outcome", "details",
                  "prev", "hash", "sig"}, ...]}          (consecutive seqs)

Answers (JSON):

* ``200 {"acked_through": SEQ}`` — entries 1..SEQ of that journal are durably stored (SQLite,
  WAL, synchronous=FULL, committed before the answer). Entries the receiver already held are
  compared and skipped, so a batch sent twice is stored once.
* ``409 {"expected_seq": N}`` — the batch starts after a gap; send from seq N.
* ``401`` bad or missing token · ``400`` malformed · ``413`` body too large ·
  ``422 {"error"}`` content refused: a hash, link or signature does not verify, an entry
  differs from the one already held, another public key, or an Idempotency-Key reused for a
  different body. A repeated Idempotency-Key with the same body gets the stored answer.

``GET /v1/journals/{journal_id}`` (same token) returns ``{"journal_id", "head_seq", "head_hash",
"entries", "key_fingerprint", "checkpoint"}``.

Verification on ingest
----------------------
``hash`` is sha256 (hex) over the canonical JSON (sorted keys, no whitespace, UTF-8, non-ASCII
as is) of ``{"v": 1, "journal": journal_id, "seq", "time", "operator", "device", "action",
"outcome", "details", "prev"}``; ``prev`` is the previous entry's hash, 64 zeros for seq 1.
``sig`` is base64 DER ECDSA P-256 over that sha256 digest (``openssl dgst -sha256 -verify``
over the canonical JSON accepts it). The checkpoint signs the canonical JSON of
``{"v": 1, "type": "checkpoint", "journal", "seq", "head", "time"}`` the same way.

Every new entry's hash and link to the entry before it are checked; the journal's public key
is pinned by the first batch. Signatures: with ``--signatures batch`` (default) the signature of
each batch's last entry and of the checkpoint — through the hash chain they authenticate every
entry of the batch; with ``--signatures all`` every entry's own signature as well (slower: one
ECDSA verification per entry).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import signal
import sqlite3
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GENESIS = "0" * 64
MAX_BODY = 32 << 20
_JOURNAL_PATH = re.compile(r"^/v1/journals/([A-Za-z0-9_-]{1,64})(/batches)?/?$")
_FIELDS = (("seq", int), ("time", str), ("operator", str), ("device", str), ("action", str),
           ("outcome", str), ("details", dict), ("prev", str), ("hash", str), ("sig", str))

SCHEMA = """
CREATE TABLE IF NOT EXISTS journals (
    journal_id TEXT PRIMARY KEY, public_key_pem TEXT NOT NULL, key_fingerprint TEXT NOT NULL,
    head_seq INTEGER NOT NULL, head_hash TEXT NOT NULL, checkpoint TEXT, first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (
    journal_id TEXT NOT NULL, seq INTEGER NOT NULL, time TEXT NOT NULL, operator TEXT NOT NULL,
    device TEXT NOT NULL, action TEXT NOT NULL, outcome TEXT NOT NULL, details TEXT NOT NULL,
    prev TEXT NOT NULL, hash TEXT NOT NULL, sig TEXT NOT NULL, received_at TEXT NOT NULL,
    PRIMARY KEY (journal_id, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS idempotency (
    journal_id TEXT NOT NULL, key TEXT NOT NULL, body_sha256 TEXT NOT NULL, response TEXT NOT NULL,
    created TEXT NOT NULL, PRIMARY KEY (journal_id, key)) WITHOUT ROWID;
"""


class Refused(Exception):
    def __init__(self, status: int, doc: dict) -> None:
        super().__init__(doc.get("error", ""))
        self.status = status
        self.doc = doc


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


_q = json.JSONEncoder(ensure_ascii=False).encode


def canonical_text(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def entry_digest(journal_id: str, e: dict, details_text: str) -> bytes:
    """sha256 of canonical({"v": 1, "journal", "seq", "time", "operator", "device", "action",
    "outcome", "details", "prev"}), written out key by key in sorted order (it is the hot path;
    ``details_text`` is canonical_text(details))."""
    return hashlib.sha256((
        '{"action":%s,"details":%s,"device":%s,"journal":%s,"operator":%s,"outcome":%s,"prev":%s,'
        '"seq":%d,"time":%s,"v":1}' % (_q(e["action"]), details_text, _q(e["device"]), _q(journal_id),
                                      _q(e["operator"]), _q(e["outcome"]), _q(e["prev"]), e["seq"],
                                      _q(e["time"]))).encode("utf-8")).digest()


def checkpoint_digest(journal_id: str, cp: dict) -> bytes:
    return hashlib.sha256(canonical({"v": 1, "type": "checkpoint", "journal": journal_id, "seq": cp["seq"],
                                     "head": cp["head"], "time": cp["time"]})).digest()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class Crypto:
    """ECDSA P-256 with the ``cryptography`` package (imported once)."""

    def __init__(self) -> None:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        self._invalid = InvalidSignature
        self._serialization = serialization
        self._ec = ec
        self._alg = ec.ECDSA(utils.Prehashed(hashes.SHA256()))

    def load(self, pem: str) -> Any:
        key = self._serialization.load_pem_public_key(pem.encode())
        if not isinstance(key, self._ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            raise ValueError("not an ECDSA P-256 public key")
        return key

    def fingerprint(self, key: Any) -> str:
        der = key.public_bytes(self._serialization.Encoding.DER,
                               self._serialization.PublicFormat.SubjectPublicKeyInfo)
        return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")

    def verify(self, key: Any, digest: bytes, sig_b64: str) -> bool:
        try:
            key.verify(base64.b64decode(sig_b64, validate=True), digest, self._alg)
            return True
        except (self._invalid, ValueError, TypeError):
            return False


class Store:
    """The receiver's SQLite database. One writer at a time (a lock plus BEGIN IMMEDIATE)."""

    def __init__(self, path: str, verify_all: bool) -> None:
        self.crypto = Crypto()
        self.verify_all = verify_all
        self.lock = threading.Lock()
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=FULL")
        self.conn.executescript(SCHEMA)
        self._keys: dict[str, Any] = {}

    def _key(self, pem: str) -> Any:
        key = self._keys.get(pem)
        if key is None:
            key = self._keys[pem] = self.crypto.load(pem)
        return key

    def info(self, journal_id: str) -> dict | None:
        with self.lock:
            row = self.conn.execute("SELECT head_seq, head_hash, key_fingerprint, checkpoint FROM journals "
                                    "WHERE journal_id=?", (journal_id,)).fetchone()
            if row is None:
                return None
            count = self.conn.execute("SELECT count(*) FROM entries WHERE journal_id=?", (journal_id,)).fetchone()[0]
        return {"journal_id": journal_id, "head_seq": row[0], "head_hash": row[1], "entries": count,
                "key_fingerprint": row[2], "checkpoint": json.loads(row[3]) if row[3] else None}

    def ingest(self, journal_id: str, idem_key: str | None, body: bytes) -> tuple[int, dict]:
        body_sha = hashlib.sha256(body).hexdigest()
        try:
            doc = json.loads(body)
        except ValueError:
            return 400, {"error": "the body is not JSON"}
        with self.lock:
            c = self.conn
            c.execute("BEGIN IMMEDIATE")
            try:
                if idem_key:
                    row = c.execute("SELECT body_sha256, response FROM idempotency WHERE journal_id=? AND key=?",
                                    (journal_id, idem_key)).fetchone()
                    if row:
                        c.execute("ROLLBACK")
                        if row[0] != body_sha:
                            return 422, {"error": "Idempotency-Key was already used for a different batch"}
                        return 200, json.loads(row[1])
                answer = self._ingest(c, journal_id, doc)
                if idem_key:
                    c.execute("INSERT INTO idempotency VALUES (?,?,?,?,?)",
                              (journal_id, idem_key, body_sha, json.dumps(answer), now()))
                c.execute("COMMIT")
                return 200, answer
            except Refused as exc:
                c.execute("ROLLBACK")
                return exc.status, exc.doc
            except BaseException:
                if c.in_transaction:
                    c.execute("ROLLBACK")
                raise

    def _ingest(self, c: sqlite3.Connection, jid: str, doc: Any) -> dict:
        if not isinstance(doc, dict) or doc.get("journal_id") != jid:
            raise Refused(400, {"error": "the body's journal_id does not match the URL"})
        entries = doc.get("entries")
        if not isinstance(entries, list) or not entries:
            raise Refused(400, {"error": "entries must be a non-empty list"})
        for e in entries:
            if not isinstance(e, dict) or any(not isinstance(e.get(k), t) or (t is int and isinstance(e.get(k), bool))
                                               for k, t in _FIELDS):
                raise Refused(400, {"error": "every entry needs " + ", ".join(k for k, _ in _FIELDS)})
        first = entries[0]["seq"]
        if any(e["seq"] != first + i for i, e in enumerate(entries)):
            raise Refused(400, {"error": "the entries of a batch must have consecutive seqs"})
        pem = doc.get("public_key_pem")
        row = c.execute("SELECT public_key_pem, head_seq, head_hash FROM journals WHERE journal_id=?",
                        (jid,)).fetchone()
        if row is not None and pem != row[0]:
            raise Refused(422, {"error": "the public key differs from the one pinned for this journal"})
        try:
            key = self._key(pem if isinstance(pem, str) else "")
        except ValueError as exc:
            raise Refused(400, {"error": f"public_key_pem is unusable: {exc}"})
        head, head_hash = (row[1], row[2]) if row else (0, GENESIS)
        if first > head + 1:
            raise Refused(409, {"expected_seq": head + 1,
                                "error": f"this receiver holds seq 1..{head}; send from seq {head + 1}"})
        known = [e for e in entries if e["seq"] <= head]
        if known:
            held = dict(c.execute("SELECT seq, hash FROM entries WHERE journal_id=? AND seq BETWEEN ? AND ?",
                                  (jid, known[0]["seq"], known[-1]["seq"])).fetchall())
            for e in known:
                if held.get(e["seq"]) != e["hash"]:
                    raise Refused(422, {"error": f"seq {e['seq']} differs from the entry already received"})
        new = [e for e in entries if e["seq"] > head]
        prev = head_hash
        digests = []
        details = []
        for e in new:
            try:
                details.append(canonical_text(e["details"]))
            except ValueError:
                raise Refused(400, {"error": f"seq {e['seq']}: details are not finite JSON"})
            digest = entry_digest(jid, e, details[-1])
            if digest.hex() != e["hash"]:
                raise Refused(422, {"error": f"seq {e['seq']}: the hash does not match the content"})
            if e["prev"] != prev:
                raise Refused(422, {"error": f"seq {e['seq']} does not continue seq {e['seq'] - 1}"})
            prev = e["hash"]
            digests.append(digest)
        to_check = list(zip(new, digests)) if self.verify_all else list(zip(new, digests))[-1:]
        for e, digest in to_check:
            if not self.crypto.verify(key, digest, e["sig"]):
                raise Refused(422, {"error": f"seq {e['seq']}: bad signature"})
        new_head = new[-1]["seq"] if new else head
        cp_json = self._checkpoint(c, jid, key, doc.get("checkpoint"), new, new_head)
        stamp = now()
        if new:
            c.executemany("INSERT INTO entries VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [
                (jid, e["seq"], e["time"], e["operator"], e["device"], e["action"], e["outcome"], d,
                 e["prev"], e["hash"], e["sig"], stamp) for e, d in zip(new, details)])
        if row is None:
            c.execute("INSERT INTO journals VALUES (?,?,?,?,?,?,?,?)",
                      (jid, pem, self.crypto.fingerprint(key), new_head, prev, cp_json, stamp, stamp))
        else:
            c.execute("UPDATE journals SET head_seq=?, head_hash=?, checkpoint=coalesce(?, checkpoint), last_seen=? "
                      "WHERE journal_id=?", (new_head, prev, cp_json, stamp, jid))
        return {"acked_through": new_head}

    def _checkpoint(self, c: sqlite3.Connection, jid: str, key: Any, cp: Any, new: list, new_head: int) -> str | None:
        if cp is None:
            return None
        if not isinstance(cp, dict) or not isinstance(cp.get("seq"), int) or not all(
                isinstance(cp.get(k), str) for k in ("head", "time", "signature")):
            raise Refused(400, {"error": "the checkpoint needs seq, head, time and signature"})
        if not self.crypto.verify(key, checkpoint_digest(jid, cp), cp["signature"]):
            raise Refused(422, {"error": f"the checkpoint for seq {cp['seq']} has a bad signature"})
        if cp["seq"] <= new_head and cp["seq"] > 0:
            in_batch = {e["seq"]: e["hash"] for e in new}
            held = in_batch.get(cp["seq"])
            if held is None:
                r = c.execute("SELECT hash FROM entries WHERE journal_id=? AND seq=?", (jid, cp["seq"])).fetchone()
                held = r[0] if r else None
            if held != cp["head"]:
                raise Refused(422, {"error": f"the checkpoint for seq {cp['seq']} does not match the entry held"})
        return json.dumps(cp)


class Handler(BaseHTTPRequestHandler):
    server_version = "fieldkit-ingest/1"
    protocol_version = "HTTP/1.1"  # keep-alive: one connection for a whole sync
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms delayed-ACK stall per batch)

    def _send(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="fieldkit-ingest"')
        self.end_headers()
        self.wfile.write(data)

    def _authorized(self) -> bool:
        got = self.headers.get("Authorization", "")
        want = "Bearer " + self.server.token  # type: ignore[attr-defined]
        if hmac.compare_digest(got.encode(), want.encode()):
            return True
        self._send(401, {"error": "missing or wrong bearer token"})
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        m = _JOURNAL_PATH.match(self.path)
        if not m or m.group(2):
            self._send(404, {"error": "not found"})
            return
        if not self._authorized():
            return
        info = self.server.store.info(m.group(1))  # type: ignore[attr-defined]
        self._send(200, info) if info else self._send(404, {"error": "no such journal"})

    def do_POST(self) -> None:  # noqa: N802
        m = _JOURNAL_PATH.match(self.path)
        length = self.headers.get("Content-Length")
        if not m or not m.group(2):
            self.close_connection = True
            self._send(404, {"error": "not found"})
            return
        if not self._authorized():
            self.close_connection = True
            return
        if length is None or not length.isdigit():
            self.close_connection = True
            self._send(411, {"error": "Content-Length required"})
            return
        if int(length) > MAX_BODY:
            self.close_connection = True
            self._send(413, {"error": f"the body exceeds {MAX_BODY} bytes; send smaller batches"})
            return
        body = self.rfile.read(int(length))
        if len(body) != int(length):
            self.close_connection = True
            return  # the client went away mid-body: nothing was stored
        status, doc = self.server.store.ingest(m.group(1), self.headers.get("Idempotency-Key"), body)  # type: ignore[attr-defined]
        self._send(status, doc)

    def log_message(self, format: str, *args: Any) -> None:  # request line and status only, never headers
        if not self.server.quiet:  # type: ignore[attr-defined]
            sys.stderr.write("%s %s\n" % (self.address_string(), format % args))


def make_server(db: str, host: str, port: int, token: str, *, tls_cert: str | None = None,
                tls_key: str | None = None, verify_all: bool = False, quiet: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    server.store = Store(db, verify_all)  # type: ignore[attr-defined]
    server.token = token  # type: ignore[attr-defined]
    server.quiet = quiet  # type: ignore[attr-defined]
    server.scheme = "http"  # type: ignore[attr-defined]
    if tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(tls_cert, tls_key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        server.scheme = "https"  # type: ignore[attr-defined]
    return server


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Reference receiver for `fieldkit audit sync` (see the module docstring).")
    ap.add_argument("--db", required=True, help="SQLite database file (created if missing)")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    ap.add_argument("--port", type=int, default=8765, help="port (0: let the OS pick; printed on stdout)")
    ap.add_argument("--token-file", help="file holding the bearer token (default: $FIELDKIT_INGEST_TOKEN)")
    ap.add_argument("--tls-cert", help="PEM certificate chain: serve https")
    ap.add_argument("--tls-key", help="PEM private key of --tls-cert")
    ap.add_argument("--signatures", choices=("batch", "all"), default="batch",
                    help="verify the signature of each batch's last entry (default) or of every entry")
    ap.add_argument("--quiet", action="store_true", help="no request log on stderr")
    args = ap.parse_args(argv)
    if args.token_file:
        with open(args.token_file) as fh:
            token = fh.read().strip()
    else:
        token = os.environ.get("FIELDKIT_INGEST_TOKEN", "").strip()
    if not token:
        ap.error("no token: pass --token-file or set FIELDKIT_INGEST_TOKEN")
    server = make_server(args.db, args.host, args.port, token, tls_cert=args.tls_cert, tls_key=args.tls_key,
                         verify_all=args.signatures == "all", quiet=args.quiet)
    host, port = server.server_address[:2]
    print(f"fieldkit-ingest listening on {server.scheme}://{host}:{port}", flush=True)  # type: ignore[attr-defined]
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
