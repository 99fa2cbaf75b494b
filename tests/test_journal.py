"""The operator journal: identity, append-only signed chain, faults, tampering, bundles, and the
device journal witnessed over a real agent (``local:`` link). Real SQLite files, real processes."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import ROOT, run_cli
from fieldkit.agent.devjournal import DeviceJournal, entry_hash
from fieldkit.auditbundle import verify_bundle
from fieldkit.errors import Cancelled, DeviceError
from fieldkit.journal import IdentityMissing, Journal, canonical, entry_bytes, init_identity
from fieldkit.devices import open_session
from fieldkit.locations import Home

pytestmark = pytest.mark.no_identity  # these tests create (or deliberately omit) the identity

DEVICE_JOURNAL = "var/lib/fieldkit/journal.jsonl"


@pytest.fixture
def journal(home: Home):
    init_identity(home, "ana")
    with Journal.open(home) as j:
        yield j


def fill(j: Journal, n: int, device: str = "cam-1") -> None:
    for i in range(n):
        j.record(device, "health.check", "ok", {"mark": f"mark-{i:04d}", "status": "ok"})


def raw_db(home: Home, *statements: str) -> None:
    """Change the database behind fieldkit's back (what an attacker with file access can do)."""
    conn = sqlite3.connect(home.journal_db)
    for t in ("entries_no_update", "entries_no_delete", "checkpoints_no_update", "checkpoints_no_delete",
              "device_entries_no_update", "device_entries_no_delete"):
        conn.execute(f"DROP TRIGGER IF EXISTS {t}")
    for s in statements:
        conn.execute(s)
    conn.commit()
    conn.close()


def wait_until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def count_entries(home: Home) -> int:
    try:
        conn = sqlite3.connect(f"file:{home.journal_db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM entries").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:
        return 0


# ---- identity --------------------------------------------------------------------------------------
def test_without_identity_operations_refuse_and_say_how(home: Home) -> None:
    with pytest.raises(IdentityMissing) as err:
        Journal.open(home)
    assert err.value.exit_code == 2
    assert "fieldkit init --operator NAME" in str(err.value)
    for args in (["audit", "show"], ["audit", "export", "--out", str(home.root / "b.json")], ["audit", "verify"]):
        proc = run_cli(*args)
        assert proc.returncode == 2, proc.stderr
        assert "fieldkit init --operator NAME" in proc.stderr
    assert not home.journal_db.exists()


def test_init_creates_a_private_p256_key_and_never_replaces_it(home: Home) -> None:
    from cryptography.hazmat.primitives import serialization

    proc = run_cli("init", "--operator", "Ana Técnica", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["status"] == "created"
    assert home.operator_key.stat().st_mode & 0o777 == 0o600
    key = serialization.load_pem_private_key(home.operator_key.read_bytes(), None)
    assert key.curve.name == "secp256r1"
    pem_before = home.operator_key.read_bytes()

    proc = run_cli("init", "--operator", "Ana T.", "--json")
    assert proc.returncode == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["status"] == "renamed"
    assert again["key_fingerprint"] == doc["key_fingerprint"]
    assert home.operator_key.read_bytes() == pem_before
    with Journal.open_readonly(home) as j:
        entries = j.entries()
    assert [(e.action, e.operator) for e in entries] == [("operator.init", "Ana Técnica"), ("operator.rename", "Ana T.")]
    assert entries[0].details["key_fingerprint"] == doc["key_fingerprint"]


def test_a_key_readable_by_others_is_refused(home: Home) -> None:
    init_identity(home, "ana")
    home.operator_key.chmod(0o644)
    with pytest.raises(Exception, match="chmod 600"):
        Journal.open(home)


# ---- the chain -------------------------------------------------------------------------------------
def test_entries_are_chained_and_signed_as_openssl_verifies(journal: Journal, tmp_path: Path) -> None:
    fill(journal, 3)
    e = journal.entries()[-1]
    body = canonical({"v": 1, "journal": journal.journal_id, "seq": e.seq, "time": e.time, "operator": e.operator,
                      "device": e.device, "action": e.action, "outcome": e.outcome, "details": e.details,
                      "prev": e.prev})
    assert body == entry_bytes(journal.journal_id, e.seq, e.time, e.operator, e.device, e.action, e.outcome,
                               json.dumps(e.details, sort_keys=True, separators=(",", ":")), e.prev)
    import base64
    import hashlib

    assert hashlib.sha256(body).hexdigest() == e.hash
    assert journal.entries()[-2].hash == e.prev
    (tmp_path / "entry.json").write_bytes(body)
    (tmp_path / "entry.sig").write_bytes(base64.b64decode(e.sig))
    (tmp_path / "pub.pem").write_text(journal.public_key_pem)
    out = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(tmp_path / "pub.pem"), "-signature",
                          str(tmp_path / "entry.sig"), str(tmp_path / "entry.json")], capture_output=True, text=True)
    assert out.stdout.strip() == "Verified OK", out.stderr


