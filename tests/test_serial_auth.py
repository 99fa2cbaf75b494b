"""Over a serial line only an authenticated operator may change a device (issue 10).

A simulated serial device (the real agent, `serve --serial`, behind a pty relay) with no operator key
refuses install, rollback, anchors and models remove (exit 4, saying how to provision a key) while
health, bench, journal and listing keep working; once the operator's key from `fieldkit init` is in
`etc/fieldkit/operators` (provisioned over a stdio link: what SSH is to the agent), the same commands
work. A replayed or forged answer to the device's challenge is refused and journaled on the device.
Over SSH and local links nothing is required.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest
from conftest import run_cli
from models import models  # noqa: F401  (session fixture)

from fieldkit.agent.operators import signed_document
from fieldkit.devices import check_agent_version, open_session
from fieldkit.errors import DeviceError
from fieldkit.inventory import add_device
from fieldkit.journal import Journal
from fieldkit.locations import Home
from fieldkit.release import create_release, keygen
from fieldkit.signing import canonical, generate_private_key, key_fingerprint, public_key_pem, sign_digest
from fieldkit.sim import Simulation

MODELS_DIR = "var/lib/fieldkit/models"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "rel.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("releases")
    out = {}
    for label, version in (("v1", "1.0.0"), ("v2", "2.0.0"), ("v3", "3.0.0")):
        out[label] = base / f"anomaly-{version}"
        create_release(models["anomaly-tabular"], name="anomaly", version=version, security_version=1,
                       smoke_random=1, key_path=key.private, out_dir=out[label])
    return out


def cli(*args: str, timeout: float = 180) -> tuple[int, dict | None, str, str]:
    proc = run_cli(*args, timeout=timeout)
    doc = json.loads(proc.stdout) if "--json" in args and proc.stdout.strip() else None
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, doc, proc.stdout, proc.stderr


def bake_release_key(root: Path, key) -> None:
    """The release key in the device image (as `fieldkit agent bundle --release-key` places it)."""
    from fieldkit.agent.anchors import file_name
    from fieldkit.agent.omsverify import load_public_pem

    pub = load_public_pem(Path(key.public).read_bytes())
    (root / "etc/fieldkit/trust" / file_name(pub)).write_bytes(pub.pem)


def active(root: Path) -> str | None:
    cur = root / MODELS_DIR / "anomaly" / "current"
    return os.readlink(cur) if cur.is_symlink() else None


def device_events(root: Path) -> list[dict]:
    path = root / "var/lib/fieldkit/journal.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def laptop_entries(home: Home, device: str, action: str) -> list:
    with Journal.open_readonly(home) as j:
        return [e for e in j.entries(device=device) if e.action == action]


# ---- the technician's commands ------------------------------------------------------------------
def test_serial_changes_need_an_operator_key_and_work_once_it_is_provisioned(home: Home, releases, key, models,
                                                                             tmp_path: Path) -> None:
    with Simulation(home, ssh=0, serial=1, operator_key=False) as sim:
        serial = sim.devices[0].name
        root = Path(sim.devices[0].root)
        bake_release_key(root, key)
        # The same device over a stdio link (the agent sees it as SSH sees it): nothing required there.
        add_device(home, "press-stdio", f"local:{root}")
        rc, doc, out, err = cli("install", "press-stdio", str(releases["v1"]), "--yes", "--json")
        assert rc == 0 and doc["result"] == "committed", (out, err)
        rc, doc, out, err = cli("install", "press-stdio", str(releases["v2"]), "--yes", "--json")
        assert rc == 0 and active(root) == "2.0.0", (out, err)

        # Reading over serial is open: health, key and model lists, bench (into the bench cache).
        rc, doc, out, err = cli("health", serial, "--json")
        assert rc in (0, 1) and doc["agent"]["root"] == str(root), err
        rc, doc, out, err = cli("anchors", "list", serial, "--json")
        assert rc == 0 and doc["device"] == serial and doc["operator_keys"] == [], err
        assert [k["fingerprint"] for k in doc["release_keys"]] == [key.fingerprint]
        assert set(doc["release_keys"][0]) >= {"fingerprint", "hint", "file"}
        rc, doc, out, err = cli("models", serial, "--json")
        assert rc == 0 and doc["models"][0]["active"] == "2.0.0", err
        rc, doc, out, err = cli("bench", serial, str(models["anomaly-tabular"]), "--runs", "3", "--json")
        assert rc == 0 and doc["model"]["uploaded"] is True, err
        assert list((root / "var/lib/fieldkit/bench-cache").glob("*.onnx"))

        # Every change over serial is refused, with the reason and how to provision a key.
        rc, doc, out, err = cli("install", serial, str(releases["v3"]), "--yes", "--json")
        assert rc == 4 and doc["result"] == "refused", (out, err)
        assert "no operator key" in doc["message"] and "--operator" in doc["message"], doc["message"]
        assert "agent bundle --operator-key" in doc["message"]
        assert not (root / MODELS_DIR / "anomaly" / "3.0.0").exists()
        assert not any((root / "var/lib/fieldkit/staging").iterdir())
        rc, doc, out, err = cli("rollback", serial, "anomaly", "--yes", "--json")
        assert rc == 4 and doc["result"] == "refused", (out, err)
        assert "no operator key" in doc["message"], doc["message"]
        rc, _, out, err = cli("models", "remove", serial, "anomaly", "1.0.0", "--yes")
        assert rc == 4 and "no operator key" in err and "model_remove" in err, err
        other = keygen(tmp_path / "other.pem")
        rc, _, out, err = cli("anchors", "add", serial, str(other.public), "--yes")
        assert rc == 4 and "fieldkit anchors add DEVICE" in err, err
        rc, _, out, err = cli("anchors", "remove", serial, key.fingerprint, "--yes")
        assert rc == 4 and "no operator key" in err, err
        rc, _, out, err = cli("anchors", "add", serial, str(other.public), "--operator", "--yes")
        assert rc == 4 and "no operator key" in err, err
        assert active(root) == "2.0.0" and (root / MODELS_DIR / "anomaly" / "1.0.0").is_dir()
        assert laptop_entries(home, serial, "auth.serial")[-1].outcome == "refused"
        assert "auth.refused" in [e["event"] for e in device_events(root)]

        # Provision the operator's key (over the stdio link, as over SSH) ...
        rc, _, pem, err = cli("init", "--show-public-key")
        assert rc == 0 and pem.startswith("-----BEGIN PUBLIC KEY-----"), err
        (tmp_path / "op.pub.pem").write_text(pem)
        rc, doc, out, err = cli("anchors", "add", "press-stdio", str(tmp_path / "op.pub.pem"), "--operator", "--yes",
                                "--json")
        assert rc == 0 and doc["added"] and doc["kind"] == "operator", err
        me = doc["fingerprint"]
        rc, doc, out, err = cli("anchors", "list", serial, "--json")
        assert [k["fingerprint"] for k in doc["operator_keys"]] == [me], doc
        assert [k["fingerprint"] for k in doc["release_keys"]] == [key.fingerprint]

        # ... and the same commands work over serial.
        rc, doc, out, err = cli("rollback", serial, "anomaly", "--yes", "--json")
        assert rc == 0 and doc["after"] == "1.0.0" and active(root) == "1.0.0", (out, err)
        rc, doc, out, err = cli("install", serial, str(releases["v3"]), "--yes", "--json")
        assert rc == 0 and doc["result"] == "committed" and active(root) == "3.0.0", (out, err)
        rc, _, out, err = cli("models", "remove", serial, "anomaly", "2.0.0", "--yes")
        assert rc == 0 and not (root / MODELS_DIR / "anomaly" / "2.0.0").exists(), err
        rc, _, out, err = cli("anchors", "add", serial, str(other.public), "--yes")
        assert rc == 0, err
        rc, _, out, err = cli("anchors", "remove", serial, other.fingerprint, "--yes")
        assert rc == 0, err
        assert laptop_entries(home, serial, "auth.serial")[-1].outcome == "ok"
        events = device_events(root)
        ok = [e for e in events if e["event"] == "auth.ok"]
        assert ok and ok[-1]["details"]["fingerprint"] == me
        assert "operators.add" in [e["event"] for e in events]

        # Removing the operator key (over stdio) ends what an open serial session may do.
        with open_session(serial, home) as session:
            assert session.auth is not None and session.auth.ok
            rc, _, out, err = cli("anchors", "remove", "press-stdio", me, "--operator", "--yes")
            assert rc == 0, err
            with pytest.raises(DeviceError) as exc:
                session.call("model_remove", {"name": "anomaly", "version": "1.0.0"})
            assert exc.value.code == "not_authenticated" and exc.value.exit_code == 4
            assert "no longer listed" in exc.value.message


def test_over_ssh_nothing_is_required(home: Home, key, tmp_path: Path) -> None:
    with Simulation(home, ssh=1, serial=0, operator_key=False) as sim:
        name = sim.devices[0].name
        rc, doc, out, err = cli("anchors", "add", name, str(key.public), "--yes", "--json")
        assert rc == 0 and doc["added"], err
        rc, _, pem, err = cli("init", "--show-public-key")
        (tmp_path / "op.pub.pem").write_text(pem)
        rc, doc, out, err = cli("anchors", "add", name, str(tmp_path / "op.pub.pem"), "--operator", "--yes",
                                "--json")
        assert rc == 0 and doc["kind"] == "operator", err
        rc, doc, out, err = cli("anchors", "list", name, "--json")
        assert len(doc["operator_keys"]) == 1 and len(doc["release_keys"]) == 1, doc
        rc, doc, out, err = cli("anchors", "remove", name, doc["operator_keys"][0]["fingerprint"], "--operator",
                                "--yes", "--json")
        assert rc == 0 and doc["removed"], err
        with open_session(name, home) as session:
            assert session.auth is None and session.hello.auth_required is False
        assert not laptop_entries(home, name, "auth.serial")


# ---- the protocol: one answer per challenge, from a key the device accepts --------------------------
def _answer(challenge, private_key, claim_pem: str | None = None, **change) -> dict:
    """A signed answer to ``challenge`` (a parsed auth_challenge result); ``change`` alters the signed
    document's fields, ``claim_pem`` the public key sent with it."""
    pub = private_key.public_key()
    doc = signed_document(challenge.model_dump(), key_fingerprint(pub))
    doc.update(change)
    sig = sign_digest(private_key, hashlib.sha256(canonical(doc)).digest())
    return {"nonce": challenge.nonce, "signature": sig, "public_key": claim_pem or public_key_pem(pub)}


