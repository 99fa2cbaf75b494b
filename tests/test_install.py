"""Signed releases end to end: `fieldkit anchors|install|models|rollback` against the real agent on
real files (local:, simulated SSH and serial devices), real onnxruntime smoke tests, the real journal.

What a technician checks is what these tests assert: which version is active, what the journal
says, whether the device holds a complete, verified model after a cut cable or a killed laptop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from models import models  # noqa: F401  (session fixture)

from fieldkit.devices import open_session
from fieldkit.errors import Cancelled, DeviceError, LinkLost
from fieldkit.install import install_release
from fieldkit.inventory import add_device
from fieldkit.journal import Journal
from fieldkit.locations import Home
from fieldkit.release import create_release, keygen, sign_release

ANOMALY = "anomaly-tabular"
MOBILENET = "mobilenetv2-like"
MODELS_DIR = "var/lib/fieldkit/models"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "rel.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict[str, Path]:
    """v1.0.0 and v2.0.0 (security 1), v3.0.0 (security 2, a security fix), a release whose signed
    reference outputs are wrong (its smoke test fails on any device), and a bigger model for resuming."""
    base = tmp_path_factory.mktemp("releases")
    out: dict[str, Path] = {}
    for label, version, sv in (("v1", "1.0.0", 1), ("v2", "2.0.0", 1), ("v3", "3.0.0", 2), ("bad", "4.0.0", 2)):
        out[label] = base / f"anomaly-{version}"
        create_release(models[ANOMALY], name="anomaly", version=version, security_version=sv, smoke_random=2,
                       key_path=key.private, out_dir=out[label])
    ref = out["bad"] / "smoke" / "outputs.npz"
    with np.load(ref) as z:
        wrong = {k: z[k] + 1.0 for k in z.files}
    np.savez(ref, **wrong)
    sign_release(out["bad"], key.private)
    out["big"] = base / "mobilenet-1.0.0"
    create_release(models[MOBILENET], name="mobilenet", version="1.0.0", security_version=1, smoke_random=1,
                   key_path=key.private, out_dir=out["big"])
    return out


@pytest.fixture
def dev(home: Home, device_root: Path) -> tuple[str, Path]:
    add_device(home, "press-1", f"local:{device_root}")
    return "press-1", device_root


def cli(*args: str, timeout: float = 180) -> tuple[int, dict | None, str, str]:
    proc = run_cli(*args, timeout=timeout)
    doc = None
    if "--json" in args and proc.stdout.strip():
        doc = json.loads(proc.stdout)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, doc, proc.stdout, proc.stderr


def trust(name: str, key) -> None:
    rc, _, out, err = cli("anchors", "add", name, str(key.public), "--yes")
    assert rc == 0, err


def active(root: Path, model: str) -> str | None:
    cur = root / MODELS_DIR / model / "current"
    return os.readlink(cur) if cur.is_symlink() else None


def laptop_actions(home: Home, device: str) -> list[tuple[str, str]]:
    with Journal.open_readonly(home) as j:
        return [(e.action, e.outcome) for e in j.entries(device=device)]


def device_events(root: Path) -> list[str]:
    path = root / "var/lib/fieldkit/journal.jsonl"
    return [json.loads(line)["event"] for line in path.read_text().splitlines() if line.strip()]


# ---- the ordinary life of a model ---------------------------------------------------------------
def test_a_device_without_release_keys_refuses_and_says_how(dev, releases) -> None:
    name, root = dev
    rc, doc, out, err = cli("install", name, str(releases["v1"]), "--yes", "--json")
    assert rc == 4 and doc["result"] == "refused", (out, err)
    assert "anchors add" in err
    assert not (root / MODELS_DIR / "anomaly").exists()


def test_install_upgrade_rollback_and_the_floor(home: Home, dev, releases, key) -> None:
    name, root = dev
    trust(name, key)
    rc, doc, out, err = cli("anchors", "list", name, "--json")
    assert rc == 0 and doc["release_keys"][0]["fingerprint"] == key.fingerprint

    rc, doc, out, err = cli("install", name, str(releases["v1"]), "--yes", "--json")
    assert rc == 0, (out, err)
    assert (doc["result"], doc["before"], doc["after"]) == ("committed", None, "1.0.0")
    assert doc["release"]["signer"] == key.fingerprint and len(doc["release"]["digest"]) == 64
    assert [s["name"] for s in doc["stages"]] == ["verify", "transfer", "place", "activate", "smoke", "commit"]
    assert all(s["status"] == "ok" for s in doc["stages"])
    assert active(root, "anomaly") == "1.0.0"

    rc, doc, out, err = cli("install", name, str(releases["v2"]), "--yes", "--json")
    assert rc == 0 and (doc["before"], doc["after"]) == ("1.0.0", "2.0.0"), (out, err)
    rc, doc, _, err = cli("models", name, "--json")
    m = doc["models"][0]
    assert (m["name"], m["active"], m["previous"], m["floor"], m["state"]) == ("anomaly", "2.0.0", "1.0.0", 1,
                                                                               "committed")
    assert sorted(m["installed"]) == ["1.0.0", "2.0.0"] and m["signer"] == key.fingerprint

    rc, doc, out, err = cli("rollback", name, "anomaly", "--yes", "--json")
    assert rc == 0 and (doc["result"], doc["after"]) == ("committed", "1.0.0"), (out, err)
    assert active(root, "anomaly") == "1.0.0"

    # an ordinary downgrade needs saying so; a security fix raises the floor for good
    rc, doc, out, err = cli("install", name, str(releases["v3"]), "--yes", "--json")
    assert rc == 0 and doc["after"] == "3.0.0", (out, err)
    rc, doc, out, err = cli("install", name, str(releases["v2"]), "--yes", "--json")
    assert rc == 4 and doc["result"] == "refused" and "floor" in doc["message"], (out, err)
    rc, doc, out, err = cli("install", name, str(releases["v2"]), "--yes", "--downgrade", "--json")
    assert rc == 4 and "floor" in doc["message"], (out, err)
    rc, doc, out, err = cli("rollback", name, "anomaly", "--yes", "--json")
    assert rc == 4 and doc["result"] == "refused", (out, err)
    assert active(root, "anomaly") == "3.0.0"

    actions = laptop_actions(home, name)
    for action in ("release.install", "model.activate", "model.smoke", "model.commit", "model.rollback"):
        assert (action, "ok") in actions, (action, actions)
    events = device_events(root)
    assert "model.commit" in events and "anchors.add" in events


def test_a_downgrade_without_the_flag_is_a_usage_error(dev, releases, key) -> None:
    name, root = dev
    trust(name, key)
    assert cli("install", name, str(releases["v2"]), "--yes")[0] == 0
    rc, doc, out, err = cli("install", name, str(releases["v1"]), "--yes", "--json")
    assert rc == 2 and "--downgrade" in doc["message"] + err, (out, err)
    rc, doc, out, err = cli("install", name, str(releases["v1"]), "--yes", "--downgrade", "--json")
    assert rc == 0 and doc["after"] == "1.0.0", (out, err)


def test_a_failing_smoke_test_switches_back_automatically(home: Home, dev, releases, key) -> None:
    name, root = dev
    trust(name, key)
    assert cli("install", name, str(releases["v1"]), "--yes")[0] == 0
    rc, doc, out, err = cli("install", name, str(releases["bad"]), "--yes", "--json")
    assert rc == 1 and doc["result"] == "reverted", (out, err)
    assert doc["after"] == "1.0.0" and active(root, "anomaly") == "1.0.0"
    bad = [o for o in doc["smoke"]["outputs"] if not o["ok"]]
    assert bad and bad[0]["max_abs_diff"] >= 0.99 and bad[0]["name"] in doc["message"]
    rc, doc, _, _ = cli("models", name, "--json")
    assert doc["models"][0]["state"] == "reverted" and doc["models"][0]["floor"] == 1  # the floor did not rise
    assert ("model.revert", "ok") in laptop_actions(home, name)


def test_a_tampered_release_is_refused_before_any_byte_moves(dev, releases, key, tmp_path: Path) -> None:
    name, root = dev
    trust(name, key)
    bad = tmp_path / "tampered"
    shutil.copytree(releases["v1"], bad)
    model = bad / "anomaly-tabular.onnx" if (bad / "anomaly-tabular.onnx").exists() else next(bad.glob("*.onnx"))
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    rc, doc, out, err = cli("install", name, str(bad), "--yes", "--json")
    assert rc == 1 and doc["result"] == "refused" and model.name in doc["message"], (out, err)
    staging = root / "var/lib/fieldkit/staging"
    assert not staging.exists() or not any(p.is_file() for p in staging.rglob("*"))


def test_the_device_refuses_a_tampered_release_even_when_the_laptop_is_bypassed(
        home: Home, dev, releases, key, tmp_path: Path) -> None:
    """Talk to the agent directly: stage, upload a changed model, ask it to install."""
    name, root = dev
    trust(name, key)
    bad = tmp_path / "tampered"
    shutil.copytree(releases["v1"], bad)
    model = next(bad.glob("*.onnx"))
    model.write_bytes(model.read_bytes()[:-1] + bytes([model.read_bytes()[-1] ^ 0xFF]))
    from fieldkit import oms

    files = [p for p in bad.rglob("*") if p.is_file()]
    with open_session(name, home) as session:
        signed = oms.read_signature(bad / "model.sig")
        opened = session.call("stage_open", {"name": "anomaly", "version": "1.0.0",
                                             "digest": signed.statement.subject_digest})
        for p in files:
            session.upload(p, f"{opened.dir}/{p.relative_to(bad).as_posix()}")
        with pytest.raises(DeviceError) as exc:
            session.call("release_install", {"stage": opened.stage, "downgrade": False})
    assert exc.value.code == "tampered" and model.name in exc.value.message
    assert active(root, "anomaly") is None


def test_models_verify_finds_a_changed_byte_on_the_device(dev, releases, key) -> None:
    name, root = dev
    trust(name, key)
    assert cli("install", name, str(releases["v1"]), "--yes")[0] == 0
    rc, doc, out, err = cli("models", "verify", name, "--json")
    assert rc == 0 and doc["ok"], (out, err)
    installed = root / MODELS_DIR / "anomaly" / "1.0.0"
    target = next(installed.glob("*.onnx"))
    os.chmod(target, 0o644)
    data = bytearray(target.read_bytes())
    data[100] ^= 0x40
    target.write_bytes(bytes(data))
    rc, doc, out, err = cli("models", "verify", name, "--json")
    assert rc == 1 and not doc["ok"] and target.name in json.dumps(doc["models"]), (out, err)
    rc, _, out, err = cli("models", "remove", name, "anomaly", "1.0.0", "--yes")
    assert rc == 4 and "active" in err, (out, err)  # never the active version


# ---- resuming and dying half-way ----------------------------------------------------------------
def _install_cut_after(session, release: Path, fraction: float) -> int:
    """Install, and cut the transfer (cancel) once ``fraction`` of the bytes are on the device."""
    cancel = threading.Event()
    seen = []

    def progress(ev: dict) -> None:
        if ev.get("bytes_total"):
            seen.append(ev["bytes_done"])
            if ev["bytes_done"] >= fraction * ev["bytes_total"]:
                cancel.set()

    with pytest.raises(Cancelled):
        install_release(session, release, progress=progress, cancel=cancel)
    return max(seen)


def _bytes_sent(session, release: Path) -> tuple[object, int]:
    sent = []

    def progress(ev: dict) -> None:
        if ev.get("bytes_total"):  # the first says where the device stood (the rate comes later)
            sent.append(ev)

    res = install_release(session, release, progress=progress)
    first = sent[0]["bytes_done"] if sent else 0
    return res, first


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_cut_transfer_resumes_where_the_device_stopped(home: Home, dev, releases, key, fraction: float) -> None:
    name, root = dev
    trust(name, key)
    total = sum(p.stat().st_size for p in releases["big"].rglob("*") if p.is_file())
    with open_session(name, home) as session:
        cut_at = _install_cut_after(session, releases["big"], fraction)
    assert active(root, "mobilenet") is None  # nothing was activated
    with open_session(name, home) as session:
        res, first_seen = _bytes_sent(session, releases["big"])
    assert res.result == "committed", res.message
    # the second run began where the device stopped (within one chunk of the cut), not at zero
    assert first_seen >= fraction * total - 2 * 2**20, (first_seen, cut_at, total)
    assert active(root, "mobilenet") == "1.0.0"


def test_resume_over_a_serial_line_after_the_cable_is_pulled(home: Home, releases, key) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=0, serial=1) as sim:
        name = sim.devices[0].name
        root = Path(sim.devices[0].root)
        trust(name, key)
        relay = sim.relays[name]
        with open_session(name, home, dead_after_s=3.0) as session:
            pulled = threading.Event()

            def progress(ev: dict) -> None:
                if ev.get("bytes_total") and ev["bytes_done"] > 0.3 * ev["bytes_total"] and not pulled.is_set():
                    pulled.set()
                    relay.pause()  # the cable comes out mid-transfer

            res = install_release(session, releases["v1"], progress=progress)
            assert res.result == "failed" and isinstance(res.error, LinkLost), res.message
        relay.resume()
        with open_session(name, home) as session:
            res = install_release(session, releases["v1"])
        assert res.result == "committed", res.message
        assert active(root, "anomaly") == "1.0.0"


def test_resume_over_ssh_after_the_device_drops(home: Home, releases, key) -> None:
    from fieldkit.sim import Simulation

    with Simulation(home, ssh=1, serial=0) as sim:
        name = sim.devices[0].name
        root = Path(sim.devices[0].root)
        trust(name, key)
        with open_session(name, home, dead_after_s=3.0) as session:
            cut = threading.Event()

            def progress(ev: dict) -> None:
                if ev.get("bytes_total") and ev["bytes_done"] > 0.3 * ev["bytes_total"] and not cut.is_set():
                    cut.set()
                    threading.Thread(target=sim.stop_device, args=(name,), daemon=True).start()

            res = install_release(session, releases["big"], progress=progress)
            assert res.result == "failed", res.message
        sim.start_device(name)
        with open_session(name, home) as session:
            res, first = _bytes_sent(session, releases["big"])
        assert res.result == "committed", res.message
        assert first > 0
        assert active(root, "mobilenet") == "1.0.0"


@pytest.mark.parametrize("stage", ["transfer", "activate", "smoke"])
def test_the_laptop_killed_at_each_stage_leaves_a_complete_verified_model(
        home: Home, device_root: Path, releases, key, tmp_path: Path, stage: str) -> None:
    """kill -9 of `fieldkit install` (and with it the local agent) at a stage; afterwards the device
    runs a complete, verified model, and the next command finishes or undoes the activation.

    The device runs an inference service (profile x86-ipc) whose `systemctl restart` is a stand-in:
    for the "activate" case its first restart blocks for a while, so the kill lands while the device
    is between the swap and the trial, whatever the machine's load. The local agent runs in a
    session of its own, like an agent on a real device: it outlives the laptop, finishes the step it
    is in, sees its laptop gone and switches back by itself."""
    name, root = "press-k", device_root
    add_device(home, name, f"local:{root}", profile="x86-ipc")
    marker = tmp_path / "restarted-once"
    fake = tmp_path / "systemctl"
    fake.write_text(f'#!/bin/sh\nif [ ! -e "{marker}" ]; then : > "{marker}"; sleep 3; fi\nexit 0\n')
    fake.chmod(0o755)
    env = {"FIELDKIT_AGENT_SYSTEMCTL": str(fake)}
    marker.write_text("")  # restarts return at once ...
    trust(name, key)
    assert run_cli("install", name, str(releases["v1"]), "--yes", env=env).returncode == 0
    if stage == "activate":
        marker.unlink()  # ... except the next one, which blocks until the kill
    target = releases["big" if stage == "transfer" else "v2"]  # a transfer long enough to be cut
    proc = subprocess.Popen([sys.executable, "-m", "fieldkit", "install", name, str(target), "--yes"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **env})
    state = root / MODELS_DIR / "anomaly" / "state.json"
    staging = root / "var/lib/fieldkit/staging"
    reached = False
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if stage == "transfer":
                reached = staging.exists() and any(staging.rglob("*.part"))
            elif stage == "activate":
                reached = marker.exists()  # the device is inside `systemctl restart`, step "restart"
            elif state.exists():
                try:
                    doc = json.loads(state.read_text() or "{}")
                except ValueError:
                    doc = {}  # caught mid-replace: look again
                reached = (doc.get("activation") or {}).get("step") == "trial"  # the smoke test runs
            if reached:
                break
            time.sleep(0.002)
        alive = proc.poll() is None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the laptop and the agent it started die at once
        proc.wait(10)
    assert reached and alive, f"the install never reached {stage} while running: {proc.stderr.read()[-2000:]}"
    deadline = time.monotonic() + 60  # the stranded agent ends its step, then undoes the activation
    while time.monotonic() < deadline and state.exists() and json.loads(state.read_text() or "{}").get(
            "state") == "pending":
        time.sleep(0.05)
    models_doc = run_cli("models", name, "--json", env=env)  # the next connect: recovery first
    assert models_doc.returncode == 0, models_doc.stderr
    listed = {m["name"]: m for m in json.loads(models_doc.stdout)["models"]}
    m = listed["anomaly"]
    if stage == "transfer":
        assert (m["active"], m["state"]) == ("1.0.0", "committed"), m  # untouched
        assert "mobilenet" not in listed or listed["mobilenet"]["active"] is None, listed
    else:
        assert (m["active"], m["state"]) == ("1.0.0", "reverted"), m  # never smoke-tested: undone
    assert active(root, "anomaly") == "1.0.0"
    verify = run_cli("models", "verify", name, "--json", env=env)
    assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout + verify.stderr
    again = run_cli("install", name, str(target), "--yes", "--json", env=env)  # and it can finish
    assert again.returncode == 0 and json.loads(again.stdout)["result"] == "committed", again.stdout + again.stderr
