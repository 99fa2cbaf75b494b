"""Staged rollout (`fieldkit install --all | --group G | DEV1 DEV2 ... DIR --canary K --parallel P`) on four
simulated devices (three SSH, one serial: the real agent on real files, the real install path, real
onnxruntime smoke tests, the real journal).

What a technician checks is what these tests assert: which version is active on each device after the
rollout, that the canary went first, that a bad release or a dead device stops the line with the other
devices untouched, what the summary and the journal say.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from models import models  # noqa: F401  (session fixture)

from fieldkit.devices import open_session
from fieldkit.inventory import add_device, get_device
from fieldkit.journal import LAPTOP, Journal
from fieldkit.locations import Home
from fieldkit.modelstore import add_anchor, read_public_key
from fieldkit.release import create_release, keygen, sign_release
from fieldkit.rollout import plan_rollout, rollout, run_rollout

ANOMALY = "anomaly-tabular"
MODELS_DIR = "var/lib/fieldkit/models"


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory):
    return keygen(tmp_path_factory.mktemp("keys") / "rel.pem")


@pytest.fixture(scope="module")
def releases(tmp_path_factory: pytest.TempPathFactory, key, models) -> dict[str, Path]:
    """anomaly 1.0.0 and 2.0.0, and 3.0.0 whose signed reference outputs are wrong (its smoke test fails
    on every device, as in tests/test_install.py)."""
    base = tmp_path_factory.mktemp("releases")
    out: dict[str, Path] = {}
    for label, version in (("v1", "1.0.0"), ("v2", "2.0.0"), ("bad", "3.0.0")):
        out[label] = base / f"anomaly-{version}"
        create_release(models[ANOMALY], name="anomaly", version=version, security_version=1, smoke_random=2,
                       key_path=key.private, out_dir=out[label])
    ref = out["bad"] / "smoke" / "outputs.npz"
    with np.load(ref) as z:
        wrong = {k: z[k] + 1.0 for k in z.files}
    np.savez(ref, **wrong)
    sign_release(out["bad"], key.private)
    return out


@pytest.fixture
def line(home: Home, key):
    """Four simulated devices (3 SSH, 1 serial) that trust the release key (the simulation bakes the
    operator's key into each device image, so the serial one takes changes from this operator)."""
    from fieldkit.sim import Simulation

    pem, fp = read_public_key(key.public)
    with Simulation(home, ssh=3, serial=1) as sim:
        for d in sim.devices:
            with open_session(d.name, home) as session:
                add_anchor(session, pem, fp)
        yield sim


def cli(*args: str, timeout: float = 300) -> tuple[int, dict | None, str, str]:
    proc = run_cli(*args, timeout=timeout)
    doc = json.loads(proc.stdout) if "--json" in args and proc.stdout.strip() else None
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, doc, proc.stdout, proc.stderr


def roots(sim) -> dict[str, Path]:
    return {d.name: Path(d.root) for d in sim.devices}


def active(root: Path, model: str = "anomaly") -> str | None:
    cur = root / MODELS_DIR / model / "current"
    return os.readlink(cur) if cur.is_symlink() else None


def untouched_since(home: Home, device: str, seq: int) -> bool:
    """No journal entry for ``device`` after ``seq``: not even connected to."""
    with Journal.open_readonly(home) as j:
        return not j.entries(device=device, after_seq=seq)


def head(home: Home) -> int:
    with Journal.open_readonly(home) as j:
        return j.head()[0]


def rollout_entries(home: Home, after: int = 0) -> list:
    with Journal.open_readonly(home) as j:
        return j.entries(action="release.rollout", after_seq=after)


def baseline(home: Home, sim, release: Path) -> None:
    """Every device on ``release`` (the core API, all at once)."""
    res = rollout(home, [d.name for d in sim.devices], release, canary=0, parallel=4)
    assert res.ok, res.to_json()


# ---- a good release -------------------------------------------------------------------------------
def test_a_good_release_goes_to_every_device_canary_first(home: Home, line, releases) -> None:
    names = [d.name for d in line.devices]
    start = head(home)
    rc, doc, out, err = cli("install", "--all", str(releases["v1"]), "--canary", "1", "--parallel", "3",
                            "--yes", "--json")
    assert rc == 0, (out, err)
    # the --json shape
    assert set(doc) >= {"release", "devices"}
    assert {k: doc["release"][k] for k in ("name", "version")} == {"name": "anomaly", "version": "1.0.0"}
    assert len(doc["release"]["digest"]) == 64
    assert [d["device"] for d in doc["devices"]] == names
    for d in doc["devices"]:
        assert set(d) >= {"device", "before", "after", "result"}
        assert (d["before"], d["after"], d["result"]) == (None, "1.0.0", "committed"), d
    assert [d["canary"] for d in doc["devices"]] == [True, False, False, False]
    assert {name: active(root) for name, root in roots(line).items()} == dict.fromkeys(names, "1.0.0")

    # the canary committed before any other device was even connected to
    with Journal.open_readonly(home) as j:
        after = j.entries(after_seq=start)
    canary_commit = next(e.seq for e in after if e.device == names[0] and e.action == "model.commit")
    first_other = min(e.seq for e in after if e.device in names[1:])
    assert canary_commit < first_other, [(e.seq, e.device, e.action) for e in after]
    for name in names:  # each device's own entries, beside the rollout's
        assert ("model.commit", "ok") in [(e.action, e.outcome) for e in after if e.device == name]

    # one release.rollout entry with the summary
    entries = rollout_entries(home, start)
    assert len(entries) == 1
    e = entries[0]
    assert (e.device, e.outcome) == (LAPTOP, "ok")
    assert e.details["release"]["version"] == "1.0.0" and e.details["canary"] == 1
    assert [(d["device"], d["result"]) for d in e.details["devices"]] == [(n, "committed") for n in names]
    assert e.seq == max(x.seq for x in after)  # written when the rollout ended

    # the human summary table
    rc, _, out, err = cli("install", *names, str(releases["v2"]), "--yes")
    assert rc == 0, (out, err)
    assert "DEVICE" in out and "BEFORE" in out and "RESULT" in out and "4 committed" in out
    assert f"{names[0]} (canary)  1.0.0" in out


def test_one_device_keeps_the_single_install_and_its_json(home: Home, line, releases) -> None:
    name = line.devices[0].name
    rc, doc, out, err = cli("install", name, str(releases["v1"]), "--yes", "--json")
    assert rc == 0, (out, err)
    assert (doc["device"], doc["result"], doc["after"]) == (name, "committed", "1.0.0")
    assert [s["name"] for s in doc["stages"]] == ["verify", "transfer", "place", "activate", "smoke", "commit"]
    assert rollout_entries(home) == []


# ---- a bad release stops at the canary ---------------------------------------------------------------
def test_a_release_failing_its_smoke_test_on_the_canary_leaves_the_others_untouched(
        home: Home, line, releases) -> None:
    names = [d.name for d in line.devices]
    baseline(home, line, releases["v1"])
    start = head(home)
    rc, doc, out, err = cli("install", *names, str(releases["bad"]), "--yes", "--json")
    assert rc == 1, (out, err)
    assert [(d["device"], d["before"], d["after"], d["result"]) for d in doc["devices"]] == (
        [(names[0], "1.0.0", "1.0.0", "reverted")] + [(n, None, None, "skipped") for n in names[1:]])
    assert "smoke test" in doc["devices"][0]["message"] and "canary" in doc["stopped"]
    for name, root in roots(line).items():
        assert active(root) == "1.0.0", name
        if name != names[0]:
            assert not (root / MODELS_DIR / "anomaly" / "3.0.0").exists()
            assert not any((root / "var/lib/fieldkit/staging").iterdir())
            assert untouched_since(home, name, start), name
    e = rollout_entries(home, start)
    assert len(e) == 1 and e[0].outcome == "failed"
    assert [d["result"] for d in e[0].details["devices"]] == ["reverted", "skipped", "skipped", "skipped"]
    assert f"{names[0]}: " in err and "smoke test" in err


def test_a_release_that_does_not_verify_on_the_laptop_touches_no_device(
        home: Home, line, releases, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(releases["v2"], tampered)
    model = next(tampered.glob("*.onnx"))
    data = bytearray(model.read_bytes())
    data[-1] ^= 0x01
    model.write_bytes(bytes(data))
    start = head(home)
    rc, doc, out, err = cli("install", "--all", str(tampered), "--json")  # refused before any question
    assert rc == 1, (out, err)
    assert [d["result"] for d in doc["devices"]] == ["skipped"] * 4
    assert "changed after signing" in doc["error"] and "changed after signing" in err
    for d in line.devices:
        assert untouched_since(home, d.name, start)
    e = rollout_entries(home, start)
    assert len(e) == 1 and e[0].outcome == "refused"


def test_usage_errors(home: Home, line, releases) -> None:
    rc, _, out, err = cli("install", str(releases["v1"]), "--yes")
    assert rc == 2 and "no device given" in err, (out, err)
    rc, _, out, err = cli("install", "--group", "nosuch", str(releases["v1"]), "--yes")
    assert rc == 2 and 'no device is in group "nosuch"' in err, (out, err)
    rc, _, out, err = cli("install", "--all", str(releases["v1"]), "--parallel", "0", "--yes")
    assert rc == 2 and "--parallel" in err, (out, err)
    rc, _, out, err = cli("install", "--all", str(releases["v1"]))  # no terminal, no --yes: nothing changed
    assert rc == 2 and "--yes" in err, (out, err)
    assert all(active(r) is None for r in roots(line).values())


# ---- a device lost mid-rollout -----------------------------------------------------------------------
def test_a_device_unreachable_mid_rollout_stops_it(home: Home, line, releases) -> None:
    canary, lost, *others = [d.name for d in line.devices]  # ssh-1, ssh-2, ssh-3, serial-1
    events: list[dict] = []

    def progress(ev: dict) -> None:
        events.append(ev)
        if ev.get("event") == "device_done" and ev["device"] == canary and ev["result"] == "committed":
            line.stop_device(lost)  # the cable comes out right after the canary

    start = head(home)
    plan = plan_rollout(home, [canary, lost, *others], releases["v1"], canary=1, parallel=2, timeout=3)
    res = run_rollout(plan, progress=progress)
    assert res.exit_code == 1 and not res.ok
    by = {d.device: d for d in res.devices}
    assert by[canary].result == "committed" and by[lost].result == "failed"
    assert "not reached" in by[lost].message and lost in res.stopped
    assert active(roots(line)[lost]) is None
    # the others: finished when they had started (at most one alongside the lost device), else untouched
    for name in others:
        assert by[name].result in ("committed", "skipped"), by[name]
        if by[name].result == "skipped":
            assert active(roots(line)[name]) is None and untouched_since(home, name, start)
        else:
            assert active(roots(line)[name]) == "1.0.0"
    assert [by[n].result for n in others].count("skipped") >= 1
    kinds = [(e["event"], e.get("device")) for e in events if e["event"] in ("device_start", "device_done")]
    assert kinds[:2] == [("device_start", canary), ("device_done", canary)]
    assert any(e["event"] == "stopping" for e in events)
    e = rollout_entries(home, start)
    assert len(e) == 1 and e[0].outcome == "failed"


def test_cancel_stops_new_installs_and_lets_the_running_one_finish(home: Home, line, releases) -> None:
    names = [d.name for d in line.devices]
    cancel = threading.Event()

    def progress(ev: dict) -> None:
        if ev.get("event") == "stage" and ev["device"] == names[0] and ev.get("stage") == "smoke":
            cancel.set()  # Ctrl-C while the canary runs its smoke test

    res = rollout(home, names, releases["v1"], canary=1, parallel=4, progress=progress, cancel=cancel)
    assert [d.result for d in res.devices] == ["committed", "skipped", "skipped", "skipped"]
    assert res.exit_code == 130 and "cancelled" in res.stopped
    assert active(roots(line)[names[0]]) == "1.0.0"
    assert rollout_entries(home)[-1].outcome == "cancelled"


def test_ctrl_c_stops_new_installs_and_the_running_one_finishes(home: Home, line, releases) -> None:
    """The CLI: Ctrl-C while the canary installs; it finishes and commits, nothing else starts (exit 130)."""
    import signal
    import time

    names = [d.name for d in line.devices]
    proc = subprocess.Popen([sys.executable, "-m", "fieldkit", "install", "--all", str(releases["v1"]), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT))
    seen = []
    deadline = time.monotonic() + 120
    for err_line in proc.stderr:  # the progress lines
        seen.append(err_line)
        if "(canary)" in err_line:
            proc.send_signal(signal.SIGINT)
            break
        assert time.monotonic() < deadline, seen
    out, rest = proc.communicate(timeout=180)
    err = "".join(seen) + rest
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "no new install starts" in err
    rows = [line.split() for line in out.splitlines()[1:] if line.startswith(tuple(names))]
    assert [r[-1] for r in rows] == ["committed", "skipped", "skipped", "skipped"], (out, err)
    assert [active(roots(line)[n]) for n in names] == ["1.0.0", None, None, None]


# ---- groups --------------------------------------------------------------------------------------------
def test_group_selects_the_devices_of_a_group(home: Home, line, releases) -> None:
    names = [d.name for d in line.devices]
    members = [names[1], names[3]]  # an SSH device and the serial one
    for name in members:
        dev = get_device(home, name)
        add_device(home, name, dev.target, profile=dev.profile, replace=True, groups=["line3"])
    rc, doc, out, err = cli("install", "--group", "line3", str(releases["v1"]), "--yes", "--json")
    assert rc == 0, (out, err)
    assert [(d["device"], d["result"], d["canary"]) for d in doc["devices"]] == [
        (members[0], "committed", True), (members[1], "committed", False)]
    for name, root in roots(line).items():
        assert active(root) == ("1.0.0" if name in members else None), name


# scripts/bench/rollout.py --tiny runs in tests/test_bench_scripts.py (with every other benchmark)