def _refused(session, args: dict) -> str:
    with pytest.raises(DeviceError) as exc:
        session.call("auth_response", args)
    assert exc.value.exit_code == 4
    return exc.value.code


def _may_change(session) -> bool:
    """Probe without changing anything: removing a version that is not installed."""
    try:
        session.call("model_remove", {"name": "none", "version": "1.0.0"})
    except DeviceError as exc:
        assert exc.code in ("not_authenticated", "version_not_installed"), exc
        return exc.code != "not_authenticated"
    raise AssertionError("removed a version that does not exist")


def _only_the_bench_cache_is_writable(session, root: Path) -> None:
    """An unauthenticated serial session uploads into the bench cache and nowhere else."""
    import io

    cache = "/var/lib/fieldkit/bench-cache"
    assert session.link.upload(io.BytesIO(b"hi"), f"{cache}/probe.bin", size=2)["size"] == 2
    assert session.call("remove", {"path": f"{cache}/probe.bin"}).removed
    (root / "var/lib/fieldkit/bench-cache/escape").symlink_to(root / "etc/fieldkit/operators")
    for dest in ("/etc/fieldkit/operators/evil.pem", "/var/lib/fieldkit/models/x", f"{cache}/../models/x",
                 f"{cache}/escape/evil.pem"):
        with pytest.raises(DeviceError) as exc:
            session.link.upload(io.BytesIO(b"hi"), dest, size=2)
        assert exc.value.code == "not_authenticated" and "outside the bench cache" in exc.value.message, dest
    for op, args in (("remove", {"path": "/etc/fieldkit/agent.json"}), ("bench", {"lock": "/etc/fieldkit/x.lock"})):
        with pytest.raises(DeviceError) as exc:
            session.call(op, args)
        assert exc.value.code == "not_authenticated", op
    assert not (root / "etc/fieldkit/operators/evil.pem").exists()
    (root / "var/lib/fieldkit/bench-cache/escape").unlink()