def test_entries_cannot_be_updated_or_deleted_through_sqlite(journal: Journal, home: Home) -> None:
    fill(journal, 2)
    conn = sqlite3.connect(home.journal_db)
    for stmt in ("UPDATE entries SET outcome='failed' WHERE seq=1", "DELETE FROM entries WHERE seq=2"):
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute(stmt)
    conn.close()
    assert journal.verify().ok


def test_secrets_never_reach_the_journal(journal: Journal, home: Home) -> None:
    secrets = ["tok-5ecr3t-aaaa", "hunter2-pass", "bearer-zzzz-1234", "sk-apikey-9999"]
    pem = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIDeadBeef\n-----END EC PRIVATE KEY-----"
    entry = journal.record("cam-1", "sync.configure", "ok", {
        "token": secrets[0], "nested": {"Password": secrets[1], "list": [{"api_key": secrets[3]}]},
        "header": f"Bearer {secrets[2]}", "key_material": pem, "private_key_path": "/etc/k.pem",
        "host_key_fingerprint": "SHA256:abc", "model": Path("/models/yolo"),
    })
    d = entry.details
    assert d["token"] == d["nested"]["Password"] == d["nested"]["list"][0]["api_key"] == "[redacted]"
    assert d["header"] == d["key_material"] == d["private_key_path"] == "[redacted]"
    assert d["host_key_fingerprint"] == "SHA256:abc" and d["model"] == "/models/yolo"
    journal.close()
    stored = b"".join(p.read_bytes() for p in home.root.glob("journal.db*"))
    for s in secrets + ["MHcCAQEEIDeadBeef"]:
        assert s.encode() not in stored
    with Journal.open(home) as j:
        assert j.verify().ok
        with pytest.raises(TypeError):
            j.record("cam-1", "x", "ok", {"when": object()})
        assert j.head()[0] == entry.seq  # nothing half-written


def test_operation_records_ok_failed_refused_and_cancelled(journal: Journal) -> None:
    with journal.operation("cam-1", "health.check", {"profile": "rpi5"}) as op:
        op.details["status"] = "warn"
    with pytest.raises(DeviceError):
        with journal.operation("cam-1", "model.activate"):
            raise DeviceError("cam-1: activate failed: disk full", code="io_error")
    with pytest.raises(DeviceError):
        with journal.operation("cam-1", "model.sideload") as op:
            op.outcome = "refused"
            raise DeviceError("signature does not verify", code="bad_signature")
    with pytest.raises(Cancelled):
        with journal.operation("cam-1", "bench.run"):
            raise Cancelled("bench cancelled at 40 of 100 runs")
    got = [(e.action, e.outcome, e.details) for e in journal.entries()]
    assert got[0] == ("health.check", "ok", {"profile": "rpi5", "status": "warn"})
    assert got[1][:2] == ("model.activate", "failed") and got[1][2]["code"] == "io_error"
    assert "disk full" in got[1][2]["error"] and got[1][2]["exit_code"] == 4
    assert got[2][:2] == ("model.sideload", "refused")
    assert got[3][:2] == ("bench.run", "cancelled") and "40 of 100" in got[3][2]["error"]
    assert journal.verify().ok


