"""``fieldkit audit sync`` against the reference receiver (scripts/ingest_server.py) on 127.0.0.1:
a real HTTP(S) server in a subprocess, real SQLite on both sides, the real CLI in a subprocess."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import selectors
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT, run_cli
from fieldkit.errors import Cancelled
from fieldkit.journal import Journal, init_identity
from fieldkit.locations import Home
from fieldkit.sync import parse_target, sync

pytestmark = pytest.mark.no_identity  # these tests create (or deliberately omit) the identity

TOKEN = "tok-Zq8v3LmN0pXr"
N = 400  # entries in the journal under test
INGEST = ROOT / "scripts" / "ingest_server.py"


class Receiver:
    """scripts/ingest_server.py in a subprocess on an OS-picked port."""

    def __init__(self, db: Path, *extra: str, token: str = TOKEN) -> None:
        self.db = db
        env = dict(os.environ, FIELDKIT_INGEST_TOKEN=token)
        self.proc = subprocess.Popen([sys.executable, str(INGEST), "--db", str(db), "--port", "0", "--quiet", *extra],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=30):
            self.stop()
            raise AssertionError("the receiver did not start within 30 s")
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.stop()
            raise AssertionError(f"receiver failed to start: {line!r} {self.proc.stderr.read()}")
        self.url = line.split()[-1]
        self.port = int(self.url.rsplit(":", 1)[1])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def seqs(self, journal_id: str) -> list[int]:
        conn = sqlite3.connect(self.db, timeout=10)
        try:
            return [r[0] for r in conn.execute("SELECT seq FROM entries WHERE journal_id=? ORDER BY seq", (journal_id,))]
        finally:
            conn.close()


@pytest.fixture
def receiver(tmp_path: Path):
    r = Receiver(tmp_path / "ingest.db")
    yield r
    r.stop()


@pytest.fixture
def journal(home: Home):
    init_identity(home, "ana")
    with Journal.open(home) as j:
        for i in range(N):
            j.record(f"cam-{i % 3}", "health.check", "ok", {"i": i, "note": "Prüfung ✓"})
        yield j


def cli_sync(url: str, *extra: str, token: str | None = TOKEN, timeout: float = 120):
    env = {"FIELDKIT_SYNC_TOKEN": token} if token else {"FIELDKIT_SYNC_TOKEN": ""}
    return run_cli("audit", "sync", "--to", url, "--json", *extra, env=env, timeout=timeout)


def pending(home: Home) -> int:
    proc = run_cli("audit", "status", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["pending_sync"]


def expect_failure(proc, code: int, *phrases: str) -> None:
    assert proc.returncode == code, proc.stdout + proc.stderr
    for p in phrases:
        assert p in proc.stderr, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr


# ---- delivery ---------------------------------------------------------------------------------------
def test_sync_delivers_every_entry_once_and_then_only_new_ones(journal: Journal, home: Home, receiver: Receiver) -> None:
    proc = cli_sync(receiver.url, "--batch", "128")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["sent"], doc["acked_through"], doc["pending"], doc["batches"]) == (N, N, 0, 4)
    assert receiver.seqs(journal.journal_id) == list(range(1, N + 1))
    assert pending(home) == 0
    for i in range(10):
        journal.record("cam-1", "model.activate", "ok", {"i": i})
    proc = cli_sync(receiver.url)
    doc = json.loads(proc.stdout)
    assert (doc["sent"], doc["batches"], doc["acked_through"]) == (10, 1, N + 10)
    conn = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    conn.request("GET", f"/v1/journals/{journal.journal_id}", headers={"Authorization": f"Bearer {TOKEN}"})
    info = json.loads(conn.getresponse().read())
    assert (info["head_seq"], info["head_hash"], info["entries"]) == (N + 10, journal.head()[1], N + 10)
    assert info["key_fingerprint"] == journal.key_fingerprint
    assert receiver.seqs(journal.journal_id) == list(range(1, N + 11))


class StallingProxy:
    """Forwards to the receiver; on the Nth batch it lets the receiver commit, then hangs up
    without answering (the client is killed while waiting: a batch stored but never acknowledged)."""

    def __init__(self, upstream_port: int, stall_on: int | None) -> None:
        self.upstream_port = upstream_port
        self.stall_on = stall_on
        self.count = 0
        self.committed = threading.Event()
        self.release = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                up = http.client.HTTPConnection("127.0.0.1", proxy.upstream_port, timeout=30)
                up.request("POST", self.path, body=body, headers={
                    k: self.headers[k] for k in ("Authorization", "Idempotency-Key", "Content-Type") if self.headers[k]})
                resp = up.getresponse()
                data = resp.read()
                up.close()
                proxy.count += 1
                if proxy.count == proxy.stall_on:
                    proxy.committed.set()
                    proxy.release.wait(60)
                    self.close_connection = True
                    return
                self.send_response(resp.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def test_sync_killed_mid_batch_then_run_again_delivers_each_seq_exactly_once(
        journal: Journal, home: Home, receiver: Receiver) -> None:
    proxy = StallingProxy(receiver.port, stall_on=3)
    try:
        env = dict(os.environ, FIELDKIT_SYNC_TOKEN=TOKEN)
        client = subprocess.Popen([sys.executable, "-m", "fieldkit", "audit", "sync", "--to", proxy.url, "--batch", "100"],
                                  cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert proxy.committed.wait(60), "the third batch never reached the receiver"
            assert receiver.seqs(journal.journal_id) == list(range(1, 301))  # stored, not yet acknowledged
        finally:
            client.send_signal(signal.SIGKILL)
            client.wait(30)
        proxy.release.set()
        target = parse_target(proxy.url).key
        assert journal.acked_through(target) == 200
        assert pending(home) == N - 200
        proxy.stall_on = None
        proc = cli_sync(proxy.url, "--batch", "100")
        assert proc.returncode == 0, proc.stderr
        doc = json.loads(proc.stdout)
        assert (doc["acked_through"], doc["pending"]) == (N, 0)
    finally:
        proxy.close()
    seqs = receiver.seqs(journal.journal_id)
    assert seqs == list(range(1, N + 1))  # nothing missing, nothing twice
    conn = sqlite3.connect(receiver.db)
    stored = dict(conn.execute("SELECT seq, hash FROM entries WHERE journal_id=?", (journal.journal_id,)))
    conn.close()
    assert all(stored[e.seq] == e.hash for e in journal.entries())


def test_a_receiver_that_lost_its_data_gets_everything_again(journal: Journal, home: Home, receiver: Receiver) -> None:
    assert cli_sync(receiver.url).returncode == 0
    conn = sqlite3.connect(receiver.db, timeout=10)
    for t in ("entries", "journals", "idempotency"):
        conn.execute(f"DELETE FROM {t}")  # restored from an old backup, say
    conn.commit()
    conn.close()
    journal.record("cam-1", "model.activate", "ok")
    proc = cli_sync(receiver.url)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["acked_through"] == N + 1
    assert receiver.seqs(journal.journal_id) == list(range(1, N + 2))


def test_cancel_pauses_between_batches_and_the_next_run_resumes(journal: Journal, receiver: Receiver) -> None:
    cancel = threading.Event()
    seen: list[int] = []

    def progress(p: dict) -> None:
        seen.append(p["acked_through"])
        cancel.set()

    with pytest.raises(Cancelled, match=f"paused at seq 100 of {N}; run it again to resume"):
        sync(journal, receiver.url, token=TOKEN, batch_size=100, progress=progress, cancel=cancel)
    assert seen == [100] and receiver.seqs(journal.journal_id) == list(range(1, 101))
    res = sync(journal, receiver.url, token=TOKEN, batch_size=100)
    assert (res.sent, res.acked_through, res.pending) == (N - 100, N, 0)


# ---- failures: nothing lost, clear message, non-zero exit -------------------------------------------
def test_receiver_down(journal: Journal, home: Home) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = cli_sync(f"http://127.0.0.1:{port}")
    expect_failure(proc, 3, f"cannot reach the receiver at 127.0.0.1:{port}", f"{N} entries stay pending")
    assert pending(home) == N


def test_receiver_answering_500(journal: Journal, home: Home) -> None:
    class Failing(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers["Content-Length"]))
            data = b'{"error": "database is locked"}'
            self.send_response(500)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Failing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = cli_sync(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()
    expect_failure(proc, 3, "the receiver failed (HTTP 500): database is locked", f"{N} entries stay pending")
    assert pending(home) == N


def test_wrong_token_is_refused_and_never_shown(journal: Journal, home: Home, receiver: Receiver, tmp_path: Path) -> None:
    proc = cli_sync(receiver.url, token="not-the-token-77")
    expect_failure(proc, 3, "the receiver refused the sync token (HTTP 401)")
    assert "not-the-token-77" not in proc.stdout + proc.stderr
    assert receiver.seqs(journal.journal_id) == [] and pending(home) == N
    expect_failure(cli_sync(receiver.url, token=None), 2, "no sync token: set FIELDKIT_SYNC_TOKEN or pass --token-file")
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    proc = cli_sync(receiver.url, "--token-file", str(token_file), token=None)
    assert proc.returncode == 0, proc.stderr
    assert receiver.seqs(journal.journal_id) == list(range(1, N + 1))
    journal.close()
    stored = b"".join(p.read_bytes() for p in home.root.glob("journal.db*"))
    assert TOKEN.encode() not in stored and b"not-the-token-77" not in stored


def _plant_ca(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A plant CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Plant 3 audit CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "audit.plant3.example")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (tmp_path / "plant-ca.pem", tmp_path / "server.pem", tmp_path / "server.key")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return paths


def test_tls_certificate_is_verified_and_a_plant_ca_can_be_given(journal: Journal, home: Home, tmp_path: Path) -> None:
    ca, cert, key = _plant_ca(tmp_path)
    r = Receiver(tmp_path / "tls-ingest.db", "--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert r.url.startswith("https://127.0.0.1:")
        proc = cli_sync(r.url)
        expect_failure(proc, 3, "the TLS certificate of 127.0.0.1 is not trusted", "--ca-bundle",
                       f"{N} entries stay pending")
        assert r.seqs(journal.journal_id) == [] and pending(home) == N
        proc = cli_sync(r.url, "--ca-bundle", str(ca))
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["acked_through"] == N
        assert r.seqs(journal.journal_id) == list(range(1, N + 1))
        expect_failure(cli_sync(r.url.replace("https", "http")), 3, "cannot reach the receiver")
    finally:
        r.stop()


def test_plain_http_is_refused_unless_loopback(journal: Journal) -> None:
    for url in ("http://192.0.2.10:8765", "http://audit.plant.example"):
        expect_failure(cli_sync(url, timeout=30), 2, "plain http is allowed only to this machine")
    expect_failure(cli_sync("ftp://127.0.0.1/x"), 2, "is not an https:// URL")
    expect_failure(cli_sync(f"https://user:{TOKEN}@127.0.0.1/"), 2, "carries credentials")


# ---- the receiver checks what it is given ---------------------------------------------------------------
def _post(port: int, journal_id: str, body: dict, key: str = "k") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", f"/v1/journals/{journal_id}/batches", body=json.dumps(body).encode(),
                 headers={"Authorization": f"Bearer {TOKEN}", "Idempotency-Key": key, "Content-Type": "application/json"})
    resp = conn.getresponse()
    doc = json.loads(resp.read())
    conn.close()
    return resp.status, doc


def _batch(journal: Journal, first: int, last: int) -> dict:
    entries = [e.to_json() for e in journal.entries(after_seq=first - 1, limit=last - first + 1)]
    return {"journal_id": journal.journal_id, "public_key_pem": journal.public_key_pem,
            "checkpoint": journal.checkpoint("test").to_json(), "entries": entries}


@pytest.mark.parametrize("mode", ["batch", "all"])
def test_receiver_refuses_broken_chains_forged_signatures_gaps_and_key_swaps(journal: Journal, tmp_path: Path,
                                                                             mode: str) -> None:
    r = Receiver(tmp_path / "ingest.db", "--signatures", mode)
    try:
        jid = journal.journal_id
        assert _post(r.port, jid, _batch(journal, 5, 10)) == (409, {
            "expected_seq": 1, "error": "this receiver holds seq 1..0; send from seq 1"})
        b = _batch(journal, 1, 10)
        b["entries"][3]["details"]["i"] = 999
        assert _post(r.port, jid, b)[0] == 422
        b = _batch(journal, 1, 10)
        b["entries"][3]["sig"] = b["entries"][4]["sig"]
        status, doc = _post(r.port, jid, b)
        assert (status, doc) == ((422, {"error": "seq 4: bad signature"}) if mode == "all" else (200, {"acked_through": 10}))
        if mode == "all":
            assert _post(r.port, jid, _batch(journal, 1, 10), key="k2") == (200, {"acked_through": 10})
        b = _batch(journal, 11, 20)
        b["entries"][-1]["sig"] = b["entries"][-2]["sig"]
        assert _post(r.port, jid, b, key="k3") == (422, {"error": "seq 20: bad signature"})
        b = _batch(journal, 5, 15)
        assert _post(r.port, jid, b, key="k4") == (200, {"acked_through": 15})
        assert _post(r.port, jid, b, key="k4") == (200, {"acked_through": 15})  # replayed
        assert _post(r.port, jid, _batch(journal, 16, 17), key="k4")[0] == 422  # key reused, other body
        other = Home(tmp_path / "other-home")
        init_identity(other, "mallory")
        with Journal.open(other) as m:
            m.record("cam-1", "x", "ok")
            b = _batch(journal, 16, 17)
            b["public_key_pem"] = m.public_key_pem
        assert _post(r.port, jid, b, key="k5")[0] == 422
        assert r.seqs(jid) == list(range(1, 16))
    finally:
        r.stop()