def test_replayed_and_forged_answers_are_refused(home: Home) -> None:
    from fieldkit.journal.identity import load_identity

    ident = load_identity(home)
    me = ident.private_key
    stranger = generate_private_key()
    with Simulation(home, ssh=0, serial=1) as sim:  # the operator's key is in the simulated image
        name = sim.devices[0].name
        root = Path(sim.devices[0].root)
        with open_session(name, home) as a:
            assert a.auth is not None and a.auth.ok and a.auth.fingerprint == ident.fingerprint
            assert a.hello.transport == "serial" and a.hello.auth_required is True
            assert _may_change(a)
            first = a.call("auth_challenge")
            assert first.purpose == "fieldkit-operator-auth/1" and first.required and first.operators == 1
            answer = _answer(first, me)
            assert a.call("auth_response", answer).authenticated
            assert _refused(a, answer) == "no_challenge"          # the same answer again
            second = a.call("auth_challenge")
            assert second.nonce != first.nonce and second.session == first.session
            assert _refused(a, answer) == "stale_challenge"       # an old answer to a new challenge
            assert not _may_change(a)                              # a refused attempt drops the session's right
            a.call("auth_challenge")
            assert _refused(a, _answer(second, me)) == "stale_challenge"
            third = a.call("auth_challenge")
            assert _refused(a, _answer(third, me, nonce="0" * 64)) == "bad_signature"   # altered nonce signed
            c = a.call("auth_challenge")
            assert _refused(a, _answer(c, stranger)) == "unknown_operator"             # a key it does not know
            c = a.call("auth_challenge")
            forged = _answer(c, stranger, claim_pem=ident.public_key_pem)               # claims to be me
            assert _refused(a, forged) == "bad_signature"
            assert not _may_change(a)
            _only_the_bench_cache_is_writable(a, root)
            for _ in range(2):                                                          # 8 refusals: no more
                c = a.call("auth_challenge")
                assert _refused(a, _answer(c, me, root="/elsewhere")) == "bad_signature"
            with pytest.raises(DeviceError) as exc:
                a.call("auth_challenge")
            assert exc.value.code == "too_many_attempts"
            session_a = first.session
        with open_session(name, home) as b:                         # the next session starts afresh
            assert b.auth.ok and _may_change(b)
            mine = b.call("auth_challenge")
            assert mine.session != session_a
            assert _refused(b, _answer(first, me)) == "stale_challenge"    # another session's answer
            mine = b.call("auth_challenge")
            other_session = _answer(mine, me, session=session_a)            # signed for the other session
            assert _refused(b, other_session) == "bad_signature"
            assert _refused(b, {"nonce": mine.nonce, "signature": "AAAA", "fingerprint": ident.fingerprint}) \
                == "no_challenge"
        refused = [e["details"]["code"] for e in device_events(root) if e["event"] == "auth.refused"]
        assert {"no_challenge", "stale_challenge", "bad_signature", "unknown_operator"} <= set(refused), refused
        assert all(e["event"] != "model.remove" for e in device_events(root))