def test_threads_and_processes_append_to_one_chain(journal: Journal, home: Home) -> None:
    code = ("import sys\nfrom fieldkit.journal import Journal\nfrom fieldkit.locations import Home\n"
            "j = Journal.open(Home.current())\n"
            "for i in range(150): j.record('proc-' + sys.argv[1], 'health.check', 'ok', {'i': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)], cwd=ROOT) for n in range(2)]
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(100):
                journal.record(f"thread-{n}", "health.check", "ok", {"i": i})
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert [p.wait(120) for p in procs] == [0, 0]
    assert not errors
    res = journal.verify()
    assert res.ok, res.message
    assert res.entries == 4 * 100 + 2 * 150
    per_device = {}
    for e in journal.entries():
        per_device.setdefault(e.device, []).append(e.details["i"])
    assert all(v == list(range(len(v))) for v in per_device.values())  # each writer's order kept


# ---- faults ----------------------------------------------------------------------------------------
def test_writer_killed_mid_append_leaves_a_whole_chain(journal: Journal, home: Home) -> None:
    code = ("from fieldkit.journal import Journal\nfrom fieldkit.locations import Home\n"
            "j = Journal.open(Home.current())\ni = 0\n"
            "while True:\n    j.record('cam-1', 'stress', 'ok', {'i': i, 'pad': 'x' * 700}); i += 1\n")
    for round_ in range(3):
        before = count_entries(home)
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        try:
            wait_until(lambda: count_entries(home) >= before + 150 + 37 * round_, what="the writer to append")
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
        assert proc.returncode == -signal.SIGKILL
    with Journal.open_readonly(home) as j:
        res = j.verify()
        assert res.ok, res.message
        last = j.entries(limit=1, newest=True)[0]
    assert last.action == "stress" and last.details["pad"] == "x" * 700  # whole, not torn
    conn = sqlite3.connect(home.journal_db)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    conn.close()
    journal.record("cam-1", "after", "ok")  # the journal carries on
    assert journal.verify().ok


def test_disk_full_mid_append_is_a_clear_error_and_leaves_no_partial_entry(journal: Journal, home: Home) -> None:
    journal.record("cam-1", "before", "ok")
    journal.close()
    code = (
        "import json, os, resource, signal\n"
        "from fieldkit.journal import Journal, JournalError\nfrom fieldkit.locations import Home\n"
        "h = Home.current(); j = Journal.open(h)\n"
        "size = max(os.path.getsize(p) for p in h.root.glob('journal.db*'))\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (size + 50000, size + 50000))\n"
        "n = 0\n"
        "try:\n"
        "    while n < 10000:\n"
        "        j.record('cam-1', 'fill', 'ok', {'n': n, 'blob': 'y' * 3000}); n += 1\n"
        "except JournalError as exc:\n"
        "    print(json.dumps({'recorded': n, 'error': str(exc), 'exit_code': exc.exit_code}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert 0 < out["recorded"] < 10000
    assert "cannot write the operator journal" in out["error"] and "nothing was recorded" in out["error"]
    assert "free disk space" in out["error"] and out["exit_code"] == 2
    with Journal.open(home) as j:
        res = j.verify()
        assert res.ok, res.message
        fills = j.entries(action="fill")
        assert [e.details["n"] for e in fills] == list(range(out["recorded"]))
        assert all(e.details["blob"] == "y" * 3000 for e in fills)
        j.record("cam-1", "after", "ok")
        assert j.verify().ok


# ---- tampering -------------------------------------------------------------------------------------
def test_one_byte_altered_in_the_database_file_is_named(journal: Journal, home: Home) -> None:
    fill(journal, 20)
    seq = journal.entries(limit=1, newest=True)[0].seq - 20 + 8  # the entry with mark-0007
    journal.close()
    assert not Path(str(home.journal_db) + "-wal").exists() or Path(str(home.journal_db) + "-wal").stat().st_size == 0
    data = bytearray(home.journal_db.read_bytes())
    at = data.find(b"mark-0007")
    assert at > 0 and data.find(b"mark-0007", at + 1) == -1
    data[at + 8] = ord("8")  # mark-0007 -> mark-0008
    home.journal_db.write_bytes(bytes(data))
    proc = run_cli("audit", "verify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"FAILED at seq {seq} (altered)" in proc.stdout
    proc = run_cli("audit", "verify", "--json")
    doc = json.loads(proc.stdout)
    assert (doc["ok"], doc["bad_seq"], doc["problem"]) == (False, seq, "altered")


def test_a_database_file_damaged_beyond_reading_fails_verification(journal: Journal, home: Home) -> None:
    fill(journal, 3)
    journal.close()
    data = bytearray(home.journal_db.read_bytes())
    data[:16] = b"not a database!!"
    home.journal_db.write_bytes(bytes(data))
    proc = run_cli("audit", "verify")
    assert proc.returncode == 1
    assert "journal.db is damaged: file is not a database" in proc.stderr


def test_a_deleted_entry_is_named(journal: Journal, home: Home) -> None:
    fill(journal, 10)
    raw_db(home, "DELETE FROM entries WHERE seq = 5")
    res = journal.verify()
    assert (res.ok, res.bad_seq, res.problem) == (False, 5, "missing")
    proc = run_cli("audit", "verify")
    assert proc.returncode == 1 and "seq 5 is missing" in proc.stdout


def test_reordered_entries_and_a_bad_signature_are_named(journal: Journal, home: Home) -> None:
    fill(journal, 10)
    cols = "time, operator, device, action, outcome, details, prev, hash, sig"
    raw_db(home,
           f"CREATE TEMP TABLE swap AS SELECT seq, {cols} FROM entries WHERE seq IN (6, 7)",
           "UPDATE entries SET " + ", ".join(f"{c} = (SELECT {c} FROM swap WHERE swap.seq = 13 - entries.seq)"
                                             for c in cols.split(", ")) + " WHERE seq IN (6, 7)")
    res = journal.verify()
    assert (res.bad_seq, res.problem) == (6, "reordered"), res.message


def test_a_forged_signature_is_named(journal: Journal, home: Home) -> None:
    fill(journal, 10)
    raw_db(home, "UPDATE entries SET sig = (SELECT sig FROM entries WHERE seq = 4) WHERE seq = 3")
    res = journal.verify()
    assert (res.ok, res.bad_seq, res.problem) == (False, 3, "bad signature"), res.message


def test_tail_truncated_against_a_checkpoint_is_named(journal: Journal, home: Home) -> None:
    fill(journal, 30)
    cp = journal.checkpoint(witness="cam-1")
    assert cp.seq == 30
    raw_db(home, "DELETE FROM entries WHERE seq >= 25")
    res = journal.verify()
    assert (res.ok, res.bad_seq, res.problem) == (False, 25, "truncated")
    assert "covers seq 30" in res.message and "cam-1" in res.message
    proc = run_cli("audit", "verify")
    assert proc.returncode == 1 and "FAILED at seq 25 (truncated)" in proc.stdout


# ---- export bundles --------------------------------------------------------------------------------
def test_exported_bundle_verifies_on_another_machine_and_tampering_fails(journal: Journal, home: Home,
                                                                         tmp_path: Path) -> None:
    fill(journal, 25)
    bundle = tmp_path / "audit.json"
    proc = run_cli("audit", "export", "--out", str(bundle), "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["entries"] == 25
    elsewhere = {"FIELDKIT_HOME": str(tmp_path / "auditor-home")}
    proc = run_cli("audit", "verify", "--bundle", str(bundle), "--fingerprint", summary["key_fingerprint"], env=elsewhere)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok: bundle" in proc.stdout and "25 entries" in proc.stdout

    doc = json.loads(bundle.read_text())

    def check(mutate, seq, problem, **kw) -> None:
        d = json.loads(json.dumps(doc))
        mutate(d)
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(d))
        res = verify_bundle(bad, **kw)
        assert (res.ok, res.bad_seq, res.problem) == (False, seq, problem), res.message

    check(lambda d: d["entries"][9]["details"].update(status="crit"), 10, "altered")
    check(lambda d: d["entries"].pop(), 25, "truncated")
    check(lambda d: d["entries"].pop(12), 13, "missing")
    check(lambda d: d["entries"].insert(4, d["entries"].pop(5)), 5, "reordered")
    check(lambda d: d["entries"][3].update(sig=d["entries"][4]["sig"]), 4, "bad signature")
    check(lambda d: None, None, "wrong key", expect_fingerprint="SHA256:someone-else")
    check(lambda d: d["entries"][6].update(outcome="ok", device="cam-9"), 7, "altered")
    proc = run_cli("audit", "verify", "--bundle", str(tmp_path / "bad.json"), env=elsewhere)
    assert proc.returncode == 1 and "FAILED at seq 7 (altered)" in proc.stdout


# ---- the device journal ----------------------------------------------------------------------------
def test_device_journal_appends_repairs_a_torn_tail_and_detects_edits(tmp_path: Path) -> None:
    dj = DeviceJournal(str(tmp_path / "journal.jsonl"))
    for i in range(5):
        dj.append("model.activated", {"i": i})
    with open(dj.path, "ab") as fh:
        fh.write(b'{"v":1,"journal":"x","seq":6,"ti')  # power lost mid-write
    assert dj.head()["seq"] == 5
    e = dj.append("model.activated", {"i": 5})
    assert e["seq"] == 6 and dj.verify()["ok"]
    lines = Path(dj.path).read_bytes().splitlines()
    assert len(lines) == 6 and all(json.loads(l)["hash"] == entry_hash(json.loads(l)) for l in lines)
    lines[2] = lines[2].replace(b'"i":2', b'"i":9')
    Path(dj.path).write_bytes(b"\n".join(lines) + b"\n")
    assert dj.verify() == {"ok": False, "entries": 3, "bad_seq": 3, "problem": "altered",
                           "message": "seq 3 was altered: its content does not match its hash"}


def test_device_journal_takes_appends_from_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    code = ("import sys\nfrom fieldkit.agent.devjournal import DeviceJournal\n"
            "dj = DeviceJournal(sys.argv[1])\n"
            "for i in range(100): dj.append('stress', {'w': sys.argv[2], 'i': i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path), str(n)], cwd=ROOT) for n in range(3)]
    assert [p.wait(120) for p in procs] == [0, 0, 0]
    res = DeviceJournal(str(path)).verify()
    assert res["ok"] and res["entries"] == 300


@pytest.fixture
def device(home: Home, device_root: Path):
    with open_session(f"local:{device_root}", home, timeout=20, witness=False) as session:
        yield session, device_root, DeviceJournal(str(device_root / DEVICE_JOURNAL))


def test_witness_writes_a_checkpoint_and_pulls_the_device_journal_once(journal: Journal, device) -> None:
    link, root, dj = device
    for i in range(4):
        dj.append("model.activated", {"i": i})
    fill(journal, 3)
    r1 = journal.witness(link, "cam-1")
    assert r1.ok, r1.problems
    assert (r1.pulled, r1.device_head_seq) == (5, 5)  # 4 events + the checkpoint
    written = json.loads((root / DEVICE_JOURNAL).read_bytes().splitlines()[-1])
    assert written["event"] == "laptop.checkpoint"
    assert (written["details"]["seq"], written["details"]["head"]) == (r1.checkpoint.seq, r1.checkpoint.head)
    assert r1.entry.action == "journal.witness" and r1.entry.details["device_head_hash"] == written["hash"]

    dj.append("model.rolled_back", {"to": "1.3"})
    r2 = journal.witness(link, "cam-1")
    assert r2.ok, r2.problems
    assert (r2.pulled, r2.device_head_seq) == (2, 7)
    r3 = journal.witness(link, "cam-1")
    assert r3.pulled == 1
    stored = journal.device_entries(r1.device_journal_id)
    assert [e["seq"] for e in stored] == list(range(1, 9))  # each seq exactly once
    assert [e["hash"] for e in stored] == [json.loads(l)["hash"] for l in (root / DEVICE_JOURNAL).read_bytes().splitlines()]
    res = journal.verify()
    assert res.ok and res.device_journals[0]["entries"] == 8


def test_witness_pulls_a_large_device_journal_in_bounded_reads(journal: Journal, device) -> None:
    link, root, dj = device
    note = "äöüßÄÖÜ" * 50  # non-ASCII: JSON escaping (\u00e4) triples its size in the answer
    for i in range(1200):
        dj.append("inference.alarm", {"i": i, "note": note})
    assert (root / DEVICE_JOURNAL).stat().st_size > 3 * 256 * 1024
    rep = journal.witness(link, "cam-1")
    assert rep.ok, rep.problems
    assert (rep.pulled, rep.device_head_seq) == (1201, 1201)
    stored = journal.device_entries(rep.device_journal_id)
    assert [e["seq"] for e in stored] == list(range(1, 1202)) and stored[600]["details"]["note"] == note


def test_witness_detects_a_tampered_device_journal(journal: Journal, device) -> None:
    link, root, dj = device
    for i in range(6):
        dj.append("model.activated", {"i": i})
    assert journal.witness(link, "cam-1").ok
    path = root / DEVICE_JOURNAL
    lines = path.read_bytes().splitlines()
    # someone edits an event that was already pulled, and fixes up every hash after it
    entries = [json.loads(l) for l in lines]
    entries[2]["details"]["i"] = 99
    for k in range(2, len(entries)):
        if k > 2:
            entries[k]["prev"] = entries[k - 1]["hash"]
        entries[k]["hash"] = entry_hash(entries[k])
    path.write_bytes(b"".join(canonical(e) + b"\n" for e in entries))
    rep = journal.witness(link, "cam-1")
    assert not rep.ok
    assert any("rewritten" in p and f"seq {len(entries)}" in p for p in rep.problems), rep.problems
    assert rep.entry.outcome == "failed"

    # an edit that leaves the hash stale is named by the device's own check
    lines = path.read_bytes().splitlines()
    lines[1] = lines[1].replace(b'"i":1', b'"i":7')
    path.write_bytes(b"\n".join(lines) + b"\n")
    rep = journal.witness(link, "cam-1")
    assert any("damaged at seq 2" in p for p in rep.problems), rep.problems


def test_witness_detects_a_truncated_device_journal_and_a_replaced_one(journal: Journal, device) -> None:
    link, root, dj = device
    for i in range(5):
        dj.append("model.activated", {"i": i})
    assert journal.witness(link, "cam-1").ok
    path = root / DEVICE_JOURNAL
    path.write_bytes(b"".join(l + b"\n" for l in path.read_bytes().splitlines()[:3]))
    rep = journal.witness(link, "cam-1")
    assert any("truncated" in p and "holds seq 6" in p for p in rep.problems), rep.problems
    path.unlink()
    rep = journal.witness(link, "cam-1")
    assert any("was replaced" in p for p in rep.problems), rep.problems


def test_the_device_catches_a_truncated_laptop_journal(journal: Journal, home: Home, device) -> None:
    link, _, _ = device
    fill(journal, 20)
    assert journal.witness(link, "cam-1").ok  # the device now holds a checkpoint for seq 20
    # cut the laptop's tail and its local checkpoints: nothing on the laptop shows it ...
    raw_db(home, "DELETE FROM entries WHERE seq > 15", "DELETE FROM checkpoints")
    assert journal.verify().ok
    # ... but the device does, on the next connect
    rep = journal.witness(link, "cam-1")
    assert any("this laptop's journal was truncated" in p and "ends at seq 15" in p for p in rep.problems), rep.problems


def test_an_agent_without_journal_ops_is_reported_not_fatal(journal: Journal) -> None:
    class OldAgent:
        hello = SimpleNamespace(agent_version="0.0.9")

        def call(self, op, args=None, **kw):
            raise DeviceError(f"this agent has no operation {op!r}", code="unknown_op")

    rep = journal.witness(OldAgent(), "old-cam")
    assert rep.problems == ["the agent on old-cam (version 0.0.9) keeps no journal; update the agent"]
    assert rep.entry.outcome == "failed"