def test_bad_arguments_are_coded_and_nothing_is_signed_for_a_strange_challenge(home: Home) -> None:
    with Simulation(home, ssh=0, serial=1) as sim:
        with open_session(sim.devices[0].name, home) as s:
            for args in ({}, {"nonce": 1, "signature": "x", "fingerprint": "y"},
                         {"nonce": "a" * 64, "signature": "x"}, {"nonce": "a" * 64, "signature": "x" * 5000,
                                                                  "fingerprint": "y"}):
                with pytest.raises(DeviceError) as exc:
                    s.call("auth_response", args)
                assert exc.value.code == "bad_args", (args, exc.value)
            c = s.call("auth_challenge")
            bad_pem = {"nonce": c.nonce, "signature": base64.b64encode(b"x").decode(), "public_key": "junk"}
            assert _refused(s, bad_pem) == "bad_key"
            # a device that asks the laptop to sign something else gets nothing signed
            from fieldkit import wire
            with pytest.raises(DeviceError):
                wire.parse_result("auth_challenge", {**c.model_dump(), "purpose": "journal"}, device="x")


def test_an_older_serial_agent_is_reported(home: Home) -> None:
    from fieldkit import notices

    seen: list[str] = []
    notices.set_handler(seen.append)
    try:
        with Simulation(home, ssh=0, serial=1) as sim:
            name = sim.devices[0].name
            with open_session(name, home) as s:
                assert not s.warnings and not seen  # the same version: nothing to say
                s.hello = s.hello.model_copy(update={"agent_version": "0.0.9"})
                text = check_agent_version(s)
            assert text and "0.0.9" in text and "older" in text and seen == [text]
            entry = laptop_entries(home, name, "agent.outdated")[-1]
            assert entry.details["agent_version"] == "0.0.9"
    finally:
        notices.set_handler(None)
